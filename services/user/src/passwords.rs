//! argon2id password hashes whose working memory is reused.
//!
//! Each hash needs ≈ 19 MiB of working memory (argon2id's `m_cost`). Allocated afresh
//! for every hash, as `argon2`'s own `PasswordHasher` does, glibc keeps it: after the
//! first such block is freed it raises its mmap threshold and serves the next ones from
//! its per-thread arenas, which it does not give back — a burst of 64 clients logging
//! in left the user service at ≈ 660 MB (issue #33). Here each hash borrows a buffer
//! from a pool and returns it: the pool holds as many as ever ran at once (the
//! [`HashGate`](crate::service::HashGate) bounds that to one per core).
//!
//! The PHC strings are the standard ones, both ways: what `argon2`'s `PasswordHasher`
//! wrote verifies here, and what is written here verifies there.

use std::sync::Mutex;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

/// The working memory of the hashes not running now.
static POOL: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());

fn with_memory<T>(blocks: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
    let pool = || POOL.lock().unwrap_or_else(|p| p.into_inner());
    let mut memory = pool().pop().unwrap_or_default();
    memory.resize(blocks, Block::default());
    let out = f(&mut memory);
    pool().push(memory);
    out
}

/// A new argon2id hash of `password` (default parameters, a random salt), as a PHC
/// string.
pub fn hash(password: &[u8]) -> argon2::password_hash::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    let argon = Argon2::default();
    let params = argon.params().clone();
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.as_salt().decode_b64(&mut salt_buf)?;
    let len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let output = Output::init_with(len, |out| {
        with_memory(params.block_count(), |m| {
            argon.hash_password_into_with_memory(password, salt_bytes, out, m)
        })
        .map_err(Into::into)
    })?;
    Ok(PasswordHash {
        algorithm: Algorithm::default().ident(),
        version: Some(Version::default().into()),
        params: ParamsString::try_from(&params)?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    }
    .to_string())
}

/// Whether `password` is the one `phc` (an argon2 PHC string) was made from; compared
/// in constant time. A string that is no argon2 hash verifies nothing.
pub fn verify(password: &[u8], phc: &str) -> bool {
    let Ok(h) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (h.salt, h.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(h.algorithm) else {
        return false;
    };
    let Ok(version) = h.version.map(Version::try_from).transpose() else {
        return false;
    };
    let Ok(params) = Params::try_from(&h) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let argon = Argon2::new(algorithm, version.unwrap_or_default(), params.clone());
    let mut out = vec![0u8; expected.len()];
    let computed = with_memory(params.block_count(), |m| {
        argon.hash_password_into_with_memory(password, salt, &mut out, m)
    });
    computed.is_ok() && Output::new(&out).is_ok_and(|o| o == expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    #[test]
    fn the_hashes_are_the_standard_ones_both_ways() {
        let ours = hash(b"correct-horse").unwrap();
        assert!(
            ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{ours}"
        );
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct-horse", &parsed)
            .is_ok());
        assert!(verify(b"correct-horse", &ours));
        assert!(!verify(b"correct-horsE", &ours));

        let theirs = Argon2::default()
            .hash_password(b"battery-staple", &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();
        assert!(verify(b"battery-staple", &theirs));
        assert!(!verify(b"battery-stapler", &theirs));
        for garbage in ["", "not a hash", "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$"] {
            assert!(!verify(b"x", garbage), "{garbage:?}");
        }
    }

    #[test]
    fn the_working_memory_is_kept_for_the_next_hash() {
        for _ in 0..3 {
            hash(b"pw-1").unwrap();
        }
        // Sequential hashes borrow the same buffer (the tests of this binary may run
        // others at the same time, each with a buffer of its own).
        let pool = POOL.lock().unwrap();
        assert!(!pool.is_empty());
        assert!(pool
            .iter()
            .all(|m| m.len() == Params::default().block_count()));
    }
}

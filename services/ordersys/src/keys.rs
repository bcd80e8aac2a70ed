//! The token keys of the one-process system: an Ed25519 pair made once and kept in
//! `DATA_DIR` (the private key 0600, never replaced), unless `JWT_SECRET` asks for HS256.

use std::path::Path;

use ordersys_kit::config::Jwt;

use crate::Config;

/// The private key's file in `DATA_DIR`.
pub(crate) const PRIVATE: &str = "jwt-ed25519.key";
/// The public key's file, written from the private key at every start.
pub(crate) const PUBLIC: &str = "jwt-ed25519.pub";

/// The token settings of the service that signs (the user service) and of those that
/// verify: `JWT_SECRET` for both, or the pair kept in `DATA_DIR` — made on the first
/// start — the verifiers getting only its public key.
pub(crate) fn token_settings(config: &Config) -> anyhow::Result<(Jwt, Jwt)> {
    if !config.jwt_secret.is_empty() {
        let jwt = Jwt::with_secret(config.jwt_secret.clone());
        return Ok((jwt.clone(), jwt));
    }
    let dir = Path::new(&config.data_dir);
    let private = dir.join(PRIVATE);
    let usable = |p: &Path| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|pem| ordersys_kit::keys::ed25519_public_pem(&pem).ok())
    };
    if usable(&private).is_none() {
        let (pem, _) = ordersys_kit::keys::ed25519_pem()?;
        write_secret(&private, &pem, |s| {
            ordersys_kit::keys::ed25519_public_pem(s).is_ok()
        })?;
    }
    // Another process may have won the race: everyone uses what is on disk.
    let public_pem = usable(&private)
        .ok_or_else(|| anyhow::anyhow!("{}: not an Ed25519 private key", private.display()))?;
    let public = dir.join(PUBLIC);
    replace_file(&public, &public_pem)?;
    let path = |p: &Path| p.display().to_string();
    Ok((
        Jwt::with_ed25519(path(&private), path(&public)),
        Jwt::with_ed25519("", path(&public)),
    ))
}

/// Create `path` exclusively, owner-only (0600), with `content`.
fn create_private(path: &Path, content: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path)?;
    f.write_all(content.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Write `content` to `path` (0600) through a temporary file renamed into place.
fn replace_file(path: &Path, content: &str) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".tmp.{}", uuid::Uuid::new_v4().simple()));
    create_private(&tmp, content)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The file in `DATA_DIR` of the key the saga messages are sealed with over Kafka.
pub(crate) const SAGA_KEY: &str = "saga.key";

/// The key the order and payment services seal their saga messages with when they talk
/// through Kafka: `SAGA_KEY` if given, else one made on the first start and kept in
/// `DATA_DIR` (messages sealed before a restart still verify after it).
pub(crate) fn saga_key(config: &Config) -> anyhow::Result<ordersys_kit::config::Secret> {
    if !config.saga_key.is_empty() {
        return Ok(config.saga_key.clone());
    }
    let path = Path::new(&config.data_dir).join(SAGA_KEY);
    let usable = |s: &str| s.trim().len() >= ordersys_kit::saga_mac::MIN_KEY_LEN;
    if !std::fs::read_to_string(&path).is_ok_and(|s| usable(&s)) {
        let key = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        write_secret(&path, &key, usable)?;
    }
    Ok(std::fs::read_to_string(&path)?.trim().into())
}

/// Write a generated secret readable by its owner only (0600, its directory 0700): to a
/// temporary file created exclusively, then linked into place only if no secret is
/// there yet — a reader never sees a half-written file, and an existing one is kept.
/// A file there that is not `usable` (empty, or cut short by a crash) is replaced.
fn write_secret(path: &Path, secret: &str, usable: impl Fn(&str) -> bool) -> anyhow::Result<()> {
    #[cfg(unix)]
    use std::os::unix::fs::PermissionsExt as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    #[cfg(unix)]
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let tmp = dir.join(format!(".tmp.{}", uuid::Uuid::new_v4().simple()));
    create_private(&tmp, secret)?;
    // `hard_link` fails if the target exists: a key already there is never replaced.
    let unusable = std::fs::read_to_string(path).is_ok_and(|s| !usable(&s));
    if unusable {
        std::fs::remove_file(path)?;
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_in(dir: &Path) -> Config {
        Config {
            data_dir: dir.display().to_string(),
            ..Config::default()
        }
    }

    fn scratch() -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ordersys-keys-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_generated_pair_is_private_kept_and_never_replaced() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = scratch();
        let config = config_in(&dir);
        let (issuing, verifying) = token_settings(&config).unwrap();
        assert!(
            verifying.jwt_private_key.is_empty(),
            "verifiers get the public key only"
        );
        let key = issuing.signing_key().unwrap();
        assert_eq!(key.algorithm(), authz::Algorithm::EdDSA);
        let token = authz::TokenIssuer::new(key, "ordersys", "ordersys-api")
            .issue("u")
            .unwrap()
            .token;
        assert_eq!(
            verifying.verifier().unwrap().validate(&token).unwrap().sub,
            "u"
        );
        let private = dir.join(PRIVATE);
        let first = std::fs::read_to_string(&private).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&private), 0o600, "the private key is the owner's only");
        assert_eq!(mode(&dir.join(PUBLIC)), 0o600);
        assert_eq!(mode(&dir), 0o700, "so is its directory");
        // Started again: the same key (tokens issued before stay valid).
        let (again, _) = token_settings(&config).unwrap();
        let still = authz::TokenValidator::new(
            again.signing_key().unwrap().verifying_key(),
            "ordersys",
            "ordersys-api",
        );
        assert_eq!(still.validate(&token).unwrap().sub, "u");
        assert_eq!(std::fs::read_to_string(&private).unwrap(), first);
        // A second writer racing the first never replaces what is there.
        let (other, _) = ordersys_kit::keys::ed25519_pem().unwrap();
        write_secret(&private, &other, |_| true).unwrap();
        assert_eq!(std::fs::read_to_string(&private).unwrap(), first);
        // No temporary files left behind.
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [PRIVATE, PUBLIC]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unusable_key_left_on_disk_is_replaced_and_a_secret_means_hs256() {
        let dir = scratch();
        std::fs::write(dir.join(PRIVATE), "").unwrap();
        let (issuing, _) = token_settings(&config_in(&dir)).unwrap();
        assert!(issuing.signing_key().is_ok());
        let config = Config {
            jwt_secret: "a-secret-of-at-least-thirty-two-bytes!".into(),
            ..config_in(&dir)
        };
        let (issuing, verifying) = token_settings(&config).unwrap();
        assert_eq!(
            issuing.signing_key().unwrap().algorithm(),
            authz::Algorithm::HS256
        );
        assert!(verifying.jwt_public_key.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_saga_key_is_made_once_and_kept() {
        let dir = scratch();
        let config = config_in(&dir);
        let first = saga_key(&config).unwrap();
        assert!(first.len() >= 32);
        assert_eq!(
            saga_key(&config).unwrap(),
            first,
            "the same after a restart"
        );
        let given = Config {
            saga_key: "a-given-saga-key-of-at-least-32-bytes".into(),
            ..config_in(&dir)
        };
        assert_eq!(saga_key(&given).unwrap(), given.saga_key);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

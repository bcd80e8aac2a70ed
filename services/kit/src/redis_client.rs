//! Redis clients in plain text (`redis://`) or over TLS (`rediss://`), configured the
//! same way in every service:
//!
//! | variable | meaning |
//! |---|---|
//! | `REDIS_URL` | `redis://host:port/db` (plain) or `rediss://host:port/db` (TLS) |
//! | `REDIS_CA` | PEM file of the CA that signed the server's certificate (default: the system's roots) |
//! | `REDIS_CERT`, `REDIS_KEY` | PEM client certificate and key, for a server with `tls-auth-clients yes` |
//!
//! TLS settings with a `redis://` URL are refused rather than ignored: a connection the
//! operator meant to encrypt never goes out in plain text.

use std::path::PathBuf;

use anyhow::Context as _;

/// TLS material for `rediss://` connections.
#[derive(Debug, Clone, Default)]
pub struct RedisTls {
    /// CA certificate (PEM) to verify the server with; `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM), with [`RedisTls::key`].
    pub cert: Option<PathBuf>,
    /// Client private key (PEM), with [`RedisTls::cert`].
    pub key: Option<PathBuf>,
}

impl RedisTls {
    /// `REDIS_CA`, `REDIS_CERT` and `REDIS_KEY` (empty counts as unset).
    pub fn from_env() -> Self {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Self {
            ca: var("REDIS_CA"),
            cert: var("REDIS_CERT"),
            key: var("REDIS_KEY"),
        }
    }

    fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }

    /// A client for `url`: plain for `redis://`, TLS with this material for `rediss://`.
    pub fn client(&self, url: &str) -> anyhow::Result<redis::Client> {
        if !url.starts_with("rediss://") {
            anyhow::ensure!(
                self.is_empty(),
                "REDIS_CA/REDIS_CERT/REDIS_KEY are set but REDIS_URL is not rediss://"
            );
            return Ok(redis::Client::open(url)?);
        }
        let read = |p: &PathBuf, what: &str| {
            std::fs::read(p).with_context(|| format!("reading {what} {}", p.display()))
        };
        let client_tls = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
                client_cert: read(c, "REDIS_CERT")?,
                client_key: read(k, "REDIS_KEY")?,
            }),
            (None, None) => None,
            _ => anyhow::bail!("REDIS_CERT and REDIS_KEY go together"),
        };
        let root_cert = self.ca.as_ref().map(|p| read(p, "REDIS_CA")).transpose()?;
        Ok(redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )?)
    }
}

/// A client for `url` with the TLS material of the environment ([`RedisTls::from_env`]).
pub fn client(url: &str) -> anyhow::Result<redis::Client> {
    RedisTls::from_env().client(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_pki::{leaf, new_ca, Files};
    use std::time::Duration;

    /// A `redis-server` speaking only TLS, requiring client certificates from `ca`.
    struct TlsRedis {
        child: std::process::Child,
        port: u16,
    }

    impl TlsRedis {
        fn start(files: &Files, ca_pem: &str, pair: &(String, String)) -> Self {
            let (cert, key, ca) = files.pki("server", pair, ca_pem);
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = std::process::Command::new("redis-server")
                .args([
                    "--port",
                    "0",
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "yes"])
                .arg("--tls-cert-file")
                .arg(&cert)
                .arg("--tls-key-file")
                .arg(&key)
                .arg("--tls-ca-cert-file")
                .arg(&ca)
                .arg("--dir")
                .arg(&files.0)
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server (Debian's is built with TLS) must be installed");
            Self { child, port }
        }

        async fn wait_listening(&self) {
            let port = self.port;
            ordersys_testkit::eventually(
                "redis-server listening",
                Duration::from_secs(10),
                || async move {
                    tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .ok()
                },
            )
            .await;
        }
    }

    impl Drop for TlsRedis {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Whether PING through `client` answers PONG (within 5 s: a plain-text client on
    /// the TLS port waits for an answer that never comes).
    async fn pings(client: anyhow::Result<redis::Client>) -> bool {
        let Ok(client) = client else { return false };
        let ping = async {
            let mut c = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut c).await
        };
        match tokio::time::timeout(Duration::from_secs(5), ping).await {
            Ok(Ok(pong)) => pong == "PONG",
            Ok(Err(e)) => {
                eprintln!("refused: {e}");
                false
            }
            Err(_) => false,
        }
    }

    #[tokio::test]
    async fn rediss_with_our_ca_and_a_client_certificate_gets_in_and_nothing_else_does() {
        let files = Files::new();
        let (ca_pem, ca) = new_ca();
        let (other_ca_pem, other_ca) = new_ca();
        let server = TlsRedis::start(&files, &ca_pem, &leaf(&ca, false));
        server.wait_listening().await;
        let url = format!("rediss://127.0.0.1:{}/", server.port);
        let material = |name: &str, pair: &(String, String), trust: &str| {
            let (cert, key, ca) = files.pki(name, pair, trust);
            RedisTls {
                ca: Some(ca),
                cert: Some(cert),
                key: Some(key),
            }
        };

        let good = material("client", &leaf(&ca, false), &ca_pem);
        assert!(
            pings(good.client(&url)).await,
            "the right client was refused"
        );
        // Without a client certificate: refused by the server.
        let anonymous = RedisTls {
            cert: None,
            key: None,
            ..good.clone()
        };
        assert!(
            !pings(anonymous.client(&url)).await,
            "no certificate got in"
        );
        // A certificate from another CA: refused by the server.
        let foreign = material("foreign", &leaf(&other_ca, false), &ca_pem);
        assert!(!pings(foreign.client(&url)).await, "another CA got in");
        // Trusting another CA: the client refuses the server.
        let wary = material("wary", &leaf(&ca, false), &other_ca_pem);
        assert!(
            !pings(wary.client(&url)).await,
            "an untrusted server was used"
        );
        // The system's roots do not know our CA either.
        let system_roots = RedisTls {
            ca: None,
            ..good.clone()
        };
        assert!(!pings(system_roots.client(&url)).await);
        // Plain text to the TLS port: no answer.
        let plain = format!("redis://127.0.0.1:{}/", server.port);
        assert!(!pings(RedisTls::default().client(&plain)).await);
    }

    #[test]
    fn tls_material_with_a_plain_url_or_half_a_key_pair_is_an_error() {
        let ca_only = RedisTls {
            ca: Some("ca.pem".into()),
            ..RedisTls::default()
        };
        let err = ca_only.client("redis://127.0.0.1:6379/").unwrap_err();
        assert!(err.to_string().contains("rediss://"), "{err}");
        let half = RedisTls {
            cert: Some("c.pem".into()),
            ..RedisTls::default()
        };
        assert!(half.client("rediss://127.0.0.1:6379/").is_err());
        assert!(RedisTls::default()
            .client("redis://127.0.0.1:6379/")
            .is_ok());
    }
}

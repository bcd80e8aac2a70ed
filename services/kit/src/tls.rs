//! Mutual TLS for the internal gRPC (gateway → services): every server requires a client
//! certificate signed by the configured CA, every client presents its own and verifies
//! the server's against the same CA.
//!
//! Configured by `TLS_CERT`, `TLS_KEY` (this process's certificate chain and key, PEM)
//! and `TLS_CA` (the CA that signs the peers, PEM). Plain text only with
//! `GRPC_INSECURE=true`, an explicit development switch that is logged loudly at start;
//! with neither, a service refuses to start. The files are read at start: rotate
//! certificates by replacing the files and restarting the instances one by one (both
//! the old and the new CA may sit in `TLS_CA` during a CA rotation). `scripts/dev-certs`
//! makes a development CA and per-service certificates.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

/// The gRPC transport security settings of a service.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct GrpcTls {
    /// This process's certificate chain, PEM (`TLS_CERT`).
    pub tls_cert: String,
    /// Its private key, PEM (`TLS_KEY`).
    pub tls_key: String,
    /// The CA certificate(s) peers must be signed by, PEM (`TLS_CA`).
    pub tls_ca: String,
    /// Plain-text gRPC, for development only (`GRPC_INSECURE`, default false).
    pub grpc_insecure: bool,
}

/// The PEM material, read.
#[derive(Clone)]
struct Material {
    identity: Identity,
    ca: Certificate,
}

impl GrpcTls {
    /// Mutual TLS from these files.
    pub fn files(cert: impl AsRef<Path>, key: impl AsRef<Path>, ca: impl AsRef<Path>) -> Self {
        let s = |p: &Path| p.display().to_string();
        Self {
            tls_cert: s(cert.as_ref()),
            tls_key: s(key.as_ref()),
            tls_ca: s(ca.as_ref()),
            grpc_insecure: false,
        }
    }

    /// Plain text, for the one-process system whose gRPC never leaves the process.
    pub fn loopback_plaintext() -> Self {
        Self {
            grpc_insecure: true,
            ..Self::default()
        }
    }

    /// Whether mutual TLS is on.
    pub fn enabled(&self) -> bool {
        !self.tls_cert.is_empty()
    }

    /// The certificate, key and CA, or `None` for plain text; an error for an incomplete
    /// or missing configuration.
    fn material(&self) -> anyhow::Result<Option<Material>> {
        let set = [&self.tls_cert, &self.tls_key, &self.tls_ca]
            .iter()
            .filter(|v| !v.is_empty())
            .count();
        match set {
            3 => {
                let read = |what: &str, p: &str| {
                    std::fs::read(p).map_err(|e| anyhow::anyhow!("{what} {p}: {e}"))
                };
                let identity = Identity::from_pem(
                    read("TLS_CERT", &self.tls_cert)?,
                    read("TLS_KEY", &self.tls_key)?,
                );
                let ca = Certificate::from_pem(read("TLS_CA", &self.tls_ca)?);
                Ok(Some(Material { identity, ca }))
            }
            0 if self.grpc_insecure => Ok(None),
            0 => anyhow::bail!(
                "gRPC needs TLS_CERT, TLS_KEY and TLS_CA (mutual TLS; scripts/dev-certs makes \
                 development ones), or GRPC_INSECURE=true for plain text in development"
            ),
            _ => anyhow::bail!("TLS_CERT, TLS_KEY and TLS_CA must be set together"),
        }
    }

    /// `builder` with mutual TLS required of every client (or as it is, in plain-text
    /// mode — logged as a warning).
    pub fn server(&self, builder: Server) -> anyhow::Result<Server> {
        match self.material()? {
            Some(m) => {
                tracing::info!(cert = %self.tls_cert, ca = %self.tls_ca, "gRPC: взаимный TLS, сертификат клиента обязателен");
                Ok(builder.tls_config(
                    ServerTlsConfig::new()
                        .identity(m.identity)
                        .client_ca_root(m.ca),
                )?)
            }
            None => {
                tracing::warn!("ВНИМАНИЕ: gRPC без TLS (GRPC_INSECURE=true) — только для разработки: любой, кто достучится до порта, сможет вызывать сервис");
                Ok(builder)
            }
        }
    }

    /// An endpoint for `url` presenting this process's certificate and verifying the
    /// server's against the CA. With TLS on, an `http://` URL is taken as `https://`.
    pub fn endpoint(&self, url: &str) -> anyhow::Result<Endpoint> {
        match self.material()? {
            Some(m) => {
                let url = match url.strip_prefix("http://") {
                    Some(rest) => format!("https://{rest}"),
                    None => url.to_owned(),
                };
                Ok(Endpoint::from_shared(url)?.tls_config(
                    ClientTlsConfig::new()
                        .identity(m.identity)
                        .ca_certificate(m.ca),
                )?)
            }
            None => Ok(Endpoint::from_shared(url.to_owned())?),
        }
    }

    /// An endpoint connecting to `addr` — one of the addresses `host` resolves to —
    /// that verifies the server's certificate for `host` (client-side balancing over a
    /// name's replicas: each is dialled by address, each must prove the name).
    pub fn endpoint_at(&self, host: &str, addr: std::net::SocketAddr) -> anyhow::Result<Endpoint> {
        match self.material()? {
            Some(m) => Ok(
                Endpoint::from_shared(format!("https://{addr}"))?.tls_config(
                    ClientTlsConfig::new()
                        .domain_name(host)
                        .identity(m.identity)
                        .ca_certificate(m.ca),
                )?,
            ),
            None => Ok(Endpoint::from_shared(format!("http://{addr}"))?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_pki::{leaf, new_ca, Files};
    use std::time::Duration;

    /// Write a cert/key pair and a CA into `files`; the settings naming them.
    fn tls(files: &Files, name: &str, pair: &(String, String), ca: &str) -> GrpcTls {
        let (cert, key, ca) = files.pki(name, pair, ca);
        GrpcTls::files(cert, key, ca)
    }

    /// A gRPC server (the health service) with `tls`; its address.
    async fn server(tls: &GrpcTls) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let mut builder = tls.server(Server::builder()).unwrap();
        tokio::spawn(async move {
            builder
                .add_service(health)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        });
        addr
    }

    /// Whether a health check through `endpoint` succeeds.
    async fn reaches(endpoint: Endpoint) -> bool {
        let call = async {
            let channel = endpoint.connect().await.ok()?;
            tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .ok()
        };
        tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("a TLS handshake hung")
            .is_some()
    }

    #[tokio::test]
    async fn only_clients_with_a_valid_certificate_from_our_ca_get_in() {
        let files = Files::new();
        let (ca_pem, ca) = new_ca();
        let (other_ca_pem, other_ca) = new_ca();
        let server_tls = tls(&files, "server", &leaf(&ca, false), &ca_pem);
        let addr = server(&server_tls).await;
        let url = format!("https://127.0.0.1:{}", addr.port());

        // The right client certificate: in.
        let client = tls(&files, "client", &leaf(&ca, false), &ca_pem);
        assert!(reaches(client.endpoint(&url).unwrap()).await);
        // No certificate (TLS, verifying the server, but presenting nothing): refused.
        let anonymous = Endpoint::from_shared(url.clone())
            .unwrap()
            .tls_config(
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem.as_bytes())),
            )
            .unwrap();
        assert!(
            !reaches(anonymous).await,
            "a client without a certificate got in"
        );
        // Plain text: refused.
        let plain = Endpoint::from_shared(format!("http://127.0.0.1:{}", addr.port())).unwrap();
        assert!(!reaches(plain).await, "a plain-text client got in");
        // A certificate from another CA (trusting ours for the server): refused.
        let foreign = tls(&files, "foreign", &leaf(&other_ca, false), &ca_pem);
        assert!(
            !reaches(foreign.endpoint(&url).unwrap()).await,
            "another CA's certificate got in"
        );
        // An expired certificate from our CA: refused.
        let expired = tls(&files, "expired", &leaf(&ca, true), &ca_pem);
        assert!(
            !reaches(expired.endpoint(&url).unwrap()).await,
            "an expired certificate got in"
        );
        // And a client that trusts another CA does not talk to our server.
        let wary = tls(&files, "wary", &leaf(&ca, false), &other_ca_pem);
        assert!(!reaches(wary.endpoint(&url).unwrap()).await);
    }

    #[test]
    fn no_tls_settings_is_an_error_unless_plain_text_is_asked_for() {
        let err = GrpcTls::default().material().err().unwrap().to_string();
        assert!(err.contains("TLS_CERT"), "{err}");
        assert!(GrpcTls::loopback_plaintext().material().unwrap().is_none());
        let partial = GrpcTls {
            tls_cert: "a.pem".into(),
            ..GrpcTls::default()
        };
        assert!(partial.material().is_err());
    }
}

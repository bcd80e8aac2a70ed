//! Certificates for the TLS tests: a CA, leaves for localhost signed by it, files.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::path::PathBuf;

/// A CA: its certificate (PEM) and an issuer to sign leaves with. Each has a name of
/// its own (OpenSSL takes a leaf whose issuer and subject names match for self-signed).
pub(crate) fn new_ca() -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("ordersys test CA {}", uuid::Uuid::new_v4().simple()),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

/// A leaf for localhost/127.0.0.1 signed by `issuer`: (cert PEM, key PEM).
pub(crate) fn leaf(issuer: &Issuer<'_, KeyPair>, expired: bool) -> (String, String) {
    leaf_of(issuer, expired, None)
}

/// A leaf of the service `name` (its SAN URI `spiffe://ordersys/<name>`), or of none.
pub(crate) fn service_leaf(issuer: &Issuer<'_, KeyPair>, name: Option<&str>) -> (String, String) {
    leaf_of(issuer, false, name)
}

fn leaf_of(issuer: &Issuer<'_, KeyPair>, expired: bool, service: Option<&str>) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    if let Some(name) = service {
        let uri = format!("spiffe://ordersys/{name}");
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(uri.as_str().try_into().unwrap()));
    }
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A temporary directory of PEM files, removed on drop.
pub(crate) struct Files(pub(crate) PathBuf);

impl Files {
    pub(crate) fn new() -> Self {
        let d =
            std::env::temp_dir().join(format!("ordersys-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }

    /// Write `name`'s cert/key pair and a CA: their paths (cert, key, CA).
    pub(crate) fn pki(
        &self,
        name: &str,
        (cert, key): &(String, String),
        ca: &str,
    ) -> (PathBuf, PathBuf, PathBuf) {
        let p = |f: &str| self.0.join(format!("{name}-{f}"));
        std::fs::write(p("cert.pem"), cert).unwrap();
        std::fs::write(p("key.pem"), key).unwrap();
        std::fs::write(p("ca.pem"), ca).unwrap();
        (p("cert.pem"), p("key.pem"), p("ca.pem"))
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

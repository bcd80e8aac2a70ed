//! Who may call what on a service's gRPC port. Mutual TLS ([`crate::tls`]) proves a
//! caller holds a certificate from our CA; this layer reads *which* service it is — the
//! one SAN URI `spiffe://ordersys/<service>` of its verified certificate
//! (`scripts/dev-certs` writes it) — and lets a call through only when the method's
//! entry in an explicit allow-list names that service. Anything else is answered
//! `PERMISSION_DENIED` before the service sees it, logged, and counted in
//! `grpc_server_denied_total{caller,method}` (both labels bounded: a caller the policy
//! does not name is `other`, a path it has no rule for is `other`).
//!
//! The health service (`/grpc.health.v1.Health/`) is open to every certificate from the
//! CA: it tells nothing but "serving". In plain-text mode (`GRPC_INSECURE`, development
//! only) there is no certificate and so no identity: nothing is checked, as the start-up
//! warning says.
//!
//! ```
//! use ordersys_kit::callers::Callers;
//!
//! let callers = Callers::new().allow("/ordersys.user.v1.UserService/", &["gateway"]);
//! assert!(callers.permits("/ordersys.user.v1.UserService/GetUser", Some("gateway")));
//! assert!(!callers.permits("/ordersys.user.v1.UserService/GetUser", Some("payment")));
//! assert!(!callers.permits("/ordersys.user.v1.UserService/GetUser", None));
//! assert!(callers.permits("/grpc.health.v1.Health/Check", Some("payment")));
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use prometheus::IntCounterVec;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

/// The SPIFFE trust domain of our service identities: `spiffe://ordersys/<service>`.
pub const TRUST_DOMAIN: &str = "ordersys";

/// The health service's path prefix, open to every authenticated peer.
const HEALTH: &str = "/grpc.health.v1.Health/";

/// The service a certificate (DER) names: its one SAN URI `spiffe://ordersys/<name>`,
/// the name lower-case letters, digits and `-`. `None` for a certificate that cannot be
/// parsed, names no service, or names more than one (an ambiguous identity is none).
pub fn service_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let prefix = format!("spiffe://{TRUST_DOMAIN}/");
    let mut names = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(uri) => uri.strip_prefix(prefix.as_str()),
        _ => None,
    });
    let name = names.next()?;
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    (valid && names.next().is_none()).then(|| name.to_owned())
}

/// The per-method allow-list of a service: which callers each method path (exact, or
/// every method of a gRPC service when the rule ends in `/`) accepts.
#[derive(Debug, Clone, Default)]
pub struct Callers {
    rules: Vec<(String, Vec<String>)>,
}

impl Callers {
    /// No one may call anything but the health service.
    pub fn new() -> Self {
        Self::default()
    }

    /// Let the services `callers` call `path`: a method (`/ordersys.user.v1.UserService/GetUser`)
    /// or, ending in `/`, every method of a gRPC service.
    pub fn allow(mut self, path: &str, callers: &[&str]) -> Self {
        self.rules.push((
            path.to_owned(),
            callers.iter().map(|c| (*c).to_owned()).collect(),
        ));
        self
    }

    /// Let the services `callers` call every method of the gRPC service `name`
    /// (`ordersys.user.v1.UserService`: the generated server's `SERVICE_NAME`).
    pub fn allow_service(self, name: &str, callers: &[&str]) -> Self {
        self.allow(&format!("/{name}/"), callers)
    }

    /// The rule for `path`: an exact one first, then the service's.
    fn rule(&self, path: &str) -> Option<&(String, Vec<String>)> {
        self.rules.iter().find(|(p, _)| p == path).or_else(|| {
            self.rules
                .iter()
                .find(|(p, _)| p.ends_with('/') && path.starts_with(p.as_str()))
        })
    }

    /// Whether `caller` (a service name from a verified certificate; `None`: the
    /// certificate names none) may call `path`.
    pub fn permits(&self, path: &str, caller: Option<&str>) -> bool {
        let Some(caller) = caller else { return false };
        if path.starts_with(HEALTH) {
            return true;
        }
        self.rule(path)
            .is_some_and(|(_, allowed)| allowed.iter().any(|a| a == caller))
    }

    /// The bounded metric labels of a refusal: (caller, method).
    fn labels<'a>(&'a self, path: &str, caller: Option<&'a str>) -> (&'a str, &'a str) {
        let known = |c: &str| self.rules.iter().any(|(_, a)| a.iter().any(|x| x == c));
        let caller = match caller {
            None => "none",
            Some(c) if known(c) => c,
            Some(_) => "other",
        };
        let method = self.rule(path).map_or("other", |(p, _)| p.as_str());
        (caller, method)
    }

    /// The layer enforcing this list, counting refusals in `denied` (labels `caller`,
    /// `method`; see [`crate::metrics::RequestMetricsLayer::denied`]).
    pub fn layer(self, service: &'static str, denied: IntCounterVec) -> CallersLayer {
        CallersLayer {
            callers: Arc::new(self),
            service,
            denied,
            enforced: true,
        }
    }
}

/// Enforces [`Callers`] on a gRPC server whose connections are mutual TLS.
#[derive(Debug, Clone)]
pub struct CallersLayer {
    callers: Arc<Callers>,
    service: &'static str,
    denied: IntCounterVec,
    enforced: bool,
}

impl CallersLayer {
    /// Whether the list is enforced (default); `false` lets every call through — for a
    /// plain-text server, whose callers have no certificate.
    pub fn enforced(mut self, enforced: bool) -> Self {
        self.enforced = enforced;
        self
    }
}

impl<S> Layer<S> for CallersLayer {
    type Service = CheckCallers<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CheckCallers {
            inner,
            layer: self.clone(),
        }
    }
}

/// Service of [`CallersLayer`].
#[derive(Debug, Clone)]
pub struct CheckCallers<S> {
    inner: S,
    layer: CallersLayer,
}

/// The service the verified peer certificate of `req` names, if any.
fn caller_of<B>(req: &Request<B>) -> Option<String> {
    let certs = req
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()?
        .peer_certs()?;
    service_of(certs.first()?)
}

impl<S, B, RB> Service<Request<B>> for CheckCallers<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let path = req.uri().path();
        let caller = self.layer.enforced.then(|| caller_of(&req)).flatten();
        let callers = &self.layer.callers;
        if !self.layer.enforced || callers.permits(path, caller.as_deref()) {
            return Box::pin(self.inner.call(req));
        }
        let (who, method) = callers.labels(path, caller.as_deref());
        self.layer.denied.with_label_values(&[who, method]).inc();
        tracing::warn!(
            service = self.layer.service,
            caller = caller.as_deref().unwrap_or("-"),
            method = %path.chars().take(128).collect::<String>(),
            "gRPC: вызов отклонён — сертификат вызывающего не даёт права на этот метод"
        );
        let message = match &caller {
            Some(c) => format!("{c} may not call {method} of {}", self.layer.service),
            None => format!(
                "the client certificate names no service (a SAN URI spiffe://{TRUST_DOMAIN}/<service>)"
            ),
        };
        let denied = tonic::Status::permission_denied(message).into_http();
        Box::pin(async move { Ok(denied) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_pki::{new_ca, service_leaf, Files};
    use crate::tls::GrpcTls;
    use std::time::Duration;
    use tonic::transport::Server;

    fn cert(uris: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        for uri in uris {
            params.subject_alt_names.push(rcgen::SanType::URI(
                rcgen::string::Ia5String::try_from(*uri).unwrap(),
            ));
        }
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_certificate_names_one_service_or_none() {
        assert_eq!(
            service_of(&cert(&["spiffe://ordersys/gateway"])).as_deref(),
            Some("gateway")
        );
        assert_eq!(service_of(&cert(&[])), None);
        assert_eq!(service_of(&cert(&["spiffe://other/gateway"])), None);
        assert_eq!(service_of(&cert(&["spiffe://ordersys/"])), None);
        assert_eq!(service_of(&cert(&["spiffe://ordersys/Gate way"])), None);
        assert_eq!(
            service_of(&cert(&[
                "spiffe://ordersys/gateway",
                "spiffe://ordersys/payment"
            ])),
            None,
            "two names are no name"
        );
        assert_eq!(
            service_of(&cert(&["https://example.com", "spiffe://ordersys/order"])).as_deref(),
            Some("order"),
        );
        assert_eq!(service_of(b"not a certificate"), None);
    }

    #[test]
    fn exact_rules_win_over_service_rules_and_nothing_is_open_by_default() {
        let callers = Callers::new()
            .allow("/s.v1.S/", &["gateway"])
            .allow("/s.v1.S/Admin", &["order"]);
        assert!(callers.permits("/s.v1.S/Get", Some("gateway")));
        assert!(!callers.permits("/s.v1.S/Get", Some("order")));
        assert!(callers.permits("/s.v1.S/Admin", Some("order")));
        assert!(!callers.permits("/s.v1.S/Admin", Some("gateway")));
        assert!(!callers.permits("/t.v1.T/Get", Some("gateway")));
        assert!(!callers.permits("/s.v1.SX/Get", Some("gateway")));
        assert!(callers.permits("/grpc.health.v1.Health/Check", Some("anyone")));
        assert!(!callers.permits("/grpc.health.v1.Health/Check", None));
        assert_eq!(
            callers.labels("/s.v1.S/Made-up-1", Some("stranger")),
            ("other", "/s.v1.S/")
        );
        assert_eq!(callers.labels("/x/y", None), ("none", "other"));
        assert_eq!(
            callers.labels("/s.v1.S/Admin", Some("gateway")),
            ("gateway", "/s.v1.S/Admin")
        );
    }

    /// The status code of a call to `path` over mutual TLS presenting `client`
    /// (a server of only the health service: an allowed call to any other path is
    /// UNIMPLEMENTED, a refused one PERMISSION_DENIED).
    async fn call(
        server: std::net::SocketAddr,
        client: &GrpcTls,
        path: &'static str,
    ) -> tonic::Code {
        let endpoint = client
            .endpoint(&format!("https://localhost:{}", server.port()))
            .unwrap();
        let attempt = async {
            let channel = endpoint.connect().await.unwrap();
            ordersys_testkit::grpc_call(channel, path)
                .await
                .map_or_else(|s| s.code(), |()| tonic::Code::Ok)
        };
        tokio::time::timeout(Duration::from_secs(10), attempt)
            .await
            .expect("a call hung")
    }

    #[tokio::test]
    async fn over_mutual_tls_only_the_named_callers_get_through() {
        let files = Files::new();
        let (ca_pem, ca) = new_ca();
        let tls = |name: &str, service: Option<&str>| {
            let (cert, key, ca) = files.pki(name, &service_leaf(&ca, service), &ca_pem);
            GrpcTls::files(cert, key, ca)
        };
        let server_tls = tls("server", Some("user"));
        let registry = prometheus::Registry::new();
        let metrics = crate::metrics::RequestMetricsLayer::new(&registry).unwrap();
        let checked = Callers::new()
            .allow("/test.v1.Gated/", &["gateway"])
            .layer("user", metrics.denied());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let mut server = server_tls.server(Server::builder()).unwrap().layer(checked);
        tokio::spawn(async move {
            server
                .add_service(health)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        });

        let gated = "/test.v1.Gated/Call";
        let health = "/grpc.health.v1.Health/Check";
        let gateway = tls("gateway", Some("gateway"));
        assert_eq!(
            call(addr, &gateway, gated).await,
            tonic::Code::Unimplemented
        );
        assert_eq!(call(addr, &gateway, health).await, tonic::Code::Ok);
        let payment = tls("payment", Some("payment"));
        assert_eq!(
            call(addr, &payment, gated).await,
            tonic::Code::PermissionDenied
        );
        assert_eq!(call(addr, &payment, health).await, tonic::Code::Ok);
        let anonymous = tls("anonymous", None);
        assert_eq!(
            call(addr, &anonymous, gated).await,
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            call(addr, &anonymous, health).await,
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            call(addr, &gateway, "/other.v1.X/Y").await,
            tonic::Code::PermissionDenied
        );

        let denied = |caller: &str, method: &str| {
            metrics.denied().with_label_values(&[caller, method]).get()
        };
        assert_eq!(
            denied("other", "/test.v1.Gated/"),
            1,
            "payment is not in the list"
        );
        assert_eq!(denied("none", "/test.v1.Gated/"), 1);
        assert_eq!(denied("none", "other"), 1);
        assert_eq!(denied("gateway", "other"), 1);
    }
}

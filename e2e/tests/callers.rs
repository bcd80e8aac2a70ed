//! Who may call the services' gRPC, probed from outside as an attacker holding one of
//! our certificates would: every RPC of every service, called with every service's
//! development certificate. Only the gateway's gets through (the services call no one);
//! the others get `PERMISSION_DENIED` before the service reads the request, counted on
//! the service's admin port; the Redis server's certificate, made for serving only, does
//! not even complete the handshake. The health service answers every peer.

use std::time::Duration;

use ordersys_e2e::{dev_certs, email, Api, Options, System};
use ordersys_proto::user::v1::user_service_client::UserServiceClient;
use ordersys_proto::user::v1::GetUserRequest;
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

/// Every RPC, by service (index into `System::grpc`).
const RPCS: [(usize, &[&str]); 3] = [
    (
        0,
        &[
            "/ordersys.user.v1.UserService/Register",
            "/ordersys.user.v1.UserService/Login",
            "/ordersys.user.v1.UserService/Logout",
            "/ordersys.user.v1.UserService/GetUser",
        ],
    ),
    (
        1,
        &[
            "/ordersys.order.v1.OrderService/CreateOrder",
            "/ordersys.order.v1.OrderService/GetOrder",
            "/ordersys.order.v1.OrderService/ListOrders",
            "/ordersys.order.v1.OrderService/CancelOrder",
        ],
    ),
    (2, &["/ordersys.payment.v1.PaymentService/GetWallet"]),
];

/// A channel to `url` presenting the development certificate `cert`; `None` when the
/// TLS handshake is refused.
async fn channel(url: &str, cert: &str) -> Option<Channel> {
    let dir = dev_certs();
    let read = |f: String| std::fs::read(dir.join(f)).unwrap();
    let tls = ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificate(Certificate::from_pem(read("ca.pem".into())))
        .identity(Identity::from_pem(
            read(format!("{cert}.pem")),
            read(format!("{cert}.key")),
        ));
    let url = url.replace("http://", "https://");
    let endpoint = Endpoint::from_shared(url)
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .timeout(Duration::from_secs(10));
    endpoint.connect().await.ok()
}

/// The status code of `path` called with an empty message over `channel`.
async fn call(channel: Channel, path: &'static str) -> Code {
    call_status(channel, path)
        .await
        .map_or_else(|s| s.code(), |()| Code::Ok)
}

/// `path` called with an empty message over `channel`.
async fn call_status(channel: Channel, path: &'static str) -> Result<(), tonic::Status> {
    ordersys_testkit::grpc_call(channel, path).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_gateway_certificate_calls_the_services() {
    let sys = System::start(Options::default()).await;
    let api = Api::new(&sys.base);
    let e = email();
    let body = json!({ "email": e, "password": "password-123" });
    let r = api
        .send("POST", "/api/v1/auth/register", Some(body), None)
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let user_id = r.body["user_id"].as_str().unwrap().to_owned();

    // What the issue saw: another service's certificate read user A's e-mail.
    let get_user = |channel: Channel| {
        let user_id = user_id.clone();
        async move {
            UserServiceClient::new(channel)
                .get_user(GetUserRequest { user_id })
                .await
        }
    };
    let payment = channel(&sys.grpc[0], "payment").await.unwrap();
    let refused = get_user(payment).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("payment may not call"),
        "{refused:?}"
    );
    let gateway = channel(&sys.grpc[0], "gateway").await.unwrap();
    let user = get_user(gateway).await.expect("the gateway reads users");
    assert_eq!(user.into_inner().email, e);

    // The whole matrix: every RPC, every certificate.
    for (service, paths) in RPCS {
        let url = &sys.grpc[service];
        for &path in paths {
            let gateway = channel(url, "gateway").await.unwrap();
            if let Err(status) = call_status(gateway, path).await {
                assert_ne!(
                    status.code(),
                    Code::PermissionDenied,
                    "gateway → {path}: {status:?}"
                );
            }
            for cert in ["user", "order", "payment"] {
                let ch = channel(url, cert)
                    .await
                    .expect("a service certificate connects");
                assert_eq!(
                    call(ch, path).await,
                    Code::PermissionDenied,
                    "{cert} → {path}"
                );
            }
            // Redis's certificate is for serving only: no client handshake with it.
            if let Some(ch) = channel(url, "redis").await {
                let code = call(ch, path).await;
                assert!(
                    matches!(
                        code,
                        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
                    ),
                    "redis → {path}: {code:?}"
                );
            }
        }
        for cert in ["user", "order", "payment", "gateway"] {
            let ch = channel(url, cert).await.unwrap();
            assert_eq!(
                call(ch, "/grpc.health.v1.Health/Check").await,
                Code::Ok,
                "{cert} → health"
            );
        }
    }

    // Counted where the operator looks, with bounded labels.
    let metrics = reqwest::get(format!("{}/metrics", sys.user_admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("grpc_server_denied_total")
                && l.contains(r#"caller="other""#)
                && l.contains(r#"method="/ordersys.user.v1.UserService/""#)
        })
        .unwrap_or_else(|| panic!("no denied series:\n{metrics}"));
    let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    // 4 RPCs × 3 services' certificates + the GetUser above.
    assert_eq!(count, 13.0, "{line}");
    sys.stop().await;
}

//! Who may call the services' gRPC, probed from outside as an attacker holding one of
//! our certificates would: every RPC of every service, called with every service's
//! development certificate. Only the gateway's gets through (the services call no one);
//! the others get `PERMISSION_DENIED` before the service reads the request, counted on
//! the service's admin port; the Redis server's certificate, made for serving only, does
//! not even complete the handshake. The health service answers every peer. And the
//! gateway's certificate acts only for the user whose access token it forwards: no
//! token, a forged one or another user's is refused.

use std::time::Duration;

use ordersys_e2e::{dev_certs, email, Api, Options, System};
use ordersys_proto::payment::v1::payment_service_client::PaymentServiceClient;
use ordersys_proto::payment::v1::GetWalletRequest;
use ordersys_proto::user::v1::user_service_client::UserServiceClient;
use ordersys_proto::user::v1::GetUserRequest;
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
    let (e, other) = (email(), email());
    let token = api.signup(&e, "password-123").await;
    let other_token = api.signup(&other, "password-123").await;
    let me = api.send("GET", "/api/v1/auth/me", None, Some(&token)).await;
    let user_id = me.body["user_id"].as_str().unwrap().to_owned();

    // GetUser of user A over `channel`, forwarding `token` as the gateway does.
    let get_user = |channel: Channel, token: Option<String>| {
        let user_id = user_id.clone();
        async move {
            let mut req = tonic::Request::new(GetUserRequest { user_id });
            if let Some(t) = token {
                ordersys_kit::end_user::forward(&mut req, &t);
            }
            UserServiceClient::new(channel).get_user(req).await
        }
    };
    // What the issue saw: another service's certificate read user A's e-mail.
    let payment = channel(&sys.grpc[0], "payment").await.unwrap();
    let refused = get_user(payment, Some(token.clone())).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("payment may not call"),
        "{refused:?}"
    );
    // Even the gateway's certificate acts only for the user whose token it forwards:
    // none, another user's, or one signed with another key is refused.
    let gateway = || channel(&sys.grpc[0], "gateway");
    let none = get_user(gateway().await.unwrap(), None).await.unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated, "{none:?}");
    let others = get_user(gateway().await.unwrap(), Some(other_token.clone()))
        .await
        .unwrap_err();
    assert_eq!(others.code(), Code::PermissionDenied, "{others:?}");
    let forged = authz::TokenIssuer::new(
        authz::SigningKey::hs256(b"not the secret of this system, 32+ bytes").unwrap(),
        "ordersys",
        "ordersys-api",
    )
    .issue(user_id.clone())
    .unwrap()
    .token;
    let forged = get_user(gateway().await.unwrap(), Some(forged))
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::Unauthenticated, "{forged:?}");
    let user = get_user(gateway().await.unwrap(), Some(token.clone()))
        .await
        .expect("the gateway reads its user");
    assert_eq!(user.into_inner().email, e);
    // The same on the payment service: B's token does not open A's wallet.
    let mut req = tonic::Request::new(GetWalletRequest {
        user_id: user_id.clone(),
    });
    ordersys_kit::end_user::forward(&mut req, &other_token);
    let wallet = PaymentServiceClient::new(channel(&sys.grpc[2], "gateway").await.unwrap())
        .get_wallet(req)
        .await
        .unwrap_err();
    assert_eq!(wallet.code(), Code::PermissionDenied, "{wallet:?}");

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

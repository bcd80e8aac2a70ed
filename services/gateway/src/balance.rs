//! Client-side balancing over a downstream's replicas. A downstream named by a DNS
//! name (`https://order:50052`) is called through one HTTP/2 connection per address the
//! name resolves to, with calls spread over them (power of two choices on pending
//! calls), and the name is resolved again every few seconds: a replica that appears is
//! used, one that is gone is dropped. A single connection through a Service's virtual
//! IP would pin every call of a gateway to one replica (kube-proxy balances
//! connections, not calls); for that, Kubernetes Services of the gRPC services are
//! headless (the name resolves to the pods). An IP address or `localhost` is one
//! endpoint, as before.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use ordersys_kit::local_grpc::{channel_transport, channel_transport_within, Transport};
use ordersys_kit::tls::GrpcTls;
use tonic::transport::channel::Change;
use tonic::transport::Channel;

/// How often a name is resolved again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(5);

/// The transport to `url`: balanced over the name's addresses when the host is a DNS
/// name, one lazily connected channel otherwise. `timeout` bounds every call.
pub fn transport(tls: &GrpcTls, url: &str, timeout: Duration) -> anyhow::Result<Transport> {
    let uri: http::Uri = url.parse()?;
    let host = uri.host().unwrap_or_default().to_owned();
    let literal = host.parse::<std::net::IpAddr>().is_ok()
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok()
        || host == "localhost";
    if literal || host.is_empty() {
        return Ok(channel_transport(
            tls.endpoint(url)?
                .connect_timeout(Duration::from_secs(1))
                .timeout(timeout)
                .connect_lazy(),
        ));
    }
    let port = uri.port_u16().unwrap_or(443);
    let lookup = host.clone();
    Ok(balanced(
        tls.clone(),
        host,
        timeout,
        RESOLVE_EVERY,
        move || {
            let name = lookup.clone();
            async move {
                tokio::net::lookup_host((name.as_str(), port))
                    .await
                    .map(|addrs| addrs.collect())
            }
        },
    ))
}

/// A channel balanced over what `resolve` answers, asked again every `every` (an
/// answer that is an error or empty keeps the last known set: a name that briefly does
/// not resolve does not empty the channel). Each address is dialled with TLS verified
/// for `host`. The resolving task ends with the channel.
pub fn balanced<R, F>(
    tls: GrpcTls,
    host: String,
    timeout: Duration,
    every: Duration,
    mut resolve: R,
) -> Transport
where
    R: FnMut() -> F + Send + 'static,
    F: Future<Output = std::io::Result<Vec<SocketAddr>>> + Send,
{
    let (channel, changes) = Channel::balance_channel::<SocketAddr>(64);
    tokio::spawn(async move {
        let mut live: BTreeSet<SocketAddr> = BTreeSet::new();
        loop {
            match resolve().await {
                Ok(addrs) if !addrs.is_empty() => {
                    let now: BTreeSet<SocketAddr> = addrs.into_iter().collect();
                    for gone in live.difference(&now) {
                        if changes.send(Change::Remove(*gone)).await.is_err() {
                            return;
                        }
                    }
                    for new in now.difference(&live) {
                        let endpoint = match tls.endpoint_at(&host, *new) {
                            Ok(e) => e.connect_timeout(Duration::from_secs(1)).timeout(timeout),
                            Err(e) => {
                                tracing::error!(host = %host, error = %e, "нет TLS-настроек для нижестоящего сервиса");
                                continue;
                            }
                        };
                        if changes.send(Change::Insert(*new, endpoint)).await.is_err() {
                            return;
                        }
                    }
                    if now != live {
                        tracing::info!(host = %host, addresses = ?now, "адреса нижестоящего сервиса обновлены");
                        live = now;
                    }
                }
                Ok(_) => tracing::warn!(host = %host, "имя нижестоящего сервиса не разрешается"),
                Err(e) => {
                    tracing::warn!(host = %host, error = %e, "имя нижестоящего сервиса не разрешается")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = changes.closed() => return,
            }
        }
    });
    channel_transport_within(channel, timeout)
}

#[cfg(test)]
mod tests;

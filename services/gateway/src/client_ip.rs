//! The client address used for rate limiting: the TCP peer, or — only when the peer is
//! a trusted proxy — the right-most address in `X-Forwarded-For` that is not itself a
//! trusted proxy.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// Parsed `TRUSTED_PROXIES`.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parse a comma-separated list of IPs and CIDRs.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let mut nets = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let net = match part.parse::<IpNet>() {
                Ok(n) => n,
                Err(_) => IpNet::from(part.parse::<IpAddr>().map_err(|_| {
                    anyhow::anyhow!("TRUSTED_PROXIES: {part:?} is not an IP or CIDR")
                })?),
            };
            nets.push(net);
        }
        Ok(Self(nets))
    }

    fn trusts(&self, ip: &IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }

    /// The client address for a request from `peer` with `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(&peer) {
            return peer;
        }
        let mut client = peer;
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in hops.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) if self.trusts(&ip) => client = ip,
                Ok(ip) => return ip,
                Err(_) => return client, // garbage: stop at the last address we trust
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn xff(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static(v));
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let t = TrustedProxies::parse("10.0.0.0/8, 192.168.1.1").unwrap();
        let spoof = xff("1.2.3.4");
        // Untrusted peer: its header is ignored.
        assert_eq!(
            t.client_ip("203.0.113.9".parse().unwrap(), &spoof),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // Trusted proxy: the client it reports.
        assert_eq!(
            t.client_ip("10.1.2.3".parse().unwrap(), &spoof),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        // Chain: a client-supplied fake first hop is skipped; the right-most untrusted wins.
        let chain = xff("6.6.6.6, 198.51.100.7, 10.0.0.5");
        assert_eq!(
            t.client_ip("192.168.1.1".parse().unwrap(), &chain),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // No header from a proxy: the proxy itself.
        assert_eq!(
            t.client_ip("10.0.0.1".parse().unwrap(), &HeaderMap::new()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert!(TrustedProxies::parse("not-an-ip").is_err());
    }
}

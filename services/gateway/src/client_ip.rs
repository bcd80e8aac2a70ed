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

    /// The client address for a request from `peer` with `headers`. IPv4 addresses
    /// mapped into IPv6 (`::ffff:10.0.0.1`, what a dual-stack listener reports) count as
    /// the IPv4 address, for trust and for the answer.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
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
            match hop.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
                Ok(ip) if self.trusts(&ip) => client = ip,
                Ok(ip) => return ip,
                Err(_) => return client, // garbage: stop at the last address we trust
            }
        }
        client
    }
}

/// The rate-limit bucket of a client: an IPv4 address on its own; an IPv6 address by its
/// /64 — one subscriber usually holds a whole /64 and can pick a new address from it
/// for every request.
pub fn rate_limit_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let prefix = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
            format!("{prefix}/64")
        }
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

    #[test]
    fn ipv4_mapped_addresses_are_ipv4_for_trust_and_answer() {
        let t = TrustedProxies::parse("10.0.0.0/8").unwrap();
        // A dual-stack listener reports the proxy as ::ffff:10.1.2.3: still trusted.
        assert_eq!(
            t.client_ip("::ffff:10.1.2.3".parse().unwrap(), &xff("::ffff:1.2.3.4")),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            t.client_ip("::ffff:203.0.113.9".parse().unwrap(), &HeaderMap::new()),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64() {
        let a = rate_limit_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = rate_limit_key("2001:db8:1:2:ffff:1:2:3".parse().unwrap());
        let other = rate_limit_key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, "2001:db8:1:2::/64");
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert_eq!(
            rate_limit_key("203.0.113.9".parse().unwrap()),
            "203.0.113.9"
        );
        assert_eq!(
            rate_limit_key("::ffff:203.0.113.9".parse().unwrap()),
            "203.0.113.9"
        );
    }
}

//! Which `Host` and `Origin` headers a node's HTTP listener accepts. A browser page on
//! another site can reach a node through DNS rebinding (its own name made to resolve to the
//! node's address): the request then carries that site's name as `Host`, so only the
//! node's own names are accepted. A page on another origin may also post to a node it can
//! reach (a form, `fetch` with `no-cors`): a request whose `Origin` is not the node's own
//! (or allowed by config) is refused.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone)]
pub struct HostRules {
    /// Host names (lower case, no port) accepted besides the defaults below.
    names: BTreeSet<String>,
    /// The listener is on a loopback address, or every address (which includes loopback):
    /// `localhost` and loopback addresses are its names.
    loopback_names: bool,
    /// The listener is on every address: any IP address literal names it (a rebinding
    /// attack needs a DNS name).
    any_ip: bool,
    /// Origins (`scheme://host[:port]`, lower case) allowed besides the node's own.
    origins: BTreeSet<String>,
}

impl HostRules {
    /// `listen`: the HTTP listener; `allowed_hosts`: `[http] allowed_hosts` and the names
    /// of the node's aggregator set (its `sql_name`, its partition's `hostname`).
    pub fn new(
        listen: SocketAddr,
        allowed_hosts: impl IntoIterator<Item = String>,
        allowed_origins: &[String],
    ) -> HostRules {
        let ip = listen.ip();
        let mut names: BTreeSet<String> = allowed_hosts
            .into_iter()
            .map(|h| host_part(&h.to_ascii_lowercase()).to_string())
            .filter(|h| !h.is_empty())
            .collect();
        names.insert(ip.to_string());
        HostRules {
            names,
            loopback_names: ip.is_loopback() || ip.is_unspecified(),
            any_ip: ip.is_unspecified(),
            origins: allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }
    }

    /// Whether `host` (the `Host` header, with or without a port) names this node.
    pub fn host_allowed(&self, host: &str) -> bool {
        let lower = host.trim().to_ascii_lowercase();
        let name = host_part(&lower).trim_end_matches('.');
        // An IPv6 address comes in brackets (`[2001:db8::1]:8080`).
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        if self.names.contains(name) || self.names.contains(bare) {
            return true;
        }
        let ip = bare.parse::<IpAddr>().ok();
        if self.any_ip && ip.is_some() {
            return true;
        }
        self.loopback_names
            && (name == "localhost"
                || name.ends_with(".localhost")
                || ip.is_some_and(|ip| ip.is_loopback()))
    }

    /// Whether a request with this `Origin` may be answered: the node's own origin (same
    /// host and port as the request's `Host`) or one allowed by `[http] allowed_origins`.
    pub fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        if self.origins.contains(&origin) {
            return true;
        }
        let Some(host) = host else { return false };
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        authority.is_some_and(|a| a == host.trim().to_ascii_lowercase())
    }

    /// An origin allowed by config (answers to it carry `Access-Control-Allow-Origin`).
    pub fn listed_origin(&self, origin: &str) -> bool {
        self.origins
            .contains(&origin.trim().trim_end_matches('/').to_ascii_lowercase())
    }
}

/// `host` without its port: `name:8080` → `name`, `[::1]:8080` → `[::1]`; an IPv6
/// address without brackets is kept whole.
fn host_part(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn a_loopback_listener_answers_loopback_names_only() {
        let r = HostRules::new(addr("127.0.0.1:8080"), Vec::new(), &[]);
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "localhost:8080",
            "LOCALHOST",
            "127.1.2.3:9",
            "[::1]:8080",
            "app.localhost",
        ] {
            assert!(r.host_allowed(ok), "{ok}");
        }
        for bad in [
            "attacker.example",
            "attacker.example:8080",
            "10.0.0.1:8080",
            "localhost.attacker.example",
            "",
        ] {
            assert!(!r.host_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn a_public_listener_answers_its_address_and_configured_names() {
        let r = HostRules::new(
            addr("10.1.2.3:8080"),
            vec!["query.example.com".into(), "sql.main.example:8080".into()],
            &[],
        );
        for ok in [
            "10.1.2.3:8080",
            "query.example.com",
            "Query.Example.Com.:443",
            "sql.main.example:8080",
        ] {
            assert!(r.host_allowed(ok), "{ok}");
        }
        for bad in [
            "localhost:8080",
            "127.0.0.1:8080",
            "10.1.2.4",
            "evil.example",
        ] {
            assert!(!r.host_allowed(bad), "{bad}");
        }
        // Every address: IP literals (and loopback names), not foreign DNS names.
        let any = HostRules::new(addr("0.0.0.0:8080"), Vec::new(), &[]);
        assert!(any.host_allowed("192.0.2.7:8080") && any.host_allowed("localhost"));
        let v6 = HostRules::new(addr("[2001:db8::1]:8080"), Vec::new(), &[]);
        assert!(v6.host_allowed("[2001:db8::1]:8080"));
        assert!(!v6.host_allowed("[2001:db8::2]:8080"));
        assert!(!any.host_allowed("attacker.example:8080"));
    }

    #[test]
    fn only_the_same_origin_or_listed_ones_pass() {
        let r = HostRules::new(
            addr("127.0.0.1:8080"),
            Vec::new(),
            &["https://grafana.example/".into()],
        );
        let host = Some("127.0.0.1:8080");
        assert!(r.origin_allowed("http://127.0.0.1:8080", host));
        assert!(r.origin_allowed("https://grafana.example", host));
        assert!(r.listed_origin("https://GRAFANA.example"));
        assert!(!r.origin_allowed("http://attacker.example", host));
        assert!(!r.origin_allowed("http://127.0.0.1:8081", host));
        assert!(!r.origin_allowed("null", host));
        assert!(!r.origin_allowed("http://127.0.0.1:8080", None));
    }
}

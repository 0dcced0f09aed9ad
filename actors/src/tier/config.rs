//! Configuration of a node's place in the hierarchy: `[link]` (the children it dials, the
//! address parents dial) and `[requests]` (how long requested tables stay, prewarm).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::names::check_entry;
use crate::error::{ConfigError, ConfigResult};
use crate::link::frame::{Codec, DEFAULT_MAX_FRAME_BYTES};
use crate::tls::TlsConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkConfig {
    /// Where parents dial this node (edge, cluster proxy, TLA). None: no parent.
    pub listen: Option<SocketAddr>,
    /// The children this node dials, one address each: `HOST:PORT` (machines at a proxy,
    /// proxies at a TLA). A DNS name stands for every address it resolves to, as
    /// alternatives of one child. At a SQL node: the TLAs it may choose from.
    pub children: Vec<String>,
    /// Children reached through any of several addresses (a cluster's proxies): the link
    /// uses one at a time and moves to the next when it fails or falls silent.
    #[serde(rename = "child")]
    pub child_groups: Vec<ChildGroup>,
    /// A child silent this long is dropped: its rows leave until it speaks again.
    #[serde(with = "humantime_serde")]
    pub drop_after: Duration,
    /// How long a dropped child stays listed in `query_departed` (unless it returns).
    #[serde(with = "humantime_serde")]
    pub departed_keep: Duration,
    /// At seal time, how long to keep waiting for children that have not delivered the
    /// round yet (at most half the interval) before sealing without them.
    #[serde(with = "humantime_serde")]
    pub merge_grace: Duration,
    /// A parent (proxy, TLA) seals as soon as every configured child has delivered the
    /// round (before that, once every child has delivered any generation: the first
    /// complete one after a start), instead of waiting for its offset, which stays the
    /// deadline for children late with the round.
    pub seal_when_delivered: bool,
    /// A parent after a start, until a generation has every child in: how long the
    /// clock's seal waits for children connected but still sending their first copy, so a
    /// cold fleet's first generation comes whole rather than in part with the rest seconds
    /// later (each copy then crossing the next link and applied twice). Children not
    /// connected do not hold it; spent once per start; at most half the interval.
    #[serde(with = "humantime_serde")]
    pub cold_seal_hold: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Reconnect backoff: doubles from `backoff_min` up to `backoff_max`.
    #[serde(with = "humantime_serde")]
    pub backoff_min: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Largest frame accepted from a child (decompressed): generations, which may be large;
    /// a larger one closes the link with an error.
    pub max_frame_bytes: usize,
    /// At `listen`: largest hello, probe or request frame a parent may send (compressed or
    /// decompressed). Checked from the length prefix, before the body is read.
    pub max_request_frame_bytes: usize,
    /// At `listen`: a connection that has not sent a complete hello (or probe) this long
    /// after it was accepted is closed.
    #[serde(with = "humantime_serde")]
    pub hello_timeout: Duration,
    /// At `listen`: sessions served at once (parents, probes, connections still before
    /// hello); connections past it are closed at once.
    pub max_parent_sessions: usize,
    /// At `listen`: sessions at once from one peer address.
    pub max_sessions_per_address: usize,
    /// At `listen`: a compressed hello or request may inflate to at most this many times
    /// its size (past a few KiB), so a small decompression bomb is refused unopened.
    pub max_request_compression_ratio: u64,
    /// At `listen`: decompressed request bytes one session may send per minute.
    pub max_request_bytes_per_minute: u64,
    /// Compression of frames this node sends.
    pub compression: Codec,
    /// `[link.tls]`: mutual TLS on every TCP link, listened and dialed (certificate, key,
    /// CA bundle peers are checked against). In-process `mem:` links stay plain.
    pub tls: Option<TlsConfig>,
    /// Lets `listen` be a non-loopback address without `[link.tls]`: anyone reaching it can
    /// then read every table, so it must be said explicitly.
    pub allow_plaintext: bool,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            listen: None,
            children: Vec::new(),
            child_groups: Vec::new(),
            drop_after: Duration::from_secs(180),
            departed_keep: Duration::from_secs(24 * 3600),
            merge_grace: Duration::from_secs(2),
            seal_when_delivered: true,
            cold_seal_hold: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_request_frame_bytes: 64 << 10,
            hello_timeout: Duration::from_secs(5),
            max_parent_sessions: 64,
            max_sessions_per_address: 8,
            max_request_compression_ratio: 32,
            max_request_bytes_per_minute: 4 << 20,
            compression: Codec::default(),
            tls: None,
            allow_plaintext: false,
        }
    }
}

impl LinkConfig {
    /// Relative paths of `[link.tls]` are relative to the config file's directory.
    pub fn resolve(&mut self, base: &Path) {
        if let Some(t) = &mut self.tls {
            t.resolve(base);
        }
    }

    pub fn validate(&self) -> ConfigResult<()> {
        let bad = |m: &str| {
            Err(ConfigError::Invalid {
                what: "[link]".into(),
                message: m.into(),
            })
        };
        if self.drop_after < Duration::from_millis(100) {
            return bad("drop_after must be at least 100ms");
        }
        if self.departed_keep.is_zero() {
            return bad("departed_keep must be positive");
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return bad("backoff_min must be positive and at most backoff_max");
        }
        if self.max_frame_bytes < 1024 {
            return bad("max_frame_bytes must be at least 1024");
        }
        if !(1024..=self.max_frame_bytes).contains(&self.max_request_frame_bytes) {
            return bad(
                "max_request_frame_bytes must be at least 1024 and at most max_frame_bytes",
            );
        }
        if self.hello_timeout < Duration::from_millis(100) {
            return bad("hello_timeout must be at least 100ms");
        }
        if self.max_parent_sessions == 0
            || !(1..=self.max_parent_sessions).contains(&self.max_sessions_per_address)
        {
            return bad("max_parent_sessions and max_sessions_per_address must be positive, the latter at most the former");
        }
        if self.max_request_compression_ratio == 0 {
            return bad("max_request_compression_ratio must be positive");
        }
        if self.max_request_bytes_per_minute < self.max_request_frame_bytes as u64 {
            return bad("max_request_bytes_per_minute must be at least max_request_frame_bytes");
        }
        if let Some(t) = &self.tls {
            t.validate("[link.tls]")?;
            if t.ca.is_none() {
                return Err(ConfigError::Invalid {
                    what: "[link.tls]".into(),
                    message: "ca is required: links use mutual TLS, and each side checks the other's certificate against this CA bundle".into(),
                });
            }
        }
        if let Some(addr) = self.listen {
            if !addr.ip().is_loopback() && self.tls.is_none() && !self.allow_plaintext {
                return bad(&format!(
                    "listen = \"{addr}\" is not a loopback address and [link.tls] is not set: anyone who reaches it could read every table. Set [link.tls] (cert, key, ca; `queryd ca` makes a small CA), or allow_plaintext = true to accept plaintext links explicitly"
                ));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for child in self.child_specs() {
            if !names.insert(child.name.clone()) {
                return bad(&format!("child '{}' is named twice", child.name));
            }
            if child.addresses.is_empty() {
                return bad(&format!("child '{}' has no addresses", child.name));
            }
            for a in &child.addresses {
                check_entry("[link] children", a)?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestsConfig {
    /// A table a query used stays requested this long after its last use.
    #[serde(with = "humantime_serde")]
    pub request_ttl: Duration,
    /// How long a query waits for a table it requested to arrive; then 503 naming it.
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
    /// The prewarm list (`ops/prewarm.toml`): always requested; edits apply without restart.
    pub prewarm: Option<PathBuf>,
}

impl Default for RequestsConfig {
    fn default() -> Self {
        RequestsConfig {
            request_ttl: Duration::from_secs(600),
            wait: Duration::from_secs(150),
            prewarm: None,
        }
    }
}

impl RequestsConfig {
    pub fn resolve(&mut self, base: &Path) {
        if let Some(p) = &mut self.prewarm {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    pub fn validate(&self) -> ConfigResult<()> {
        if self.request_ttl < Duration::from_millis(100) || self.wait.is_zero() {
            return Err(ConfigError::Invalid {
                what: "[requests]".into(),
                message: "request_ttl must be at least 100ms and wait positive".into(),
            });
        }
        Ok(())
    }
}

/// `[[link.child]]`: one child (a cluster) and the addresses it can be reached at.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChildGroup {
    /// How the child is called in `/health`, `query_links` and logs.
    pub name: String,
    /// `HOST:PORT` each, tried in order; DNS names stand for all their addresses.
    pub addresses: Vec<String>,
}

impl LinkConfig {
    /// Every child this node dials, with its alternatives: each `children` entry is a child
    /// named after itself, then the `[[link.child]]` groups.
    pub fn child_specs(&self) -> Vec<ChildGroup> {
        self.children
            .iter()
            .map(|c| ChildGroup {
                name: c.clone(),
                addresses: vec![c.clone()],
            })
            .chain(self.child_groups.iter().cloned())
            .collect()
    }

    /// Whether any child is configured.
    pub fn has_children(&self) -> bool {
        !self.children.is_empty() || !self.child_groups.is_empty()
    }
}

/// `ops/prewarm.toml`: the tables an aggregator set keeps requested at all times.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrewarmFile {
    pub tables: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(text: &str) -> ConfigResult<LinkConfig> {
        let cfg: LinkConfig = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            what: "test".into(),
            message: e.to_string(),
        })?;
        cfg.validate().map(|()| cfg)
    }

    #[test]
    fn a_public_listener_needs_tls_or_an_explicit_plaintext() {
        link("listen = \"127.0.0.2:7400\"").expect("loopback stays plain");
        let e = link("listen = \"0.0.0.0:7400\"").expect_err("every interface, plain");
        let e = e.to_string();
        assert!(
            e.contains("not a loopback address")
                && e.contains("[link.tls]")
                && e.contains("allow_plaintext = true"),
            "{e}"
        );
        link("listen = \"10.1.0.2:7400\"\nallow_plaintext = true").expect("said explicitly");
        let tls = "listen = \"10.1.0.2:7400\"\n[tls]\ncert = \"n.pem\"\nkey = \"n.key\"\n";
        let e = link(tls).expect_err("no ca").to_string();
        assert!(e.contains("ca is required"), "{e}");
        link(&format!("{tls}ca = \"ca.pem\"\n")).expect("mutual TLS");
    }
}

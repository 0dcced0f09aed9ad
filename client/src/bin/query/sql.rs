//! Running SQL against a Query SQL node by name: every address of the name, in random
//! order; the next address on a connection error or a 5xx; partition redirects followed
//! (at most [`MAX_REDIRECTS`] hops, in the scheme their Location says). `https://NAME`
//! speaks HTTPS ([`crate::tls`]), checking the node's certificate for NAME.

use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use query_client::dns;
use serde_json::Value;

use crate::tls::Https;

/// Partition redirects followed before giving up.
pub const MAX_REDIRECTS: usize = 3;
/// The SQL nodes' default HTTP port.
pub const DEFAULT_PORT: u16 = 8080;

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The node answered with a 4xx: the query is at fault (exit code 1).
    #[error("{code}: {message}")]
    Rejected { code: String, message: String },
    /// No address of the name answered usefully (exit code 2).
    #[error("{0}")]
    Unreachable(String),
}

impl SqlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            SqlError::Rejected { .. } => 1,
            SqlError::Unreachable(_) => 2,
        }
    }
}

/// Where names are looked up: the system's resolver, or a given DNS server.
pub struct Lookup {
    dns: Option<SocketAddr>,
}

impl Lookup {
    pub fn new(dns: Option<SocketAddr>) -> Self {
        Lookup { dns }
    }

    /// Every address of `host` (`NAME`, `NAME:PORT`, `IP`, `IP:PORT`, `[V6]:PORT`).
    pub fn resolve(&self, host: &str) -> Result<Vec<SocketAddr>, SqlError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SqlError::Unreachable(format!("cannot start the resolver: {e}")))?;
        rt.block_on(dns::lookup_host(
            host,
            DEFAULT_PORT,
            self.dns,
            Duration::from_secs(2),
        ))
        .map_err(|e| SqlError::Unreachable(format!("cannot resolve {host}: {e}")))
    }
}

/// Shuffles `v` (Fisher-Yates) with randomness from the standard library's hasher keys:
/// clients spread over a set's addresses without a random-number crate.
fn shuffle<T>(v: &mut [T]) {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    for i in (1..v.len()).rev() {
        h.write_usize(i);
        let j = (h.finish() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// A successful answer, and the address that gave it.
pub struct Answered {
    pub body: String,
    pub from: SocketAddr,
}

pub struct SqlClient {
    lookup: Lookup,
    agent: ureq::Agent,
    /// Sent as `Authorization: Bearer` (`QUERY_TOKEN`).
    token: Option<String>,
    /// HTTPS (`--ca`); None: https:// URLs are refused.
    https: Option<Arc<Https>>,
}

impl SqlClient {
    pub fn new(lookup: Lookup, timeout: Duration, https: Option<Https>) -> Self {
        let https = https.map(Arc::new);
        let mut agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(3))
            .timeout(timeout)
            .redirects(0);
        if let Some(h) = &https {
            agent = agent.tls_connector(h.clone());
        }
        SqlClient {
            lookup,
            agent: agent.build(),
            token: None,
            https,
        }
    }

    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Runs `sql` at `host`; `format` is the node's `?format=` (json, csv, ndjson).
    /// `host` may start with `http://` or `https://` (plain HTTP without).
    pub fn run(&self, host: &str, sql: &str, format: &str) -> Result<Answered, SqlError> {
        let (mut scheme, host) = split_scheme(host);
        let mut host = host.to_string();
        let mut failures = Vec::new();
        for _hop in 0..=MAX_REDIRECTS {
            if scheme == "https" {
                let https = self.https.as_ref().ok_or_else(|| {
                    SqlError::Unreachable(format!(
                        "https://{host} needs --ca FILE: the CA bundle the node's certificate is checked against"
                    ))
                })?;
                https.expect_name(&host).map_err(SqlError::Unreachable)?;
            }
            let mut addrs = self.lookup.resolve(&host)?;
            shuffle(&mut addrs);
            let mut redirected = None;
            for addr in addrs {
                let url = format!("{scheme}://{addr}/sql?format={format}");
                let mut req = self.agent.post(&url).set("Content-Type", "text/plain");
                if let Some(t) = &self.token {
                    req = req.set("Authorization", &format!("Bearer {t}"));
                }
                let r = req.send_string(sql);
                // With redirects off, ureq hands 3xx answers back as Ok.
                let r = match r {
                    Ok(resp) if resp.status() == 307 => Err(ureq::Error::Status(307, resp)),
                    other => other,
                };
                match r {
                    // An answer cut off (the node died while streaming it) is that
                    // address failing: the query is read-only, so the next one is asked.
                    Ok(resp) => match resp.into_string() {
                        Ok(body) => return Ok(Answered { body, from: addr }),
                        Err(e) => failures.push(format!("{addr}: reading the answer: {e}")),
                    },
                    Err(ureq::Error::Status(307, resp)) => {
                        let location = resp.header("Location").map(str::to_string);
                        let body: Value = resp.into_json().unwrap_or(Value::Null);
                        let to = body["redirect"]["host"]
                            .as_str()
                            .map(str::to_string)
                            .or(location.as_deref().and_then(host_of_url));
                        match to {
                            Some(to) => {
                                // The Location's scheme (an HTTPS node says https://).
                                if let Some(l) = &location {
                                    scheme = split_scheme(l).0;
                                }
                                redirected = Some(to);
                                break;
                            }
                            None => failures.push(format!("{addr}: a redirect without a target")),
                        }
                    }
                    Err(ureq::Error::Status(code, resp)) if code >= 500 => {
                        let body: Value = resp.into_json().unwrap_or(Value::Null);
                        failures.push(format!(
                            "{addr}: {code} {}",
                            body["error"]["message"].as_str().unwrap_or("")
                        ));
                    }
                    Err(ureq::Error::Status(code, resp)) => {
                        let body: Value = resp.into_json().unwrap_or(Value::Null);
                        return Err(SqlError::Rejected {
                            code: body["error"]["code"]
                                .as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| code.to_string()),
                            message: body["error"]["message"]
                                .as_str()
                                .unwrap_or("the node refused the query")
                                .to_string(),
                        });
                    }
                    Err(e) => failures.push(format!("{addr}: {e}")),
                }
            }
            match redirected {
                Some(to) => host = to,
                None => {
                    return Err(SqlError::Unreachable(format!(
                        "no address of {host} answered: {}",
                        failures.join("; ")
                    )))
                }
            }
        }
        Err(SqlError::Unreachable(format!(
            "more than {MAX_REDIRECTS} partition redirects, last to {host}"
        )))
    }
}

/// `https://rest` → ("https", rest); `http://rest` or a bare `rest` → ("http", rest).
/// A path after the host is dropped.
fn split_scheme(url: &str) -> (&'static str, &str) {
    let (scheme, rest) = match url.strip_prefix("https://") {
        Some(rest) => ("https", rest),
        None => ("http", url.strip_prefix("http://").unwrap_or(url)),
    };
    (scheme, rest.split('/').next().unwrap_or(rest))
}

/// `http://host:port/path` → `host:port`.
fn host_of_url(url: &str) -> Option<String> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let host = rest.split('/').next()?;
    (!host.is_empty()).then(|| host.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_locations() {
        assert_eq!(
            host_of_url("http://b.example:8080/sql"),
            Some("b.example:8080".into())
        );
    }

    #[test]
    fn schemes() {
        assert_eq!(
            split_scheme("https://sql.example:8443/"),
            ("https", "sql.example:8443")
        );
        assert_eq!(
            split_scheme("http://10.0.0.1:8080"),
            ("http", "10.0.0.1:8080")
        );
        assert_eq!(split_scheme("sql.example"), ("http", "sql.example"));
        assert_eq!(
            split_scheme("https://b.example:8443/sql"),
            ("https", "b.example:8443")
        );
    }

    #[test]
    fn shuffle_keeps_every_element() {
        let mut v: Vec<u32> = (0..50).collect();
        shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn ips_resolve_without_dns() {
        let l = Lookup::new(None);
        assert_eq!(
            l.resolve("127.0.0.9:81").ok(),
            Some(vec!["127.0.0.9:81".parse().expect("addr")])
        );
    }
}

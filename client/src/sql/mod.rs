//! Running SQL at the SQL nodes behind a name (an aggregator set's `sql_name`, a node's
//! address): every address of the name, in random order; the next address on a connection
//! error, a 5xx or an answer cut off (queries are read-only, so asking again is safe);
//! partition redirects followed (at most [`MAX_REDIRECTS`] hops, in the scheme their
//! Location says). `https://NAME` speaks HTTPS ([`Https`]), checking the node's certificate
//! for NAME. Blocking (ureq): a program with a runtime calls it from a blocking task.
//!
//! ```no_run
//! use std::time::Duration;
//! use query_client::sql::{Lookup, SqlClient};
//!
//! let client = SqlClient::new(Lookup::system(), Duration::from_secs(60), None);
//! let answer = client.query("sql.example:8080", "SELECT COUNT(*) AS n FROM sys")?;
//! println!("{} machines, generation {}", answer.rows[0][0], answer.json["generation"]["id"]);
//! # Ok::<(), query_client::sql::SqlError>(())
//! ```

mod https;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::dns;
pub use https::Https;

/// Partition redirects followed before giving up.
pub const MAX_REDIRECTS: usize = 3;
/// The SQL nodes' default HTTP port.
pub const DEFAULT_PORT: u16 = 8080;

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The node answered with a 4xx: the query is at fault (`query` exits with 1).
    #[error("{code}: {message}")]
    Rejected { code: String, message: String },
    /// No address of the name answered usefully (`query` exits with 2).
    #[error("{0}")]
    Unreachable(String),
    /// The client's own set-up is wrong: a CA, certificate or key file (`query` exits with 2).
    #[error("{0}")]
    Setup(String),
}

impl SqlError {
    /// The `query` command's exit code for this error: 1 the query was refused, 2 no node
    /// could be reached (or the client could not start).
    pub fn exit_code(&self) -> u8 {
        match self {
            SqlError::Rejected { .. } => 1,
            SqlError::Unreachable(_) | SqlError::Setup(_) => 2,
        }
    }
}

/// The answer formats of `POST /sql?format=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    Ndjson,
}

impl Format {
    fn as_param(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
            Format::Ndjson => "ndjson",
        }
    }
}

/// Where names are looked up: the system's resolver, or a given DNS server.
pub struct Lookup {
    dns: Option<SocketAddr>,
}

impl Lookup {
    /// `dns`: the DNS server to ask (IP:PORT); None: the system's resolver.
    pub fn new(dns: Option<SocketAddr>) -> Self {
        Lookup { dns }
    }

    /// The system's resolver.
    pub fn system() -> Self {
        Lookup { dns: None }
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

/// A successful answer as the node sent it, and the address that gave it.
#[derive(Debug)]
pub struct Answered {
    pub body: String,
    pub from: SocketAddr,
}

/// A JSON answer, read.
#[derive(Debug)]
pub struct Answer {
    /// Column names, in order; a name may repeat, as SQL allows.
    pub columns: Vec<String>,
    /// Rows as arrays, one value per column; NULL is `Value::Null`.
    pub rows: Vec<Vec<Value>>,
    /// The whole answer: `generation`, `tables` (sources), `columns` with types, ...
    pub json: Value,
    /// The address that answered.
    pub from: SocketAddr,
}

impl Answer {
    fn read(a: Answered) -> Result<Answer, SqlError> {
        let json: Value = serde_json::from_str(&a.body)
            .map_err(|e| SqlError::Unreachable(format!("{}: not a JSON answer: {e}", a.from)))?;
        let columns = json["columns"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .map(|c| c["name"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default();
        let rows = json["rows"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .map(|r| r.as_array().cloned().unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default();
        Ok(Answer {
            columns,
            rows,
            json,
            from: a.from,
        })
    }
}

/// Runs SQL at the nodes behind a name; one client serves many queries (and threads).
pub struct SqlClient {
    lookup: Lookup,
    agent: ureq::Agent,
    /// Sent as `Authorization: Bearer` (`QUERY_TOKEN`).
    token: Option<String>,
    /// HTTPS (`--ca`); None: https:// URLs are refused.
    https: Option<Arc<Https>>,
}

impl SqlClient {
    /// `timeout`: how long one node may take to answer; `https`: the CAs (and client
    /// certificate) for `https://` names, None to refuse them.
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

    /// Sends `token` as `Authorization: Bearer` (the node's `[auth] tokens_file`).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Runs `sql` at `host` and reads the JSON answer.
    pub fn query(&self, host: &str, sql: &str) -> Result<Answer, SqlError> {
        Answer::read(self.run(host, sql, Format::Json)?)
    }

    /// Runs `sql` at `host` (`NAME`, `NAME:PORT`, an address; `http://` or `https://`
    /// before it, plain HTTP without) and returns the answer's text in `format`.
    pub fn run(&self, host: &str, sql: &str, format: Format) -> Result<Answered, SqlError> {
        let format = format.as_param();
        let (mut scheme, host) = split_scheme(host);
        let mut host = host.to_string();
        let mut failures = Vec::new();
        for _hop in 0..=MAX_REDIRECTS {
            if scheme == "https" {
                let https = self.https.as_ref().ok_or_else(|| {
                    SqlError::Unreachable(format!(
                        "https://{host} needs a CA bundle (`query --ca FILE`) to check the node's certificate against"
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

//! Who may use a node's HTTP API, and for what.
//!
//! - **Authentication**: `Authorization: Bearer <secret>`, checked against the tokens file
//!   ([`tokens`]: SHA-256 of each secret, reloaded on change), or a client certificate
//!   (HTTPS with `[http.tls] ca`): its common name, granted by a `[[client]]` entry of the
//!   same file. A bearer token, when sent, decides. Without `[auth] tokens_file` a node
//!   answers everyone, which it accepts only on a loopback listener or with
//!   `[auth] allow_unauthenticated = true`.
//! - **Authorisation**: a token is for some aggregator-set domains; a node serves its set's
//!   domains, and a token for none of them is refused. A token may name the tables it may
//!   read (views followed to theirs); admin endpoints need `admin = true`.
//! - **Host and Origin** ([`hosts`]): against DNS rebinding and cross-origin posts.
//!
//! The HTTP layer (`query_http::guard`) applies these rules; the decisions live here so
//! they are unit-tested without a server.

pub mod hosts;
pub mod tokens;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;

use crate::aggregator_sets::{AggregatorSet, Partition};
use crate::error::{ConfigError, ConfigResult, QueryError};
pub use hosts::HostRules;
pub use tokens::{Grant, Reload, Token, TokenStore, Tokens};

/// `[auth]` of a node's config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The tokens file (TOML, `[[token]]` entries); relative to the config file. Without
    /// it the node answers without authentication.
    pub tokens_file: Option<PathBuf>,
    /// Lets a node listen on a non-loopback address without a tokens file.
    pub allow_unauthenticated: bool,
}

impl AuthConfig {
    pub(crate) fn resolve(&mut self, base: &Path) {
        if let Some(p) = &mut self.tokens_file {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// `listen`: the HTTP listener. Loads the tokens file, so a broken one is reported
    /// before the node starts.
    pub fn validate(&self, listen: SocketAddr) -> ConfigResult<()> {
        let bad = |m: String| {
            Err(ConfigError::Invalid {
                what: "[auth]".into(),
                message: m,
            })
        };
        match &self.tokens_file {
            Some(_) if self.allow_unauthenticated => bad(
                "allow_unauthenticated and tokens_file exclude each other: with a tokens file every request needs a token"
                    .into(),
            ),
            Some(path) => Tokens::load(path).map(|_| ()),
            None if !listen.ip().is_loopback() && !self.allow_unauthenticated => bad(format!(
                "HTTP listens on {listen}, which is not a loopback address, and no tokens_file is set: anyone who reaches it could query every table. Set [auth] tokens_file (make tokens with `queryd token`), listen on 127.0.0.1, or set [auth] allow_unauthenticated = true to accept that"
            )),
            None => Ok(()),
        }
    }
}

/// Who a request is from, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The client's identity for admission fairness and quarantine: the token's name, or
    /// the peer's address when the node has no tokens.
    pub name: String,
    /// Tables it may read; None: every table.
    pub tables: Option<BTreeSet<String>>,
    pub admin: bool,
    /// How it proved who it is.
    pub credential: Credential,
}

/// How a client was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// Not at all: a node without tokens.
    Anonymous,
    /// A bearer token of the tokens file.
    Token,
    /// A client certificate granted by a `[[client]]` entry.
    Certificate,
    /// The node itself: its alert evaluator.
    Internal,
}

impl Principal {
    /// A client of a node without tokens: named by its address; admin endpoints answer it
    /// only from a loopback address (nobody else on the machine's network can reach them).
    pub fn anonymous(peer: Option<SocketAddr>) -> Principal {
        Principal {
            name: peer.map_or_else(|| "unknown".into(), |a| a.ip().to_string()),
            tables: None,
            admin: peer.is_some_and(|a| a.ip().is_loopback()),
            credential: Credential::Anonymous,
        }
    }

    fn of(grant: &Grant, credential: Credential) -> Principal {
        Principal {
            name: grant.name.clone(),
            tables: grant.tables.clone(),
            admin: grant.admin,
            credential,
        }
    }

    /// "token 'x'" or "client certificate 'x'", for messages.
    pub fn describe(&self) -> String {
        match self.credential {
            Credential::Certificate => format!("client certificate '{}'", self.name),
            Credential::Token => format!("token '{}'", self.name),
            Credential::Anonymous => format!("client {}", self.name),
            Credential::Internal => format!("this node's {}", self.name),
        }
    }

    /// Whether it may read `table` (or the view `table` that reads `behind`).
    pub fn may_read(&self, behind: &BTreeSet<String>) -> bool {
        self.denied(behind).is_empty()
    }

    /// Refuses a statement reading tables (views already followed) outside its list.
    /// `information_schema` and `query_columns` (table and column names, types and
    /// descriptions; no rows) are open to every token.
    pub fn check_tables(&self, reads: &BTreeSet<String>) -> Result<(), QueryError> {
        let denied = self.denied(reads);
        if denied.is_empty() {
            return Ok(());
        }
        let allowed = self.tables.as_ref().map(tokens::list_names);
        Err(QueryError::Forbidden(format!(
            "{} may not read table{} {} (its tables: {}; views count as the tables they read)",
            self.describe(),
            if denied.len() == 1 { "" } else { "s" },
            denied.join(", "),
            allowed.unwrap_or_default(),
        )))
    }

    fn denied(&self, reads: &BTreeSet<String>) -> Vec<String> {
        let Some(allowed) = &self.tables else {
            return Vec::new();
        };
        reads
            .iter()
            .filter(|t| {
                // A table's kept history is readable by whoever may read the table.
                let table = crate::history::live_table_of(t).unwrap_or(t);
                !allowed.contains(table)
                    && !t.starts_with("information_schema.")
                    && t.as_str() != crate::sql::describe::COLUMNS_TABLE
            })
            .cloned()
            .collect()
    }
}

/// Why a request was refused before reaching its endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No token, or one the node does not know: 401.
    #[error("{0}")]
    Unauthenticated(String),
    /// A known token not allowed here: 403.
    #[error("{0}")]
    Forbidden(String),
    /// The `Host` is not one of the node's names: 421.
    #[error("{0}")]
    Misdirected(String),
    /// A cross-origin request: 403.
    #[error("{0}")]
    CrossOrigin(String),
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Unauthenticated(_) => "unauthenticated",
            Refusal::Forbidden(_) => "forbidden",
            Refusal::Misdirected(_) => "host",
            Refusal::CrossOrigin(_) => "origin",
        }
    }
}

/// Refusals counted by reason (`/metrics`: `query_http_refusals_total{reason}`).
pub const REASONS: [&str; 5] = ["unauthenticated", "forbidden", "host", "origin", "table"];

/// A node's authentication and authorisation state.
pub struct Auth {
    /// None: no tokens file, every client is anonymous.
    pub tokens: Option<Arc<TokenStore>>,
    /// The node's aggregator set (for messages) and the domains it serves (`*`: all).
    set: String,
    /// Swapped when the aggregator-sets file is edited.
    domains: arc_swap::ArcSwap<BTreeSet<String>>,
    pub hosts: HostRules,
    refusals: [AtomicU64; REASONS.len()],
    /// When each reason was last logged (ms since `started`), so a flood logs once per
    /// interval.
    logged: [AtomicU64; REASONS.len()],
    started: Instant,
}

/// A refusal of one reason is logged at most this often.
const LOG_EVERY_MS: u64 = 10_000;

impl Auth {
    /// `set`: the node's aggregator set and partition, if it has one.
    pub fn new(
        config: &crate::node::NodeConfig,
        set: Option<&(AggregatorSet, Option<Partition>)>,
    ) -> ConfigResult<Auth> {
        let tokens = match &config.auth.tokens_file {
            Some(path) => Some(TokenStore::open(path)?),
            None => None,
        };
        let mut names = config.http.allowed_hosts.clone();
        if let Some((s, p)) = set {
            names.push(s.sql_name.clone());
            if let Some(p) = p {
                names.push(p.hostname.clone());
            }
        }
        Ok(Auth {
            tokens,
            set: set.map_or_else(String::new, |(s, _)| s.name.clone()),
            domains: arc_swap::ArcSwap::from_pointee(set.map_or_else(
                || ["*".to_string()].into(),
                |(s, _)| s.domain.iter().cloned().collect(),
            )),
            hosts: HostRules::new(config.http.listen, names, &config.http.allowed_origins),
            refusals: Default::default(),
            logged: Default::default(),
            started: Instant::now(),
        })
    }

    pub fn enabled(&self) -> bool {
        self.tokens.is_some()
    }

    /// Who sends `authorization` (the header's value, if any) from `peer`, over a TLS
    /// connection whose client presented a trusted certificate named `certificate` (its
    /// common name), if any. A bearer token, when sent, decides; otherwise the certificate
    /// needs a `[[client]]` grant.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        peer: Option<SocketAddr>,
        certificate: Option<&str>,
    ) -> Result<Principal, Refusal> {
        let Some(store) = &self.tokens else {
            return Ok(Principal::anonymous(peer));
        };
        let tokens = store.tokens();
        let Some(value) = authorization else {
            let Some(cn) = certificate else {
                return Err(Refusal::Unauthenticated(
                    "this node needs a token: send `Authorization: Bearer <secret>` (or, over HTTPS with [http.tls] ca, a client certificate granted in the tokens file)".into(),
                ));
            };
            let grant = tokens.client(cn).ok_or_else(|| {
                Refusal::Forbidden(format!(
                    "client certificate '{cn}' is trusted but has no grant on this node: add a [[client]] entry with name = \"{cn}\" to the tokens file ([auth] tokens_file), or send a token"
                ))
            })?;
            self.check_domain(grant, "client certificate")?;
            return Ok(Principal::of(grant, Credential::Certificate));
        };
        let secret = match value.split_once(' ') {
            Some((scheme, s)) if scheme.eq_ignore_ascii_case("bearer") => s.trim(),
            _ => {
                return Err(Refusal::Unauthenticated(
                    "the Authorization header must be `Bearer <secret>`".into(),
                ))
            }
        };
        let token = tokens
            .find(secret)
            .ok_or_else(|| Refusal::Unauthenticated("unknown token".into()))?;
        self.check_domain(&token.grant, "token")?;
        Ok(Principal::of(&token.grant, Credential::Token))
    }

    /// The set's domains as edited in the aggregator-sets file (applied live).
    pub fn set_domains(&self, domains: &[String]) {
        let domains: BTreeSet<String> = domains.iter().cloned().collect();
        if **self.domains.load() != domains {
            tracing::info!(set = %self.set, domains = ?domains, "aggregator set's domains changed: tokens are checked against them now");
            self.domains.store(Arc::new(domains));
        }
    }

    fn check_domain(&self, grant: &Grant, kind: &str) -> Result<(), Refusal> {
        let all = |s: &BTreeSet<String>| s.contains("*");
        let domains = self.domains.load();
        if all(&grant.domains) || all(&domains) || !grant.domains.is_disjoint(&domains) {
            return Ok(());
        }
        Err(Refusal::Forbidden(format!(
            "{kind} '{}' is not for domain{} {} of aggregator set '{}' (it is for {})",
            grant.name,
            if domains.len() == 1 { "" } else { "s" },
            tokens::list_names(&domains),
            self.set,
            tokens::list_names(&grant.domains),
        )))
    }

    /// Counts a refusal (`reason` one of [`REASONS`]) and logs it, at most once per
    /// interval per reason.
    pub fn refused(&self, reason: &str, detail: &str, client: &str) {
        let Some(i) = REASONS.iter().position(|r| *r == reason) else {
            return;
        };
        let n = self.refusals[i].fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.started.elapsed().as_millis() as u64 + LOG_EVERY_MS;
        let last = self.logged[i].load(Ordering::Relaxed);
        if now.saturating_sub(last) >= LOG_EVERY_MS
            && self.logged[i]
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                reason,
                client,
                detail,
                refused_so_far = n,
                "HTTP request refused"
            );
        }
    }

    /// Refusals so far, by reason.
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        REASONS
            .iter()
            .zip(&self.refusals)
            .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Reloads the tokens file if it changed; errors are logged and the last good tokens
    /// stay. Returns true when a copy was rejected.
    pub fn reload_tokens(&self) -> bool {
        let Some(store) = &self.tokens else {
            return false;
        };
        match store.reload_if_changed() {
            Reload::Unchanged => false,
            Reload::Loaded(n) => {
                tracing::info!(tokens = n, file = %store.path().display(), "tokens loaded");
                false
            }
            Reload::Rejected(e) => {
                tracing::error!(error = %e, "tokens file rejected; the previous tokens stay");
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::NodeConfig;

    fn set(domains: &[&str]) -> (AggregatorSet, Option<Partition>) {
        let text = format!(
            "name = \"ops\"\nsql_name = \"sql.ops.example\"\ntla_name = \"tla.ops.example:7500\"\ndomain = {:?}\n",
            domains
        );
        (toml::from_str(&text).expect("set"), None)
    }

    fn node_with(tokens: &str, domains: &[&str]) -> (Auth, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, tokens).expect("write");
        let mut cfg = NodeConfig::parse("", "t", Path::new(".")).expect("defaults");
        cfg.auth.tokens_file = Some(path);
        let auth = Auth::new(&cfg, Some(&set(domains))).expect("auth");
        (auth, dir)
    }

    #[test]
    fn domains_decide_which_tokens_a_node_serves() {
        let (noc, noc_entry) =
            tokens::generate("noc-user", &["noc".into()], None, false).expect("gen");
        let (any, any_entry) = tokens::generate("root", &["*".into()], None, true).expect("gen");
        let (web, web_entry) =
            tokens::generate("web-user", &["web".into(), "cdn".into()], None, false).expect("gen");
        let file = format!("{noc_entry}\n{any_entry}\n{web_entry}");
        let bearer = |s: &str| format!("Bearer {s}");

        let (ops, _d) = node_with(&file, &["noc"]);
        assert_eq!(
            ops.authenticate(Some(bearer(&noc).as_str()), None, None)
                .map(|p| p.name),
            Ok("noc-user".to_string())
        );
        assert!(ops
            .authenticate(Some(bearer(&any).as_str()), None, None)
            .is_ok());
        match ops.authenticate(Some(bearer(&web).as_str()), None, None) {
            Err(Refusal::Forbidden(m)) => assert!(
                m.contains("'web-user' is not for domain noc of aggregator set 'ops'"),
                "{m}"
            ),
            other => panic!("expected forbidden, got {other:?}"),
        }
        let (everyone, _d) = node_with(&file, &["*"]);
        assert!(everyone
            .authenticate(Some(bearer(&web).as_str()), None, None)
            .is_ok());
        // The sets file edited: the set now serves domain cdn (not noc) without a restart.
        ops.set_domains(&["cdn".to_string()]);
        assert!(ops
            .authenticate(Some(bearer(&web).as_str()), None, None)
            .is_ok());
        assert!(matches!(
            ops.authenticate(Some(bearer(&noc).as_str()), None, None),
            Err(Refusal::Forbidden(_))
        ));
        ops.set_domains(&["noc".to_string()]);

        for missing in [
            None,
            Some("Bearer qt_nope"),
            Some("Basic abc"),
            Some(noc.as_str()),
        ] {
            assert!(
                matches!(
                    ops.authenticate(missing, None, None),
                    Err(Refusal::Unauthenticated(_))
                ),
                "{missing:?}"
            );
        }
    }

    #[test]
    fn client_certificates_are_granted_in_the_tokens_file() {
        let (secret, entry) = tokens::generate("alice", &["*".into()], None, false).expect("gen");
        let file = format!(
            "{entry}\n[[client]]\nname = \"noc dash\"\ndomains = [\"noc\"]\ntables = [\"sys\"]\n\n\
             [[client]]\nname = \"web-dash\"\ndomains = [\"web\"]\n"
        );
        let (ops, _d) = node_with(&file, &["noc"]);
        let p = ops
            .authenticate(None, None, Some("noc dash"))
            .expect("granted");
        assert_eq!(p.credential, Credential::Certificate);
        assert_eq!(p.tables, Some(["sys".to_string()].into()));
        match p.check_tables(&["processes".to_string()].into()) {
            Err(QueryError::Forbidden(m)) => assert!(
                m.contains("client certificate 'noc dash' may not read table processes"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
        match ops.authenticate(None, None, Some("stranger")) {
            Err(Refusal::Forbidden(m)) => assert!(
                m.contains("'stranger' is trusted but has no grant")
                    && m.contains("name = \"stranger\""),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
        match ops.authenticate(None, None, Some("web-dash")) {
            Err(Refusal::Forbidden(m)) => assert!(
                m.contains("client certificate 'web-dash' is not for domain noc"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
        // A token, when sent, decides: a certificate without a grant does not stop it.
        let bearer = format!("Bearer {secret}");
        let p = ops
            .authenticate(Some(&bearer), None, Some("stranger"))
            .expect("the token");
        assert_eq!(
            (p.name.as_str(), p.credential),
            ("alice", Credential::Token)
        );
        assert!(matches!(
            ops.authenticate(None, None, None),
            Err(Refusal::Unauthenticated(_))
        ));
    }

    #[test]
    fn table_lists_refuse_other_tables_by_name() {
        let p = Principal {
            name: "sys-only".into(),
            tables: Some(["sys".to_string()].into()),
            admin: false,
            credential: Credential::Token,
        };
        let reads = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert!(p.check_tables(&reads(&["sys"])).is_ok());
        assert!(p
            .check_tables(&reads(&["sys", "information_schema.tables"]))
            .is_ok());
        assert!(p
            .check_tables(&reads(&["query_columns", "information_schema.columns"]))
            .is_ok());
        match p.check_tables(&reads(&["sys", "processes"])) {
            Err(QueryError::Forbidden(m)) => {
                assert!(m.contains("may not read table processes"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        let everything = Principal::anonymous(None);
        assert!(everything.check_tables(&reads(&["processes"])).is_ok());
        assert!(!everything.admin, "no peer: not loopback, not admin");
        assert!(Principal::anonymous(Some("127.0.0.1:5".parse().expect("addr"))).admin);
    }

    #[test]
    fn a_public_listener_needs_tokens_or_an_explicit_choice() {
        let public: SocketAddr = "0.0.0.0:0".parse().expect("addr");
        let e = AuthConfig::default().validate(public).expect_err("refused");
        assert!(e.to_string().contains("allow_unauthenticated"), "{e}");
        let allowed = AuthConfig {
            allow_unauthenticated: true,
            ..AuthConfig::default()
        };
        assert!(allowed.validate(public).is_ok());
        assert!(AuthConfig::default()
            .validate("127.0.0.1:0".parse().expect("addr"))
            .is_ok());
        assert!(
            NodeConfig::parse("[http]\nlisten = \"0.0.0.0:8080\"\n", "t", Path::new(".")).is_err()
        );
    }
}

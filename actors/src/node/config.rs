//! A node's configuration file (`ops/<role>.example.toml`). Relative paths resolve
//! against the directory of the file that names them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::quarantine::QuarantineConfig;
use super::simulate_config::SimulateConfig;
use crate::aggregator_sets::AggregatorSetConfig;
use crate::alerts::AlertsConfig;
use crate::auth::AuthConfig;
use crate::edge::config::EdgeConfig;
use crate::error::{ConfigError, ConfigResult};
use crate::history::HistoryConfig;
use crate::sql::{ParseLimits, DEFAULT_MAX_RESULT_BYTES};
use crate::tier::names::DnsConfig;
use crate::tier::tla_children::TlaChildrenConfig;
use crate::tier::tla_selection::TlaSelectionConfig;
use crate::tier::{LinkConfig, RequestsConfig};
use crate::tls::TlsConfig;

/// What a node does in the hierarchy; chosen by the `queryd` subcommand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Collects a machine's tables from local publishers; serves its parent proxy.
    Edge,
    /// Merges the machines of a cluster (and is an edge itself); serves TLAs.
    ClusterProxy,
    /// Merges all clusters; serves SQL nodes.
    Tla,
    /// Takes generations from a TLA and answers SQL.
    Sql,
    /// A TLA that answers SQL itself.
    #[default]
    TlaSql,
    /// Merges the tables a TLA defers to it (OSR 3.5) and sends them back merged.
    TlaChild,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Edge => "edge",
            Role::ClusterProxy => "cluster-proxy",
            Role::Tla => "tla",
            Role::Sql => "sql",
            Role::TlaSql => "tla-sql",
            Role::TlaChild => "tla-child",
        }
    }

    /// Roles whose users query over HTTP: a query's missing tables are requested below.
    pub fn answers_sql(self) -> bool {
        matches!(self, Role::Sql | Role::TlaSql)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    #[serde(default)]
    pub node: NodeSection,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub paths: PathsConfig,
    #[serde(default)]
    pub generation: GenerationConfig,
    #[serde(default)]
    pub sql: SqlConfig,
    #[serde(default)]
    pub host: HostConfig,
    /// Present only on nodes that serve a simulated fleet (`queryd demo`).
    pub simulate: Option<SimulateConfig>,
    /// Present on nodes that take tables from local publishers (an edge agent).
    pub edge: Option<EdgeConfig>,
    #[serde(default)]
    pub link: LinkConfig,
    /// Where names of children (proxies, TLAs) are looked up, and how often.
    #[serde(default)]
    pub dns: DnsConfig,
    /// How a SQL node chooses among its TLAs.
    #[serde(default)]
    pub tla_selection: TlaSelectionConfig,
    /// Tables a TLA defers to TLA children (applies live).
    #[serde(default)]
    pub tla_children: TlaChildrenConfig,
    #[serde(default)]
    pub requests: RequestsConfig,
    /// The aggregator set (and partition) this node serves, if any.
    pub aggregator_set: Option<AggregatorSetConfig>,
    /// Who may use the HTTP API (`crate::auth`).
    #[serde(default)]
    pub auth: AuthConfig,
    /// Alerts this node evaluates on every generation (a node that answers SQL).
    pub alerts: Option<AlertsConfig>,
    /// History and reports this node keeps on disk (a node that answers SQL).
    pub history: Option<HistoryConfig>,
    /// The Postgres wire protocol (a node that answers SQL).
    #[serde(default)]
    pub pg: PgConfig,
    /// Set by the subcommand, not the file.
    #[serde(skip)]
    pub role: Role,
    /// The file this config was read from (None: an embedded default), watched for edits
    /// of the sections that apply live (`[tla_selection]`).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// Address stamped on this node's own published rows (`machine_ip`).
    pub machine_ip: String,
    pub cluster: String,
    /// Region id (region_data.id) of this machine.
    pub georegion: i64,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            machine_ip: "127.0.0.1".into(),
            cluster: "local".into(),
            georegion: 1,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Largest request body accepted (the SQL text), bytes.
    pub max_body_bytes: usize,
    /// Rows returned at most; an answer cut there says `"truncated": true`.
    pub max_result_rows: usize,
    /// Bytes of one answer at most (its Arrow size as it is read, and the output of any
    /// one function call); past it the query fails with `answer_too_large`.
    pub max_result_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
    /// HTTP worker threads; 0 = one per core.
    pub workers: usize,
    /// Names clients may use in `Host` besides the listen address (and, on a loopback
    /// listener, `localhost`; the aggregator set's `sql_name` and partition hostname are
    /// added too). Other `Host`s get 421: a page on another site cannot reach the node
    /// through DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// Origins (`https://grafana.example`) whose pages may call the API besides the node's
    /// own; their answers carry `Access-Control-Allow-Origin`. Others get 403.
    pub allowed_origins: Vec<String>,
    /// `[http.tls]`: HTTPS with this certificate and key (the same section as `[link.tls]`);
    /// with `ca`, clients must present a certificate signed by it (mutual TLS).
    pub tls: Option<TlsConfig>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1 << 20,
            max_result_rows: 100_000,
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
            query_timeout: Duration::from_secs(30),
            workers: 0,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            tls: None,
        }
    }
}

/// `[pg]`: the Postgres wire protocol (psql, drivers, Grafana), beside HTTP. Statements
/// go through the same query path as `POST /sql`, with the same limits and tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PgConfig {
    /// Where to listen; None (the default): no Postgres listener.
    pub listen: Option<SocketAddr>,
    /// Connections open at once at most; more are refused with SQLSTATE 53300.
    pub max_connections: usize,
    /// A connection with no message for this long is closed (57P05).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for PgConfig {
    fn default() -> Self {
        PgConfig {
            listen: None,
            max_connections: 64,
            idle_timeout: Duration::from_secs(3600),
        }
    }
}

impl PgConfig {
    fn validate(&self, auth: &AuthConfig) -> ConfigResult<()> {
        let bad = |m: String| {
            Err(ConfigError::Invalid {
                what: "[pg]".into(),
                message: m,
            })
        };
        if self.max_connections == 0 || self.idle_timeout.is_zero() {
            return bad("max_connections and idle_timeout must be positive".into());
        }
        match self.listen {
            Some(listen)
                if !listen.ip().is_loopback()
                    && auth.tokens_file.is_none()
                    && !auth.allow_unauthenticated =>
            {
                bad(format!(
                    "Postgres listens on {listen}, which is not a loopback address, and no [auth] tokens_file is set: anyone who reaches it could query every table. Set [auth] tokens_file (the password is the token), listen on 127.0.0.1, or set [auth] allow_unauthenticated = true to accept that"
                ))
            }
            _ => Ok(()),
        }
    }
}

impl HttpConfig {
    fn validate(&self) -> ConfigResult<()> {
        let Some(tls) = &self.tls else { return Ok(()) };
        tls.validate("[http.tls]")?;
        if tls.server_name.is_some() {
            return Err(ConfigError::Invalid {
                what: "[http.tls]".into(),
                message: "server_name is for dialing links; an HTTP listener dials nothing".into(),
            });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathsConfig {
    pub schemas: PathBuf,
    pub static_tables: PathBuf,
    pub views: PathBuf,
    /// How often the static tables and views are checked for edits.
    #[serde(with = "humantime_serde")]
    pub reload_every: Duration,
}

impl Default for PathsConfig {
    fn default() -> Self {
        PathsConfig {
            schemas: "schemas".into(),
            static_tables: "static-tables/index.toml".into(),
            views: "ops/views.toml".into(),
            reload_every: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationConfig {
    /// A generation is sealed every `interval`...
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// ...at `offset` past each multiple of it, so publishers have sent their rows.
    #[serde(with = "humantime_serde")]
    pub offset: Duration,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            interval: Duration::from_secs(60),
            offset: Duration::from_secs(5),
        }
    }
}

/// `[sql]`: the pools, and the limits every query is held to (admission, statement size,
/// memory), with the quarantine of queries that keep hitting them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqlConfig {
    /// Threads of the compute pool (sealing, merging, links); 0 = one per core.
    pub threads: usize,
    /// Threads of the query pool, separate so sealing never waits behind queries; 0 = one
    /// per core.
    pub query_threads: usize,
    /// Queries running at once; 0 = twice the query pool's threads (queries that run at
    /// once share the threads between batches, so a light one is not stuck behind heavy
    /// ones).
    pub max_concurrent_queries: usize,
    /// Queries waiting for a place at most; beyond, 503 `busy`.
    pub max_queued_queries: usize,
    /// Places (running or queued) one client address may hold.
    pub max_queries_per_client: usize,
    /// Queries one client may run at once; 0 = half of max_concurrent_queries (at least
    /// one), so one client never holds every running place.
    pub max_running_per_client: usize,
    /// Places clients of heavy queries may hold together; 0 = the query threads: one a
    /// thread of their pool, whose nice level gives light queries the cores first (half
    /// the threads, as before, left one core idle while every client of a steady mix was
    /// heavy).
    pub max_heavy_queries: usize,
    /// A client whose recent queries held their place this long is a client of heavy ones.
    #[serde(with = "humantime_serde")]
    pub heavy_query_after: Duration,
    /// Clients of heavy queries run on a pool of their own whose threads have this nice
    /// level (0-19): the kernel gives light queries' threads the cores first, so heavy
    /// queries cannot slow them whatever their operators do between yields.
    pub heavy_query_nice: i32,
    /// Longest wait in the queue before 503 `busy`.
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
    /// Tokens in one statement at most (checked before parsing).
    pub max_tokens: usize,
    /// Depth of one expression at most, once AND/OR chains are balanced.
    pub max_expr_depth: usize,
    /// Memory one query's operators may reserve (sorts, joins, aggregates), MiB.
    pub query_memory_limit_mb: usize,
    /// Memory all queries together may reserve, MiB; 0 = half the machine's memory.
    pub node_query_memory_mb: usize,
    /// Answers kept for the snapshot served, MiB (the same statement in the same
    /// generation is answered from them); 0 = off.
    pub answer_cache_mb: usize,
    /// Optimized plans kept for statements met again in a later generation (alerts,
    /// reports, dashboards): only physical planning and execution run again; 0 = off.
    pub plan_cache_entries: usize,
    /// Aggregates' results kept for the snapshot they were computed on, MiB: the same
    /// aggregate under another threshold (`HAVING COUNT(*) > 20`) is read, not run; 0 = off.
    pub aggregate_cache_mb: usize,
    pub quarantine: QuarantineConfig,
}

impl Default for SqlConfig {
    fn default() -> Self {
        let parse = ParseLimits::default();
        SqlConfig {
            threads: 0,
            query_threads: 0,
            max_concurrent_queries: 0,
            max_queued_queries: 64,
            max_queries_per_client: 16,
            max_running_per_client: 0,
            max_heavy_queries: 0,
            heavy_query_after: Duration::from_millis(100),
            heavy_query_nice: 10,
            queue_timeout: Duration::from_secs(5),
            max_tokens: parse.max_tokens,
            max_expr_depth: parse.max_depth,
            query_memory_limit_mb: 1024,
            node_query_memory_mb: 0,
            answer_cache_mb: 64,
            plan_cache_entries: crate::sql::DEFAULT_PLAN_CACHE_ENTRIES,
            aggregate_cache_mb: crate::sql::DEFAULT_AGGREGATE_CACHE_MB,
            quarantine: QuarantineConfig::default(),
        }
    }
}

impl SqlConfig {
    pub fn parse_limits(&self) -> ParseLimits {
        ParseLimits {
            max_tokens: self.max_tokens,
            max_depth: self.max_expr_depth,
        }
    }

    /// Bytes all queries together may reserve.
    pub fn node_query_memory_bytes(&self) -> usize {
        if self.node_query_memory_mb > 0 {
            return self.node_query_memory_mb << 20;
        }
        physical_memory().map_or(4 << 30, |m| m / 2)
    }

    fn validate(&self) -> ConfigResult<()> {
        let bad = |m: &str| {
            Err(ConfigError::Invalid {
                what: "[sql]".into(),
                message: m.into(),
            })
        };
        if self.max_queries_per_client == 0 {
            return bad("max_queries_per_client must be positive");
        }
        // A sort keeps 10 MiB per partition (one per query thread) to merge what it spilled.
        if self.query_memory_limit_mb < 64 {
            return bad("query_memory_limit_mb must be at least 64 (sorts need room to spill)");
        }
        if self.max_tokens < 100 || self.max_expr_depth < 16 {
            return bad("max_tokens must be at least 100 and max_expr_depth at least 16");
        }
        // The query threads' stacks are sized for what the front door admits.
        if self.max_tokens > MAX_TOKENS_FOR_STACK || self.max_expr_depth > 4096 {
            return bad("max_tokens is at most 200000 and max_expr_depth at most 4096");
        }
        if self.queue_timeout.is_zero() {
            return bad("queue_timeout must be positive");
        }
        if !(0..=19).contains(&self.heavy_query_nice) {
            return bad("heavy_query_nice must be between 0 and 19");
        }
        if self.answer_cache_mb > 1 << 20 {
            return bad("answer_cache_mb is at most 1048576 (1 TiB)");
        }
        if self.aggregate_cache_mb > 1 << 20 {
            return bad("aggregate_cache_mb is at most 1048576 (1 TiB)");
        }
        // A kept plan holds at most 64 kB of text and literals (`MAX_KEPT_PLAN_BYTES`) and
        // a few kB of plan: 10000 stay under a GB; and the oldest is found by a scan.
        if self.plan_cache_entries > 10_000 {
            return bad("plan_cache_entries is at most 10000");
        }
        Ok(())
    }
}

/// The most tokens the query threads' stacks (`sql::STACK_BYTES`) are sized for: a refused
/// chain of this many tokens is dropped safely (`front_door` tests it).
pub const MAX_TOKENS_FOR_STACK: usize = 200_000;

/// The machine's memory, from /proc/meminfo.
fn physical_memory() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Publish this machine's sys, processes, filesystem, network_interfaces.
    pub enabled: bool,
    /// Roles this machine publishes in `machinerole`.
    pub roles: Vec<String>,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            enabled: true,
            roles: vec!["tla".into(), "sql".into()],
        }
    }
}

impl NodeConfig {
    /// Parses a config file; relative paths become relative to its directory.
    pub fn load(path: &Path) -> ConfigResult<NodeConfig> {
        let mut cfg: NodeConfig = crate::config::read_toml(path)?;
        cfg.resolve(path.parent().unwrap_or(Path::new(".")));
        cfg.validate()?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Parses config text (an embedded default) as if it were a file in `base`.
    pub fn parse(text: &str, origin: &str, base: &Path) -> ConfigResult<NodeConfig> {
        let mut cfg: NodeConfig = crate::config::parse_toml(text, origin)?;
        cfg.resolve(base);
        cfg.validate()?;
        Ok(cfg)
    }

    fn resolve(&mut self, base: &Path) {
        self.paths.resolve(base);
        self.requests.resolve(base);
        self.link.resolve(base);
        if let Some(t) = &mut self.http.tls {
            t.resolve(base);
        }
        self.auth.resolve(base);
        if let Some(a) = &mut self.alerts {
            a.resolve(base);
        }
        if let Some(h) = &mut self.history {
            h.resolve(base);
        }
        if let Some(edge) = &mut self.edge {
            edge.resolve(base);
        }
        if let Some(set) = &mut self.aggregator_set {
            set.resolve(base);
        }
    }

    pub fn validate(&self) -> ConfigResult<()> {
        let bad = |what: &str, m: &str| {
            Err(ConfigError::Invalid {
                what: what.into(),
                message: m.into(),
            })
        };
        if self.generation.interval < Duration::from_millis(100) {
            return bad("[generation] interval", "must be at least 100ms");
        }
        if self.generation.offset >= self.generation.interval {
            return bad("[generation] offset", "must be shorter than the interval");
        }
        if self.http.max_body_bytes == 0
            || self.http.max_result_rows == 0
            || self.http.max_result_bytes < 1024
        {
            return bad(
                "[http]",
                "max_body_bytes and max_result_rows must be positive, max_result_bytes at least 1024",
            );
        }
        self.http.validate()?;
        self.sql.validate()?;
        if self.http.query_timeout.is_zero() {
            return bad("[http] query_timeout", "must be positive");
        }
        if self.paths.reload_every < Duration::from_millis(100) {
            return bad("[paths] reload_every", "must be at least 100ms");
        }
        if let Some(sim) = &self.simulate {
            sim.validate()?;
        }
        if let Some(edge) = &self.edge {
            edge.validate()?;
        }
        self.link.validate()?;
        self.dns.validate()?;
        self.tla_selection.validate()?;
        self.tla_children.validate()?;
        self.requests.validate()?;
        if let Some(set) = &self.aggregator_set {
            set.load()?;
        }
        self.auth.validate(self.http.listen)?;
        self.pg.validate(&self.auth)?;
        if let Some(a) = &self.alerts {
            a.validate()?;
        }
        if let Some(h) = &self.history {
            h.validate()?;
        }
        Ok(())
    }

    /// Checks that the file suits the role it is started as (see also [`span_check`]).
    pub fn validate_role(&self) -> ConfigResult<()> {
        let role = self.role.name();
        let need = |ok: bool, message: &str| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    what: format!("role {role}"),
                    message: message.into(),
                })
            }
        };
        if let Some(a) = &self.aggregator_set {
            let (set, partition) = a.load()?;
            need(
                !self.role.answers_sql() || set.partitions.is_empty() || partition.is_some(),
                &format!(
                    "aggregator set '{}' is partitioned: name this node's partition in [aggregator_set]",
                    set.name
                ),
            )?;
            let children: Vec<String> = self
                .link
                .child_specs()
                .into_iter()
                .map(|c| c.name)
                .collect();
            if let Err(message) = span_check(self.role, &children, &set) {
                need(false, &message)?;
            }
        }
        need(
            self.alerts.is_none() || self.role.answers_sql(),
            "[alerts] is evaluated by nodes that answer SQL (sql, tla-sql); remove it",
        )?;
        need(
            self.history.is_none() || self.role.answers_sql(),
            "[history] is kept by nodes that answer SQL (sql, tla-sql); remove it",
        )?;
        need(
            self.pg.listen.is_none() || self.role.answers_sql(),
            "[pg] listen is for nodes that answer SQL (sql, tla-sql); remove it",
        )?;
        need(
            self.tla_children.children.is_empty() || matches!(self.role, Role::Tla | Role::TlaSql),
            "[tla_children] is for a TLA (tla, tla-sql); remove it",
        )?;
        match self.role {
            Role::TlaChild => {
                need(
                    !self.link.has_children(),
                    "a TLA child dials nothing (its TLA dials it); remove [link] children",
                )?;
                need(
                    self.link.listen.is_some(),
                    "[link] listen is needed: the TLA dials it",
                )
            }
            Role::Edge => need(
                !self.link.has_children(),
                "an edge has no children; remove [link] children",
            ),
            Role::ClusterProxy | Role::Tla => {
                need(
                    self.link.has_children(),
                    "[link] children (or [[link.child]]) must list the nodes below",
                )?;
                need(
                    self.link.listen.is_some(),
                    "[link] listen is needed: parents dial it",
                )
            }
            Role::Sql => {
                need(
                    self.link.child_groups.is_empty(),
                    "a SQL node reads from one TLA: list the candidates in [link] children",
                )?;
                need(
                    !self.tla_candidates()?.is_empty(),
                    "[link] children must name the TLA(s) to read from (or [aggregator_set] its set)",
                )
            }
            Role::TlaSql => Ok(()),
        }
    }
}

impl NodeConfig {
    /// A SQL node's candidate TLAs: `[link] children` (addresses or `NAME:PORT`), else the
    /// TLA name of its aggregator set.
    pub fn tla_candidates(&self) -> ConfigResult<Vec<String>> {
        if !self.link.children.is_empty() {
            return Ok(self.link.children.clone());
        }
        match &self.aggregator_set {
            Some(a) => {
                let (set, _) = a.load()?;
                crate::tier::names::check_entry("aggregator set tla_name", &set.tla_name)?;
                Ok(vec![set.tla_name])
            }
            None => Ok(Vec::new()),
        }
    }
}

impl PathsConfig {
    fn resolve(&mut self, base: &Path) {
        for p in [&mut self.schemas, &mut self.static_tables, &mut self.views] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}

/// A node that dials children (not a SQL node) must have at least one of them in its
/// aggregator set's span; checked at start and on every edit of the sets file.
pub(super) fn span_check(
    role: Role,
    children: &[String],
    set: &crate::aggregator_sets::AggregatorSet,
) -> Result<(), String> {
    if role == Role::Sql || children.is_empty() || children.iter().any(|c| set.spans(c)) {
        return Ok(());
    }
    Err(format!(
        "the span of aggregator set '{}' ({}) names none of this node's children ({}): name clusters as in [[link.child]] name, or their addresses",
        set.name,
        set.span.join(", "),
        children.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role_of(name: &str) -> Role {
        match name {
            "edge" => Role::Edge,
            "cluster-proxy" => Role::ClusterProxy,
            "tla" => Role::Tla,
            "sql" => Role::Sql,
            "tla-sql" | "demo" => Role::TlaSql,
            "tla-child" => Role::TlaChild,
            other => panic!("{name}: no role '{other}'"),
        }
    }

    /// The files of `dir` ending in `suffix`, with the rest of their names.
    fn files(dir: &Path, suffix: &str) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if let Some(stem) = name.strip_suffix(suffix) {
                let stem = stem.to_string();
                out.push((path, stem));
            }
        }
        out
    }

    fn check_paths(name: &str, cfg: &NodeConfig) {
        if let Some(p) = &cfg.requests.prewarm {
            assert!(p.exists(), "{name}: prewarm file resolves");
        }
        assert!(
            cfg.paths.schemas.join("sys.toml").exists(),
            "{name}: schemas path resolves"
        );
        assert!(cfg.paths.views.exists(), "{name}: views path resolves");
    }

    /// What `queryd <role>` runs without --config: loopback only, plaintext, no tokens,
    /// and the files it names exist (relative to `ops/defaults/`, as queryd reads them).
    #[test]
    fn builtin_defaults_are_loopback_only() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/defaults");
        let defaults = files(&dir, ".toml");
        assert_eq!(defaults.len(), 6, "a default per role but the demo");
        for (path, role) in defaults {
            let mut cfg = NodeConfig::load(&path).unwrap_or_else(|e| panic!("{role}: {e}"));
            cfg.role = role_of(&role);
            cfg.validate_role()
                .unwrap_or_else(|e| panic!("{role}: {e}"));
            check_paths(&role, &cfg);
            assert!(cfg.http.listen.ip().is_loopback(), "{role}");
            assert!(
                cfg.link.listen.is_none_or(|a| a.ip().is_loopback()),
                "{role}"
            );
            assert!(cfg.link.tls.is_none() && cfg.http.tls.is_none(), "{role}");
            assert!(cfg.auth.tokens_file.is_none(), "{role}");
            assert!(
                cfg.pg.listen.is_none(),
                "{role}: Postgres is off by default"
            );
        }
        // The demo speaks Postgres on loopback (README: `psql -h 127.0.0.1 -p 5433`).
        let demo = NodeConfig::load(&dir.join("../demo.example.toml")).expect("demo");
        assert_eq!(
            demo.pg.listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 5433)))
        );
    }

    /// A stand-in for /etc/query/ holding what the production examples name: real
    /// certificates made by `tls::ca` (a fleet CA, `tls/node.*` and `tls/http.*` signed by
    /// it, a users' CA as `tls/users-ca.pem`) and the shipped tokens example as
    /// `tokens.toml`.
    fn fake_etc_query() -> tempfile::TempDir {
        use crate::tls::ca::{self, CertSpec};
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = dir.path().join("tls");
        ca::init_dir(&tls, &CertSpec::for_days("fleet CA", 30)).expect("fleet CA");
        for name in ["node", "http"] {
            let mut spec = CertSpec::for_days(name, 30);
            spec.ips = vec!["10.0.0.20".parse().expect("ip")];
            ca::issue_in_dir(&tls, &spec).expect("issue");
        }
        let users = dir.path().join("users");
        let users_ca = ca::init_dir(&users, &CertSpec::for_days("users CA", 30)).expect("users CA");
        std::fs::copy(users_ca, tls.join("users-ca.pem")).expect("copy");
        let tokens = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/examples/tokens.toml");
        std::fs::copy(tokens, dir.path().join("tokens.toml")).expect("copy");
        dir
    }

    /// Every example parses and validates for real: its /etc/query/ files are made in a
    /// temporary directory (the tokens file is read by validation, the certificates and
    /// keys are loaded as the node loads them at start). Production examples listen
    /// beyond loopback only with mutual TLS on links, and HTTP beyond loopback only with
    /// tokens and HTTPS; the demo stays the plain loopback one.
    #[test]
    fn example_configs_parse() {
        use crate::tls::{server_config, ClientCerts, MutualTls};
        let ops = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops");
        let etc = fake_etc_query();
        let etc_prefix = format!("{}/", etc.path().display());
        let mut n = 0;
        for (path, role) in files(&ops, ".example.toml") {
            let name = format!("{role}.example.toml");
            n += 1;
            if role == "demo" {
                let cfg = NodeConfig::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
                check_paths(&name, &cfg);
                assert!(
                    cfg.link.tls.is_none() && cfg.http.tls.is_none(),
                    "demo stays plain"
                );
                assert!(cfg.http.listen.ip().is_loopback() && cfg.auth.tokens_file.is_none());
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            assert!(text.contains("/etc/query/"), "{name}: production files");
            let text = text.replace("/etc/query/", &etc_prefix);
            let mut cfg =
                NodeConfig::parse(&text, &name, &ops).unwrap_or_else(|e| panic!("{name}: {e}"));
            cfg.role = role_of(&role);
            cfg.validate_role()
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            check_paths(&name, &cfg);

            let link = cfg
                .link
                .tls
                .as_ref()
                .unwrap_or_else(|| panic!("{name}: [link.tls]"));
            MutualTls::load(link).unwrap_or_else(|e| panic!("{name}: [link.tls]: {e}"));
            if let Some(listen) = cfg.link.listen {
                assert!(
                    !listen.ip().is_loopback(),
                    "{name}: links listen on the network"
                );
            }
            assert!(!cfg.link.allow_plaintext, "{name}");
            if cfg.http.listen.ip().is_loopback() {
                assert_eq!(role, "edge", "{name}: only the edge keeps HTTP on loopback");
                continue;
            }
            assert!(
                cfg.auth.tokens_file.is_some(),
                "{name}: HTTP beyond loopback needs tokens"
            );
            let http = cfg
                .http
                .tls
                .as_ref()
                .unwrap_or_else(|| panic!("{name}: [http.tls]"));
            // With a tokens file a client certificate is optional (as query_http serves it).
            let clients = if http.ca.is_some() {
                ClientCerts::OptionalOtherCa
            } else {
                ClientCerts::NotAsked
            };
            server_config(http, clients).unwrap_or_else(|e| panic!("{name}: [http.tls]: {e}"));
        }
        assert_eq!(n, 7, "an example per role and the demo");
    }

    #[test]
    fn http_tls_resolves_paths_and_refuses_server_name() {
        let cfg = NodeConfig::parse(
            "[http.tls]\ncert = \"tls/http.pem\"\nkey = \"/k.pem\"\n",
            "t",
            Path::new("/etc/query"),
        )
        .expect("parses");
        let tls = cfg.http.tls.expect("tls");
        assert_eq!(tls.cert, Path::new("/etc/query/tls/http.pem"));
        assert_eq!((tls.key.as_path(), tls.ca), (Path::new("/k.pem"), None));
        let err = NodeConfig::parse(
            "[http.tls]\ncert = \"c\"\nkey = \"k\"\nserver_name = \"a.example\"\n",
            "t",
            Path::new("."),
        )
        .expect_err("server_name refused");
        assert!(err.to_string().contains("[http.tls]"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(NodeConfig::parse(
            "[http]\nlisten = \"127.0.0.1:1\"\nmax_rows = 5\n",
            "t",
            Path::new(".")
        )
        .is_err());
        assert!(NodeConfig::parse(
            "[generation]\ninterval = \"1s\"\noffset = \"2s\"\n",
            "t",
            Path::new(".")
        )
        .is_err());
        assert!(
            NodeConfig::parse("[generation]\ninterval = \"soon\"\n", "t", Path::new(".")).is_err()
        );
        let cfg = NodeConfig::parse("", "t", Path::new(".")).expect("all defaults");
        assert_eq!(cfg.generation.interval, Duration::from_secs(60));
    }
}

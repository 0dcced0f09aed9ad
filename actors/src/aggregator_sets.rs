//! Aggregator sets (LISA 2010 sections 3.5, 6.3): named groups of TLAs and SQL nodes, each
//! with a span (the clusters it aggregates), a domain (the users it serves), the DNS names
//! of its SQL nodes and TLAs, the tables it keeps prewarmed, and optional partitions.
//!
//! A partitioned set splits its tables among its SQL nodes: each partition prewarms its own
//! tables and has its own hostname, while the set's name covers them all. A node asked for
//! a table of another partition does not fetch it: it redirects the client to that
//! partition ([`Routing::check`]). This module owns the file (`ops/aggregator-sets.toml`)
//! and that routing rule.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{ConfigError, ConfigResult, QueryError};

/// `ops/aggregator-sets.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatorSetsFile {
    #[serde(rename = "set", default)]
    pub sets: Vec<AggregatorSet>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatorSet {
    pub name: String,
    /// Clusters it aggregates (`"*"`: all).
    #[serde(default = "everything")]
    pub span: Vec<String>,
    /// Users it serves (`"*"`: all).
    #[serde(default = "everything")]
    pub domain: Vec<String>,
    /// DNS name of its SQL nodes (all partitions).
    pub sql_name: String,
    /// DNS name of its TLAs.
    pub tla_name: String,
    /// Tables every node of the set keeps requested.
    #[serde(default)]
    pub prewarm: Vec<String>,
    #[serde(rename = "partition", default)]
    pub partitions: Vec<Partition>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    pub name: String,
    /// Where clients are sent for this partition's tables (`NAME` or `NAME:PORT`).
    pub hostname: String,
    /// The tables this partition owns (and prewarms).
    pub tables: Vec<String>,
}

fn everything() -> Vec<String> {
    vec!["*".into()]
}

impl AggregatorSet {
    /// Whether the set aggregates the child (cluster) called `name`: its `[[link.child]]`
    /// name, or the address a `[link] children` entry gives.
    pub fn spans(&self, name: &str) -> bool {
        self.span.iter().any(|s| s == "*" || s == name)
    }
}

/// `[aggregator_set]` of a node's config: which set (and partition) it belongs to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatorSetConfig {
    /// The sets file, relative to the node's config file.
    pub file: PathBuf,
    pub name: String,
    /// This node's partition; required when the set has partitions.
    pub partition: Option<String>,
}

impl AggregatorSetConfig {
    pub(crate) fn resolve(&mut self, base: &Path) {
        if self.file.is_relative() {
            self.file = base.join(&self.file);
        }
    }

    /// Loads the file and picks this node's set and partition.
    pub fn load(&self) -> ConfigResult<(AggregatorSet, Option<Partition>)> {
        let file = AggregatorSetsFile::load(&self.file)?;
        let set = file
            .sets
            .iter()
            .find(|s| s.name == self.name)
            .cloned()
            .ok_or_else(|| ConfigError::Invalid {
                what: "[aggregator_set] name".into(),
                message: format!(
                    "no set '{}' in {} (sets: {})",
                    self.name,
                    self.file.display(),
                    file.sets
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
        // A TLA serves every partition and names none; a SQL node of a partitioned set
        // must name its own (checked with the role, `NodeConfig::validate_role`).
        let partition = match &self.partition {
            None => None,
            Some(p) => Some(
                set.partitions
                    .iter()
                    .find(|x| &x.name == p)
                    .cloned()
                    .ok_or_else(|| ConfigError::Invalid {
                        what: "[aggregator_set] partition".into(),
                        message: format!("set '{}' has no partition '{p}'", set.name),
                    })?,
            ),
        };
        Ok((set, partition))
    }
}

impl AggregatorSetsFile {
    pub fn load(path: &Path) -> ConfigResult<AggregatorSetsFile> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::io(path, e))?;
        let file: AggregatorSetsFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        file.validate().map_err(|message| ConfigError::Invalid {
            what: path.display().to_string(),
            message,
        })?;
        Ok(file)
    }

    fn validate(&self) -> Result<(), String> {
        let mut names = BTreeSet::new();
        for s in &self.sets {
            if s.name.is_empty() || !names.insert(&s.name) {
                return Err(format!(
                    "set names must be unique and not empty ('{}')",
                    s.name
                ));
            }
            if s.sql_name.is_empty() || s.tla_name.is_empty() {
                return Err(format!(
                    "set '{}': sql_name and tla_name are required",
                    s.name
                ));
            }
            let mut parts = BTreeSet::new();
            let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
            for p in &s.partitions {
                if p.name.is_empty() || !parts.insert(&p.name) {
                    return Err(format!(
                        "set '{}': partition names must be unique and not empty",
                        s.name
                    ));
                }
                if p.hostname.is_empty() {
                    return Err(format!(
                        "set '{}', partition '{}': hostname is required",
                        s.name, p.name
                    ));
                }
                for t in &p.tables {
                    if let Some(other) = owner.insert(t, &p.name) {
                        return Err(format!(
                            "set '{}': table {t} is in partitions '{other}' and '{}'",
                            s.name, p.name
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Where a node sends queries for tables it does not own.
#[derive(Debug, Clone)]
pub struct Routing {
    set: String,
    /// This node's partition.
    own: String,
    /// Per owned table: its partition and that partition's hostname.
    owners: BTreeMap<String, (String, String)>,
}

impl Routing {
    /// None for an unpartitioned set: every node answers for every table.
    pub fn new(set: &AggregatorSet, own: Option<&Partition>) -> Option<Routing> {
        let own = own?;
        let owners = set
            .partitions
            .iter()
            .flat_map(|p| {
                p.tables
                    .iter()
                    .map(move |t| (t.clone(), (p.name.clone(), p.hostname.clone())))
            })
            .collect();
        Some(Routing {
            set: set.name.clone(),
            own: own.name.clone(),
            owners,
        })
    }

    /// Ok when this node answers for all of `tables`; a redirect when they all belong to
    /// one other partition; a 400 when they span partitions (no node holds them all).
    /// Tables no partition owns are answered anywhere.
    pub fn check(&self, tables: &BTreeSet<String>) -> Result<(), QueryError> {
        let mut foreign: BTreeMap<&str, (&str, Vec<&str>)> = BTreeMap::new();
        let mut mine = Vec::new();
        for t in tables {
            match self.owners.get(t) {
                Some((p, _)) if *p == self.own => mine.push(t.as_str()),
                Some((p, host)) => foreign
                    .entry(p.as_str())
                    .or_insert((host.as_str(), Vec::new()))
                    .1
                    .push(t.as_str()),
                None => {}
            }
        }
        match foreign.len() {
            0 => Ok(()),
            1 if mine.is_empty() => {
                let (partition, (host, tables)) =
                    foreign.into_iter().next().expect("one foreign partition");
                Err(QueryError::OtherPartition {
                    partition: partition.to_string(),
                    host: host.to_string(),
                    tables: tables.into_iter().map(String::from).collect(),
                })
            }
            _ => {
                let mut spans: Vec<String> = foreign
                    .iter()
                    .map(|(p, (_, ts))| format!("{} (partition {p})", ts.join(", ")))
                    .collect();
                if !mine.is_empty() {
                    spans.push(format!("{} (partition {})", mine.join(", "), self.own));
                }
                Err(QueryError::BadRequest(format!(
                    "the tables {} belong to different partitions of aggregator set '{}': no node holds them together",
                    spans.join(" and "),
                    self.set
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_names_the_children_a_tla_dials() {
        let set: AggregatorSet = toml::from_str(
            "name = \"eu\"\nspan = [\"cluster-eu\", \"10.0.0.5:7400\"]\nsql_name = \"s\"\ntla_name = \"t\"\n",
        )
        .expect("set");
        assert!(set.spans("cluster-eu") && set.spans("10.0.0.5:7400"));
        assert!(!set.spans("cluster-us"));
        let all: AggregatorSet =
            toml::from_str("name = \"all\"\nsql_name = \"s\"\ntla_name = \"t\"\n").expect("set");
        assert!(all.spans("anything"), "the default span is every cluster");
    }

    const FILE: &str = r#"
[[set]]
name = "main"
sql_name = "sql.main.example"
tla_name = "tla.main.example"
prewarm = ["sys"]

[[set.partition]]
name = "core"
hostname = "sql-core.main.example"
tables = ["sys", "processes"]

[[set.partition]]
name = "traffic"
hostname = "sql-traffic.main.example:8081"
tables = ["load_info"]
"#;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn partitions_route_or_redirect() {
        let file: AggregatorSetsFile = toml::from_str(FILE).expect("parse");
        file.validate().expect("valid");
        let main = &file.sets[0];
        let core = Routing::new(main, Some(&main.partitions[0])).expect("partitioned");
        assert!(core
            .check(&set(&["sys", "processes", "filesystem"]))
            .is_ok());
        match core.check(&set(&["load_info", "filesystem"])) {
            Err(QueryError::OtherPartition {
                partition, host, ..
            }) => {
                assert_eq!(
                    (partition.as_str(), host.as_str()),
                    ("traffic", "sql-traffic.main.example:8081")
                )
            }
            other => panic!("expected a redirect, got {other:?}"),
        }
        match core.check(&set(&["sys", "load_info"])) {
            Err(QueryError::BadRequest(m)) => assert!(m.contains("different partitions"), "{m}"),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn a_table_in_two_partitions_is_refused() {
        let bad = FILE.replace(
            "tables = [\"load_info\"]",
            "tables = [\"load_info\", \"sys\"]",
        );
        let file: AggregatorSetsFile = toml::from_str(&bad).expect("parse");
        let e = file.validate().expect_err("sys twice");
        assert!(e.contains("sys"), "{e}");
    }

    #[test]
    fn shipped_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/aggregator-sets.toml");
        let file = AggregatorSetsFile::load(&path).expect("ops/aggregator-sets.toml is valid");
        assert!(!file.sets.is_empty());
    }
}

//! How complete an answer is: the TLA round it serves and the clusters and machines seen
//! against those expected, so a user can trust a number (or compare two SQL nodes' answers)
//! and a query can ask for a minimum instead of a partial answer.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use serde::Serialize;

use super::config::Role;
use super::handle::NodeHandle;
use crate::sql::Snapshot;

/// What an answer states about its generation's coverage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Completeness {
    /// The TLA's round (`Generation::tla_round`): equal at two SQL nodes serving the same
    /// TLA generation.
    pub round: u64,
    pub clusters_seen: u64,
    /// None when the node cannot know (see [`NodeHandle::completeness`]).
    pub clusters_expected: Option<u64>,
    pub machines_seen: u64,
    pub machines_expected: Option<u64>,
}

/// The least coverage a query accepts (`?min_clusters=`, `X-Query-Min-Clusters`, and the
/// same for machines).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinCompleteness {
    pub clusters: Option<u64>,
    pub machines: Option<u64>,
}

impl Completeness {
    /// Refuses coverage below `min`, naming what was seen and what was asked.
    pub fn check(&self, min: &MinCompleteness) -> Result<(), String> {
        let mut short = Vec::new();
        if let Some(n) = min.clusters.filter(|n| self.clusters_seen < *n) {
            short.push(format!(
                "{} clusters seen, at least {n} asked (min_clusters)",
                self.clusters_seen
            ));
        }
        if let Some(n) = min.machines.filter(|n| self.machines_seen < *n) {
            short.push(format!(
                "{} machines seen, at least {n} asked (min_machines)",
                self.machines_seen
            ));
        }
        if short.is_empty() {
            return Ok(());
        }
        let expected = |e: Option<u64>| e.map_or("unknown".to_string(), |e| e.to_string());
        Err(format!(
            "the generation served (round {}) is less complete than asked: {}; expected {} clusters and {} machines",
            self.round,
            short.join(", "),
            expected(self.clusters_expected),
            expected(self.machines_expected),
        ))
    }
}

impl NodeHandle {
    /// The coverage of `snap`'s generation. Seen is what the generation counts (a TLA's
    /// live children as clusters; a SQL node its TLA's counts). Expected depends on what
    /// the node knows:
    /// - a SQL node: the most any TLA candidate advertised at its last answered probe (the
    ///   set's best view; if every TLA lost a cluster, expected drops with it);
    /// - a TLA: its configured children as clusters, and as machines what each child last
    ///   reported (a child never heard from counts none);
    /// - a cluster proxy: one cluster, and its configured children (plus itself) as machines;
    /// - an edge: itself.
    ///
    /// At a TLA or SQL node, a sourced table (`sourced = true`, OSR 2.3: the fleet's
    /// configuration) overrides these where it says: see [`SourcedExpectation`].
    ///
    /// Expected is never below seen.
    pub fn completeness(&self, snap: &Snapshot) -> Completeness {
        let g = &snap.generation;
        // Sourced tables describe the fleet: they say what a TLA or SQL node should see,
        // not an edge or a cluster proxy (one machine, one cluster).
        let sourced = match self.config.role {
            Role::Tla | Role::TlaSql | Role::Sql => self.sourced_expectation(snap),
            Role::Edge | Role::ClusterProxy | Role::TlaChild => SourcedExpectation::default(),
        };
        let (clusters, machines) = match (&self.selection, &self.children) {
            (Some(selection), _) => {
                let s = selection.lock().unwrap_or_else(|p| p.into_inner());
                let answering = s.candidates.values().filter(|c| c.failures == 0);
                let best = |f: fn(&crate::tier::tla_selection::Candidate) -> Option<u64>| {
                    answering.clone().filter_map(f).max()
                };
                (best(|c| c.clusters), best(|c| c.machines))
            }
            (None, Some(children)) => {
                let all = children.snapshot();
                let configured = all.len() as u64;
                let local = u64::from(self.config.host.enabled || self.config.edge.is_some());
                match self.config.role {
                    Role::Tla | Role::TlaSql => {
                        let reported: u64 = all
                            .values()
                            .filter_map(|s| s.latest.as_ref().map(|l| l.machines))
                            .sum();
                        (Some(configured), Some(reported + local))
                    }
                    _ => (Some(1), Some(configured + local)),
                }
            }
            (None, None) => (Some(g.clusters), Some(g.machines)),
        };
        let clusters = sourced.clusters.or(clusters);
        let machines = sourced.machines.or(machines);
        Completeness {
            round: g.tla_round,
            clusters_seen: g.clusters,
            clusters_expected: clusters.map(|e| e.max(g.clusters)),
            machines_seen: g.machines,
            machines_expected: machines.map(|e| e.max(g.machines)),
        }
    }

    /// The expectation of `snap`'s sourced tables, computed once per generation.
    fn sourced_expectation(&self, snap: &Snapshot) -> SourcedExpectation {
        let id = snap.generation.id;
        let mut cached = self
            .sourced_expectation
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(e) = cached.filter(|e| e.generation == id) {
            return e;
        }
        let mut e = SourcedExpectation {
            generation: id,
            ..Default::default()
        };
        let published = self.schemas().iter().filter(|d| d.sourced).filter_map(|d| {
            let t = snap.generation.tables.get(&d.name)?;
            Some((
                d.name.clone(),
                t.parts.iter().map(|p| p.batch.clone()).collect(),
            ))
        });
        let statics = snap
            .statics
            .tables
            .values()
            .filter(|t| t.def.sourced)
            .map(|t| (t.def.name.clone(), vec![t.batch.clone()]));
        let mut tables: Vec<(String, Vec<RecordBatch>)> = published.chain(statics).collect();
        tables.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, batches) in &tables {
            let (clusters, machines) = expectation_of(batches);
            e.clusters = e.clusters.or(clusters);
            e.machines = e.machines.or(machines);
        }
        *cached = Some(e);
        e
    }

    /// Counts an answer refused for coverage below what its query asked.
    pub fn count_incomplete(&self) {
        self.metrics
            .queries_incomplete
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// What the sourced tables of one generation say should be seen. Conventions (a sourced
/// table may follow any of them; the first table by name that does, wins):
/// - clusters: the distinct values of a string column `cluster`;
/// - machines: the sum of an int64 column `machines` (machines per row, e.g. per
///   cluster), else the distinct values of a string column `machine` (a row per machine).
#[derive(Debug, Clone, Copy, Default)]
pub struct SourcedExpectation {
    generation: u64,
    clusters: Option<u64>,
    machines: Option<u64>,
}

/// (distinct `cluster` values, sum of `machines` or distinct `machine` values) of a table.
fn expectation_of(batches: &[RecordBatch]) -> (Option<u64>, Option<u64>) {
    let Some(schema) = batches.first().map(|b| b.schema()) else {
        return (None, None);
    };
    let distinct = |name: &str| -> Option<u64> {
        let (i, f) = schema.column_with_name(name)?;
        if f.data_type() != &DataType::Utf8 {
            return None;
        }
        let mut seen = BTreeSet::new();
        for b in batches {
            let col = b.column(i).as_string::<i32>();
            seen.extend(col.iter().flatten().map(str::to_string));
        }
        Some(seen.len() as u64)
    };
    let sum = |name: &str| -> Option<u64> {
        let (i, f) = schema.column_with_name(name)?;
        if f.data_type() != &DataType::Int64 {
            return None;
        }
        let total: i64 = batches
            .iter()
            .map(|b| b.column(i).as_primitive::<Int64Type>())
            .flat_map(|c| c.iter().flatten())
            .map(|v| v.max(0))
            .sum();
        Some(total as u64)
    };
    (
        distinct("cluster"),
        sum("machines").or_else(|| distinct("machine")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sourced_tables_count_clusters_and_machines_by_convention() {
        use datafusion::arrow::array::{Int64Array, StringArray};
        use datafusion::arrow::datatypes::{Field, Schema};
        use std::sync::Arc;
        let schema = Arc::new(Schema::new(vec![
            Field::new("cluster", DataType::Utf8, false),
            Field::new("machines", DataType::Int64, false),
        ]));
        let batch = |c: Vec<&str>, m: Vec<i64>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(c)),
                    Arc::new(Int64Array::from(m)),
                ],
            )
            .expect("batch")
        };
        let parts = [
            batch(vec!["a", "b"], vec![50, 40]),
            batch(vec!["b"], vec![10]),
        ];
        assert_eq!(expectation_of(&parts), (Some(2), Some(100)));
        let schema = Arc::new(Schema::new(vec![Field::new(
            "machine",
            DataType::Utf8,
            true,
        )]));
        let machines = RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(vec![
                Some("10.0.0.1"),
                None,
                Some("10.0.0.2"),
            ]))],
        )
        .expect("batch");
        assert_eq!(expectation_of(&[machines]), (None, Some(2)));
        assert_eq!(expectation_of(&[]), (None, None));
    }

    #[test]
    fn refuses_below_the_minimum_naming_seen_and_asked() {
        let c = Completeness {
            round: 42,
            clusters_seen: 2,
            clusters_expected: Some(3),
            machines_seen: 40,
            machines_expected: None,
        };
        assert!(c.check(&MinCompleteness::default()).is_ok());
        let at = MinCompleteness {
            clusters: Some(2),
            machines: Some(40),
        };
        assert!(c.check(&at).is_ok());
        let e = c
            .check(&MinCompleteness {
                clusters: Some(3),
                machines: None,
            })
            .expect_err("too few clusters");
        assert!(
            e.contains("2 clusters seen, at least 3 asked (min_clusters)")
                && e.contains("round 42")
                && e.contains("expected 3 clusters and unknown machines"),
            "{e}"
        );
        let e = c
            .check(&MinCompleteness {
                clusters: None,
                machines: Some(41),
            })
            .expect_err("too few machines");
        assert!(
            e.contains("40 machines seen, at least 41 asked (min_machines)"),
            "{e}"
        );
    }
}

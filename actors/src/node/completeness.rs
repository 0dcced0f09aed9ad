//! How complete an answer is: the TLA round it serves and the clusters and machines seen
//! against those expected, so a user can trust a number (or compare two SQL nodes' answers)
//! and a query can ask for a minimum instead of a partial answer.

use std::sync::atomic::Ordering;

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
    /// Expected is never below seen.
    pub fn completeness(&self, snap: &Snapshot) -> Completeness {
        let g = &snap.generation;
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
        Completeness {
            round: g.tla_round,
            clusters_seen: g.clusters,
            clusters_expected: clusters.map(|e| e.max(g.clusters)),
            machines_seen: g.machines,
            machines_expected: machines.map(|e| e.max(g.machines)),
        }
    }

    /// Counts an answer refused for coverage below what its query asked.
    pub fn count_incomplete(&self) {
        self.metrics
            .queries_incomplete
            .fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

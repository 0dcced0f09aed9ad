//! Query about Query: the `query_nodes`, `query_links` and `query_departed` tables every node
//! publishes about itself, collected like any local table (so they flow up the hierarchy
//! when requested).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use tokio::sync::watch;

use crate::edge::{Collected, LocalPublisher, Published};
use crate::generation::{Generation, SourceStamp};
use crate::metrics::Metrics;
use crate::table::{Cell, SchemaRegistry, TableBuilder};
use crate::tier::parent_links::ParentSessions;
use crate::tier::Children;

pub struct SelfMonitor {
    pub machine_ip: String,
    pub node: String,
    pub role: &'static str,
    pub schemas: SchemaRegistry,
    pub metrics: Arc<Metrics>,
    pub children: Option<Arc<Children>>,
    /// A TLA's TLA children (`[tla_children]`): a `query_links` row each.
    pub tla_children: Option<Arc<crate::tier::tla_children::Deferral>>,
    pub parents: Arc<ParentSessions>,
    pub generations: watch::Receiver<Option<Arc<Generation>>>,
    pub wanted: watch::Receiver<BTreeSet<String>>,
    pub departures: super::departed::Departures,
    pub departed_keep: std::time::Duration,
    pub supervisor: super::supervisor::Supervisor,
    /// The node, once started: what its served generation was expected to cover (the same
    /// figures answers carry).
    pub handle: Arc<OnceLock<super::NodeHandle>>,
}

impl SelfMonitor {
    fn table(&self, name: &str, rows: Vec<Vec<Cell>>, now: SystemTime) -> Option<Published> {
        let def = self.schemas.get(name)?;
        let mut b = TableBuilder::new(def.arrow_schema(true), def.full_columns(true));
        for mut row in rows {
            row.insert(0, Cell::Str(self.machine_ip.clone()));
            row.insert(1, Cell::Str(self.node.clone()));
            if let Err(e) = b.push_row(row) {
                tracing::warn!(table = name, error = %e, "self-monitoring row does not fit the schema");
            }
        }
        Some(Published::new(
            name,
            format!("{}/{}", self.machine_ip, self.node),
            b.finish(),
            vec![SourceStamp {
                source: self.machine_ip.as_str().into(),
                published_at: now,
            }],
        ))
    }
}

fn int(v: u64) -> Cell {
    Cell::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

impl LocalPublisher for SelfMonitor {
    fn name(&self) -> &str {
        "self-monitor"
    }

    fn collect(&mut self, now: SystemTime) -> Collected {
        let previous = self.generations.borrow().clone();
        let children = self
            .children
            .as_ref()
            .map(|c| c.snapshot())
            .unwrap_or_default();
        let parents = self.parents.snapshot();
        let drop_after = self.children.as_ref().map(|c| c.drop_after());
        let instant = Instant::now();
        let coverage = self
            .handle
            .get()
            .and_then(|n| Some(n.completeness(n.snapshot()?.as_ref())));
        let expected = |f: fn(&super::Completeness) -> Option<u64>| {
            coverage.as_ref().and_then(f).map_or(Cell::Null, int)
        };
        let live = |s: &crate::tier::ChildState| {
            s.latest.is_some()
                && s.last_frame
                    .zip(drop_after)
                    .is_some_and(|(t, d)| instant.saturating_duration_since(t) <= d)
        };
        let node_row = vec![
            Cell::Str(self.role.to_string()),
            int(previous.as_ref().map_or(0, |g| g.id) + 1),
            previous
                .as_ref()
                .map_or(Cell::Null, |g| int(g.age(now).as_millis() as u64)),
            int(previous.as_ref().map_or(0, |g| g.clusters)),
            expected(|c| c.clusters_expected),
            int(previous.as_ref().map_or(0, |g| g.machines)),
            expected(|c| c.machines_expected),
            int(previous.as_ref().map_or(0, |g| g.tables.len() as u64)),
            int(self.wanted.borrow().len() as u64),
            int(children.values().filter(|s| live(s)).count() as u64),
            int(children.len() as u64),
            int(parents.len() as u64),
            int(children.values().map(|s| s.bytes_in).sum()),
            int(parents.iter().map(|p| p.bytes_out).sum()),
            int(self.metrics.actor_restarts.load(Ordering::Relaxed)),
        ];
        let mut links = Vec::new();
        for (peer, s) in &children {
            links.push(vec![
                Cell::Str("child".into()),
                Cell::Str(peer.clone()),
                s.address.clone().map_or(Cell::Null, Cell::Str),
                Cell::Bool(s.connected),
                Cell::Bool(live(s)),
                int(s.frames),
                int(s.bytes_in),
                int(s.last_frame_bytes),
                int(s.last_full_frame_bytes),
                int(s.connects),
                int(s.restarts),
                s.last_error.clone().map_or(Cell::Null, Cell::Str),
                match (live(s), drop_after) {
                    (true, Some(d)) => {
                        let t = s.tables_dropped(instant, d);
                        if t.is_empty() {
                            Cell::Null
                        } else {
                            Cell::Str(t.join(","))
                        }
                    }
                    _ => Cell::Null,
                },
                Cell::Null,
                Cell::Null,
            ]);
        }
        for p in &parents {
            links.push(vec![
                Cell::Str("parent".into()),
                Cell::Str(p.parent.clone()),
                Cell::Str(p.peer.clone()),
                Cell::Bool(true),
                Cell::Bool(true),
                int(p.frames),
                int(p.bytes_out),
                int(p.last_frame_bytes),
                int(p.last_full_frame_bytes),
                int(1),
                int(0),
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
            ]);
        }
        if let Some(d) = &self.tla_children {
            for v in d.views() {
                // Who merges its tables now: the child, or (while it is down) this TLA.
                let merged_by = match v.up {
                    true => v.node.clone().unwrap_or_else(|| v.address.clone()),
                    false => d.node.clone(),
                };
                links.push(vec![
                    Cell::Str("tla-child".into()),
                    Cell::Str(v.node.clone().unwrap_or_else(|| v.address.clone())),
                    Cell::Str(v.address.clone()),
                    Cell::Bool(v.up),
                    Cell::Bool(v.up),
                    int(v.frames_in),
                    int(v.bytes_in),
                    int(v.last_frame_bytes),
                    int(0),
                    int(v.connects),
                    int(v.failures),
                    v.last_error.clone().map_or(Cell::Null, Cell::Str),
                    Cell::Null,
                    Cell::Str(v.share.iter().cloned().collect::<Vec<_>>().join(",")),
                    Cell::Str(merged_by),
                ]);
            }
        }
        let kind = match self.role {
            "cluster-proxy" => "machine",
            "sql" => "tla",
            _ => "cluster",
        };
        let keep = self.departed_keep;
        let departed = self
            .departures
            .observe(&children, live, kind, keep, now, instant);
        let actors = self
            .supervisor
            .status()
            .into_iter()
            .map(|p| {
                vec![
                    Cell::Str(self.role.to_string()),
                    Cell::Str(p.name),
                    Cell::Str(p.kind.as_str().to_string()),
                    Cell::Str(p.state.as_str().to_string()),
                    int(p.restarts),
                    p.last_error.map_or(Cell::Null, Cell::Str),
                    Cell::Ts(crate::table::unix_millis(p.since)),
                ]
            })
            .collect();
        let tables = [
            self.table("query_nodes", vec![node_row], now),
            self.table("query_actors", actors, now),
            self.table("query_links", links, now),
            self.table("query_departed", departed, now),
        ];
        tables.into_iter().flatten().collect::<Vec<_>>().into()
    }
}

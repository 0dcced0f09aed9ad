//! What a parent holds of the tier below (machines at a cluster proxy, clusters at a TLA,
//! the TLA at a SQL node), and where it merges their tables into its own generation.
//!
//! Each child link writes the child's latest generation here; the sealer calls
//! [`Children::merge`] once per round. A table enters the parent's generation when every
//! live child holds a copy of it ("complete"); a child late with the round contributes its
//! latest copy (its rows' publish times tell how old they are), so one slow cluster of a
//! thousand neither holds back nor removes the others' rows. A table some live child does
//! not hold at all (requested, not yet collected there) is carried from the parent's
//! previous generation, so a query never sees one cluster's rows beside another's missing
//! ones. A child silent for `drop_after` is dropped: its rows leave until it speaks again.
//! A child whose link is alive but which has not provided a wanted table for `drop_after`
//! (OSR 2.3: per-table drop) stops counting for that table only: the table is merged from
//! the children that hold it, instead of staying frozen at its last copy, until the child
//! provides it again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::generation::GenTable;
use crate::link::diff::ChildGeneration;

/// One child as the parent sees it.
#[derive(Debug, Default, Clone)]
pub struct ChildState {
    /// The address the link uses now (of the child's alternatives).
    pub address: Option<String>,
    pub connected: bool,
    pub latest: Option<Arc<ChildGeneration>>,
    pub last_frame: Option<Instant>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub frames: u64,
    /// Size of the last frame, and of the last full one: unchanged data should cost a
    /// small fraction of a full copy.
    pub last_frame_bytes: u64,
    pub last_full_frame_bytes: u64,
    /// Frames that carried every table in full (first of a connection).
    pub full_frames: u64,
    pub connects: u64,
    pub restarts: u64,
    pub last_error: Option<String>,
    /// Wanted tables the child's latest generation lacks (as seen by the merges); past
    /// `drop_after` the child no longer counts for them.
    pub missing: BTreeMap<String, Missing>,
}

/// A wanted table a child's generations lack.
#[derive(Debug, Clone, Copy)]
pub struct Missing {
    /// The first merge that found it missing.
    pub since: Instant,
    /// Past `drop_after`: the child's rows of the table are left out (logged once).
    pub dropped: bool,
}

impl ChildState {
    /// The wanted tables this child is dropped for (missing past `drop_after`).
    pub fn tables_dropped(&self, now: Instant, drop_after: Duration) -> Vec<String> {
        self.missing
            .keys()
            .filter(|t| self.dropped_for(t, now, drop_after))
            .cloned()
            .collect()
    }

    /// Whether this child is dropped for `table` (missing past `drop_after`).
    fn dropped_for(&self, table: &str, now: Instant, drop_after: Duration) -> bool {
        self.missing
            .get(table)
            .is_some_and(|m| now.saturating_duration_since(m.since) > drop_after)
    }
}

/// The result of merging the children for one round.
#[derive(Debug, Default)]
pub struct Merged {
    /// Tables every live child delivered for the round: their parts together.
    pub complete: BTreeMap<String, GenTable>,
    /// Wanted tables some live child does not hold (not collected there yet).
    pub incomplete: BTreeSet<String>,
    /// Live children that have not delivered the round yet: their latest copies count.
    pub late: Vec<String>,
    /// Children that count (heard from within `drop_after`).
    pub live: usize,
    /// Their names (a TLA's children merge the same clusters).
    pub live_names: Vec<String>,
    /// Children silent too long (or never heard).
    pub dropped: Vec<String>,
    /// (child, table): live children left out of a table they have not provided for
    /// `drop_after`.
    pub tables_dropped: Vec<(String, String)>,
    /// Machines below, as the live children report them.
    pub machines: u64,
    /// Clusters below, as the live children report them.
    pub clusters: u64,
    /// Problems found while merging (schema disagreements), by child.
    pub errors: Vec<(String, String)>,
    /// When every live child has delivered the round: the oldest of their generations'
    /// seal times (a SQL node serves its TLA's generation as of then).
    pub delivered_sealed_at: Option<std::time::SystemTime>,
    /// The oldest round among the live children's latest generations (a SQL node's one
    /// child: the TLA round it serves).
    pub delivered_round: Option<u64>,
}

pub struct Children {
    slots: Mutex<BTreeMap<String, ChildState>>,
    /// Configured children outside the node's aggregator-set span (`Children::park`): not
    /// dialed, not merged, not counted. Lock order: `slots` first.
    parked: Mutex<BTreeMap<String, ChildState>>,
    /// "All N children connected" was logged and no link has gone down since.
    all_up_logged: std::sync::atomic::AtomicBool,
    drop_after: Duration,
    /// Counts generations delivered by any child: a SQL node seals on each.
    deliveries: tokio::sync::watch::Sender<u64>,
    /// The child [`Children::all_delivered`] last found lacking, where its next scan
    /// starts. Lock order: `slots` first.
    lacking: Mutex<Option<String>>,
}

impl Children {
    pub fn new(names: impl IntoIterator<Item = String>, drop_after: Duration) -> Arc<Self> {
        Arc::new(Children {
            slots: Mutex::new(
                names
                    .into_iter()
                    .map(|n| (n, ChildState::default()))
                    .collect(),
            ),
            parked: Mutex::default(),
            all_up_logged: std::sync::atomic::AtomicBool::new(false),
            drop_after,
            deliveries: tokio::sync::watch::Sender::new(0),
            lacking: Mutex::default(),
        })
    }

    /// Per-link events are logged at INFO only for a few children: a proxy of a thousand
    /// machines would bury everything else at start. Above this, DEBUG and one summary.
    const LINK_EVENTS_AT_INFO: usize = 16;

    /// Records a link up (after the child's hello) and logs it: per child at INFO for a
    /// few children, at DEBUG for many; "all N children connected" at INFO whenever every
    /// child is connected again.
    pub fn link_up(&self, child: &str, address: &str, node: &str, role: &str) {
        let (connected, total) = {
            let mut slots = self.lock();
            Self::slot(&mut slots, &self.parked, child, |s| {
                s.connected = true;
                s.connects += 1;
                s.last_error = None;
            });
            (slots.values().filter(|s| s.connected).count(), slots.len())
        };
        if total <= Self::LINK_EVENTS_AT_INFO {
            tracing::info!(child, address, node, role, "link up");
        } else {
            tracing::debug!(child, address, node, role, "link up");
        }
        use std::sync::atomic::Ordering::Relaxed;
        if connected == total && !self.all_up_logged.swap(true, Relaxed) {
            tracing::info!(children = total, "all {total} children connected");
        }
    }

    /// Records a link down; the next time all are up is logged again.
    pub fn link_down(&self, child: &str) -> bool {
        let mut was = false;
        self.update(child, |s| {
            was = s.connected;
            s.connected = false;
        });
        if was {
            self.all_up_logged
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        was
    }

    /// Whether per-link events of this node go to INFO (see [`Self::link_up`]).
    pub fn link_events_at_info(&self) -> bool {
        self.lock().len() <= Self::LINK_EVENTS_AT_INFO
    }

    /// Stores a generation a child delivered, with the link's bookkeeping, and tells
    /// whoever watches [`Children::deliveries`].
    pub fn deliver(
        &self,
        child: &str,
        generation: Arc<ChildGeneration>,
        bookkeeping: impl FnOnce(&mut ChildState),
    ) {
        self.update(child, |s| {
            s.latest = Some(generation);
            bookkeeping(s);
        });
        self.deliveries.send_modify(|n| *n += 1);
    }

    /// Changes each time a child delivers a generation.
    pub fn deliveries(&self) -> tokio::sync::watch::Receiver<u64> {
        self.deliveries.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ChildState>> {
        // Every update below leaves a slot whole: a poisoned lock is still consistent.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `f` to a child's state (link actors report through this).
    pub fn update(&self, child: &str, f: impl FnOnce(&mut ChildState)) {
        Self::slot(&mut self.lock(), &self.parked, child, f);
    }

    /// Applies `f` to a child's slot: a parked child's stays parked (its link may still be
    /// winding down).
    fn slot(
        slots: &mut BTreeMap<String, ChildState>,
        parked: &Mutex<BTreeMap<String, ChildState>>,
        child: &str,
        f: impl FnOnce(&mut ChildState),
    ) {
        if !slots.contains_key(child) {
            let mut parked = parked.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = parked.get_mut(child) {
                return f(s);
            }
        }
        f(slots.entry(child.to_string()).or_default());
    }

    /// Takes a child out (its aggregator set's span no longer includes it): its rows leave
    /// at the next merge, and it no longer counts as configured, live or dropped. Its
    /// traffic counters are kept for when it returns. True if it was in.
    pub fn park(&self, child: &str) -> bool {
        let mut slots = self.lock();
        let Some(mut s) = slots.remove(child) else {
            return false;
        };
        s.latest = None;
        s.last_frame = None;
        s.missing.clear();
        self.parked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(child.to_string(), s);
        true
    }

    /// Brings a parked child back (it counts again from its first generation). True if it
    /// was parked.
    pub fn unpark(&self, child: &str) -> bool {
        let mut slots = self.lock();
        let s = self
            .parked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(child);
        match s {
            Some(s) => {
                slots.insert(child.to_string(), s);
                self.all_up_logged
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    pub fn snapshot(&self) -> BTreeMap<String, ChildState> {
        self.lock().clone()
    }

    pub fn drop_after(&self) -> Duration {
        self.drop_after
    }

    /// The children heard from within `drop_after` with their latest generations, and the
    /// names of the others.
    fn split_live<'a>(
        &self,
        slots: &'a BTreeMap<String, ChildState>,
        now: Instant,
    ) -> (Vec<(&'a String, &'a ChildGeneration)>, Vec<String>) {
        let mut live = Vec::new();
        let mut dropped = Vec::new();
        for (name, s) in slots.iter() {
            let heard = s
                .last_frame
                .is_some_and(|t| now.saturating_duration_since(t) <= self.drop_after);
            match (&s.latest, heard) {
                (Some(g), true) => live.push((name, g.as_ref())),
                _ => dropped.push(name.clone()),
            }
        }
        (live, dropped)
    }

    /// Whether [`Children::merge`] for `round` would find no child late and no wanted
    /// table missing: what a seal waits for, checked without merging (a merge of a 70k
    /// fleet moves every part, too much to redo while waiting).
    pub fn ready(&self, round: u64, wanted: &BTreeSet<String>, now: Instant) -> bool {
        let slots = self.lock();
        let (live, _) = self.split_live(&slots, now);
        if live.is_empty() {
            return wanted.is_empty();
        }
        // Polled every few milliseconds while a seal waits: no allocation per child.
        live.iter().all(|(name, g)| {
            let state = slots.get(*name);
            g.round >= round
                && wanted.iter().all(|t| {
                    g.tables.contains_key(t)
                        || state.is_some_and(|s| s.dropped_for(t, now, self.drop_after))
                })
        })
    }

    /// Children connected that have not delivered a generation yet: their first copy is
    /// still on its way (a cold parent's seal may wait for it).
    pub fn first_copies_pending(&self) -> usize {
        self.lock()
            .values()
            .filter(|s| s.connected && s.latest.is_none())
            .count()
    }

    /// Whether every configured child (not only the live ones) has delivered `round` or
    /// later, is heard from, and holds every wanted table (or is dropped for it): what lets
    /// a parent seal before its offset (`[link] seal_when_delivered`). A child not
    /// connected yet or silent keeps this false, and the offset stays the deadline.
    pub fn all_delivered(&self, round: u64, wanted: &BTreeSet<String>, now: Instant) -> bool {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let slots = self.lock();
        if slots.is_empty() {
            return false;
        }
        let done = |s: &ChildState| {
            let heard = s
                .last_frame
                .is_some_and(|t| now.saturating_duration_since(t) <= self.drop_after);
            heard
                && s.latest.as_ref().is_some_and(|g| {
                    g.round >= round
                        && wanted.iter().all(|t| {
                            g.tables.contains_key(t) || s.dropped_for(t, now, self.drop_after)
                        })
                })
        };
        // Called on every delivery: the scan starts at the child found lacking last time
        // (in name order, wrapping round), so while it lacks the answer is one look, and
        // children delivering about in order cost a step each. A TLA of 1,000 clusters
        // otherwise scans up to a million slots per round under the lock its links
        // deliver through (8% of its CPU at a cold start, BENCHMARKS.md).
        let mut lacking = self.lacking.lock().unwrap_or_else(|p| p.into_inner());
        let from = lacking.take().unwrap_or_default();
        let first = slots
            .range::<str, _>((Included(from.as_str()), Unbounded))
            .chain(slots.range::<str, _>((Unbounded, Excluded(from.as_str()))))
            .find(|(_, s)| !done(s));
        *lacking = first.map(|(name, _)| name.clone());
        lacking.is_none()
    }

    /// Records, for every child heard from, since when it lacks each wanted table
    /// (forgetting tables it holds again or no longer wanted); returns the (child, table)
    /// pairs past `drop_after`, logging each once.
    fn track_missing(
        &self,
        slots: &mut BTreeMap<String, ChildState>,
        wanted: &BTreeSet<String>,
        now: Instant,
    ) -> BTreeSet<(String, String)> {
        let mut dropped = BTreeSet::new();
        for (name, s) in slots.iter_mut() {
            let Some(g) = &s.latest else { continue };
            let held = |t: &String| g.tables.contains_key(t);
            s.missing.retain(|t, m| {
                let keep = wanted.contains(t) && !held(t);
                if !keep && m.dropped {
                    tracing::info!(child = %name, table = %t, "child provides the table again (or it is no longer wanted); it counts again");
                }
                keep
            });
            for t in wanted.iter().filter(|t| !held(t)) {
                let m = s.missing.entry(t.clone()).or_insert(Missing {
                    since: now,
                    dropped: false,
                });
                if now.saturating_duration_since(m.since) > self.drop_after {
                    if !m.dropped {
                        m.dropped = true;
                        tracing::warn!(child = %name, table = %t, drop_after = ?self.drop_after, "child has not provided a wanted table for drop_after; its rows of the table are dropped while its other tables flow");
                    }
                    dropped.insert((name.clone(), t.clone()));
                }
            }
        }
        dropped
    }

    /// Merges the children's latest generations for `round`, for the `wanted` tables.
    pub fn merge(&self, round: u64, wanted: &BTreeSet<String>, now: Instant) -> Merged {
        let mut slots = self.lock();
        let mut out = Merged::default();
        let tables_dropped = self.track_missing(&mut slots, wanted, now);
        let (live, dropped) = self.split_live(&slots, now);
        out.dropped = dropped;
        out.live = live.len();
        out.live_names = live.iter().map(|(n, _)| (*n).clone()).collect();
        for (_, g) in &live {
            out.machines += g.machines;
            out.clusters += g.clusters;
        }
        out.late = live
            .iter()
            .filter(|(_, g)| g.round < round)
            .map(|(name, _)| (*name).clone())
            .collect();
        out.delivered_round = live.iter().map(|(_, g)| g.round).min();
        if out.late.is_empty() {
            out.delivered_sealed_at = live.iter().map(|(_, g)| g.sealed_at).min();
        }
        if live.is_empty() {
            // Nothing below counts: a wanted table has no rows anywhere, but it is not
            // complete either (nobody answered for it).
            out.incomplete = wanted.clone();
            return out;
        }
        let counted = |name: &String, table: &String| {
            !tables_dropped.contains(&(name.clone(), table.clone()))
        };
        out.tables_dropped = tables_dropped
            .iter()
            .filter(|(name, _)| live.iter().any(|(n, _)| *n == name))
            .cloned()
            .collect();
        for table in wanted {
            // Complete when every live child still counted for the table holds it, and
            // at least one does (a table nobody provides stays carried).
            let holders = live
                .iter()
                .filter(|(_, g)| g.tables.contains_key(table))
                .count();
            let held = live
                .iter()
                .all(|(name, g)| g.tables.contains_key(table) || !counted(name, table));
            if !held || holders == 0 {
                out.incomplete.insert(table.clone());
                continue;
            }
            let mut merged: Option<GenTable> = None;
            for (name, g) in &live {
                let Some(t) = g.tables.get(table) else {
                    continue;
                };
                match &mut merged {
                    None => merged = Some(t.clone()),
                    Some(m) if m.schema == t.schema => m.parts.extend(t.parts.iter().cloned()),
                    Some(_) => out.errors.push((
                        (*name).clone(),
                        format!("table '{table}' has a schema unlike the other children's; its rows are left out"),
                    )),
                }
            }
            if let Some(m) = merged {
                out.complete.insert(table.clone(), m);
            }
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;

    use super::*;
    use crate::generation::{Part, SourceStamp};

    /// A child's generation of `round`: one row of `machine` in each of `tables`.
    pub(crate) fn gen(round: u64, machine: &str, tables: &[&str]) -> ChildGeneration {
        let schema = Arc::new(Schema::new(vec![
            Field::new("machine_ip", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![machine])),
                Arc::new(Int64Array::from(vec![round as i64])),
            ],
        )
        .expect("batch");
        ChildGeneration {
            id: round,
            round,
            sealed_at: UNIX_EPOCH,
            tables: tables
                .iter()
                .map(|t| {
                    (
                        t.to_string(),
                        GenTable {
                            schema: schema.clone(),
                            parts: vec![Arc::new(Part::new(
                                machine.into(),
                                batch.clone(),
                                vec![SourceStamp {
                                    source: machine.into(),
                                    published_at: SystemTime::now(),
                                }],
                            ))],
                        },
                    )
                })
                .collect(),
            errors: Vec::new(),
            machines: 1,
            clusters: 1,
        }
    }

    fn wanted(t: &[&str]) -> BTreeSet<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_child_late_with_the_round_contributes_its_latest_copy() {
        let now = Instant::now();
        let c = Children::new(["a".into(), "b".into()], Duration::from_secs(10));
        c.update("a", |s| {
            s.latest = Some(Arc::new(gen(5, "a", &["sys", "load"])));
            s.last_frame = Some(now);
        });
        c.update("b", |s| {
            s.latest = Some(Arc::new(gen(4, "b", &["sys", "load"])));
            s.last_frame = Some(now);
        });
        let m = c.merge(5, &wanted(&["sys"]), now);
        assert_eq!(m.late, vec!["b".to_string()], "b has not sent round 5");
        assert_eq!(m.complete["sys"].rows(), 2, "b's round 4 stands in");
        assert!(m.incomplete.is_empty());
        assert!(m.delivered_sealed_at.is_none());

        c.update("b", |s| s.latest = Some(Arc::new(gen(5, "b", &["sys"]))));
        let m = c.merge(5, &wanted(&["sys", "load"]), now);
        assert_eq!(m.complete["sys"].rows(), 2);
        assert_eq!(m.complete["sys"].parts.len(), 2);
        assert_eq!(m.incomplete, wanted(&["load"]), "b lacks load");
        assert!(m.late.is_empty());
        assert_eq!((m.live, m.machines), (2, 2));
    }

    #[test]
    fn ready_when_no_child_is_late_and_every_child_holds_the_tables() {
        let now = Instant::now();
        let c = Children::new(["a".into(), "b".into()], Duration::from_secs(10));
        assert!(!c.ready(5, &wanted(&["sys"]), now), "nobody heard yet");
        for (child, round) in [("a", 5), ("b", 4)] {
            c.update(child, |s| {
                s.latest = Some(Arc::new(gen(round, child, &["sys"])));
                s.last_frame = Some(now);
            });
        }
        assert!(!c.ready(5, &wanted(&["sys"]), now), "b is late");
        c.update("b", |s| s.latest = Some(Arc::new(gen(5, "b", &["sys"]))));
        assert!(c.ready(5, &wanted(&["sys"]), now));
        assert!(
            !c.ready(5, &wanted(&["sys", "load"]), now),
            "nobody holds load"
        );
    }

    #[test]
    fn a_silent_child_is_dropped_and_no_longer_awaited() {
        let now = Instant::now();
        let c = Children::new(["a".into(), "b".into()], Duration::from_secs(10));
        c.update("a", |s| {
            s.latest = Some(Arc::new(gen(7, "a", &["sys"])));
            s.last_frame = Some(now);
        });
        c.update("b", |s| {
            s.latest = Some(Arc::new(gen(3, "b", &["sys"])));
            s.last_frame = Some(now - Duration::from_secs(11));
        });
        let m = c.merge(7, &wanted(&["sys"]), now);
        assert_eq!(m.dropped, vec!["b".to_string()]);
        assert_eq!(m.complete["sys"].rows(), 1, "only a's rows");
    }

    #[test]
    fn a_live_child_without_a_table_past_drop_after_is_dropped_for_that_table_only() {
        let t0 = Instant::now();
        let c = Children::new(["a".into(), "b".into()], Duration::from_secs(10));
        let deliver = |round: u64, b_tables: &[&str], at: Instant| {
            c.update("a", |s| {
                s.latest = Some(Arc::new(gen(round, "a", &["sys", "load"])));
                s.last_frame = Some(at);
            });
            c.update("b", |s| {
                s.latest = Some(Arc::new(gen(round, "b", b_tables)));
                s.last_frame = Some(at);
            });
        };
        let both = wanted(&["sys", "load"]);
        deliver(1, &["sys"], t0);
        let m = c.merge(1, &both, t0);
        assert_eq!(
            m.incomplete,
            wanted(&["load"]),
            "within drop_after: carried"
        );
        assert!(m.tables_dropped.is_empty());
        assert!(!c.ready(1, &both, t0), "b's load is awaited");

        // 11 s on, b's link alive and sys flowing, still no load from b.
        let t1 = t0 + Duration::from_secs(11);
        deliver(2, &["sys"], t1);
        assert!(c.ready(2, &both, t1), "b's load is no longer awaited");
        let m = c.merge(2, &both, t1);
        assert!(m.incomplete.is_empty(), "{:?}", m.incomplete);
        assert_eq!(m.complete["load"].rows(), 1, "a's rows only");
        assert_eq!(m.complete["sys"].rows(), 2, "b counts for sys");
        assert_eq!(
            m.tables_dropped,
            vec![("b".to_string(), "load".to_string())]
        );
        assert_eq!(
            c.snapshot()["b"].tables_dropped(t1, c.drop_after()),
            ["load"]
        );

        // b provides load again: it counts again at once.
        deliver(3, &["sys", "load"], t1);
        let m = c.merge(3, &both, t1);
        assert_eq!(m.complete["load"].rows(), 2);
        assert!(m.tables_dropped.is_empty());
        assert!(c.snapshot()["b"].missing.is_empty());
    }

    #[test]
    fn all_delivered_checks_every_child_wherever_its_scan_starts() {
        let now = Instant::now();
        let names: Vec<String> = (0..6).map(|i| format!("c{i}")).collect();
        let c = Children::new(names.clone(), Duration::from_secs(10));
        let sys = wanted(&["sys"]);
        let deliver = |child: &str, round: u64| {
            c.update(child, |s| {
                s.latest = Some(Arc::new(gen(round, child, &["sys"])));
                s.last_frame = Some(now);
            })
        };
        assert!(!c.all_delivered(1, &sys, now), "nobody heard yet");
        // Out of name order, each delivery moves where the next scan starts.
        for (i, child) in ["c3", "c0", "c5", "c1", "c4"].iter().enumerate() {
            deliver(child, 1);
            assert!(!c.all_delivered(1, &sys, now), "after {} of 6", i + 1);
        }
        deliver("c2", 1);
        assert!(c.all_delivered(1, &sys, now), "all six delivered round 1");
        // The next round in name order: each scan starts at the child it waits for. Then
        // c1, before where the scan starts (c3), loses its wanted table: the scan wraps.
        for child in ["c0", "c1", "c2"] {
            deliver(child, 2);
            assert!(!c.all_delivered(2, &sys, now), "c3 still at round 1");
        }
        c.update("c1", |s| s.latest = Some(Arc::new(gen(2, "c1", &["load"]))));
        for child in ["c3", "c4", "c5"] {
            deliver(child, 2);
            assert!(!c.all_delivered(2, &sys, now), "c1 lacks sys");
        }
        deliver("c1", 2);
        assert!(c.all_delivered(2, &sys, now));
    }

    #[test]
    fn nothing_live_means_nothing_complete() {
        let c = Children::new(["a".into()], Duration::from_secs(10));
        let m = c.merge(1, &wanted(&["sys"]), Instant::now());
        assert!(m.complete.is_empty());
        assert_eq!(m.incomplete, wanted(&["sys"]));
    }
}

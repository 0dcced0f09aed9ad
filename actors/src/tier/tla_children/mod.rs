//! TLA children (OSR 2010 3.5, "deferring"): a TLA told (`[tla_children]`, reloaded live)
//! to defer some tables hands each cluster's copies of them, still encoded as they
//! arrived, to a TLA child; the child decodes them, merges all clusters and sends back the
//! merged table, which the TLA puts in the same generation as its own tables.
//!
//! This module owns the TLA's side of it: the config, the split of the deferred tables
//! between the children ([`split`]), and [`Deferral`], the shared state cluster links and
//! the sealer read: who merges which table now, the children's links, and the merges
//! outstanding. [`link`] is the TLA's link to one child; [`serve`] is the child's side.
//!
//! Cluster links send diffs against what they sent before, so whoever merges a table must
//! hold every cluster's copy of it. A cluster link fixes at its start which tables it
//! forwards to which child (an [`Assignment`]); when a child goes down or comes back the
//! assignment changes, and every cluster link is dialled again, so the new owner (the TLA
//! itself, or the child) starts from full copies. The generation being sealed when a child
//! fails carries its tables from the previous generation (complete, one round old).

pub mod link;
pub mod serve;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};

use super::names::check_entry;
use crate::error::{ConfigError, ConfigResult};
use crate::generation::GenTable;
use crate::link::diff::ChildGeneration;
use crate::link::wire::{GenerationFrame, TableFrame, ToChild};
use crate::metrics::Metrics;

/// `[tla_children]` of a TLA's config: which tables it defers, and to whom.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlaChildrenConfig {
    /// The children's link addresses (`HOST:PORT`, their `[link] listen`).
    pub children: Vec<String>,
    /// The tables deferred: split between the children by table (sorted by name, dealt in
    /// turn), each merged by one child.
    pub tables: Vec<String>,
    /// How long a seal waits for a child's merged tables; past it the child counts as
    /// failed for the round.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Messages (one per cluster generation) queued for a child that reads too slowly; past
    /// it cluster links wait.
    pub queue: usize,
}

impl Default for TlaChildrenConfig {
    fn default() -> Self {
        TlaChildrenConfig {
            children: Vec::new(),
            tables: Vec::new(),
            timeout: Duration::from_secs(5),
            queue: 4096,
        }
    }
}

impl TlaChildrenConfig {
    pub fn validate(&self) -> ConfigResult<()> {
        let bad = |message: String| ConfigError::Invalid {
            what: "[tla_children]".into(),
            message,
        };
        for c in &self.children {
            check_entry("[tla_children] children", c)?;
        }
        if !self.children.is_empty() && self.tables.is_empty() {
            return Err(bad(
                "children are listed but no tables are deferred to them".into(),
            ));
        }
        if self.timeout.is_zero() || self.queue == 0 {
            return Err(bad("timeout and queue must be above zero".into()));
        }
        let distinct: BTreeSet<&String> = self.children.iter().collect();
        if distinct.len() != self.children.len() {
            return Err(bad("a child is listed twice".into()));
        }
        Ok(())
    }
}

/// Deals the deferred tables (sorted, without repeats) to `children` children in turn:
/// child `i` merges tables `i`, `i + n`, ... Stable, so a child keeps its share across
/// restarts of anyone.
pub fn split(tables: &[String], children: usize) -> Vec<BTreeSet<String>> {
    let mut out = vec![BTreeSet::new(); children];
    if children == 0 {
        return out;
    }
    let sorted: BTreeSet<&String> = tables.iter().collect();
    for (i, t) in sorted.into_iter().enumerate() {
        out[i % children].insert(t.clone());
    }
    out
}

/// One child as the TLA sees it (a `query_links` row).
#[derive(Debug, Clone, Default)]
pub struct ChildView {
    pub address: String,
    /// Its name, from its hello.
    pub node: Option<String>,
    pub up: bool,
    /// The tables it is given (merged by the TLA while it is down).
    pub share: BTreeSet<String>,
    pub frames_in: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub last_frame_bytes: u64,
    pub connects: u64,
    /// Times it failed (link lost, merge late or refused) and the TLA took its share.
    pub failures: u64,
    pub last_error: Option<String>,
    pub down_since: Option<SystemTime>,
}

struct Slot {
    view: ChildView,
    outbox: Option<mpsc::Sender<ToChild>>,
    /// Ends the link's session (a child late with a merge is dropped).
    kill: Option<oneshot::Sender<String>>,
    pending: HashMap<u64, oneshot::Sender<ChildGeneration>>,
    /// Seals in a row it answered late (its tables carried each time).
    late: u32,
}

/// Seals in a row a child may answer late (its tables carried from the previous
/// generation each time) before the TLA takes its share: taking it costs every cluster a
/// full copy, and a child that is late once (its start, a full copy of its own) would
/// otherwise be dropped in a loop.
pub const LATE_IN_A_ROW: u32 = 3;

/// Which child merges each deferred table, as fixed when a cluster link started.
#[derive(Clone, Default)]
pub struct Assignment {
    pub epoch: u64,
    owners: BTreeMap<String, (String, mpsc::Sender<ToChild>)>,
}

impl Assignment {
    /// The tables children merge (the TLA does not decode them).
    pub fn deferred(&self) -> BTreeSet<String> {
        self.owners.keys().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// Takes the deferred tables out of a cluster's `frame` and sends each child its
    /// share, still encoded (a frame listing only its tables, sent even when it holds
    /// none, so the child sees the cluster's round and tables leaving). A send to a child
    /// that went down is lost: the assignment has changed and this link is dialled again.
    pub async fn forward(&self, cluster: &str, session: u64, frame: &mut GenerationFrame) {
        if self.owners.is_empty() {
            return;
        }
        let mut per_child: BTreeMap<&str, (Vec<TableFrame>, &mpsc::Sender<ToChild>)> = self
            .owners
            .values()
            .map(|(addr, tx)| (addr.as_str(), (Vec::new(), tx)))
            .collect();
        let tables = std::mem::take(&mut frame.tables);
        for t in tables {
            match self.owners.get(&t.name) {
                Some((addr, _)) => {
                    if let Some((v, _)) = per_child.get_mut(addr.as_str()) {
                        v.push(t);
                    }
                }
                None => frame.tables.push(t),
            }
        }
        for (_, (tables, tx)) in per_child {
            let part = GenerationFrame {
                id: frame.id,
                round: frame.round,
                sealed_at_ms: frame.sealed_at_ms,
                full: frame.full,
                tables,
                errors: Vec::new(),
                // Every share takes the link's source times: its parts name those sources.
                // Every child must get every frame of the session, even one with no table
                // for it: the times of known sources travel by position in a list each
                // child's decoder keeps in step (`link::diff::times`).
                stamps: frame.stamps.clone(),
                machines: frame.machines,
                clusters: frame.clusters,
            };
            let msg = ToChild::Defer {
                cluster: cluster.to_string(),
                session,
                frame: part,
            };
            match tx.try_send(msg) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                Err(mpsc::error::TrySendError::Full(msg)) => {
                    queue_full_logged();
                    let _ = tx.send(msg).await;
                }
            }
        }
    }
}

/// A child reads more slowly than the clusters send: logged at most every 10 s (the
/// cluster links wait for room meanwhile).
fn queue_full_logged() {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST.load(Ordering::Relaxed);
    if now >= last + 10
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            "a TLA child's queue is full ([tla_children] queue): cluster links wait for it to read"
        );
    }
}

/// What the children merged for one seal.
#[derive(Debug, Default)]
pub struct DeferredMerge {
    /// Tables a child merged: the clusters' parts together.
    pub complete: BTreeMap<String, GenTable>,
    /// Deferred tables without a merge this round (a child failed, or not every cluster's
    /// copy reached it yet): carried from the previous generation.
    pub incomplete: BTreeSet<String>,
}

/// The TLA's deferral state, shared by its cluster links, its child links and its sealer.
pub struct Deferral {
    state: Mutex<State>,
    /// Bumped whenever who merges what changes: cluster links end and are dialled again.
    epoch: watch::Sender<u64>,
    sessions: AtomicU64,
    /// The TLA's own name ("merged by" when it does a child's share).
    pub node: String,
    metrics: Arc<Metrics>,
}

struct State {
    config: TlaChildrenConfig,
    slots: BTreeMap<String, Slot>,
}

impl Deferral {
    pub fn new(config: TlaChildrenConfig, node: String, metrics: Arc<Metrics>) -> Arc<Self> {
        let d = Arc::new(Deferral {
            state: Mutex::new(State {
                config: TlaChildrenConfig::default(),
                slots: BTreeMap::new(),
            }),
            epoch: watch::Sender::new(0),
            sessions: AtomicU64::new(0),
            node,
            metrics,
        });
        d.reconfigure(config);
        d
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update leaves the state whole: a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Applies a (new) `[tla_children]`; returns the addresses that need a link started.
    /// Links of addresses no longer listed stop themselves ([`Deferral::listed`]).
    pub fn reconfigure(&self, config: TlaChildrenConfig) -> Vec<String> {
        let mut st = self.lock();
        if st.config == config && !st.slots.is_empty() {
            return Vec::new();
        }
        let shares = split(&config.tables, config.children.len());
        let mut added = Vec::new();
        st.slots.retain(|a, _| config.children.contains(a));
        for (address, share) in config.children.iter().zip(shares) {
            let slot = st.slots.entry(address.clone()).or_insert_with(|| {
                added.push(address.clone());
                Slot {
                    view: ChildView {
                        address: address.clone(),
                        ..ChildView::default()
                    },
                    outbox: None,
                    kill: None,
                    pending: HashMap::new(),
                    late: 0,
                }
            });
            slot.view.share = share;
        }
        let changed = st.config != config;
        st.config = config;
        drop(st);
        if changed {
            tracing::info!("[tla_children] applied: cluster links restart to hand the deferred tables to their new owners");
            self.bump();
        }
        added
    }

    pub fn config(&self) -> TlaChildrenConfig {
        self.lock().config.clone()
    }

    /// Whether `address` is still a configured child (its link stops otherwise).
    pub fn listed(&self, address: &str) -> bool {
        self.lock().slots.contains_key(address)
    }

    /// Changes whenever who merges what changes.
    pub fn epoch(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    /// A number for a cluster link's session (a child starts a fresh decoder for each).
    pub fn next_session(&self) -> u64 {
        self.sessions.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Who merges what now: each child that is up, its share; the rest is the TLA's.
    pub fn assignment(&self) -> Assignment {
        let st = self.lock();
        let mut owners = BTreeMap::new();
        for (address, slot) in &st.slots {
            let (true, Some(tx)) = (slot.view.up, &slot.outbox) else {
                continue;
            };
            for t in &slot.view.share {
                owners.insert(t.clone(), (address.clone(), tx.clone()));
            }
        }
        Assignment {
            epoch: *self.epoch.borrow(),
            owners,
        }
    }

    pub fn views(&self) -> Vec<ChildView> {
        self.lock().slots.values().map(|s| s.view.clone()).collect()
    }

    /// A child's link said hello: it takes its share back (cluster links redial, so it
    /// starts from full copies).
    pub fn link_up(
        &self,
        address: &str,
        node: String,
        outbox: mpsc::Sender<ToChild>,
        kill: oneshot::Sender<String>,
    ) {
        let share = {
            let mut st = self.lock();
            let Some(slot) = st.slots.get_mut(address) else {
                return;
            };
            slot.view.up = true;
            slot.view.node = Some(node.clone());
            slot.view.connects += 1;
            slot.view.down_since = None;
            slot.outbox = Some(outbox);
            slot.kill = Some(kill);
            slot.late = 0;
            slot.view.share.clone()
        };
        tracing::info!(child = address, node, tables = ?share, "TLA child up: it merges its tables from the clusters' next full copies");
        self.bump();
    }

    /// A child's link failed, or a merge of it was late or refused: the TLA merges its
    /// share itself from the clusters' next full copies. Logged once per failure.
    pub fn link_down(&self, address: &str, reason: &str) {
        let (share, kill) = {
            let mut st = self.lock();
            let Some(slot) = st.slots.get_mut(address) else {
                return;
            };
            slot.view.last_error = Some(reason.to_string());
            if !slot.view.up {
                return;
            }
            slot.view.up = false;
            slot.view.failures += 1;
            slot.view.down_since = Some(SystemTime::now());
            slot.outbox = None;
            slot.pending.clear();
            (slot.view.share.clone(), slot.kill.take())
        };
        if let Some(k) = kill {
            let _ = k.send(reason.to_string());
        }
        self.metrics
            .tla_child_failures
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(child = address, reason, tables = ?share, tla = %self.node, "TLA child down: the TLA merges its tables itself (clusters resend full copies); it takes them back when it returns");
        self.bump();
    }

    /// Bookkeeping of a child's frame.
    pub fn record(&self, address: &str, f: impl FnOnce(&mut ChildView)) {
        if let Some(slot) = self.lock().slots.get_mut(address) {
            f(&mut slot.view);
        }
    }

    /// A child's merged tables for seal `id`.
    pub fn deliver(&self, address: &str, generation: ChildGeneration) {
        let tx = self
            .lock()
            .slots
            .get_mut(address)
            .and_then(|s| s.pending.remove(&generation.id));
        if let Some(tx) = tx {
            let _ = tx.send(generation);
        }
    }

    fn timeout(&self) -> Duration {
        self.lock().config.timeout
    }

    /// Asks each child of `assignment` to merge its tables of `wanted` from `clusters` (the
    /// clusters that count this round) and waits for the answers up to `[tla_children]
    /// timeout`. A child that does not answer in time, or whose link is gone, is marked
    /// down and its tables are returned incomplete (carried from the previous generation).
    pub async fn merge(
        &self,
        assignment: &Assignment,
        id: u64,
        round: u64,
        wanted: &BTreeSet<String>,
        clusters: &[String],
    ) -> DeferredMerge {
        let mut out = DeferredMerge::default();
        let mut shares: BTreeMap<String, (BTreeSet<String>, mpsc::Sender<ToChild>)> =
            BTreeMap::new();
        for (table, (address, tx)) in &assignment.owners {
            if wanted.contains(table) {
                shares
                    .entry(address.clone())
                    .or_insert_with(|| (BTreeSet::new(), tx.clone()))
                    .0
                    .insert(table.clone());
            }
        }
        if shares.is_empty() {
            return out;
        }
        let timeout = self.timeout();
        let asks = shares.into_iter().map(|(address, (tables, tx))| {
            let (done, answer) = oneshot::channel();
            if let Some(slot) = self.lock().slots.get_mut(&address) {
                slot.pending.insert(id, done);
            }
            let seal = ToChild::Seal {
                id,
                round,
                tables: tables.iter().cloned().collect(),
                clusters: clusters.to_vec(),
            };
            async move {
                let result = tokio::time::timeout(timeout, async {
                    tx.send(seal)
                        .await
                        .map_err(|_| Err("its link is gone".to_string()))?;
                    answer
                        .await
                        .map_err(|_| Err("its link ended before it answered".to_string()))
                })
                .await
                .unwrap_or_else(|_| {
                    Err(Ok(format!(
                        "no merged tables within {timeout:?} ([tla_children] timeout)"
                    )))
                });
                (address, tables, result)
            }
        });
        for (address, tables, result) in futures::future::join_all(asks).await {
            match result {
                Ok(g) => {
                    if let Some(slot) = self.lock().slots.get_mut(&address) {
                        slot.late = 0;
                    }
                    for t in tables {
                        match g.tables.get(&t) {
                            Some(merged) => {
                                out.complete.insert(t, merged.clone());
                            }
                            None => {
                                out.incomplete.insert(t);
                            }
                        }
                    }
                }
                // Late: its tables are carried this round; late too often, the TLA
                // takes them (the answer, when it comes, is still applied to the link).
                Err(Ok(reason)) => {
                    let late = {
                        let mut st = self.lock();
                        st.slots.get_mut(&address).map_or(LATE_IN_A_ROW, |s| {
                            s.pending.remove(&id);
                            s.late += 1;
                            s.view.last_error = Some(reason.clone());
                            s.late
                        })
                    };
                    if late >= LATE_IN_A_ROW {
                        self.link_down(&address, &format!("{reason}, {late} seals in a row"));
                    } else {
                        tracing::warn!(child = %address, reason, late, round, "TLA child late: its tables are carried from the previous generation this round");
                    }
                    out.incomplete.extend(tables);
                }
                Err(Err(reason)) => {
                    self.link_down(&address, &reason);
                    out.incomplete.extend(tables);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;

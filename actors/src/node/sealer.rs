//! The generation actor: at each seal time it collects every local publisher's rows and
//! merges what the children delivered for the round (on the compute pool), seals them into
//! a generation, hands it to the snapshot keeper and offers it to parents.
//!
//! A SQL node *follows* its TLA instead: it seals as soon as the TLA delivers a
//! generation, so an answer is one TLA round old, not one TLA round plus however long
//! until the SQL node's own clock comes round. Its clock still seals when the TLA has been
//! silent for an interval, so its own tables stay fresh and `generation.age_ms` grows.
//!
//! A parent that merges children (proxy, TLA) seals *when delivered* (`[link]
//! seal_when_delivered`): as soon as every configured child has delivered the round, not
//! at its offset, which stays the deadline for a round some child is late with. Each
//! round is still sealed once: the clock's tick for a round already sealed is skipped.
//! After a start, before any seal found every child in, the first generation every
//! child has delivered (whatever its round) is sealed at once: a cold fleet answers
//! without waiting for the next round and the offset. And while cold, the clock's seal
//! waits (`[link] cold_seal_hold`, once per start) for children connected but still
//! sending their first copy: a fleet started just before the offset then gets a whole
//! first generation, not a part of it followed by the rest seconds later, each crossing
//! the next link and applied there in turn.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use actix::prelude::*;
use tokio::sync::watch;

use super::config::GenerationConfig;
use super::messages::InstallGeneration;
use super::schedule::{next_seal, round_of};
use super::serving::SnapshotKeeper;
use crate::edge::LocalPublisher;
use crate::generation::{Generation, GenerationBuilder};
use crate::metrics::Metrics;
use crate::sql::SqlPool;
use crate::table::SchemaRegistry;
use crate::tier::{Children, Merged};

/// Everything a seal reads. Shared with the pool task that does the work.
pub struct SealInputs {
    pub publishers: Mutex<Vec<Box<dyn LocalPublisher>>>,
    /// The tier below, if this node has one.
    pub children: Option<Arc<Children>>,
    /// Tables requested of this node; None collects everything local publishers offer
    /// (a standalone node, the demo's simulated fleet).
    pub wanted: Option<watch::Receiver<BTreeSet<String>>>,
    /// Local publishers declare every wanted table (empty if nobody publishes it): the
    /// table's presence tells parents "collected here".
    pub declare_wanted: Option<SchemaRegistry>,
    /// How this node counts the clusters behind its generation.
    pub clusters: ClusterCount,
    /// This node contributes rows of its own (counts as a machine).
    pub local_machine: bool,
    /// How long a seal waits for children late with the round.
    pub merge_grace: std::time::Duration,
    /// Seal on every generation a child delivers, taking its latest whatever the round
    /// (a SQL node and its one TLA).
    pub follow_children: bool,
    /// Not following: seal when every configured child has delivered the round.
    pub seal_when_delivered: bool,
    /// Not following, cold: how long the clock's seals may wait, in all, for children
    /// connected but still sending their first copy.
    pub cold_seal_hold: std::time::Duration,
    /// Sourced tables (`sourced = true` in their schema): served only whole.
    pub sourced: BTreeSet<String>,
    /// A TLA's deferral to TLA children (`[tla_children]`): tables they merge.
    pub deferral: Option<Arc<crate::tier::tla_children::Deferral>>,
}

/// Edges and proxies are one cluster; a TLA's children are clusters; a SQL node reports
/// what its TLA sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterCount {
    One,
    Children,
    FromChildren,
}

pub struct Sealer {
    config: GenerationConfig,
    inputs: Arc<SealInputs>,
    keeper: Addr<SnapshotKeeper>,
    published: watch::Sender<Option<Arc<Generation>>>,
    pool: SqlPool,
    metrics: Arc<Metrics>,
    next_id: u64,
    sealing: bool,
    /// A child delivered while a seal ran: seal again when it ends.
    pending: bool,
    /// A child delivered since the last clock tick (following: the tick has nothing new).
    delivered_since_tick: bool,
    previous: Option<Arc<Generation>>,
    /// The round of the last seal started: a round sealed when delivered is not sealed
    /// again by the clock.
    last_round: Option<u64>,
    /// A seal has found every configured child in (no child late, dropped or missing a
    /// table): from then on only a whole round is sealed early.
    complete_once: bool,
    /// What is left of `cold_seal_hold` (spent by the clock's seals while cold).
    hold_left: std::time::Duration,
    /// The clock's seal waits for first copies now (logged once per hold).
    holding: bool,
}

/// How often a held seal looks again whether the first copies are in.
const HOLD_STEP: std::time::Duration = std::time::Duration::from_millis(100);

/// What a seal's pool task hands back.
struct Sealed {
    generation: Arc<Generation>,
    took: std::time::Duration,
    critical: std::time::Duration,
    /// Every child counted had delivered the round and every wanted table.
    complete: bool,
}

/// A child delivered a generation.
struct Delivered;

impl Sealer {
    pub fn new(
        config: GenerationConfig,
        inputs: SealInputs,
        keeper: Addr<SnapshotKeeper>,
        published: watch::Sender<Option<Arc<Generation>>>,
        pool: SqlPool,
        metrics: Arc<Metrics>,
    ) -> Self {
        Sealer {
            config,
            hold_left: inputs.cold_seal_hold,
            holding: false,
            inputs: Arc::new(inputs),
            keeper,
            published,
            pool,
            metrics,
            next_id: 1,
            sealing: false,
            pending: false,
            delivered_since_tick: false,
            previous: None,
            last_round: None,
            complete_once: false,
        }
    }

    fn schedule(&self, ctx: &mut Context<Self>) {
        let now = SystemTime::now();
        let at = next_seal(now, self.config.interval, self.config.offset);
        let delay = at.duration_since(now).unwrap_or_default();
        ctx.run_later(delay, move |act, ctx| {
            let round = round_of(at, act.config.interval, act.config.offset);
            if act.inputs.follow_children && std::mem::take(&mut act.delivered_since_tick) {
                // Following: this interval's generation was sealed when the child delivered.
            } else if act.inputs.seal_when_delivered && act.last_round.is_some_and(|r| r >= round) {
                // Sealed when every child delivered: one generation per round.
            } else {
                act.seal_or_hold(ctx, at);
            }
            act.schedule(ctx);
        });
    }

    /// The clock's seal of the round at `at`, unless cold with children connected but
    /// still sending their first copy: then it waits for them (re-checked every
    /// `HOLD_STEP`) while `hold_left` lasts. A seal when delivered meanwhile ends the wait.
    fn seal_or_hold(&mut self, ctx: &mut Context<Self>, at: SystemTime) {
        let round = round_of(at, self.config.interval, self.config.offset);
        if self.holding && self.last_round.is_some_and(|r| r >= round) {
            self.holding = false;
            return tracing::debug!(round, "first copies in; sealed when delivered");
        }
        let pending = match (&self.inputs.children, self.complete_once) {
            (Some(children), false) if !self.inputs.follow_children => {
                children.first_copies_pending()
            }
            _ => 0,
        };
        if pending > 0 && !self.hold_left.is_zero() {
            if !std::mem::replace(&mut self.holding, true) {
                tracing::info!(round, children = pending, hold = ?self.hold_left, "cold: children connected are still sending their first copy; the seal waits for them");
            }
            let step = HOLD_STEP.min(self.hold_left);
            self.hold_left -= step;
            ctx.run_later(step, move |act, ctx| act.seal_or_hold(ctx, at));
            return;
        }
        if std::mem::take(&mut self.holding) {
            tracing::info!(
                round,
                children = pending,
                "cold: sealing after waiting for first copies"
            );
        }
        self.seal(ctx, at, true);
    }

    /// Not following: seals now if every configured child has delivered the round due
    /// (the one the next tick would seal), or, until a seal found every child in, any
    /// generation. Checked on each delivery (the watch coalesces a burst into one check).
    fn seal_if_delivered(&mut self, ctx: &mut Context<Self>) {
        let Some(children) = &self.inputs.children else {
            return;
        };
        if self.sealing || !self.inputs.seal_when_delivered || self.inputs.follow_children {
            return;
        }
        let now = SystemTime::now();
        let due = round_of(
            next_seal(now, self.config.interval, self.config.offset),
            self.config.interval,
            self.config.offset,
        );
        if self.last_round.is_some_and(|r| r >= due) {
            return;
        }
        let (need, at) = match self.complete_once {
            true => (due, now.max(seal_time_of(due, &self.config))),
            // Cold: whatever round the children are at; sealed as the current round.
            false => (0, now),
        };
        if !children.all_delivered(need, &own_wanted(&self.inputs), Instant::now()) {
            return;
        }
        tracing::debug!(
            round = due,
            cold = !self.complete_once,
            "every child delivered; sealing before the offset"
        );
        // One early seal per start while cold: the next needs a whole round.
        self.complete_once = true;
        self.seal(ctx, at, false);
    }

    /// `wait`: give children late with the round `merge_grace` (the clock's seals); a seal
    /// when delivered has nothing to wait for.
    fn seal(&mut self, ctx: &mut Context<Self>, at: SystemTime, wait: bool) {
        if self.sealing {
            // The previous seal still runs: skipping keeps generations whole and in order.
            self.metrics.seals_skipped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("previous generation still sealing; skipping this tick");
            return;
        }
        self.sealing = true;
        let id = self.next_id;
        self.next_id += 1;
        let round = round_of(at, self.config.interval, self.config.offset);
        self.last_round = Some(self.last_round.map_or(round, |r| r.max(round)));
        let inputs = self.inputs.clone();
        let previous = self.previous.clone();
        let work = self.pool.spawn(async move {
            collect_and_seal(id, round, &inputs, previous.as_deref(), wait).await
        });
        ctx.spawn(actix::fut::wrap_future::<_, Self>(work).map(|res, act, ctx| {
            act.sealing = false;
            match res {
                Ok(Sealed { generation, took, critical, complete }) => {
                    act.complete_once |= complete;
                    if complete {
                        // Filled: from now on freed memory goes back to the system sooner.
                        crate::heap::purge_promptly();
                    }
                    act.metrics.generations_sealed.fetch_add(1, Ordering::Relaxed);
                    act.metrics.last_seal_micros.store(took.as_micros() as u64, Ordering::Relaxed);
                    act.metrics.last_seal_critical_micros.store(critical.as_micros() as u64, Ordering::Relaxed);
                    tracing::debug!(id = generation.id, round = generation.round, tables = generation.tables.len(), ?took, "generation sealed");
                    act.previous = Some(generation.clone());
                    act.keeper.do_send(InstallGeneration(generation.clone()));
                    act.published.send_replace(Some(generation));
                }
                Err(e) => {
                    // A panic in a publisher or the merge: counted; the next tick starts afresh.
                    act.metrics.actor_restarts.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "sealing a generation failed; the previous one stays");
                }
            }
            // After `previous` is set: the next seal builds on this one.
            if std::mem::take(&mut act.pending) {
                act.seal(ctx, SystemTime::now(), true);
            } else {
                act.seal_if_delivered(ctx);
            }
        }));
    }
}

/// When the clock seals `round`.
fn seal_time_of(round: u64, config: &GenerationConfig) -> SystemTime {
    let nanos = config.interval.as_nanos().saturating_mul(u128::from(round))
        + config.offset.as_nanos() % config.interval.as_nanos().max(1);
    std::time::UNIX_EPOCH + std::time::Duration::from_nanos(nanos.min(u64::MAX as u128) as u64)
}

/// The wanted tables this node merges itself (not those a TLA child merges now).
fn own_wanted(inputs: &SealInputs) -> BTreeSet<String> {
    let wanted = inputs
        .wanted
        .as_ref()
        .map(|w| w.borrow().clone())
        .unwrap_or_default();
    match &inputs.deferral {
        Some(d) => {
            let assignment = d.assignment();
            let deferred = assignment.deferred();
            wanted
                .into_iter()
                .filter(|t| !deferred.contains(t))
                .collect()
        }
        None => wanted,
    }
}

async fn collect_and_seal(
    id: u64,
    round: u64,
    inputs: &SealInputs,
    previous: Option<&Generation>,
    wait: bool,
) -> Sealed {
    let mut complete = false;
    let started = Instant::now();
    let mut ready_at = started;
    let now = SystemTime::now();
    let wanted = inputs.wanted.as_ref().map(|w| w.borrow().clone());
    let mut builder = GenerationBuilder::default();
    {
        // A poisoned lock means a publisher panicked mid-collect; its state is still usable.
        let mut publishers = inputs.publishers.lock().unwrap_or_else(|p| p.into_inner());
        for p in publishers.iter_mut() {
            let collected = p.collect(now);
            for (source, message) in collected.errors {
                builder.error(source, message);
            }
            for published in collected.tables {
                if wanted
                    .as_ref()
                    .is_some_and(|w| !w.contains(&published.table))
                {
                    continue;
                }
                if let Err(e) = builder.add(&published.table, published.part) {
                    tracing::warn!(publisher = p.name(), error = %e, "rows refused");
                }
            }
        }
    }
    if let (Some(schemas), Some(wanted)) = (&inputs.declare_wanted, &wanted) {
        for table in wanted {
            if let Some(def) = schemas.get(table) {
                builder.declare(table, def.arrow_schema(true));
            }
        }
    }
    let mut machines = u64::from(inputs.local_machine);
    let mut clusters = u64::from(inputs.clusters == ClusterCount::One);
    let mut sealed_at = None;
    if let Some(children) = &inputs.children {
        let empty = BTreeSet::new();
        let all_wanted = wanted.as_ref().unwrap_or(&empty);
        // Tables a TLA child merges now are not the TLA's to wait for or merge.
        let assignment = inputs
            .deferral
            .as_ref()
            .map(|d| d.assignment())
            .unwrap_or_default();
        let deferred: BTreeSet<String> = assignment
            .deferred()
            .intersection(all_wanted)
            .cloned()
            .collect();
        let own: BTreeSet<String> = all_wanted.difference(&deferred).cloned().collect();
        let wanted = &own;
        // Children late with the round get until the grace runs out. A follower takes
        // what its child delivered last: there is nothing to wait for.
        let (round_due, grace) = match (inputs.follow_children, wait) {
            (true, _) => (0, std::time::Duration::ZERO),
            (false, true) => (round, inputs.merge_grace),
            (false, false) => (round, std::time::Duration::ZERO),
        };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && !children.ready(round_due, wanted, Instant::now()) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        ready_at = Instant::now();
        let mut merged = children.merge(round_due, wanted, ready_at);
        if let (Some(d), false) = (&inputs.deferral, deferred.is_empty()) {
            // Same round: the children's merged tables join the TLA's own; a child that
            // fails here has its tables carried from the previous generation.
            let theirs = d
                .merge(&assignment, id, round, &deferred, &merged.live_names)
                .await;
            tracing::debug!(round, complete = theirs.complete.len(), carried = ?theirs.incomplete, took = ?ready_at.elapsed(), "TLA children's merged tables");
            merged.complete.extend(theirs.complete);
            merged.incomplete.extend(theirs.incomplete);
        }
        if !merged.late.is_empty() {
            tracing::debug!(
                round,
                late = merged.late.len(),
                "children late with the round; their latest copies stand in"
            );
        }
        if !merged.incomplete.is_empty() {
            tracing::debug!(round, tables = ?merged.incomplete, "tables not collected by every child yet; carried from the previous generation");
        }
        if !merged.dropped.is_empty() {
            tracing::debug!(dropped = ?merged.dropped, "children not counted this round");
        }
        complete =
            merged.late.is_empty() && merged.dropped.is_empty() && merged.incomplete.is_empty();
        machines += merged.machines;
        clusters = match inputs.clusters {
            ClusterCount::One => 1,
            ClusterCount::Children => merged.live as u64,
            ClusterCount::FromChildren => merged.clusters,
        };
        // A SQL node serves its TLA's generation: it is as old as the TLA's seal, and while
        // the TLA is silent (dead, being switched from) it stays that old, so answers'
        // `generation.age_ms` shows how stale they are.
        if inputs.clusters == ClusterCount::FromChildren {
            sealed_at = merged.delivered_sealed_at.or(previous.map(|p| p.sealed_at));
            // Answers state the TLA's round, so two SQL nodes of one TLA can be compared.
            builder.tla_round(merged.delivered_round.or(previous.map(|p| p.tla_round)));
        }
        add_merged(&mut builder, merged, previous, &inputs.sourced);
    }
    builder.counts(machines, clusters);
    let generation = builder.seal(id, round, sealed_at.unwrap_or_else(SystemTime::now));
    Sealed {
        generation,
        took: started.elapsed(),
        critical: ready_at.elapsed(),
        complete,
    }
}

/// Puts the children's merge for a round into `builder`: every complete table's parts;
/// for a table some child does not hold yet, the copy in `previous` (or nothing); the
/// children's publish errors. Where a proxy or TLA merges its children. A `sourced` table
/// missing a source (a part key) its previous copy had is not served diminished: the
/// previous copy stays whole.
pub fn add_merged(
    builder: &mut GenerationBuilder,
    mut merged: Merged,
    previous: Option<&Generation>,
    sourced: &BTreeSet<String>,
) {
    for table in sourced {
        let (Some(new), Some(old)) = (
            merged.complete.get(table),
            previous.and_then(|p| p.tables.get(table)),
        ) else {
            continue;
        };
        let keys: BTreeSet<&str> = new.parts.iter().map(|p| p.key.as_str()).collect();
        if let Some(lost) = old.parts.iter().find(|p| !keys.contains(p.key.as_str())) {
            tracing::warn!(table = %table, source = %lost.key, "a source of a sourced table is missing; its last whole copy is kept");
            merged.complete.remove(table);
            merged.incomplete.insert(table.clone());
        }
    }
    for (table, t) in merged.complete {
        for part in t.parts {
            if let Err(e) = builder.add(&table, part) {
                builder.error(format!("child table {table}"), e);
            }
        }
        if !builder.has(&table) {
            builder.declare(&table, t.schema);
        }
    }
    for table in &merged.incomplete {
        // Some child does not hold the table yet: carry the last complete copy, so a query
        // never sees some clusters' new rows beside others' missing ones. Without an
        // earlier complete copy the table stays out: a query waits for it rather than
        // reading some clusters and not others.
        match previous.and_then(|p| p.tables.get(table)) {
            Some(t) => builder.put(table, t.clone()),
            None => builder.remove(table),
        }
    }
    for (child, message) in merged.errors {
        builder.error(child, message);
    }
}

impl Actor for Sealer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Seal once right away so a fresh node answers within its first interval.
        self.seal(ctx, SystemTime::now(), true);
        self.schedule(ctx);
        let watch = self.inputs.follow_children || self.inputs.seal_when_delivered;
        if let (true, Some(children)) = (watch, &self.inputs.children) {
            let deliveries = futures::stream::unfold(children.deliveries(), |mut rx| async move {
                rx.changed().await.ok()?;
                Some((Delivered, rx))
            });
            ctx.add_stream(deliveries);
        }
    }
}

/// Restarted in place by the node's supervisor: the generation ids and the previous
/// generation are kept; the seal that was running is gone with the panic.
impl Supervised for Sealer {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.sealing = false;
        self.pending = false;
        self.holding = false;
    }
}

impl StreamHandler<Delivered> for Sealer {
    fn handle(&mut self, _: Delivered, ctx: &mut Context<Self>) {
        if !self.inputs.follow_children {
            return self.seal_if_delivered(ctx);
        }
        self.delivered_since_tick = true;
        if self.sealing {
            self.pending = true;
        } else {
            self.seal(ctx, SystemTime::now(), true);
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        // The children are never dropped while the node runs; nothing to do if they are.
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use arc_swap::ArcSwapOption;

    use super::*;
    use crate::tier::children::tests::gen;

    #[test]
    fn a_sourced_table_missing_a_source_keeps_its_last_whole_copy() {
        let now = std::time::Instant::now();
        let children = Children::new(["a".into(), "b".into()], Duration::from_secs(10));
        for child in ["a", "b"] {
            children.update(child, |s| {
                s.latest = Some(Arc::new(gen(1, child, &["sys", "hosts"])));
                s.last_frame = Some(now);
            });
        }
        let wanted: BTreeSet<String> = ["sys", "hosts"].iter().map(|t| t.to_string()).collect();
        let sourced: BTreeSet<String> = ["hosts".to_string()].into();
        let mut b = GenerationBuilder::default();
        add_merged(&mut b, children.merge(1, &wanted, now), None, &sourced);
        let first = b.seal(1, 1, SystemTime::now());
        assert_eq!(first.tables["hosts"].rows(), 2);

        // b falls silent: its sys rows leave, but hosts (sourced) stays whole.
        let later = now + Duration::from_secs(11);
        children.update("a", |s| {
            s.latest = Some(Arc::new(gen(2, "a", &["sys", "hosts"])));
            s.last_frame = Some(later);
        });
        let mut b = GenerationBuilder::default();
        add_merged(
            &mut b,
            children.merge(2, &wanted, later),
            Some(&first),
            &sourced,
        );
        let second = b.seal(2, 2, SystemTime::now());
        assert_eq!(
            second.tables["sys"].rows(),
            1,
            "a silent child's rows leave"
        );
        assert_eq!(
            second.tables["hosts"].rows(),
            2,
            "a sourced table only whole"
        );
    }

    /// A SQL node's sealer on a one-hour clock, wanting `sys` of its one child, the TLA.
    fn follower(children: Arc<Children>) -> watch::Receiver<Option<Arc<Generation>>> {
        sealer(children, true)
    }

    /// A sealer on a one-hour clock wanting `sys` of `children`: a SQL node following its
    /// TLA, or a TLA sealing when its clusters have delivered.
    fn sealer(children: Arc<Children>, follow: bool) -> watch::Receiver<Option<Arc<Generation>>> {
        clocked(children, follow, Duration::from_secs(3600), Duration::ZERO)
    }

    /// [`sealer`] on a clock of `interval`, holding cold seals up to `hold`.
    fn clocked(
        children: Arc<Children>,
        follow: bool,
        interval: Duration,
        hold: Duration,
    ) -> watch::Receiver<Option<Arc<Generation>>> {
        let pool = SqlPool::new(1).expect("pool");
        let metrics = Arc::new(Metrics::default());
        let (installed, _) = watch::channel(0);
        let keeper = SnapshotKeeper::new(
            Arc::new(ArcSwapOption::empty()),
            pool.clone(),
            metrics.clone(),
            installed,
            crate::sql::DEFAULT_MAX_RESULT_BYTES,
            Vec::new(),
            Vec::new(),
        )
        .start();
        let (_wanted_tx, wanted) = watch::channel(BTreeSet::from(["sys".to_string()]));
        let inputs = SealInputs {
            sourced: BTreeSet::new(),
            publishers: Mutex::new(Vec::new()),
            children: Some(children),
            wanted: Some(wanted),
            declare_wanted: None,
            clusters: match follow {
                true => ClusterCount::FromChildren,
                false => ClusterCount::Children,
            },
            local_machine: false,
            merge_grace: Duration::from_millis(50),
            follow_children: follow,
            seal_when_delivered: !follow,
            cold_seal_hold: hold,
            deferral: None,
        };
        let config = GenerationConfig {
            interval,
            offset: Duration::ZERO,
        };
        let (published, generations) = watch::channel(None);
        Sealer::new(config, inputs, keeper, published, pool, metrics).start();
        generations
    }

    async fn next(rx: &mut watch::Receiver<Option<Arc<Generation>>>) -> Arc<Generation> {
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("a generation well before the clock's next seal")
            .expect("sealer alive");
        rx.borrow_and_update().clone().expect("a generation")
    }

    #[actix::test]
    async fn a_follower_seals_when_its_child_delivers_not_on_its_clock() {
        let children = Children::new(["tla".to_string()], Duration::from_secs(60));
        let mut generations = follower(children.clone());
        let first = next(&mut generations).await;
        assert!(!first.tables.contains_key("sys"), "nothing delivered yet");
        assert_eq!(first.tla_round, first.round, "no TLA round yet: its own");

        for round in [41, 42] {
            let mut delivered = gen(round, "10.0.0.1", &["sys"]);
            delivered.sealed_at = at(round);
            children.deliver("tla", Arc::new(delivered), |s| {
                s.last_frame = Some(Instant::now())
            });
            let g = next(&mut generations).await;
            assert_eq!(g.tables["sys"].rows(), 1);
            assert_eq!(
                g.sealed_at,
                at(round),
                "the TLA's generation, as old as the TLA's seal"
            );
            // Its own round follows its clock (hour-long here); answers state the TLA's.
            assert_eq!(g.tla_round, round, "the TLA's round");
            assert_ne!(g.round, round);
        }
    }

    /// Whether a generation arrives within a short while (for "no seal happened").
    async fn sealed_soon(rx: &mut watch::Receiver<Option<Arc<Generation>>>) -> bool {
        tokio::time::timeout(Duration::from_millis(300), rx.changed())
            .await
            .is_ok()
    }

    #[actix::test]
    async fn a_tla_seals_when_every_cluster_delivered_the_round_not_at_its_offset() {
        let children = Children::new(["a".into(), "b".into()], Duration::from_secs(60));
        let mut generations = sealer(children.clone(), false);
        let first = next(&mut generations).await;
        assert!(!first.tables.contains_key("sys"), "nothing delivered yet");
        let deliver = |child: &str, round: u64| {
            children.deliver(child, Arc::new(gen(round, child, &["sys"])), |s| {
                s.last_frame = Some(Instant::now())
            })
        };
        let hour = Duration::from_secs(3600);
        let due = round_of(
            next_seal(SystemTime::now(), hour, Duration::ZERO),
            hour,
            Duration::ZERO,
        );

        // Cold: only when every configured cluster has delivered, whatever its round.
        deliver("a", due - 3);
        assert!(!sealed_soon(&mut generations).await, "b has not delivered");
        deliver("b", due - 2);
        let cold = next(&mut generations).await;
        assert_eq!(cold.tables["sys"].rows(), 2, "both clusters, at once");
        assert_eq!(cold.clusters, 2);

        // Then a whole round, an hour before the clock's seal: sealed when b delivers it.
        deliver("a", due);
        assert!(
            !sealed_soon(&mut generations).await,
            "b is late with the round"
        );
        deliver("b", due);
        let early = next(&mut generations).await;
        assert_eq!(early.round, due, "the round the clock would seal");
        assert_eq!(early.tables["sys"].rows(), 2);
        // One generation per round: a cluster sending again does not seal the round twice.
        deliver("a", due);
        assert!(
            !sealed_soon(&mut generations).await,
            "round {due} is sealed"
        );
    }

    /// Children a, b and c of a TLA on a 4-s clock: a connected and delivered, b connected
    /// and still sending, c not connected. Returns the generations after the first (the
    /// start's) and how long until the clock's next seal.
    async fn cold_tla(
        hold: Duration,
    ) -> (
        Arc<Children>,
        watch::Receiver<Option<Arc<Generation>>>,
        Duration,
    ) {
        let children = Children::new(["a", "b", "c"].map(String::from), Duration::from_secs(60));
        let interval = Duration::from_secs(4);
        // Not right before a tick: the start's seal and the deliveries come first.
        let mut tick = next_seal(SystemTime::now(), interval, Duration::ZERO);
        if tick.duration_since(SystemTime::now()).unwrap_or_default() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tick = next_seal(SystemTime::now(), interval, Duration::ZERO);
        }
        let mut generations = clocked(children.clone(), false, interval, hold);
        next(&mut generations).await;
        children.link_up("a", "127.0.0.1:1", "a", "proxy");
        children.link_up("b", "127.0.0.1:2", "b", "proxy");
        children.deliver("a", Arc::new(gen(1, "a", &["sys"])), |s| {
            s.last_frame = Some(Instant::now())
        });
        let until = tick.duration_since(SystemTime::now()).unwrap_or_default();
        (children, generations, until)
    }

    #[actix::test]
    async fn a_cold_tla_waits_at_its_offset_for_first_copies_still_on_their_way() {
        let (children, mut generations, until) = cold_tla(Duration::from_secs(2)).await;
        // The offset passes: b is connected, its first copy not in, so no seal (c, never
        // connected, holds nothing).
        tokio::time::sleep(until + Duration::from_millis(400)).await;
        assert!(
            !generations.has_changed().expect("sealer alive"),
            "the offset's seal waits for b's first copy"
        );
        children.deliver("b", Arc::new(gen(1, "b", &["sys"])), |s| {
            s.last_frame = Some(Instant::now())
        });
        let whole = next(&mut generations).await;
        assert_eq!(whole.tables["sys"].rows(), 2, "a and b in one generation");
        assert_eq!(whole.clusters, 2);
    }

    #[actix::test]
    async fn a_cold_tla_waits_for_first_copies_no_longer_than_its_hold() {
        let (_children, mut generations, until) = cold_tla(Duration::from_millis(500)).await;
        let started = Instant::now();
        // b never delivers: the seal comes after the hold, with a alone.
        let g = next(&mut generations).await;
        assert!(
            started.elapsed() >= until + Duration::from_millis(450),
            "sealed {:?} after the start, the offset came after {until:?}",
            started.elapsed()
        );
        assert_eq!(
            g.tables["sys"].rows(),
            1,
            "a's rows, b's copy not awaited longer"
        );
    }

    fn at(secs: u64) -> SystemTime {
        std::time::UNIX_EPOCH + Duration::from_secs(secs)
    }
}

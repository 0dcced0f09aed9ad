//! The evaluator: one actor per node that answers SQL and has `[alerts]`. On every new
//! generation it evaluates the alerts due on its round (each at most once per round, so
//! hysteresis counts generations, not ticks), steps their instances, writes the pass to
//! the state file in one transaction (notifications into the outbox), then wakes the
//! dispatcher. It also reloads the definitions when the file changes; a file that does
//! not parse keeps the last good definitions.
//!
//! Queries run through the node's own query path (admission, limits, quarantine) as the
//! client `alerts`, pinned to the generation the pass is for; the pass itself runs on the
//! compute pool, never on the actor's thread.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use futures::StreamExt;
use rusqlite::Connection;

use super::config::{load_alerts, AlertDef, AlertsConfig, AlertsFile};
use super::coverage::GenerationCoverage;
use super::instance::{notification, Instances, Outcome, Row, Transition};
use super::notify::dispatch::{Dispatcher, Firing, Nudge, SetReceivers};
use super::notify::{outbox, AlertState, Notification, ReceiverKind};
use super::status::{AlertsShared, PassStats};
use super::store::{self, Evaluated};
use crate::auth::{Credential, Principal};
use crate::config::{file_stamp as stamp, FileStamp};
use crate::error::{ConfigError, QueryError};
use crate::node::messages::GenerationInstalled;
use crate::node::{Answer, NodeHandle};
use crate::sql::{Origin, Snapshot};

/// The client alert queries run as (admission fairness, quarantine, logs).
pub const CLIENT: &str = "alerts";

fn principal() -> Principal {
    Principal {
        name: CLIENT.into(),
        tables: None,
        admin: false,
        credential: Credential::Internal,
    }
}

pub struct AlertEvaluator {
    node: NodeHandle,
    config: AlertsConfig,
    shared: Arc<AlertsShared>,
    conn: Arc<Mutex<Connection>>,
    dispatcher: Addr<Dispatcher>,
    reload_every: Duration,
    stamp: Option<FileStamp>,
    /// The definitions file was read (or found missing) at least once.
    read: bool,
    rounds: BTreeMap<String, u64>,
    busy: bool,
    again: bool,
    /// Generations followed (once: a restart keeps the follower, it sends to the address).
    following: bool,
}

impl AlertEvaluator {
    /// Opens the state file (kept instances and rounds come back) and starts the
    /// dispatcher; the evaluator starts with the actor.
    pub fn new(
        node: NodeHandle,
        config: AlertsConfig,
        shared: Arc<AlertsShared>,
        reload_every: Duration,
    ) -> Result<Self, ConfigError> {
        let bad = |e: rusqlite::Error| ConfigError::Invalid {
            what: format!("[alerts] state {}", config.state.display()),
            message: e.to_string(),
        };
        let conn = store::open(&config.state).map_err(bad)?;
        let loaded = store::load(&conn).map_err(bad)?;
        {
            let mut s = shared.lock();
            s.instances = loaded.instances;
        }
        let dispatcher =
            Dispatcher::start(config.state.clone(), BTreeMap::new(), node.metrics.clone());
        Ok(AlertEvaluator {
            node,
            shared,
            conn: Arc::new(Mutex::new(conn)),
            dispatcher,
            reload_every,
            stamp: None,
            read: false,
            rounds: loaded.rounds,
            busy: false,
            again: false,
            following: false,
            config,
        })
    }

    /// Reads the definitions if the file changed; a bad file keeps the last good ones.
    fn reload(&mut self) {
        let path = self.config.definitions.clone();
        let now = stamp(&path);
        // A file unchanged since it was last read (or still missing) is not read again: a
        // missing file is one error, not one per poll.
        if self.read && now == self.stamp {
            return;
        }
        self.read = true;
        self.stamp = now;
        match load_alerts(&path) {
            Ok(file) => {
                for a in &file.alert {
                    if let Err(e) = a.check(&file.receivers) {
                        tracing::error!(
                            alert = a.name,
                            error = e,
                            "alert definition is wrong; the alert is in state error"
                        );
                    }
                }
                tracing::info!(
                    file = %path.display(),
                    alerts = file.alert.len(),
                    receivers = file.receivers.len(),
                    "alert definitions loaded"
                );
                let names: Vec<String> = file.alert.iter().map(|a| a.name.clone()).collect();
                self.dispatcher
                    .do_send(SetReceivers(file.receivers.clone()));
                {
                    let mut s = self.shared.lock();
                    s.defs = Arc::new(file);
                    s.file_error = None;
                    s.instances.retain(|k, _| names.contains(k));
                    s.last.retain(|k, _| names.contains(k));
                }
                self.rounds.retain(|k, _| names.contains(k));
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let keep = self.config.keep_events;
                match self.conn.lock() {
                    Ok(conn) => {
                        if let Err(e) = store::prune(&conn, &refs, keep, SystemTime::now()) {
                            tracing::warn!(error = %e, "pruning alert state failed");
                        }
                    }
                    Err(_) => tracing::warn!("alert state connection poisoned"),
                }
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "alert definitions not loaded; the previous ones stay in force");
                let mut s = self.shared.lock();
                s.file_error = Some(e.to_string());
                s.file_errors += 1;
            }
        }
    }

    fn kick(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            self.again = true;
            return;
        }
        let Some(snapshot) = self.node.snapshot() else {
            return;
        };
        let defs = self.shared.lock().defs.clone();
        let round = snapshot.generation.round;
        let due: Vec<AlertDef> = defs
            .alert
            .iter()
            .filter(|d| {
                round % u64::from(d.every.max(1)) == 0
                    && self.rounds.get(&d.name).is_none_or(|r| *r < round)
            })
            .cloned()
            .collect();
        if due.is_empty() {
            return;
        }
        self.busy = true;
        let pass = Pass {
            node: self.node.clone(),
            shared: self.shared.clone(),
            conn: self.conn.clone(),
            defs,
            due,
            snapshot,
            concurrency: match self.config.concurrency {
                0 => self.node.queries.pool.threads().max(1),
                n => n,
            },
            keep_resolved: self.config.keep_resolved,
        };
        let work = self.node.pool.spawn(pass.run());
        ctx.spawn(actix::fut::wrap_future::<_, Self>(work).map(|res, act, ctx| {
            act.busy = false;
            match res {
                Ok(Ok(done)) => {
                    for (alert, round) in done.rounds {
                        act.rounds.insert(alert, round);
                    }
                    act.dispatcher.do_send(Nudge);
                    act.dispatcher.do_send(Firing(done.active));
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "writing the alert pass failed; its rounds are evaluated again")
                }
                Err(e) => tracing::error!(error = %e, "alert pass stopped"),
            }
            if std::mem::take(&mut act.again) {
                act.kick(ctx);
            }
        }));
    }
}

impl Actor for AlertEvaluator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.reload();
        ctx.run_interval(self.reload_every, |act, _| act.reload());
        if !std::mem::replace(&mut self.following, true) {
            self.node.follow_generations(ctx.address());
        }
    }
}

/// Restarted in place by the node's supervisor: instances and rounds are kept (and in the
/// state file); the pass lost with the panic runs again at the next generation.
impl Supervised for AlertEvaluator {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.busy = false;
    }
}

impl Handler<GenerationInstalled> for AlertEvaluator {
    type Result = ();
    fn handle(&mut self, _: GenerationInstalled, ctx: &mut Context<Self>) {
        self.kick(ctx);
    }
}

/// One evaluation pass: the due alerts of one generation.
struct Pass {
    node: NodeHandle,
    shared: Arc<AlertsShared>,
    conn: Arc<Mutex<Connection>>,
    defs: Arc<AlertsFile>,
    due: Vec<AlertDef>,
    snapshot: Arc<Snapshot>,
    concurrency: usize,
    keep_resolved: Duration,
}

struct PassDone {
    rounds: Vec<(String, u64)>,
    /// What receivers should hear is firing now (Alertmanager is re-sent these).
    active: BTreeMap<String, Vec<Notification>>,
}

/// One alert's evaluation, before its instances are stepped.
struct Result1 {
    outcome: Evaluation,
    rows: usize,
    took: Duration,
}

enum Evaluation {
    Rows(Vec<Row>),
    Unknown(String),
    Failed(String),
}

impl Pass {
    async fn run(self) -> rusqlite::Result<PassDone> {
        let started = Instant::now();
        let generation = self.snapshot.generation.clone();
        let (node, snapshot, defs) = (&self.node, &self.snapshot, &self.defs);
        let results: Vec<(AlertDef, Result1)> = futures::stream::iter(self.due.iter().cloned())
            .map(|d| async move {
                let r = evaluate(node, defs, &d, snapshot.clone(), &principal()).await;
                (d, r)
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let coverage = GenerationCoverage::new(&generation);
        let at = generation.sealed_at;
        let round = generation.round;
        let mut stepped: Vec<(AlertDef, Instances, Vec<Transition>)> = Vec::new();
        {
            let mut s = self.shared.lock();
            for (d, r) in &results {
                let instances = s.instances.entry(d.name.clone()).or_default();
                let outcome = match &r.outcome {
                    Evaluation::Rows(rows) => Outcome::Rows {
                        rows: rows.clone(),
                        coverage: &coverage,
                    },
                    Evaluation::Unknown(why) => Outcome::Unknown(why.clone()),
                    Evaluation::Failed(e) => Outcome::Failed(e.clone()),
                };
                let transitions = instances.step(d, outcome, round, at, self.keep_resolved);
                for t in &transitions {
                    tracing::info!(
                        alert = d.name,
                        instance = t.instance.key_text,
                        from = t.from.map(AlertState::as_str).unwrap_or("-"),
                        to = t.to.as_str(),
                        notify = t.notify,
                        "alert instance changed"
                    );
                }
                stepped.push((d.clone(), instances.clone(), transitions));
                let last = s.last.entry(d.name.clone()).or_default();
                last.round = round;
                last.generation = generation.id;
                last.at = Some(SystemTime::now());
                last.took = r.took;
                last.rows = r.rows;
                last.evaluations += 1;
                last.problem = match &r.outcome {
                    Evaluation::Rows(_) => None,
                    Evaluation::Unknown(w) => Some(format!("unknown: {w}")),
                    Evaluation::Failed(e) => {
                        last.failures += 1;
                        Some(e.clone())
                    }
                };
            }
        }
        let pass: Vec<Evaluated<'_>> = stepped
            .iter()
            .map(|(d, inst, tr)| Evaluated {
                alert: &d.name,
                round,
                generation: generation.id,
                at,
                instances: inst,
                transitions: tr,
                notifications: tr
                    .iter()
                    .filter(|t| t.notify && !d.notify.is_empty())
                    .map(|t| {
                        (
                            notification(d, &t.instance, t.to, generation.id, at),
                            &d.notify[..],
                        )
                    })
                    .collect(),
            })
            .collect();
        {
            let receivers = &self.defs.receivers;
            let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
            store::write_pass(&mut conn, &pass, |tx, receiver, n| {
                // Alerts naming an undefined receiver are in error and notify nobody.
                let Some(r) = receivers.get(receiver) else {
                    return Ok(());
                };
                let e = outbox::enqueue(tx, receiver, n, r.outbox_max_items)?;
                if e.dropped > 0 {
                    tracing::warn!(receiver, dropped = e.dropped, bound = r.outbox_max_items, "outbox full: the oldest undelivered notifications were dropped (outbox_max_items)");
                }
                Ok(())
            })?;
        }
        let written = SystemTime::now();
        let mut active: BTreeMap<String, Vec<Notification>> = BTreeMap::new();
        {
            let mut s = self.shared.lock();
            // Only Alertmanager receivers are re-sent what is firing.
            let resent = |r: &String| {
                self.defs
                    .receivers
                    .get(r)
                    .is_some_and(|c| c.kind == ReceiverKind::Alertmanager)
            };
            for d in &self.defs.alert {
                let to: Vec<&String> = d.notify.iter().filter(|r| resent(r)).collect();
                if to.is_empty() {
                    continue;
                }
                for i in s.instances.get(&d.name).iter().flat_map(|i| i.active()) {
                    let state = match i.state {
                        AlertState::Error => AlertState::Error,
                        _ => AlertState::Firing,
                    };
                    let n = notification(d, i, state, generation.id, at);
                    for r in &to {
                        active.entry((*r).clone()).or_default().push(n.clone());
                    }
                }
            }
            s.passes += 1;
            s.last_pass = Some(PassStats {
                generation: generation.id,
                round,
                sealed_at: at,
                after_seal: written.duration_since(at).unwrap_or_default(),
                took: started.elapsed(),
                alerts: results.len(),
            });
        }
        Ok(PassDone {
            rounds: results
                .iter()
                .map(|(d, _)| (d.name.clone(), round))
                .collect(),
            active,
        })
    }
}

/// Runs one alert's SQL on `snapshot` and reads its rows.
async fn evaluate(
    node: &NodeHandle,
    file: &AlertsFile,
    def: &AlertDef,
    snapshot: Arc<Snapshot>,
    who: &Principal,
) -> Result1 {
    let started = Instant::now();
    let generation = snapshot.generation.clone();
    let outcome = match def.check(&file.receivers) {
        Err(e) => Evaluation::Failed(format!("definition: {e}")),
        Ok(()) => match node.query_on(def.sql.clone(), who, snapshot).await {
            Ok(answer) => read_answer(def, &answer, generation.sealed_at),
            Err(QueryError::TablesNotReady { missing, .. }) => {
                Evaluation::Unknown(format!("not in this generation: {}", missing.join(", ")))
            }
            Err(e) => Evaluation::Failed(e.to_string()),
        },
    };
    let rows = match &outcome {
        Evaluation::Rows(r) => r.len(),
        _ => 0,
    };
    Result1 {
        outcome,
        rows,
        took: started.elapsed(),
    }
}

/// The answer's rows as instances, unless a table it read is older than `max_age`.
fn read_answer(def: &AlertDef, answer: &Answer, sealed_at: SystemTime) -> Evaluation {
    let output = &answer.output;
    if let Some(max_age) = def.max_age {
        for t in output
            .tables
            .iter()
            .filter(|t| t.origin == Origin::Published)
        {
            if let Some(oldest) = t.oldest_publish {
                let age = sealed_at.duration_since(oldest).unwrap_or_default();
                if age > max_age {
                    return Evaluation::Unknown(format!(
                        "table {} is {} old (max_age {})",
                        t.name,
                        humantime::format_duration(Duration::from_secs(age.as_secs())),
                        humantime::format_duration(max_age)
                    ));
                }
            }
        }
    }
    if output.truncated {
        return Evaluation::Failed(format!(
            "the answer was cut at {} rows ([http] max_result_rows): an alert must return its instances, not a listing",
            output.rows()
        ));
    }
    match rows_of(&def.key, &output.batches) {
        Ok(rows) => Evaluation::Rows(rows),
        Err(e) => Evaluation::Failed(e),
    }
}

/// Rows as text, split into the key columns and the others.
pub fn rows_of(key: &[String], batches: &[RecordBatch]) -> Result<Vec<Row>, String> {
    let mut out = Vec::new();
    let options = FormatOptions::default().with_null("");
    for batch in batches {
        let schema = batch.schema();
        for k in key {
            if schema.index_of(k).is_err() {
                return Err(format!(
                    "key column '{k}' is not a column of the answer (columns: {})",
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot show a column as text: {e}"))?;
        for row in 0..batch.num_rows() {
            let mut r = Row {
                key: BTreeMap::new(),
                values: BTreeMap::new(),
            };
            for (i, f) in schema.fields().iter().enumerate() {
                let v = formatters[i].value(row).to_string();
                if key.contains(f.name()) {
                    r.key.insert(f.name().clone(), v);
                } else {
                    r.values.insert(f.name().clone(), v);
                }
            }
            out.push(r);
        }
    }
    Ok(out)
}

/// `POST /alerts/test`: one alert (by name, or given) evaluated once on the current
/// generation as `who` (so it reads only what `who` may); nothing is written or notified.
#[derive(Debug, serde::Serialize)]
pub struct TestReport {
    pub alert: String,
    pub generation: u64,
    pub round: u64,
    pub took_ms: f64,
    pub rows: usize,
    pub problem: Option<String>,
    /// What each instance would become, and whether receivers would hear of it.
    pub would: Vec<TestTransition>,
}

#[derive(Debug, serde::Serialize)]
pub struct TestTransition {
    pub key_text: String,
    pub from: Option<AlertState>,
    pub to: AlertState,
    pub notify: bool,
    pub values: BTreeMap<String, String>,
}

pub async fn test_alert(
    node: &NodeHandle,
    shared: &AlertsShared,
    def: &AlertDef,
    who: &Principal,
) -> Result<TestReport, QueryError> {
    let snapshot = node.snapshot().ok_or(QueryError::NoGeneration)?;
    let (file, mut instances) = {
        let s = shared.lock();
        (
            s.defs.clone(),
            s.instances.get(&def.name).cloned().unwrap_or_default(),
        )
    };
    let generation = snapshot.generation.clone();
    let r = evaluate(node, &file, def, snapshot, who).await;
    let coverage = GenerationCoverage::new(&generation);
    let problem = match &r.outcome {
        Evaluation::Rows(_) => None,
        Evaluation::Unknown(w) => Some(format!("unknown: {w}")),
        Evaluation::Failed(e) => Some(e.clone()),
    };
    let outcome = match r.outcome {
        Evaluation::Rows(rows) => Outcome::Rows {
            rows,
            coverage: &coverage,
        },
        Evaluation::Unknown(w) => Outcome::Unknown(w),
        Evaluation::Failed(e) => Outcome::Failed(e),
    };
    let transitions = instances.step(
        def,
        outcome,
        generation.round,
        generation.sealed_at,
        Duration::MAX,
    );
    Ok(TestReport {
        alert: def.name.clone(),
        generation: generation.id,
        round: generation.round,
        took_ms: r.took.as_secs_f64() * 1000.0,
        rows: r.rows,
        problem,
        would: transitions
            .into_iter()
            .map(|t| TestTransition {
                key_text: t.instance.key_text,
                from: t.from,
                to: t.to,
                notify: t.notify,
                values: t.instance.values,
            })
            .collect(),
    })
}

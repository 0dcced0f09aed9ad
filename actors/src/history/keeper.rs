//! The history keeper: one actor per node with `[history]`. On every new generation it
//! hands the kept tables due on its round to the writer and runs the reports due in their
//! period (each on the compute pool, through the node's own query path, pinned to that
//! generation), handing their answers to the writer too. It reloads `history.toml` and
//! `reports.toml` when they change (a file that does not parse or check keeps the last good
//! definitions) and sends the writer its maintenance (retention, compaction) on a timer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;

use super::config::{load_history_file, load_reports_file, ReportDef};
use super::files::stamped_schema;
use super::status::HistoryShared;
use super::writer::{Job, Writer};
use crate::auth::{Credential, Principal};
use crate::config::{file_stamp, FileStamp};
use crate::error::QueryError;
use crate::node::messages::GenerationInstalled;
use crate::node::NodeHandle;
use crate::sql::Snapshot;

/// The client reports run as (admission fairness, quarantine, logs).
pub const CLIENT: &str = "reports";

pub struct HistoryKeeper {
    node: NodeHandle,
    shared: Arc<HistoryShared>,
    writer: Writer,
    reload_every: Duration,
    stamps: [Option<FileStamp>; 2],
    read: bool,
    /// Per kept table, the last round handed to the writer.
    rounds: BTreeMap<String, u64>,
    /// Per report, the last period (generation time / every) it ran for.
    periods: BTreeMap<String, i64>,
    running: BTreeSet<String>,
    /// Generations followed (once: a restart keeps the follower, it sends to the address).
    following: bool,
}

pub fn ms_since_epoch(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl HistoryKeeper {
    pub fn new(
        node: NodeHandle,
        shared: Arc<HistoryShared>,
        writer: Writer,
        reload_every: Duration,
    ) -> Self {
        HistoryKeeper {
            node,
            shared,
            writer,
            reload_every,
            stamps: [None, None],
            read: false,
            rounds: BTreeMap::new(),
            periods: BTreeMap::new(),
            running: BTreeSet::new(),
            following: false,
        }
    }

    /// Reads the definition files that changed; a bad file keeps the last good definitions.
    fn reload(&mut self) {
        let config = &self.shared.config;
        let now = [
            config.tables.as_deref().and_then(file_stamp),
            config.reports.as_deref().and_then(file_stamp),
        ];
        let first = !self.read;
        self.read = true;
        if let Some(path) = &config.tables {
            if first || now[0] != self.stamps[0] {
                let schemas = self.node.schemas();
                let loaded = load_history_file(path)
                    .map_err(|e| e.to_string())
                    .and_then(|f| {
                        f.validate(|t| schemas.get(t).is_some())
                            .map_err(|e| format!("{}: {e}", path.display()))?;
                        Ok(f)
                    });
                let mut s = self.shared.lock();
                match loaded {
                    Ok(f) => {
                        tracing::info!(file = %path.display(), tables = f.table.len(), "history definitions loaded");
                        for t in &f.table {
                            let stamped = schemas
                                .get(&t.name)
                                .map(|d| stamped_schema(&d.arrow_schema(true)));
                            if let Some(Ok(schema)) = stamped {
                                self.shared
                                    .index
                                    .declare(&format!("history.{}", t.name), schema);
                            }
                        }
                        s.kept = Arc::new(f);
                        s.kept_error = None;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "history definitions not loaded; the previous ones stay in force");
                        s.kept_error = Some(e);
                    }
                }
            }
        }
        if let Some(path) = &config.reports {
            if first || now[1] != self.stamps[1] {
                let mut s = self.shared.lock();
                match load_reports_file(path) {
                    Ok(f) => {
                        tracing::info!(file = %path.display(), reports = f.report.len(), "reports loaded");
                        let names: BTreeSet<&String> = f.report.iter().map(|r| &r.name).collect();
                        s.report_status.retain(|n, _| names.contains(n));
                        self.periods.retain(|n, _| names.contains(n));
                        s.reports = Arc::new(f);
                        s.reports_error = None;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reports not loaded; the previous ones stay in force");
                        s.reports_error = Some(e.to_string());
                    }
                }
            }
        }
        self.stamps = now;
    }

    fn on_generation(&mut self, ctx: &mut Context<Self>) {
        let Some(snapshot) = self.node.snapshot() else {
            return;
        };
        let (kept, reports) = {
            let s = self.shared.lock();
            (s.kept.clone(), s.reports.clone())
        };
        let generation = &snapshot.generation;
        let at_ms = ms_since_epoch(generation.sealed_at);
        // Kept tables stay requested from below for as long as they are kept.
        let names: BTreeSet<String> = kept.table.iter().map(|t| t.name.clone()).collect();
        self.node.keep_requested(names);
        for t in &kept.table {
            let round = generation.round;
            let due = round % u64::from(t.every.max(1)) == 0
                && self.rounds.get(&t.name).is_none_or(|r| *r < round);
            let Some(table) = generation.tables.get(&t.name) else {
                continue;
            };
            if !due {
                continue;
            }
            self.rounds.insert(t.name.clone(), round);
            self.writer.submit(Job::Write {
                table: format!("history.{}", t.name),
                schema: table.schema.clone(),
                batches: table.batches().cloned().collect(),
                at_ms,
                generation: generation.id,
            });
        }
        for r in &reports.report {
            let every = i64::try_from(r.every.as_millis())
                .unwrap_or(i64::MAX)
                .max(1);
            let period = at_ms.div_euclid(every);
            if self.periods.get(&r.name).is_some_and(|p| *p >= period)
                || self.running.contains(&r.name)
            {
                continue;
            }
            self.periods.insert(r.name.clone(), period);
            self.running.insert(r.name.clone());
            self.run_report(r.clone(), snapshot.clone(), ctx);
        }
    }

    fn run_report(&mut self, def: ReportDef, snapshot: Arc<Snapshot>, ctx: &mut Context<Self>) {
        let node = self.node.clone();
        let sql = def.sql.clone();
        let work = self.node.pool.spawn(async move {
            let who = Principal {
                name: CLIENT.into(),
                tables: None,
                admin: false,
                credential: Credential::Internal,
            };
            node.query_on(sql, &who, snapshot).await
        });
        ctx.spawn(actix::fut::wrap_future::<_, Self>(work).map(move |res, act, _| {
            act.running.remove(&def.name);
            let outcome = match res {
                Ok(Ok(answer)) if repeated_name(&answer.output.schema).is_some() => {
                    // SQL allows repeated output names; a stored table does not.
                    let name = repeated_name(&answer.output.schema).unwrap_or_default();
                    Err((0, format!("the column name `{name}` repeats; a report's columns need names of their own (AS)")))
                }
                Ok(Ok(answer)) => {
                    let generation = &answer.snapshot.generation;
                    let rows = answer.output.rows();
                    let job = Job::Write {
                        table: format!("report.{}", def.name),
                        schema: answer.output.schema.clone(),
                        batches: answer.output.batches.clone(),
                        at_ms: ms_since_epoch(generation.sealed_at),
                        generation: generation.id,
                    };
                    act.writer.submit(job);
                    match answer.output.truncated {
                        true => Err((rows, format!("the answer was cut at {rows} rows ([sql] max_rows); only those are kept"))),
                        false => Ok(rows),
                    }
                }
                Ok(Err(QueryError::TablesNotReady { missing, .. })) => {
                    // Requested just now (a node that started, a new report): run again on
                    // the next generation rather than count a failure.
                    tracing::debug!(report = %def.name, missing = ?missing, "report waits for its tables");
                    act.periods.remove(&def.name);
                    return;
                }
                Ok(Err(e)) => Err((0, e.to_string())),
                Err(e) => Err((0, format!("the run stopped: {e}"))),
            };
            let mut s = act.shared.lock();
            let status = s.report_status.entry(def.name.clone()).or_default();
            status.runs += 1;
            status.last_run = Some(SystemTime::now());
            match outcome {
                Ok(rows) => {
                    status.rows = rows;
                    status.last_error = None;
                }
                Err((rows, e)) => {
                    if status.last_error.as_deref() != Some(e.as_str()) {
                        tracing::warn!(report = %def.name, error = %e, "report failed");
                    }
                    status.rows = rows;
                    status.failures += 1;
                    status.last_error = Some(e);
                }
            }
        }));
    }

    fn maintain(&mut self) {
        let s = self.shared.lock();
        let mut retention: BTreeMap<String, Duration> = s
            .kept
            .table
            .iter()
            .map(|t| (format!("history.{}", t.name), t.retention))
            .collect();
        retention.extend(
            s.reports
                .report
                .iter()
                .map(|r| (format!("report.{}", r.name), r.retention)),
        );
        drop(s);
        self.writer.submit(Job::Maintain {
            retention,
            now_ms: ms_since_epoch(SystemTime::now()),
        });
    }
}

impl Actor for HistoryKeeper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.reload();
        ctx.run_interval(self.reload_every, |act, _| act.reload());
        ctx.run_interval(self.shared.config.maintain_every, |act, _| act.maintain());
        if !std::mem::replace(&mut self.following, true) {
            self.node.follow_generations(ctx.address());
        }
    }
}

/// Restarted in place by the node's supervisor: rounds and periods are kept; reports that
/// were running when it panicked may run again.
impl Supervised for HistoryKeeper {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.running.clear();
    }
}

impl Handler<GenerationInstalled> for HistoryKeeper {
    type Result = ();
    fn handle(&mut self, _: GenerationInstalled, ctx: &mut Context<Self>) {
        self.on_generation(ctx);
    }
}

/// A column name that occurs twice in `schema`, if one does.
fn repeated_name(schema: &datafusion::arrow::datatypes::Schema) -> Option<String> {
    let mut seen = std::collections::HashSet::new();
    schema
        .fields()
        .iter()
        .map(|f| f.name())
        .find(|n| !seen.insert(n.as_str()))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::repeated_name;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn a_repeated_column_name_is_found() {
        let schema = |names: &[&str]| {
            Schema::new(
                names
                    .iter()
                    .map(|n| Field::new(*n, DataType::Int64, true))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(repeated_name(&schema(&["a", "b", "a"])), Some("a".into()));
        assert_eq!(repeated_name(&schema(&["a", "b"])), None);
    }
}

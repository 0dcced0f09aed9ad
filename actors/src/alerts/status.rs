//! What the evaluator knows, shared with readers: the definitions in force, each alert's
//! last evaluation, and every instance. `GET /alerts`, `/metrics` and the `query_alerts`
//! table read it; only the evaluator writes it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::config::{AlertDef, AlertsFile};
use super::instance::{rfc3339, Instance, Instances};
use super::notify::AlertState;

/// One alert's last evaluation.
#[derive(Debug, Clone, Default)]
pub struct LastEvaluation {
    pub round: u64,
    pub generation: u64,
    pub at: Option<SystemTime>,
    pub took: Duration,
    pub rows: usize,
    /// Why it failed, or why its instances are unknown.
    pub problem: Option<String>,
    pub evaluations: u64,
    pub failures: u64,
}

/// The last evaluation pass (one generation).
#[derive(Debug, Clone)]
pub struct PassStats {
    pub generation: u64,
    pub round: u64,
    pub sealed_at: SystemTime,
    /// Seal to the last alert's state written.
    pub after_seal: Duration,
    /// The pass itself.
    pub took: Duration,
    pub alerts: usize,
}

#[derive(Debug, Default)]
pub struct Status {
    pub file: PathBuf,
    pub defs: Arc<AlertsFile>,
    /// Why the definitions file was not taken (the previous one stays in force).
    pub file_error: Option<String>,
    pub file_errors: u64,
    pub last: BTreeMap<String, LastEvaluation>,
    pub instances: BTreeMap<String, Instances>,
    pub last_pass: Option<PassStats>,
    pub passes: u64,
}

#[derive(Debug, Default)]
pub struct AlertsShared {
    inner: Mutex<Status>,
}

impl AlertsShared {
    pub fn new(file: PathBuf) -> Arc<Self> {
        Arc::new(AlertsShared {
            inner: Mutex::new(Status {
                file,
                ..Status::default()
            }),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, Status> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `GET /alerts`: firing, error and unknown instances first, at most `limit` per alert
    /// (an alert over a big fleet may hold tens of thousands; `counts` has them all).
    pub fn report(&self, limit: usize) -> AlertsReport {
        let s = self.lock();
        let mut alerts: Vec<AlertReport> = s
            .defs
            .alert
            .iter()
            .map(|d| {
                let last = s.last.get(&d.name).cloned().unwrap_or_default();
                let mut instances: Vec<InstanceReport> = s
                    .instances
                    .get(&d.name)
                    .map(|i| i.by_key.values().map(InstanceReport::of).collect())
                    .unwrap_or_default();
                instances.sort_by_key(|i| (rank(i.state), i.key_text.clone()));
                let mut counts: BTreeMap<AlertState, usize> = BTreeMap::new();
                for i in &instances {
                    *counts.entry(i.state).or_default() += 1;
                }
                instances.truncate(limit);
                AlertReport::of(d, &s.defs, &last, instances, counts)
            })
            .collect();
        alerts.sort_by_key(|a| {
            (
                a.instances.iter().map(|i| rank(i.state)).min().unwrap_or(9),
                a.name.clone(),
            )
        });
        AlertsReport {
            file: s.file.display().to_string(),
            file_error: s.file_error.clone(),
            last_pass: s.last_pass.as_ref().map(|p| PassReport {
                generation: p.generation,
                round: p.round,
                sealed_at: rfc3339(p.sealed_at),
                after_seal_ms: p.after_seal.as_millis() as u64,
                took_ms: p.took.as_millis() as u64,
                alerts: p.alerts,
            }),
            receivers: s.defs.receivers.keys().cloned().collect(),
            alerts,
        }
    }

    /// The `query_alert*` series of `/metrics`.
    pub fn render_metrics(&self, out: &mut String) {
        let s = self.lock();
        let _ = writeln!(
            out,
            "# HELP query_alerts_defined Alert definitions in force.\n# TYPE query_alerts_defined gauge\nquery_alerts_defined {}",
            s.defs.alert.len()
        );
        let _ = writeln!(
            out,
            "# HELP query_alerts_firing Firing instances per alert.\n# TYPE query_alerts_firing gauge"
        );
        let mut states: BTreeMap<&str, u64> = BTreeMap::new();
        for d in &s.defs.alert {
            let inst = s.instances.get(&d.name);
            let firing = inst.map_or(0, |i| {
                i.by_key
                    .values()
                    .filter(|i| i.state == AlertState::Firing)
                    .count()
            });
            let _ = writeln!(
                out,
                "query_alerts_firing{{alert=\"{}\",priority=\"{}\"}} {firing}",
                d.name,
                crate::metrics::label(&d.priority)
            );
            for i in inst.iter().flat_map(|i| i.by_key.values()) {
                *states.entry(i.state.as_str()).or_default() += 1;
            }
        }
        let _ = writeln!(
            out,
            "# HELP query_alert_instances Alert instances by state.\n# TYPE query_alert_instances gauge"
        );
        for st in ["pending", "firing", "resolved", "unknown", "error"] {
            let _ = writeln!(
                out,
                "query_alert_instances{{state=\"{st}\"}} {}",
                states.get(st).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(
            out,
            "# HELP query_alert_evaluation_failures_total Evaluations of each alert that failed (its SQL, or its definition).\n# TYPE query_alert_evaluation_failures_total counter"
        );
        for (name, l) in &s.last {
            let _ = writeln!(
                out,
                "query_alert_evaluation_failures_total{{alert=\"{name}\"}} {}",
                l.failures
            );
        }
        let _ = writeln!(
            out,
            "# HELP query_alerts_file_errors_total Edits of the alert definitions refused (the previous ones stay).\n# TYPE query_alerts_file_errors_total counter\nquery_alerts_file_errors_total {}",
            s.file_errors
        );
        let _ = writeln!(
            out,
            "# HELP query_alert_passes_total Evaluation passes (one per evaluated generation).\n# TYPE query_alert_passes_total counter\nquery_alert_passes_total {}",
            s.passes
        );
        if let Some(p) = &s.last_pass {
            let _ = writeln!(
                out,
                "# HELP query_alert_evaluation_seconds The last pass: from the generation's seal to the last alert's state written.\n# TYPE query_alert_evaluation_seconds gauge\nquery_alert_evaluation_seconds {:.3}",
                p.after_seal.as_secs_f64()
            );
            let _ = writeln!(
                out,
                "# HELP query_alert_pass_seconds The last pass's own time.\n# TYPE query_alert_pass_seconds gauge\nquery_alert_pass_seconds {:.3}",
                p.took.as_secs_f64()
            );
        }
        let _ = writeln!(
            out,
            "# HELP query_alert_last_evaluation_seconds Each alert's last evaluation time.\n# TYPE query_alert_last_evaluation_seconds gauge"
        );
        for (name, l) in &s.last {
            let _ = writeln!(
                out,
                "query_alert_last_evaluation_seconds{{alert=\"{name}\"}} {:.4}",
                l.took.as_secs_f64()
            );
        }
    }
}

/// Sort order: what needs a human first.
fn rank(s: AlertState) -> u8 {
    match s {
        AlertState::Firing => 0,
        AlertState::Error => 1,
        AlertState::Unknown => 2,
        AlertState::Pending => 3,
        AlertState::Resolved => 4,
    }
}

#[derive(Debug, Serialize)]
pub struct AlertsReport {
    pub file: String,
    pub file_error: Option<String>,
    pub last_pass: Option<PassReport>,
    pub receivers: Vec<String>,
    pub alerts: Vec<AlertReport>,
}

#[derive(Debug, Serialize)]
pub struct PassReport {
    pub generation: u64,
    pub round: u64,
    pub sealed_at: String,
    pub after_seal_ms: u64,
    pub took_ms: u64,
    pub alerts: usize,
}

#[derive(Debug, Serialize)]
pub struct AlertReport {
    pub name: String,
    pub sql: String,
    pub key: Vec<String>,
    #[serde(rename = "for")]
    pub for_evaluations: u32,
    pub clear_after: u32,
    pub every: u32,
    pub priority: String,
    pub owner: String,
    pub description: String,
    pub runbook: String,
    pub labels: BTreeMap<String, String>,
    pub notify: Vec<String>,
    /// What is wrong with the definition itself (the alert is in `error`).
    pub definition_error: Option<String>,
    pub last_round: u64,
    pub last_generation: u64,
    pub last_evaluated_at: Option<String>,
    pub last_evaluation_ms: f64,
    pub last_rows: usize,
    pub last_problem: Option<String>,
    pub evaluations: u64,
    pub failures: u64,
    /// Instances per state, all of them.
    pub counts: BTreeMap<AlertState, usize>,
    /// The first `limit` instances, most urgent first.
    pub instances: Vec<InstanceReport>,
}

impl AlertReport {
    fn of(
        d: &AlertDef,
        file: &AlertsFile,
        last: &LastEvaluation,
        instances: Vec<InstanceReport>,
        counts: BTreeMap<AlertState, usize>,
    ) -> Self {
        AlertReport {
            name: d.name.clone(),
            sql: d.sql.clone(),
            key: d.key.clone(),
            for_evaluations: d.for_evaluations,
            clear_after: d.clear_after,
            every: d.every,
            priority: d.priority.clone(),
            owner: d.owner.clone(),
            description: d.description.clone(),
            runbook: d.runbook.clone(),
            labels: d.labels.clone(),
            notify: d.notify.clone(),
            definition_error: d.check(&file.receivers).err(),
            last_round: last.round,
            last_generation: last.generation,
            last_evaluated_at: last.at.map(rfc3339),
            last_evaluation_ms: last.took.as_secs_f64() * 1000.0,
            last_rows: last.rows,
            last_problem: last.problem.clone(),
            evaluations: last.evaluations,
            failures: last.failures,
            counts,
            instances,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct InstanceReport {
    pub key: BTreeMap<String, String>,
    pub key_text: String,
    pub state: AlertState,
    pub since: String,
    pub changed: String,
    pub last_seen_round: u64,
    pub values: BTreeMap<String, String>,
    pub error: Option<String>,
}

impl InstanceReport {
    pub fn of(i: &Instance) -> Self {
        InstanceReport {
            key: i.key.clone(),
            key_text: i.key_text.clone(),
            state: i.state,
            since: rfc3339(i.since),
            changed: rfc3339(i.changed),
            last_seen_round: i.last_seen_round,
            values: i.values.clone(),
            error: i.error.clone(),
        }
    }
}

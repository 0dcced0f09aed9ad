//! What history is doing, shared by its actors and the HTTP layer: the index of kept files,
//! whether writing is paused and why, counters, the last good definitions and each report's
//! last run. `/metrics`, `/health`, `GET /tables`, `GET /reports` and the table
//! `query_history` read it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use super::config::{HistoryConfig, HistoryFile, ReportsFile};
use super::index::HistoryIndex;

#[derive(Debug, Default, Clone)]
pub struct ReportStatus {
    pub runs: u64,
    pub failures: u64,
    pub last_run: Option<SystemTime>,
    pub last_error: Option<String>,
    /// Rows of the last answer kept.
    pub rows: usize,
}

#[derive(Debug, Default)]
pub struct HistoryStatus {
    /// Why writing is paused now (a full or slow disk, a failed write); None while writing.
    pub paused: Option<String>,
    /// Generations (or report answers) written.
    pub writes: u64,
    pub write_failures: u64,
    /// Generations not kept: the writer was behind or paused.
    pub skipped: u64,
    /// Time spent writing (encoding included), in seconds.
    pub write_seconds: f64,
    pub compactions: u64,
    pub deleted_files: u64,
    /// Files found damaged (moved aside) at start, with the reason.
    pub damaged: Vec<(String, String)>,
    /// The last good definitions, and why the latest edit was refused.
    pub kept: Arc<HistoryFile>,
    pub kept_error: Option<String>,
    pub reports: Arc<ReportsFile>,
    pub reports_error: Option<String>,
    pub report_status: BTreeMap<String, ReportStatus>,
    /// Kept tables (`history.sys`, `report.x`) whose last rows could not be written, and why.
    pub table_errors: BTreeMap<String, String>,
}

#[derive(Debug)]
pub struct HistoryShared {
    pub config: HistoryConfig,
    pub index: Arc<HistoryIndex>,
    status: Mutex<HistoryStatus>,
}

impl HistoryShared {
    pub fn new(config: HistoryConfig, index: Arc<HistoryIndex>) -> Arc<Self> {
        Arc::new(HistoryShared {
            config,
            index,
            status: Mutex::new(HistoryStatus::default()),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, HistoryStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writing stopped for `why` (logged when the reason changes, not at every generation).
    pub fn pause(&self, why: String) {
        let mut s = self.lock();
        if s.paused.as_deref() != Some(why.as_str()) {
            tracing::warn!(reason = %why, "history paused: generations are not kept until it clears");
        }
        s.paused = Some(why);
    }

    pub fn resume(&self) {
        let mut s = self.lock();
        if let Some(why) = s.paused.take() {
            tracing::info!(was = %why, "history resumed");
        }
    }

    /// Prometheus text for history and reports.
    pub fn render_metrics(&self, out: &mut String) {
        let s = self.lock();
        let lines: [(&str, &str, &str, f64); 8] = [
            (
                "query_history_paused",
                "gauge",
                "1 while history is paused (full or slow disk, failing writes).",
                f64::from(u8::from(s.paused.is_some())),
            ),
            (
                "query_history_writes_total",
                "counter",
                "Generations and report answers written to history.",
                s.writes as f64,
            ),
            (
                "query_history_write_failures_total",
                "counter",
                "History writes that failed.",
                s.write_failures as f64,
            ),
            (
                "query_history_skipped_total",
                "counter",
                "Generations not kept because history was paused or its writer behind.",
                s.skipped as f64,
            ),
            (
                "query_history_write_seconds_total",
                "counter",
                "Time spent writing history files.",
                s.write_seconds,
            ),
            (
                "query_history_compactions_total",
                "counter",
                "History files merged by compaction.",
                s.compactions as f64,
            ),
            (
                "query_history_damaged_files",
                "gauge",
                "History files found damaged at start and moved aside.",
                s.damaged.len() as f64,
            ),
            (
                "query_history_bytes",
                "gauge",
                "Bytes of history files on disk.",
                self.index.bytes() as f64,
            ),
        ];
        for (name, kind, help, v) in lines {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP query_report_runs_total Report runs.\n# TYPE query_report_runs_total counter"
        );
        for (name, r) in &s.report_status {
            let _ = writeln!(
                out,
                "query_report_runs_total{{report=\"{name}\"}} {}",
                r.runs
            );
        }
        let _ = writeln!(out, "# HELP query_report_failures_total Report runs that failed.\n# TYPE query_report_failures_total counter");
        for (name, r) in &s.report_status {
            let _ = writeln!(
                out,
                "query_report_failures_total{{report=\"{name}\"}} {}",
                r.failures
            );
        }
    }
}

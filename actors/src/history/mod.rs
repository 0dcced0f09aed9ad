//! Query History and reports (LISA 2010 sections 4.3 and 5.2): old generations of chosen
//! tables, and the answers of queries run on a period, kept on the node's disk as Parquet
//! and queried as `history.<table>` and `report.<name>`.
//!
//! - [`config`]: `[history]`, `history.toml`, `reports.toml`.
//! - [`files`]: the files on disk: naming, atomic writes, compaction, recovery at start.
//! - [`index`]: which files each kept table has (shared by the writer and queries).
//! - [`writer`]: the thread that writes, compacts and deletes, fed without waiting.
//! - [`keeper`]: the actor that decides what is kept when, and runs the reports.
//! - [`provider`]: the `history` and `report` schemas of every snapshot.
//! - [`status`], [`tables`]: what history is doing (`/metrics`, `/health`, `query_history`).

pub mod config;
pub mod files;
pub mod index;
pub mod keeper;
pub mod provider;
pub mod status;
pub mod tables;
pub mod writer;

use std::sync::Arc;

pub use config::{HistoryConfig, ReportDef};
pub use index::HistoryIndex;
pub use keeper::HistoryKeeper;
pub use provider::HistorySchema;
pub use status::{HistoryShared, ReportStatus};
pub use writer::Writer;

use crate::error::ConfigError;

/// The schema names history tables live under.
pub const SCHEMAS: [&str; 2] = ["history", "report"];

/// Opens the history folder (damaged files moved aside and reported, interrupted writes
/// and compacted-away files deleted) and starts the writer.
pub fn open(config: HistoryConfig) -> Result<(Arc<HistoryShared>, Writer), ConfigError> {
    let opened = files::open_dir(&config.dir).map_err(|e| ConfigError::Invalid {
        what: format!("[history] dir {}", config.dir.display()),
        message: e.to_string(),
    })?;
    tracing::info!(
        dir = %config.dir.display(),
        tables = opened.tables.len(),
        damaged = opened.damaged.len(),
        interrupted_writes = opened.interrupted,
        compacted_away = opened.superseded,
        "history opened"
    );
    let index = Arc::new(HistoryIndex::new(opened.tables));
    let shared = HistoryShared::new(config, index);
    shared.lock().damaged = opened
        .damaged
        .into_iter()
        .map(|(p, e)| (p.display().to_string(), e))
        .collect();
    let writer = Writer::start(shared.clone()).map_err(|e| ConfigError::Invalid {
        what: "[history]".into(),
        message: format!("cannot start the history writer: {e}"),
    })?;
    Ok((shared, writer))
}

/// The name a table of the history schemas goes by (`history.sys`, `report.hits`): kept
/// history is not the live table (nothing is requested below for it, and it is listed
/// apart). None for a table of any other schema.
pub fn qualified_name(schema: Option<&str>, table: &str) -> Option<String> {
    let schema = schema?.to_ascii_lowercase();
    SCHEMAS
        .contains(&schema.as_str())
        .then(|| format!("{schema}.{table}"))
}

/// `history.sys` → `sys` (a token that may read a table may read its history); None for
/// other names.
pub fn live_table_of(name: &str) -> Option<&str> {
    name.strip_prefix("history.")
}

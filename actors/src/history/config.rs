//! History configuration: the node's `[history]` section (where the files are kept, disk
//! limits) and the two files it names, reloaded when edited: `history.toml` (which published
//! tables are kept, how often, how long) and `reports.toml` (queries run on a period whose
//! answers are kept and drawn).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{ConfigError, ConfigResult};

/// `[history]` in a node's config: present on a node that answers SQL, it keeps history.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// Where the Parquet files are kept (one folder per table).
    pub dir: PathBuf,
    /// Which published tables to keep (`ops/history.toml`); none if absent.
    #[serde(default)]
    pub tables: Option<PathBuf>,
    /// The reports (`ops/reports.toml`); none if absent.
    #[serde(default)]
    pub reports: Option<PathBuf>,
    /// Files of one window of this length are compacted into one, once the window is over.
    #[serde(default = "default_compact_window", with = "humantime_serde")]
    pub compact_window: Duration,
    /// History pauses once its files take this many bytes (0: no cap).
    #[serde(default = "default_max_disk_bytes")]
    pub max_disk_bytes: u64,
    /// History pauses while the file system has less than this free.
    #[serde(default = "default_min_free_bytes")]
    pub min_free_bytes: u64,
    /// Writes waiting for the writer at most; a generation that finds the queue full is not
    /// kept (counted, and history reports itself paused) instead of delaying anything.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// How often retention and compaction run.
    #[serde(default = "default_maintain_every", with = "humantime_serde")]
    pub maintain_every: Duration,
    /// Files replaced by compaction or past retention are deleted this long after, so
    /// queries planned on them finish first.
    #[serde(default = "default_delete_grace", with = "humantime_serde")]
    pub delete_grace: Duration,
}

fn default_compact_window() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_disk_bytes() -> u64 {
    50 << 30
}
fn default_min_free_bytes() -> u64 {
    1 << 30
}
fn default_queue() -> usize {
    4
}
fn default_maintain_every() -> Duration {
    Duration::from_secs(10)
}
fn default_delete_grace() -> Duration {
    Duration::from_secs(120)
}

impl HistoryConfig {
    pub fn resolve(&mut self, base: &Path) {
        let paths = [
            Some(&mut self.dir),
            self.tables.as_mut(),
            self.reports.as_mut(),
        ];
        for p in paths.into_iter().flatten() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    pub fn validate(&self) -> ConfigResult<()> {
        let bad = |what: &str, message: &str| ConfigError::Invalid {
            what: format!("[history] {what}"),
            message: message.into(),
        };
        if self.compact_window < Duration::from_secs(1) {
            return Err(bad("compact_window", "must be at least 1s"));
        }
        if self.maintain_every < Duration::from_millis(100) {
            return Err(bad("maintain_every", "must be at least 100ms"));
        }
        if self.queue == 0 {
            return Err(bad("queue", "must be at least 1"));
        }
        Ok(())
    }
}

/// One `[[table]]` of `history.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeptTable {
    /// A published table (it must have a schema).
    pub name: String,
    /// Keep every Kth generation (by round number, so every node keeps the same ones).
    #[serde(default = "one")]
    pub every: u32,
    /// Files older than this are deleted.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

fn one() -> u32 {
    1
}

/// `history.toml`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryFile {
    #[serde(default)]
    pub table: Vec<KeptTable>,
}

/// One `[[report]]` of `reports.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReportDef {
    /// Its answers are the table `report.<name>`.
    pub name: String,
    #[serde(default)]
    pub title: Option<String>,
    pub sql: String,
    /// How often it runs (on the first generation of each period).
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// The column whose values are the lines of its graph (none: one line per value).
    #[serde(default)]
    pub series: Option<String>,
    /// The numeric columns drawn.
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub unit: Option<String>,
}

/// `reports.toml`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportsFile {
    #[serde(default)]
    pub report: Vec<ReportDef>,
}

/// A table name that is also a safe folder name.
pub fn is_identifier(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl HistoryFile {
    /// Names unique and known (`has_schema`), periods and retention above zero.
    pub fn validate(&self, has_schema: impl Fn(&str) -> bool) -> Result<(), String> {
        let mut seen = BTreeSet::new();
        for t in &self.table {
            if !is_identifier(&t.name) {
                return Err(format!("table '{}': not a table name", t.name));
            }
            if !has_schema(&t.name) {
                return Err(format!("table '{}' has no schema (schemas/*.toml)", t.name));
            }
            if !seen.insert(&t.name) {
                return Err(format!("table '{}' is listed twice", t.name));
            }
            if t.every == 0 {
                return Err(format!("table '{}': every must be at least 1", t.name));
            }
            if t.retention.is_zero() {
                return Err(format!("table '{}': retention must be above zero", t.name));
            }
        }
        Ok(())
    }
}

impl ReportsFile {
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = BTreeSet::new();
        for r in &self.report {
            if !is_identifier(&r.name) {
                return Err(format!(
                    "report '{}': a name is letters, digits and _ (64 at most), starting with a letter",
                    r.name
                ));
            }
            if !seen.insert(&r.name) {
                return Err(format!("report '{}' is defined twice", r.name));
            }
            if r.every < Duration::from_secs(1) {
                return Err(format!("report '{}': every must be at least 1s", r.name));
            }
            if r.retention.is_zero() {
                return Err(format!("report '{}': retention must be above zero", r.name));
            }
            if r.sql.trim().is_empty() {
                return Err(format!("report '{}': sql is empty", r.name));
            }
        }
        Ok(())
    }
}

pub fn load_history_file(path: &Path) -> ConfigResult<HistoryFile> {
    crate::config::read_toml(path)
}

pub fn load_reports_file(path: &Path) -> ConfigResult<ReportsFile> {
    let file: ReportsFile = crate::config::read_toml(path)?;
    file.validate().map_err(|message| ConfigError::Invalid {
        what: path.display().to_string(),
        message,
    })?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_files_parse() {
        let ops = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops");
        let h = load_history_file(&ops.join("history.toml")).expect("history.toml");
        h.validate(|_| true).expect("valid");
        assert!(h.table.iter().any(|t| t.name == "sys"));
        let r = load_reports_file(&ops.join("reports.toml")).expect("reports.toml");
        assert!(r.report.len() >= 3);
    }

    #[test]
    fn bad_definitions_are_named() {
        let f: HistoryFile = toml::from_str(
            "[[table]]\nname = \"sys\"\nretention = \"1d\"\n[[table]]\nname = \"sys\"\nretention = \"1d\"\n",
        )
        .expect("parses");
        assert!(f
            .validate(|_| true)
            .err()
            .unwrap_or_default()
            .contains("twice"));
        let f: HistoryFile =
            toml::from_str("[[table]]\nname = \"nope\"\nretention = \"1d\"\n").expect("parses");
        assert!(f
            .validate(|n| n == "sys")
            .err()
            .unwrap_or_default()
            .contains("no schema"));
        let r: ReportsFile = toml::from_str(
            "[[report]]\nname = \"a-b\"\nsql = \"SELECT 1\"\nevery = \"1m\"\nretention = \"1d\"\n",
        )
        .expect("parses");
        assert!(r.validate().err().unwrap_or_default().contains("letters"));
        assert!(toml::from_str::<ReportsFile>("[[report]]\nname = \"a\"\nsqll = \"x\"\n").is_err());
    }
}

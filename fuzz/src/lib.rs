//! Fuzzing harness for what a node reads from others (issue 11): publish lines from local
//! publishers, frames from link peers, and SQL from clients.
//!
//! Stable Rust only (no libFuzzer): each target generates its inputs from a seeded RNG,
//! structured (valid lines, frames and SQL built from the real schemas, encoder and
//! snapshot) and then mutated (flipped bytes, truncations, splices, huge numbers, deep
//! nesting, invalid UTF-8). Input `i` of seed `s` is always the same bytes, so a crash is
//! reproduced with `queryfuzz --target T --seed s --start i --inputs 1`.
//!
//! - [`runner`]: runs a target's inputs, catches panics, counts outcomes, samples RSS.
//! - [`supervise`]: runs the runner in a child process, so an abort (stack overflow,
//!   allocation failure) is recorded with its input and the run goes on after it.
//! - [`mutate`]: byte-level mutations shared by the targets.
//! - [`publish`], [`frame`], [`sql`]: the three targets.

pub mod frame;
pub mod mutate;
pub mod publish;
pub mod runner;
pub mod sql;
pub mod supervise;

use std::path::PathBuf;

pub use runner::{run, Finding, Outcome, Report, RunConfig, Target};

/// The repository root (schemas, fixtures, static tables and views are read from it).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The targets by name, as `--target` takes them.
pub const TARGETS: [&str; 3] = ["publish", "frame", "sql"];

/// Settings of the SQL target (the others need none).
#[derive(Debug, Clone)]
pub struct SqlSettings {
    pub gen: sql::GenLimits,
    /// Per-query time limit.
    pub timeout: std::time::Duration,
}

impl Default for SqlSettings {
    fn default() -> Self {
        SqlSettings {
            gen: sql::GenLimits::moderate(),
            timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// Builds the target named `name`.
pub fn make_target(name: &str, sql: &SqlSettings) -> Result<Box<dyn Target>, String> {
    match name {
        "publish" => Ok(Box::new(publish::PublishTarget::new()?)),
        "frame" => Ok(Box::new(frame::FrameTarget::new()?)),
        "sql" => Ok(Box::new(sql::SqlTarget::new(sql.clone())?)),
        other => Err(format!(
            "unknown target '{other}' (one of {})",
            TARGETS.join(", ")
        )),
    }
}

//! Generations: immutable, near-synchronous snapshots of a node's published tables.
//!
//! A generation is sealed once and never changed; the node swaps the whole generation when
//! it installs the next one, so every query reads exactly one generation.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

/// One contributor to a table in a generation: a machine (or publisher on it) and when it
/// published its copy. The age of every row is known from these.
#[derive(Debug, Clone)]
pub struct SourceStamp {
    pub source: String,
    pub published_at: SystemTime,
}

/// A published table as it stands in one generation.
#[derive(Debug, Clone)]
pub struct GenTable {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub sources: Vec<SourceStamp>,
}

impl GenTable {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }

    /// Publish time of the oldest source: the table is at most this old.
    pub fn oldest_publish(&self) -> Option<SystemTime> {
        self.sources.iter().map(|s| s.published_at).min()
    }
}

#[derive(Debug)]
pub struct Generation {
    pub id: u64,
    pub sealed_at: SystemTime,
    pub tables: BTreeMap<String, GenTable>,
    /// Sources whose input was refused for this generation (source → why); their last good
    /// rows, if any, are in `tables`.
    pub errors: BTreeMap<String, String>,
}

impl Generation {
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.sealed_at).unwrap_or_default()
    }
}

/// Collects tables for the next generation; several sources may add rows to one table.
#[derive(Default)]
pub struct GenerationBuilder {
    tables: BTreeMap<String, GenTable>,
    errors: BTreeMap<String, String>,
}

impl GenerationBuilder {
    /// Adds rows of `table` from one or more sources (a simulated fleet sends a whole
    /// fleet's rows in one batch). Batches must share the table's schema; a batch with
    /// another schema is refused (the caller logs it), leaving the table as it was.
    pub fn add(
        &mut self,
        table: &str,
        batch: RecordBatch,
        sources: Vec<SourceStamp>,
    ) -> Result<(), String> {
        match self.tables.get_mut(table) {
            Some(t) => {
                if t.schema != batch.schema() {
                    return Err(format!(
                        "table '{table}' arrived with a schema unlike the other sources'"
                    ));
                }
                t.batches.push(batch);
                t.sources.extend(sources);
            }
            None => {
                self.tables.insert(
                    table.to_string(),
                    GenTable {
                        schema: batch.schema(),
                        batches: vec![batch],
                        sources,
                    },
                );
            }
        }
        Ok(())
    }

    /// Records that a source's input was refused this round.
    pub fn error(&mut self, source: String, message: String) {
        self.errors.insert(source, message);
    }

    /// Seals the generation. Empty batches are dropped but their sources are kept: a
    /// machine that published zero rows still counts as having published.
    pub fn seal(mut self, id: u64, sealed_at: SystemTime) -> Arc<Generation> {
        for t in self.tables.values_mut() {
            t.batches.retain(|b| b.num_rows() > 0);
        }
        Arc::new(Generation {
            id,
            sealed_at,
            tables: self.tables,
            errors: self.errors,
        })
    }
}

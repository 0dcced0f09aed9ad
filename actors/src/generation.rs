//! Generations: immutable, near-synchronous snapshots of a node's published tables.
//!
//! A generation is sealed once and never changed; the node swaps the whole generation when
//! it installs the next one, so every query reads exactly one generation.

use std::collections::{BTreeMap, HashMap};
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

/// The rows one producer contributed to a table: a publisher on a machine, a dropped file,
/// a simulated fleet. Parts are what links diff: a part unchanged since the last generation
/// costs nothing to send again.
#[derive(Debug, Clone)]
pub struct Part {
    /// Unique within the table, stable across generations (`10.0.0.7/nginx-stats`).
    pub key: String,
    pub batch: RecordBatch,
    /// Machines behind these rows and when each published (one, except for a simulated
    /// fleet, which sends a whole fleet in one part).
    pub sources: Vec<SourceStamp>,
}

/// A published table as it stands in one generation. A table with no parts is still
/// present: every source below was asked for it and has none (an empty answer, not a
/// missing table).
#[derive(Debug, Clone)]
pub struct GenTable {
    pub schema: SchemaRef,
    pub parts: Vec<Part>,
}

impl GenTable {
    pub fn rows(&self) -> usize {
        self.parts.iter().map(|p| p.batch.num_rows()).sum()
    }

    pub fn batches(&self) -> impl Iterator<Item = &RecordBatch> {
        self.parts.iter().map(|p| &p.batch)
    }

    pub fn sources(&self) -> impl Iterator<Item = &SourceStamp> {
        self.parts.iter().flat_map(|p| p.sources.iter())
    }

    pub fn source_count(&self) -> usize {
        self.parts.iter().map(|p| p.sources.len()).sum()
    }

    /// Publish time of the oldest source: the table is at most this old.
    pub fn oldest_publish(&self) -> Option<SystemTime> {
        self.sources().map(|s| s.published_at).min()
    }

    /// Publish time of the newest source: how fresh the freshest rows are.
    pub fn newest_publish(&self) -> Option<SystemTime> {
        self.sources().map(|s| s.published_at).max()
    }
}

#[derive(Debug)]
pub struct Generation {
    /// Monotonic per node.
    pub id: u64,
    /// The interval this generation belongs to (start of the interval / interval length):
    /// the same number at every tier for the same round, so a parent knows whether a child
    /// has delivered this round yet.
    pub round: u64,
    /// The TLA's round this generation serves, what answers state: a SQL node's is the
    /// round of the TLA generation it merged (its own `round` follows its clock, which
    /// need not match when the TLA is late); every other node's is its own `round`.
    pub tla_round: u64,
    pub sealed_at: SystemTime,
    pub tables: BTreeMap<String, GenTable>,
    /// Sources whose input was refused for this generation (source → why); their last good
    /// rows, if any, are in `tables`.
    pub errors: BTreeMap<String, String>,
    /// Machines and clusters behind this generation (what a TLA advertises).
    pub machines: u64,
    pub clusters: u64,
}

impl Generation {
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.sealed_at).unwrap_or_default()
    }
}

/// `table` in `tables`, created empty with `schema` if new.
fn table_entry<'a>(
    tables: &'a mut BTreeMap<String, GenTable>,
    table: &str,
    schema: &SchemaRef,
) -> &'a mut GenTable {
    tables.entry(table.to_string()).or_insert_with(|| GenTable {
        schema: schema.clone(),
        parts: Vec::new(),
    })
}

/// Collects tables for the next generation; several sources may add rows to one table.
#[derive(Default)]
pub struct GenerationBuilder {
    tables: BTreeMap<String, GenTable>,
    /// Per table, where each part key stands in its parts: a TLA adds 70,000 parts to a
    /// table, so finding a key must not mean scanning them.
    positions: HashMap<String, HashMap<String, usize>>,
    errors: BTreeMap<String, String>,
    machines: u64,
    clusters: u64,
    tla_round: Option<u64>,
}

impl GenerationBuilder {
    /// Adds one part of `table`. Parts must share the table's schema; a part with another
    /// schema is refused (the caller logs it), leaving the table as it was. A second part
    /// with the same key replaces the first.
    pub fn add(&mut self, table: &str, part: Part) -> Result<(), String> {
        let schema = part.batch.schema();
        let t = table_entry(&mut self.tables, table, &schema);
        if !Arc::ptr_eq(&t.schema, &schema) && t.schema != schema {
            return Err(format!(
                "table '{table}' arrived with a schema unlike the other sources'"
            ));
        }
        let positions = self.positions.entry(table.to_string()).or_insert_with(|| {
            t.parts
                .iter()
                .enumerate()
                .map(|(i, p)| (p.key.clone(), i))
                .collect()
        });
        match positions.get(&part.key) {
            Some(&i) => t.parts[i] = part,
            None => {
                positions.insert(part.key.clone(), t.parts.len());
                t.parts.push(part);
            }
        }
        Ok(())
    }

    /// Makes `table` present in the generation even if no part arrives (asked for, empty).
    pub fn declare(&mut self, table: &str, schema: SchemaRef) -> &mut GenTable {
        table_entry(&mut self.tables, table, &schema)
    }

    /// Puts a whole table as it stood elsewhere (a parent carrying a table from its last
    /// complete round).
    pub fn put(&mut self, table: &str, t: GenTable) {
        self.positions.remove(table);
        self.tables.insert(table.to_string(), t);
    }

    /// Leaves `table` out of the generation.
    pub fn remove(&mut self, table: &str) {
        self.positions.remove(table);
        self.tables.remove(table);
    }

    pub fn has(&self, table: &str) -> bool {
        self.tables.contains_key(table)
    }

    /// How many machines and clusters stand behind this generation.
    pub fn counts(&mut self, machines: u64, clusters: u64) {
        self.machines = machines;
        self.clusters = clusters;
    }

    /// The TLA round served (a SQL node: its TLA's generation's); without it, the round
    /// the generation is sealed with.
    pub fn tla_round(&mut self, round: Option<u64>) {
        self.tla_round = round;
    }

    /// Records that a source's input was refused this round.
    pub fn error(&mut self, source: String, message: String) {
        self.errors.insert(source, message);
    }

    /// Seals the generation.
    pub fn seal(self, id: u64, round: u64, sealed_at: SystemTime) -> Arc<Generation> {
        Arc::new(Generation {
            id,
            round,
            tla_round: self.tla_round.unwrap_or(round),
            sealed_at,
            tables: self.tables,
            errors: self.errors,
            machines: self.machines,
            clusters: self.clusters,
        })
    }
}

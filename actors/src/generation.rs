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
///
/// The name is shared by every stamp of the source (`Arc`): a part re-stamped each round
/// copies a pointer, not the name.
#[derive(Debug, Clone)]
pub struct SourceStamp {
    pub source: Arc<str>,
    pub published_at: SystemTime,
}

/// A part's sources: one (a machine) held inline in the part, more (a simulated fleet
/// sends a whole fleet in one part) on the heap.
pub type PartSources = smallvec::SmallVec<[SourceStamp; 1]>;

/// The rows one producer contributed to a table: a publisher on a machine, a dropped file,
/// a simulated fleet. Parts are what links diff: a part unchanged since the last generation
/// costs nothing to send again.
///
/// Its key and rows ([`PartBody`], read through `Deref`: `part.key`, `part.batch`) are
/// shared with the part it was stamped from: a machine that publishes the same rows again
/// moves only its sources' times, and every machine does so every round, so a link decoder
/// re-stamps nearly every part of a generation (420,000 a round at a TLA or SQL node of
/// 70,000 machines). Shared, a re-stamped part is one allocation (the part, its source
/// inline with a shared name) rather than five (its key, column list, list of sources and
/// source name again).
#[derive(Debug, Clone)]
pub struct Part {
    body: Arc<PartBody>,
    /// Machines behind these rows and when each published (one, except for a simulated
    /// fleet, which sends a whole fleet in one part).
    pub sources: PartSources,
}

/// A part's key and rows.
#[derive(Debug)]
pub struct PartBody {
    /// Unique within the table, stable across generations (`10.0.0.7/nginx-stats`).
    pub key: String,
    pub batch: RecordBatch,
}

impl Part {
    pub fn new(key: String, batch: RecordBatch, sources: impl Into<PartSources>) -> Self {
        Part {
            body: Arc::new(PartBody { key, batch }),
            sources: sources.into(),
        }
    }

    /// The same key and rows with other sources (their times moved).
    pub fn restamped(&self, sources: PartSources) -> Self {
        Part {
            body: self.body.clone(),
            sources,
        }
    }
}

impl std::ops::Deref for Part {
    type Target = PartBody;

    fn deref(&self) -> &PartBody {
        &self.body
    }
}

/// A published table as it stands in one generation. A table with no parts is still
/// present: every source below was asked for it and has none (an empty answer, not a
/// missing table).
///
/// Parts are shared, not copied, between the generations and tables that hold them: a
/// parent's merge puts every child's parts in its generation each round (420,000 at a
/// TLA of 70,000 machines), and a re-stamped part is one allocation (its source inline, its
/// key, rows and source name shared, [`Part`]).
#[derive(Debug, Clone)]
pub struct GenTable {
    pub schema: SchemaRef,
    pub parts: Vec<Arc<Part>>,
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
    /// The Arrow memory of the generation's parts: every array's buffers and structs, an
    /// allocation shared by several arrays counted once (the columns of a part patched from
    /// the link share one; the parts received in one block, `link::diff::blocks`, share
    /// the block's), as `get_array_memory_size` would count each apart. Parts shared with
    /// other generations are counted here too: this is what the generation holds, not what
    /// it added.
    pub fn arrow_bytes(&self) -> usize {
        let mut counter = ArrowBytes::default();
        self.tables
            .values()
            .flat_map(|t| t.batches())
            .map(|b| counter.batch(b))
            .sum()
    }

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

/// A map keyed by part keys or source names, on the paths every generation takes for every
/// machine (the generation builder, link encoders and decoders): foldhash, randomly seeded,
/// where SipHash was 3% of a TLA's samples (`tla-merge` at 70,000 machines). foldhash does
/// not claim resistance to HashDoS by an interactive attacker; these names come from the
/// node's own children (authenticated tiers of the same deployment), not from clients.
pub type NameMap<V> = HashMap<String, V, NameHasher>;

/// The hasher of [`NameMap`].
pub type NameHasher = foldhash::fast::RandomState;

/// Collects tables for the next generation; several sources may add rows to one table.
#[derive(Default)]
pub struct GenerationBuilder {
    tables: BTreeMap<String, GenTable>,
    /// Per table, where each part key stands in its parts: a TLA adds 70,000 parts to a
    /// table, so finding a key must not mean scanning them.
    positions: HashMap<String, NameMap<usize>>,
    errors: BTreeMap<String, String>,
    machines: u64,
    clusters: u64,
    tla_round: Option<u64>,
}

impl GenerationBuilder {
    /// Adds one part of `table`. Parts must share the table's schema; a part with another
    /// schema is refused (the caller logs it), leaving the table as it was. A second part
    /// with the same key replaces the first.
    pub fn add(&mut self, table: &str, part: impl Into<Arc<Part>>) -> Result<(), String> {
        let part = part.into();
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

/// Counts batches' Arrow memory, each allocation once however many batches hold it.
#[derive(Default)]
struct ArrowBytes {
    /// Every allocation counted so far (its start).
    seen: std::collections::HashSet<usize, NameHasher>,
    /// The previous batch's allocations, sorted: the parts of one block come one after
    /// another, so most of a batch's allocations are found here without hashing.
    previous: Vec<(usize, usize)>,
    scratch: Vec<(usize, usize)>,
}

impl ArrowBytes {
    /// The Arrow memory of `batch` not counted before.
    fn batch(&mut self, batch: &RecordBatch) -> usize {
        let structs = batch_buffers(batch, &mut self.scratch);
        let mut bytes = structs;
        for &(ptr, cap) in &self.scratch {
            let before = self
                .previous
                .binary_search_by_key(&ptr, |&(p, _)| p)
                .is_ok();
            if !before && self.seen.insert(ptr) {
                bytes += cap;
            }
        }
        std::mem::swap(&mut self.previous, &mut self.scratch);
        bytes
    }
}

/// One batch's allocations into `scratch` (start, capacity; sorted, each once); returns the
/// bytes of its arrays' structs.
fn batch_buffers(batch: &RecordBatch, scratch: &mut Vec<(usize, usize)>) -> usize {
    use datafusion::arrow::array::{Array, ArrayData, AsArray};
    use datafusion::arrow::buffer::Buffer;
    use datafusion::arrow::datatypes::{
        DataType, Float64Type, Int64Type, TimeUnit, TimestampMillisecondType,
    };
    fn push(out: &mut Vec<(usize, usize)>, b: &Buffer) {
        out.push((b.data_ptr().as_ptr() as usize, b.capacity()));
    }
    fn all(d: &ArrayData, out: &mut Vec<(usize, usize)>) {
        d.buffers().iter().for_each(|b| push(out, b));
        if let Some(n) = d.nulls() {
            push(out, n.inner().inner());
        }
        d.child_data().iter().for_each(|c| all(c, out));
    }
    scratch.clear();
    let mut structs = 0;
    for col in batch.columns() {
        structs += col
            .get_array_memory_size()
            .saturating_sub(col.get_buffer_memory_size());
        // The table model's types without allocating; anything else through its data.
        let values = match col.data_type() {
            DataType::Int64 => col.as_primitive::<Int64Type>().values().inner(),
            DataType::Float64 => col.as_primitive::<Float64Type>().values().inner(),
            DataType::Timestamp(TimeUnit::Millisecond, _) => col
                .as_primitive::<TimestampMillisecondType>()
                .values()
                .inner(),
            DataType::Boolean => col.as_boolean().values().inner(),
            DataType::Utf8 => {
                let s = col.as_string::<i32>();
                push(scratch, s.offsets().inner().inner());
                s.values()
            }
            _ => {
                all(&col.to_data(), scratch);
                continue;
            }
        };
        push(scratch, values);
        if let Some(n) = col.nulls() {
            push(scratch, n.inner().inner());
        }
    }
    scratch.sort_unstable();
    scratch.dedup_by_key(|(ptr, _)| *ptr);
    structs
}

#[cfg(test)]
mod arrow_bytes_tests {
    use datafusion::arrow::array::{Array, ArrayRef, Int64Array, StringArray};
    use datafusion::arrow::buffer::{Buffer, ScalarBuffer};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn generation(batch: RecordBatch) -> Generation {
        let mut b = GenerationBuilder::default();
        let part = Part::new("m".into(), batch, Vec::new());
        b.add("t", part).expect("part");
        Arc::try_unwrap(b.seal(1, 1, SystemTime::now())).expect("one owner")
    }

    #[test]
    fn arrow_bytes_count_a_buffer_shared_by_columns_once() {
        // Two columns slicing one allocation, as a part decoded from the link does.
        let shared = Buffer::from_vec((0..1024i64).collect::<Vec<_>>());
        let a = Int64Array::new(ScalarBuffer::new(shared.clone(), 0, 512), None);
        let b = Int64Array::new(ScalarBuffer::new(shared, 512, 512), None);
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Int64, false),
        ]));
        let columns: Vec<ArrayRef> = vec![Arc::new(a), Arc::new(b)];
        let batch = RecordBatch::try_new(schema, columns).expect("batch");
        let apart: usize = batch
            .columns()
            .iter()
            .map(|c| c.get_array_memory_size())
            .sum();
        let g = generation(batch);
        assert!(
            g.arrow_bytes() >= 8 * 1024,
            "the buffer counts: {}",
            g.arrow_bytes()
        );
        assert!(
            g.arrow_bytes() < apart,
            "shared once ({}) not twice ({apart})",
            g.arrow_bytes()
        );
    }

    /// Parts sliced out of one block count the block once, however far apart they are.
    #[test]
    fn arrow_bytes_count_a_block_shared_by_parts_once() {
        let block = RecordBatch::try_from_iter([(
            "n",
            Arc::new(Int64Array::from_iter_values(0..1024)) as ArrayRef,
        )])
        .expect("batch");
        let alone = generation(block.clone()).arrow_bytes();
        let other = RecordBatch::try_from_iter([(
            "n",
            Arc::new(Int64Array::from_iter_values(0..16)) as ArrayRef,
        )])
        .expect("batch");
        let mut b = GenerationBuilder::default();
        for (i, rows) in [block.slice(0, 100), other.clone(), block.slice(100, 924)]
            .into_iter()
            .enumerate()
        {
            b.add("t", Part::new(format!("m{i}"), rows, Vec::new()))
                .expect("part");
        }
        let g = b.seal(1, 1, SystemTime::now());
        let other_bytes = generation(other).arrow_bytes();
        let structs =
            block.column(0).get_array_memory_size() - block.column(0).get_buffer_memory_size();
        // The block's buffer once, the other part's, and a struct per slice.
        assert_eq!(g.arrow_bytes(), alone + other_bytes + structs);
    }

    #[test]
    fn arrow_bytes_of_separate_columns_match_arrow() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Utf8, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![Some(1), None, Some(3)])),
            Arc::new(StringArray::from(vec!["x", "yy", "zzz"])),
        ];
        let batch = RecordBatch::try_new(schema, columns).expect("batch");
        let apart: usize = batch
            .columns()
            .iter()
            .map(|c| c.get_array_memory_size())
            .sum();
        assert_eq!(generation(batch).arrow_bytes(), apart);
    }
}

#[cfg(test)]
mod part_size_tests {
    use super::*;

    /// A part re-stamped each round is one allocation: its source inline, its name shared.
    #[test]
    fn a_part_holds_one_source_inline() {
        let batch = RecordBatch::new_empty(Arc::new(datafusion::arrow::datatypes::Schema::empty()));
        let name: Arc<str> = Arc::from("10.0.0.7");
        let part = Part::new(
            "10.0.0.7/sys".into(),
            batch,
            vec![SourceStamp {
                source: name.clone(),
                published_at: SystemTime::UNIX_EPOCH,
            }],
        );
        let moved = part.restamped(PartSources::from_iter(part.sources.iter().map(|s| {
            SourceStamp {
                source: s.source.clone(),
                published_at: s.published_at + Duration::from_secs(20),
            }
        })));
        assert!(!moved.sources.spilled(), "one source is held inline");
        assert!(
            Arc::ptr_eq(&moved.sources[0].source, &name),
            "the name is shared"
        );
        // Its body, then the source (name and time) and the inline vector's length.
        assert!(
            std::mem::size_of::<Part>() <= 56,
            "{}",
            std::mem::size_of::<Part>()
        );
    }
}

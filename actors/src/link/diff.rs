//! A generation to a [`GenerationFrame`] against what the parent already holds, and back.
//!
//! The child keeps one [`LinkEncoder`] per connected parent, the parent one [`LinkDecoder`]
//! per child link. The encoder keeps a mirror of what the parent holds per (table, part key),
//! updated exactly as the decoder updates its copy, so each part is sent as:
//!
//! - `Full`: the first time on the link (or after [`LinkEncoder::reset`], a schema change, or
//!   when a diff would not be smaller);
//! - `Unchanged`: the rows equal what the parent holds (same Arrow buffers, equal content,
//!   or the same rows in another order);
//! - `Diff { removed, added }`: rows compared in Arrow's row format as a multiset (duplicate
//!   rows are legal). The parent's rows become **its old rows without the removed indexes,
//!   in their order, followed by the added rows**, so after a diff the parent may hold a
//!   part's rows in another order than the child; as a multiset they are equal.
//!
//! Parts and tables that disappear are simply not listed. Rows and schemas travel as Arrow
//! IPC messages (8-byte alignment: the default 64 would pad every buffer of a one-row part).
//!
//! After any error the two sides are out of step: the encoder resets itself (its next frame
//! is full); a decoder refuses anything but a full frame until it gets one, so the caller
//! should drop the link (and its decoder) and dial again, which starts with a full frame.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use datafusion::arrow::array::{ArrayRef, BooleanArray, UInt32Array};
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::compute::{concat_batches, filter_record_batch, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::arrow::ipc::convert::fb_to_schema;
use datafusion::arrow::ipc::reader::{read_dictionary, read_record_batch};
use datafusion::arrow::ipc::writer::{
    write_message, DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions,
};
use datafusion::arrow::ipc::{root_as_message, MessageHeader, MetadataVersion};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, Rows, SortField};

use super::wire::{GenerationFrame, PartFrame, PartRows, TableFrame};
use super::LinkError;
use crate::generation::{GenTable, Generation, Part, SourceStamp};
use crate::table::unix_millis;

// ---------------------------------------------------------------------------------------
// Child side
// ---------------------------------------------------------------------------------------

/// Turns a child's generations into frames for one parent (one encoder per connection).
pub struct LinkEncoder {
    /// The next frame is full: a new connection, or after [`LinkEncoder::reset`] or an error.
    full_next: bool,
    /// What the parent holds, per table, as of the last frame encoded.
    tables: HashMap<String, TableMirror>,
    ipc: IpcWriter,
}

struct TableMirror {
    schema: SchemaRef,
    /// Row-format converter for diffs: made on the first diff; `None` inside when the
    /// schema has a type the row format cannot compare (such tables are sent `Full`).
    converter: Option<Option<RowConverter>>,
    parts: HashMap<String, PartMirror>,
}

struct PartMirror {
    /// The child's rows as last encoded: unchanged parts are found by comparing with this.
    last: RecordBatch,
    /// The parent's rows in the parent's order, in row format; `None` while they are
    /// exactly `last` (until the first diff, so parts that never change cost no conversion).
    held: Option<Rows>,
}

impl Default for LinkEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl LinkEncoder {
    pub fn new() -> Self {
        LinkEncoder {
            full_next: true,
            tables: HashMap::new(),
            ipc: IpcWriter::new(),
        }
    }

    /// Forgets what the parent holds: the next frame is full (a reconnection, or a parent
    /// that lost its copy).
    pub fn reset(&mut self) {
        self.full_next = true;
        self.tables.clear();
    }

    /// The frame for `g`: the tables in both `wanted` and `g`, each part as full rows, unchanged,
    /// or a diff against what this encoder's previous frames gave the parent. `machines` and
    /// `clusters` are what the child sees below it. On error the encoder resets (the frame was
    /// not produced, so the parent's copy is unknown).
    pub fn encode(
        &mut self,
        g: &Generation,
        wanted: &BTreeSet<String>,
        machines: u64,
        clusters: u64,
    ) -> Result<GenerationFrame, LinkError> {
        let full = self.full_next;
        if full {
            self.tables.clear();
        }
        match self.encode_tables(g, wanted) {
            Ok(tables) => {
                self.full_next = false;
                Ok(GenerationFrame {
                    id: g.id,
                    round: g.round,
                    sealed_at_ms: unix_millis(g.sealed_at),
                    full,
                    tables,
                    errors: g
                        .errors
                        .iter()
                        .map(|(s, m)| (s.clone(), m.clone()))
                        .collect(),
                    machines,
                    clusters,
                })
            }
            Err(e) => {
                self.reset();
                Err(e)
            }
        }
    }

    fn encode_tables(
        &mut self,
        g: &Generation,
        wanted: &BTreeSet<String>,
    ) -> Result<Vec<TableFrame>, LinkError> {
        let mut frames = Vec::new();
        let mut next = HashMap::new();
        for (name, table) in g.tables.iter().filter(|(n, _)| wanted.contains(*n)) {
            let (mut mirror, schema) = match self.tables.remove(name) {
                Some(m) if m.schema == table.schema => (m, None),
                // New on this link, or its schema changed: the parent's rows of the old
                // schema are of no use, every part goes in full.
                _ => (
                    TableMirror {
                        schema: table.schema.clone(),
                        converter: None,
                        parts: HashMap::new(),
                    },
                    Some(self.ipc.schema(&table.schema)?),
                ),
            };
            let mut parts = Vec::with_capacity(table.parts.len());
            let mut next_parts = HashMap::with_capacity(table.parts.len());
            for p in &table.parts {
                if !Arc::ptr_eq(p.batch.schema_ref(), &table.schema)
                    && p.batch.schema_ref() != &table.schema
                {
                    return Err(LinkError::Protocol(format!(
                        "part '{}' of table '{name}' has a schema unlike the table's",
                        p.key
                    )));
                }
                let held = mirror.parts.remove(&p.key);
                let (rows, part_mirror) = self.encode_part(&mut mirror, held, p)?;
                if next_parts.insert(p.key.clone(), part_mirror).is_some() {
                    return Err(LinkError::Protocol(format!(
                        "table '{name}' has two parts with the key '{}'",
                        p.key
                    )));
                }
                parts.push(PartFrame {
                    key: p.key.clone(),
                    sources: p
                        .sources
                        .iter()
                        .map(|s| (s.source.clone(), unix_millis(s.published_at)))
                        .collect(),
                    rows,
                });
            }
            mirror.parts = next_parts;
            next.insert(name.clone(), mirror);
            frames.push(TableFrame {
                name: name.clone(),
                schema,
                parts,
            });
        }
        // Tables not sent are gone for the parent too.
        self.tables = next;
        Ok(frames)
    }

    fn encode_part(
        &mut self,
        table: &mut TableMirror,
        held: Option<PartMirror>,
        p: &Part,
    ) -> Result<(PartRows, PartMirror), LinkError> {
        let full = |ipc: &mut IpcWriter| -> Result<(PartRows, PartMirror), LinkError> {
            Ok((
                PartRows::Full(ipc.batch(&p.batch)?),
                PartMirror {
                    last: p.batch.clone(),
                    held: None,
                },
            ))
        };
        let Some(old) = held else {
            return full(&mut self.ipc);
        };
        if same_buffers(&old.last, &p.batch) || old.last == p.batch {
            return Ok((
                PartRows::Unchanged,
                PartMirror {
                    last: p.batch.clone(),
                    held: old.held,
                },
            ));
        }
        let converter = table.converter.get_or_insert_with(|| {
            let fields = table
                .schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect();
            RowConverter::new(fields).ok()
        });
        let Some(conv) = converter.as_ref() else {
            return full(&mut self.ipc);
        };
        // A one-row part that changed (a machine's `sys` row) cannot diff smaller than its
        // full rows: skip the row conversion.
        if p.batch.num_columns() == 0 || p.batch.num_rows() <= 1 || old.last.num_rows() == 0 {
            return full(&mut self.ipc);
        }
        let held_rows = match old.held {
            Some(rows) => rows,
            None => conv.convert_columns(old.last.columns())?,
        };
        let new_rows = conv.convert_columns(p.batch.columns())?;
        let m = match_rows(&held_rows, &new_rows);
        if m.removed.is_empty() && m.added.is_empty() {
            // Same rows in another order: the parent keeps its order.
            return Ok((
                PartRows::Unchanged,
                PartMirror {
                    last: p.batch.clone(),
                    held: Some(held_rows),
                },
            ));
        }
        if m.added.len() == new_rows.num_rows() {
            return full(&mut self.ipc);
        }
        let added_batch = take_record_batch(&p.batch, &UInt32Array::from(m.added.clone()))?;
        let added = self.ipc.batch(&added_batch)?;
        // When most rows changed a diff may be no smaller than the part: compare.
        if m.added.len() * 2 >= new_rows.num_rows() {
            let whole = self.ipc.batch(&p.batch)?;
            // Each removed index costs up to 3 bytes as a varint for parts below 2M rows.
            if whole.len() <= added.len() + 3 * m.removed.len() {
                return Ok((
                    PartRows::Full(whole),
                    PartMirror {
                        last: p.batch.clone(),
                        held: None,
                    },
                ));
            }
        }
        let mut next_held = conv.empty_rows(
            held_rows.num_rows() - m.removed.len() + m.added.len(),
            held_rows.size(),
        );
        let mut removed = m.removed.iter().peekable();
        for (i, row) in held_rows.iter().enumerate() {
            if removed.peek().is_some_and(|&&r| r as usize == i) {
                removed.next();
            } else {
                next_held.push(row);
            }
        }
        for &i in &m.added {
            next_held.push(new_rows.row(i as usize));
        }
        Ok((
            PartRows::Diff {
                removed: m.removed,
                added,
            },
            PartMirror {
                last: p.batch.clone(),
                held: Some(next_held),
            },
        ))
    }
}

/// Both batches are views of the same Arrow arrays (a republished, untouched copy).
fn same_buffers(a: &RecordBatch, b: &RecordBatch) -> bool {
    a.num_rows() == b.num_rows()
        && a.num_columns() == b.num_columns()
        && a.columns()
            .iter()
            .zip(b.columns())
            .all(|(x, y)| Arc::ptr_eq(x, y))
}

struct RowMatch {
    /// Indexes of held rows with no equal new row, ascending.
    removed: Vec<u32>,
    /// Indexes of new rows with no equal held row, ascending.
    added: Vec<u32>,
}

/// Pairs equal rows of `held` and `new` one to one (a multiset match: two equal held rows
/// pair with two equal new rows); what is left over is removed or added.
fn match_rows(held: &Rows, new: &Rows) -> RowMatch {
    let mut unmatched: HashMap<&[u8], Vec<u32>> = HashMap::with_capacity(held.num_rows());
    // Pushed in reverse so that pop() pairs the first equal held row first.
    for i in (0..held.num_rows()).rev() {
        unmatched
            .entry(held.row(i).data())
            .or_default()
            .push(i as u32);
    }
    let mut kept = vec![false; held.num_rows()];
    let mut added = Vec::new();
    for (i, row) in new.iter().enumerate() {
        match unmatched.get_mut(row.data()).and_then(Vec::pop) {
            Some(h) => kept[h as usize] = true,
            None => added.push(i as u32),
        }
    }
    let removed = kept
        .iter()
        .enumerate()
        .filter(|(_, &k)| !k)
        .map(|(i, _)| i as u32)
        .collect();
    RowMatch { removed, added }
}

// ---------------------------------------------------------------------------------------
// Parent side
// ---------------------------------------------------------------------------------------

/// A child's generation as the parent holds it after applying a frame.
#[derive(Debug, Clone)]
pub struct ChildGeneration {
    pub id: u64,
    pub round: u64,
    pub sealed_at: SystemTime,
    pub tables: BTreeMap<String, GenTable>,
    pub errors: Vec<(String, String)>,
    pub machines: u64,
    pub clusters: u64,
}

/// Applies a child's frames (one decoder per child link). After an error it refuses
/// anything but a full frame: drop the link and the decoder, and reconnect.
pub struct LinkDecoder {
    tables: HashMap<String, HeldTable>,
    /// Only a full frame can be applied: at start and after an error.
    needs_full: bool,
}

struct HeldTable {
    schema: SchemaRef,
    parts: HashMap<String, RecordBatch>,
}

impl Default for LinkDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl LinkDecoder {
    pub fn new() -> Self {
        LinkDecoder {
            tables: HashMap::new(),
            needs_full: true,
        }
    }

    /// Whether the next frame must be full (at start, and after an error).
    pub fn needs_full(&self) -> bool {
        self.needs_full
    }

    /// Applies `frame` to what this decoder holds and returns the child's generation.
    ///
    /// A frame that does not fit what is held (a diff or `Unchanged` for a part not held,
    /// an index out of range, a table with no known schema, rows unlike the table's schema)
    /// is a [`LinkError`]; the decoder then holds nothing and accepts only a full frame.
    /// The caller should drop it and reconnect, since the child will not send a full frame
    /// on its own.
    pub fn apply(&mut self, frame: GenerationFrame) -> Result<ChildGeneration, LinkError> {
        let result = self.apply_frame(frame);
        if result.is_err() {
            self.tables.clear();
            self.needs_full = true;
        }
        result
    }

    fn apply_frame(&mut self, frame: GenerationFrame) -> Result<ChildGeneration, LinkError> {
        if self.needs_full && !frame.full {
            return Err(LinkError::Protocol(
                "expected a full frame (first frame of a link, or after an error), got a diff frame"
                    .into(),
            ));
        }
        let mut old = std::mem::take(&mut self.tables);
        if frame.full {
            old.clear();
        }
        let mut next = HashMap::with_capacity(frame.tables.len());
        let mut out = BTreeMap::new();
        for tf in frame.tables {
            let name = tf.name;
            if out.contains_key(&name) {
                return Err(LinkError::Protocol(format!(
                    "table '{name}' is listed twice in one frame"
                )));
            }
            let prev = old.remove(&name);
            let (schema, mut held) = match (tf.schema, prev) {
                (Some(bytes), prev) => {
                    let schema =
                        decode_schema(&bytes).map_err(|e| in_table(&name, "its schema", e))?;
                    // The child sends a schema again only when it changed; if it did not,
                    // the parts held are still good.
                    let held = match prev {
                        Some(p) if p.schema == schema => p.parts,
                        _ => HashMap::new(),
                    };
                    (schema, held)
                }
                (None, Some(prev)) => (prev.schema, prev.parts),
                (None, None) => {
                    return Err(LinkError::Protocol(format!(
                        "table '{name}' has no schema on this link (none sent, none held)"
                    )))
                }
            };
            let mut parts_out = Vec::with_capacity(tf.parts.len());
            let mut parts_held = HashMap::with_capacity(tf.parts.len());
            for pf in tf.parts {
                let key = pf.key;
                let batch = match pf.rows {
                    PartRows::Full(bytes) => decode_batch(&bytes, &schema)
                        .map_err(|e| in_table(&name, &format!("part '{key}'"), e))?,
                    PartRows::Unchanged => held.remove(&key).ok_or_else(|| {
                        LinkError::Protocol(format!(
                            "part '{key}' of table '{name}' is sent as unchanged but is not held"
                        ))
                    })?,
                    PartRows::Diff { removed, added } => {
                        let old = held.remove(&key).ok_or_else(|| {
                            LinkError::Protocol(format!(
                                "part '{key}' of table '{name}' is sent as a diff but is not held"
                            ))
                        })?;
                        let added = decode_batch(&added, &schema)
                            .map_err(|e| in_table(&name, &format!("part '{key}'"), e))?;
                        apply_diff(&old, &removed, &added)
                            .map_err(|e| in_table(&name, &format!("part '{key}'"), e))?
                    }
                };
                let sources = pf
                    .sources
                    .into_iter()
                    .map(|(source, ms)| {
                        Ok(SourceStamp {
                            source,
                            published_at: from_millis(ms)?,
                        })
                    })
                    .collect::<Result<Vec<_>, LinkError>>()?;
                if parts_held.insert(key.clone(), batch.clone()).is_some() {
                    return Err(LinkError::Protocol(format!(
                        "part '{key}' of table '{name}' is listed twice"
                    )));
                }
                parts_out.push(Part {
                    key,
                    batch,
                    sources,
                });
            }
            next.insert(
                name.clone(),
                HeldTable {
                    schema: schema.clone(),
                    parts: parts_held,
                },
            );
            out.insert(
                name,
                GenTable {
                    schema,
                    parts: parts_out,
                },
            );
        }
        // Tables not listed are gone from the child's generation.
        self.tables = next;
        self.needs_full = false;
        Ok(ChildGeneration {
            id: frame.id,
            round: frame.round,
            sealed_at: from_millis(frame.sealed_at_ms)?,
            tables: out,
            errors: frame.errors,
            machines: frame.machines,
            clusters: frame.clusters,
        })
    }
}

/// Adds where an error happened to its message.
fn in_table(table: &str, what: &str, e: LinkError) -> LinkError {
    match e {
        LinkError::Protocol(m) => LinkError::Protocol(format!("table '{table}', {what}: {m}")),
        LinkError::Decode(m) => LinkError::Decode(format!("table '{table}', {what}: {m}")),
        LinkError::Arrow(a) => LinkError::Decode(format!("table '{table}', {what}: {a}")),
        other => other,
    }
}

/// The parent's rows after a diff: `old` without the `removed` indexes (strictly ascending),
/// in their order, followed by `added`.
fn apply_diff(
    old: &RecordBatch,
    removed: &[u32],
    added: &RecordBatch,
) -> Result<RecordBatch, LinkError> {
    let n = old.num_rows();
    let mut keep = vec![true; n];
    let mut prev: Option<u32> = None;
    for &r in removed {
        if prev.is_some_and(|p| r <= p) {
            return Err(LinkError::Protocol(format!(
                "removed indexes are not strictly ascending ({} then {r})",
                prev.unwrap_or_default()
            )));
        }
        let slot = keep.get_mut(r as usize).ok_or_else(|| {
            LinkError::Protocol(format!(
                "removed index {r} is out of range (the part holds {n} rows)"
            ))
        })?;
        *slot = false;
        prev = Some(r);
    }
    let kept = if removed.is_empty() {
        old.clone()
    } else {
        filter_record_batch(old, &BooleanArray::from(keep))?
    };
    if added.num_rows() == 0 {
        return Ok(kept);
    }
    Ok(concat_batches(&old.schema(), [&kept, added])?)
}

fn from_millis(ms: i64) -> Result<SystemTime, LinkError> {
    let t = if ms >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_millis(ms.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_millis(ms.unsigned_abs()))
    };
    t.ok_or_else(|| LinkError::Protocol(format!("time {ms} ms is out of range")))
}

// ---------------------------------------------------------------------------------------
// Arrow IPC
// ---------------------------------------------------------------------------------------

/// Encodes schemas and batches as Arrow IPC stream messages (continuation marker, length,
/// flatbuffer metadata, body), reusing its scratch buffers from call to call.
struct IpcWriter {
    options: IpcWriteOptions,
    context: IpcWriteContext,
}

impl IpcWriter {
    fn new() -> Self {
        // 8-byte alignment is what the format requires; V5 is the current metadata.
        let options = IpcWriteOptions::try_new(8, false, MetadataVersion::V5).unwrap_or_default();
        IpcWriter {
            options,
            context: IpcWriteContext::default(),
        }
    }

    fn schema(&mut self, schema: &Schema) -> Result<Vec<u8>, LinkError> {
        let mut tracker = DictionaryTracker::new(false);
        let encoded = IpcDataGenerator::default().schema_to_bytes_with_dictionary_tracker(
            schema,
            &mut tracker,
            &self.options,
        );
        let mut out = Vec::new();
        write_message(&mut out, encoded, &self.options)?;
        Ok(out)
    }

    /// The batch's dictionaries (if any) then the batch, as one byte string.
    fn batch(&mut self, batch: &RecordBatch) -> Result<Vec<u8>, LinkError> {
        // A fresh tracker per batch: every part carries its own dictionaries, so the parent
        // can decode any part alone. Dictionary ids are assigned while encoding the schema,
        // so a schema with dictionaries is encoded (and dropped) first.
        let mut tracker = DictionaryTracker::new(false);
        if batch
            .schema_ref()
            .fields()
            .iter()
            .any(|f| has_dictionary(f.data_type()))
        {
            IpcDataGenerator::default().schema_to_bytes_with_dictionary_tracker(
                batch.schema_ref(),
                &mut tracker,
                &self.options,
            );
        }
        let (dictionaries, encoded) = IpcDataGenerator::default().encode(
            batch,
            &mut tracker,
            &self.options,
            &mut self.context,
        )?;
        let mut out = Vec::new();
        for d in dictionaries {
            write_message(&mut out, d, &self.options)?;
        }
        write_message(&mut out, encoded, &self.options)?;
        Ok(out)
    }
}

fn has_dictionary(t: &DataType) -> bool {
    match t {
        DataType::Dictionary(..) => true,
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _)
        | DataType::Map(f, _) => has_dictionary(f.data_type()),
        DataType::Struct(fields) => fields.iter().any(|f| has_dictionary(f.data_type())),
        DataType::Union(fields, _) => fields.iter().any(|(_, f)| has_dictionary(f.data_type())),
        DataType::RunEndEncoded(a, b) => {
            has_dictionary(a.data_type()) || has_dictionary(b.data_type())
        }
        _ => false,
    }
}

/// One IPC message: its metadata (verified flatbuffer) and body.
struct RawMessage<'a> {
    meta: &'a [u8],
    body: Buffer,
}

/// Splits `bytes` into IPC messages, checking every length against what is there.
fn split_messages(bytes: &[u8]) -> Result<Vec<RawMessage<'_>>, LinkError> {
    const CONTINUATION: u32 = 0xFFFF_FFFF;
    let whole = Buffer::from(bytes);
    let word = |pos: usize| -> Result<u32, LinkError> {
        bytes
            .get(pos..pos + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| LinkError::Decode("Arrow IPC message truncated".into()))
    };
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let mut len = word(pos)?;
        pos += 4;
        if len == CONTINUATION {
            len = word(pos)?;
            pos += 4;
        }
        if len == 0 {
            break; // end of stream
        }
        let meta = bytes
            .get(pos..pos.saturating_add(len as usize))
            .ok_or_else(|| LinkError::Decode("Arrow IPC metadata truncated".into()))?;
        pos += len as usize;
        let message = root_as_message(meta)
            .map_err(|e| LinkError::Decode(format!("Arrow IPC metadata: {e}")))?;
        let body_len = usize::try_from(message.bodyLength())
            .ok()
            .filter(|&l| l <= bytes.len() - pos)
            .ok_or_else(|| LinkError::Decode("Arrow IPC body truncated".into()))?;
        out.push(RawMessage {
            meta,
            body: whole.slice_with_length(pos, body_len),
        });
        pos += body_len;
    }
    Ok(out)
}

/// Runs Arrow's IPC reader, which is not hardened against hostile input (it panics on some
/// malformed metadata), turning a panic into an error.
fn guarded<T>(f: impl FnOnce() -> Result<T, LinkError>) -> Result<T, LinkError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(LinkError::Decode(
            "malformed Arrow IPC data (the reader gave up)".into(),
        ))
    })
}

fn decode_schema(bytes: &[u8]) -> Result<SchemaRef, LinkError> {
    guarded(|| {
        let messages = split_messages(bytes)?;
        let [m] = messages.as_slice() else {
            return Err(LinkError::Decode(format!(
                "a schema is one Arrow IPC message, got {}",
                messages.len()
            )));
        };
        let schema = root_as_message(m.meta)
            .ok()
            .and_then(|msg| msg.header_as_schema())
            .ok_or_else(|| LinkError::Decode("Arrow IPC message is not a schema".into()))?;
        Ok(Arc::new(fb_to_schema(schema)))
    })
}

fn decode_batch(bytes: &[u8], schema: &SchemaRef) -> Result<RecordBatch, LinkError> {
    guarded(|| {
        let mut dictionaries: HashMap<i64, ArrayRef> = HashMap::new();
        let mut batch = None;
        for m in split_messages(bytes)? {
            let msg = root_as_message(m.meta)
                .map_err(|e| LinkError::Decode(format!("Arrow IPC metadata: {e}")))?;
            let version = msg.version();
            match msg.header_type() {
                MessageHeader::DictionaryBatch => {
                    let d = msg.header_as_dictionary_batch().ok_or_else(|| {
                        LinkError::Decode("Arrow IPC dictionary without header".into())
                    })?;
                    read_dictionary(&m.body, d, schema, &mut dictionaries, &version)?;
                }
                MessageHeader::RecordBatch if batch.is_none() => {
                    let b = msg.header_as_record_batch().ok_or_else(|| {
                        LinkError::Decode("Arrow IPC record batch without header".into())
                    })?;
                    batch = Some(read_record_batch(
                        &m.body,
                        b,
                        schema.clone(),
                        &dictionaries,
                        None,
                        &version,
                    )?);
                }
                other => {
                    return Err(LinkError::Decode(format!(
                        "unexpected Arrow IPC message {other:?} in a part's rows"
                    )))
                }
            }
        }
        let batch =
            batch.ok_or_else(|| LinkError::Decode("a part's rows hold no record batch".into()))?;
        if batch.schema_ref() != schema {
            return Err(LinkError::Protocol(
                "rows do not have the table's schema".into(),
            ));
        }
        Ok(batch)
    })
}

/// Rows of a batch in row format, sorted: a multiset to compare regardless of order.
#[cfg(test)]
fn sorted_rows(batch: &RecordBatch) -> Vec<Vec<u8>> {
    let fields = batch
        .schema()
        .fields()
        .iter()
        .map(|f| SortField::new(f.data_type().clone()))
        .collect();
    let conv = RowConverter::new(fields).expect("row converter");
    let rows = conv.convert_columns(batch.columns()).expect("rows");
    let mut v: Vec<Vec<u8>> = rows.iter().map(|r| r.data().to_vec()).collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::frame::{decode_frame, encode_frame, Codec, DEFAULT_MAX_FRAME_BYTES};
    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::Field;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    type Row = (&'static str, i64, Option<f64>);

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("value", DataType::Int64, false),
            Field::new("x", DataType::Float64, true),
        ]))
    }

    fn batch_of(schema: &SchemaRef, rows: &[Row]) -> RecordBatch {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.2))),
            ],
        )
        .expect("batch")
    }

    fn part(schema: &SchemaRef, key: &str, rows: &[Row]) -> Part {
        Part {
            key: key.into(),
            batch: batch_of(schema, rows),
            sources: vec![SourceStamp {
                source: key.into(),
                published_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_000),
            }],
        }
    }

    fn generation(id: u64, tables: Vec<(&str, Vec<Part>)>) -> Generation {
        let s = schema();
        Generation {
            id,
            round: id + 100,
            tla_round: id + 100,
            sealed_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + id),
            tables: tables
                .into_iter()
                .map(|(n, parts)| {
                    (
                        n.to_string(),
                        GenTable {
                            schema: s.clone(),
                            parts,
                        },
                    )
                })
                .collect(),
            errors: BTreeMap::from([("pub-1".to_string(), "row 3: bad".to_string())]),
            machines: 0,
            clusters: 0,
        }
    }

    fn base_parts() -> Vec<Part> {
        let s = schema();
        vec![
            part(
                &s,
                "10.0.0.1",
                &[("a", 1, Some(0.5)), ("b", 2, None), ("c", 3, Some(1.5))],
            ),
            part(&s, "10.0.0.2", &[("d", 4, None)]),
            part(&s, "10.0.0.3", &[]),
        ]
    }

    fn all_tables() -> BTreeSet<String> {
        ["sys", "processes", "load"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// An encoder and decoder past their first (full) frame of sys and load.
    fn linked() -> (BTreeSet<String>, LinkEncoder, LinkDecoder) {
        let wanted = all_tables();
        let mut enc = LinkEncoder::new();
        let mut dec = LinkDecoder::new();
        let g1 = generation(1, vec![("sys", base_parts()), ("load", base_parts())]);
        dec.apply(enc.encode(&g1, &wanted, 3, 0).expect("encode"))
            .expect("apply");
        (wanted, enc, dec)
    }

    /// Through the wire too, so the serde layer is exercised.
    fn send(frame: &GenerationFrame) -> (GenerationFrame, usize) {
        let bytes = encode_frame(frame, Codec::None).expect("encode frame");
        let back = decode_frame(&bytes[4..], DEFAULT_MAX_FRAME_BYTES).expect("decode frame");
        (back, bytes.len())
    }

    fn assert_same(child: &ChildGeneration, g: &Generation, wanted: &BTreeSet<String>) {
        assert_eq!(child.id, g.id);
        assert_eq!(child.round, g.round);
        assert_eq!(child.sealed_at, g.sealed_at);
        let names: Vec<&String> = g.tables.keys().filter(|n| wanted.contains(*n)).collect();
        assert_eq!(child.tables.keys().collect::<Vec<_>>(), names);
        for (name, t) in &child.tables {
            let want = &g.tables[name];
            assert_eq!(t.schema, want.schema);
            assert_eq!(t.parts.len(), want.parts.len(), "{name}");
            for (a, b) in t.parts.iter().zip(&want.parts) {
                assert_eq!(a.key, b.key);
                assert_eq!(
                    sorted_rows(&a.batch),
                    sorted_rows(&b.batch),
                    "{name}/{}",
                    a.key
                );
                let stamps = |p: &Part| {
                    p.sources
                        .iter()
                        .map(|s| (s.source.clone(), unix_millis(s.published_at)))
                        .collect::<Vec<_>>()
                };
                assert_eq!(stamps(a), stamps(b));
            }
        }
    }

    fn kinds(f: &GenerationFrame) -> Vec<(String, String, &'static str)> {
        f.tables
            .iter()
            .flat_map(|t| {
                t.parts.iter().map(|p| {
                    let k = match p.rows {
                        PartRows::Full(_) => "full",
                        PartRows::Unchanged => "unchanged",
                        PartRows::Diff { .. } => "diff",
                    };
                    (t.name.clone(), p.key.clone(), k)
                })
            })
            .collect()
    }

    #[test]
    fn full_roundtrip_then_unchanged() {
        let wanted = all_tables();
        let mut enc = LinkEncoder::new();
        let mut dec = LinkDecoder::new();
        let g1 = generation(1, vec![("sys", base_parts()), ("load", base_parts())]);
        let f1 = enc.encode(&g1, &wanted, 3, 1).expect("encode");
        assert!(f1.full);
        assert!(f1.tables.iter().all(|t| t.schema.is_some()));
        assert!(kinds(&f1).iter().all(|k| k.2 == "full"));
        let (f1, full_bytes) = send(&f1);
        let c1 = dec.apply(f1).expect("apply");
        assert_same(&c1, &g1, &wanted);
        assert_eq!((c1.machines, c1.clusters), (3, 1));
        assert_eq!(c1.errors, vec![("pub-1".into(), "row 3: bad".into())]);
        // Exact rows for full parts, in order.
        assert_eq!(
            c1.tables["sys"].parts[0].batch,
            g1.tables["sys"].parts[0].batch
        );

        // The same rows again, rebuilt (other buffers): content equality finds them.
        let g2 = generation(2, vec![("sys", base_parts()), ("load", base_parts())]);
        let f2 = enc.encode(&g2, &wanted, 3, 1).expect("encode");
        assert!(!f2.full);
        assert!(f2.tables.iter().all(|t| t.schema.is_none()));
        assert!(
            kinds(&f2).iter().all(|k| k.2 == "unchanged"),
            "{:?}",
            kinds(&f2)
        );
        let (f2, small_bytes) = send(&f2);
        assert!(
            small_bytes * 5 < full_bytes,
            "unchanged frame {small_bytes} bytes vs full {full_bytes}"
        );
        let c2 = dec.apply(f2).expect("apply");
        assert_same(&c2, &g2, &wanted);

        // Same buffers (a republished copy): the fast path.
        let g3 = Generation {
            id: 3,
            round: 3,
            tla_round: 3,
            sealed_at: g2.sealed_at,
            tables: g2.tables.clone(),
            errors: BTreeMap::new(),
            machines: 3,
            clusters: 1,
        };
        let f3 = enc.encode(&g3, &wanted, 3, 1).expect("encode");
        assert!(kinds(&f3).iter().all(|k| k.2 == "unchanged"));
        assert_same(&dec.apply(send(&f3).0).expect("apply"), &g3, &wanted);
    }

    #[test]
    fn changed_row_is_one_removed_one_added_in_documented_order() {
        let wanted = all_tables();
        let s = schema();
        let rows: Vec<Row> = (0..50).map(|i| ("proc", i, Some(i as f64))).collect();
        let mut enc = LinkEncoder::new();
        let mut dec = LinkDecoder::new();
        let g1 = generation(1, vec![("sys", vec![part(&s, "m", &rows)])]);
        dec.apply(enc.encode(&g1, &wanted, 1, 0).expect("encode"))
            .expect("apply");

        let mut changed = rows.clone();
        changed[7] = ("proc", 7, Some(99.0));
        let g2 = generation(2, vec![("sys", vec![part(&s, "m", &changed)])]);
        let f2 = enc.encode(&g2, &wanted, 1, 0).expect("encode");
        match &f2.tables[0].parts[0].rows {
            PartRows::Diff { removed, added } => {
                assert_eq!(removed, &vec![7]);
                let added = decode_batch(added, &s).expect("added");
                assert_eq!(added, batch_of(&s, &[("proc", 7, Some(99.0))]));
            }
            other => panic!("expected a diff, got {other:?}"),
        }
        let c2 = dec.apply(send(&f2).0).expect("apply");
        assert_same(&c2, &g2, &wanted);
        // Old rows without index 7, in order, then the added row.
        let mut order = rows.clone();
        order.remove(7);
        order.push(("proc", 7, Some(99.0)));
        assert_eq!(c2.tables["sys"].parts[0].batch, batch_of(&s, &order));

        // A second change: indexes refer to the parent's order, which the encoder mirrors.
        let mut changed2 = changed.clone();
        changed2[7] = ("proc", 7, Some(100.0));
        changed2[20] = ("proc", 20, None);
        let g3 = generation(3, vec![("sys", vec![part(&s, "m", &changed2)])]);
        let f3 = enc.encode(&g3, &wanted, 1, 0).expect("encode");
        match &f3.tables[0].parts[0].rows {
            PartRows::Diff { removed, .. } => assert_eq!(removed, &vec![19, 49]),
            other => panic!("expected a diff, got {other:?}"),
        }
        assert_same(&dec.apply(send(&f3).0).expect("apply"), &g3, &wanted);

        // The child's order back to the original rows: the parent's differs, but as a
        // multiset they match, so only the changed rows travel.
        let g4 = generation(4, vec![("sys", vec![part(&s, "m", &rows)])]);
        let f4 = enc.encode(&g4, &wanted, 1, 0).expect("encode");
        match &f4.tables[0].parts[0].rows {
            PartRows::Diff { removed, added } => {
                assert_eq!(removed.len(), 2);
                assert_eq!(decode_batch(added, &s).expect("added").num_rows(), 2);
            }
            other => panic!("expected a diff, got {other:?}"),
        }
        assert_same(&dec.apply(send(&f4).0).expect("apply"), &g4, &wanted);
    }

    #[test]
    fn reordered_rows_are_unchanged() {
        let wanted = all_tables();
        let s = schema();
        let rows: Vec<Row> = vec![("a", 1, None), ("b", 2, None), ("c", 3, None)];
        let mut enc = LinkEncoder::new();
        let mut dec = LinkDecoder::new();
        let g1 = generation(1, vec![("sys", vec![part(&s, "m", &rows)])]);
        dec.apply(enc.encode(&g1, &wanted, 1, 0).expect("encode"))
            .expect("apply");
        let mut rev = rows.clone();
        rev.reverse();
        let g2 = generation(2, vec![("sys", vec![part(&s, "m", &rev)])]);
        let f2 = enc.encode(&g2, &wanted, 1, 0).expect("encode");
        assert_eq!(kinds(&f2)[0].2, "unchanged");
        let c2 = dec.apply(f2).expect("apply");
        // The parent keeps its order.
        assert_eq!(c2.tables["sys"].parts[0].batch, batch_of(&s, &rows));
        assert_same(&c2, &g2, &wanted);
    }

    #[test]
    fn duplicate_rows_match_as_a_multiset() {
        let wanted = all_tables();
        let s = schema();
        let (a, b) = (("a", 1, None), ("b", 2, Some(2.0)));
        let steps: Vec<Vec<Row>> = vec![
            vec![a, a, b, a, b, b, b, b],
            vec![a, b, b, a, b, b, b, b, b], // one a fewer, one b more
            vec![a, a, a, a, b, b, b, b, b],
            vec![b, b, b, b, b, b, b, a, a, a, a, a],
            vec![a, b, b, b, b, b, b, b, a, a, a, a], // reordered: unchanged
        ];
        let mut enc = LinkEncoder::new();
        let mut dec = LinkDecoder::new();
        for (i, rows) in steps.iter().enumerate() {
            let g = generation(i as u64, vec![("sys", vec![part(&s, "m", rows)])]);
            let f = enc.encode(&g, &wanted, 1, 0).expect("encode");
            if i == 1 {
                match &f.tables[0].parts[0].rows {
                    PartRows::Diff { removed, added } => {
                        assert_eq!(removed.len(), 1);
                        assert_eq!(decode_batch(added, &s).expect("added").num_rows(), 2);
                    }
                    other => panic!("expected a diff, got {other:?}"),
                }
            }
            if i == 4 {
                assert_eq!(kinds(&f)[0].2, "unchanged");
            }
            let c = dec.apply(send(&f).0).expect("apply");
            assert_same(&c, &g, &wanted);
            assert_eq!(c.tables["sys"].parts[0].batch.num_rows(), rows.len());
        }
    }

    #[test]
    fn everything_changed_is_sent_full() {
        let wanted = all_tables();
        let s = schema();
        let mut enc = LinkEncoder::new();
        let g1 = generation(
            1,
            vec![(
                "sys",
                vec![part(&s, "m", &[("a", 1, None), ("b", 2, None)])],
            )],
        );
        enc.encode(&g1, &wanted, 1, 0).expect("encode");
        let g2 = generation(
            2,
            vec![(
                "sys",
                vec![part(&s, "m", &[("c", 1, None), ("d", 2, None)])],
            )],
        );
        assert_eq!(
            kinds(&enc.encode(&g2, &wanted, 1, 0).expect("encode"))[0].2,
            "full"
        );
    }

    #[test]
    fn parts_and_tables_disappear_and_come_back() {
        let (wanted, mut enc, mut dec) = linked();

        let mut parts = base_parts();
        parts.remove(1);
        let g2 = generation(2, vec![("sys", parts)]);
        let f2 = enc.encode(&g2, &wanted, 2, 0).expect("encode");
        assert_eq!(f2.tables.len(), 1);
        assert_eq!(f2.tables[0].parts.len(), 2);
        let c2 = dec.apply(send(&f2).0).expect("apply");
        assert_same(&c2, &g2, &wanted);
        assert!(!c2.tables.contains_key("load"));

        // Back again: both sides forgot them, so they come in full with their schema.
        let g3 = generation(3, vec![("sys", base_parts()), ("load", base_parts())]);
        let f3 = enc.encode(&g3, &wanted, 3, 0).expect("encode");
        let k = kinds(&f3);
        assert!(k.contains(&("sys".into(), "10.0.0.2".into(), "full")));
        assert!(k.contains(&("sys".into(), "10.0.0.1".into(), "unchanged")));
        assert!(k.iter().filter(|k| k.0 == "load").all(|k| k.2 == "full"));
        assert!(f3
            .tables
            .iter()
            .find(|t| t.name == "load")
            .is_some_and(|t| t.schema.is_some()));
        assert_same(&dec.apply(send(&f3).0).expect("apply"), &g3, &wanted);

        // A table no longer wanted is not sent; when wanted again it comes in full.
        let only_sys: BTreeSet<String> = ["sys".to_string()].into();
        let f4 = enc.encode(&g3, &only_sys, 3, 0).expect("encode");
        assert_eq!(f4.tables.len(), 1);
        assert_same(&dec.apply(send(&f4).0).expect("apply"), &g3, &only_sys);
        let f5 = enc.encode(&g3, &wanted, 3, 0).expect("encode");
        assert!(kinds(&f5)
            .iter()
            .filter(|k| k.0 == "load")
            .all(|k| k.2 == "full"));
        assert_same(&dec.apply(send(&f5).0).expect("apply"), &g3, &wanted);
    }

    #[test]
    fn schema_change_sends_the_new_schema_and_full_parts() {
        let wanted = all_tables();
        let mut enc = LinkEncoder::new();
        let mut dec = LinkDecoder::new();
        let g1 = generation(1, vec![("sys", base_parts())]);
        dec.apply(enc.encode(&g1, &wanted, 3, 0).expect("encode"))
            .expect("apply");

        let s2 = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("value", DataType::Int64, false),
            Field::new("x", DataType::Float64, true),
            Field::new("extra", DataType::Utf8, true),
        ]));
        let b = RecordBatch::try_new(
            s2.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a"])),
                Arc::new(Int64Array::from(vec![1])),
                Arc::new(Float64Array::from(vec![Some(0.5)])),
                Arc::new(StringArray::from(vec![Some("new")])),
            ],
        )
        .expect("batch");
        let mut g2 = generation(2, vec![]);
        g2.tables.insert(
            "sys".into(),
            GenTable {
                schema: s2.clone(),
                parts: vec![Part {
                    key: "10.0.0.1".into(),
                    batch: b.clone(),
                    sources: vec![],
                }],
            },
        );
        let f2 = enc.encode(&g2, &wanted, 1, 0).expect("encode");
        assert!(!f2.full);
        assert!(f2.tables[0].schema.is_some());
        assert_eq!(kinds(&f2)[0].2, "full");
        let c2 = dec.apply(send(&f2).0).expect("apply");
        assert_eq!(c2.tables["sys"].schema, s2);
        assert_eq!(c2.tables["sys"].parts[0].batch, b);
    }

    #[test]
    fn reset_sends_a_full_frame() {
        let (wanted, mut enc, mut dec) = linked();
        enc.reset();
        let g2 = generation(2, vec![("sys", base_parts())]);
        let f2 = enc.encode(&g2, &wanted, 3, 0).expect("encode");
        assert!(f2.full);
        assert!(f2.tables.iter().all(|t| t.schema.is_some()));
        assert!(kinds(&f2).iter().all(|k| k.2 == "full"));
        let c2 = dec.apply(f2).expect("apply");
        assert_same(&c2, &g2, &wanted);
        // And a new decoder (a reconnection) takes the next full frame as well.
        enc.reset();
        let g3 = generation(3, vec![("sys", base_parts()), ("load", base_parts())]);
        let c3 = LinkDecoder::new()
            .apply(enc.encode(&g3, &wanted, 3, 0).expect("encode"))
            .expect("apply");
        assert_same(&c3, &g3, &wanted);
    }

    /// Many generations of random edits, duplicates included: the parent's copy always
    /// equals the child's generation as a multiset of rows per part.
    #[test]
    fn random_churn_stays_in_step() {
        let wanted = all_tables();
        let s = schema();
        let names = ["a", "b", "c", "d"];
        let mut rng = SmallRng::seed_from_u64(42);
        let mut parts: Vec<Vec<Row>> = (0..6)
            .map(|_| {
                (0..rng.random_range(0..12))
                    .map(|_| (names[rng.random_range(0..4)], rng.random_range(0..3), None))
                    .collect()
            })
            .collect();
        let mut enc = LinkEncoder::new();
        let mut dec = LinkDecoder::new();
        let mut seen = BTreeSet::new();
        for id in 1..200 {
            for rows in parts.iter_mut() {
                if rng.random_bool(0.5) {
                    continue;
                }
                for _ in 0..rng.random_range(0..4) {
                    let row = (names[rng.random_range(0..4)], rng.random_range(0..3), None);
                    match rng.random_range(0..3) {
                        0 if !rows.is_empty() => {
                            let i = rng.random_range(0..rows.len());
                            rows.remove(i);
                        }
                        1 if !rows.is_empty() => {
                            let i = rng.random_range(0..rows.len());
                            rows[i] = row;
                        }
                        _ => rows.push(row),
                    }
                }
            }
            let present: Vec<Part> = parts
                .iter()
                .enumerate()
                .filter(|(i, _)| (id + i) % 7 != 0) // parts come and go
                .map(|(i, rows)| part(&s, &format!("m{i}"), rows))
                .collect();
            let g = generation(id as u64, vec![("sys", present)]);
            let f = enc.encode(&g, &wanted, 6, 0).expect("encode");
            seen.extend(kinds(&f).into_iter().map(|k| k.2));
            let c = dec.apply(send(&f).0).expect("apply");
            assert_same(&c, &g, &wanted);
        }
        assert_eq!(seen.len(), 3, "every kind of part was exercised: {seen:?}");
    }

    #[test]
    fn decoder_refuses_inconsistent_frames() {
        let wanted = all_tables();
        let s = schema();
        let mut enc = LinkEncoder::new();
        let g1 = generation(1, vec![("sys", base_parts())]);
        let full = enc.encode(&g1, &wanted, 3, 0).expect("encode");

        let frame = |full: bool, schema: Option<Vec<u8>>, rows: PartRows| GenerationFrame {
            id: 2,
            round: 2,
            sealed_at_ms: 0,
            full,
            tables: vec![TableFrame {
                name: "sys".into(),
                schema,
                parts: vec![PartFrame {
                    key: "10.0.0.1".into(),
                    sources: vec![],
                    rows,
                }],
            }],
            errors: vec![],
            machines: 1,
            clusters: 0,
        };
        let ready = || {
            let mut d = LinkDecoder::new();
            d.apply(full.clone()).expect("full frame");
            d
        };
        let added = IpcWriter::new()
            .batch(&batch_of(&s, &[("z", 9, None)]))
            .expect("ipc");
        let other_schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let other_batch = IpcWriter::new()
            .batch(
                &RecordBatch::try_new(
                    other_schema.clone(),
                    vec![Arc::new(Int64Array::from(vec![1]))],
                )
                .expect("batch"),
            )
            .expect("ipc");
        let schema_bytes = IpcWriter::new().schema(&s).expect("schema");

        let cases: Vec<(&str, LinkDecoder, GenerationFrame)> = vec![
            (
                "diff frame first",
                LinkDecoder::new(),
                frame(false, None, PartRows::Unchanged),
            ),
            (
                "unchanged part not held",
                ready(),
                GenerationFrame {
                    tables: vec![TableFrame {
                        name: "sys".into(),
                        schema: None,
                        parts: vec![PartFrame {
                            key: "10.9.9.9".into(),
                            sources: vec![],
                            rows: PartRows::Unchanged,
                        }],
                    }],
                    ..frame(false, None, PartRows::Unchanged)
                },
            ),
            (
                "index out of range",
                ready(),
                frame(
                    false,
                    None,
                    PartRows::Diff {
                        removed: vec![3],
                        added: added.clone(),
                    },
                ),
            ),
            (
                "indexes not ascending",
                ready(),
                frame(
                    false,
                    None,
                    PartRows::Diff {
                        removed: vec![1, 0],
                        added: added.clone(),
                    },
                ),
            ),
            (
                "no schema",
                LinkDecoder::new(),
                frame(true, None, PartRows::Full(added.clone())),
            ),
            (
                "garbage schema",
                LinkDecoder::new(),
                frame(
                    true,
                    Some(vec![
                        0xff, 0xff, 0xff, 0xff, 8, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8,
                    ]),
                    PartRows::Full(added.clone()),
                ),
            ),
            (
                "garbage rows",
                LinkDecoder::new(),
                frame(
                    true,
                    Some(schema_bytes.clone()),
                    PartRows::Full(vec![1, 2, 3, 4, 5, 6, 7, 8, 9]),
                ),
            ),
            (
                "rows of another schema",
                ready(),
                frame(false, None, PartRows::Full(other_batch.clone())),
            ),
            (
                "diff rows of another schema",
                ready(),
                frame(
                    false,
                    None,
                    PartRows::Diff {
                        removed: vec![],
                        added: other_batch.clone(),
                    },
                ),
            ),
        ];
        for (what, mut dec, f) in cases {
            match dec.apply(f) {
                Err(LinkError::Protocol(_) | LinkError::Decode(_) | LinkError::Arrow(_)) => {}
                other => panic!("{what}: expected an error, got {other:?}"),
            }
            // Out of step: only a full frame is taken now.
            assert!(dec.needs_full(), "{what}");
            assert!(
                dec.apply(frame(false, None, PartRows::Unchanged)).is_err(),
                "{what}"
            );
            assert_same(&dec.apply(full.clone()).expect("full frame"), &g1, &wanted);
        }

        // Corrupt IPC bytes inside a valid frame, byte by byte: errors, never a panic.
        let PartRows::Full(good) = &full.tables[0].parts[0].rows else {
            panic!("full part expected");
        };
        let mut rng = SmallRng::seed_from_u64(3);
        for i in 0..400 {
            let mut bad = good.clone();
            let at = rng.random_range(0..bad.len());
            bad[at] = rng.random();
            if i % 4 == 0 {
                bad.truncate(at);
            }
            let _ = LinkDecoder::new().apply(frame(
                true,
                Some(schema_bytes.clone()),
                PartRows::Full(bad),
            ));
            let mut bad_schema = schema_bytes.clone();
            let at = rng.random_range(0..bad_schema.len());
            bad_schema[at] = rng.random();
            let _ = LinkDecoder::new().apply(frame(
                true,
                Some(bad_schema),
                PartRows::Full(good.clone()),
            ));
        }
    }

    #[test]
    fn encoder_refuses_a_part_unlike_its_table_and_resets() {
        let wanted = all_tables();
        let mut enc = LinkEncoder::new();
        let g1 = generation(1, vec![("sys", base_parts())]);
        enc.encode(&g1, &wanted, 3, 0).expect("encode");
        let mut g2 = generation(2, vec![("sys", base_parts())]);
        let other = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        if let Some(t) = g2.tables.get_mut("sys") {
            t.parts.push(Part {
                key: "odd".into(),
                batch: RecordBatch::try_new(
                    other.clone(),
                    vec![Arc::new(Int64Array::from(vec![1]))],
                )
                .expect("batch"),
                sources: vec![],
            });
        }
        assert!(matches!(
            enc.encode(&g2, &wanted, 3, 0),
            Err(LinkError::Protocol(_))
        ));
        assert!(enc.encode(&g1, &wanted, 3, 0).expect("encode").full);
    }

    #[test]
    fn dictionary_columns_roundtrip() {
        use datafusion::arrow::array::DictionaryArray;
        use datafusion::arrow::datatypes::Int32Type;
        let dict: DictionaryArray<Int32Type> = vec!["x", "y", "x", "z"].into_iter().collect();
        let s = Arc::new(Schema::new(vec![Field::new(
            "d",
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            true,
        )]));
        let b = RecordBatch::try_new(s.clone(), vec![Arc::new(dict)]).expect("batch");
        let mut ipc = IpcWriter::new();
        let schema = decode_schema(&ipc.schema(&s).expect("schema")).expect("schema back");
        assert_eq!(schema, s);
        assert_eq!(
            decode_batch(&ipc.batch(&b).expect("ipc"), &schema).expect("back"),
            b
        );
    }
}

//! The child side: a [`LinkEncoder`] turns generations into frames for one parent, keeping a
//! mirror of what that parent holds.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::UInt32Array;
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, Rows, SortField};

use super::blocks::Blocks;
use super::forward;
use super::gaps::GapWriter;
use super::ipc::IpcWriter;
use super::patch::{self, KeyMatcher};
use super::times::SourceTimes;
use super::TableKeys;
use crate::generation::{GenTable, Generation, NameHasher, NameMap, Part};
use crate::link::wire::{
    GenerationFrame, IpcRows, Listing, PartFrame, PartId, PartRows, PatchValues, Sources, Stamps,
    TableFrame,
};
use crate::link::LinkError;
use crate::table::unix_millis;
use crate::threads;

/// Turns a child's generations into frames for one parent (one encoder per connection).
pub struct LinkEncoder {
    /// The next frame is full: a new connection, or after [`LinkEncoder::reset`] or an error.
    full_next: bool,
    /// What the parent holds, per table, as of the last frame encoded.
    tables: HashMap<String, TableMirror>,
    /// Tables' keys: their parts travel as patches.
    keys: TableKeys,
    /// The parent's time per source name on this link (unix ms).
    times: SourceTimes,
}

/// One table of a frame being encoded: what it needs of the link (read only) and its own
/// IPC scratch and patch values, so that a large frame's tables can be encoded on threads
/// of their own ([`threads`](crate::threads)).
struct TableEncoder<'a> {
    ipc: IpcWriter,
    /// Tables' keys: their parts travel as patches.
    keys: &'a TableKeys,
    /// The table being encoded (to look up its key).
    table: &'a str,
    /// The parent's time per source name on this link, as of this frame.
    times: &'a SourceTimes,
    /// The patch values of the table.
    patches: PatchSets,
    /// The rows of the table's parts new to the parent.
    blocks: Blocks,
}

/// A table's patch values as they are planned: one entry per set of patched columns, each
/// part's values appended to its entry ([`PatchValues`]).
#[derive(Default)]
struct PatchSets {
    index: HashMap<Vec<(u32, bool)>, u32>,
    sets: Vec<PatchSet>,
}

/// (patched columns, each part's values in order).
type PatchSet = (Vec<(u32, bool)>, Vec<RecordBatch>);

impl PatchSets {
    /// Appends a part's values; returns the entry they go to.
    fn add(&mut self, columns: Vec<(u32, bool)>, values: RecordBatch) -> u32 {
        let at = match self.index.get(&columns) {
            Some(&at) => at,
            None => {
                let at = self.sets.len() as u32;
                self.index.insert(columns.clone(), at);
                self.sets.push((columns, Vec::new()));
                at
            }
        };
        self.sets[at as usize].1.push(values);
        at
    }

    fn encode(&mut self, ipc: &mut IpcWriter) -> Result<Vec<PatchValues>, LinkError> {
        self.index.clear();
        std::mem::take(&mut self.sets)
            .into_iter()
            .map(|(columns, batches)| {
                let schema = batches
                    .first()
                    .map(|b| b.schema())
                    .ok_or_else(|| LinkError::Protocol("an empty patch entry".into()))?;
                let values = concat_batches(&schema, &batches)?;
                patch::narrow(&values, &columns, ipc)
            })
            .collect()
    }
}

struct TableMirror {
    schema: SchemaRef,
    /// Row-format converter for multiset diffs: made on the first diff; `None` inside when
    /// the schema has a type the row format cannot compare (such tables are sent `Full`).
    converter: Option<Option<RowConverter>>,
    /// The table's key: found on the first change; `None` inside for a table without one
    /// (or whose key does not fit its schema), which travels as multiset diffs.
    key: Option<Option<KeyMatcher>>,
    parts: NameMap<MirroredPart>,
}

/// A part as the parent holds it.
struct MirroredPart {
    rows: PartMirror,
    /// Its place among the table's parts: the parent's order is the child's after every
    /// frame.
    pos: u32,
    /// The parent holds its sources with their own times (`Sources::Stamped`, those of
    /// `rows.last`); otherwise each at its source's time on the link.
    stamped: bool,
}

struct PartMirror {
    /// The child's part as last encoded (shared with its generation): unchanged parts are
    /// found by comparing with its rows, and the parent holds its sources' names.
    last: Arc<Part>,
    /// The parent's rows, when they are not exactly `last`.
    held: Held,
    /// The key rows of the parent's rows (keyed tables), kept from the last patch plan so
    /// that a part changing again is not converted again.
    keys: Option<Box<Rows>>,
}

/// The parent's rows of a part, in the parent's order. What is not `Last` is boxed, as are
/// a mirror's `keys`: most parts are `Last` without keys (a forwarded patch leaves them so),
/// and a TLA of 70,000 machines holds 420,000 mirrored parts in maps of 2^17 slots a table,
/// where these inline made each slot about 200 bytes rather than 64 (about 17 MiB more a table).
enum Held {
    /// Exactly `last` (so parts that never change cost nothing more).
    Last,
    /// In row format (multiset diffs, tables without a key).
    Rows(Box<Rows>),
    /// As rows (patches, tables with a key).
    Batch(Box<RecordBatch>),
}

impl Default for LinkEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl LinkEncoder {
    /// An encoder that sends every table's changed parts as multiset diffs.
    pub fn new() -> Self {
        Self::with_keys(TableKeys::default())
    }

    /// An encoder that sends changed parts of the tables in `keys` as patches by key.
    pub fn with_keys(keys: TableKeys) -> Self {
        LinkEncoder {
            full_next: true,
            tables: HashMap::new(),
            keys,
            times: SourceTimes::default(),
        }
    }

    /// Forgets what the parent holds: the next frame is full (a reconnection, or a parent
    /// that lost its copy).
    pub fn reset(&mut self) {
        self.full_next = true;
        self.tables.clear();
        self.times.clear();
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
            self.times.clear();
        }
        let sealed_at_ms = unix_millis(g.sealed_at);
        let stamps = self.restamp(g, wanted, sealed_at_ms);
        match self.encode_tables(g, wanted) {
            Ok(tables) => {
                self.full_next = false;
                Ok(GenerationFrame {
                    id: g.id,
                    round: g.round,
                    sealed_at_ms,
                    full,
                    tables,
                    stamps,
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

    /// The link's time per source for `g`: each source at the time of the first part that
    /// names it. Returns what takes the parent's times there.
    fn restamp(&mut self, g: &Generation, wanted: &BTreeSet<String>, sealed_at_ms: i64) -> Stamps {
        let now = g
            .tables
            .iter()
            .filter(|(n, _)| wanted.contains(*n))
            .flat_map(|(_, t)| &t.parts)
            .flat_map(|p| &p.sources)
            .map(|s| (&*s.source, unix_millis(s.published_at)));
        self.times.restamp(now, sealed_at_ms)
    }

    fn encode_tables(
        &mut self,
        g: &Generation,
        wanted: &BTreeSet<String>,
    ) -> Result<Vec<TableFrame>, LinkError> {
        let jobs: Vec<_> = g
            .tables
            .iter()
            .filter(|(n, _)| wanted.contains(*n))
            .map(|(name, table)| (name, table, self.tables.remove(name)))
            .collect();
        let (keys, times) = (&self.keys, &self.times);
        let encoded = threads::map_weighted(
            jobs,
            |(_, table, _)| table.parts.len(),
            |(name, table, mirror)| {
                TableEncoder {
                    ipc: IpcWriter::new(),
                    keys,
                    table: name,
                    times,
                    patches: PatchSets::default(),
                    blocks: Blocks::default(),
                }
                .encode(mirror, table)
            },
        );
        let mut frames = Vec::with_capacity(encoded.len());
        let mut next = HashMap::with_capacity(encoded.len());
        for e in encoded {
            let (mirror, frame) = e?;
            next.insert(frame.name.clone(), mirror);
            frames.push(frame);
        }
        // Tables not sent are gone for the parent too.
        self.tables = next;
        Ok(frames)
    }
}

impl TableEncoder<'_> {
    /// The table's frame against what the parent holds of it (`mirror`, none if nothing),
    /// and what it holds after.
    fn encode(
        mut self,
        mirror: Option<TableMirror>,
        table: &GenTable,
    ) -> Result<(TableMirror, TableFrame), LinkError> {
        let name = self.table;
        let (mut mirror, schema) = match mirror {
            Some(m) if m.schema == table.schema => (m, None),
            // New on this link, or its schema changed: the parent's rows of the old
            // schema are of no use, every part goes in full.
            _ => (
                TableMirror {
                    schema: table.schema.clone(),
                    converter: None,
                    key: None,
                    parts: NameMap::default(),
                },
                Some(self.ipc.schema(&table.schema)?),
            ),
        };
        // The parent holds nothing of a table whose schema goes with the frame, or of
        // one without parts: every part is listed (a frame of new tables only is then a
        // full copy, `GenerationFrame::is_full_copy`).
        let fresh = schema.is_some() || mirror.parts.is_empty();
        // Per part of `table.parts`: how it travels, and where the parent holds it.
        let mut sent: Vec<(Sources, PartRows, Option<usize>)> =
            Vec::with_capacity(table.parts.len());
        let mut next_parts =
            NameMap::with_capacity_and_hasher(table.parts.len(), NameHasher::default());
        // Whether the parent's order after listing only the changes (held parts where
        // they are, new ones after them) is the child's order.
        let (mut in_order, mut last_pos, mut seen_new) = (true, None, false);
        for (pos, p) in table.parts.iter().enumerate() {
            if !Arc::ptr_eq(p.batch.schema_ref(), &table.schema)
                && p.batch.schema_ref() != &table.schema
            {
                return Err(LinkError::Protocol(format!(
                    "part '{}' of table '{name}' has a schema unlike the table's",
                    p.key
                )));
            }
            // The key held is kept for the next mirror (no new string per part and frame).
            let (key, held) = match mirror.parts.remove_entry(&p.key) {
                Some((key, h)) => (key, Some(h)),
                None => (p.key.clone(), None),
            };
            let held_at = held.as_ref().map(|h| h.pos as usize);
            if let Some(h) = &held {
                in_order &= !seen_new && last_pos.is_none_or(|l| h.pos > l);
                last_pos = Some(h.pos);
            } else {
                seen_new = true;
            }
            let (sources, stamped) = sources_of(
                self.times,
                held.as_ref().map(|h| (&*h.rows.last, h.stamped)),
                p,
            );
            let (rows, part_mirror) = self.encode_part(&mut mirror, held.map(|h| h.rows), p)?;
            let mirrored = MirroredPart {
                rows: part_mirror,
                pos: u32::try_from(pos).map_err(|_| {
                    LinkError::Protocol(format!("table '{name}' has over 2^32 parts"))
                })?,
                stamped,
            };
            if next_parts.insert(key, mirrored).is_some() {
                return Err(LinkError::Protocol(format!(
                    "table '{name}' has two parts with the key '{}'",
                    p.key
                )));
            }
            sent.push((sources, rows, held_at));
        }
        let key = |i: usize| PartId::Key(table.parts[i].key.clone());
        let (listing, parts) = if fresh || !in_order {
            let parts = sent
                .into_iter()
                .enumerate()
                .map(|(i, (sources, rows, _))| PartFrame {
                    key: key(i),
                    sources,
                    rows,
                })
                .collect();
            (Listing::Every, parts)
        } else {
            // Only the changed parts; held ones by their position (ascending, as
            // `in_order` says), before the new ones.
            let mut gaps = GapWriter::default();
            let mut listed = Vec::new();
            for (i, (sources, rows, at)) in sent.into_iter().enumerate() {
                if sources == Sources::Held && matches!(rows, PartRows::Unchanged) {
                    continue;
                }
                let key = match at {
                    Some(at) => PartId::Held(u32::try_from(gaps.gap(at)).map_err(|_| {
                        LinkError::Protocol(format!("table '{name}' has too many parts"))
                    })?),
                    None => key(i),
                };
                listed.push(PartFrame { key, sources, rows });
            }
            let mut gone: Vec<String> = mirror.parts.into_keys().collect();
            gone.sort_unstable();
            (Listing::Changes { gone }, listed)
        };
        mirror.parts = next_parts;
        let frame = TableFrame {
            name: name.to_string(),
            schema,
            listing,
            parts,
            patches: self.patches.encode(&mut self.ipc)?,
            blocks: std::mem::take(&mut self.blocks).finish(),
        };
        Ok((mirror, frame))
    }

    fn encode_part(
        &mut self,
        table: &mut TableMirror,
        held: Option<PartMirror>,
        p: &Arc<Part>,
    ) -> Result<(PartRows, PartMirror), LinkError> {
        let Some(old) = held else {
            // New to the parent (every part of a full copy): in a block with other new
            // parts, encoded as the frame is serialized, so that a whole fleet's rows are
            // never held encoded at once. A part without rows goes alone (`blocks`).
            if p.batch.num_rows() == 0 {
                return self.full(p);
            }
            return Ok(whole(p, self.blocks.add(&p.batch)?));
        };
        // The same buffers (cheap), or equal rows in new buffers (a republished copy).
        let unchanged = |old: PartMirror| {
            Ok((
                PartRows::Unchanged,
                PartMirror {
                    last: p.clone(),
                    held: old.held,
                    keys: old.keys,
                },
            ))
        };
        if same_buffers(&old.last.batch, &p.batch) {
            return unchanged(old);
        }
        // A part this node received as a patch against exactly the rows its parent holds:
        // the same patch brings the parent to the same rows.
        if matches!(old.held, Held::Last) {
            if let Some(patch) = forward::find(&old.last, p) {
                let values = patch
                    .values
                    .map(|v| self.patches.add(v.columns().to_vec(), v.rows()));
                let rows = PartRows::Patch {
                    rows: patch.rows,
                    values,
                    removed: patch.removed,
                    added: patch.added,
                };
                return Ok((
                    rows,
                    PartMirror {
                        last: p.clone(),
                        held: Held::Last,
                        keys: None,
                    },
                ));
            }
        }
        if old.last.batch == p.batch {
            return unchanged(old);
        }
        if p.batch.num_columns() == 0 || p.batch.num_rows() == 0 || old.last.batch.num_rows() == 0 {
            return self.full(p);
        }
        let schema = &table.schema;
        let key = table.key.get_or_insert_with(|| {
            self.keys
                .get(self.table)
                .and_then(|k| KeyMatcher::new(schema, k))
        });
        match (key.as_ref(), old.held) {
            (Some(key), Held::Last) => {
                self.patch_part(key, old.last.batch.clone(), old.keys.map(|k| *k), p)
            }
            (Some(key), Held::Batch(b)) => self.patch_part(key, *b, old.keys.map(|k| *k), p),
            (None, Held::Last) => {
                self.diff_part(&mut table.converter, schema, None, &old.last.batch, p)
            }
            (None, Held::Rows(r)) => {
                self.diff_part(&mut table.converter, schema, Some(*r), &old.last.batch, p)
            }
            // A mirror of the other kind (cannot happen: a table's key is fixed with its
            // schema): start the part over.
            _ => self.full(p),
        }
    }

    fn full(&mut self, p: &Arc<Part>) -> Result<(PartRows, PartMirror), LinkError> {
        Ok(whole(
            p,
            PartRows::Full(IpcRows::Bytes(self.ipc.batch(&p.batch)?)),
        ))
    }

    /// A keyed part as a patch against the parent's rows `held`, or in full when that is
    /// no smaller.
    fn patch_part(
        &mut self,
        key: &KeyMatcher,
        held: RecordBatch,
        held_keys: Option<Rows>,
        p: &Arc<Part>,
    ) -> Result<(PartRows, PartMirror), LinkError> {
        let Some(plan) = patch::plan(key, &held, held_keys, &p.batch)? else {
            return self.full(p);
        };
        // The parent's rows after this part, as the decoder will have them.
        let next = |plan: &patch::Plan| -> Result<Held, LinkError> {
            Ok(if plan.in_order() {
                Held::Last
            } else {
                Held::Batch(Box::new(take_record_batch(
                    &p.batch,
                    &UInt32Array::from(plan.order.clone()),
                )?))
            })
        };
        if plan.is_empty() {
            // Same rows, maybe in another order: the parent keeps its order.
            let held = if plan.in_order() {
                Held::Last
            } else {
                Held::Batch(Box::new(held))
            };
            return Ok((
                PartRows::Unchanged,
                PartMirror {
                    last: p.clone(),
                    held,
                    keys: Some(Box::new(plan.held_keys)),
                },
            ));
        }
        if plan.added.len() == p.batch.num_rows() {
            return self.full(p);
        }
        let added = if plan.added.is_empty() {
            Vec::new()
        } else {
            let rows = take_record_batch(&p.batch, &UInt32Array::from(plan.added.clone()))?;
            self.ipc.batch(&rows)?
        };
        // When most rows changed a patch may be no smaller than the part: compare (row
        // indexes cost about a byte each once compressed, removed ones up to 3).
        let touched = plan.rows.len() + plan.added.len() + plan.removed.len();
        if touched * 2 >= p.batch.num_rows() {
            let values = plan.values.as_ref().map_or(0, body_bytes);
            let size = values + added.len() + plan.rows.len() + 3 * plan.removed.len();
            if body_bytes(&p.batch) <= size {
                return Ok((
                    PartRows::Full(IpcRows::Bytes(self.ipc.batch(&p.batch)?)),
                    PartMirror {
                        last: p.clone(),
                        held: Held::Last,
                        keys: Some(Box::new(plan.new_keys)),
                    },
                ));
            }
        }
        let held = next(&plan)?;
        // In order, the parent's key rows are the new rows' (otherwise made again).
        let in_order = plan.in_order();
        let rows = plan.row_gaps();
        let keys = in_order.then(|| Box::new(plan.new_keys));
        let values = plan.values.map(|v| self.patches.add(plan.columns, v));
        Ok((
            PartRows::Patch {
                rows,
                values,
                removed: plan.removed,
                added,
            },
            PartMirror {
                last: p.clone(),
                held,
                keys,
            },
        ))
    }

    /// A part of a table without a key as a multiset diff against the parent's rows
    /// (`held` in row format, or `last` when the parent holds exactly that).
    fn diff_part(
        &mut self,
        converter: &mut Option<Option<RowConverter>>,
        schema: &SchemaRef,
        held: Option<Rows>,
        last: &RecordBatch,
        p: &Arc<Part>,
    ) -> Result<(PartRows, PartMirror), LinkError> {
        let converter = converter.get_or_insert_with(|| {
            let fields = schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect();
            RowConverter::new(fields).ok()
        });
        let Some(conv) = converter.as_ref() else {
            return self.full(p);
        };
        // A one-row part that changed (a machine's `sys` row) cannot diff smaller than its
        // full rows: skip the row conversion.
        if p.batch.num_rows() <= 1 {
            return self.full(p);
        }
        let held_rows = match held {
            Some(rows) => rows,
            None => conv.convert_columns(last.columns())?,
        };
        let new_rows = conv.convert_columns(p.batch.columns())?;
        let m = match_rows(&held_rows, &new_rows);
        if m.removed.is_empty() && m.added.is_empty() {
            // Same rows in another order: the parent keeps its order.
            return Ok((
                PartRows::Unchanged,
                PartMirror {
                    last: p.clone(),
                    held: Held::Rows(Box::new(held_rows)),
                    keys: None,
                },
            ));
        }
        if m.added.len() == new_rows.num_rows() {
            return self.full(p);
        }
        let added_batch = take_record_batch(&p.batch, &UInt32Array::from(m.added.clone()))?;
        let added = self.ipc.batch(&added_batch)?;
        // When most rows changed a diff may be no smaller than the part: compare.
        if m.added.len() * 2 >= new_rows.num_rows() {
            let whole = self.ipc.batch(&p.batch)?;
            // Each removed index costs up to 3 bytes as a varint for parts below 2M rows.
            if whole.len() <= added.len() + 3 * m.removed.len() {
                return Ok((
                    PartRows::Full(IpcRows::Bytes(whole)),
                    PartMirror {
                        last: p.clone(),
                        held: Held::Last,
                        keys: None,
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
                last: p.clone(),
                held: Held::Rows(Box::new(next_held)),
                keys: None,
            },
        ))
    }
}

/// How `p`'s sources travel, given the link's `times` (this frame's) and what the parent
/// holds for the part (the part last sent, and whether its sources went with their own
/// times); and whether they go with their own times now.
fn sources_of(times: &SourceTimes, held: Option<(&Part, bool)>, p: &Part) -> (Sources, bool) {
    let at_link_time = p
        .sources
        .iter()
        .all(|s| times.get(&s.source) == Some(unix_millis(s.published_at)));
    if let Some((last, stamped)) = held {
        let same = stamped != at_link_time
            && last.sources.len() == p.sources.len()
            && last.sources.iter().zip(&p.sources).all(|(a, b)| {
                a.source == b.source
                    && (!stamped || unix_millis(a.published_at) == unix_millis(b.published_at))
            });
        if same {
            return (Sources::Held, stamped);
        }
    }
    let sources = p.sources.iter();
    let sent = if at_link_time {
        Sources::Named(sources.map(|s| s.source.to_string()).collect())
    } else {
        Sources::Stamped(
            sources
                .map(|s| (s.source.to_string(), unix_millis(s.published_at)))
                .collect(),
        )
    };
    (sent, !at_link_time)
}

/// `p` sent with all its rows (`rows`): the parent then holds exactly them.
fn whole(p: &Arc<Part>, rows: PartRows) -> (PartRows, PartMirror) {
    (
        rows,
        PartMirror {
            last: p.clone(),
            held: Held::Last,
            keys: None,
        },
    )
}

/// The bytes of a batch's buffers as its rows need them (about its Arrow IPC body).
fn body_bytes(b: &RecordBatch) -> usize {
    b.columns()
        .iter()
        .map(|c| {
            c.to_data()
                .get_slice_memory_size()
                .unwrap_or(usize::MAX / 64)
        })
        .fold(0, usize::saturating_add)
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
#[cfg(test)]
mod mirror_size_tests {
    /// A mirrored part and its key fill one 64-byte slot of a table's map (420,000 of them
    /// at a TLA of 70,000 machines): what is not `Last` stays boxed.
    #[test]
    fn a_mirrored_part_and_its_key_fit_64_bytes() {
        let slot = std::mem::size_of::<super::MirroredPart>() + std::mem::size_of::<String>();
        assert!(slot <= 64, "{slot} bytes a slot");
    }
}

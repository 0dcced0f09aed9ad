//! The parent side: a [`LinkDecoder`] applies a child's frames to what it holds.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use super::blocks::BlockReader;
use super::gaps::GapReader;
use super::ipc::{decode_batch, decode_rows};
use super::shared_schemas::shared_schema;
use super::times::SourceTimes;
use super::{forward, patch};
use crate::generation::{GenTable, NameHasher, NameMap, Part, PartSources, SourceStamp};
use crate::link::wire::{
    GenerationFrame, IpcRows, Listing, PartFrame, PartId, PartRows, PatchValues, Sources,
    TableFrame,
};
use crate::link::LinkError;
use crate::threads;

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
    /// Record the patches applied, for this node's encoders to forward ([`super::forward`]).
    forwarding: bool,
    /// The patches recorded from the last frame, forgotten when the next one arrives.
    recorded: Vec<forward::Recorded>,
    /// The link's time per source (unix ms): [`GenerationFrame::stamps`].
    times: SourceTimes,
}

struct HeldTable {
    schema: SchemaRef,
    /// The child's parts as last applied, in its order, and where each key is.
    parts: Vec<HeldPart>,
    index: NameMap<usize>,
}

/// A part as held: the part the last generation showed (its key, rows and sources, each
/// at its time), shown again while its rows and its sources' times stay the same. Most parts
/// of a frame are unchanged, and a part made anew is four allocations (the `Arc`, its body,
/// the key and the column list; one more per source named anew), one when only its
/// sources' times moved (`Part::restamped`; 420,000 parts a round at a TLA of 70,000
/// machines). The decoder keeps nothing else per part: without a second copy of the key,
/// the column list and the sources, a SQL node of 70,000 machines has 60-120 MiB less RSS
/// (BENCHMARKS.md, "Where we stand").
struct HeldPart {
    shown: Arc<Part>,
    /// Its sources carry their own times (`Sources::Stamped`, which `shown` has); otherwise
    /// each is at its source's time on the link, which may move while the rows stay.
    stamped: bool,
}

impl HeldTable {
    fn new(schema: SchemaRef) -> Self {
        HeldTable {
            schema,
            parts: Vec::new(),
            index: NameMap::default(),
        }
    }

    fn get(&self, key: &str) -> Option<&HeldPart> {
        self.index.get(key).map(|&i| &self.parts[i])
    }
}

impl Drop for LinkDecoder {
    fn drop(&mut self) {
        forward::forget(&mut self.recorded);
    }
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
            forwarding: false,
            recorded: Vec::new(),
            times: SourceTimes::default(),
        }
    }

    /// A decoder on a node that sends what it merges on to a parent (a TLA): the patches it
    /// applies are kept (weakly, with the rows they gave) so that the node's
    /// [`LinkEncoder`](super::LinkEncoder) can forward them rather than match the parts
    /// again.
    pub fn forwarding() -> Self {
        let mut d = Self::new();
        d.forwarding = true;
        d
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
            self.times.clear();
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
        forward::forget(&mut self.recorded);
        let mut old = std::mem::take(&mut self.tables);
        if frame.full {
            old.clear();
            self.times.clear();
        }
        self.times.apply(frame.stamps, frame.sealed_at_ms)?;
        // Each table with what is held of it; then the tables are applied, on several
        // threads when the frame is large (`threads`).
        let mut jobs = Vec::with_capacity(frame.tables.len());
        let mut names = std::collections::HashSet::with_capacity(frame.tables.len());
        for mut tf in frame.tables {
            let name = std::mem::take(&mut tf.name);
            if !names.insert(name.clone()) {
                return Err(LinkError::Protocol(format!(
                    "table '{name}' is listed twice in one frame"
                )));
            }
            let prev = old.remove(&name);
            let held = match (tf.schema.take(), prev) {
                (Some(bytes), prev) => {
                    let schema =
                        shared_schema(&bytes).map_err(|e| in_table(&name, "its schema", e))?;
                    // The child sends a schema again only when it changed; if it did not,
                    // the parts held are still good.
                    match prev {
                        Some(p) if p.schema == schema => p,
                        _ => HeldTable::new(schema),
                    }
                }
                (None, Some(prev)) => prev,
                (None, None) => {
                    return Err(LinkError::Protocol(format!(
                        "table '{name}' has no schema on this link (none sent, none held)"
                    )))
                }
            };
            jobs.push((name, held, tf));
        }
        let times = &self.times;
        let forwarding = self.forwarding;
        let applied = threads::map_weighted(
            jobs,
            |(_, _, tf)| apply_weight(tf),
            |(name, held, tf)| {
                let mut recorded = Vec::new();
                let table =
                    apply_table(times, forwarding.then_some(&mut recorded), &name, held, tf);
                (name, table, recorded)
            },
        );
        let mut next = HashMap::with_capacity(applied.len());
        let mut out = BTreeMap::new();
        let mut failed = None;
        for (name, table, recorded) in applied {
            // Kept even when another table failed, so that they are forgotten with the rest.
            self.recorded.extend(recorded);
            match table {
                Ok((held, table)) => {
                    out.insert(name.clone(), table);
                    next.insert(name, held);
                }
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        if let Some(e) = failed {
            return Err(e);
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

/// A table frame's share of the work of applying a frame, in parts of about a kilobyte
/// (a full copy's average): each part costs a lookup and a decode, and the decode grows with
/// its bytes. By parts alone the six tables of a fleet weigh the same, though `processes`
/// is nearly half the bytes, and one of two threads got two thirds of a full copy.
fn apply_weight(tf: &TableFrame) -> usize {
    let bytes: usize = tf
        .parts
        .iter()
        .map(|p| match &p.rows {
            PartRows::Full(rows) => rows.bytes().map_or(0, <[u8]>::len),
            PartRows::Unchanged | PartRows::InBlock(_) => 0,
            PartRows::Diff { removed, added } => removed.len() * 4 + added.len(),
            PartRows::Patch {
                rows,
                removed,
                added,
                ..
            } => (rows.len() + removed.len()) * 4 + added.len(),
        })
        .sum();
    let values: usize = tf.patches.iter().map(|p| p.values.len()).sum();
    let blocks: usize = tf
        .blocks
        .iter()
        .map(|b| b.bytes().map_or(0, <[u8]>::len))
        .sum();
    tf.parts.len() + (bytes + values + blocks) / 1024
}

/// One table of a frame applied to what is held of it (`held`): what the decoder holds of
/// it after, and the table of the child's generation. With `recorded` (a forwarding
/// decoder), the patches applied are recorded there ([`forward`]).
fn apply_table(
    times: &SourceTimes,
    mut recorded: Option<&mut Vec<forward::Recorded>>,
    name: &str,
    held: HeldTable,
    tf: TableFrame,
) -> Result<(HeldTable, GenTable), LinkError> {
    let mut patches = tf
        .patches
        .into_iter()
        .map(|p| PatchCursor::decode(&held.schema, p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| in_table(name, "its patches", e))?;
    let mut listed = Vec::with_capacity(tf.parts.len());
    // Parts sent by where they are held (`PartId::Held`).
    let mut positions = GapReader::default();
    let mut blocks = BlockReader::new(&held.schema, tf.blocks);
    for pf in tf.parts {
        let sent = Sent {
            patches: &mut patches,
            blocks: &mut blocks,
        };
        listed.push(part(
            times,
            name,
            &held,
            sent,
            &mut positions,
            recorded.as_deref_mut(),
            pf,
        )?);
    }
    blocks
        .finish()
        .map_err(|e| in_table(name, "its blocks", e))?;
    if let Some(left) = patches.iter().find(|p| p.next < p.rows()) {
        return Err(LinkError::Protocol(format!(
            "table '{name}': {} rows of patch values are left over",
            left.rows() - left.next
        )));
    }
    let mut table = match tf.listing {
        Listing::Every => table_of(name, held.schema, listed)?,
        Listing::Changes { gone } => changed(name, held, listed, gone)?,
    };
    let parts = table
        .parts
        .iter_mut()
        .map(|p| part_out(times, name, p))
        .collect::<Result<_, _>>()?;
    let out = GenTable {
        schema: table.schema.clone(),
        parts,
    };
    Ok((table, out))
}

/// A held part as the generation shows it: each source at its time. The part shown last
/// time if each source is still at the same time.
fn part_out(times: &SourceTimes, name: &str, p: &mut HeldPart) -> Result<Arc<Part>, LinkError> {
    if p.stamped {
        return Ok(p.shown.clone());
    }
    let mut same = true;
    for s in &p.shown.sources {
        if link_time(times, name, &p.shown.key, &s.source)? != s.published_at {
            same = false;
            break;
        }
    }
    if !same {
        let names = p.shown.sources.iter().map(|s| s.source.clone());
        let sources = at_link_times(times, name, &p.shown.key, names)?;
        p.shown = Arc::new(p.shown.restamped(sources));
    }
    Ok(p.shown.clone())
}

/// Each of `sources` (of part `key` of table `name`) at its time on the link.
fn at_link_times(
    times: &SourceTimes,
    name: &str,
    key: &str,
    sources: impl Iterator<Item = Arc<str>>,
) -> Result<PartSources, LinkError> {
    sources
        .map(|source| {
            let published_at = link_time(times, name, key, &source)?;
            Ok(SourceStamp {
                source,
                published_at,
            })
        })
        .collect()
}

/// `source`'s time on the link, for part `key` of table `name`.
fn link_time(
    times: &SourceTimes,
    name: &str,
    key: &str,
    source: &str,
) -> Result<SystemTime, LinkError> {
    let ms = times.get(source).ok_or_else(|| {
        LinkError::Protocol(format!(
            "part '{key}' of table '{name}' names source '{source}', which has no time on this link"
        ))
    })?;
    from_millis(ms)
}

/// What a table frame sends apart from its parts, which they read in order.
struct Sent<'s, 'b> {
    patches: &'s mut [PatchCursor],
    blocks: &'s mut BlockReader<'b>,
}

/// One listed part, applied to what `held` holds of it.
fn part(
    times: &SourceTimes,
    name: &str,
    held: &HeldTable,
    sent: Sent<'_, '_>,
    positions: &mut GapReader,
    recorded: Option<&mut Vec<forward::Recorded>>,
    pf: PartFrame,
) -> Result<HeldPart, LinkError> {
    let (key, old) = match pf.key {
        PartId::Key(key) => {
            let old = held.get(&key);
            (Cow::Owned(key), old)
        }
        PartId::Held(gap) => {
            let i = positions.position(gap, held.parts.len()).map_err(|_| {
                LinkError::Protocol(format!(
                    "a part of table '{name}' is sent by a position past the {} parts held",
                    held.parts.len()
                ))
            })?;
            let old = &held.parts[i];
            (Cow::Borrowed(old.shown.key.as_str()), Some(old))
        }
    };
    let schema = &held.schema;
    let need = |what: &str| {
        old.ok_or_else(|| {
            LinkError::Protocol(format!(
                "part '{key}' of table '{name}' is sent as {what} but is not held"
            ))
        })
    };
    let in_part = |e| in_table(name, &format!("part '{key}'"), e);
    // A patch applied, with the part it was applied to, for `recorded`.
    let mut applied = None;
    // The new rows; None for the rows held, sent unchanged with other sources.
    let batch = match pf.rows {
        PartRows::Full(rows) => Some(one_batch(schema, rows).map_err(in_part)?),
        PartRows::InBlock(rows) => Some(sent.blocks.take(rows).map_err(in_part)?),
        PartRows::Unchanged => {
            let old = need("unchanged")?;
            if matches!(pf.sources, Sources::Held) {
                // The part last shown, as it is ([`part_out`] checks its sources' times).
                return Ok(HeldPart {
                    shown: old.shown.clone(),
                    stamped: old.stamped,
                });
            }
            None
        }
        PartRows::Diff { removed, added } => {
            let old = &need("a diff")?.shown.batch;
            let added = decode_batch(&added, schema).map_err(in_part)?;
            Some(apply_diff(old, &removed, &added).map_err(in_part)?)
        }
        PartRows::Patch {
            rows,
            values,
            removed,
            added,
        } => {
            let old = need("a patch")?;
            let added_bytes = added;
            let added = if added_bytes.is_empty() {
                None
            } else {
                Some(decode_batch(&added_bytes, schema).map_err(in_part)?)
            };
            let values = match values {
                None => None,
                Some(i) => {
                    let cursor = sent.patches.get_mut(i as usize).ok_or_else(|| {
                        in_part(LinkError::Protocol(format!(
                            "patch values {i} are not in the frame"
                        )))
                    })?;
                    Some(cursor.take(rows.len()).map_err(in_part)?)
                }
            };
            let patched = patch::apply(
                &old.shown.batch,
                &rows,
                values.as_ref().map(|v| (v.columns(), v.rows())),
                &removed,
                added.as_ref(),
            )
            .map_err(in_part)?;
            if recorded.is_some() {
                let patch = forward::Patch {
                    rows,
                    values,
                    removed,
                    added: added_bytes,
                };
                applied = Some((old.shown.clone(), patch));
            }
            Some(patched)
        }
    };
    let (sources, stamped) = match pf.sources {
        Sources::Held => {
            let old = need("with the sources held")?;
            let sources = if old.stamped {
                old.shown.sources.clone()
            } else {
                let names = old.shown.sources.iter().map(|s| s.source.clone());
                at_link_times(times, name, &key, names)?
            };
            (sources, old.stamped)
        }
        Sources::Named(names) => {
            let names = names.into_iter().map(Arc::from);
            (at_link_times(times, name, &key, names)?, false)
        }
        Sources::Stamped(stamped) => (
            stamped
                .into_iter()
                .map(|(source, ms)| {
                    Ok(SourceStamp {
                        source: source.into(),
                        published_at: from_millis(ms)?,
                    })
                })
                .collect::<Result<_, LinkError>>()?,
            true,
        ),
    };
    let shown = Arc::new(match batch {
        Some(batch) => Part::new(key.into_owned(), batch, sources),
        None => need("unchanged")?.shown.restamped(sources),
    });
    if let (Some(recorded), Some((base, patch))) = (recorded, applied) {
        recorded.push(forward::record(&base, &shown, patch));
    }
    Ok(HeldPart { shown, stamped })
}

/// One entry of a table's patch values, decoded, and how many of its rows the parts read so
/// far.
struct PatchCursor {
    /// The patched columns and their values, shared with the patches a forwarding decoder
    /// records.
    values: Arc<forward::Values>,
    next: usize,
}

impl PatchCursor {
    fn decode(table: &SchemaRef, p: PatchValues) -> Result<PatchCursor, LinkError> {
        if p.columns.is_empty() {
            return Err(LinkError::Protocol("patch values of no column".into()));
        }
        let (columns, values) = patch::widen(table, &p.columns, p.rows, &p.values)?;
        Ok(PatchCursor {
            values: Arc::new(forward::Values { columns, values }),
            next: 0,
        })
    }

    fn rows(&self) -> usize {
        self.values.values.num_rows()
    }

    /// The next `n` rows.
    fn take(&mut self, n: usize) -> Result<forward::ValueRows, LinkError> {
        let end = self.next.saturating_add(n);
        if end > self.rows() {
            return Err(LinkError::Protocol(format!(
                "a patch of {n} rows finds {} rows of values left",
                self.rows() - self.next
            )));
        }
        let rows = forward::ValueRows {
            values: self.values.clone(),
            offset: self.next,
            len: n,
        };
        self.next = end;
        Ok(rows)
    }
}

/// A table of exactly the `parts` listed, in their order.
fn table_of(name: &str, schema: SchemaRef, parts: Vec<HeldPart>) -> Result<HeldTable, LinkError> {
    let mut index = NameMap::with_capacity_and_hasher(parts.len(), NameHasher::default());
    for (i, p) in parts.iter().enumerate() {
        if index.insert(p.shown.key.clone(), i).is_some() {
            return Err(LinkError::Protocol(format!(
                "part '{}' of table '{name}' is listed twice",
                p.shown.key
            )));
        }
    }
    Ok(HeldTable {
        schema,
        parts,
        index,
    })
}

/// `held` with the `listed` parts in place of the held ones of the same key (new ones after
/// the rest, in their order) and without the `gone` ones ([`Listing::Changes`]).
fn changed(
    name: &str,
    held: HeldTable,
    listed: Vec<HeldPart>,
    gone: Vec<String>,
) -> Result<HeldTable, LinkError> {
    let HeldTable {
        schema,
        parts,
        index,
    } = held;
    let mut slots: Vec<Option<HeldPart>> = parts.into_iter().map(Some).collect();
    for key in &gone {
        let slot = index.get(key).and_then(|&i| slots[i].take());
        if slot.is_none() {
            return Err(LinkError::Protocol(format!(
                "part '{key}' of table '{name}' is gone but is not held (or listed twice)"
            )));
        }
    }
    let mut replaced = vec![false; slots.len()];
    let mut added = Vec::new();
    for p in listed {
        let Some(&i) = index.get(&p.shown.key) else {
            added.push(p);
            continue;
        };
        if slots[i].is_none() || replaced[i] {
            return Err(LinkError::Protocol(format!(
                "part '{}' of table '{name}' is listed twice, or listed and gone",
                p.shown.key
            )));
        }
        replaced[i] = true;
        slots[i] = Some(p);
    }
    if gone.is_empty() && added.is_empty() {
        // The steady state: every part where it was, the index still right.
        let parts = slots.into_iter().flatten().collect();
        return Ok(HeldTable {
            schema,
            parts,
            index,
        });
    }
    let parts = slots.into_iter().flatten().chain(added).collect();
    table_of(name, schema, parts)
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

/// Which of a part's `n` rows stay after `removed` (indexes, strictly ascending, in range:
/// anything else is a protocol error), for diffs and patches alike.
pub(super) fn kept_rows(removed: &[u32], n: usize) -> Result<Vec<bool>, LinkError> {
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
    Ok(keep)
}

/// The parent's rows after a diff: `old` without the `removed` indexes (strictly ascending),
/// in their order, followed by `added`.
pub(super) fn apply_diff(
    old: &RecordBatch,
    removed: &[u32],
    added: &RecordBatch,
) -> Result<RecordBatch, LinkError> {
    let keep = kept_rows(removed, old.num_rows())?;
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

/// A part's rows sent alone, as one batch (handed over in process, they may be several).
fn one_batch(schema: &SchemaRef, rows: IpcRows) -> Result<RecordBatch, LinkError> {
    match <[RecordBatch; 1]>::try_from(decode_rows(rows, schema)?) {
        Ok([one]) => Ok(one),
        Err(batches) => Ok(concat_batches(schema, &batches)?),
    }
}

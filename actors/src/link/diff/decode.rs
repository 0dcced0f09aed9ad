//! The parent side: a [`LinkDecoder`] applies a child's frames to what it holds.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use super::ipc::{decode_batch, decode_schema};
use super::{forward, patch};
use crate::generation::{GenTable, Part, SourceStamp};
use crate::link::wire::{GenerationFrame, PartRows};
use crate::link::LinkError;

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
}

struct HeldTable {
    schema: SchemaRef,
    parts: HashMap<String, RecordBatch>,
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
        let forwarding = self.forwarding;
        forward::forget(&mut self.recorded);
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
                    PartRows::Patch {
                        rows,
                        columns,
                        values,
                        removed,
                        added,
                    } => {
                        let old = held.remove(&key).ok_or_else(|| {
                            LinkError::Protocol(format!(
                                "part '{key}' of table '{name}' is sent as a patch but is not held"
                            ))
                        })?;
                        let added_bytes = added;
                        let added = if added_bytes.is_empty() {
                            None
                        } else {
                            Some(
                                decode_batch(&added_bytes, &schema)
                                    .map_err(|e| in_table(&name, &format!("part '{key}'"), e))?,
                            )
                        };
                        let patched =
                            patch::apply(&old, &rows, &columns, &values, &removed, added.as_ref())
                                .map_err(|e| in_table(&name, &format!("part '{key}'"), e))?;
                        if forwarding {
                            let rows = PartRows::Patch {
                                rows,
                                columns,
                                values,
                                removed,
                                added: added_bytes,
                            };
                            self.recorded.extend(forward::record(&old, &patched, rows));
                        }
                        patched
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

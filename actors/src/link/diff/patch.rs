//! The `Patch` part kind, for tables with a key: a part's new rows are matched with the rows
//! the parent holds by key, and only what changed travels. Matched rows that differ are
//! patched in place, only in the columns that differ; held rows without a match are removed,
//! new rows without one are added (after the rest, as in a multiset diff).
//!
//! A changed column of a fixed-width numeric type (integers, floats, timestamps, dates,
//! durations) without NULLs travels as a **delta**: the new value's bits minus the old one's,
//! a wrapping integer of the same width. Counters (`uptime`, `cpu_seconds`, packets) then
//! send small numbers that compress to little; the delta is exact for floats too (it is on
//! the bits). A column goes as a delta only when its deltas need fewer significant bytes than
//! its values, so gauges that jump around go as values.
//!
//! The key only guides the matching: any one-to-one pairing gives a correct patch (the
//! patched columns cover every difference), so keys that repeat pair in order and NULL keys
//! pair with NULL keys.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::array::{
    make_array, Array, ArrayData, ArrayRef, Int32Array, Int64Array, UInt32Array,
};
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::compute::kernels::cmp::not_distinct;
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::datatypes::{Int32Type, Int64Type};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::row::{RowConverter, Rows, SortField};

use super::gaps::{GapReader, GapWriter};
use super::ipc::{decode_batch, has_dictionary, IpcWriter};
use super::packed::{self, Rebuild};
use crate::link::wire::PatchValues;
use crate::link::LinkError;

/// A table's key columns and a row-format converter for them.
pub(super) struct KeyMatcher {
    columns: Vec<usize>,
    converter: RowConverter,
}

impl KeyMatcher {
    /// None when `key` is empty, names a column `schema` lacks, or has a type the row format
    /// cannot hold (the table then travels as multiset diffs).
    pub(super) fn new(schema: &Schema, key: &[String]) -> Option<KeyMatcher> {
        if key.is_empty() {
            return None;
        }
        let columns = key
            .iter()
            .map(|k| schema.index_of(k).ok())
            .collect::<Option<Vec<_>>>()?;
        let fields = columns
            .iter()
            .map(|&i| SortField::new(schema.field(i).data_type().clone()))
            .collect();
        let converter = RowConverter::new(fields).ok()?;
        Some(KeyMatcher { columns, converter })
    }

    fn keys(&self, batch: &RecordBatch) -> Result<Rows, LinkError> {
        let cols: Vec<ArrayRef> = self
            .columns
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        Ok(self.converter.convert_columns(&cols)?)
    }
}

/// A patch before it is encoded.
pub(super) struct Plan {
    /// Held rows whose values change, ascending.
    pub rows: Vec<u32>,
    /// (column index, sent as a delta), ascending.
    pub columns: Vec<(u32, bool)>,
    /// One column per entry of `columns`, one row per entry of `rows` ([`patch_schema`]).
    pub values: Option<RecordBatch>,
    /// Held rows without a match, ascending.
    pub removed: Vec<u32>,
    /// New rows without a match, ascending.
    pub added: Vec<u32>,
    /// The parent's rows after the patch, as indexes into the new rows.
    pub order: Vec<u32>,
    /// The key rows of the held and of the new rows, kept by the encoder for the next frame.
    pub held_keys: Rows,
    pub new_keys: Rows,
}

impl Plan {
    /// The parent's rows already equal the new ones (maybe in another order).
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.removed.is_empty() && self.added.is_empty()
    }

    /// After the patch the parent holds the new rows in their own order.
    pub fn in_order(&self) -> bool {
        self.order.iter().enumerate().all(|(i, &n)| i as u32 == n)
    }

    /// `rows` as the wire carries them ([`super::gaps`]).
    pub fn row_gaps(&self) -> Vec<u32> {
        let mut gaps = GapWriter::default();
        self.rows
            .iter()
            .map(|&r| gaps.gap(r as usize) as u32)
            .collect()
    }
}

/// Matches `new` with `held` by key and lists what changed. `None` when a changed column
/// cannot be patched (a dictionary, or a type Arrow cannot compare): send the part in full.
///
/// `held_keys` are `held`'s key rows when the caller kept them from an earlier plan.
pub(super) fn plan(
    key: &KeyMatcher,
    held: &RecordBatch,
    held_keys: Option<Rows>,
    new: &RecordBatch,
) -> Result<Option<Plan>, LinkError> {
    let held_keys = match held_keys {
        Some(k) if k.num_rows() == held.num_rows() => k,
        _ => key.keys(held)?,
    };
    let new_keys = key.keys(new)?;
    // Pushed in reverse so that pop() pairs equal keys in order.
    let mut unmatched: HashMap<&[u8], Vec<u32>> = HashMap::with_capacity(held.num_rows());
    for i in (0..held.num_rows()).rev() {
        unmatched
            .entry(held_keys.row(i).data())
            .or_default()
            .push(i as u32);
    }
    let mut new_of_held: Vec<Option<u32>> = vec![None; held.num_rows()];
    let mut added = Vec::new();
    for (i, k) in new_keys.iter().enumerate() {
        match unmatched.get_mut(k.data()).and_then(Vec::pop) {
            Some(h) => new_of_held[h as usize] = Some(i as u32),
            None => added.push(i as u32),
        }
    }
    // Matched pairs in held order: held row hs[j] becomes new row ns[j].
    let mut removed = Vec::new();
    let (mut hs, mut ns) = (Vec::new(), Vec::new());
    for (h, n) in new_of_held.iter().enumerate() {
        match n {
            Some(n) => {
                hs.push(h as u32);
                ns.push(*n);
            }
            None => removed.push(h as u32),
        }
    }

    // Compare the pairs column by column (no copy when a side is already in pair order).
    let identity =
        |v: &[u32], len: usize| v.len() == len && v.iter().enumerate().all(|(i, &x)| i as u32 == x);
    let hs_take = (!identity(&hs, held.num_rows())).then(|| UInt32Array::from(hs.clone()));
    let ns_take = (!identity(&ns, new.num_rows())).then(|| UInt32Array::from(ns.clone()));
    let aligned = |col: &ArrayRef, idx: &Option<UInt32Array>| -> Result<ArrayRef, LinkError> {
        Ok(match idx {
            Some(i) => take(col.as_ref(), i, None)?,
            None => col.clone(),
        })
    };
    let mut changed = Vec::new();
    let mut row_changed = vec![false; hs.len()];
    for c in 0..new.num_columns() {
        let old = aligned(held.column(c), &hs_take)?;
        let now = aligned(new.column(c), &ns_take)?;
        let Ok(eq) = not_distinct(&old, &now) else {
            return Ok(None);
        };
        if eq.true_count() == eq.len() {
            continue;
        }
        if has_dictionary(old.data_type()) {
            return Ok(None);
        }
        for (slot, same) in row_changed.iter_mut().zip(eq.values().iter()) {
            *slot |= !same;
        }
        changed.push((c, old, now));
    }

    let patched: Vec<u32> = (0..hs.len() as u32)
        .filter(|&j| row_changed[j as usize])
        .collect();
    let rows = patched.iter().map(|&j| hs[j as usize]).collect();
    let pick = UInt32Array::from(patched);
    let mut columns = Vec::with_capacity(changed.len());
    let mut arrays = Vec::with_capacity(changed.len());
    for (c, old, now) in changed {
        let old = take(old.as_ref(), &pick, None)?;
        let now = take(now.as_ref(), &pick, None)?;
        match delta_of(&old, &now) {
            Some(d) => {
                columns.push((c as u32, true));
                arrays.push(d);
            }
            None => {
                columns.push((c as u32, false));
                arrays.push(now);
            }
        }
    }
    let values = if columns.is_empty() {
        None
    } else {
        let schema = patch_schema(held.schema_ref(), &columns)?;
        Some(RecordBatch::try_new(schema, arrays)?)
    };
    let mut order = ns;
    order.extend_from_slice(&added);
    Ok(Some(Plan {
        rows,
        columns,
        values,
        removed,
        added,
        order,
        held_keys,
        new_keys,
    }))
}

/// The width in bytes of a type that can travel as a delta.
fn delta_width(t: &DataType) -> Option<usize> {
    match t {
        DataType::Int32
        | DataType::UInt32
        | DataType::Float32
        | DataType::Date32
        | DataType::Time32(_) => Some(4),
        DataType::Int64
        | DataType::UInt64
        | DataType::Float64
        | DataType::Date64
        | DataType::Time64(_)
        | DataType::Timestamp(..)
        | DataType::Duration(_) => Some(8),
        _ => None,
    }
}

/// Bytes a value needs once zigzag-encoded: what a compressor roughly pays for it.
fn significant(x: i64) -> u32 {
    let z = ((x << 1) ^ (x >> 63)) as u64;
    (64 - z.leading_zeros()).div_ceil(8)
}

/// `now - old` on the values' bits, when the column can take a delta and it is smaller.
fn delta_of(old: &ArrayRef, now: &ArrayRef) -> Option<ArrayRef> {
    let width = delta_width(old.data_type())?;
    if old.null_count() > 0 || now.null_count() > 0 {
        return None;
    }
    let (o, n, len) = (old.to_data(), now.to_data(), old.len());
    if width == 8 {
        let (o, n) = (&o.buffer::<i64>(0)[..len], &n.buffer::<i64>(0)[..len]);
        let d: Vec<i64> = n.iter().zip(o).map(|(n, o)| n.wrapping_sub(*o)).collect();
        let cost = |v: &[i64]| v.iter().map(|&x| significant(x)).sum::<u32>();
        (cost(&d) < cost(n)).then(|| Arc::new(Int64Array::from(d)) as ArrayRef)
    } else {
        let (o, n) = (&o.buffer::<i32>(0)[..len], &n.buffer::<i32>(0)[..len]);
        let d: Vec<i32> = n.iter().zip(o).map(|(n, o)| n.wrapping_sub(*o)).collect();
        let cost = |v: &[i32]| v.iter().map(|&x| significant(x as i64)).sum::<u32>();
        (cost(&d) < cost(n)).then(|| Arc::new(Int32Array::from(d)) as ArrayRef)
    }
}

/// The schema of a patch's values: per column its table type (nullable), or for a delta the
/// signed integer of its width. Checks the columns against the table.
pub(super) fn patch_schema(
    table: &Schema,
    columns: &[(u32, bool)],
) -> Result<SchemaRef, LinkError> {
    let mut prev: Option<u32> = None;
    let mut fields = Vec::with_capacity(columns.len());
    for &(c, delta) in columns {
        if prev.is_some_and(|p| c <= p) {
            return Err(LinkError::Protocol(format!(
                "patched columns are not strictly ascending ({} then {c})",
                prev.unwrap_or_default()
            )));
        }
        prev = Some(c);
        let f = table.fields().get(c as usize).ok_or_else(|| {
            LinkError::Protocol(format!(
                "patched column {c} is out of range (the table has {} columns)",
                table.fields().len()
            ))
        })?;
        fields.push(if delta {
            let t = match delta_width(f.data_type()) {
                Some(8) => DataType::Int64,
                Some(4) => DataType::Int32,
                _ => {
                    return Err(LinkError::Protocol(format!(
                        "column '{}' of type {} cannot take a delta",
                        f.name(),
                        f.data_type()
                    )))
                }
            };
            Field::new(c.to_string(), t, false)
        } else {
            Field::new(c.to_string(), f.data_type().clone(), true)
        });
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// A patch entry's values as they travel ([`PatchValues`]):
/// each delta column in the narrowest signed integer that holds all its deltas (a counter's
/// steps rarely need 8 bytes), raw, as byte planes (byte 0 of every value, then byte 1, ...),
/// which keep a column's predictable high bytes (signs, exponents) apart from its noisy low
/// bytes and so compress better. The columns of new values follow as one Arrow IPC message.
/// Deltas travel raw because Arrow IPC's metadata (a field node and two buffers per column,
/// or per plane) took 400-600 of a 70-machine cluster's 4540-byte steady frame (link
/// version 6; the frames' IPC messages split into metadata and bodies by scratch code).
/// Raw, a frame takes 3872 bytes as planes (`link-codec` at `BENCH_SCALE=0.07`); with a
/// scratch switch, not kept, 4117 value by value and 3995 with planes only for entries of
/// 128 rows or more.
pub(super) fn narrow(
    values: &RecordBatch,
    columns: &[(u32, bool)],
    ipc: &mut IpcWriter,
) -> Result<PatchValues, LinkError> {
    let n = values.num_rows();
    let mut out = Vec::new();
    let mut sent = Vec::with_capacity(columns.len());
    let (mut fields, mut arrays) = (Vec::new(), Vec::new());
    for ((&(c, delta), a), f) in columns
        .iter()
        .zip(values.columns())
        .zip(values.schema_ref().fields())
    {
        if !delta {
            sent.push((c, 0));
            fields.push(f.clone());
            arrays.push(a.clone());
            continue;
        }
        let deltas: Option<Vec<i64>> = match a.data_type() {
            _ if a.null_count() > 0 => None,
            DataType::Int64 => Some(a.as_primitive::<Int64Type>().values().to_vec()),
            DataType::Int32 => Some(
                a.as_primitive::<Int32Type>()
                    .values()
                    .iter()
                    .map(|&v| i64::from(v))
                    .collect(),
            ),
            _ => None,
        };
        let Some(deltas) = deltas else {
            // `delta_of` makes deltas of Int64/Int32 without NULLs only.
            return Err(LinkError::Protocol(format!(
                "patched column {c} is a delta of type {} or with NULLs",
                a.data_type()
            )));
        };
        let bytes = [1u8, 2, 4]
            .into_iter()
            .find(|&b| {
                let bits = 8 * u32::from(b);
                let (least, most) = (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1);
                deltas.iter().all(|&d| (least..=most).contains(&d))
            })
            .unwrap_or(8)
            .min(delta_bytes(a.data_type()));
        sent.push((c, bytes));
        let b = usize::from(bytes);
        out.reserve(n * b);
        for k in 0..b {
            out.extend(deltas.iter().map(|&d| (d >> (8 * k)) as u8));
        }
    }
    if !arrays.is_empty() {
        let options = RecordBatchOptions::new().with_row_count(Some(n));
        let batch =
            RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), arrays, &options)?;
        out.extend_from_slice(&ipc.batch(&batch)?);
    }
    let rows = u32::try_from(n).map_err(|_| {
        LinkError::Protocol(format!(
            "a patch entry of {n} rows, more than a frame holds"
        ))
    })?;
    Ok(PatchValues {
        columns: sent,
        rows,
        values: out,
    })
}

/// The other side of [`narrow`]: an entry of `rows` rows decoded, its deltas put back
/// together in the columns' widths ([`patch_schema`]), with the columns as a patch names
/// them.
pub(super) fn widen(
    table: &Schema,
    sent: &[(u32, u8)],
    rows: u32,
    bytes: &[u8],
) -> Result<(Vec<(u32, bool)>, RecordBatch), LinkError> {
    let columns: Vec<(u32, bool)> = sent.iter().map(|&(c, b)| (c, b > 0)).collect();
    let schema = patch_schema(table, &columns)?;
    let n = rows as usize;
    let mut per_row = 0usize;
    for (&(c, b), f) in sent.iter().zip(schema.fields()) {
        if b > 0 && (![1, 2, 4, 8].contains(&b) || b > delta_bytes(f.data_type())) {
            return Err(LinkError::Protocol(format!(
                "patched column {c} is sent in {b} bytes per delta"
            )));
        }
        per_row += usize::from(b);
    }
    let (raw, rest) = n
        .checked_mul(per_row)
        .and_then(|len| bytes.split_at_checked(len))
        .ok_or_else(|| {
            LinkError::Protocol(format!(
                "patch values of {} bytes are too short for {n} rows of {per_row} bytes of deltas",
                bytes.len()
            ))
        })?;
    let news: Vec<_> = sent
        .iter()
        .zip(schema.fields())
        .filter(|((_, b), _)| *b == 0)
        .map(|(_, f)| f.clone())
        .collect();
    let mut news = if news.is_empty() {
        if !rest.is_empty() {
            return Err(LinkError::Protocol(format!(
                "{} bytes follow the deltas of a patch entry with no new values",
                rest.len()
            )));
        }
        Vec::new()
    } else {
        let batch = decode_batch(rest, &Arc::new(Schema::new(news)))?;
        if batch.num_rows() != n {
            return Err(LinkError::Protocol(format!(
                "a patch entry of {n} rows has {} rows of new values",
                batch.num_rows()
            )));
        }
        batch.columns().to_vec()
    }
    .into_iter();
    let mut at = 0;
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(sent.len());
    for (&(_, b), f) in sent.iter().zip(schema.fields()) {
        if b == 0 {
            arrays.extend(news.next());
            continue;
        }
        let b = usize::from(b);
        let column = &raw[at..at + n * b];
        at += n * b;
        let mut bits = vec![0u64; n];
        for (k, plane) in column.chunks_exact(n.max(1)).enumerate() {
            for (v, &byte) in bits.iter_mut().zip(plane) {
                *v |= u64::from(byte) << (8 * k);
            }
        }
        // Sign-extended from the sent width.
        let shift = 64 - 8 * b as u32;
        let deltas = bits.into_iter().map(|v| ((v << shift) as i64) >> shift);
        arrays.push(match f.data_type() {
            DataType::Int32 => Arc::new(Int32Array::from_iter_values(deltas.map(|d| d as i32))),
            _ => Arc::new(Int64Array::from_iter_values(deltas)),
        });
    }
    let options = RecordBatchOptions::new().with_row_count(Some(n));
    Ok((
        columns,
        RecordBatch::try_new_with_options(schema, arrays, &options)?,
    ))
}

/// Bytes of a delta column's native type (`Int64` or `Int32`, [`patch_schema`]).
fn delta_bytes(t: &DataType) -> u8 {
    match t {
        DataType::Int32 => 4,
        _ => 8,
    }
}

/// The parent's side: `old` with the patched values (row gaps as on the wire), without the
/// `removed` rows (strictly ascending), followed by the `added` rows. Each column is built in
/// one pass from the held column, its patched values and the added rows, those of 8-byte
/// values into one buffer shared by them ([`packed`]); a column the patch leaves alone, in a
/// part that neither loses nor gains rows, stays the same Arrow array.
pub(super) fn apply(
    old: &RecordBatch,
    rows: &[u32],
    values: Option<(&[(u32, bool)], RecordBatch)>,
    removed: &[u32],
    added: Option<&RecordBatch>,
) -> Result<RecordBatch, LinkError> {
    let n = old.num_rows();
    let (columns, values) = match values {
        Some((c, v)) if !c.is_empty() => (c, Some(v)),
        _ if !rows.is_empty() => {
            return Err(LinkError::Protocol(
                "a patch lists rows but no columns".into(),
            ))
        }
        _ => (&[][..], None),
    };
    let mut idx = Vec::with_capacity(rows.len());
    let mut positions = GapReader::default();
    for &gap in rows {
        let i = positions.position(gap, n).map_err(|i| {
            LinkError::Protocol(format!(
                "patched row {i} is out of range (the part holds {n} rows)"
            ))
        })?;
        idx.push(i as u32);
    }
    let keep = super::decode::kept_rows(removed, n)?;
    if let Some(values) = &values {
        // The caller took `rows.len()` rows of a batch of `patch_schema(columns)`.
        if values.num_rows() != idx.len() || values.num_columns() != columns.len() {
            return Err(LinkError::Protocol(format!(
                "a patch of {} rows and {} columns carries {} rows and {} columns of values",
                idx.len(),
                columns.len(),
                values.num_rows(),
                values.num_columns()
            )));
        }
    }
    let added = added.filter(|a| a.num_rows() > 0);
    let reshaped = !removed.is_empty() || added.is_some();

    // Where each output row comes from: (0, i) held row i, (1, k) added row k, (2, j) the
    // patch's value j. `base` for the columns the patch leaves alone, `patched` for the rest.
    let mut patched: Vec<(usize, usize)> =
        Vec::with_capacity(n + added.map_or(0, |a| a.num_rows()));
    let mut base: Vec<(usize, usize)> = Vec::new();
    let mut j = 0;
    for (i, &kept) in keep.iter().enumerate() {
        let from_patch = idx.get(j).is_some_and(|&x| x as usize == i);
        if kept {
            patched.push(if from_patch { (2, j) } else { (0, i) });
            if reshaped {
                base.push((0, i));
            }
        }
        if from_patch {
            j += 1;
        }
    }
    if let Some(a) = added {
        for k in 0..a.num_rows() {
            patched.push((1, k));
            base.push((1, k));
        }
    }
    let pick = UInt32Array::from(idx);
    let mut cols = old.columns().to_vec();
    let mut patch_of: Vec<Option<ArrayRef>> = vec![None; cols.len()];
    if let Some(values) = &values {
        for (&(c, delta), v) in columns.iter().zip(values.columns()) {
            let c = c as usize;
            patch_of[c] = Some(if delta {
                add_delta(&take(cols[c].as_ref(), &pick, None)?, v)?
            } else {
                v.clone()
            });
        }
    }
    let mut rebuilds = Vec::new();
    for (c, col) in cols.iter().enumerate() {
        let add = added.map(|a| a.column(c).clone());
        let (sources, order) = match (&patch_of[c], add) {
            (None, _) if !reshaped => continue,
            (None, None) => (vec![col.clone()], &base),
            (None, Some(a)) => (vec![col.clone(), a], &base),
            (Some(v), Some(a)) => (vec![col.clone(), a, v.clone()], &patched),
            // No added rows: index 1 is never used, the held column stands in for it.
            (Some(v), None) => (vec![col.clone(), col.clone(), v.clone()], &patched),
        };
        rebuilds.push(Rebuild {
            column: c,
            sources,
            order,
        });
    }
    for (c, column) in packed::rebuild(rebuilds)? {
        cols[c] = column;
    }
    // Refuses a NULL sent for a column that takes none.
    let options = RecordBatchOptions::new().with_row_count(Some(patched.len()));
    Ok(RecordBatch::try_new_with_options(
        old.schema(),
        cols,
        &options,
    )?)
}

/// `old + delta` on the values' bits, in `old`'s type.
fn add_delta(old: &ArrayRef, delta: &ArrayRef) -> Result<ArrayRef, LinkError> {
    if old.null_count() > 0 || delta.null_count() > 0 {
        return Err(LinkError::Protocol(
            "a delta for a NULL value, or a NULL delta".into(),
        ));
    }
    let len = old.len();
    let o = old.to_data();
    let bits = match delta_width(old.data_type()) {
        Some(8) => {
            let d = delta
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| LinkError::Protocol("a 64-bit delta is not Int64".into()))?;
            let o = &o.buffer::<i64>(0)[..len];
            Buffer::from_vec(
                o.iter()
                    .zip(d.values())
                    .map(|(o, d)| o.wrapping_add(*d))
                    .collect::<Vec<i64>>(),
            )
        }
        Some(4) => {
            let d = delta
                .as_any()
                .downcast_ref::<Int32Array>()
                .ok_or_else(|| LinkError::Protocol("a 32-bit delta is not Int32".into()))?;
            let o = &o.buffer::<i32>(0)[..len];
            Buffer::from_vec(
                o.iter()
                    .zip(d.values())
                    .map(|(o, d)| o.wrapping_add(*d))
                    .collect::<Vec<i32>>(),
            )
        }
        _ => {
            return Err(LinkError::Protocol(format!(
                "type {} cannot take a delta",
                old.data_type()
            )))
        }
    };
    let data = ArrayData::try_new(old.data_type().clone(), len, None, 0, vec![bits], vec![])?;
    Ok(make_array(data))
}

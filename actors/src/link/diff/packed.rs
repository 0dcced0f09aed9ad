//! The columns a patch rebuilds (`patch::apply`), those of 8-byte values side by side in one
//! buffer.
//!
//! A part is patched again and again (every machine's `uptime` each round, its counters
//! whenever it changes), and each rebuilt column was an allocation of its own: a few bytes
//! of values, the `Bytes` that owns them (a header Arrow's memory figures do not count) and
//! the array. The simulated fleet patches 20 columns a machine (by its code), held at a TLA
//! and again at each SQL node, and this grew as more machines changed. Columns of 8-byte
//! values without NULLs (the table model's integers, floats and timestamps: what patches
//! move) now share one buffer per patch applied; any other column is interleaved alone, as
//! before.

use datafusion::arrow::array::{make_array, Array, ArrayData, ArrayRef};
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::compute::interleave;
use datafusion::arrow::downcast_primitive_array;

use crate::link::LinkError;

/// One column to rebuild: output row `r` is row `order[r].1` of `sources[order[r].0]`.
pub(super) struct Rebuild<'a> {
    pub column: usize,
    pub sources: Vec<ArrayRef>,
    pub order: &'a [(usize, usize)],
}

/// Each column rebuilt, with its index: the packable ones over one buffer (in the order
/// given), the others interleaved.
pub(super) fn rebuild(rebuilds: Vec<Rebuild<'_>>) -> Result<Vec<(usize, ArrayRef)>, LinkError> {
    let mut out = Vec::with_capacity(rebuilds.len());
    let (packable, other): (Vec<_>, Vec<_>) = rebuilds.into_iter().partition(packable);
    for r in other {
        let sources: Vec<&dyn Array> = r.sources.iter().map(|a| a.as_ref()).collect();
        out.push((r.column, interleave(&sources, r.order)?));
    }
    if packable.is_empty() {
        return Ok(out);
    }
    let mut words = Vec::with_capacity(packable.iter().map(|r| r.order.len()).sum());
    for r in &packable {
        let values: Vec<Option<&[u8]>> = r.sources.iter().map(|a| values_bytes(a)).collect();
        for &(s, i) in r.order {
            let value = values
                .get(s)
                .copied()
                .flatten()
                .and_then(|v| v.get(i * 8..i * 8 + 8))
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .ok_or_else(|| {
                    LinkError::Protocol(format!(
                        "a patch reads row {i} of input {s} of column {}, which has no such row",
                        r.column
                    ))
                })?;
            words.push(u64::from_ne_bytes(value));
        }
    }
    let buffer = Buffer::from_vec(words);
    let mut at = 0;
    for r in packable {
        let n = r.order.len();
        let values = buffer.slice_with_length(at * 8, n * 8);
        let data_type = r.sources[0].data_type().clone();
        let data = ArrayData::try_new(data_type, n, None, 0, vec![values], vec![])?;
        out.push((r.column, make_array(data)));
        at += n;
    }
    Ok(out)
}

/// Whether every input of `r` holds 8-byte values of one type, without NULLs.
fn packable(r: &Rebuild<'_>) -> bool {
    let Some(first) = r.sources.first() else {
        return false;
    };
    first.data_type().primitive_width() == Some(8)
        && r.sources
            .iter()
            .all(|a| a.data_type() == first.data_type() && a.null_count() == 0)
}

/// The values of a primitive array as bytes (its rows only: the buffer as sliced to them),
/// without copying its `ArrayData` (a TLA of 70,000 machines patches about 84,000 parts a
/// round, `forward.rs`); None for any other array.
fn values_bytes(a: &dyn Array) -> Option<&[u8]> {
    downcast_primitive_array!(
        a => Some(a.values().inner().as_slice()),
        _ => None
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{
        Float64Array, Int64Array, StringArray, TimestampMillisecondArray,
    };

    use super::*;

    fn ints(v: &[i64]) -> ArrayRef {
        Arc::new(Int64Array::from(v.to_vec()))
    }

    fn start(a: &ArrayRef) -> usize {
        a.to_data().buffers()[0].data_ptr().as_ptr() as usize
    }

    /// Picks rows of two inputs; the 8-byte columns share one buffer, with the right values
    /// and types; a string column and a column with a NULL are interleaved alone.
    #[test]
    fn columns_of_eight_byte_values_share_one_buffer() {
        let order = [(0, 1), (1, 0), (0, 0)];
        let sliced = ints(&[7, 8, 9, 10]).slice(1, 3);
        let floats: ArrayRef = Arc::new(Float64Array::from(vec![0.5, -1.25]));
        let stamps: ArrayRef =
            Arc::new(TimestampMillisecondArray::from(vec![1_000, 2_000]).with_timezone("UTC"));
        let strings: ArrayRef = Arc::new(StringArray::from(vec!["a", "b"]));
        let nulls: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None]));
        let rebuilds = vec![
            Rebuild {
                column: 0,
                sources: vec![ints(&[1, 2]), sliced],
                order: &order,
            },
            Rebuild {
                column: 1,
                sources: vec![floats.clone(), floats.slice(1, 1)],
                order: &order,
            },
            Rebuild {
                column: 2,
                sources: vec![strings.clone(), strings.clone()],
                order: &order,
            },
            Rebuild {
                column: 3,
                sources: vec![stamps.clone(), stamps.clone()],
                order: &order,
            },
            Rebuild {
                column: 4,
                sources: vec![nulls.clone(), nulls.clone()],
                order: &order,
            },
        ];
        let mut out = rebuild(rebuilds).expect("rebuild");
        out.sort_by_key(|(c, _)| *c);
        let col = |c: usize| out[c].1.clone();
        assert_eq!(
            col(0).as_ref(),
            &Int64Array::from(vec![2, 8, 1]) as &dyn Array
        );
        assert_eq!(
            col(1).as_ref(),
            &Float64Array::from(vec![-1.25, -1.25, 0.5]) as &dyn Array
        );
        assert_eq!(
            col(2).as_ref(),
            &StringArray::from(vec!["b", "a", "a"]) as &dyn Array
        );
        assert_eq!(
            col(3).as_ref(),
            &TimestampMillisecondArray::from(vec![2_000, 1_000, 1_000]).with_timezone("UTC")
                as &dyn Array
        );
        assert_eq!(
            col(4).as_ref(),
            &Int64Array::from(vec![None, Some(1), Some(1)]) as &dyn Array
        );
        // One allocation for the three packed columns, none for the others.
        assert_eq!(start(&col(0)), start(&col(1)));
        assert_eq!(start(&col(0)), start(&col(3)));
        assert_ne!(start(&col(0)), start(&col(4)));
        assert_eq!(col(0).to_data().buffers()[0].capacity(), 3 * 3 * 8);
    }

    /// A row past an input's end is an error, never a panic.
    #[test]
    fn a_row_out_of_range_is_refused() {
        let order = [(0, 0), (1, 5)];
        let r = Rebuild {
            column: 0,
            sources: vec![ints(&[1]), ints(&[2, 3])],
            order: &order,
        };
        let e = rebuild(vec![r]).expect_err("out of range");
        assert!(e.to_string().contains("row 5 of input 1"), "{e}");
        let order = [(2, 0)];
        let r = Rebuild {
            column: 0,
            sources: vec![ints(&[1])],
            order: &order,
        };
        assert!(rebuild(vec![r]).is_err());
    }
}

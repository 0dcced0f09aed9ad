//! A table's blocks (`TableFrame::blocks`): the rows of its parts new to the parent, many
//! parts to one Arrow IPC record batch, each part within one block ([`PartRows::InBlock`]).
//! The encoder fills them ([`Blocks`]); the decoder reads each part's rows back as a
//! zero-copy slice of its block ([`BlockReader`]).
//!
//! A full copy of 70,000 machines is 420,000 parts. As an IPC message each, their metadata
//! (a field node and buffers per column, about as many bytes as a machine's rows) and the
//! work per message were most of the copy's bytes and of the time to encode and decode it;
//! in blocks they are a few hundred messages.

use std::collections::VecDeque;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use super::ipc::decode_rows;
use crate::link::wire::{IpcRows, PartRows};
use crate::link::LinkError;

/// Rows a block is closed at: as many as a SQL node's coalesced batches (`sql::spread`),
/// 1-3 MB of a fleet's tables.
pub(super) const BLOCK_ROWS: usize = 8192;

/// A table's blocks as they are filled: the parts new to the parent, in the order listed,
/// whole parts in a block until it has at least [`BLOCK_ROWS`] rows.
#[derive(Default)]
pub(super) struct Blocks {
    done: Vec<IpcRows>,
    open: Vec<RecordBatch>,
    open_rows: usize,
}

impl Blocks {
    /// Adds a part's rows (one row at least: a part without rows travels alone, see
    /// [`BlockReader::take`]); returns how they travel.
    pub(super) fn add(&mut self, batch: &RecordBatch) -> Result<PartRows, LinkError> {
        let rows = batch.num_rows();
        let sent = u32::try_from(rows)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| LinkError::Protocol(format!("a part of {rows} rows in a block")))?;
        self.open.push(batch.clone());
        self.open_rows += rows;
        if self.open_rows >= BLOCK_ROWS {
            self.close();
        }
        Ok(PartRows::InBlock(sent))
    }

    fn close(&mut self) {
        if !self.open.is_empty() {
            self.done
                .push(IpcRows::Batches(std::mem::take(&mut self.open)));
            self.open_rows = 0;
        }
    }

    /// The blocks, their rows encoded as the frame is serialized.
    pub(super) fn finish(mut self) -> Vec<IpcRows> {
        self.close();
        self.done
    }
}

/// Reads a table's parts' rows out of its blocks, in order, decoding each block when the
/// first part in it is read.
pub(super) struct BlockReader<'a> {
    schema: &'a SchemaRef,
    blocks: std::vec::IntoIter<IpcRows>,
    /// Rows decoded and not yet all read (a block received is one batch; one handed over
    /// in process, the batches it was made of), the one being read first.
    queue: VecDeque<RecordBatch>,
    /// Rows of the first batch of `queue` already read.
    read: usize,
}

impl<'a> BlockReader<'a> {
    pub(super) fn new(schema: &'a SchemaRef, blocks: Vec<IpcRows>) -> Self {
        BlockReader {
            schema,
            blocks: blocks.into_iter(),
            queue: VecDeque::new(),
            read: 0,
        }
    }

    /// The next `rows` rows, which must lie within one block. No rows is refused: a part in
    /// a block costs a few bytes on the wire and an array per column to hold, so a peer
    /// could make a node hold far more than its frame's bytes with empty parts (a part
    /// without rows travels alone, as Arrow IPC of its own).
    pub(super) fn take(&mut self, rows: u32) -> Result<RecordBatch, LinkError> {
        let n = rows as usize;
        if n == 0 {
            return Err(LinkError::Protocol(
                "a part of no rows is sent in a block".into(),
            ));
        }
        loop {
            if let Some(b) = self.queue.front() {
                let left = b.num_rows() - self.read;
                if left >= n {
                    let out = if self.read == 0 && n == b.num_rows() {
                        b.clone()
                    } else {
                        b.slice(self.read, n)
                    };
                    self.read += n;
                    return Ok(out);
                }
                if left > 0 {
                    return Err(LinkError::Protocol(format!(
                        "a part of {n} rows runs past the end of its block ({left} rows left)"
                    )));
                }
                self.queue.pop_front();
                self.read = 0;
                continue;
            }
            let block = self.blocks.next().ok_or_else(|| {
                LinkError::Protocol(
                    "the parts sent in blocks have more rows than the blocks".into(),
                )
            })?;
            self.queue = decode_rows(block, self.schema)?.into();
        }
    }

    /// Every row of every block was read by a part.
    pub(super) fn finish(self) -> Result<(), LinkError> {
        let left: usize = self.queue.iter().map(RecordBatch::num_rows).sum::<usize>() - self.read;
        let blocks = self.blocks.len();
        if left > 0 || blocks > 0 {
            return Err(LinkError::Protocol(format!(
                "the blocks hold rows no part reads ({left} rows of a block, {blocks} blocks left)"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, Int64Array, StringArray};

    use super::super::ipc::ipc_rows;
    use super::*;

    fn batch(from: i64, rows: i64) -> RecordBatch {
        RecordBatch::try_from_iter([(
            "n",
            Arc::new(Int64Array::from_iter_values(from..from + rows)) as _,
        )])
        .expect("batch")
    }

    fn values(b: &RecordBatch) -> Vec<i64> {
        let a = b
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("ints");
        a.values().to_vec()
    }

    /// Parts of every size (one row, more than a block) go into blocks of whole parts
    /// closed at `BLOCK_ROWS`, and come back as they went, as slices of their block,
    /// whether the blocks were serialized or handed over in process.
    #[test]
    fn parts_come_back_out_of_their_blocks() {
        let sizes = [3, 1, BLOCK_ROWS as i64 + 5, 7, 5000, 4000, 2];
        let mut from = 0;
        let parts: Vec<RecordBatch> = sizes
            .iter()
            .map(|&n| {
                from += n;
                batch(from - n, n)
            })
            .collect();
        let mut blocks = Blocks::default();
        let sent: Vec<PartRows> = parts.iter().map(|p| blocks.add(p).expect("add")).collect();
        let blocks = blocks.finish();
        let rows = |b: &IpcRows| match b {
            IpcRows::Batches(v) => v.iter().map(RecordBatch::num_rows).sum::<usize>(),
            other => panic!("batches expected: {other:?}"),
        };
        // [3, 1, 8197] | [7, 5000, 4000] | [2]
        let block_rows: Vec<usize> = blocks.iter().map(rows).collect();
        assert_eq!(block_rows, [BLOCK_ROWS + 9, 9007, 2]);
        let schema = parts[0].schema();
        let encoded: Vec<IpcRows> = blocks
            .iter()
            .map(|b| match b {
                IpcRows::Batches(v) => IpcRows::Bytes(ipc_rows(v).expect("encode")),
                other => other.clone(),
            })
            .collect();
        for blocks in [blocks, encoded] {
            let mut reader = BlockReader::new(&schema, blocks);
            for (p, s) in parts.iter().zip(&sent) {
                let PartRows::InBlock(n) = s else {
                    panic!("in a block: {s:?}")
                };
                let got = reader.take(*n).expect("take");
                assert_eq!(values(&got), values(p));
            }
            reader.finish().expect("every row read");
        }
    }

    /// Parts that ask for more rows than a block has left, or than the blocks hold, and
    /// blocks with rows no part reads, are refused.
    #[test]
    fn rows_that_do_not_fit_the_blocks_are_refused() {
        let schema = batch(0, 1).schema();
        let blocks = || {
            vec![
                IpcRows::Bytes(ipc_rows(&[batch(0, 4)]).expect("encode")),
                IpcRows::Batches(vec![batch(4, 2)]),
            ]
        };
        let mut r = BlockReader::new(&schema, blocks());
        r.take(3).expect("3 of 4");
        let e = r.take(2).expect_err("straddles");
        assert!(e.to_string().contains("past the end of its block"), "{e}");

        let mut r = BlockReader::new(&schema, blocks());
        r.take(4).expect("block 1");
        r.take(2).expect("block 2");
        let e = r.take(1).expect_err("no rows left");
        assert!(e.to_string().contains("more rows than the blocks"), "{e}");

        let mut r = BlockReader::new(&schema, blocks());
        r.take(4).expect("block 1");
        let e = r.finish().expect_err("a block left");
        assert!(e.to_string().contains("1 blocks left"), "{e}");

        let mut r = BlockReader::new(&schema, blocks());
        r.take(1).expect("1 of 4");
        assert!(r.finish().is_err(), "3 rows unread");

        // No rows: refused when read, never made when sent.
        let mut r = BlockReader::new(&schema, blocks());
        let e = r.take(0).expect_err("no rows");
        assert!(e.to_string().contains("no rows"), "{e}");
        assert!(Blocks::default().add(&batch(0, 0)).is_err());

        // Rows of another schema, in process or as bytes.
        let wide = RecordBatch::try_from_iter([
            ("n", Arc::new(Int64Array::from(vec![1])) as Arc<dyn Array>),
            (
                "m",
                Arc::new(StringArray::from(vec!["x"])) as Arc<dyn Array>,
            ),
        ])
        .expect("batch")
        .schema();
        let narrow = batch(0, 1);
        let mut r = BlockReader::new(&wide, vec![IpcRows::Batches(vec![narrow.clone()])]);
        assert!(r.take(1).is_err());
        let bytes = ipc_rows(&[narrow]).expect("encode");
        let mut r = BlockReader::new(&wide, vec![IpcRows::Bytes(bytes)]);
        assert!(r.take(1).is_err());
    }
}

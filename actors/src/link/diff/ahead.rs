//! The rows of a large frame's new parts ([`IpcRows::Batches`](crate::link::wire::IpcRows),
//! their blocks) encoded ahead of the thread that serializes the frame, on every core, a
//! bounded number of rows ahead. Encoding them as they are serialized keeps a whole fleet's
//! encoded rows from being held at once (448 MB at 70,000 machines when each part was a
//! message), but on the serializing thread alone it took a TLA's full copy for its SQL node
//! from 1.4 to 2.6-3.3 s (`tla-merge`). Ahead: 2.1-2.3 s.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use datafusion::arrow::record_batch::RecordBatch;

use super::ipc::ipc_rows;
use crate::link::LinkError;
use crate::threads;

/// Rows encoded and handed over at a time (whole batches of rows: a block or a part):
/// one hand-over per part cost a thread wake-up each when the serializer caught up.
const CHUNK_ROWS: usize = 4096;

/// Chunks each encoding thread may be ahead of the serializer: with blocks of 8,192 rows
/// of a fleet's tables (1-3 MB encoded), a few MB held per thread.
const AHEAD_CHUNKS: usize = 2;

/// The name of the threads that encode rows ahead.
const THREAD_NAME: &str = "query-link-rows";

/// Which batch an encoding is of: where the frame being serialized holds it (the frame
/// outlives the serialization, so no other batch is there meanwhile).
type Fingerprint = (usize, usize);

fn fingerprint(b: &[RecordBatch]) -> Fingerprint {
    (b.as_ptr() as usize, b.len())
}

type Encoded = (Fingerprint, Result<Vec<u8>, LinkError>);

/// Encodings ahead, for the thread serializing: chunk `i` comes from lane `i % lanes`.
struct Lanes {
    lanes: Vec<Receiver<Vec<Encoded>>>,
    /// The chunk being taken, reversed (its next part last).
    chunk: Vec<Encoded>,
    next_chunk: usize,
    taken: usize,
}

thread_local! {
    static AHEAD: RefCell<Option<Lanes>> = const { RefCell::new(None) };
}

/// Runs `serialize` on this thread while the rows of `batches` (in the order in which its
/// serialization asks for them, [`rows`]) are encoded on up to as many other threads as
/// there are cores. Returns what `serialize` returned and how many batches it was given
/// encoded ahead (the others it encoded itself: the order was not as said, or no thread
/// could be started).
pub(crate) fn with_rows_ahead<R>(
    batches: &[&[RecordBatch]],
    serialize: impl FnOnce() -> R,
) -> (R, usize) {
    let chunks = chunks(batches);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = cores.min(chunks.len());
    let chunks = &chunks;
    std::thread::scope(|s| {
        let mut lanes = Vec::with_capacity(threads);
        for lane in 0..threads {
            let (tx, rx) = sync_channel(AHEAD_CHUNKS);
            let started = std::thread::Builder::new()
                .name(THREAD_NAME.into())
                .spawn_scoped(s, move || encode_lane(chunks, lane, threads, tx));
            match started {
                Ok(_) => lanes.push(rx),
                Err(e) => {
                    // Lane `lane` never comes: the lanes before it would be out of step.
                    tracing::debug!(error = %e, "no thread to encode rows ahead; the serializer encodes them");
                    lanes.clear();
                    break;
                }
            }
        }
        AHEAD.with(|a| {
            *a.borrow_mut() = (!lanes.is_empty()).then_some(Lanes {
                lanes,
                chunk: Vec::new(),
                next_chunk: 0,
                taken: 0,
            })
        });
        // Removed however `serialize` ends: the encoding threads stop at their next send.
        let installed = Installed;
        let out = serialize();
        let taken = installed.take();
        (out, taken)
    })
}

/// The rows of `batches` encoded at once, in order: for a frame sized before it is
/// serialized. Many (a large full copy) are shared among the cores
/// ([`threads::map_weighted`]).
pub(crate) fn encode_rows(batches: Vec<&[RecordBatch]>) -> Vec<Result<Vec<u8>, LinkError>> {
    // Weighed in parts of a few rows each (`threads::PARALLEL_FROM_PARTS`); encoding a
    // block costs about a copy of its rows.
    threads::map_weighted(batches, |b| 1 + rows_of(b) / 32, ipc_rows)
}

fn rows_of(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

/// `batches` cut into runs of at least [`CHUNK_ROWS`] rows (the last may have fewer).
fn chunks<'a>(batches: &[&'a [RecordBatch]]) -> Vec<Vec<&'a [RecordBatch]>> {
    let mut out = Vec::new();
    let mut open: Vec<&[RecordBatch]> = Vec::new();
    let mut rows = 0;
    for &b in batches {
        open.push(b);
        rows += rows_of(b);
        if rows >= CHUNK_ROWS {
            out.push(std::mem::take(&mut open));
            rows = 0;
        }
    }
    if !open.is_empty() {
        out.push(open);
    }
    out
}

/// Every `threads`th chunk of batches from chunk `first`, encoded and sent in order until
/// the serializer hangs up.
fn encode_lane(
    chunks: &[Vec<&[RecordBatch]>],
    first: usize,
    threads: usize,
    tx: SyncSender<Vec<Encoded>>,
) {
    for chunk in chunks.iter().skip(first).step_by(threads) {
        let encoded = chunk
            .iter()
            .rev()
            .map(|b| {
                let rows = catch_unwind(AssertUnwindSafe(|| ipc_rows(b))).unwrap_or_else(|_| {
                    Err(LinkError::Encode("Arrow IPC encoding panicked".into()))
                });
                (fingerprint(b), rows)
            })
            .collect();
        if tx.send(encoded).is_err() {
            return;
        }
    }
}

struct Installed;

impl Installed {
    fn take(self) -> usize {
        AHEAD.with(|a| a.borrow_mut().take().map_or(0, |l| l.taken))
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        AHEAD.with(|a| a.borrow_mut().take());
    }
}

/// The rows of `batch` (batches that travel as one) as IPC bytes: encoded ahead when this
/// thread serializes under [`with_rows_ahead`] and `batch` is the one expected next, encoded
/// here otherwise (and from then on: the order is not the one given).
pub(crate) fn rows(batch: &[RecordBatch]) -> Result<Vec<u8>, LinkError> {
    let ahead = AHEAD.with(|a| {
        let mut a = a.borrow_mut();
        let lanes = a.as_mut().filter(|l| !l.lanes.is_empty())?;
        if lanes.chunk.is_empty() {
            let lane = &lanes.lanes[lanes.next_chunk % lanes.lanes.len()];
            lanes.chunk = lane.recv().unwrap_or_default();
            lanes.next_chunk += 1;
        }
        match lanes.chunk.pop() {
            Some((fp, encoded)) if fp == fingerprint(batch) => {
                lanes.taken += 1;
                Some(encoded)
            }
            _ => {
                tracing::warn!(
                    "rows encoded ahead came out of order; the serializer encodes the rest"
                );
                // Hung up: the encoding threads stop at their next send.
                lanes.lanes.clear();
                lanes.chunk.clear();
                None
            }
        }
    });
    ahead.unwrap_or_else(|| ipc_rows(batch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use std::sync::Arc;

    /// `n` runs of one to three batches each, of 1 to 7 rows each.
    fn batches(n: i64) -> Vec<Vec<RecordBatch>> {
        (0..n)
            .map(|i| {
                (0..(i % 3) + 1)
                    .map(|j| {
                        RecordBatch::try_from_iter([(
                            "n",
                            Arc::new(Int64Array::from(vec![i + j; ((i + j) % 7) as usize + 1]))
                                as _,
                        )])
                        .expect("batch")
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn rows_asked_in_order_come_encoded_ahead() {
        let all = batches(2_000);
        let refs: Vec<&[RecordBatch]> = all.iter().map(Vec::as_slice).collect();
        let (got, taken) = with_rows_ahead(&refs, || {
            refs.iter()
                .map(|b| rows(b).expect("rows"))
                .collect::<Vec<_>>()
        });
        assert_eq!(taken, refs.len());
        for (b, bytes) in refs.iter().zip(&got) {
            assert_eq!(bytes, &ipc_rows(b).expect("ipc"));
        }
        // Outside, and after: encoded here.
        assert_eq!(
            rows(refs[3]).expect("rows"),
            ipc_rows(refs[3]).expect("ipc")
        );
    }

    #[test]
    fn rows_asked_out_of_order_are_still_the_right_ones() {
        let all = batches(1_000);
        let refs: Vec<&[RecordBatch]> = all.iter().map(Vec::as_slice).collect();
        let mut asked = refs.clone();
        asked.swap(10, 11);
        let (got, taken) = with_rows_ahead(&refs, || {
            asked
                .iter()
                .map(|b| rows(b).expect("rows"))
                .collect::<Vec<_>>()
        });
        assert_eq!(taken, 10, "ahead until the order broke");
        for (b, bytes) in asked.iter().zip(&got) {
            assert_eq!(bytes, &ipc_rows(b).expect("ipc"));
        }
        // Serialization that stops early leaves no thread behind (the scope joins them).
        let (_, taken) = with_rows_ahead(&refs, || rows(refs[0]).map(|_| ()));
        assert_eq!(taken, 1);
    }
}

//! Patches a forwarding node (a TLA) applied, kept so that its own encoder can send the same
//! patch on to its parent instead of matching the part again (issue 17: "forward diffs to SQL
//! nodes rather than re-encoding whole tables").
//!
//! A [`LinkDecoder`](super::LinkDecoder) made with `forwarding` records, for each part it
//! patched, the patch and the parts it was applied to and gave. A
//! [`LinkEncoder`](super::LinkEncoder) whose parent holds exactly the first part's rows (its
//! mirror's, in the same order) sends the recorded patch as is: applied to the same rows it
//! gives the same rows. Parts are recognised by identity (`Arc` pointers), never by content,
//! so an entry can only match the very parts it was made from (a part is immutable); it holds
//! them weakly (their rows are freed with the generation) and is pruned once they are gone.
//!
//! An entry is small on purpose: a TLA of 70,000 machines holds one for every part patched
//! in a round (about 84,000) from one frame of its cluster to the next. It pins two `Part`
//! allocations, not the columns of both (weak references to each column of the part patched
//! and of its result kept about a kilobyte of array headers per entry after the rows were
//! gone), and points into its table's patch values rather than slicing them per part.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use datafusion::arrow::record_batch::RecordBatch;

use crate::generation::Part;

/// A patch as applied: what the encoder needs to send it again.
#[derive(Clone)]
pub(super) struct Patch {
    /// Row gaps, as on the wire.
    pub rows: Vec<u32>,
    /// The patched columns and their values: rows of the table's decoded values.
    pub values: Option<ValueRows>,
    pub removed: Vec<u32>,
    /// Added rows, Arrow IPC as received.
    pub added: Vec<u8>,
}

/// One entry of a table's patch values as decoded, shared by the patches that read it.
pub(super) struct Values {
    /// (column index, sent as a delta), as `patch::Plan::columns`.
    pub columns: Vec<(u32, bool)>,
    pub values: RecordBatch,
}

/// `len` rows of shared patch values from `offset`.
#[derive(Clone)]
pub(super) struct ValueRows {
    pub values: Arc<Values>,
    pub offset: usize,
    pub len: usize,
}

impl ValueRows {
    pub fn columns(&self) -> &[(u32, bool)] {
        &self.values.columns
    }

    /// The rows' values (a zero-copy slice).
    pub fn rows(&self) -> RecordBatch {
        self.values.values.slice(self.offset, self.len)
    }
}

struct Entry {
    /// The part the patch was applied to, and the part it gave.
    base: Weak<Part>,
    result: Weak<Part>,
    patch: Patch,
}

struct Registry {
    /// By the address of the result. Boxed: a slot (with its control byte) is then 17 bytes
    /// rather than 121 with the entry inline, and the map keeps the slots of its busiest
    /// round (2^19 of them, 63 MB inline, in a heap profile of a TLA at 70,000 machines;
    /// BENCHMARKS.md).
    entries: HashMap<usize, Box<Entry>>,
    /// Prune dead entries when the map reaches this size.
    prune_at: usize,
}

static APPLIED: LazyLock<Mutex<Registry>> = LazyLock::new(|| {
    Mutex::new(Registry {
        entries: HashMap::new(),
        prune_at: 1024,
    })
});

fn address(p: &Arc<Part>) -> usize {
    Arc::as_ptr(p) as usize
}

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    // The map stays consistent through a panic elsewhere (entries are inserted whole).
    APPLIED.lock().unwrap_or_else(|p| p.into_inner())
}

/// An entry made by [`record`], for [`forget`].
pub(super) struct Recorded(usize, Weak<Part>);

/// Records that `patch` turned `base` into `result`.
pub(super) fn record(base: &Arc<Part>, result: &Arc<Part>, patch: Patch) -> Recorded {
    let entry = Box::new(Entry {
        base: Arc::downgrade(base),
        result: Arc::downgrade(result),
        patch,
    });
    let mut r = registry();
    if r.entries.len() >= r.prune_at {
        r.entries.retain(|_, e| e.result.strong_count() > 0);
        r.prune_at = (r.entries.len() * 2).max(1024);
    }
    r.entries.insert(address(result), entry);
    Recorded(address(result), Arc::downgrade(result))
}

/// Drops the entries `recorded` made (still there and not replaced since). A decoder forgets
/// a frame's patches when the next frame arrives: its node has encoded the generation they
/// belong to by then (and if not, its encoder plans the part itself), so the patches' bytes
/// are not kept for parts that then stay unchanged for many generations.
pub(super) fn forget(recorded: &mut Vec<Recorded>) {
    if recorded.is_empty() {
        return;
    }
    let mut r = registry();
    for Recorded(at, weak) in recorded.drain(..) {
        let ours = r
            .entries
            .get(&at)
            .is_some_and(|e| Weak::ptr_eq(&e.result, &weak));
        if ours {
            r.entries.remove(&at);
        }
    }
}

/// The patch that turned exactly `base` into exactly `result`, if one was recorded.
pub(super) fn find(base: &Arc<Part>, result: &Arc<Part>) -> Option<Patch> {
    let r = registry();
    let e = r.entries.get(&address(result))?;
    (std::ptr::eq(e.result.as_ptr(), Arc::as_ptr(result))
        && std::ptr::eq(e.base.as_ptr(), Arc::as_ptr(base)))
    .then(|| e.patch.clone())
}

#[cfg(test)]
pub(super) fn recorded() -> usize {
    registry().entries.len()
}

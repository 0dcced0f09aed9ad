//! Patches a forwarding node (a TLA) applied, kept so that its own encoder can send the same
//! patch on to its parent instead of matching the part again (issue 17: "forward diffs to SQL
//! nodes rather than re-encoding whole tables").
//!
//! A [`LinkDecoder`](super::LinkDecoder) made with `forwarding` records, for each part it
//! patched, the patch and the Arrow arrays it was applied to and gave. A
//! [`LinkEncoder`](super::LinkEncoder) whose parent holds exactly those arrays (its mirror's
//! rows, in the same order) sends the recorded patch as is: applied to the same rows it gives
//! the same rows. Arrays are recognised by identity (`Arc` pointers), never by content, so an
//! entry can only match the very arrays it was made from; it holds them weakly (the arrays'
//! buffers are freed with the generation) and is pruned once they are gone.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use datafusion::arrow::array::{Array, ArrayRef};
use datafusion::arrow::record_batch::RecordBatch;

/// A patch as applied: what the encoder needs to send it again.
#[derive(Clone)]
pub(super) struct Patch {
    /// Row gaps, as on the wire.
    pub rows: Vec<u32>,
    /// The patched columns and their values (a slice of the table's decoded values).
    pub values: Option<(Vec<(u32, bool)>, RecordBatch)>,
    pub removed: Vec<u32>,
    /// Added rows, Arrow IPC as received.
    pub added: Vec<u8>,
}

struct Entry {
    /// The rows the patch was applied to, and the rows it gave.
    base: Vec<Weak<dyn Array>>,
    result: Vec<Weak<dyn Array>>,
    patch: Patch,
}

struct Registry {
    /// By the address of the result's first column.
    entries: HashMap<usize, Entry>,
    /// Prune dead entries when the map reaches this size.
    prune_at: usize,
}

static APPLIED: LazyLock<Mutex<Registry>> = LazyLock::new(|| {
    Mutex::new(Registry {
        entries: HashMap::new(),
        prune_at: 1024,
    })
});

fn address(a: &ArrayRef) -> usize {
    Arc::as_ptr(a) as *const () as usize
}

fn same(weak: &[Weak<dyn Array>], batch: &RecordBatch) -> bool {
    weak.len() == batch.num_columns()
        && weak
            .iter()
            .zip(batch.columns())
            .all(|(w, a)| std::ptr::addr_eq(w.as_ptr(), Arc::as_ptr(a)))
}

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    // The map stays consistent through a panic elsewhere (entries are inserted whole).
    APPLIED.lock().unwrap_or_else(|p| p.into_inner())
}

/// An entry made by [`record`], for [`forget`].
pub(super) struct Recorded(usize, Weak<dyn Array>);

/// Records that `patch` turned `base` into `result`.
pub(super) fn record(base: &RecordBatch, result: &RecordBatch, patch: Patch) -> Option<Recorded> {
    let first = result.columns().first()?;
    let entry = Entry {
        base: base.columns().iter().map(Arc::downgrade).collect(),
        result: result.columns().iter().map(Arc::downgrade).collect(),
        patch,
    };
    let mut r = registry();
    if r.entries.len() >= r.prune_at {
        r.entries
            .retain(|_, e| e.result.first().is_some_and(|w| w.strong_count() > 0));
        r.prune_at = (r.entries.len() * 2).max(1024);
    }
    r.entries.insert(address(first), entry);
    Some(Recorded(address(first), Arc::downgrade(first)))
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
            .and_then(|e| e.result.first())
            .is_some_and(|w| Weak::ptr_eq(w, &weak));
        if ours {
            r.entries.remove(&at);
        }
    }
}

/// The patch that turned exactly `base` into exactly `result`, if one was recorded.
pub(super) fn find(base: &RecordBatch, result: &RecordBatch) -> Option<Patch> {
    let first = result.columns().first()?;
    let r = registry();
    let e = r.entries.get(&address(first))?;
    (same(&e.result, result) && same(&e.base, base)).then(|| e.patch.clone())
}

#[cfg(test)]
pub(super) fn recorded() -> usize {
    registry().entries.len()
}

//! A generation to a [`GenerationFrame`](super::wire::GenerationFrame) against what the
//! parent already holds, and back.
//!
//! The child keeps one [`LinkEncoder`] per connected parent, the parent one [`LinkDecoder`]
//! per child link. The encoder keeps a mirror of what the parent holds per (table, part key),
//! updated exactly as the decoder updates its copy, so each part is sent as:
//!
//! - `InBlock`: the first time on the link (or after [`LinkEncoder::reset`] or a schema
//!   change): its rows in one of the table's blocks with other new parts' ([`blocks`]);
//! - `Full`: its rows alone, when nothing else would be smaller;
//! - `Unchanged`: the rows equal what the parent holds (same Arrow buffers, equal content,
//!   or the same rows in another order); left out altogether when its sources did not change
//!   either and the table lists only changes (`Listing::Changes`, below);
//! - `Patch { rows, values, removed, added }` (tables with a key, [`TableKeys`]):
//!   rows matched with the held ones by key; matched rows that changed get only their
//!   changed columns, integer-like columns as deltas where that is smaller ([`patch`]); the
//!   values of all of a table's patches travel together, one entry per set of columns
//!   (`TableFrame::patches`, deltas narrowed, raw, as byte planes);
//! - `Diff { removed, added }` (tables without a key): rows compared in Arrow's row format as
//!   a multiset (duplicate rows are legal).
//!
//! **The parent's order after a patch or diff**: its old rows (patched in place) without the
//! removed indexes, in their order, followed by the added rows. So the parent may hold a
//! part's rows in another order than the child; as a multiset they are equal.
//!
//! **What a frame lists.** A table lists every part, in order (`Listing::Every`: the first
//! frame, a new schema, or when the child's order of parts is not the one the parent would
//! keep), or only the parts whose rows or sources changed (`Listing::Changes { gone }`: the
//! parent keeps the others where they are, drops `gone`, and puts new parts after the rest).
//! The encoder mirrors each part's position, so after every frame the parent's order is the
//! child's. Parts name their sources; each source's publication time travels once per frame
//! (`GenerationFrame::stamps`, as milliseconds before the seal), since every machine
//! republishes every interval while most rows stay the same. A part published at another
//! time than its source's time on the link carries its own (`Sources::Stamped`).
//!
//! Tables that disappear are simply not listed. Rows and schemas travel as Arrow IPC
//! messages ([`ipc`]); the rows of parts new to the parent (every part of a full copy)
//! travel many parts to a message, in the table's blocks ([`blocks`]).
//!
//! After any error the two sides are out of step: the encoder resets itself (its next frame
//! is full); a decoder refuses anything but a full frame until it gets one, so the caller
//! should drop the link (and its decoder) and dial again, which starts with a full frame.

mod ahead;
mod blocks;
mod decode;
mod encode;
mod forward;
mod gaps;
mod ipc;
mod packed;
mod patch;
#[cfg(test)]
mod patch_tests;
mod shared_schemas;
#[cfg(test)]
mod tests;
mod times;

use std::collections::HashMap;
use std::sync::Arc;

pub(crate) use ahead::{encode_rows, rows as late_rows, with_rows_ahead};
pub use decode::{ChildGeneration, LinkDecoder};
pub use encode::LinkEncoder;
#[cfg(test)]
pub(crate) use ipc::ipc_rows;

use crate::table::SchemaRegistry;

/// Each table's key columns (schemas' `key`), by table name. Parts of a table listed here
/// travel as patches; others as multiset diffs.
pub type TableKeys = Arc<HashMap<String, Vec<String>>>;

/// The keys of every table of `schemas` that declares one.
pub fn table_keys(schemas: &SchemaRegistry) -> TableKeys {
    Arc::new(
        schemas
            .iter()
            .filter(|d| !d.key.is_empty())
            .map(|d| (d.name.clone(), d.key.clone()))
            .collect(),
    )
}

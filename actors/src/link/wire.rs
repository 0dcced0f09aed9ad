//! The messages of a cluster link, as they travel. A parent (proxy, TLA, SQL node) dials a
//! child (edge, proxy, TLA); the parent says which tables it wants, the child answers each
//! of its generations with exactly those tables: in full on the first frame of a connection,
//! then as diffs per part (see [`crate::generation::Part`]).
//!
//! Framing, serialization and compression are in [`super::frame`]; how a generation becomes
//! a frame and back in [`super::diff`]. Arrow IPC fields serialize as byte strings
//! (`serde_bytes`): one copy, not one serde call per byte.

use std::cell::RefCell;

use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::record_batch::RecordBatch;
use serde::de::Visitor;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bumped on any incompatible change; a peer with another version is refused at hello.
pub const LINK_VERSION: u32 = 9;

/// Parent → child.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToChild {
    /// The first message of a connection.
    Hello { parent: String, version: u32 },
    /// Every table the parent wants from now on (replaces the previous set).
    Request { tables: Vec<String> },
    /// Instead of hello: "what do you see?" The child answers [`ToParent::Advert`] and
    /// closes. SQL nodes probe their TLA candidates this way to choose one.
    Probe { version: u32 },
    /// TLA → TLA child (OSR 3.5, deferring): one cluster's deferred tables of one of its
    /// generations, as they arrived from the cluster (parts still encoded; diffs against
    /// what that cluster's earlier frames of the same `session` gave). A new `session`
    /// starts with a full frame.
    Defer {
        cluster: String,
        session: u64,
        frame: GenerationFrame,
    },
    /// TLA → TLA child: merge `tables` of the `clusters` that count this round (each
    /// cluster's latest copy) and answer with [`ToParent::Generation`] of id `id`.
    Seal {
        id: u64,
        round: u64,
        tables: Vec<String>,
        clusters: Vec<String>,
    },
}

/// Child → parent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToParent {
    /// The first message of a connection.
    Hello {
        node: String,
        role: String,
        version: u32,
    },
    /// One of the child's generations, restricted to the requested tables.
    Generation(GenerationFrame),
    /// The child refuses the link (bad hello, wrong version) and closes it.
    Refused { message: String },
    /// The answer to a probe.
    Advert(Advert),
}

/// What a node advertises to a probe: how much of the fleet its latest generation covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Advert {
    pub node: String,
    pub role: String,
    pub version: u32,
    /// Clusters and machines behind its latest generation (0 before the first).
    pub clusters: u64,
    pub machines: u64,
    /// That generation's round (0 before the first).
    pub round: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationFrame {
    pub id: u64,
    pub round: u64,
    pub sealed_at_ms: i64,
    /// Every table is sent with full rows (first frame of a connection): the parent drops
    /// what it held for this child.
    pub full: bool,
    /// The requested tables the child's generation holds. A table not listed is not in
    /// that generation.
    pub tables: Vec<TableFrame>,
    /// Sources whose input was refused (source, why).
    pub errors: Vec<(String, String)>,
    /// How the link's time per source changes with this frame. A link keeps one time per
    /// source name, which the parts that name the source ([`Sources`]) take; every machine
    /// publishes every interval, so each frame restamps every source, once for all its
    /// tables.
    pub stamps: Stamps,
    /// What the child sees below it: machines (sources of its tables) and, for a TLA,
    /// clusters.
    pub machines: u64,
    pub clusters: u64,
}

/// Changes to the link's time per source, applied in this order: times of sources the link
/// holds move in place, sources gone are removed (the rest keep their order), new sources
/// are appended. Times travel as `sealed_at_ms` minus the time in ms, a small number.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stamps {
    /// Sources the link holds whose time moves, by position in the link's list, ascending:
    /// each as its distance from the previous one minus one, so "every source" is all zeros.
    pub moved: Vec<u32>,
    /// Their new times, one per entry of `moved`.
    pub moved_back: Vec<i64>,
    /// Sources no part names any more: the link forgets their times.
    pub gone: Vec<String>,
    /// Sources new to the link, with their times.
    pub new: Vec<(String, i64)>,
}

impl GenerationFrame {
    /// The rows that are encoded only as the frame is serialized ([`IpcRows::Batches`]),
    /// each as the batches that travel as one, in the order of serialization.
    pub fn late_rows(&self) -> Vec<&[RecordBatch]> {
        let mut out = Vec::new();
        for t in &self.tables {
            for p in &t.parts {
                if let PartRows::Full(IpcRows::Batches(b)) = &p.rows {
                    out.push(b.as_slice());
                }
            }
            for b in &t.blocks {
                if let IpcRows::Batches(b) = b {
                    out.push(b.as_slice());
                }
            }
        }
        out
    }

    /// Encodes every row still held as batches ([`IpcRows::Batches`]) as bytes: for a frame
    /// that is sized before it is serialized, which would otherwise encode them twice.
    /// Many rows (a large full copy serialized uncompressed) are encoded on every core.
    pub fn encode_late_rows(&mut self) -> Result<(), super::LinkError> {
        let encoded: Result<Vec<Vec<u8>>, _> = super::diff::encode_rows(self.late_rows())
            .into_iter()
            .collect();
        let mut encoded = encoded?.into_iter();
        for t in &mut self.tables {
            let parts = t.parts.iter_mut().filter_map(|p| match &mut p.rows {
                PartRows::Full(rows) => Some(rows),
                _ => None,
            });
            for rows in parts.chain(t.blocks.iter_mut()) {
                if matches!(rows, IpcRows::Batches(_)) {
                    if let Some(bytes) = encoded.next() {
                        *rows = IpcRows::Bytes(bytes);
                    }
                }
            }
        }
        Ok(())
    }

    /// Every part travels with all its rows (and there is at least one): the frame is a
    /// full copy of what the link carries, the yardstick diffs are measured against. The
    /// first frame of a connection may be empty when tables are requested later; their
    /// first frame with rows is the full copy then.
    pub fn is_full_copy(&self) -> bool {
        let mut parts = self.tables.iter().flat_map(|t| t.parts.iter()).peekable();
        self.tables.iter().all(|t| t.listing == Listing::Every)
            && parts.peek().is_some()
            && parts.all(|p| matches!(p.rows, PartRows::Full(_) | PartRows::InBlock(_)))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableFrame {
    pub name: String,
    /// Arrow IPC encoded schema: present when the table is new on this link (or its schema
    /// changed); otherwise the parent uses the one it has.
    #[serde(with = "serde_bytes")]
    pub schema: Option<Vec<u8>>,
    /// What `parts` lists: every part, or only the changes.
    pub listing: Listing,
    pub parts: Vec<PartFrame>,
    /// The new values of the table's patched parts ([`PartRows::Patch`]), one entry per set
    /// of patched columns: a part's values are the next rows of its entry, parts taken in
    /// order. One Arrow IPC message per entry rather than one per part: a message's metadata
    /// (about 200 bytes) is more than the values of a typical patch (8 to 40 bytes).
    pub patches: Vec<PatchValues>,
    /// The rows of the table's parts sent as [`PartRows::InBlock`], the parts taken in
    /// order, each within one block: a block is one Arrow IPC record batch (after its
    /// dictionaries, if any) of many parts' rows. A full copy of 70,000 machines is 420,000
    /// parts, and as a message each (about 1 kB of metadata for 1 kB of rows) they were most
    /// of its bytes and of the time to encode and decode it (`link-codec`, `fleet-cold-starts`).
    pub blocks: Vec<IpcRows>,
}

/// The values of every part of a table patched in the same columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchValues {
    /// The changed columns, ascending: (column index, 0 for new values, or for a delta the
    /// bytes of each value as sent: 1, 2, 4 or 8).
    pub columns: Vec<(u32, u8)>,
    /// Rows of values: the rows of the parts that read this entry.
    pub rows: u32,
    /// The delta columns, in order, raw: the new value's bits minus the old one's, as a
    /// wrapping signed integer of the column's width, in the narrowest width that holds
    /// every delta of the entry, as byte planes (byte 0 of every row, then byte 1, ...).
    /// Then the columns of new values as one Arrow IPC message.
    #[serde(with = "serde_bytes")]
    pub values: Vec<u8>,
}

/// How a table's `parts` relate to the parts the parent holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Listing {
    /// Every part of the table in this generation, in order. A part the parent held that is
    /// not listed is gone.
    #[default]
    Every,
    /// Only the parts that are new or changed (rows or sources). Every other part the parent
    /// holds stays as it is, where it is, except the parts `gone` (keys), which are removed;
    /// new parts follow the held ones, in the order listed. A steady fleet changes a
    /// fraction of its machines per interval, but every machine republishes: listing the
    /// others only to restamp them was most of a steady frame. The child uses it only when the
    /// parent's order then is the child's order.
    Changes { gone: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartFrame {
    pub key: PartId,
    pub sources: Sources,
    pub rows: PartRows,
}

/// Which part a [`PartFrame`] is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartId {
    /// By its key.
    Key(String),
    /// A part the parent holds, by where it holds it: this many held parts after the
    /// previous part of the table sent this way (the first: its index). In a steady frame
    /// every machine's part of a table of counters changes, and its key (a machine's
    /// address) was more bytes than its patch; positions are known to both sides because
    /// the child lists changes only when the parent's order is its own
    /// ([`Listing::Changes`]).
    Held(u32),
}

impl From<&str> for PartId {
    fn from(key: &str) -> Self {
        PartId::Key(key.to_string())
    }
}

impl From<String> for PartId {
    fn from(key: String) -> Self {
        PartId::Key(key)
    }
}

/// A part's sources (what published its rows) and when they published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Sources {
    /// As the parent holds them for the part (a held part only).
    Held,
    /// These sources, each at its time on the link ([`GenerationFrame::stamps`]).
    Named(Vec<String>),
    /// These sources at these times (unix ms): for a part whose source published it at
    /// another time than the link's time for that source.
    Stamped(Vec<(String, i64)>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PartRows {
    /// All rows, Arrow IPC encoded.
    Full(IpcRows),
    /// All rows: the next this many rows of the table's `blocks` (`TableFrame::blocks`),
    /// within one block. How a part new to the parent travels.
    InBlock(u32),
    /// Same rows as the parent holds for this part.
    Unchanged,
    /// The parent removes these rows (indexes into the rows it holds, ascending) and appends
    /// `added` (Arrow IPC encoded) after the rows that remain.
    Diff {
        removed: Vec<u32>,
        #[serde(with = "serde_bytes")]
        added: Vec<u8>,
    },
    /// Rows matched by the table's key (tables with a key only). The parent sets the
    /// columns of entry `values` of the table's `patches` in the held rows `rows`, removes
    /// `removed` (indexes into the rows it holds, ascending) and appends `added` (Arrow IPC;
    /// empty bytes for none) after the rows that remain. See `super::diff` for the exact
    /// order.
    Patch {
        /// The held rows whose values change, ascending, each as its distance from the
        /// previous one minus one (the first: its index), so "every row" is all zeros.
        rows: Vec<u32>,
        /// The entry of the table's `patches` whose next `rows.len()` rows are this part's
        /// new values; `None` when no value changes.
        values: Option<u32>,
        removed: Vec<u32>,
        #[serde(with = "serde_bytes")]
        added: Vec<u8>,
    },
}

/// Rows in full (a part's, or a block of parts'), as Arrow IPC bytes on the wire.
///
/// A sender holds the rows of parts new to its parent as the batches themselves, encoded
/// only while the frame is serialized, a block at a time: a TLA's first whole generation
/// for a SQL node is hundreds of MB of IPC at 70,000 machines, and holding it whole before
/// compressing it set the TLA's peak (BENCHMARKS.md, `fleet`). A receiver gets bytes: a
/// slice of the frame it decoded ([`IpcRows::Received`]) when the frame was decoded by
/// [`decode_frame`](super::frame::decode_frame), otherwise a copy.
#[derive(Debug, Clone)]
pub enum IpcRows {
    /// Arrow IPC messages: the dictionaries, if any, then the record batch.
    Bytes(Vec<u8>),
    /// Rows encoded when serialized: these batches' rows, concatenated, as one record batch
    /// (the same bytes as [`IpcRows::Bytes`] would hold).
    Batches(Vec<RecordBatch>),
    /// The same bytes as [`IpcRows::Bytes`], within the decompressed frame they came in
    /// (shared, not copied). Copying a whole fleet's parts out of the frame touched as
    /// much fresh memory again as the frame, and on this project's virtual machines a fresh
    /// page costs more than the copy: the SQL node's cold start spent about 2.7 of its 3.6 s
    /// of decoding there (BENCHMARKS.md, goal 4). A receiver decodes the rows into arrays
    /// of their own and drops these, so the frame is let go once it is applied.
    Received(Buffer),
}

impl IpcRows {
    /// The IPC bytes, unless the rows are still batches.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            IpcRows::Bytes(b) => Some(b),
            IpcRows::Received(b) => Some(b.as_slice()),
            IpcRows::Batches(_) => None,
        }
    }
}

/// Bytes compare as bytes, whether copied or shared.
impl PartialEq for IpcRows {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (IpcRows::Batches(a), IpcRows::Batches(b)) => a == b,
            (a, b) => a.bytes().is_some() && a.bytes() == b.bytes(),
        }
    }
}

impl From<Vec<u8>> for IpcRows {
    fn from(bytes: Vec<u8>) -> Self {
        IpcRows::Bytes(bytes)
    }
}

impl Serialize for IpcRows {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            IpcRows::Bytes(bytes) => serializer.serialize_bytes(bytes),
            IpcRows::Received(bytes) => serializer.serialize_bytes(bytes.as_slice()),
            IpcRows::Batches(batches) => {
                let bytes = super::diff::late_rows(batches)
                    .map_err(<S::Error as serde::ser::Error>::custom)?;
                serializer.serialize_bytes(&bytes)
            }
        }
    }
}

impl<'de> Deserialize<'de> for IpcRows {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_bytes(IpcRowsVisitor)
    }
}

struct IpcRowsVisitor;

impl<'de> Visitor<'de> for IpcRowsVisitor {
    type Value = IpcRows;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("Arrow IPC bytes")
    }

    fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<IpcRows, E> {
        let shared = RECEIVING.with_borrow(|f| f.as_ref().and_then(|f| slice_within(f, v)));
        Ok(shared.map_or_else(|| IpcRows::Bytes(v.to_vec()), IpcRows::Received))
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<IpcRows, E> {
        Ok(IpcRows::Bytes(v.to_vec()))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<IpcRows, E> {
        Ok(IpcRows::Bytes(v))
    }
}

thread_local! {
    /// The decompressed frame being deserialized on this thread, if it can be shared
    /// ([`receiving`]).
    static RECEIVING: RefCell<Option<Buffer>> = const { RefCell::new(None) };
}

/// Runs `f` (deserializing a message from `frame`'s bytes) with the parts' rows that lie
/// within `frame` taken as slices of it ([`IpcRows::Received`]) instead of copies.
pub(crate) fn receiving<R>(frame: &Buffer, f: impl FnOnce() -> R) -> R {
    /// Puts back what was there, even if `f` unwinds (the frame is not kept).
    struct Restore(Option<Buffer>);
    impl Drop for Restore {
        fn drop(&mut self) {
            RECEIVING.set(self.0.take());
        }
    }
    let _restore = Restore(RECEIVING.replace(Some(frame.clone())));
    f()
}

/// `v` as a slice of `frame`, when it lies within it.
fn slice_within(frame: &Buffer, v: &[u8]) -> Option<Buffer> {
    let start = (v.as_ptr() as usize).checked_sub(frame.as_ptr() as usize)?;
    (start.checked_add(v.len())? <= frame.len()).then(|| frame.slice_with_length(start, v.len()))
}

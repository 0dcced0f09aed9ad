//! The Query node: the table model, generations, the SQL engine with its views and static
//! tables, the publishers, and the actors that tie them into the roles of the hierarchy.
//!
//! - [`table`]: column types, schemas from `schemas/*.toml`, rows to Arrow.
//! - [`generation`]: immutable snapshots of published tables.
//! - [`heap`]: freed memory back to the system; resident size.
//! - [`link`]: the cluster link protocol between tiers (frames, diffs, compression).
//! - [`sql`]: one generation + static tables + views as a DataFusion context.
//! - [`static_tables`]: static tables (TOML rows or CSV/TSV/JSONL/Parquet data files), reloaded on change, last good copy kept.
//! - [`edge`]: publishers (the host's own tables).
//! - [`simulate`]: a simulated fleet for the demo and benchmarks.
//! - [`tier`]: the hierarchy: child links, merging a round, serving parents, requests.
//! - [`node`]: the actors of a node and the handle the HTTP layer uses.
//! - [`tls`]: certificates, keys and rustls configurations (mutual TLS between tiers), and
//!   a small CA for tests and the demo.
//! - [`alerts`]: alert definitions, their evaluation on every generation, state and
//!   notifications.
//! - [`history`]: old generations and reports' answers kept as Parquet, queried as
//!   `history.<table>` and `report.<name>`.
//! - [`auth`]: tokens, domains and tables a client may use; Host and Origin rules.

/// Every binary that links the node (queryd, the benchmarks, the tests) allocates through
/// mimalloc. Under glibc's malloc a TLA at 21,000 machines spent about 43% of its CPU in
/// malloc, and decode, merge and encode slowed each generation as the heap fragmented (a
/// perf profile; BENCHMARKS.md, `tla-merge`).
///
/// Without transparent huge pages: mimalloc is built not to ask for them (`no_thp`,
/// Cargo.toml) and `queryd` turns them off for its process (`heap::no_huge_pages`):
/// zeroing re-faulted 2 MiB pages was 30% of the samples of a `tla-merge` profile.
///
/// The `system-alloc` feature leaves the system's allocator in place, for heap profilers.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod aggregator_sets;
pub mod alerts;
pub mod auth;
pub mod config;
pub mod edge;
pub mod error;
pub mod generation;
pub mod heap;
pub mod history;
pub mod link;
pub mod metrics;
pub mod node;
pub mod simulate;
pub mod sql;
pub mod static_tables;
pub mod table;
pub(crate) mod threads;
pub mod tier;
pub mod tls;

pub use error::{ConfigError, QueryError};

//! The hierarchy: how a node takes generations from the tier below and gives its own to
//! the tier above.
//!
//! - [`children`]: what a parent holds of each child, and the merge of a round
//!   (completeness, dropping silent children).
//! - [`child_link`]: the actor that dials one child and keeps its link (reconnect, backoff,
//!   restart counting).
//! - [`parent_links`]: serving parents: each gets this node's generations as diffs.
//! - [`admission`]: what the listener lets in before hello (session caps, hello deadline,
//!   request frame and decompression limits).
//! - [`requests`]: which tables are wanted: the book of [`table_request`] actors, one per
//!   table (prewarm, parents' requests, queries with ttl).
//! - [`transport`]: TCP, or in-process pipes for the one-process demo hierarchy.
//! - [`names`]: children given as DNS names, kept resolved.
//! - [`tla_selection`]: how a SQL node chooses its TLA (advertised clusters, margin,
//!   bonuses, pin) and switches when it fails.
//! - [`tla_children`]: a TLA deferring tables to TLA children (OSR 3.5): the split, the
//!   links, the fallback; and the child's side.
//! - [`messages`], [`config`].

pub mod admission;
pub mod child_link;
pub mod children;
pub mod config;
pub mod messages;
pub mod names;
pub mod parent_links;
pub mod requests;
pub mod span;
pub mod table_request;
pub mod tla_children;
pub mod tla_selection;
pub mod transport;

pub use children::{ChildState, Children, Merged};
pub use config::{LinkConfig, PrewarmFile, RequestsConfig};
pub use requests::RequestBook;

//! Cluster links: how a parent tier gets generations from the tier below.
//!
//! - [`wire`]: the messages (hello, request, generation frames with per-part diffs).
//! - [`frame`]: framing on the byte stream, serialization, compression.
//! - [`diff`]: a generation to a frame against what the parent already holds, and back.

pub mod diff;
mod error;
pub mod frame;
pub mod wire;

pub use error::LinkError;

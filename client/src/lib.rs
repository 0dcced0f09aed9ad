//! The publisher side of Query: the local publish protocol ([`protocol`]) and a small
//! blocking client ([`Publisher`]) for processes that publish tables to their edge agent.
//! Depends on serde only, so publishers stay light.

#[cfg(feature = "dns")]
pub mod dns;
pub mod protocol;
mod publisher;

pub use publisher::{ClientError, Publisher};

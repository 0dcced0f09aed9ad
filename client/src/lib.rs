//! Client libraries of Query:
//! - the publisher side: the local publish protocol ([`protocol`]) and a small blocking
//!   client ([`Publisher`]) for processes that publish tables to their edge agent; depends
//!   on serde only (`default-features = false`), so publishers stay light;
//! - the SQL side (feature `sql`): [`sql::SqlClient`] runs SQL at the SQL nodes behind a
//!   name, with the failover, redirects and HTTPS of the `query` command, which is built on it.

#[cfg(feature = "dns")]
pub mod dns;
pub mod protocol;
mod publisher;
#[cfg(feature = "sql")]
pub mod sql;

pub use publisher::{ClientError, Publisher};

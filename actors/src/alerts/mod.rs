//! Alerts: SQL evaluated on every generation of a node that answers SQL, instances with
//! hysteresis counted in generations, state kept in SQLite so it survives `kill -9`, and
//! notifications delivered from a durable outbox.
//!
//! - [`notify`]: what a notification is, the receivers (webhook, Alertmanager, e-mail), the
//!   outbox and its delivery.

pub mod notify;

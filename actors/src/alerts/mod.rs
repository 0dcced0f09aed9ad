//! Alerts: SQL evaluated on every generation of a node that answers SQL, instances with
//! hysteresis counted in generations, state kept in SQLite so it survives `kill -9`, and
//! notifications delivered from a durable outbox.
//!
//! - [`config`]: the node's `[alerts]` section and `alerts.toml` (alerts, receivers).
//! - [`instance`]: the life of an instance: pending, firing, resolved, unknown, error.
//! - [`coverage`]: which machines and clusters a generation holds.
//! - [`evaluator`]: the actor evaluating due alerts on each generation.
//! - [`store`]: the state file (instances, rounds, events; the outbox shares it).
//! - [`status`]: what `GET /alerts` and `/metrics` show.
//! - [`tables`]: `query_alerts` and `query_alert_events`.
//! - [`notify`]: what a notification is, the receivers (webhook, Alertmanager, e-mail), the
//!   outbox and its delivery.

pub mod config;
pub mod coverage;
pub mod evaluator;
pub mod instance;
pub mod notify;
pub mod status;
pub mod store;
pub mod tables;

pub use config::{AlertsConfig, AlertsFile};
pub use evaluator::AlertEvaluator;
pub use status::AlertsShared;

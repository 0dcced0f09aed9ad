//! Notifications: one transition of one alert instance, the receivers it goes to, and
//! their configuration (`[receivers.NAME]` in `alerts.toml`).
//!
//! - [`outbox`]: the durable queue in the alert database (enqueued in the evaluator's
//!   transaction).
//! - [`dispatch`]: the actor delivering it, one worker thread per receiver, with retries,
//!   backoff and Alertmanager's re-sends.
//! - `webhook`, `alertmanager`, `email`: one receiver kind each (the wire format and the
//!   one attempt).

pub mod alertmanager;
pub mod dispatch;
pub mod email;
pub mod outbox;
pub mod webhook;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, ConfigResult};

/// The state of an alert instance, as stored, shown and notified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// Seen, but in fewer consecutive evaluations than the alert's `for`.
    Pending,
    Firing,
    /// Absent for `clear_after` consecutive evaluations.
    Resolved,
    /// Its machine, cluster or a table it needs is missing from the generation: neither
    /// firing nor resolved.
    Unknown,
    /// The alert's SQL failed (the instance is the alert itself).
    Error,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
            AlertState::Unknown => "unknown",
            AlertState::Error => "error",
        }
    }
}

/// One notification: a transition of one alert instance. This is also the JSON document a
/// webhook receiver is POSTed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Stable across restarts and retries: the same transition always has the same key, so
    /// receivers (and the outbox) can drop duplicates.
    pub dedup_key: String,
    pub alert: String,
    /// The instance's key columns and their values as text (empty for an `error` instance).
    pub key: BTreeMap<String, String>,
    /// The key as one line: `machine_ip=10.0.0.1 mountp=/`.
    pub key_text: String,
    /// `firing`, `resolved` or `error`.
    pub state: AlertState,
    /// When the instance entered its firing (or error) state: RFC 3339, UTC.
    pub since: String,
    /// When a resolved instance was resolved (RFC 3339); None otherwise.
    pub ended: Option<String>,
    pub priority: String,
    pub owner: String,
    pub description: String,
    pub runbook: String,
    pub labels: BTreeMap<String, String>,
    /// The generation whose evaluation made this transition, and its time (RFC 3339).
    pub generation: u64,
    pub generation_time: String,
    /// The row's other columns as text (what the instance saw), for bodies and annotations.
    pub values: BTreeMap<String, String>,
    /// The error of an `error` instance.
    pub error: Option<String>,
}

/// What kind of receiver a `[receivers.NAME]` table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiverKind {
    /// POST of one [`Notification`] as JSON to `url`.
    Webhook,
    /// Prometheus Alertmanager v2 API at `url` (`POST {url}/api/v2/alerts`); firing
    /// instances are re-sent every `resend_every`, as Alertmanager expects.
    Alertmanager,
    /// Plain-text e-mail through the SMTP relay `smtp` (`host:port`), no authentication.
    Email,
}

/// One `[receivers.NAME]` table of `alerts.toml`. Flat (not an enum per kind) so unknown
/// keys are refused; `validate` checks each kind has what it needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    pub kind: ReceiverKind,
    /// webhook, alertmanager: where to POST.
    #[serde(default)]
    pub url: Option<String>,
    /// alertmanager: how often firing instances are re-sent.
    #[serde(default = "default_resend", with = "humantime_serde")]
    pub resend_every: Duration,
    /// email: the relay, `host:port`.
    #[serde(default)]
    pub smtp: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Vec<String>,
    /// One delivery attempt's limit.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The first retry's wait, doubled on each failure up to `max_backoff`.
    #[serde(default = "default_backoff", with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Undelivered notifications kept for this receiver; past it the oldest is dropped
    /// (counted in `query_alert_deliveries_total{outcome="dropped"}`).
    #[serde(default = "default_outbox_max_items")]
    pub outbox_max_items: usize,
}

fn default_outbox_max_items() -> usize {
    10_000
}

fn default_resend() -> Duration {
    Duration::from_secs(60)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_backoff() -> Duration {
    Duration::from_secs(1)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(300)
}

impl ReceiverConfig {
    pub fn validate(&self, name: &str) -> ConfigResult<()> {
        let bad = |message: String| ConfigError::Invalid {
            what: format!("receivers.{name}"),
            message,
        };
        match self.kind {
            ReceiverKind::Webhook | ReceiverKind::Alertmanager => match &self.url {
                Some(url) if url.starts_with("http://") => {}
                // The HTTP client is built without TLS (it would rebuild rustls with other
                // features): say so now rather than retry forever.
                Some(url) if url.starts_with("https://") => {
                    return Err(bad(format!(
                        "url {url:?}: https is not supported yet, use http:// (e.g. a local relay)"
                    )))
                }
                Some(url) => return Err(bad(format!("url {url:?} must start with http://"))),
                None => return Err(bad("needs url".into())),
            },
            ReceiverKind::Email => {
                if self.smtp.as_deref().unwrap_or("").is_empty()
                    || self.from.as_deref().unwrap_or("").is_empty()
                    || self.to.is_empty()
                {
                    return Err(bad("email needs smtp, from and at least one to".into()));
                }
                for a in self.from.iter().chain(&self.to) {
                    email::check_address(a).map_err(&bad)?;
                }
                if let Some(relay) = &self.smtp {
                    email::check_relay(relay).map_err(&bad)?;
                }
            }
        }
        if self.timeout.is_zero() || self.initial_backoff.is_zero() || self.resend_every.is_zero() {
            return Err(bad(
                "timeout, initial_backoff and resend_every must be above zero".into(),
            ));
        }
        if self.outbox_max_items == 0 {
            return Err(bad("outbox_max_items must be above zero".into()));
        }
        if self.max_backoff < self.initial_backoff {
            return Err(bad("max_backoff must be at least initial_backoff".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A firing notification of `disk_full` on one machine, dedup key `key`.
    pub(crate) fn sample(key: &str) -> Notification {
        Notification {
            dedup_key: key.to_string(),
            alert: "disk_full".into(),
            key: BTreeMap::from([
                ("machine_ip".to_string(), "10.0.0.1".to_string()),
                ("mountp".to_string(), "/var".to_string()),
            ]),
            key_text: "machine_ip=10.0.0.1 mountp=/var".into(),
            state: AlertState::Firing,
            since: "2026-11-28T10:00:00Z".into(),
            ended: None,
            priority: "page".into(),
            owner: "ops".into(),
            description: "filesystem under 3% free".into(),
            runbook: "https://runbooks.invalid/disk".into(),
            labels: BTreeMap::from([("team".to_string(), "storage".to_string())]),
            generation: 42,
            generation_time: "2026-11-28T10:00:00Z".into(),
            values: BTreeMap::from([("free_pct".to_string(), "2.5".to_string())]),
            error: None,
        }
    }

    fn parse(text: &str) -> Result<ReceiverConfig, String> {
        let c: ReceiverConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate("r").map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn shipped_receivers_parse_and_validate() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../ops/alerts.toml");
        let file = crate::alerts::config::load_alerts(std::path::Path::new(path))
            .expect("ops/alerts.toml");
        assert_eq!(file.receivers.len(), 3);
        for a in &file.alert {
            a.check(&file.receivers).expect("shipped alert is sound");
        }
        for (name, r) in &file.receivers {
            r.validate(name).expect("valid");
        }
        assert_eq!(
            file.receivers["alertmanager"].kind,
            ReceiverKind::Alertmanager
        );
    }

    #[test]
    fn receiver_configs_validate() {
        let c = parse("kind = \"webhook\"\nurl = \"http://127.0.0.1:9/\"").expect("webhook");
        assert_eq!(c.outbox_max_items, 10_000);
        assert!(parse("kind = \"webhook\"").is_err());
        assert!(parse("kind = \"webhook\"\nurl = \"ftp://x\"").is_err());
        assert!(parse("kind = \"webhook\"\nurl = \"http://x\"\nbogus = 1").is_err());
        assert!(parse("kind = \"webhook\"\nurl = \"http://x\"\noutbox_max_items = 0").is_err());
        let mail = "kind = \"email\"\nsmtp = \"127.0.0.1:25\"\nfrom = \"query@example.org\"\nto = [\"ops@example.org\"]";
        parse(mail).expect("email");
        assert!(parse(&mail.replace("ops@example.org", "ops\\r\\nRCPT TO:<x@y>")).is_err());
        assert!(parse(&mail.replace("127.0.0.1:25", "127.0.0.1")).is_err());
        assert!(parse("kind = \"alertmanager\"\nurl = \"http://x\"\ninitial_backoff = \"10s\"\nmax_backoff = \"1s\"").is_err());
    }
}

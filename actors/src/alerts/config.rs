//! Alert configuration: the node's `[alerts]` section (where the definitions and the state
//! are) and the definitions file, `alerts.toml` (the alerts and their receivers).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::notify::ReceiverConfig;
use crate::error::{ConfigError, ConfigResult};

/// `[alerts]` in a node's config: present on a node that answers SQL, it evaluates alerts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// The definitions (`ops/alerts.toml`), reloaded when edited.
    pub definitions: PathBuf,
    /// The SQLite file holding instance state, events and the notification outbox.
    pub state: PathBuf,
    /// How long transitions stay in `query_alert_events`.
    #[serde(default = "default_keep_events", with = "humantime_serde")]
    pub keep_events: Duration,
    /// How long a resolved instance stays in `query_alerts` before it is forgotten.
    #[serde(default = "default_keep_resolved", with = "humantime_serde")]
    pub keep_resolved: Duration,
    /// Alerts evaluated at once (0: one per query thread).
    #[serde(default)]
    pub concurrency: usize,
}

fn default_keep_events() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_keep_resolved() -> Duration {
    Duration::from_secs(3600)
}

impl AlertsConfig {
    pub fn resolve(&mut self, base: &Path) {
        for p in [&mut self.definitions, &mut self.state] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    pub fn validate(&self) -> ConfigResult<()> {
        if self.keep_resolved.is_zero() {
            return Err(ConfigError::Invalid {
                what: "[alerts] keep_resolved".into(),
                message: "must be above zero".into(),
            });
        }
        Ok(())
    }
}

/// One `[[alert]]` of `alerts.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertDef {
    pub name: String,
    /// Every row it returns is one instance.
    pub sql: String,
    /// The columns that identify an instance (empty: the alert has one instance).
    #[serde(default)]
    pub key: Vec<String>,
    /// Fire once a row has been returned by this many consecutive evaluations.
    #[serde(default = "one", rename = "for")]
    pub for_evaluations: u32,
    /// Resolve once a firing row has been absent from this many consecutive evaluations.
    #[serde(default = "two")]
    pub clear_after: u32,
    /// Evaluate on every Kth generation (by round number, so every node of a set
    /// evaluates the same ones).
    #[serde(default = "one")]
    pub every: u32,
    /// A published table the alert reads that is older than this makes its instances
    /// `unknown` (it is not evidence that they are resolved).
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
    #[serde(default = "default_priority")]
    pub priority: String,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub runbook: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Receiver names (`[receivers.NAME]`).
    #[serde(default)]
    pub notify: Vec<String>,
}

fn one() -> u32 {
    1
}
fn two() -> u32 {
    2
}
fn default_priority() -> String {
    "ticket".into()
}

/// `alerts.toml`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsFile {
    #[serde(default)]
    pub alert: Vec<AlertDef>,
    #[serde(default)]
    pub receivers: BTreeMap<String, ReceiverConfig>,
}

fn is_identifier(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl AlertDef {
    /// What is wrong with this alert alone (another alert's problem does not stop it).
    pub fn check(&self, receivers: &BTreeMap<String, ReceiverConfig>) -> Result<(), String> {
        if self.sql.trim().is_empty() {
            return Err("has no sql".into());
        }
        if self.for_evaluations == 0 || self.clear_after == 0 || self.every == 0 {
            return Err("for, clear_after and every must be at least 1".into());
        }
        let mut keys = BTreeSet::new();
        for k in &self.key {
            if !keys.insert(k.as_str()) {
                return Err(format!("key column '{k}' named twice"));
            }
        }
        for r in &self.notify {
            if !receivers.contains_key(r) {
                return Err(format!("notify names receiver '{r}', which is not defined"));
            }
        }
        Ok(())
    }
}

impl AlertsFile {
    /// Errors that make the whole file unusable (the last good one stays in force): bad
    /// names, names used twice, bad receivers. Problems of one alert are reported by
    /// [`AlertDef::check`] and stop only that alert.
    pub fn validate(&self) -> ConfigResult<()> {
        let mut seen = BTreeSet::new();
        for a in &self.alert {
            if !is_identifier(&a.name) {
                return Err(ConfigError::Invalid {
                    what: format!("alert '{}'", a.name),
                    message:
                        "name must start with a letter and hold only letters, digits, '_' and '-'"
                            .into(),
                });
            }
            if !seen.insert(a.name.as_str()) {
                return Err(ConfigError::Invalid {
                    what: format!("alert '{}'", a.name),
                    message: "defined twice".into(),
                });
            }
        }
        for (name, r) in &self.receivers {
            r.validate(name)?;
        }
        Ok(())
    }
}

pub fn load_alerts(path: &Path) -> ConfigResult<AlertsFile> {
    let file: AlertsFile = crate::config::read_toml(path)?;
    file.validate()?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ConfigResult<AlertsFile> {
        let f: AlertsFile = crate::config::parse_toml(text, "test")?;
        f.validate()?;
        Ok(f)
    }

    #[test]
    fn defaults_and_per_alert_checks() {
        let f = parse(
            "[[alert]]\nname = \"disk\"\nsql = \"SELECT 1\"\nkey = [\"machine_ip\"]\n\n[[alert]]\nname = \"bad\"\nsql = \"SELECT 1\"\nnotify = [\"nobody\"]\n",
        )
        .expect("parses");
        let disk = &f.alert[0];
        assert_eq!(
            (disk.for_evaluations, disk.clear_after, disk.every),
            (1, 2, 1)
        );
        assert_eq!(disk.check(&f.receivers), Ok(()));
        let err = f.alert[1]
            .check(&f.receivers)
            .expect_err("unknown receiver");
        assert!(err.contains("nobody"), "{err}");
    }

    #[test]
    fn whole_file_errors() {
        let twice = "[[alert]]\nname = \"a\"\nsql = \"SELECT 1\"\n[[alert]]\nname = \"a\"\nsql = \"SELECT 2\"\n";
        assert!(parse(twice).is_err());
        assert!(parse("[[alert]]\nname = \"a\"\nsql = \"SELECT 1\"\nbogus = 1\n").is_err());
        assert!(parse("[[alert]]\nname = \"a b\"\nsql = \"SELECT 1\"\n").is_err());
        let receiver = "[receivers.hook]\nkind = \"webhook\"\n";
        assert!(parse(receiver).is_err(), "a webhook needs a url");
    }
}

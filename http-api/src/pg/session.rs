//! Session commands clients send that are no queries of the fleet: `SET`/`RESET`/`SHOW`
//! of settings (drivers and psql send them at connect), transaction brackets (accepted:
//! every statement reads one generation, so there is nothing to keep consistent across
//! statements), `DISCARD`, `DEALLOCATE`. Settings are kept per connection and change
//! nothing on the node.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::encode::text_batch;
use super::error::PgError;
use super::Outcome;

/// A connection's settings, as `SET` left them.
#[derive(Debug, Default)]
pub struct Settings(pub Mutex<BTreeMap<String, String>>);

/// What `SHOW` answers for a setting never set on this connection.
fn default_of(name: &str) -> Option<&'static str> {
    Some(match name {
        "server_version" => "16.6",
        "server_version_num" => "160006",
        "server_encoding" | "client_encoding" => "UTF8",
        "datestyle" => "ISO, MDY",
        "intervalstyle" => "postgres",
        "timezone" => "UTC",
        "standard_conforming_strings" => "on",
        "integer_datetimes" => "on",
        "transaction_isolation" | "default_transaction_isolation" => "serializable",
        "transaction_read_only" | "default_transaction_read_only" => "on",
        "search_path" => "\"$user\", public",
        "extra_float_digits" => "1",
        "application_name" => "",
        "statement_timeout" | "lock_timeout" | "idle_in_transaction_session_timeout" => "0",
        "max_identifier_length" => "63",
        "is_superuser" => "off",
        "bytea_output" => "hex",
        _ => return None,
    })
}

/// Names `SHOW` leaves to the node (`SHOW TABLES`, `SHOW COLUMNS FROM t`, ...).
const NODE_SHOWS: &[&str] = &["tables", "columns", "functions", "create", "all"];

/// The answer to `sql` if it is a session command; None: a statement for the node.
pub fn command(sql: &str, settings: &Settings) -> Result<Option<Outcome>, PgError> {
    let words: Vec<&str> = sql.split_whitespace().collect();
    let Some(first) = words.first() else {
        return Ok(Some(Outcome::Empty));
    };
    let lower = |i: usize| words.get(i).map(|w| w.to_ascii_lowercase());
    let tag = |t: &str| Ok(Some(Outcome::Command(t.to_string())));
    match first.to_ascii_lowercase().as_str() {
        "begin" | "start" => Ok(Some(Outcome::Begin)),
        "commit" | "end" => Ok(Some(Outcome::End("COMMIT".into()))),
        "rollback" | "abort" => Ok(Some(Outcome::End("ROLLBACK".into()))),
        "discard" => tag(&format!(
            "DISCARD {}",
            lower(1).unwrap_or_default().to_uppercase()
        )),
        "deallocate" => tag("DEALLOCATE"),
        "reset" => {
            let name = lower(1).unwrap_or_default();
            let mut s = lock(settings);
            if name == "all" {
                s.clear();
            } else {
                s.remove(&name);
            }
            tag("RESET")
        }
        "set" => {
            set(sql, settings)?;
            tag("SET")
        }
        "show" => {
            let name = lower(1).unwrap_or_default();
            if words.len() != 2 || NODE_SHOWS.contains(&name.as_str()) {
                return Ok(None);
            }
            let name = name.trim_matches('"').to_string();
            let value = lock(settings)
                .get(&name)
                .cloned()
                .or_else(|| default_of(&name).map(str::to_string))
                .ok_or_else(|| {
                    PgError::Unsupported(format!("unrecognized configuration parameter \"{name}\""))
                })?;
            Ok(Some(Outcome::rows(text_batch(
                &[&name],
                vec![vec![Some(value)]],
            ))))
        }
        _ => Ok(None),
    }
}

/// `SET [SESSION | LOCAL] name {TO | =} value`, `SET TIME ZONE value`, `SET TRANSACTION
/// ...`, `SET SESSION CHARACTERISTICS ...`: kept or accepted.
fn set(sql: &str, settings: &Settings) -> Result<(), PgError> {
    let rest = sql.trim()[3..].trim_start();
    let mut rest = rest;
    for scope in ["session ", "local "] {
        if starts_ci(rest, scope) {
            rest = rest[scope.len()..].trim_start();
        }
    }
    let lower = rest.to_ascii_lowercase();
    if lower.starts_with("transaction") || lower.starts_with("characteristics") {
        if lower.contains("read write") {
            return Err(PgError::Unsupported(
                "Query is read-only: transactions are READ ONLY".into(),
            ));
        }
        return Ok(());
    }
    let (name, value) = if lower.starts_with("time zone") {
        ("timezone".to_string(), rest[9..].trim())
    } else {
        let split = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .ok_or_else(|| PgError::Protocol(format!("cannot read the SET statement: {sql}")))?;
        let name = rest[..split].trim().trim_matches('"').to_ascii_lowercase();
        let mut value = rest[split..].trim_start();
        if let Some(v) = value.strip_prefix('=') {
            value = v.trim_start();
        } else if starts_ci(value, "to ") {
            value = value[3..].trim_start();
        }
        (name, value)
    };
    let value = value.trim_matches('\'').to_string();
    lock(settings).insert(name, value);
    Ok(())
}

/// Whether `s` starts with ASCII `prefix`, any case.
fn starts_ci(s: &str, prefix: &str) -> bool {
    s.get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

fn lock(settings: &Settings) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
    // A poisoned map is still a map of strings.
    settings.0.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_drivers_send_are_accepted_and_shown() {
        let s = Settings::default();
        for sql in [
            "SET DateStyle = 'ISO'",
            "SET extra_float_digits TO 3",
            "SET SESSION application_name = 'grafana'",
            "SET TIME ZONE 'UTC'",
            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
        ] {
            assert!(
                matches!(command(sql, &s), Ok(Some(Outcome::Command(_)))),
                "{sql}"
            );
        }
        let shown = |name: &str| match command(&format!("SHOW {name}"), &s) {
            Ok(Some(Outcome::Rows { batches, .. })) => batches[0]
                .column(0)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::StringArray>()
                .map(|a| a.value(0).to_string()),
            _ => None,
        };
        assert_eq!(shown("extra_float_digits").as_deref(), Some("3"));
        assert_eq!(shown("application_name").as_deref(), Some("grafana"));
        assert_eq!(shown("server_version").as_deref(), Some("16.6"));
        assert!(command("SHOW nonsense", &s).is_err());
        assert!(matches!(command("SHOW TABLES", &s), Ok(None)));
        assert!(matches!(command("SELECT 1", &s), Ok(None)));
        assert!(command("SET TRANSACTION READ WRITE", &s).is_err());
    }
}

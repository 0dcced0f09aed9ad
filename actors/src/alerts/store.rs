//! Alert state on disk: one SQLite file (WAL) per node holding every instance, the rounds
//! each alert was evaluated on, the transitions (`query_alert_events`) and, in the same
//! file, the notification outbox (`notify::outbox`). Each evaluation pass is written in one
//! transaction, outbox included, so after `kill -9` the state and the notifications due
//! agree: a transition is either entirely written (and its notification queued) or not at
//! all (and the round is evaluated again).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, Transaction};

use super::instance::{Instance, Instances, Transition};
use super::notify::{AlertState, Notification};
use crate::table::unix_millis;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alert_instances (
    alert TEXT NOT NULL,
    key_text TEXT NOT NULL,
    key_json TEXT NOT NULL,
    values_json TEXT NOT NULL,
    state TEXT NOT NULL,
    seen INTEGER NOT NULL,
    absent INTEGER NOT NULL,
    since_ms INTEGER NOT NULL,
    changed_ms INTEGER NOT NULL,
    fired INTEGER NOT NULL,
    last_seen_round INTEGER NOT NULL,
    error TEXT,
    PRIMARY KEY (alert, key_text)
);
CREATE TABLE IF NOT EXISTS alert_rounds (
    alert TEXT PRIMARY KEY,
    round INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    alert TEXT NOT NULL,
    key_text TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    generation INTEGER NOT NULL,
    round INTEGER NOT NULL,
    notified INTEGER NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS alert_events_at ON alert_events (at_ms);
";

/// Opens (creating) the state file, with the outbox's tables and settings (WAL, so
/// readers never wait for a pass's write).
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            let _ = std::fs::create_dir_all(dir);
        }
    }
    let conn = super::notify::outbox::open(path)?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

fn time(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn state_of(s: &str) -> AlertState {
    match s {
        "pending" => AlertState::Pending,
        "firing" => AlertState::Firing,
        "unknown" => AlertState::Unknown,
        "error" => AlertState::Error,
        _ => AlertState::Resolved,
    }
}

/// What was kept: every alert's instances and the last round it was evaluated on.
#[derive(Debug, Default)]
pub struct Loaded {
    pub instances: BTreeMap<String, Instances>,
    pub rounds: BTreeMap<String, u64>,
}

pub fn load(conn: &Connection) -> rusqlite::Result<Loaded> {
    let mut out = Loaded::default();
    let mut stmt = conn.prepare(
        "SELECT alert, key_text, key_json, values_json, state, seen, absent, since_ms,
                changed_ms, fired, last_seen_round, error FROM alert_instances",
    )?;
    let rows = stmt.query_map([], |r| {
        let alert: String = r.get(0)?;
        let key_json: String = r.get(2)?;
        let values_json: String = r.get(3)?;
        let state: String = r.get(4)?;
        Ok((
            alert,
            Instance {
                key_text: r.get(1)?,
                key: serde_json::from_str(&key_json).unwrap_or_default(),
                values: serde_json::from_str(&values_json).unwrap_or_default(),
                state: state_of(&state),
                seen: r.get(5)?,
                absent: r.get(6)?,
                since: time(r.get(7)?),
                changed: time(r.get(8)?),
                fired: r.get::<_, i64>(9)? != 0,
                last_seen_round: u64::try_from(r.get::<_, i64>(10)?).unwrap_or(0),
                error: r.get(11)?,
            },
        ))
    })?;
    for row in rows {
        let (alert, inst) = row?;
        out.instances
            .entry(alert)
            .or_default()
            .by_key
            .insert(inst.key_text.clone(), inst);
    }
    let mut stmt = conn.prepare("SELECT alert, round FROM alert_rounds")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
        ))
    })?;
    for row in rows {
        let (alert, round) = row?;
        out.rounds.insert(alert, round);
    }
    Ok(out)
}

/// One alert's evaluation, to be written.
pub struct Evaluated<'a> {
    pub alert: &'a str,
    pub round: u64,
    pub generation: u64,
    pub at: SystemTime,
    pub instances: &'a Instances,
    pub transitions: &'a [Transition],
    /// The notifications of the transitions, each with its receivers.
    pub notifications: Vec<(Notification, &'a [String])>,
}

/// Writes one pass in one transaction: each alert's instances as they stand now, its
/// round, its transitions, and the notifications into the outbox (`enqueue`).
pub fn write_pass<F>(
    conn: &mut Connection,
    pass: &[Evaluated<'_>],
    mut enqueue: F,
) -> rusqlite::Result<()>
where
    F: FnMut(&Transaction<'_>, &str, &Notification) -> rusqlite::Result<()>,
{
    let tx = conn.transaction()?;
    {
        let mut delete = tx.prepare("DELETE FROM alert_instances WHERE alert = ?1")?;
        let mut insert = tx.prepare(
            "INSERT INTO alert_instances (alert, key_text, key_json, values_json, state, seen,
                absent, since_ms, changed_ms, fired, last_seen_round, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        let mut round = tx.prepare(
            "INSERT INTO alert_rounds (alert, round) VALUES (?1, ?2)
             ON CONFLICT (alert) DO UPDATE SET round = excluded.round",
        )?;
        let mut event = tx.prepare(
            "INSERT INTO alert_events (at_ms, alert, key_text, from_state, to_state, generation,
                round, notified, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for e in pass {
            delete.execute([e.alert])?;
            for i in e.instances.by_key.values() {
                insert.execute(params![
                    e.alert,
                    i.key_text,
                    serde_json::to_string(&i.key).unwrap_or_default(),
                    serde_json::to_string(&i.values).unwrap_or_default(),
                    i.state.as_str(),
                    i.seen,
                    i.absent,
                    unix_millis(i.since),
                    unix_millis(i.changed),
                    i.fired as i64,
                    i64::try_from(i.last_seen_round).unwrap_or(i64::MAX),
                    i.error,
                ])?;
            }
            round.execute(params![e.alert, i64::try_from(e.round).unwrap_or(i64::MAX)])?;
            for t in e.transitions {
                event.execute(params![
                    unix_millis(e.at),
                    e.alert,
                    t.instance.key_text,
                    t.from.map(AlertState::as_str),
                    t.to.as_str(),
                    i64::try_from(e.generation).unwrap_or(i64::MAX),
                    i64::try_from(e.round).unwrap_or(i64::MAX),
                    t.notify as i64,
                    t.instance.error,
                ])?;
            }
        }
    }
    for e in pass {
        for (n, receivers) in &e.notifications {
            for r in receivers.iter() {
                enqueue(&tx, r, n)?;
            }
        }
    }
    tx.commit()
}

/// Forgets alerts no longer defined, and events older than `keep`.
pub fn prune(
    conn: &Connection,
    defined: &[&str],
    keep: Duration,
    now: SystemTime,
) -> rusqlite::Result<()> {
    let cutoff = unix_millis(now) - i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
    conn.execute("DELETE FROM alert_events WHERE at_ms < ?1", [cutoff])?;
    let mut stmt = conn.prepare("SELECT DISTINCT alert FROM alert_rounds")?;
    let known: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for alert in known {
        if !defined.contains(&alert.as_str()) {
            conn.execute("DELETE FROM alert_instances WHERE alert = ?1", [&alert])?;
            conn.execute("DELETE FROM alert_rounds WHERE alert = ?1", [&alert])?;
        }
    }
    Ok(())
}

/// One row of `query_alert_events`.
#[derive(Debug, Clone)]
pub struct Event {
    pub at: SystemTime,
    pub alert: String,
    pub key_text: String,
    pub from: Option<String>,
    pub to: String,
    pub generation: u64,
    pub notified: bool,
    pub detail: Option<String>,
}

/// The newest `limit` transitions, oldest first.
pub fn events(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<Event>> {
    let mut stmt = conn.prepare(
        "SELECT at_ms, alert, key_text, from_state, to_state, generation, notified, detail
         FROM alert_events ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
        Ok(Event {
            at: time(r.get(0)?),
            alert: r.get(1)?,
            key_text: r.get(2)?,
            from: r.get(3)?,
            to: r.get(4)?,
            generation: u64::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
            notified: r.get::<_, i64>(6)? != 0,
            detail: r.get(7)?,
        })
    })?;
    let mut out: Vec<Event> = rows.collect::<rusqlite::Result<_>>()?;
    out.reverse();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::config::AlertDef;
    use crate::alerts::instance::{Outcome, Row};

    struct Everything;
    impl crate::alerts::instance::Coverage for Everything {
        fn has_machine(&self, _: &str) -> bool {
            true
        }
        fn has_cluster(&self, _: &str) -> bool {
            true
        }
    }

    #[test]
    fn a_pass_survives_reopening_and_queues_its_notifications() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("alerts.db");
        let def: AlertDef = toml::from_str(
            "name = \"disk\"\nsql = \"SELECT 1\"\nkey = [\"m\"]\nnotify = [\"hook\"]\n",
        )
        .expect("def");
        let mut inst = Instances::default();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let rows = vec![Row {
            key: BTreeMap::from([("m".into(), "a".into())]),
            values: BTreeMap::new(),
        }];
        let tr = inst.step(
            &def,
            Outcome::Rows {
                rows,
                coverage: &Everything,
            },
            5,
            at,
            Duration::from_secs(60),
        );
        let notes: Vec<_> = tr
            .iter()
            .filter(|t| t.notify)
            .map(|t| {
                (
                    crate::alerts::instance::notification(&def, &t.instance, t.to, 9, at),
                    &def.notify[..],
                )
            })
            .collect();
        let mut queued = Vec::new();
        {
            let mut conn = open(&path).expect("open");
            let pass = [Evaluated {
                alert: "disk",
                round: 5,
                generation: 9,
                at,
                instances: &inst,
                transitions: &tr,
                notifications: notes,
            }];
            write_pass(&mut conn, &pass, |_, r, n| {
                queued.push((r.to_string(), n.dedup_key.clone()));
                Ok(())
            })
            .expect("write");
        }
        assert_eq!(queued.len(), 1);
        let conn = open(&path).expect("reopen");
        let loaded = load(&conn).expect("load");
        assert_eq!(loaded.rounds["disk"], 5);
        assert_eq!(loaded.instances["disk"], inst);
        let ev = events(&conn, 10).expect("events");
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].to, "firing");
        prune(&conn, &[], Duration::from_secs(1), at).expect("prune");
        assert!(load(&conn).expect("load").instances.is_empty());
    }
}

//! The notification outbox: a table in the node's alert SQLite database holding every
//! notification from the transaction that committed its transition until its receiver
//! has it.
//!
//! - The evaluator calls [`enqueue`] inside its per-generation transaction, so a transition
//!   is notified if and only if it was committed (kill -9 between the two is impossible).
//! - Idempotent on (receiver, dedup_key): a transition replayed after a crash is one item.
//! - Bounded per receiver (`outbox_max_items`): when full, the **oldest** undelivered item
//!   is dropped and counted. Newer transitions supersede older ones (a `resolved` after a
//!   `firing`), the newest state is what an operator acts on, and Alertmanager gets the
//!   whole firing set re-sent anyway; keeping the oldest would freeze the outbox on stale
//!   news while the receiver is down.
//! - Delivered (and dropped) items are kept as `delivered`/`dropped` rows for
//!   [`KEEP_DONE`], so a late replay of the same transition is still recognised, then
//!   purged. An item is marked delivered only after its receiver acknowledged it: a crash
//!   in between delivers it again after restart, with the same dedup key (at least once).

use std::path::Path;
use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::Notification;

/// How long delivered and dropped items are kept for deduplication before [`purge`].
pub const KEEP_DONE: Duration = Duration::from_secs(24 * 3600);

/// How long a connection waits for another writer (the evaluator's transaction, another
/// receiver's worker) before SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens (creating if needed) the alert database in WAL mode with a busy timeout, for
/// both the evaluator and the receivers' workers; creates the outbox tables.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // WAL: readers never wait for the evaluator's transaction; NORMAL sync is durable
    // across a process kill (only a power loss can lose the last transactions).
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    init_schema(&conn)?;
    Ok(conn)
}

/// Creates the outbox tables if missing. Idempotent.
pub fn init_schema(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS alert_outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            receiver TEXT NOT NULL,
            dedup_key TEXT NOT NULL,
            body TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            enqueued_ms INTEGER NOT NULL,
            done_ms INTEGER,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            UNIQUE (receiver, dedup_key)
         );
         CREATE INDEX IF NOT EXISTS alert_outbox_pending
            ON alert_outbox (receiver, id) WHERE state = 'pending';
         CREATE TABLE IF NOT EXISTS alert_outbox_drops (
            receiver TEXT PRIMARY KEY,
            dropped INTEGER NOT NULL
         );",
    )
}

/// What [`enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Enqueued {
    /// False when the (receiver, dedup_key) was already there (a replay).
    pub inserted: bool,
    /// Oldest undelivered items of that receiver dropped to stay within the bound.
    pub dropped: usize,
}

/// Adds `n` for `receiver`, inside the caller's transaction. At most `max_items`
/// undelivered items per receiver: past it the oldest are dropped (and counted in
/// `alert_outbox_drops`, which the dispatcher reports in /metrics).
pub fn enqueue(
    tx: &Transaction,
    receiver: &str,
    n: &Notification,
    max_items: usize,
) -> rusqlite::Result<Enqueued> {
    let body = serde_json::to_string(n)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO alert_outbox (receiver, dedup_key, body, enqueued_ms)
         VALUES (?1, ?2, ?3, ?4)",
        params![receiver, n.dedup_key, body, now_ms()],
    )? == 1;
    if !inserted {
        return Ok(Enqueued::default());
    }
    let depth = depth(tx, receiver)?;
    let excess = depth.saturating_sub(max_items.max(1));
    if excess > 0 {
        drop_oldest(tx, receiver, excess)?;
    }
    Ok(Enqueued {
        inserted,
        dropped: excess,
    })
}

fn drop_oldest(conn: &Connection, receiver: &str, count: usize) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE alert_outbox SET state = 'dropped', done_ms = ?3,
                last_error = 'outbox full (outbox_max_items)'
         WHERE id IN (SELECT id FROM alert_outbox WHERE receiver = ?1 AND state = 'pending'
                      ORDER BY id LIMIT ?2)",
        params![receiver, count as i64, now_ms()],
    )?;
    count_drops(conn, receiver, count)
}

fn count_drops(conn: &Connection, receiver: &str, count: usize) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO alert_outbox_drops (receiver, dropped) VALUES (?1, ?2)
         ON CONFLICT (receiver) DO UPDATE SET dropped = dropped + ?2",
        params![receiver, count as i64],
    )?;
    Ok(())
}

/// Undelivered items of `receiver`.
pub fn depth(conn: &Connection, receiver: &str) -> rusqlite::Result<usize> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM alert_outbox WHERE receiver = ?1 AND state = 'pending'",
        [receiver],
        |r| r.get(0),
    )?;
    Ok(n as usize)
}

/// Items of `receiver` dropped since the database was created (bound or refused).
pub fn dropped_total(conn: &Connection, receiver: &str) -> rusqlite::Result<u64> {
    let n: Option<i64> = conn
        .query_row(
            "SELECT dropped FROM alert_outbox_drops WHERE receiver = ?1",
            [receiver],
            |r| r.get(0),
        )
        .optional()?;
    Ok(n.unwrap_or(0) as u64)
}

/// One undelivered item.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub id: i64,
    pub notification: Notification,
    pub attempts: u32,
}

/// The oldest `limit` undelivered items of `receiver`, in order. A row whose body no
/// longer parses (written by another version) is dropped and counted, not retried forever.
pub fn pending(conn: &Connection, receiver: &str, limit: usize) -> rusqlite::Result<Vec<Item>> {
    let mut stmt = conn.prepare(
        "SELECT id, body, attempts FROM alert_outbox
         WHERE receiver = ?1 AND state = 'pending' ORDER BY id LIMIT ?2",
    )?;
    let rows = stmt
        .query_map(params![receiver, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u32>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut items = Vec::with_capacity(rows.len());
    let mut unreadable = Vec::new();
    for (id, body, attempts) in rows {
        match serde_json::from_str(&body) {
            Ok(notification) => items.push(Item {
                id,
                notification,
                attempts,
            }),
            Err(e) => {
                tracing::warn!(receiver, id, error = %e, "alert outbox: unreadable item dropped");
                unreadable.push(id);
            }
        }
    }
    if !unreadable.is_empty() {
        mark_dropped(conn, receiver, &unreadable, "unreadable body")?;
    }
    Ok(items)
}

/// Marks items delivered (kept for dedup until [`purge`]).
pub fn mark_delivered(conn: &Connection, ids: &[i64]) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    set_done(&tx, ids, "delivered", None)?;
    tx.commit()
}

/// Marks items dropped (refused by the receiver as invalid, or unreadable) and counts them.
pub fn mark_dropped(
    conn: &Connection,
    receiver: &str,
    ids: &[i64],
    reason: &str,
) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    set_done(&tx, ids, "dropped", Some(reason))?;
    count_drops(&tx, receiver, ids.len())?;
    tx.commit()
}

fn set_done(
    conn: &Connection,
    ids: &[i64],
    state: &str,
    error: Option<&str>,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(
        "UPDATE alert_outbox SET state = ?2, done_ms = ?3, last_error = coalesce(?4, last_error)
         WHERE id = ?1 AND state = 'pending'",
    )?;
    let now = now_ms();
    for id in ids {
        stmt.execute(params![id, state, now, error])?;
    }
    Ok(())
}

/// Counts a failed attempt on items (shown in their rows; the order is kept).
pub fn record_failure(conn: &Connection, ids: &[i64], error: &str) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    {
        let mut stmt = tx.prepare(
            "UPDATE alert_outbox SET attempts = attempts + 1, last_error = ?2 WHERE id = ?1",
        )?;
        for id in ids {
            stmt.execute(params![id, error])?;
        }
    }
    tx.commit()
}

/// Deletes `receiver`'s delivered and dropped items older than `keep`.
pub fn purge(conn: &Connection, receiver: &str, keep: Duration) -> rusqlite::Result<usize> {
    let before = now_ms() - keep.as_millis() as i64;
    conn.execute(
        "DELETE FROM alert_outbox WHERE receiver = ?1 AND state != 'pending' AND done_ms < ?2",
        params![receiver, before],
    )
}

fn now_ms() -> i64 {
    crate::table::unix_millis(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::notify::tests::sample;

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = open(&dir.path().join("alerts.db")).expect("open");
        (dir, conn)
    }

    fn add(conn: &mut Connection, receiver: &str, key: &str, max: usize) -> Enqueued {
        let tx = conn.transaction().expect("tx");
        let e = enqueue(&tx, receiver, &sample(key), max).expect("enqueue");
        tx.commit().expect("commit");
        e
    }

    #[test]
    fn wal_mode_and_schema_idempotent() {
        let (_d, conn) = db();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("pragma");
        assert_eq!(mode, "wal");
        init_schema(&conn).expect("second init");
    }

    #[test]
    fn enqueue_is_idempotent_per_receiver_and_key() {
        let (_d, mut conn) = db();
        assert!(add(&mut conn, "hook", "k1", 10).inserted);
        assert!(!add(&mut conn, "hook", "k1", 10).inserted);
        assert!(add(&mut conn, "mail", "k1", 10).inserted);
        assert_eq!(depth(&conn, "hook").expect("depth"), 1);
        // Delivered, then replayed: still one item, not pending again.
        let items = pending(&conn, "hook", 10).expect("pending");
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].notification, sample("k1"));
        mark_delivered(&conn, &[items[0].id]).expect("delivered");
        assert!(!add(&mut conn, "hook", "k1", 10).inserted);
        assert_eq!(depth(&conn, "hook").expect("depth"), 0);
    }

    #[test]
    fn rolled_back_enqueue_leaves_nothing() {
        let (_d, mut conn) = db();
        let tx = conn.transaction().expect("tx");
        enqueue(&tx, "hook", &sample("k1"), 10).expect("enqueue");
        drop(tx);
        assert_eq!(depth(&conn, "hook").expect("depth"), 0);
    }

    #[test]
    fn bound_drops_the_oldest_and_counts() {
        let (_d, mut conn) = db();
        for i in 0..5 {
            let e = add(&mut conn, "hook", &format!("k{i}"), 3);
            assert_eq!(e.dropped, usize::from(i >= 3), "item {i}");
        }
        add(&mut conn, "other", "x", 3);
        let keys: Vec<String> = pending(&conn, "hook", 10)
            .expect("pending")
            .into_iter()
            .map(|i| i.notification.dedup_key)
            .collect();
        assert_eq!(keys, ["k2", "k3", "k4"]);
        assert_eq!(dropped_total(&conn, "hook").expect("drops"), 2);
        assert_eq!(dropped_total(&conn, "other").expect("drops"), 0);
        // A dropped item replayed is still recognised.
        assert!(!add(&mut conn, "hook", "k0", 3).inserted);
    }

    #[test]
    fn failures_keep_order_drops_are_counted_purge_keeps_pending() {
        let (_d, mut conn) = db();
        for k in ["a", "b", "c"] {
            add(&mut conn, "hook", k, 10);
        }
        let items = pending(&conn, "hook", 2).expect("pending");
        let ids: Vec<i64> = items.iter().map(|i| i.id).collect();
        record_failure(&conn, &ids, "connection refused").expect("failure");
        let again = pending(&conn, "hook", 10).expect("pending");
        assert_eq!(again[0].id, ids[0]);
        assert_eq!(again[0].attempts, 1);
        mark_dropped(&conn, "hook", &ids[..1], "refused: 400").expect("dropped");
        mark_delivered(&conn, &ids[1..]).expect("delivered");
        assert_eq!(dropped_total(&conn, "hook").expect("drops"), 1);
        assert_eq!(depth(&conn, "hook").expect("depth"), 1);
        assert_eq!(purge(&conn, "hook", KEEP_DONE).expect("purge"), 0);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(purge(&conn, "hook", Duration::ZERO).expect("purge"), 2);
        assert_eq!(depth(&conn, "hook").expect("depth"), 1);
    }
}

//! The dispatcher: delivers the outbox to the receivers. An actor that owns one worker
//! thread per receiver; a worker makes the blocking HTTP or SMTP calls and its SQLite
//! reads and writes, so no actor's event loop ever waits on the network or the disk.
//!
//! Per receiver: items in outbox order, in batches (webhook 1, Alertmanager 64, e-mail
//! 100 per message); a failed attempt keeps the batch and waits `initial_backoff`, doubled
//! on each failure up to `max_backoff`; one WARN line when the receiver goes down and one
//! INFO when it is back. A batch the receiver refuses (HTTP 4xx, SMTP 5xx) is dropped and
//! counted rather than blocking the ones behind it. Alertmanager receivers also re-send the
//! current firing set every `resend_every`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use rusqlite::Connection;

use super::{
    alertmanager, email, outbox, webhook, AlertState, Notification, ReceiverConfig, ReceiverKind,
};
use crate::metrics::Metrics;

/// Why one delivery attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Down, timed out, overloaded: try again after the backoff.
    Retry(String),
    /// The receiver refuses this content (HTTP 4xx, SMTP 5xx): retrying cannot help.
    Refused(String),
}

/// The wait after `failures` consecutive failed attempts (1 = the first failure).
pub fn backoff(initial: Duration, max: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(30);
    initial.saturating_mul(1 << doublings).min(max)
}

/// The outbox is read this often even without [`Nudge`] (items enqueued before the
/// dispatcher started, a lost nudge).
const POLL: Duration = Duration::from_secs(5);
/// Delivered items older than [`outbox::KEEP_DONE`] are purged this often.
const PURGE_EVERY: Duration = Duration::from_secs(600);
/// Batches delivered in one pass before the worker looks at its messages again.
const BATCHES_PER_PASS: usize = 50;

/// Items were committed to the outbox.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Nudge;

/// The receivers changed (live reload of alerts.toml): workers are started, reconfigured
/// or stopped; a receiver's outbox items stay.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetReceivers(pub BTreeMap<String, ReceiverConfig>);

/// The instances firing after the last evaluation, by receiver name (the alert's
/// `notify`). Alertmanager receivers re-send them every `resend_every`; others ignore it.
/// Each message replaces the previous one; a receiver missing from it has none.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Firing(pub BTreeMap<String, Vec<Notification>>);

enum Msg {
    Nudge,
    Config(Box<ReceiverConfig>),
    Firing(Vec<Notification>),
}

struct Handle {
    tx: Sender<Msg>,
    config: ReceiverConfig,
}

/// Owns the receivers' workers; dropping it (the actor stopping) stops them after their
/// current attempt.
pub struct Dispatcher {
    db_path: PathBuf,
    metrics: Arc<Metrics>,
    workers: BTreeMap<String, Handle>,
}

impl Actor for Dispatcher {
    type Context = Context<Self>;
}

impl Dispatcher {
    /// Starts the dispatcher on the alert database at `db_path` (created if missing) with
    /// `receivers`; each starts delivering what the outbox holds for it at once.
    pub fn start(
        db_path: PathBuf,
        receivers: BTreeMap<String, ReceiverConfig>,
        metrics: Arc<Metrics>,
    ) -> Addr<Dispatcher> {
        let mut d = Dispatcher {
            db_path,
            metrics,
            workers: BTreeMap::new(),
        };
        d.set_receivers(receivers);
        d.start()
    }

    fn set_receivers(&mut self, receivers: BTreeMap<String, ReceiverConfig>) {
        self.workers.retain(|name, _| {
            let keep = receivers.contains_key(name);
            if !keep {
                tracing::info!(receiver = %name, "alert receiver removed; its outbox items stay");
                self.metrics.forget_alert_receiver(name);
            }
            keep
        });
        for (name, config) in receivers {
            match self.workers.get_mut(&name) {
                Some(h) if h.config == config => {}
                Some(h) => {
                    h.config = config.clone();
                    let _ = h.tx.send(Msg::Config(Box::new(config)));
                }
                None => {
                    let (tx, rx) = mpsc::channel();
                    let worker = Worker::new(name.clone(), config.clone(), self, rx);
                    let spawned = std::thread::Builder::new()
                        .name(format!("alert-{name}"))
                        .spawn(move || worker.run());
                    if let Err(e) = spawned {
                        tracing::error!(receiver = %name, error = %e, "cannot start the alert receiver's thread");
                        continue;
                    }
                    self.workers.insert(name, Handle { tx, config });
                }
            }
        }
    }
}

impl Handler<Nudge> for Dispatcher {
    type Result = ();
    fn handle(&mut self, _: Nudge, _: &mut Context<Self>) {
        for h in self.workers.values() {
            let _ = h.tx.send(Msg::Nudge);
        }
    }
}

impl Handler<SetReceivers> for Dispatcher {
    type Result = ();
    fn handle(&mut self, msg: SetReceivers, _: &mut Context<Self>) {
        self.set_receivers(msg.0);
    }
}

impl Handler<Firing> for Dispatcher {
    type Result = ();
    fn handle(&mut self, mut msg: Firing, _: &mut Context<Self>) {
        for (name, h) in &self.workers {
            if h.config.kind == ReceiverKind::Alertmanager {
                let set = msg.0.remove(name).unwrap_or_default();
                let _ = h.tx.send(Msg::Firing(set));
            }
        }
    }
}

/// One receiver's delivery loop, on its own thread.
struct Worker {
    name: String,
    config: ReceiverConfig,
    db_path: PathBuf,
    conn: Option<Connection>,
    metrics: Arc<Metrics>,
    rx: Receiver<Msg>,
    /// Consecutive failed attempts; 0 when up.
    failures: u32,
    down_since: Option<Instant>,
    /// No attempt before this (backoff).
    next_attempt: Instant,
    firing: Vec<Notification>,
    next_resend: Instant,
    next_purge: Instant,
    db_failing: bool,
}

impl Worker {
    fn new(name: String, config: ReceiverConfig, d: &Dispatcher, rx: Receiver<Msg>) -> Worker {
        let now = Instant::now();
        Worker {
            name,
            config,
            db_path: d.db_path.clone(),
            conn: None,
            metrics: d.metrics.clone(),
            rx,
            failures: 0,
            down_since: None,
            next_attempt: now,
            firing: Vec::new(),
            // The first firing set goes out at once: Alertmanager may have restarted too.
            next_resend: now,
            next_purge: now,
            db_failing: false,
        }
    }

    fn run(mut self) {
        self.metrics.update_alert_receiver(&self.name, |_| {});
        loop {
            let more = self.work();
            let now = Instant::now();
            // A backlog left after a full pass: look at the messages, then go on at once.
            let mut wake = if more { now } else { now + POLL };
            if self.failures > 0 {
                wake = wake.min(self.next_attempt.max(now));
            }
            if self.config.kind == ReceiverKind::Alertmanager && !self.firing.is_empty() {
                wake = wake.min(self.next_resend.max(now));
            }
            match self.rx.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(m) => self.handle(m),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // Coalesce what else is queued (nudges, superseded firing sets).
            loop {
                match self.rx.try_recv() {
                    Ok(m) => self.handle(m),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
        }
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Nudge => {}
            Msg::Config(c) => {
                self.config = *c;
                // A fixed URL is tried at once, not after the old backoff.
                self.next_attempt = Instant::now();
            }
            Msg::Firing(set) => self.firing = set,
        }
    }

    fn batch_size(&self) -> usize {
        match self.config.kind {
            ReceiverKind::Webhook => 1,
            ReceiverKind::Alertmanager => 64,
            ReceiverKind::Email => email::MAX_PER_MAIL,
        }
    }

    /// Runs `f` on the database (opened on first use, reopened after an error); None if it
    /// failed (logged).
    fn db<T>(
        &mut self,
        what: &str,
        f: impl FnOnce(&Connection, &str) -> rusqlite::Result<T>,
    ) -> Option<T> {
        if self.conn.is_none() {
            match outbox::open(&self.db_path) {
                Ok(c) => self.conn = Some(c),
                Err(e) => {
                    self.db_error("open", &e);
                    return None;
                }
            }
        }
        let result = f(self.conn.as_ref()?, &self.name);
        match result {
            Ok(v) => {
                self.db_failing = false;
                Some(v)
            }
            Err(e) => {
                self.db_error(what, &e);
                None
            }
        }
    }

    /// Logged once until the database works again; the connection is reopened.
    fn db_error(&mut self, what: &str, e: &rusqlite::Error) {
        if !self.db_failing {
            tracing::warn!(receiver = %self.name, db = %self.db_path.display(), error = %e,
                "alert outbox: {what} failed; retrying every {}s", POLL.as_secs());
        }
        self.db_failing = true;
        self.conn = None;
    }

    /// Delivers what is due: outbox batches, then the Alertmanager re-send. True if items
    /// are left after a full pass (the receiver is up and there is a backlog).
    fn work(&mut self) -> bool {
        let now = Instant::now();
        if now < self.next_attempt {
            return false;
        }
        let mut more = true;
        for _ in 0..BATCHES_PER_PASS {
            let limit = self.batch_size();
            let Some(items) = self.db("read", |c, name| outbox::pending(c, name, limit)) else {
                return false;
            };
            if items.is_empty() {
                more = false;
                break;
            }
            if !self.deliver_items(&items) {
                self.update_metrics();
                return false;
            }
        }
        if self.config.kind == ReceiverKind::Alertmanager
            && !self.firing.is_empty()
            && now >= self.next_resend
        {
            let result = alertmanager::deliver(
                self.config.url.as_deref().unwrap_or(""),
                self.config.timeout,
                self.config.resend_every,
                &self.firing,
                SystemTime::now(),
            );
            match result {
                Ok(()) => self.up(),
                // Refused: logged; the set is sent again at the next resend.
                Err(Failure::Refused(why)) => {
                    tracing::warn!(receiver = %self.name, error = %why, "alertmanager refused the firing alerts")
                }
                Err(Failure::Retry(why)) => {
                    self.down(&why);
                    self.update_metrics();
                    return false;
                }
            }
            self.next_resend = now + self.config.resend_every;
        }
        if now >= self.next_purge {
            self.db("purge", |c, name| outbox::purge(c, name, outbox::KEEP_DONE));
            self.next_purge = now + PURGE_EVERY;
        }
        self.update_metrics();
        more
    }

    /// One attempt at one batch; false if the receiver is down (stop for now).
    fn deliver_items(&mut self, items: &[outbox::Item]) -> bool {
        let ids: Vec<i64> = items.iter().map(|i| i.id).collect();
        let notes: Vec<Notification> = items.iter().map(|i| i.notification.clone()).collect();
        let c = &self.config;
        let result = match c.kind {
            ReceiverKind::Webhook => notes
                .iter()
                .try_for_each(|n| webhook::deliver(c.url.as_deref().unwrap_or(""), c.timeout, n)),
            ReceiverKind::Alertmanager => alertmanager::deliver(
                c.url.as_deref().unwrap_or(""),
                c.timeout,
                c.resend_every,
                &notes,
                SystemTime::now(),
            ),
            ReceiverKind::Email => email::deliver(
                c.smtp.as_deref().unwrap_or(""),
                c.from.as_deref().unwrap_or(""),
                &c.to,
                c.timeout,
                &notes,
                SystemTime::now(),
            ),
        };
        let n = ids.len() as u64;
        match result {
            Ok(()) => {
                self.up();
                // Marked after the receiver has it: a crash in between sends it again
                // after restart, with the same dedup key.
                if self
                    .db("mark delivered", |c, _| outbox::mark_delivered(c, &ids))
                    .is_none()
                {
                    return false;
                }
                self.metrics
                    .update_alert_receiver(&self.name, |s| s.ok += n);
                self.forget_resolved(&notes);
                true
            }
            Err(Failure::Refused(why)) => {
                // The receiver answered: it is up, these items are what it refuses.
                self.up();
                tracing::warn!(receiver = %self.name, items = n, error = %why,
                    "alert receiver refused notifications; dropped");
                if self
                    .db("mark dropped", |c, name| {
                        outbox::mark_dropped(c, name, &ids, &why)
                    })
                    .is_none()
                {
                    return false;
                }
                true
            }
            Err(Failure::Retry(why)) => {
                self.db("record failure", |c, _| {
                    outbox::record_failure(c, &ids, &why)
                });
                self.metrics
                    .update_alert_receiver(&self.name, |s| s.retry += n);
                self.down(&why);
                false
            }
        }
    }

    /// A resolved instance leaves the firing set at once, so a re-send before the next
    /// evaluation's [`Firing`] cannot fire it again in Alertmanager.
    fn forget_resolved(&mut self, delivered: &[Notification]) {
        for n in delivered.iter().filter(|n| n.state == AlertState::Resolved) {
            self.firing.retain(|f| f.alert != n.alert || f.key != n.key);
        }
    }

    fn down(&mut self, why: &str) {
        self.failures = self.failures.saturating_add(1);
        let wait = backoff(
            self.config.initial_backoff,
            self.config.max_backoff,
            self.failures,
        );
        self.next_attempt = Instant::now() + wait;
        if self.down_since.is_none() {
            self.down_since = Some(Instant::now());
            tracing::warn!(
                receiver = %self.name,
                kind = ?self.config.kind,
                target = %self.target(),
                error = %why,
                "alert receiver is down; notifications stay in the outbox, retrying every {:?} up to {:?}",
                self.config.initial_backoff,
                self.config.max_backoff,
            );
        }
        self.metrics
            .update_alert_receiver(&self.name, |s| s.down = true);
    }

    fn up(&mut self) {
        if let Some(since) = self.down_since.take() {
            tracing::info!(
                receiver = %self.name,
                target = %self.target(),
                failed_attempts = self.failures,
                down_for = ?since.elapsed(),
                "alert receiver is back"
            );
        }
        self.failures = 0;
        self.metrics
            .update_alert_receiver(&self.name, |s| s.down = false);
    }

    fn target(&self) -> String {
        match self.config.kind {
            ReceiverKind::Email => self.config.smtp.clone().unwrap_or_default(),
            _ => self.config.url.clone().unwrap_or_default(),
        }
    }

    fn update_metrics(&mut self) {
        let counts = self.db("count", |c, name| {
            Ok((outbox::depth(c, name)?, outbox::dropped_total(c, name)?))
        });
        if let Some((depth, dropped)) = counts {
            self.metrics.update_alert_receiver(&self.name, |s| {
                s.depth = depth as u64;
                s.dropped = dropped;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = Duration::from_secs;
        let waits: Vec<Duration> = (1..=7).map(|f| backoff(s(1), s(30), f)).collect();
        assert_eq!(waits, [s(1), s(2), s(4), s(8), s(16), s(30), s(30)]);
        assert_eq!(backoff(s(1), s(300), u32::MAX), s(300));
        assert_eq!(backoff(s(5), s(5), 1), s(5));
    }
}

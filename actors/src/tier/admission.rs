//! What the link listener lets in before anything is known about a peer (there is no
//! authentication yet): how many sessions at once, overall and per peer address; how long
//! a peer may take to say hello; how large a hello or request may be, compressed and
//! decompressed; how many request bytes a session may send per minute. Whatever a peer
//! sends, a node holds at most `max_parent_sessions` connections and a few KiB for each.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::link::LinkError;

use super::config::LinkConfig;

/// The listener's limits (`[link]` keys of the same names).
#[derive(Debug, Clone)]
pub struct ListenLimits {
    pub max_parent_sessions: usize,
    pub max_sessions_per_address: usize,
    pub hello_timeout: Duration,
    pub max_request_frame_bytes: usize,
    pub max_request_compression_ratio: u64,
    pub max_request_bytes_per_minute: u64,
}

impl Default for ListenLimits {
    fn default() -> Self {
        ListenLimits::from(&LinkConfig::default())
    }
}

impl From<&LinkConfig> for ListenLimits {
    fn from(c: &LinkConfig) -> Self {
        ListenLimits {
            max_parent_sessions: c.max_parent_sessions,
            max_sessions_per_address: c.max_sessions_per_address,
            hello_timeout: c.hello_timeout,
            max_request_frame_bytes: c.max_request_frame_bytes,
            max_request_compression_ratio: c.max_request_compression_ratio,
            max_request_bytes_per_minute: c.max_request_bytes_per_minute,
        }
    }
}

impl ListenLimits {
    /// Names the key behind a frame refused at the listener.
    pub fn explain(&self, e: LinkError) -> LinkError {
        match e {
            LinkError::FrameTooLarge { size, limit } => LinkError::Limit(format!(
                "a hello or request frame of {size} bytes exceeds {limit} bytes ([link] max_request_frame_bytes)"
            )),
            other => other,
        }
    }
}

/// Counts the sessions of one listener; [`Gate::admit`] hands out a [`Permit`] per
/// connection, returned when the session ends.
///
/// At `max_parent_sessions`, a new connection takes the place of the oldest one that has not
/// said hello yet (that one is told to close): idle connections cannot lock real parents
/// out, since a parent says hello within a round trip of connecting. Only when every
/// session has said hello is the newcomer refused. Past `max_sessions_per_address` the
/// newcomer is refused.
#[derive(Debug)]
pub struct Gate {
    max_total: usize,
    max_per_host: usize,
    open: Arc<Mutex<Open>>,
}

#[derive(Debug, Default)]
struct Open {
    next: u64,
    live: HashMap<u64, Entry>,
    per_host: HashMap<String, usize>,
    /// Sessions before hello, oldest (smallest id) first.
    waiting: BTreeSet<u64>,
}

#[derive(Debug)]
struct Entry {
    host: String,
    /// Tells a session before hello to close; None once it said hello.
    evict: Option<oneshot::Sender<()>>,
}

impl Open {
    fn forget(&mut self, id: u64) -> Option<Entry> {
        self.waiting.remove(&id);
        let entry = self.live.remove(&id)?;
        if let Some(n) = self.per_host.get_mut(&entry.host) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_host.remove(&entry.host);
            }
        }
        Some(entry)
    }
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Permit {
    id: u64,
    open: Arc<Mutex<Open>>,
    /// Resolves when the gate closes this session to make room (before hello only).
    pub evicted: oneshot::Receiver<()>,
}

impl Gate {
    pub fn new(limits: &ListenLimits) -> Gate {
        Gate {
            max_total: limits.max_parent_sessions,
            max_per_host: limits.max_sessions_per_address,
            open: Arc::default(),
        }
    }

    /// A permit for a connection from `host`, or why it is refused (naming the key).
    pub fn admit(&self, host: &str) -> Result<Permit, String> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.per_host.get(host).copied().unwrap_or(0);
        if n >= self.max_per_host {
            return Err(format!(
                "{host} already has {n} sessions ([link] max_sessions_per_address)"
            ));
        }
        if open.live.len() >= self.max_total {
            let Some(oldest) = open.waiting.first().copied() else {
                return Err(format!(
                    "this node already serves {} parent sessions ([link] max_parent_sessions)",
                    self.max_total
                ));
            };
            if let Some(Entry {
                evict: Some(tx), ..
            }) = open.forget(oldest)
            {
                let _ = tx.send(());
            }
        }
        open.next += 1;
        let id = open.next;
        let (tx, rx) = oneshot::channel();
        open.live.insert(
            id,
            Entry {
                host: host.to_string(),
                evict: Some(tx),
            },
        );
        open.waiting.insert(id);
        *open.per_host.entry(host.to_string()).or_default() += 1;
        Ok(Permit {
            id,
            open: self.open.clone(),
            evicted: rx,
        })
    }

    /// Sessions open now.
    pub fn open(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .live
            .len()
    }
}

impl Permit {
    /// The session said hello: it keeps its place from now on.
    pub fn greeted(&self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.waiting.remove(&self.id);
        if let Some(e) = open.live.get_mut(&self.id) {
            e.evict = None;
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.forget(self.id);
    }
}

/// At most one log line per `every` for a repeated event; the others are counted and
/// reported with the next line.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(every: Duration) -> LogLimiter {
        LogLimiter {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// Some(events suppressed since the last line) when a line may be logged now.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Decompressed request bytes a session may take per minute: a parent sends a request when
/// its wanted set changes, a few KiB at a time; one sending them in a loop would keep a
/// compute thread decompressing and the request book busy.
#[derive(Debug)]
pub struct RequestBudget {
    per_minute: u64,
    window_start: Instant,
    used: u64,
}

impl RequestBudget {
    pub fn new(per_minute: u64, now: Instant) -> RequestBudget {
        RequestBudget {
            per_minute,
            window_start: now,
            used: 0,
        }
    }

    /// Counts `bytes` decompressed; an error once the minute's budget is spent.
    pub fn spend(&mut self, bytes: usize, now: Instant) -> Result<(), LinkError> {
        if now.duration_since(self.window_start) >= Duration::from_secs(60) {
            self.window_start = now;
            self.used = 0;
        }
        self.used = self.used.saturating_add(bytes as u64);
        if self.used > self.per_minute {
            return Err(LinkError::Limit(format!(
                "the parent sent more than {} bytes of requests within a minute ([link] max_request_bytes_per_minute)",
                self.per_minute
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_host: usize) -> ListenLimits {
        ListenLimits {
            max_parent_sessions: total,
            max_sessions_per_address: per_host,
            ..ListenLimits::default()
        }
    }

    #[test]
    fn gate_caps_per_address_and_frees_on_drop() {
        let gate = Gate::new(&limits(3, 2));
        let a1 = gate.admit("10.0.0.1").expect("first");
        let _a2 = gate.admit("10.0.0.1").expect("second");
        let e = gate.admit("10.0.0.1").expect_err("third from one address");
        assert!(e.contains("max_sessions_per_address"), "{e}");
        drop(a1);
        assert_eq!(gate.open(), 1);
        let _a3 = gate.admit("10.0.0.1").expect("a freed place");
    }

    #[test]
    fn at_the_cap_the_oldest_before_hello_makes_room() {
        let gate = Gate::new(&limits(3, 3));
        let mut idle = gate.admit("10.0.0.1").expect("idle");
        let parent = gate.admit("10.0.0.2").expect("parent");
        parent.greeted();
        let mut idle2 = gate.admit("10.0.0.3").expect("idle 2");
        // Full: the newcomer takes the place of the oldest idle one, which is told so.
        let newcomer = gate.admit("10.0.0.4").expect("room made");
        assert_eq!(idle.evicted.try_recv(), Ok(()));
        assert!(idle2.evicted.try_recv().is_err(), "only the oldest goes");
        assert_eq!(gate.open(), 3);
        // Its permit, dropped later, frees nothing twice.
        drop(idle);
        assert_eq!(gate.open(), 3);
        newcomer.greeted();
        let late = gate.admit("10.0.0.5").expect("idle 2 makes room");
        assert_eq!(idle2.evicted.try_recv(), Ok(()));
        drop(idle2);
        late.greeted();
        // Everyone said hello: now the newcomer is refused.
        let e = gate.admit("10.0.0.6").expect_err("full of parents");
        assert!(e.contains("max_parent_sessions"), "{e}");
        drop(parent);
        assert_eq!(gate.open(), 2);
        gate.admit("10.0.0.6").expect("a freed place");
    }

    #[test]
    fn log_limiter_reports_what_it_suppressed() {
        let mut l = LogLimiter::new(Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(l.allow(t), Some(0));
        assert_eq!(l.allow(t + Duration::from_secs(1)), None);
        assert_eq!(l.allow(t + Duration::from_secs(2)), None);
        assert_eq!(l.allow(t + Duration::from_secs(11)), Some(2));
    }

    #[test]
    fn request_budget_refills_each_minute() {
        let t = Instant::now();
        let mut b = RequestBudget::new(1000, t);
        b.spend(600, t).expect("within");
        let e = b.spend(600, t + Duration::from_secs(1)).expect_err("over");
        assert!(
            e.to_string().contains("max_request_bytes_per_minute"),
            "{e}"
        );
        b.spend(600, t + Duration::from_secs(61))
            .expect("next minute");
    }

    #[test]
    fn frame_too_large_names_the_key() {
        let e = ListenLimits::default().explain(LinkError::FrameTooLarge {
            size: 900 << 20,
            limit: 64 << 10,
        });
        assert!(e.to_string().contains("max_request_frame_bytes"), "{e}");
    }
}

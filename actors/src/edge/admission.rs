//! Who holds a connection to the publish socket: the connection limit, and which
//! connection makes room for a newcomer when it is full.
//!
//! Idle connections must not lock real publishers out: when every slot is taken, a new
//! connection closes the oldest one that never said hello, else the one idle longest if it
//! has been idle for at least `min_idle`; only when every connection is a publisher that
//! spoke recently is the newcomer refused.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use query_client::protocol::PublishError;
use tokio::sync::Notify;

struct Conn {
    opened: Instant,
    /// When the last complete line arrived.
    active: Instant,
    hello: bool,
    close: Arc<Notify>,
}

/// The connections of one agent (Unix socket and TCP together).
pub struct Connections {
    max: usize,
    min_idle: Duration,
    inner: Mutex<(u64, BTreeMap<u64, Conn>)>,
}

/// One admitted connection; dropping it frees the slot.
pub struct Ticket {
    id: u64,
    conns: Arc<Connections>,
    /// Notified when the connection is closed to make room for another.
    pub close: Arc<Notify>,
}

/// Why a connection was closed for a newcomer (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evicted {
    None,
    NoHello,
    Idle,
}

impl Connections {
    pub fn new(max: usize, min_idle: Duration) -> Arc<Self> {
        Arc::new(Connections {
            max,
            min_idle,
            inner: Mutex::new((0, BTreeMap::new())),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, BTreeMap<u64, Conn>)> {
        // Every critical section leaves the map whole.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection, closing another to make room if the agent is full.
    pub fn admit(self: &Arc<Self>, now: Instant) -> Result<(Ticket, Evicted), PublishError> {
        let mut guard = self.lock();
        let (next, conns) = &mut *guard;
        let mut evicted = Evicted::None;
        if conns.len() >= self.max {
            let silent = conns
                .iter()
                .filter(|(_, c)| !c.hello)
                .min_by_key(|(_, c)| c.opened)
                .map(|(id, _)| (*id, Evicted::NoHello));
            let idle = || {
                conns
                    .iter()
                    .filter(|(_, c)| now.saturating_duration_since(c.active) >= self.min_idle)
                    .min_by_key(|(_, c)| c.active)
                    .map(|(id, _)| (*id, Evicted::Idle))
            };
            match silent.or_else(idle) {
                Some((id, why)) => {
                    if let Some(c) = conns.remove(&id) {
                        c.close.notify_one();
                    }
                    evicted = why;
                }
                None => {
                    return Err(PublishError::new(format!(
                        "too many publishers: this agent accepts {} connections \
                         ([edge] max_publishers) and all are publishing",
                        self.max
                    )))
                }
            }
        }
        *next += 1;
        let close = Arc::new(Notify::new());
        conns.insert(
            *next,
            Conn {
                opened: now,
                active: now,
                hello: false,
                close: close.clone(),
            },
        );
        Ok((
            Ticket {
                id: *next,
                conns: self.clone(),
                close,
            },
            evicted,
        ))
    }

    /// Connections held now.
    pub fn len(&self) -> usize {
        self.lock().1.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Ticket {
    /// The connection said a valid hello: no longer first in line to be closed.
    pub fn said_hello(&self) {
        if let Some(c) = self.conns.lock().1.get_mut(&self.id) {
            c.hello = true;
        }
    }

    /// A complete line arrived.
    pub fn active(&self, now: Instant) {
        if let Some(c) = self.conns.lock().1.get_mut(&self.id) {
            c.active = now;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.conns.lock().1.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_then_idle_connections_make_room() {
        let conns = Connections::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let (a, _) = conns.admit(t0).expect("a");
        let (b, _) = conns.admit(t0).expect("b");
        let (c, _) = conns.admit(t0).expect("c");
        a.said_hello();
        b.said_hello();
        c.said_hello();
        a.active(t0 + Duration::from_secs(5));
        b.active(t0 + Duration::from_secs(6));
        c.active(t0 + Duration::from_secs(7));
        // All three spoke within min_idle: the newcomer is refused.
        let e = conns
            .admit(t0 + Duration::from_secs(8))
            .err()
            .expect("full");
        assert!(e.message.contains("max_publishers"), "{e}");
        // Later, the idlest (a) makes room.
        let (d, why) = conns.admit(t0 + Duration::from_secs(16)).expect("d");
        assert_eq!(why, Evicted::Idle);
        assert_eq!(conns.len(), 3);
        // A connection without hello goes first, whatever the others' idleness.
        drop(d);
        let (_silent, _) = conns.admit(t0 + Duration::from_secs(17)).expect("silent");
        let (_e, why) = conns.admit(t0 + Duration::from_secs(40)).expect("e");
        assert_eq!(why, Evicted::NoHello);
        drop(b);
        drop(c);
        assert_eq!(conns.len(), 1);
    }

    #[tokio::test]
    async fn the_evicted_connection_is_told() {
        let conns = Connections::new(1, Duration::from_secs(10));
        let (a, _) = conns.admit(Instant::now()).expect("a");
        let (_b, why) = conns.admit(Instant::now()).expect("b");
        assert_eq!(why, Evicted::NoHello);
        tokio::time::timeout(Duration::from_secs(5), a.close.notified())
            .await
            .expect("notified");
    }
}

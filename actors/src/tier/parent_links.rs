//! Serving parents: the address a proxy, TLA or edge listens on for the tier above. Each
//! parent gets its own session: hello, then the parent's request (forwarded to the
//! [`RequestBook`]), then every generation this node seals, restricted to the requested
//! tables, as a full copy first and diffs after (one encoder per session: each parent's
//! mirror is its own). Sessions run on the compute pool; a panicking one is counted and
//! closed, and the parent reconnects. Before hello nothing is known about a peer: what
//! the listener lets in (session caps, hello deadline, small frames) is [`super::admission`].
//! With `[link.tls]` a session starts with the TLS handshake, within the hello deadline: a
//! peer without a certificate a CA of `ca` signed never gets to send a frame.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::io::{AsyncWriteExt, ReadHalf};
use tokio::sync::watch;

use super::admission::{Gate, ListenLimits, LogLimiter, Permit, RequestBudget};
use super::messages::{ParentGone, ParentRequest};
use super::requests::RequestBook;
use super::transport::{BoxStream, Listener};
use crate::generation::Generation;
use crate::link::diff::{LinkEncoder, TableKeys};
use crate::link::frame::{
    decode_small_frame, encode_frame, encode_generation, read_frame, write_frame, Codec,
};
use crate::link::wire::{Advert, ToChild, ToParent, LINK_VERSION};
use crate::link::LinkError;
use crate::metrics::Metrics;
use crate::node::supervisor::{panic_message, State};
use crate::sql::{AbortOnDrop, SqlPool};
use crate::tls::{describe_handshake, HandshakeFailure};

/// What this node tells parents about itself.
#[derive(Clone)]
pub struct ServeParents {
    pub node: String,
    pub role: String,
    pub codec: Codec,
    /// What the listener lets in (`[link]` keys).
    pub limits: ListenLimits,
    pub generations: watch::Receiver<Option<Arc<Generation>>>,
    /// Where parents' requests go; None for a simulated machine, which has every table.
    pub book: Option<Addr<RequestBook>>,
    pub metrics: Arc<Metrics>,
    pub sessions: Arc<ParentSessions>,
    /// `[link.tls]`: parents must complete a mutual TLS handshake first (TCP only).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Tables' keys, so changed parts travel as patches by key.
    pub keys: TableKeys,
}

/// One parent as this node sees it (for `query_links` and `/metrics`).
#[derive(Debug, Clone, Default)]
pub struct ParentState {
    pub peer: String,
    pub parent: String,
    pub tables: BTreeSet<String>,
    pub frames: u64,
    pub bytes_out: u64,
    pub last_frame_bytes: u64,
    pub last_full_frame_bytes: u64,
}

#[derive(Default)]
pub struct ParentSessions {
    next: AtomicU64,
    live: Mutex<BTreeMap<u64, ParentState>>,
    /// The node's supervisor, told of session panics (`parent_sessions` in `query_actors`),
    /// and its fault hook (makes one session panic).
    supervision: std::sync::OnceLock<(
        crate::node::supervisor::Supervisor,
        Arc<tokio::sync::Notify>,
    )>,
}

/// The part name parent sessions report under.
pub const PARENT_SESSIONS: &str = "parent_sessions";

impl ParentSessions {
    /// Reports session panics to `supervisor` (each session ends alone; its parent dials
    /// again).
    pub fn supervised(&self, supervisor: &crate::node::supervisor::Supervisor) {
        let fault = supervisor.register(PARENT_SESSIONS, crate::node::supervisor::Kind::Session);
        let _ = self.supervision.set((supervisor.clone(), fault));
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut ParentState)) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        f(live.entry(id).or_default());
    }

    fn remove(&self, id: u64) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    pub fn snapshot(&self) -> Vec<ParentState> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// How often a repeated listener event (a refused connection, a failed accept) is logged.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The pause after a failed accept (out of descriptors, say): long enough not to spin, short
/// enough that parents get in again soon after descriptors free up.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Accepts parents until an in-process listener's registry entry is gone. A failed accept
/// (EMFILE, ENFILE, ...) is counted, logged at most every [`LOG_EVERY`] and retried after
/// [`ACCEPT_RETRY`]: it never ends the loop. Connections past `max_parent_sessions` or
/// `max_sessions_per_address` are told why and closed at once.
pub async fn accept_parents(mut listener: Listener, serve: ServeParents, pool: SqlPool) {
    let gate = Gate::new(&serve.limits);
    let mut refused_log = LogLimiter::new(LOG_EVERY);
    let mut error_log = LogLimiter::new(LOG_EVERY);
    // Sessions ending in an error: a flood of idle or garbage connections must not flood
    // the log.
    let error_sessions = Arc::new(Mutex::new(LogLimiter::new(LOG_EVERY)));
    // Failed handshakes, one limiter per reason: each kind of refusal is logged (with the
    // peer) at least every LOG_EVERY, and a flood of one kind does not hide another.
    let handshake_log: Arc<Mutex<HashMap<HandshakeFailure, LogLimiter>>> = Arc::default();
    // Parents leaving: when a whole tier stops (a shutdown, a partition) hundreds leave at
    // once, and one line with a count says it.
    let departures = Arc::new(Mutex::new(LogLimiter::new(LOG_EVERY)));
    loop {
        match listener.accept().await {
            Ok(Some(conn)) => {
                let permit = match gate.admit(&conn.host) {
                    Ok(p) => p,
                    Err(why) => {
                        serve.metrics.link_refused.fetch_add(1, Ordering::Relaxed);
                        if let Some(suppressed) = refused_log.allow(Instant::now()) {
                            tracing::warn!(
                                peer = conn.peer,
                                suppressed,
                                "parent connection refused: {why}"
                            );
                        }
                        refuse(conn.stream, why).await;
                        continue;
                    }
                };
                let peer = conn.peer;
                let id = serve.sessions.next.fetch_add(1, Ordering::Relaxed) + 1;
                let s = serve.clone();
                let run = session(conn.stream, peer.clone(), id, s, permit);
                let handle = match serve.sessions.supervision.get() {
                    Some((_, fault)) => pool.spawn(crate::node::supervisor::with_fault(
                        PARENT_SESSIONS.to_string(),
                        fault.clone(),
                        run,
                    )),
                    None => pool.spawn(run),
                };
                let serve = serve.clone();
                let error_sessions = error_sessions.clone();
                let handshake_log = handshake_log.clone();
                let departures = departures.clone();
                pool.spawn(async move {
                    let outcome = handle.await;
                    serve.sessions.remove(id);
                    if let Some(book) = &serve.book {
                        book.do_send(ParentGone(id));
                    }
                    match outcome {
                        Ok(Ok(Served::Probe)) => tracing::debug!(peer, "probe answered"),
                        Ok(Ok(Served::Link)) if peer.starts_with("mem-") => {
                            tracing::debug!(peer, "parent disconnected")
                        }
                        Ok(Ok(Served::Link)) => {
                            let allow = departures
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .allow(Instant::now());
                            match allow {
                                Some(suppressed) => tracing::info!(
                                    peer,
                                    similar_since_last = suppressed,
                                    "parent disconnected"
                                ),
                                None => tracing::debug!(peer, "parent disconnected"),
                            }
                        }
                        Ok(Err(LinkError::Handshake { kind, message })) => {
                            serve.metrics.record_link_tls_refused(kind.label());
                            let allow = handshake_log
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .entry(kind)
                                .or_insert_with(|| LogLimiter::new(LOG_EVERY))
                                .allow(Instant::now());
                            if let Some(suppressed) = allow {
                                tracing::warn!(
                                    peer,
                                    reason = kind.label(),
                                    suppressed,
                                    "TLS handshake refused: {message}"
                                );
                            }
                        }
                        Ok(Err(e)) => {
                            if matches!(e, LinkError::Limit(_) | LinkError::Inflation { .. }) {
                                serve
                                    .metrics
                                    .link_limit_errors
                                    .fetch_add(1, Ordering::Relaxed);
                            }
                            let allow = error_sessions
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .allow(Instant::now());
                            if let Some(suppressed) = allow {
                                tracing::warn!(peer, suppressed, error = %e, "parent link ended");
                            }
                        }
                        Err(e) => {
                            let why = match e.try_into_panic() {
                                Ok(p) => format!("panicked: {}", panic_message(&*p)),
                                Err(e) => format!("cancelled: {e}"),
                            };
                            match serve.sessions.supervision.get() {
                                Some((sup, _)) => sup.record_restart(
                                    PARENT_SESSIONS,
                                    &format!("{why} (parent {peer}; it reconnects)"),
                                    State::Running,
                                    Duration::ZERO,
                                ),
                                None => {
                                    serve.metrics.actor_restarts.fetch_add(1, Ordering::Relaxed);
                                    tracing::error!(
                                        peer,
                                        error = why,
                                        "parent session ended; the parent will reconnect"
                                    );
                                }
                            }
                        }
                    }
                });
            }
            Ok(None) => return,
            Err(e) => {
                serve
                    .metrics
                    .link_accept_errors
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = error_log.allow(Instant::now()) {
                    tracing::error!(error = %e, suppressed, "accepting a parent failed; retrying (HTTP and the publish socket are separate listeners)");
                }
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

/// Tells a connection past the caps why (a real parent logs it and backs off) and closes
/// it. A fresh socket's send buffer takes the small frame at once; the timeout only guards
/// against the unexpected, since this runs in the accept loop.
async fn refuse(mut stream: BoxStream, message: String) {
    if let Ok(frame) = encode_frame(&ToParent::Refused { message }, Codec::None) {
        let _ = tokio::time::timeout(REFUSE_WRITE, write_frame(&mut stream, &frame)).await;
    }
}

/// How long the accept loop spends telling a refused connection why.
const REFUSE_WRITE: Duration = Duration::from_millis(20);

/// What a connection was.
enum Served {
    /// A parent's link, now closed.
    Link,
    /// A probe, answered.
    Probe,
}

async fn session(
    stream: BoxStream,
    peer: String,
    id: u64,
    serve: ServeParents,
    mut permit: Permit,
) -> Result<Served, LinkError> {
    let limits = &serve.limits;
    // The handshake and the hello together within `hello_timeout` of connecting.
    let deadline = tokio::time::Instant::now() + limits.hello_timeout;
    let evicted = || {
        LinkError::Limit(
            "closed before hello to make room for a newer connection ([link] max_parent_sessions)"
                .into(),
        )
    };
    let stream = match &serve.tls {
        None => stream,
        Some(config) => {
            let accept = tokio_rustls::TlsAcceptor::from(config.clone()).accept(stream);
            tokio::select! {
                r = tokio::time::timeout_at(deadline, accept) => match r {
                    Ok(Ok(s)) => {
                        let who = s.get_ref().1.peer_certificates().and_then(crate::tls::peer_name);
                        tracing::debug!(peer, client = who.as_deref().unwrap_or("?"), "TLS handshake done");
                        Box::pin(s) as BoxStream
                    }
                    Ok(Err(e)) => {
                        let (kind, message) = describe_handshake(&e);
                        return Err(LinkError::Handshake { kind, message });
                    }
                    Err(_) => return Err(LinkError::Handshake {
                        kind: HandshakeFailure::Timeout,
                        message: format!(
                            "no TLS handshake within {:?} of connecting ([link] hello_timeout)",
                            limits.hello_timeout
                        ),
                    }),
                },
                Ok(()) = &mut permit.evicted => return Err(evicted()),
            }
        }
    };
    let (mut rd, mut wr) = tokio::io::split(stream);
    // The whole hello, however slowly it trickles in, within the deadline; and small.
    let first = async {
        match read_frame(&mut rd, limits.max_request_frame_bytes).await {
            Ok(Some(body)) => decode_request(&body, limits).map(|(m, _)| Some(m)),
            Ok(None) => Ok(None),
            Err(e) => Err(limits.explain(e)),
        }
    };
    let first = tokio::select! {
        r = tokio::time::timeout_at(deadline, first) => r.map_err(|_| {
            LinkError::Limit(format!(
                "no hello within {:?} of connecting ([link] hello_timeout)",
                limits.hello_timeout
            ))
        })??,
        Ok(()) = &mut permit.evicted => return Err(evicted()),
    };
    permit.greeted();
    let parent = match first {
        Some(message) => match message {
            ToChild::Hello { parent, version } if version == LINK_VERSION => parent,
            ToChild::Probe { version } if version == LINK_VERSION => {
                let latest = serve.generations.borrow().clone();
                let advert = Advert {
                    node: serve.node.clone(),
                    role: serve.role.clone(),
                    version: LINK_VERSION,
                    clusters: latest.as_ref().map_or(0, |g| g.clusters),
                    machines: latest.as_ref().map_or(0, |g| g.machines),
                    round: latest.as_ref().map_or(0, |g| g.round),
                };
                write_frame(
                    &mut wr,
                    &encode_frame(&ToParent::Advert(advert), Codec::None)?,
                )
                .await?;
                wr.flush().await.map_err(LinkError::from)?;
                return Ok(Served::Probe);
            }
            ToChild::Hello { version, .. } | ToChild::Probe { version } => {
                let message = format!(
                    "link version {version} is not supported; this node speaks {LINK_VERSION}"
                );
                let refused = encode_frame(&ToParent::Refused { message }, Codec::None)?;
                write_frame(&mut wr, &refused).await?;
                return Err(LinkError::VersionMismatch {
                    ours: LINK_VERSION,
                    theirs: version,
                });
            }
            ToChild::Request { .. } => {
                return Err(LinkError::Protocol("a request before hello".into()))
            }
            ToChild::Defer { .. } | ToChild::Seal { .. } => {
                return Err(LinkError::Protocol(
                    "deferred tables are for a TLA child (queryd tla-child), not this node".into(),
                ))
            }
        },
        None => return Ok(Served::Link),
    };
    let hello = ToParent::Hello {
        node: serve.node.clone(),
        role: serve.role.clone(),
        version: LINK_VERSION,
    };
    write_frame(&mut wr, &encode_frame(&hello, Codec::None)?).await?;
    wr.flush().await.map_err(LinkError::from)?;
    if peer.starts_with("mem-") {
        tracing::debug!(peer, parent, "parent connected");
    } else {
        tracing::info!(peer, parent, "parent connected");
    }
    serve.sessions.update(id, |s| {
        s.peer = peer.clone();
        s.parent = parent.clone();
    });

    // The parent's requests arrive on their own task (a frame read is never interrupted).
    let (req_tx, mut requested) = watch::channel::<Option<BTreeSet<String>>>(None);
    let reader = tokio::spawn(read_requests(rd, id, serve.clone(), req_tx));
    let _reader = AbortOnDrop(reader);

    let mut generations = serve.generations.clone();
    let mut encoder = LinkEncoder::with_keys(serve.keys.clone());
    let mut last_sent: Option<u64> = None;
    loop {
        let wanted = requested.borrow_and_update().clone();
        let generation = generations.borrow_and_update().clone();
        if let (Some(wanted), Some(g)) = (wanted, generation) {
            if last_sent != Some(g.id) {
                let started = std::time::Instant::now();
                let frame = encoder.encode(&g, &wanted, g.machines, g.clusters)?;
                let full = frame.is_full_copy();
                let planned = started.elapsed();
                let bytes = encode_generation(frame, serve.codec)?;
                let encoded = started.elapsed();
                write_frame(&mut wr, &bytes).await?;
                wr.flush().await.map_err(LinkError::from)?;
                tracing::debug!(
                    parent,
                    id = g.id,
                    bytes = bytes.len(),
                    full,
                    plan_ms = planned.as_millis() as u64,
                    encode_ms = (encoded - planned).as_millis() as u64,
                    write_ms = (started.elapsed() - encoded).as_millis() as u64,
                    "generation to parent"
                );
                last_sent = Some(g.id);
                let n = bytes.len() as u64;
                serve.sessions.update(id, |s| {
                    s.frames += 1;
                    s.bytes_out += n;
                    s.last_frame_bytes = n;
                    if full {
                        s.last_full_frame_bytes = n;
                    }
                });
            }
        }
        tokio::select! {
            r = generations.changed() => if r.is_err() { return Ok(Served::Link) },
            r = requested.changed() => if r.is_err() { return Ok(Served::Link) },
        }
    }
}

/// Reads the parent's requests until it closes; the request book learns each one.
async fn read_requests(
    mut rd: ReadHalf<BoxStream>,
    id: u64,
    serve: ServeParents,
    tx: watch::Sender<Option<BTreeSet<String>>>,
) -> Result<(), LinkError> {
    let limits = &serve.limits;
    let mut budget = RequestBudget::new(limits.max_request_bytes_per_minute, Instant::now());
    while let Some(body) = read_frame(&mut rd, limits.max_request_frame_bytes)
        .await
        .map_err(|e| limits.explain(e))?
    {
        let (message, bytes) = decode_request(&body, limits)?;
        budget.spend(bytes, Instant::now())?;
        match message {
            ToChild::Request { tables } => {
                let tables: BTreeSet<String> = tables.into_iter().collect();
                serve.sessions.update(id, |s| s.tables = tables.clone());
                if let Some(book) = &serve.book {
                    book.do_send(ParentRequest {
                        session: id,
                        tables: tables.clone(),
                    });
                }
                // A table the request adds is sent from the next generation that holds it.
                let _ = tx.send(Some(tables));
            }
            ToChild::Hello { .. } | ToChild::Probe { .. } => {
                return Err(LinkError::Protocol("a second hello".into()))
            }
            ToChild::Defer { .. } | ToChild::Seal { .. } => {
                return Err(LinkError::Protocol(
                    "deferred tables are for a TLA child (queryd tla-child), not this node".into(),
                ))
            }
        }
    }
    Ok(())
}

/// A parent's frame: small, and inflating at most `max_request_compression_ratio` times.
fn decode_request(body: &[u8], limits: &ListenLimits) -> Result<(ToChild, usize), LinkError> {
    decode_small_frame(
        body,
        limits.max_request_frame_bytes,
        limits.max_request_compression_ratio,
    )
    .map_err(|e| limits.explain(e))
}

#[cfg(test)]
mod tests;

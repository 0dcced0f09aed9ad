//! Serving parents: the address a proxy, TLA or edge listens on for the tier above. Each
//! parent gets its own session: hello, then the parent's request (forwarded to the
//! [`RequestBook`]), then every generation this node seals, restricted to the requested
//! tables, as a full copy first and diffs after (one encoder per session: each parent's
//! mirror is its own). Sessions run on the compute pool; a panicking one is counted and
//! closed, and the parent reconnects.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use tokio::io::{AsyncWriteExt, ReadHalf};
use tokio::sync::watch;

use super::messages::{ParentGone, ParentRequest};
use super::requests::RequestBook;
use super::transport::{BoxStream, Listener};
use crate::generation::Generation;
use crate::link::diff::LinkEncoder;
use crate::link::frame::{decode_frame, encode_frame, read_frame, write_frame, Codec};
use crate::link::wire::{Advert, ToChild, ToParent, LINK_VERSION};
use crate::link::LinkError;
use crate::metrics::Metrics;
use crate::sql::{AbortOnDrop, SqlPool};

/// What this node tells parents about itself.
#[derive(Clone)]
pub struct ServeParents {
    pub node: String,
    pub role: String,
    pub codec: Codec,
    pub max_frame_bytes: usize,
    pub generations: watch::Receiver<Option<Arc<Generation>>>,
    /// Where parents' requests go; None for a simulated machine, which has every table.
    pub book: Option<Addr<RequestBook>>,
    pub metrics: Arc<Metrics>,
    pub sessions: Arc<ParentSessions>,
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
}

impl ParentSessions {
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

/// Accepts parents until the listener fails; then the error is logged and the node keeps
/// serving SQL (a parent-less node is degraded, not dead).
pub async fn accept_parents(mut listener: Listener, serve: ServeParents, pool: SqlPool) {
    loop {
        match listener.accept().await {
            Ok(Some((stream, peer))) => {
                let id = serve.sessions.next.fetch_add(1, Ordering::Relaxed) + 1;
                let s = serve.clone();
                let handle = pool.spawn(session(stream, peer.clone(), id, s));
                let serve = serve.clone();
                pool.spawn(async move {
                    let outcome = handle.await;
                    serve.sessions.remove(id);
                    if let Some(book) = &serve.book {
                        book.do_send(ParentGone(id));
                    }
                    match outcome {
                        Ok(Ok(Served::Probe)) => tracing::debug!(peer, "probe answered"),
                        Ok(Ok(Served::Link)) => tracing::info!(peer, "parent disconnected"),
                        Ok(Err(e)) => tracing::warn!(peer, error = %e, "parent link ended"),
                        Err(e) => {
                            serve.metrics.actor_restarts.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(peer, error = %e, "parent session panicked; the parent will reconnect");
                        }
                    }
                });
            }
            Ok(None) => return,
            Err(e) => {
                // Out of descriptors and the like: wait rather than spin.
                tracing::error!(error = %e, "accepting a parent failed");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
}

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
) -> Result<Served, LinkError> {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let max = serve.max_frame_bytes;
    let parent = match read_frame(&mut rd, max).await? {
        Some(body) => match decode_frame::<ToChild>(&body, max)? {
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
    let reader = tokio::spawn(read_requests(rd, max, id, serve.clone(), req_tx));
    let _reader = AbortOnDrop(reader);

    let mut generations = serve.generations.clone();
    let mut encoder = LinkEncoder::new();
    let mut last_sent: Option<u64> = None;
    loop {
        let wanted = requested.borrow_and_update().clone();
        let generation = generations.borrow_and_update().clone();
        if let (Some(wanted), Some(g)) = (wanted, generation) {
            if last_sent != Some(g.id) {
                let frame = encoder.encode(&g, &wanted, g.machines, g.clusters)?;
                let full = frame.is_full_copy();
                let bytes = encode_frame(&ToParent::Generation(frame), serve.codec)?;
                write_frame(&mut wr, &bytes).await?;
                wr.flush().await.map_err(LinkError::from)?;
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
    max: usize,
    id: u64,
    serve: ServeParents,
    tx: watch::Sender<Option<BTreeSet<String>>>,
) -> Result<(), LinkError> {
    while let Some(body) = read_frame(&mut rd, max).await? {
        match decode_frame::<ToChild>(&body, max)? {
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
        }
    }
    Ok(())
}

//! The TLA child's side (`queryd tla-child`): it listens on `[link] listen` for its TLA,
//! keeps a decoder per cluster for the tables the TLA forwards ([`ToChild::Defer`], the
//! clusters' frames as they arrived), and on [`ToChild::Seal`] merges the clusters that
//! count with the TLA's own merge ([`Children::merge`], [`add_merged`]) and answers the
//! merged tables as a link frame ([`LinkEncoder`]: in full first, then diffs). Sessions
//! run on the compute pool, so decoding and merging never run on an actor's loop.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::AsyncWriteExt;

use crate::generation::GenerationBuilder;
use crate::link::diff::{LinkDecoder, LinkEncoder};
use crate::link::frame::{
    decode_frame, decode_small_frame, encode_frame, encode_generation, read_frame, write_frame,
    Codec,
};
use crate::link::wire::{ToChild, ToParent, LINK_VERSION};
use crate::link::LinkError;
use crate::node::add_merged;
use crate::sql::SqlPool;
use crate::tier::admission::{Gate, ListenLimits, LogLimiter, Permit};
use crate::tier::transport::{BoxStream, Listener};
use crate::tier::Children;

/// What a TLA child needs to serve its TLA.
#[derive(Clone)]
pub struct ServeTla {
    pub node: String,
    pub codec: Codec,
    pub limits: ListenLimits,
    /// Largest frame the TLA may send (`[link] max_frame_bytes`): cluster frames.
    pub max_frame_bytes: usize,
    /// A cluster missing a table this long stops counting for it (as at the TLA).
    pub drop_after: Duration,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

const LOG_EVERY: Duration = Duration::from_secs(10);

/// Accepts TLAs until an in-process listener is gone; a failed accept is logged (at most
/// every 10 s) and retried, never ending the loop.
pub async fn accept_tlas(mut listener: Listener, serve: ServeTla, pool: SqlPool) {
    let gate = Gate::new(&serve.limits);
    let mut errors = LogLimiter::new(LOG_EVERY);
    let mut refusals = LogLimiter::new(LOG_EVERY);
    loop {
        match listener.accept().await {
            Ok(Some(conn)) => {
                let permit = match gate.admit(&conn.host) {
                    Ok(p) => p,
                    Err(why) => {
                        if let Some(suppressed) = refusals.allow(Instant::now()) {
                            tracing::warn!(
                                peer = conn.peer,
                                suppressed,
                                "TLA connection refused: {why}"
                            );
                        }
                        continue;
                    }
                };
                let peer = conn.peer.clone();
                let handle = pool.spawn(session(conn.stream, peer.clone(), serve.clone(), permit));
                pool.spawn(async move {
                    match handle.await {
                        Ok(Ok(())) => tracing::info!(peer, "TLA disconnected"),
                        Ok(Err(e)) => tracing::warn!(peer, error = %e, "TLA session ended"),
                        Err(e) => tracing::error!(peer, error = %e, "TLA session panicked; the TLA will reconnect"),
                    }
                });
            }
            Ok(None) => return,
            Err(e) => {
                if let Some(suppressed) = errors.allow(Instant::now()) {
                    tracing::error!(error = %e, suppressed, "accepting a TLA failed; retrying");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn session(
    stream: BoxStream,
    peer: String,
    serve: ServeTla,
    mut permit: Permit,
) -> Result<(), LinkError> {
    let limits = &serve.limits;
    let deadline = tokio::time::Instant::now() + limits.hello_timeout;
    let stream = match &serve.tls {
        None => stream,
        Some(config) => {
            let accept = tokio_rustls::TlsAcceptor::from(config.clone()).accept(stream);
            match tokio::time::timeout_at(deadline, accept).await {
                Ok(Ok(s)) => Box::pin(s) as BoxStream,
                Ok(Err(e)) => {
                    let (kind, message) = crate::tls::describe_handshake(&e);
                    return Err(LinkError::Handshake { kind, message });
                }
                Err(_) => {
                    return Err(LinkError::Limit(
                        "no TLS handshake within [link] hello_timeout".into(),
                    ))
                }
            }
        }
    };
    let (mut rd, mut wr) = tokio::io::split(stream);
    let small = limits.max_request_frame_bytes;
    let first = tokio::select! {
        r = tokio::time::timeout_at(deadline, read_frame(&mut rd, small)) => r
            .map_err(|_| LinkError::Limit("no hello within [link] hello_timeout".into()))?
            .map_err(|e| limits.explain(e))?,
        Ok(()) = &mut permit.evicted => return Err(LinkError::Limit("closed before hello ([link] max_parent_sessions)".into())),
    };
    let Some(first) = first else { return Ok(()) };
    let parent =
        match decode_small_frame::<ToChild>(&first, small, limits.max_request_compression_ratio)?.0
        {
            ToChild::Hello { parent, version } if version == LINK_VERSION => parent,
            ToChild::Hello { version, .. } | ToChild::Probe { version } => {
                let message = format!(
                    "link version {version} is not supported; this node speaks {LINK_VERSION}"
                );
                write_frame(
                    &mut wr,
                    &encode_frame(&ToParent::Refused { message }, Codec::None)?,
                )
                .await?;
                return Err(LinkError::VersionMismatch {
                    ours: LINK_VERSION,
                    theirs: version,
                });
            }
            _ => return Err(LinkError::Protocol("expected hello".into())),
        };
    permit.greeted();
    let hello = ToParent::Hello {
        node: serve.node.clone(),
        role: "tla-child".into(),
        version: LINK_VERSION,
    };
    write_frame(&mut wr, &encode_frame(&hello, Codec::None)?).await?;
    wr.flush().await.map_err(LinkError::from)?;
    tracing::info!(peer, parent, "TLA connected");

    let clusters = Children::new(Vec::<String>::new(), serve.drop_after);
    let mut decoders: HashMap<String, (u64, LinkDecoder)> = HashMap::new();
    let mut encoder = LinkEncoder::new();
    let max = serve.max_frame_bytes;
    while let Some(body) = read_frame(&mut rd, max).await? {
        match decode_frame::<ToChild>(&body, max)? {
            ToChild::Defer {
                cluster,
                session,
                frame,
            } => {
                let entry = decoders
                    .entry(cluster.clone())
                    .or_insert_with(|| (session, LinkDecoder::new()));
                if entry.0 != session {
                    // The cluster's link was dialled again: it starts with a full copy.
                    *entry = (session, LinkDecoder::new());
                }
                let generation = entry.1.apply(frame)?;
                let now = Instant::now();
                clusters.deliver(&cluster, Arc::new(generation), |s| s.last_frame = Some(now));
            }
            ToChild::Seal {
                id,
                round,
                tables,
                clusters: counted,
            } => {
                let started = Instant::now();
                let wanted: BTreeSet<String> = tables.into_iter().collect();
                let counted: BTreeSet<String> = counted.into_iter().collect();
                let mut builder = GenerationBuilder::default();
                // A cluster that counts but whose copy never reached this child (its link
                // to the TLA not yet up again): no table is whole, the TLA carries them.
                if counted.iter().all(|c| decoders.contains_key(c)) {
                    for name in clusters.snapshot().keys() {
                        let counts = counted.contains(name);
                        clusters.update(name, |s| s.last_frame = counts.then_some(started));
                    }
                    let merged = clusters.merge(0, &wanted, started);
                    add_merged(&mut builder, merged, None, &BTreeSet::new());
                } else {
                    tracing::debug!(
                        round,
                        "not every cluster's copy is here yet; nothing merged this round"
                    );
                }
                let generation = builder.seal(id, round, SystemTime::now());
                let frame = encoder.encode(&generation, &wanted, 0, 0)?;
                let bytes = encode_generation(frame, serve.codec)?;
                write_frame(&mut wr, &bytes).await?;
                wr.flush().await.map_err(LinkError::from)?;
                tracing::debug!(round, tables = generation.tables.len(), took = ?started.elapsed(), bytes = bytes.len(), "merged tables sent to the TLA");
            }
            ToChild::Hello { .. } | ToChild::Probe { .. } | ToChild::Request { .. } => {
                return Err(LinkError::Protocol(
                    "a TLA child takes deferred tables and merge requests only".into(),
                ))
            }
        }
    }
    Ok(())
}

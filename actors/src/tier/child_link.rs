//! The actor that keeps the link to one child: it dials, says hello, sends the tables this
//! node wants (again whenever that set changes), and hands every generation the child sends
//! to [`Children`]. The session (I/O, decompression, applying diffs) runs on the compute
//! pool; the actor supervises it: when the session ends, fails or panics, it is started
//! again after a backoff that doubles up to `backoff_max`; panics are counted as restarts.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::watch;

use super::children::Children;
use super::config::LinkConfig;
use super::transport::{self, BoxStream};
use crate::link::diff::LinkDecoder;
use crate::link::frame::{decode_frame, encode_frame, read_frame, write_frame, Codec};
use crate::link::wire::{ToChild, ToParent, LINK_VERSION};
use crate::link::LinkError;
use crate::metrics::Metrics;
use crate::sql::{AbortOnDrop, SqlPool};

pub struct ChildLink {
    child: String,
    me: String,
    config: LinkConfig,
    children: Arc<Children>,
    wanted: watch::Receiver<BTreeSet<String>>,
    pool: SqlPool,
    metrics: Arc<Metrics>,
    backoff: Duration,
}

impl ChildLink {
    pub fn new(
        child: String,
        me: String,
        config: LinkConfig,
        children: Arc<Children>,
        wanted: watch::Receiver<BTreeSet<String>>,
        pool: SqlPool,
        metrics: Arc<Metrics>,
    ) -> Self {
        let backoff = config.backoff_min;
        ChildLink {
            child,
            me,
            config,
            children,
            wanted,
            pool,
            metrics,
            backoff,
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        let session = Session {
            child: self.child.clone(),
            me: self.me.clone(),
            config: self.config.clone(),
            children: self.children.clone(),
            wanted: self.wanted.clone(),
        };
        let started = Instant::now();
        let work = self.pool.spawn(session.run());
        ctx.spawn(actix::fut::wrap_future::<_, Self>(work).map(move |res, act, ctx| {
            let child = act.child.clone();
            act.children.update(&child, |s| s.connected = false);
            match res {
                Ok(Ok(())) => tracing::info!(child, "link closed by the child; reconnecting"),
                Ok(Err(e)) => {
                    tracing::warn!(child, error = %e, "link failed; reconnecting after backoff");
                    act.children.update(&child, |s| s.last_error = Some(e.to_string()));
                }
                Err(e) => {
                    // A panic in the session: count it, start a fresh one (fresh decoder).
                    act.metrics.actor_restarts.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(child, error = %e, "link session panicked; restarting it");
                    act.children.update(&child, |s| {
                        s.restarts += 1;
                        s.last_error = Some(format!("session panicked: {e}"));
                    });
                }
            }
            // A link that worked for a while starts over from the shortest backoff.
            if started.elapsed() > act.config.backoff_max {
                act.backoff = act.config.backoff_min;
            }
            let delay = act.backoff;
            act.backoff = (act.backoff * 2).min(act.config.backoff_max);
            ctx.run_later(delay, |act, ctx| act.connect(ctx));
        }));
    }
}

impl Actor for ChildLink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        tracing::debug!(child = %self.child, "dialing child");
        self.connect(ctx);
    }
}

/// One connection's worth of link: returns when the connection ends.
struct Session {
    child: String,
    me: String,
    config: LinkConfig,
    children: Arc<Children>,
    wanted: watch::Receiver<BTreeSet<String>>,
}

impl Session {
    async fn run(self) -> Result<(), LinkError> {
        let stream = transport::dial(&self.child, self.config.connect_timeout).await?;
        let (mut rd, mut wr) = tokio::io::split(stream);
        let hello = ToChild::Hello {
            parent: self.me.clone(),
            version: LINK_VERSION,
        };
        write_frame(&mut wr, &encode_frame(&hello, Codec::None)?).await?;
        let max = self.config.max_frame_bytes;
        match read_frame(&mut rd, max).await? {
            Some(body) => match decode_frame::<ToParent>(&body, max)? {
                ToParent::Hello {
                    version,
                    node,
                    role,
                } if version == LINK_VERSION => {
                    tracing::info!(child = %self.child, node, role, "link up");
                }
                ToParent::Hello { version, .. } => {
                    return Err(LinkError::VersionMismatch {
                        ours: LINK_VERSION,
                        theirs: version,
                    })
                }
                ToParent::Refused { message } => return Err(LinkError::Refused(message)),
                ToParent::Generation(_) => {
                    return Err(LinkError::Protocol("a generation before hello".into()))
                }
            },
            None => return Err(LinkError::Protocol("closed before hello".into())),
        }
        self.children.update(&self.child, |s| {
            s.connected = true;
            s.connects += 1;
            s.last_error = None;
        });
        // Requests go out from their own task: reading a frame must never be interrupted
        // halfway, so the read loop below waits on nothing else.
        let writer = tokio::spawn(send_requests(
            wr,
            self.wanted.clone(),
            self.children.clone(),
            self.child.clone(),
        ));
        let _writer = AbortOnDrop(writer);
        self.read_generations(&mut rd).await
    }

    async fn read_generations(&self, rd: &mut ReadHalf<BoxStream>) -> Result<(), LinkError> {
        let max = self.config.max_frame_bytes;
        let mut decoder = LinkDecoder::new();
        while let Some(body) = read_frame(rd, max).await? {
            let bytes = body.len() as u64 + 4;
            match decode_frame::<ToParent>(&body, max)? {
                ToParent::Generation(frame) => {
                    let full = frame.full;
                    let full_copy = frame.is_full_copy();
                    let generation = decoder.apply(frame)?;
                    tracing::debug!(child = %self.child, id = generation.id, round = generation.round, bytes, full, "generation from child");
                    let now = Instant::now();
                    self.children.update(&self.child, |s| {
                        s.latest = Some(Arc::new(generation));
                        s.last_frame = Some(now);
                        s.bytes_in += bytes;
                        s.frames += 1;
                        s.last_frame_bytes = bytes;
                        if full {
                            s.full_frames += 1;
                        }
                        if full_copy {
                            s.last_full_frame_bytes = bytes;
                        }
                    });
                }
                ToParent::Refused { message } => return Err(LinkError::Refused(message)),
                ToParent::Hello { .. } => return Err(LinkError::Protocol("a second hello".into())),
            }
        }
        Ok(())
    }
}

async fn send_requests(
    mut wr: WriteHalf<BoxStream>,
    mut wanted: watch::Receiver<BTreeSet<String>>,
    children: Arc<Children>,
    child: String,
) -> Result<(), LinkError> {
    loop {
        let tables: Vec<String> = wanted.borrow_and_update().iter().cloned().collect();
        let frame = encode_frame(&ToChild::Request { tables }, Codec::None)?;
        write_frame(&mut wr, &frame).await?;
        wr.flush().await.map_err(LinkError::from)?;
        children.update(&child, |s| s.bytes_out += frame.len() as u64);
        if wanted.changed().await.is_err() {
            return Ok(());
        }
    }
}

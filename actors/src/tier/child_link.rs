//! The actor that keeps the link to one child: it dials, says hello, sends the tables this
//! node wants (again whenever that set changes), and hands every generation the child sends
//! to [`Children`]. The session (I/O, decompression, applying diffs) runs on the compute
//! pool; the actor supervises it: when the session ends, fails or panics, it is started
//! again after a backoff that doubles up to `backoff_max`; panics are counted as restarts.
//!
//! A child may be reachable at several addresses (a cluster's proxies; at a SQL node, the
//! TLA its selector chose): the link uses one at a time and moves to the next when it
//! fails, when the child falls silent for `drop_after`, or when the address leaves the
//! list (a name re-resolved, another TLA chosen).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::watch;

use super::children::Children;
use super::config::LinkConfig;
use super::tla_children::{Assignment, Deferral};
use super::transport::{explain_tls, BoxStream, Dialer};
use crate::link::diff::LinkDecoder;
use crate::link::frame::{decode_frame, encode_frame, read_frame, write_frame, Codec};
use crate::link::wire::{ToChild, ToParent, LINK_VERSION};
use crate::link::LinkError;
use crate::metrics::Metrics;
use crate::node::supervisor::{panic_message, with_fault, Kind, State, Supervisor};
use crate::sql::{AbortOnDrop, SqlPool};
use tokio::sync::Notify;

pub struct ChildLink {
    /// The child's name (its slot in [`Children`]).
    child: String,
    /// Where it can be reached now, in order of preference.
    addresses: watch::Receiver<Vec<String>>,
    /// Which address to dial next (an index into `addresses`, wrapping).
    cursor: usize,
    /// Failed sessions in a row: the backoff grows once every address has failed.
    failures: usize,
    me: String,
    /// One copy for every link of the node: the node's list of children is in it, and a
    /// copy per link made a proxy's memory grow with the square of its machines.
    config: Arc<LinkConfig>,
    children: Arc<Children>,
    wanted: watch::Receiver<BTreeSet<String>>,
    pool: SqlPool,
    metrics: Arc<Metrics>,
    backoff: Duration,
    /// Plain, or mutual TLS (`[link.tls]`).
    dialer: Dialer,
    /// The node's supervisor, told of session panics (`child_link:NAME` in
    /// `query_actors`), and the fault hook that makes a session panic.
    supervision: Option<(Supervisor, Arc<Notify>)>,
    /// At a TLA with `[tla_children]`: the tables this link forwards to TLA children.
    deferral: Option<Arc<Deferral>>,
    /// The node serves parents: keep the patches applied for its encoders to forward
    /// ([`LinkDecoder::forwarding`]).
    forwarding: bool,
}

impl ChildLink {
    /// A TLA's cluster link forwards the deferred tables to its TLA children.
    pub fn with_deferral(mut self, deferral: Option<Arc<Deferral>>) -> Self {
        self.deferral = deferral;
        self
    }

    /// The node sends what it merges on to parents (a TLA serving SQL nodes).
    pub fn forwarding(mut self, forwarding: bool) -> Self {
        self.forwarding = forwarding;
        self
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        child: String,
        addresses: watch::Receiver<Vec<String>>,
        me: String,
        config: Arc<LinkConfig>,
        children: Arc<Children>,
        wanted: watch::Receiver<BTreeSet<String>>,
        pool: SqlPool,
        metrics: Arc<Metrics>,
        dialer: Dialer,
    ) -> Self {
        let backoff = config.backoff_min;
        ChildLink {
            child,
            addresses,
            cursor: 0,
            failures: 0,
            me,
            config,
            children,
            wanted,
            pool,
            metrics,
            backoff,
            dialer,
            supervision: None,
            deferral: None,
            forwarding: false,
        }
    }

    /// Reports session restarts to the node's supervisor as `child_link:NAME`.
    pub fn supervised(mut self, supervisor: &Supervisor) -> Self {
        let fault = supervisor.register(&self.part_name(), Kind::Link);
        self.supervision = Some((supervisor.clone(), fault));
        self
    }

    fn part_name(&self) -> String {
        format!("child_link:{}", self.child)
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        let addrs = self.addresses.borrow_and_update().clone();
        if addrs.is_empty() {
            // A name not resolved yet, or no TLA chosen yet: look again shortly.
            self.children.update(&self.child, |s| s.address = None);
            ctx.run_later(self.config.backoff_min, |act, ctx| act.connect(ctx));
            return;
        }
        let address = addrs[self.cursor % addrs.len()].clone();
        self.children
            .update(&self.child, |s| s.address = Some(address.clone()));
        let session = Session {
            child: self.child.clone(),
            address: address.clone(),
            me: self.me.clone(),
            config: self.config.clone(),
            children: self.children.clone(),
            wanted: self.wanted.clone(),
            dialer: self.dialer.clone(),
            deferral: self.deferral.clone(),
            forwarding: self.forwarding,
        };
        let started = Instant::now();
        let run = session.run_while_listed(self.addresses.clone());
        let work = match &self.supervision {
            Some((_, fault)) => self
                .pool
                .spawn(with_fault(self.part_name(), fault.clone(), run)),
            None => self.pool.spawn(run),
        };
        ctx.spawn(actix::fut::wrap_future::<_, Self>(work).map(move |res, act, ctx| {
            let child = act.child.clone();
            let linked = act.children.link_down(&child);
            match res {
                Ok(Ok(Ended::Redeal)) => {
                    // Who merges the deferred tables changed: start over at once with a
                    // full copy for the new owner.
                    tracing::debug!(child, address, "deferred tables reassigned; dialing anew");
                    ctx.run_later(Duration::ZERO, |act, ctx| act.connect(ctx));
                    return;
                }
                Ok(Ok(Ended::Unlisted)) => {
                    tracing::info!(child, address, "address no longer listed; dialing anew");
                    act.cursor = 0;
                    act.failures = 0;
                    ctx.run_later(Duration::ZERO, |act, ctx| act.connect(ctx));
                    return;
                }
                Ok(Ok(Ended::Closed)) if act.children.link_events_at_info() => {
                    tracing::info!(child, address, "link closed by the child; reconnecting")
                }
                Ok(Ok(Ended::Closed)) => {
                    tracing::debug!(child, address, "link closed by the child; reconnecting")
                }
                Ok(Err(e)) => {
                    tracing::warn!(child, address, error = %e, "link failed; trying again after backoff");
                    act.children.update(&child, |s| s.last_error = Some(format!("{address}: {e}")));
                }
                Err(e) => {
                    // A panic in the session: count it, start a fresh one (fresh decoder).
                    let why = if e.is_panic() {
                        format!("session panicked: {}", panic_message(&*e.into_panic()))
                    } else {
                        format!("session cancelled: {e}")
                    };
                    match &act.supervision {
                        Some((sup, _)) => {
                            let name = act.part_name();
                            sup.record_restart(&name, &why, State::Running, act.backoff);
                        }
                        None => {
                            act.metrics.actor_restarts.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(child, address, error = why, "link session restarting");
                        }
                    }
                    act.children.update(&child, |s| {
                        s.restarts += 1;
                        s.last_error = Some(why);
                    });
                }
            }
            // A link that got as far as hello keeps its address as first choice, and one
            // that worked for a while starts over from the shortest backoff. A failed dial
            // moves to the next address; only once every address has failed does the wait
            // grow.
            if linked {
                act.failures = 0;
                if started.elapsed() > act.config.backoff_max {
                    act.backoff = act.config.backoff_min;
                }
            } else {
                act.failures += 1;
                act.cursor = act.cursor.wrapping_add(1);
            }
            let n = act.addresses.borrow().len().max(1);
            let delay = if act.failures > 0 && act.failures % n != 0 {
                act.config.backoff_min
            } else {
                let d = act.backoff;
                act.backoff = (act.backoff * 2).min(act.config.backoff_max);
                d
            };
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

/// How a session ended without an error.
enum Ended {
    /// The child closed the connection.
    Closed,
    /// The address left the child's list (re-resolved name, another TLA chosen).
    Unlisted,
    /// A TLA's deferred tables changed owner (a TLA child down or back, `[tla_children]`
    /// edited): the new owner needs a full copy.
    Redeal,
}

/// One connection's worth of link: returns when the connection ends.
struct Session {
    child: String,
    address: String,
    me: String,
    config: Arc<LinkConfig>,
    children: Arc<Children>,
    wanted: watch::Receiver<BTreeSet<String>>,
    dialer: Dialer,
    deferral: Option<Arc<Deferral>>,
    forwarding: bool,
}

impl Session {
    /// Runs the link until it ends, or until its address leaves `addresses`.
    async fn run_while_listed(
        self,
        mut addresses: watch::Receiver<Vec<String>>,
    ) -> Result<Ended, LinkError> {
        let address = self.address.clone();
        let unlisted = async move {
            loop {
                if !addresses.borrow_and_update().contains(&address) {
                    return;
                }
                if addresses.changed().await.is_err() {
                    // Nobody changes the list any more: it stays as it is.
                    std::future::pending::<()>().await;
                }
            }
        };
        // Fixed for the session: a change of owner ends it (the new owner needs a full copy).
        let mut epoch = self.deferral.as_ref().map(|d| d.epoch());
        let assignment = match (&self.deferral, &mut epoch) {
            (Some(d), Some(e)) => {
                e.borrow_and_update();
                Some((d.assignment(), d.next_session()))
            }
            _ => None,
        };
        let redeal = async move {
            let changed = match &mut epoch {
                Some(e) => e.changed().await.is_ok(),
                None => false,
            };
            if !changed {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            r = self.run(assignment) => r.map(|()| Ended::Closed),
            () = unlisted => Ok(Ended::Unlisted),
            () = redeal => Ok(Ended::Redeal),
        }
    }

    async fn run(self, assignment: Option<(Assignment, u64)>) -> Result<(), LinkError> {
        let timeout = self.config.connect_timeout;
        let stream = self.dialer.dial(&self.address, timeout).await?;
        let (mut rd, mut wr) = tokio::io::split(stream);
        let hello = ToChild::Hello {
            parent: self.me.clone(),
            version: LINK_VERSION,
        };
        write_frame(&mut wr, &encode_frame(&hello, Codec::None)?).await?;
        // The answer is a hello or a refusal: a few names, so a small limit (the one
        // children apply to parents' hellos).
        let max = self.config.max_request_frame_bytes;
        // A peer that accepts but never answers (a black hole) must not hold the link.
        let answer = tokio::time::timeout(timeout, read_frame(&mut rd, max))
            .await
            .map_err(|_| LinkError::Silent(timeout))?
            .map_err(explain_tls)?;
        match answer {
            Some(body) => match decode_frame::<ToParent>(&body, max)? {
                ToParent::Hello {
                    version,
                    node,
                    role,
                } if version == LINK_VERSION => {
                    self.children
                        .link_up(&self.child, &self.address, &node, &role);
                }
                ToParent::Hello { version, .. } => {
                    return Err(LinkError::VersionMismatch {
                        ours: LINK_VERSION,
                        theirs: version,
                    })
                }
                ToParent::Refused { message } => return Err(LinkError::Refused(message)),
                ToParent::Generation(_) | ToParent::Advert(_) => {
                    return Err(LinkError::Protocol("expected hello".into()))
                }
            },
            None => return Err(LinkError::Protocol("closed before hello".into())),
        }
        // Requests go out from their own task: reading a frame must never be interrupted
        // halfway, so the read loop below waits on nothing else.
        let writer = tokio::spawn(send_requests(
            wr,
            self.wanted.clone(),
            self.children.clone(),
            self.child.clone(),
        ));
        let _writer = AbortOnDrop(writer);
        self.read_generations(&mut rd, assignment).await
    }

    async fn read_generations(
        &self,
        rd: &mut ReadHalf<BoxStream>,
        assignment: Option<(Assignment, u64)>,
    ) -> Result<(), LinkError> {
        let max = self.config.max_frame_bytes;
        let silent = self.config.drop_after;
        let mut decoder = if self.forwarding {
            LinkDecoder::forwarding()
        } else {
            LinkDecoder::new()
        };
        // A child sends a frame every interval; one silent for `drop_after` is dropped
        // anyway, so the link is closed and dialled again (at its next address, if any).
        while let Some(body) = tokio::time::timeout(silent, read_frame(rd, max))
            .await
            .map_err(|_| LinkError::Silent(silent))?
            .map_err(name_frame_limit)?
        {
            let bytes = body.len() as u64 + 4;
            let started = Instant::now();
            let message = decode_frame::<ToParent>(&body, max).map_err(name_frame_limit)?;
            let decoded = started.elapsed();
            match message {
                ToParent::Generation(mut frame) => {
                    if let Some((a, session)) = &assignment {
                        // Before the delivery: a seal that sees this round here finds the
                        // children's share already queued for them.
                        a.forward(&self.child, *session, &mut frame).await;
                    }
                    let full = frame.full;
                    let full_copy = frame.is_full_copy();
                    let applying = Instant::now();
                    let generation = decoder.apply(frame)?;
                    tracing::debug!(
                        child = %self.child,
                        id = generation.id,
                        round = generation.round,
                        bytes,
                        full,
                        decode_ms = decoded.as_millis() as u64,
                        apply_ms = applying.elapsed().as_millis() as u64,
                        "generation from child"
                    );
                    let now = Instant::now();
                    self.children
                        .deliver(&self.child, Arc::new(generation), |s| {
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
                ToParent::Hello { .. } | ToParent::Advert(_) => {
                    return Err(LinkError::Protocol("a second hello".into()))
                }
            }
        }
        Ok(())
    }
}

/// Names the key behind a child's frame refused for its size. A child's first frame is a
/// full copy of what it holds, so the frame grows with the fleet below it: a TLA's full copy
/// of 250,000 simulated machines' six tables is 1.6 GB decompressed, past the default
/// (BENCHMARKS.md, `fleet-big`). The link is dialled again after the backoff, and refused
/// again until the key is raised.
fn name_frame_limit(e: LinkError) -> LinkError {
    match e {
        LinkError::FrameTooLarge { size, limit } => LinkError::Limit(format!(
            "a frame of {size} bytes or more (on the wire, or decompressed) exceeds {limit} bytes \
             ([link] max_frame_bytes): a full copy grows with the fleet below the child; raise \
             the key on this node"
        )),
        other => other,
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

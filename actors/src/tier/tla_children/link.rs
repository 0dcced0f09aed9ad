//! The TLA's link to one TLA child: dials it, says hello, then sends what the cluster links
//! forward and the sealer's merge requests (one queue, so a merge request follows every
//! cluster frame forwarded before it), and hands the child's merged tables to
//! [`Deferral::deliver`]. The session (I/O, compression, decoding the child's answer) runs
//! on the compute pool; the actor redials with a backoff doubling from `backoff_min` to
//! `backoff_max` while the child is down, and stops once the child is no longer listed in
//! `[tla_children]`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

use super::Deferral;
use crate::link::diff::LinkDecoder;
use crate::link::frame::{decode_frame, encode_frame, read_frame, write_frame, Codec};
use crate::link::wire::{ToChild, ToParent, LINK_VERSION};
use crate::link::LinkError;
use crate::sql::{AbortOnDrop, SqlPool};
use crate::tier::config::LinkConfig;
use crate::tier::transport::{explain_tls, Dialer};

pub struct TlaChildLink {
    address: String,
    me: String,
    deferral: Arc<Deferral>,
    config: Arc<LinkConfig>,
    pool: SqlPool,
    dialer: Dialer,
    backoff: Duration,
}

impl TlaChildLink {
    pub fn new(
        address: String,
        me: String,
        deferral: Arc<Deferral>,
        config: Arc<LinkConfig>,
        pool: SqlPool,
        dialer: Dialer,
    ) -> Self {
        let backoff = config.backoff_min;
        TlaChildLink {
            address,
            me,
            deferral,
            config,
            pool,
            dialer,
            backoff,
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        if !self.deferral.listed(&self.address) {
            tracing::info!(child = %self.address, "TLA child no longer listed in [tla_children]; its link stops");
            ctx.stop();
            return;
        }
        let session = session(
            self.address.clone(),
            self.me.clone(),
            self.deferral.clone(),
            self.config.clone(),
            self.dialer.clone(),
        );
        let started = Instant::now();
        let work = self.pool.spawn(session);
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(work).map(move |res, act, ctx| {
                let reason = match res {
                    Ok(Ok(())) => "the child closed the link".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => format!("session panicked: {e}"),
                };
                act.deferral.link_down(&act.address, &reason);
                tracing::debug!(child = %act.address, reason, "TLA child link ended");
                // A link that served a while starts over from the shortest wait.
                if started.elapsed() > act.config.backoff_max {
                    act.backoff = act.config.backoff_min;
                }
                let delay = act.backoff;
                act.backoff = (act.backoff * 2).min(act.config.backoff_max);
                ctx.run_later(delay, |act, ctx| act.connect(ctx));
            }),
        );
    }
}

impl Actor for TlaChildLink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.connect(ctx);
    }
}

/// One connection to the child: returns when it ends (or the TLA drops the child).
async fn session(
    address: String,
    me: String,
    deferral: Arc<Deferral>,
    config: Arc<LinkConfig>,
    dialer: Dialer,
) -> Result<(), LinkError> {
    let timeout = config.connect_timeout;
    let stream = dialer.dial(&address, timeout).await?;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let hello = ToChild::Hello {
        parent: me,
        version: LINK_VERSION,
    };
    write_frame(&mut wr, &encode_frame(&hello, Codec::None)?).await?;
    wr.flush().await.map_err(LinkError::from)?;
    let small = config.max_request_frame_bytes;
    let answer = tokio::time::timeout(timeout, read_frame(&mut rd, small))
        .await
        .map_err(|_| LinkError::Silent(timeout))?
        .map_err(explain_tls)?
        .ok_or_else(|| LinkError::Protocol("closed before hello".into()))?;
    let node = match decode_frame::<ToParent>(&answer, small)? {
        ToParent::Hello {
            version,
            node,
            role,
        } if version == LINK_VERSION => {
            if role != "tla-child" {
                return Err(LinkError::Protocol(format!(
                    "{address} is a {role}, not a tla-child"
                )));
            }
            node
        }
        ToParent::Hello { version, .. } => {
            return Err(LinkError::VersionMismatch {
                ours: LINK_VERSION,
                theirs: version,
            })
        }
        ToParent::Refused { message } => return Err(LinkError::Refused(message)),
        _ => return Err(LinkError::Protocol("expected hello".into())),
    };
    let (tx, mut rx) = mpsc::channel::<ToChild>(deferral.config().queue.max(1));
    let (kill_tx, kill_rx) = oneshot::channel::<String>();
    let codec = config.compression;
    let d = deferral.clone();
    let addr = address.clone();
    // Frames go out from their own task: a frame read is never interrupted halfway.
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            let bytes = encode_frame(&msg, codec)?;
            write_frame(&mut wr, &bytes).await?;
            wr.flush().await.map_err(LinkError::from)?;
            d.record(&addr, |v| v.bytes_out += bytes.len() as u64);
        }
        Ok::<(), LinkError>(())
    });
    let mut writer = AbortOnDrop(writer);
    deferral.link_up(&address, node, tx, kill_tx);
    let max = config.max_frame_bytes;
    let reader = async {
        let mut decoder = LinkDecoder::new();
        while let Some(body) = read_frame(&mut rd, max).await? {
            let bytes = body.len() as u64 + 4;
            match decode_frame::<ToParent>(&body, max)? {
                ToParent::Generation(frame) => {
                    let generation = decoder.apply(frame)?;
                    deferral.record(&address, |v| {
                        v.frames_in += 1;
                        v.bytes_in += bytes;
                        v.last_frame_bytes = bytes;
                    });
                    deferral.deliver(&address, generation);
                }
                ToParent::Refused { message } => return Err(LinkError::Refused(message)),
                _ => {
                    return Err(LinkError::Protocol(
                        "unexpected message from a TLA child".into(),
                    ))
                }
            }
        }
        Ok(())
    };
    tokio::select! {
        r = reader => r,
        r = &mut writer.0 => match r {
            Ok(r) => r,
            Err(e) => Err(LinkError::Protocol(format!("writer ended: {e}"))),
        },
        Ok(reason) = kill_rx => Err(LinkError::Protocol(reason)),
    }
}

//! One actor per table this node has been asked for: it owns why the table is wanted
//! (configured, prewarmed, requested by a parent link, used by a query here) and until
//! when, and expires the reasons on its own timer. The [`RequestBook`] starts these actors,
//! routes prewarm edits, parent requests and query uses to them as messages, and keeps the
//! union of the wanted ones.
//!
//! Every answer and every expiry carries a version, so the book never lets an older
//! "unwanted" overtake a newer "wanted" of the same table.
//!
//! [`RequestBook`]: super::RequestBook

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use actix::prelude::*;

/// Why a table is wanted; each message answers whether the table is wanted now.
#[derive(Debug, Clone, Message)]
#[rtype(result = "TableState")]
pub enum Reason {
    /// Wanted by this node's own configuration (an edge's `[edge] prewarm`), for good.
    Fixed,
    /// In the prewarm file (`true`) or no longer (`false`).
    Prewarm(bool),
    /// A query on this node used the table (wanted for the ttl from now).
    Use,
    /// A parent's link requests the table (`true`), or its new request leaves it out.
    Parent { session: u64, wants: bool },
    /// A parent's link closed: its request lapses after the ttl.
    ParentGone(u64),
}

/// Whether a table is wanted, as of its actor's `version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, MessageResponse)]
pub struct TableState {
    pub wanted: bool,
    pub version: u64,
}

/// Sent to the book when a table stops being wanted on its own (its last reason expired).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Expired {
    pub table: String,
    pub state: TableState,
}

pub struct TableRequest {
    table: String,
    ttl: Duration,
    fixed: bool,
    prewarm: bool,
    last_use: Option<Instant>,
    /// Per parent session: since when it is gone (None while connected).
    parents: BTreeMap<u64, Option<Instant>>,
    version: u64,
    wanted: bool,
    book: Recipient<Expired>,
    timer: Option<SpawnHandle>,
}

impl TableRequest {
    pub fn new(table: String, ttl: Duration, book: Recipient<Expired>) -> Self {
        TableRequest {
            table,
            ttl,
            fixed: false,
            prewarm: false,
            last_use: None,
            parents: BTreeMap::new(),
            version: 0,
            wanted: false,
            book,
            timer: None,
        }
    }

    /// Drops the reasons that outlived the ttl; is anything left?
    fn evaluate(&mut self, now: Instant) -> bool {
        let ttl = self.ttl;
        let live = |since: Instant| now.saturating_duration_since(since) < ttl;
        if self.last_use.is_some_and(|u| !live(u)) {
            tracing::info!(table = self.table, ?ttl, "table unused for its ttl");
            self.last_use = None;
        }
        self.parents.retain(|_, gone| gone.is_none_or(live));
        self.fixed || self.prewarm || self.last_use.is_some() || !self.parents.is_empty()
    }

    /// When the next timed reason runs out, if any.
    fn next_expiry(&self) -> Option<Instant> {
        let gone = self.parents.values().filter_map(|g| *g);
        self.last_use
            .into_iter()
            .chain(gone)
            .min()
            .map(|t| t + self.ttl)
    }

    /// Re-evaluates, bumps the version on a change, and sets the timer for the next
    /// expiry.
    fn settle(&mut self, ctx: &mut Context<Self>) -> TableState {
        let now = Instant::now();
        let wanted = self.evaluate(now);
        if wanted != self.wanted {
            self.wanted = wanted;
            self.version += 1;
        }
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        if let Some(at) = self.next_expiry() {
            let after = at.saturating_duration_since(now) + Duration::from_millis(1);
            self.timer = Some(ctx.run_later(after, |act, ctx| act.expire(ctx)));
        }
        TableState {
            wanted: self.wanted,
            version: self.version,
        }
    }

    /// The expiry timer: settles, and tells the book if the table is no longer wanted.
    fn expire(&mut self, ctx: &mut Context<Self>) {
        self.timer = None;
        let was = self.wanted;
        let state = self.settle(ctx);
        if was && !state.wanted {
            self.book.do_send(Expired {
                table: self.table.clone(),
                state,
            });
        }
    }
}

impl Actor for TableRequest {
    type Context = Context<Self>;
}

/// Restarted in place by the node's supervisor (`table_request:NAME`), its reasons kept;
/// the expiry timer went with the restart, so it looks again at once.
impl Supervised for TableRequest {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        self.timer = None;
        ctx.run_later(Duration::ZERO, |act, ctx| act.expire(ctx));
    }
}

impl Handler<Reason> for TableRequest {
    type Result = TableState;

    fn handle(&mut self, msg: Reason, ctx: &mut Context<Self>) -> TableState {
        let now = Instant::now();
        match msg {
            Reason::Fixed => self.fixed = true,
            Reason::Prewarm(on) => self.prewarm = on,
            Reason::Use => self.last_use = Some(now),
            Reason::Parent { session, wants } => {
                if wants {
                    self.parents.insert(session, None);
                } else {
                    self.parents.remove(&session);
                }
            }
            Reason::ParentGone(session) => {
                if let Some(gone) = self.parents.get_mut(&session) {
                    *gone = Some(now);
                }
            }
        }
        self.settle(ctx)
    }
}

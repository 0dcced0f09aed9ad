//! The request book: which tables this node wants from below. Each table asked for has its
//! own actor ([`TableRequest`]) owning why it is wanted — prewarmed (configuration),
//! requested by a parent over its link, or used by a query on this node — and until when: a
//! use keeps it requested for `request_ttl` after the last use, and a parent's requests
//! outlive its connection by the same time (a parent reconnecting does not start cold).
//! The book starts those actors, turns prewarm edits, parent requests and query uses into
//! messages to them, and publishes the union of the wanted tables on a watch channel: child
//! links send it down as their request, an edge tells its publishers `want`.
//!
//! A message to the book is answered once every table it names has taken it in, so the
//! union is up to date when a sender's `send(..).await` returns.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::watch;

use super::messages::{ParentGone, ParentRequest, SetPrewarm, SetSetTables, UseTables};
use super::table_request::{Expired, Reason, TableRequest, TableState};

/// Distinct tables a node keeps request actors for; names past this (a confused or hostile
/// parent) are refused with a warning.
pub const MAX_TABLES: usize = 4096;

pub struct RequestBook {
    ttl: Duration,
    /// Always requested by this node's own config (an edge's `[edge] prewarm`).
    fixed: BTreeSet<String>,
    /// The prewarm file's list, replaced on each edit.
    prewarm: BTreeSet<String>,
    /// The aggregator set's prewarm and partition tables, replaced when the sets file is
    /// edited. Prewarmed like the file's list (a table in either stays requested).
    set: BTreeSet<String>,
    /// Per parent session: what it requests now.
    parents: BTreeMap<u64, BTreeSet<String>>,
    tables: BTreeMap<String, Addr<TableRequest>>,
    /// Each table's last known state (newest version wins).
    states: BTreeMap<String, TableState>,
    tx: watch::Sender<BTreeSet<String>>,
    /// The node's supervisor, which table actors are started under (else actix's).
    supervisor: Option<crate::node::supervisor::Supervisor>,
}

impl RequestBook {
    pub fn new(
        ttl: Duration,
        fixed: BTreeSet<String>,
        prewarm: BTreeSet<String>,
        set: BTreeSet<String>,
    ) -> (Self, watch::Receiver<BTreeSet<String>>) {
        let initial: BTreeSet<String> = fixed.iter().chain(&prewarm).chain(&set).cloned().collect();
        let (tx, rx) = watch::channel(initial.clone());
        // Wanted from the start; their actors confirm it (version 1) once started.
        let states = initial
            .into_iter()
            .map(|t| {
                (
                    t,
                    TableState {
                        wanted: true,
                        version: 0,
                    },
                )
            })
            .collect();
        (
            RequestBook {
                ttl,
                fixed,
                prewarm,
                set,
                parents: BTreeMap::new(),
                tables: BTreeMap::new(),
                states,
                tx,
                supervisor: None,
            },
            rx,
        )
    }

    /// Starts table actors under the node's supervisor (`table_request:NAME`).
    pub fn supervised(mut self, supervisor: &crate::node::supervisor::Supervisor) -> Self {
        self.supervisor = Some(supervisor.clone());
        self
    }

    /// The actor of `table`, started on first mention (None past [`MAX_TABLES`]).
    fn actor(&mut self, table: &str, ctx: &mut Context<Self>) -> Option<Addr<TableRequest>> {
        if let Some(a) = self.tables.get(table) {
            return Some(a.clone());
        }
        if self.tables.len() >= MAX_TABLES {
            tracing::warn!(
                table,
                limit = MAX_TABLES,
                "too many distinct tables requested; ignoring this one"
            );
            return None;
        }
        let (name, ttl, book) = (table.to_string(), self.ttl, ctx.address().recipient());
        let actor = TableRequest::new(name, ttl, book);
        let addr = match &self.supervisor {
            Some(s) => s.start_actor(&format!("table_request:{table}"), actor),
            None => Supervisor::start(move |_| actor),
        };
        self.tables.insert(table.to_string(), addr.clone());
        Some(addr)
    }

    /// Sends every reason to its table's actor; once all have answered, records their
    /// states and publishes the union.
    fn dispatch(
        &mut self,
        reasons: Vec<(String, Reason)>,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, ()> {
        let sends: Vec<(String, Addr<TableRequest>, Reason)> = reasons
            .into_iter()
            .filter_map(|(t, r)| self.actor(&t, ctx).map(|a| (t, a, r)))
            .collect();
        let answers = async move {
            let mut out = Vec::with_capacity(sends.len());
            for (t, addr, r) in sends {
                match addr.send(r).await {
                    Ok(state) => out.push((t, state)),
                    Err(e) => {
                        tracing::error!(table = t, error = %e, "table request actor unreachable")
                    }
                }
            }
            out
        };
        Box::pin(
            actix::fut::wrap_future::<_, Self>(answers).map(|answers, act, _| {
                for (t, state) in answers {
                    act.record(t, state);
                }
                act.publish();
            }),
        )
    }

    fn record(&mut self, table: String, state: TableState) {
        match self.states.get(&table) {
            Some(known) if known.version > state.version => {}
            _ => {
                self.states.insert(table, state);
            }
        }
    }

    /// Sends the union of the wanted tables if it changed.
    fn publish(&mut self) {
        let wanted: BTreeSet<String> = self
            .states
            .iter()
            .filter(|(_, s)| s.wanted)
            .map(|(t, _)| t.clone())
            .collect();
        self.tx.send_if_modified(|w| {
            let changed = *w != wanted;
            if changed {
                tracing::info!(tables = ?wanted, "requested tables changed");
                *w = wanted;
            }
            changed
        });
    }
}

/// Restarted in place: the requests (and the tables' actors) are kept; `started` sends the
/// configured tables to their actors again, which changes nothing they already hold.
impl actix::Supervised for RequestBook {}

impl Actor for RequestBook {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let mut reasons: Vec<(String, Reason)> = self
            .fixed
            .iter()
            .map(|t| (t.clone(), Reason::Fixed))
            .collect();
        reasons.extend(
            self.prewarmed()
                .into_iter()
                .map(|t| (t, Reason::Prewarm(true))),
        );
        // Before any other message: the configured tables' actors exist first.
        let fut = self.dispatch(reasons, ctx);
        ctx.wait(fut);
    }
}

impl Handler<UseTables> for RequestBook {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, msg: UseTables, ctx: &mut Context<Self>) -> Self::Result {
        let reasons = msg.0.into_iter().map(|t| (t, Reason::Use)).collect();
        self.dispatch(reasons, ctx)
    }
}

impl Handler<ParentRequest> for RequestBook {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, msg: ParentRequest, ctx: &mut Context<Self>) -> Self::Result {
        let session = msg.session;
        let old = self
            .parents
            .insert(session, msg.tables.clone())
            .unwrap_or_default();
        let mut reasons: Vec<(String, Reason)> = msg
            .tables
            .iter()
            .map(|t| {
                (
                    t.clone(),
                    Reason::Parent {
                        session,
                        wants: true,
                    },
                )
            })
            .collect();
        reasons.extend(old.difference(&msg.tables).map(|t| {
            (
                t.clone(),
                Reason::Parent {
                    session,
                    wants: false,
                },
            )
        }));
        self.dispatch(reasons, ctx)
    }
}

impl Handler<ParentGone> for RequestBook {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, msg: ParentGone, ctx: &mut Context<Self>) -> Self::Result {
        let tables = self.parents.remove(&msg.0).unwrap_or_default();
        let reasons = tables
            .into_iter()
            .map(|t| (t, Reason::ParentGone(msg.0)))
            .collect();
        self.dispatch(reasons, ctx)
    }
}

impl RequestBook {
    /// Tables prewarmed by the prewarm file or the aggregator set.
    fn prewarmed(&self) -> BTreeSet<String> {
        self.prewarm.union(&self.set).cloned().collect()
    }

    /// Replaces the prewarm file's list or the set's tables, and requests (or lets go of)
    /// the tables that changed between the two unions.
    fn reprewarm(
        &mut self,
        prewarm: Option<BTreeSet<String>>,
        set: Option<BTreeSet<String>>,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, ()> {
        let before = self.prewarmed();
        if let Some(p) = prewarm {
            if p != self.prewarm {
                tracing::info!(tables = ?p, "prewarm list changed");
            }
            self.prewarm = p;
        }
        if let Some(s) = set {
            if s != self.set {
                tracing::info!(tables = ?s, "aggregator set's tables changed");
            }
            self.set = s;
        }
        let after = self.prewarmed();
        let mut reasons: Vec<(String, Reason)> = after
            .difference(&before)
            .map(|t| (t.clone(), Reason::Prewarm(true)))
            .collect();
        reasons.extend(
            before
                .difference(&after)
                .map(|t| (t.clone(), Reason::Prewarm(false))),
        );
        self.dispatch(reasons, ctx)
    }
}

impl Handler<SetPrewarm> for RequestBook {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, msg: SetPrewarm, ctx: &mut Context<Self>) -> Self::Result {
        self.reprewarm(Some(msg.0), None, ctx)
    }
}

impl Handler<SetSetTables> for RequestBook {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, msg: SetSetTables, ctx: &mut Context<Self>) -> Self::Result {
        self.reprewarm(None, Some(msg.0), ctx)
    }
}

impl Handler<Expired> for RequestBook {
    type Result = ();
    fn handle(&mut self, msg: Expired, _: &mut Context<Self>) {
        self.record(msg.table, msg.state);
        self.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(t: &[&str]) -> BTreeSet<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    #[actix::test]
    async fn uses_expire_after_the_ttl_and_each_use_resets_it() {
        let (book, rx) = RequestBook::new(
            Duration::from_millis(400),
            set(&["sys"]),
            BTreeSet::new(),
            BTreeSet::new(),
        );
        let addr = book.start();
        addr.send(UseTables(set(&["processes"])))
            .await
            .expect("send");
        assert_eq!(*rx.borrow(), set(&["sys", "processes"]));
        tokio::time::sleep(Duration::from_millis(250)).await;
        addr.send(UseTables(set(&["processes"])))
            .await
            .expect("send");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(
            *rx.borrow(),
            set(&["sys", "processes"]),
            "the second use reset the ttl"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(*rx.borrow(), set(&["sys"]), "prewarmed tables stay");
    }

    #[actix::test]
    async fn a_gone_parent_keeps_its_tables_for_the_ttl() {
        let (book, rx) = RequestBook::new(
            Duration::from_millis(300),
            BTreeSet::new(),
            set(&["filesystem"]),
            BTreeSet::new(),
        );
        let addr = book.start();
        addr.send(ParentRequest {
            session: 1,
            tables: set(&["load_info"]),
        })
        .await
        .expect("send");
        addr.send(ParentGone(1)).await.expect("send");
        assert_eq!(*rx.borrow(), set(&["filesystem", "load_info"]));
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(*rx.borrow(), set(&["filesystem"]));
        addr.send(SetPrewarm(set(&["sys"]))).await.expect("send");
        assert_eq!(
            *rx.borrow(),
            set(&["sys"]),
            "an edit replaces the prewarm list"
        );
    }

    #[actix::test]
    async fn a_new_parent_request_replaces_the_old_and_fixed_tables_stay() {
        let (book, rx) = RequestBook::new(
            Duration::from_secs(60),
            set(&["sys"]),
            set(&["sys", "filesystem"]),
            BTreeSet::new(),
        );
        let addr = book.start();
        let request = |tables: &[&str]| ParentRequest {
            session: 7,
            tables: set(tables),
        };
        addr.send(request(&["load_info", "processes"]))
            .await
            .expect("send");
        assert_eq!(
            *rx.borrow(),
            set(&["sys", "filesystem", "load_info", "processes"])
        );
        addr.send(request(&["processes"])).await.expect("send");
        assert_eq!(
            *rx.borrow(),
            set(&["sys", "filesystem", "processes"]),
            "left out of the new request: no longer wanted by that parent"
        );
        addr.send(SetPrewarm(BTreeSet::new())).await.expect("send");
        assert_eq!(
            *rx.borrow(),
            set(&["sys", "processes"]),
            "sys is also in the node's own config"
        );
    }

    #[actix::test]
    async fn the_sets_tables_and_the_prewarm_file_are_prewarmed_together() {
        let (book, rx) = RequestBook::new(
            Duration::from_secs(60),
            BTreeSet::new(),
            set(&["sys"]),
            set(&["sys", "load_info"]),
        );
        let addr = book.start();
        assert_eq!(*rx.borrow(), set(&["sys", "load_info"]));
        addr.send(SetSetTables(set(&["processes"])))
            .await
            .expect("send");
        assert_eq!(
            *rx.borrow(),
            set(&["sys", "processes"]),
            "load_info left the set; sys stays for the prewarm file"
        );
        addr.send(SetPrewarm(BTreeSet::new())).await.expect("send");
        assert_eq!(*rx.borrow(), set(&["processes"]));
    }
}

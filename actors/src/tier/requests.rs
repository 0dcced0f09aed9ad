//! The request book: which tables this node wants from below, and why. A table is wanted
//! when it is prewarmed (configuration), requested by a parent over its link, or used by a
//! query on this node; a use keeps it requested for `request_ttl` after the last use, and
//! a parent's requests outlive its connection by the same time (a parent reconnecting does
//! not start cold). The union goes out on a watch channel: child links send it down as
//! their request, an edge tells its publishers `want`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::watch;

use super::messages::{ParentGone, ParentRequest, SetPrewarm, UseTables};

pub struct RequestBook {
    ttl: Duration,
    /// Always requested by this node's own config (an edge's `[edge] prewarm`).
    fixed: BTreeSet<String>,
    /// The prewarm file's list, replaced on each edit.
    prewarm: BTreeSet<String>,
    /// Per parent session: its tables, and since when it is gone (None while connected).
    parents: BTreeMap<u64, (BTreeSet<String>, Option<Instant>)>,
    /// Tables queries on this node used, with the last use.
    uses: BTreeMap<String, Instant>,
    tx: watch::Sender<BTreeSet<String>>,
}

impl RequestBook {
    pub fn new(
        ttl: Duration,
        fixed: BTreeSet<String>,
        prewarm: BTreeSet<String>,
    ) -> (Self, watch::Receiver<BTreeSet<String>>) {
        let (tx, rx) = watch::channel(fixed.union(&prewarm).cloned().collect());
        (
            RequestBook {
                ttl,
                fixed,
                prewarm,
                parents: BTreeMap::new(),
                uses: BTreeMap::new(),
                tx,
            },
            rx,
        )
    }

    /// Drops what has outlived the ttl and publishes the union if it changed.
    fn refresh(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.uses.retain(|table, last| {
            let keep = now.saturating_duration_since(*last) < ttl;
            if !keep {
                tracing::info!(table, ?ttl, "table unused for its ttl; no longer requested");
            }
            keep
        });
        self.parents
            .retain(|_, (_, gone)| gone.is_none_or(|g| now.saturating_duration_since(g) < ttl));
        let mut wanted: BTreeSet<String> = self.fixed.union(&self.prewarm).cloned().collect();
        wanted.extend(self.uses.keys().cloned());
        for (tables, _) in self.parents.values() {
            wanted.extend(tables.iter().cloned());
        }
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

impl Actor for RequestBook {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Expiry needs no precision finer than a tenth of the ttl (at most a second).
        let tick = (self.ttl / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
        ctx.run_interval(tick, |act, _| act.refresh(Instant::now()));
    }
}

impl Handler<UseTables> for RequestBook {
    type Result = ();
    fn handle(&mut self, msg: UseTables, _: &mut Context<Self>) {
        let now = Instant::now();
        for t in msg.0 {
            self.uses.insert(t, now);
        }
        self.refresh(now);
    }
}

impl Handler<ParentRequest> for RequestBook {
    type Result = ();
    fn handle(&mut self, msg: ParentRequest, _: &mut Context<Self>) {
        self.parents.insert(msg.session, (msg.tables, None));
        self.refresh(Instant::now());
    }
}

impl Handler<ParentGone> for RequestBook {
    type Result = ();
    fn handle(&mut self, msg: ParentGone, _: &mut Context<Self>) {
        let now = Instant::now();
        if let Some((_, gone)) = self.parents.get_mut(&msg.0) {
            *gone = Some(now);
        }
        self.refresh(now);
    }
}

impl Handler<SetPrewarm> for RequestBook {
    type Result = ();
    fn handle(&mut self, msg: SetPrewarm, _: &mut Context<Self>) {
        if self.prewarm != msg.0 {
            tracing::info!(tables = ?msg.0, "prewarm list changed");
            self.prewarm = msg.0;
        }
        self.refresh(Instant::now());
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
        let (book, rx) =
            RequestBook::new(Duration::from_millis(400), set(&["sys"]), BTreeSet::new());
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
}

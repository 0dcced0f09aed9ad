//! Which configured children a TLA of an aggregator set aggregates: its set's `span`,
//! applied at start and again whenever the aggregator-sets file is edited. A child outside
//! the span keeps its `ChildLink`, but the link sees no address (so it does not dial, and an
//! open session ends as if the address had left the list) and the child is parked in
//! [`Children`] (not merged, not counted). Another set's TLAs aggregate it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::children::Children;
use crate::aggregator_sets::AggregatorSet;
use crate::sql::SqlPool;

pub struct Span {
    children: Arc<Children>,
    /// Per child: whether it is in the span now (its link's addresses are gated by it).
    gates: Mutex<BTreeMap<String, watch::Sender<bool>>>,
}

impl Span {
    pub fn new(children: Arc<Children>) -> Arc<Span> {
        Arc::new(Span {
            children,
            gates: Mutex::default(),
        })
    }

    /// The addresses `child`'s link dials: `addresses` while the child is in the span,
    /// none while it is not.
    pub fn gate(
        &self,
        child: &str,
        in_span: bool,
        mut addresses: watch::Receiver<Vec<String>>,
        pool: &SqlPool,
    ) -> watch::Receiver<Vec<String>> {
        let (gate_tx, mut gate) = watch::channel(in_span);
        self.gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(child.to_string(), gate_tx);
        if !in_span {
            self.children.park(child);
            tracing::info!(
                child,
                "child not in the span of this node's aggregator set: not dialed"
            );
        }
        let shown = |gate: bool, addresses: &[String]| {
            if gate {
                addresses.to_vec()
            } else {
                Vec::new()
            }
        };
        let (tx, rx) = watch::channel(shown(
            *gate.borrow_and_update(),
            &addresses.borrow_and_update(),
        ));
        pool.spawn(async move {
            // Literal addresses never change: their sender is gone from the start.
            let mut resolving = true;
            loop {
                tokio::select! {
                    changed = addresses.changed(), if resolving => resolving = changed.is_ok(),
                    changed = gate.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
                let now = shown(*gate.borrow_and_update(), &addresses.borrow_and_update());
                tx.send_if_modified(|v| std::mem::replace(v, now.clone()) != now);
            }
        });
        rx
    }

    /// Applies `set`'s span: children that left it are parked and their links closed,
    /// children that entered it are dialed. Logged per child (a span edit is rare).
    pub fn apply(&self, set: &AggregatorSet) {
        let gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        for (child, gate) in gates.iter() {
            let now = set.spans(child);
            if *gate.borrow() == now {
                continue;
            }
            if now {
                self.children.unpark(child);
                tracing::info!(child, set = %set.name, "child entered the set's span: dialing it");
            } else {
                self.children.park(child);
                tracing::info!(child, set = %set.name, "child left the set's span: link closed, its rows leave");
            }
            gate.send_replace(now);
        }
        for s in set.span.iter().filter(|s| *s != "*") {
            if !gates.contains_key(s) {
                tracing::warn!(set = %set.name, cluster = %s, "the set's span names a cluster this node has no [[link.child]] for");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn set(span: &str) -> AggregatorSet {
        toml::from_str(&format!(
            "name = \"eu\"\nspan = {span}\nsql_name = \"s\"\ntla_name = \"t\"\n"
        ))
        .expect("set")
    }

    async fn until(rx: &mut watch::Receiver<Vec<String>>, want: &[&str]) {
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|v| v == want))
            .await
            .expect("in time")
            .expect("open");
    }

    #[tokio::test]
    async fn a_span_edit_parks_and_brings_back_children() {
        let pool = SqlPool::new(1).expect("pool");
        let children = Children::new(["eu".into(), "us".into()], Duration::from_secs(10));
        let span = Span::new(children.clone());
        let started = set("[\"eu\"]");
        let addresses = |a: &str| watch::channel(vec![a.to_string()]).1;
        let mut eu = span.gate("eu", started.spans("eu"), addresses("10.0.0.1:7400"), &pool);
        let mut us = span.gate("us", started.spans("us"), addresses("10.0.0.2:7400"), &pool);
        span.apply(&started);
        until(&mut eu, &["10.0.0.1:7400"]).await;
        until(&mut us, &[]).await;
        let names = |c: &Children| c.snapshot().into_keys().collect::<Vec<_>>();
        assert_eq!(names(&children), ["eu"]);

        // The span moves to the other cluster: one link loses its address, the other gets it.
        children.update("us", |s| s.connects = 7);
        span.apply(&set("[\"us\"]"));
        until(&mut eu, &[]).await;
        until(&mut us, &["10.0.0.2:7400"]).await;
        assert_eq!(names(&children), ["us"]);
        assert_eq!(children.snapshot()["us"].connects, 7, "parked state kept");
        // Every cluster.
        span.apply(&set("[\"*\"]"));
        until(&mut eu, &["10.0.0.1:7400"]).await;
        assert_eq!(names(&children), ["eu", "us"]);
    }
}

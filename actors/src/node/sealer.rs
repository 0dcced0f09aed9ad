//! The generation actor: at each seal time it collects every local publisher's rows (on the
//! compute pool), seals them into a generation and hands it to the snapshot keeper.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use actix::prelude::*;

use super::config::GenerationConfig;
use super::messages::InstallGeneration;
use super::schedule::next_seal;
use super::serving::SnapshotKeeper;
use crate::edge::LocalPublisher;
use crate::generation::{Generation, GenerationBuilder};
use crate::metrics::Metrics;
use crate::sql::SqlPool;

pub struct Sealer {
    config: GenerationConfig,
    publishers: Arc<Mutex<Vec<Box<dyn LocalPublisher>>>>,
    keeper: Addr<SnapshotKeeper>,
    pool: SqlPool,
    metrics: Arc<Metrics>,
    next_id: u64,
    sealing: bool,
}

impl Sealer {
    pub fn new(
        config: GenerationConfig,
        publishers: Vec<Box<dyn LocalPublisher>>,
        keeper: Addr<SnapshotKeeper>,
        pool: SqlPool,
        metrics: Arc<Metrics>,
    ) -> Self {
        Sealer {
            config,
            publishers: Arc::new(Mutex::new(publishers)),
            keeper,
            pool,
            metrics,
            next_id: 1,
            sealing: false,
        }
    }

    fn schedule(&self, ctx: &mut Context<Self>) {
        let now = SystemTime::now();
        let at = next_seal(now, self.config.interval, self.config.offset);
        let delay = at.duration_since(now).unwrap_or_default();
        ctx.run_later(delay, |act, ctx| {
            act.seal(ctx);
            act.schedule(ctx);
        });
    }

    fn seal(&mut self, ctx: &mut Context<Self>) {
        if self.sealing {
            // The previous seal still runs: skipping keeps generations whole and in order.
            self.metrics.seals_skipped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("previous generation still sealing; skipping this tick");
            return;
        }
        self.sealing = true;
        let id = self.next_id;
        self.next_id += 1;
        let publishers = self.publishers.clone();
        let work = self
            .pool
            .spawn(async move { collect_and_seal(id, &publishers) });
        ctx.spawn(actix::fut::wrap_future::<_, Self>(work).map(|res, act, _| {
            act.sealing = false;
            match res {
                Ok((generation, took)) => {
                    act.metrics.generations_sealed.fetch_add(1, Ordering::Relaxed);
                    act.metrics.last_seal_micros.store(took.as_micros() as u64, Ordering::Relaxed);
                    tracing::debug!(id = generation.id, tables = generation.tables.len(), ?took, "generation sealed");
                    act.keeper.do_send(InstallGeneration(generation));
                }
                Err(e) => tracing::error!(error = %e, "sealing a generation failed; the previous one stays"),
            }
        }));
    }
}

fn collect_and_seal(
    id: u64,
    publishers: &Mutex<Vec<Box<dyn LocalPublisher>>>,
) -> (Arc<Generation>, std::time::Duration) {
    let started = Instant::now();
    let now = SystemTime::now();
    let mut builder = GenerationBuilder::default();
    // A poisoned lock means a publisher panicked mid-collect; its state is still usable.
    let mut publishers = publishers.lock().unwrap_or_else(|p| p.into_inner());
    for p in publishers.iter_mut() {
        let collected = p.collect(now);
        for (source, message) in collected.errors {
            builder.error(source, message);
        }
        for published in collected.tables {
            if let Err(e) = builder.add(&published.table, published.batch, published.sources) {
                tracing::warn!(publisher = p.name(), error = %e, "rows refused");
            }
        }
    }
    (builder.seal(id, SystemTime::now()), started.elapsed())
}

impl Actor for Sealer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Seal once right away so a fresh node answers within its first interval.
        self.seal(ctx);
        self.schedule(ctx);
    }
}

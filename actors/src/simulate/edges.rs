//! Simulated machines that speak the real link protocol: every interval the fleet moves one
//! step and each machine seals its own generation (its rows of every shipped table), which
//! the machine serves to its parent proxy exactly as an edge agent does (hello, request,
//! full copy, then diffs). Machines listen in process (`mem:sim/<ip>`) so a demo of a
//! thousand machines costs no sockets or file descriptors.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use actix::prelude::*;
use tokio::sync::watch;

use super::FleetSimulator;
use crate::generation::{Generation, GenerationBuilder};
use crate::link::frame::Codec;
use crate::metrics::Metrics;
use crate::node::config::GenerationConfig;
use crate::node::{next_seal, round_of};
use crate::sql::SqlPool;
use crate::table::SchemaRegistry;
use crate::tier::parent_links::{accept_parents, ParentSessions, ServeParents};
use crate::tier::transport::Listener;

/// The in-process address of a simulated machine.
pub fn machine_addr(ip: &str) -> String {
    format!("mem:sim/{ip}")
}

pub struct SimulatedEdges {
    fleet: Arc<Mutex<FleetSimulator>>,
    machines: Arc<BTreeMap<String, watch::Sender<Option<Arc<Generation>>>>>,
    schemas: SchemaRegistry,
    config: GenerationConfig,
    pool: SqlPool,
    next_id: u64,
    busy: bool,
}

impl SimulatedEdges {
    /// Starts listening for every machine of `fleet`; generations start with the actor.
    pub fn new(
        fleet: FleetSimulator,
        schemas: SchemaRegistry,
        config: GenerationConfig,
        codec: Codec,
        pool: SqlPool,
    ) -> Self {
        let metrics = Arc::new(Metrics::default());
        let mut machines = BTreeMap::new();
        for (ip, cluster) in fleet.machine_list() {
            let (tx, rx) = watch::channel(None);
            let serve = ServeParents {
                node: format!("edge@{ip}"),
                role: format!("simulated-edge ({cluster})"),
                codec,
                max_frame_bytes: crate::link::frame::DEFAULT_MAX_FRAME_BYTES,
                generations: rx,
                book: None,
                metrics: metrics.clone(),
                sessions: Arc::new(ParentSessions::default()),
            };
            let listener = Listener::memory(machine_addr(&ip).trim_start_matches("mem:"));
            pool.spawn(accept_parents(listener, serve, pool.clone()));
            machines.insert(ip, tx);
        }
        SimulatedEdges {
            fleet: Arc::new(Mutex::new(fleet)),
            machines: Arc::new(machines),
            schemas,
            config,
            pool,
            next_id: 1,
            busy: false,
        }
    }

    fn schedule(&self, ctx: &mut Context<Self>) {
        let now = SystemTime::now();
        let at = next_seal(now, self.config.interval, self.config.offset);
        ctx.run_later(
            at.duration_since(now).unwrap_or_default(),
            move |act, ctx| {
                act.seal(ctx, at);
                act.schedule(ctx);
            },
        );
    }

    fn seal(&mut self, ctx: &mut Context<Self>, at: SystemTime) {
        if self.busy {
            tracing::warn!("simulated fleet still sealing the previous round; skipping");
            return;
        }
        self.busy = true;
        let id = self.next_id;
        self.next_id += 1;
        let round = round_of(at, self.config.interval, self.config.offset);
        let (fleet, machines, schemas) = (
            self.fleet.clone(),
            self.machines.clone(),
            self.schemas.clone(),
        );
        let work = self.pool.spawn(async move {
            let now = SystemTime::now();
            let per_machine = fleet
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .collect_per_machine(now);
            for (ip, tables) in per_machine {
                let Some(tx) = machines.get(&ip) else {
                    continue;
                };
                let mut b = GenerationBuilder::default();
                for def in schemas.iter() {
                    b.declare(&def.name, def.arrow_schema(true));
                }
                for p in tables {
                    if let Err(e) = b.add(&p.table, p.part) {
                        tracing::warn!(machine = ip, error = %e, "simulated rows refused");
                    }
                }
                b.counts(1, 1);
                tx.send_replace(Some(b.seal(id, round, now)));
            }
        });
        ctx.spawn(actix::fut::wrap_future::<_, Self>(work).map(|res, act, _| {
            act.busy = false;
            if let Err(e) = res {
                tracing::error!(error = %e, "simulating a round failed");
            }
        }));
    }
}

impl Actor for SimulatedEdges {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.seal(ctx, SystemTime::now());
        self.schedule(ctx);
    }
}

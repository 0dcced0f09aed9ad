//! The one-process demo hierarchy (`queryd demo`, `make run`): simulated edges → cluster
//! proxies → this node as TLA/SQL, over the real link protocol on in-process pipes.
//!
//! Tiers seal in order within each interval: edges at the boundary, proxies at half the
//! configured offset, the TLA/SQL node at the offset. The simulated clusters are shared out
//! among the proxies (whole clusters each).

use std::collections::BTreeSet;

use actix::Actor;

use super::children::{ChildListen, Serve, SimulatedChildren};
use super::FleetSimulator;
use crate::error::ConfigError;
use crate::node::config::Role;
use crate::node::{start_node_with, NodeConfig, NodeExtras, NodeHandle};
use crate::sql::SqlPool;
use crate::table::load_schema_dir;
use crate::tier::transport::Listener;

/// Starts the simulated fleet, `proxies` cluster proxies (at most one per cluster; None:
/// one per cluster) and the TLA/SQL node described by `config` (whose `[simulate]`
/// section sizes the fleet); returns the TLA/SQL node.
pub fn start_demo(
    mut config: NodeConfig,
    proxies: Option<usize>,
) -> Result<NodeHandle, ConfigError> {
    let sim = config.simulate.clone().unwrap_or_default();
    sim.validate()?;
    let schemas = load_schema_dir(&config.paths.schemas)?;
    let pool = SqlPool::new(config.sql.threads).map_err(|e| ConfigError::Invalid {
        what: "[sql] threads".into(),
        message: format!("cannot start the compute pool: {e}"),
    })?;
    let fleet = FleetSimulator::new(&sim, schemas.clone());
    let machines = fleet.machine_list();
    let proxies = proxies
        .unwrap_or(sim.clusters)
        .clamp(1, sim.clusters.max(1));
    tracing::info!(
        machines = machines.len(),
        clusters = sim.clusters,
        proxies,
        "simulated fleet ready"
    );

    let interval = config.generation.interval;
    let offset = config.generation.offset;
    let mut edge_gen = config.generation.clone();
    edge_gen.offset = std::time::Duration::ZERO;
    let (edges, children) = SimulatedChildren::new(
        fleet,
        edge_gen,
        config.link.compression,
        pool.clone(),
        Serve::Machines,
        ChildListen::Memory,
    )
    .map_err(|e| ConfigError::Invalid {
        what: "[simulate]".into(),
        message: format!("cannot serve the simulated machines: {e}"),
    })?;
    edges.start();

    // Whole clusters per proxy, in fleet order.
    let clusters: Vec<String> = {
        let mut seen = BTreeSet::new();
        machines
            .iter()
            .filter(|(_, c)| seen.insert(c.clone()))
            .map(|(_, c)| c.clone())
            .collect()
    };
    let proxies = proxies.clamp(1, clusters.len().max(1));
    let per_proxy = clusters.len().div_ceil(proxies);
    let mut proxy_addrs = Vec::new();
    for (p, group) in clusters.chunks(per_proxy.max(1)).enumerate() {
        let mut pc = config.clone();
        pc.role = Role::ClusterProxy;
        pc.host.enabled = false;
        pc.edge = None;
        pc.simulate = None;
        pc.requests.prewarm = None;
        pc.alerts = None;
        pc.history = None;
        pc.pg.listen = None;
        pc.generation.offset = offset / 2;
        pc.link.listen = None;
        pc.link.children = children
            .iter()
            .filter(|c| group.contains(&c.cluster))
            .map(|c| c.addr.clone())
            .collect();
        let name = format!("demo-proxy-{p}");
        // The proxy's parent dials it in process; validate_role wants a listen address for
        // a proxy, which the in-process listener stands in for.
        pc.link.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        pc.node.machine_ip = format!("127.0.1.{}", p + 1);
        start_node_with(
            pc,
            NodeExtras {
                listener: Some(Listener::memory(&name)),
                name: Some(format!("cluster-proxy@mem:{name}")),
                pool: Some(pool.clone()),
                ..NodeExtras::default()
            },
        )?;
        proxy_addrs.push(format!("mem:{name}"));
    }

    // The demo shows everything from the first interval: without a prewarm file, every
    // shipped table is prewarmed.
    let prewarm = if config.requests.prewarm.is_none() {
        schemas.iter().map(|d| d.name.clone()).collect()
    } else {
        BTreeSet::new()
    };
    config.role = Role::TlaSql;
    config.link.children = proxy_addrs;
    config.simulate = None;
    debug_assert!(offset < interval);
    start_node_with(
        config,
        NodeExtras {
            pool: Some(pool),
            prewarm,
            ..NodeExtras::default()
        },
    )
}

//! A running node: its actors (who seals generations, who installs snapshots, who watches
//! files) and the handle the HTTP layer queries through.
//!
//! The roles of the hierarchy (edge, cluster proxy, TLA, SQL node) are built from these
//! pieces; `tla-sql` and `demo` are assembled by [`start_node`].

pub mod config;
mod handle;
pub mod messages;
mod schedule;
mod sealer;
mod serving;
mod watcher;

pub use config::NodeConfig;
pub use handle::{Answer, NodeHandle};
pub use schedule::next_seal;

use std::sync::Arc;

use actix::Actor;
use arc_swap::ArcSwapOption;

use crate::edge::host::{HostIdentity, HostPublisher};
use crate::edge::LocalPublisher;
use crate::error::ConfigError;
use crate::metrics::Metrics;
use crate::simulate::FleetSimulator;
use crate::sql::SqlPool;
use crate::table::load_schema_dir;

/// Starts the actors of a TLA/SQL node (optionally with a simulated fleet) on the current
/// actix system and returns the handle queries go through.
pub fn start_node(config: NodeConfig) -> Result<NodeHandle, ConfigError> {
    let schemas = load_schema_dir(&config.paths.schemas)?;
    let pool = SqlPool::new(config.sql.threads).map_err(|e| ConfigError::Invalid {
        what: "[sql] threads".into(),
        message: format!("cannot start the compute pool: {e}"),
    })?;
    let metrics = Arc::new(Metrics::default());
    let current = Arc::new(ArcSwapOption::empty());

    let mut publishers: Vec<Box<dyn LocalPublisher>> = Vec::new();
    if config.host.enabled {
        let id = HostIdentity {
            machine_ip: config.node.machine_ip.clone(),
            cluster: config.node.cluster.clone(),
            georegion: config.node.georegion,
            roles: config.host.roles.clone(),
        };
        publishers.push(Box::new(HostPublisher::new(id, schemas.clone())));
    }
    if let Some(sim) = &config.simulate {
        let fleet = FleetSimulator::new(sim, schemas.clone());
        tracing::info!(
            machines = fleet.machines(),
            clusters = sim.clusters,
            "simulated fleet ready"
        );
        publishers.push(Box::new(fleet));
    }

    let keeper =
        serving::SnapshotKeeper::new(current.clone(), pool.clone(), metrics.clone()).start();
    watcher::FileWatcher::new(&config.paths, keeper.clone(), pool.clone(), metrics.clone()).start();
    sealer::Sealer::new(
        config.generation.clone(),
        publishers,
        keeper,
        pool.clone(),
        metrics.clone(),
    )
    .start();

    Ok(NodeHandle::new(current, metrics, pool, Arc::new(config)))
}

//! A running node: its actors (who seals generations, who installs snapshots, who watches
//! files) and the handle the HTTP layer queries through.
//!
//! The roles of the hierarchy (edge, cluster proxy, TLA, SQL node) are built from these
//! pieces; `edge`, `tla-sql` and `demo` are assembled by [`start_node`].

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

use crate::edge::config::EdgeConfig;
use crate::edge::file_drop::FileDropPublisher;
use crate::edge::host::{HostIdentity, HostPublisher};
use crate::edge::socket;
use crate::edge::store::{EdgeStore, StoreCollector, WantedOnly};
use crate::edge::LocalPublisher;
use crate::error::ConfigError;
use crate::metrics::Metrics;
use crate::simulate::FleetSimulator;
use crate::sql::SqlPool;
use crate::table::{load_schema_dir, SchemaRegistry};

/// Starts the actors of a node on the current actix system and returns the handle queries
/// go through. The config decides the role: `[edge]` adds the publish socket and file drop
/// (collecting only wanted tables), `[simulate]` a simulated fleet (the demo).
pub fn start_node(config: NodeConfig) -> Result<NodeHandle, ConfigError> {
    let schemas = load_schema_dir(&config.paths.schemas)?;
    let pool = SqlPool::new(config.sql.threads).map_err(|e| ConfigError::Invalid {
        what: "[sql] threads".into(),
        message: format!("cannot start the compute pool: {e}"),
    })?;
    let metrics = Arc::new(Metrics::default());
    let current = Arc::new(ArcSwapOption::empty());

    // Built into the node: the host's own tables and dropped files.
    let mut local: Vec<Box<dyn LocalPublisher>> = Vec::new();
    if config.host.enabled {
        let id = HostIdentity {
            machine_ip: config.node.machine_ip.clone(),
            cluster: config.node.cluster.clone(),
            georegion: config.node.georegion,
            roles: config.host.roles.clone(),
        };
        local.push(Box::new(HostPublisher::new(id, schemas.clone())));
    }
    let mut publishers: Vec<Box<dyn LocalPublisher>> = Vec::new();
    match &config.edge {
        // An edge agent collects only what is wanted: local publishers are filtered, and
        // socket publishers are told what to send.
        Some(edge) => {
            let store = start_edge(edge, &config.node.machine_ip, &schemas, &pool)?;
            if let Some(dir) = &edge.file_drop {
                std::fs::create_dir_all(dir).map_err(|e| ConfigError::io(dir, e))?;
                local.push(Box::new(FileDropPublisher::new(
                    dir.clone(),
                    config.node.machine_ip.clone(),
                    schemas.clone(),
                )));
            }
            for inner in local {
                publishers.push(Box::new(WantedOnly {
                    inner,
                    store: store.clone(),
                }));
            }
            publishers.push(Box::new(StoreCollector(store)));
        }
        None => publishers.extend(local),
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

/// Opens the publish socket (and TCP listener) and returns the store publishers fill.
/// Binding happens here, so a node that cannot listen fails at start with the reason.
fn start_edge(
    edge: &EdgeConfig,
    machine_ip: &str,
    schemas: &SchemaRegistry,
    pool: &SqlPool,
) -> Result<Arc<EdgeStore>, ConfigError> {
    let wanted = if edge.prewarm.iter().any(|t| t == "*") {
        schemas.iter().map(|d| d.name.clone()).collect()
    } else {
        for t in &edge.prewarm {
            if schemas.get(t).is_none() {
                return Err(ConfigError::Invalid {
                    what: "[edge] prewarm".into(),
                    message: format!("no schema for '{t}'"),
                });
            }
        }
        edge.prewarm.iter().cloned().collect()
    };
    let store = Arc::new(EdgeStore::new(
        machine_ip.to_string(),
        schemas.clone(),
        edge.limits(),
        wanted,
    ));
    let listen_err = |what: String, e: std::io::Error| ConfigError::Invalid {
        what,
        message: e.to_string(),
    };
    let unix = socket::bind_unix(&edge.socket, edge.socket_mode)
        .map_err(|e| listen_err(format!("[edge] socket {}", edge.socket.display()), e))?;
    pool.spawn(socket::serve_unix(store.clone(), unix));
    if let Some(addr) = edge.tcp {
        let tcp = std::net::TcpListener::bind(addr)
            .map_err(|e| listen_err(format!("[edge] tcp {addr}"), e))?;
        pool.spawn(socket::serve_tcp(store.clone(), tcp));
    }
    Ok(store)
}

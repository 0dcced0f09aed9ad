//! `queryd simulate`: a simulated fleet on its own, serving its machines (for real cluster
//! proxies) or its clusters (for real TLAs) over TCP, so benchmarks and tests measure the
//! production path from the first link up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use actix::Actor;

use super::children::{ChildListen, Serve, SimChild, SimulatedChildren};
use super::{FleetSimulator, SimulateConfig};
use crate::error::ConfigError;
use crate::link::frame::Codec;
use crate::node::config::GenerationConfig;
use crate::sql::SqlPool;
use crate::table::load_schema_dir;

/// Everything `queryd simulate` is told.
#[derive(Debug, Clone)]
pub struct StandaloneConfig {
    pub fleet: SimulateConfig,
    pub serve: Serve,
    /// The first child listens here, child `i` on the same address at port + `i`.
    pub listen: SocketAddr,
    pub generation: GenerationConfig,
    pub compression: Codec,
    pub schemas: PathBuf,
    /// Compute threads (0: one per core).
    pub threads: usize,
}

/// Starts the fleet inside the running actix system; returns its children in fleet order.
pub fn start_standalone(cfg: &StandaloneConfig) -> Result<Vec<SimChild>, ConfigError> {
    cfg.fleet.validate()?;
    if cfg.generation.offset >= cfg.generation.interval {
        return Err(ConfigError::Invalid {
            what: "--offset".into(),
            message: "must be less than the interval".into(),
        });
    }
    let schemas = load_schema_dir(&cfg.schemas)?;
    let pool = SqlPool::new(cfg.threads).map_err(|e| ConfigError::Invalid {
        what: "--threads".into(),
        message: format!("cannot start the compute pool: {e}"),
    })?;
    let fleet = FleetSimulator::new(&cfg.fleet, schemas);
    let (actor, children) = SimulatedChildren::new(
        fleet,
        cfg.generation.clone(),
        cfg.compression,
        pool,
        cfg.serve,
        ChildListen::Tcp {
            ip: cfg.listen.ip(),
            first_port: cfg.listen.port(),
        },
    )
    .map_err(|e| ConfigError::Invalid {
        what: "--listen".into(),
        message: e.to_string(),
    })?;
    actor.start();
    tracing::info!(
        machines = cfg.fleet.machines,
        clusters = cfg.fleet.clusters,
        children = children.len(),
        serve = ?cfg.serve,
        first = children.first().map(|c| c.addr.as_str()).unwrap_or(""),
        last = children.last().map(|c| c.addr.as_str()).unwrap_or(""),
        "simulated fleet serving"
    );
    Ok(children)
}

/// `[link] children = [...]` for the parents of `children`, as TOML to paste or include.
pub fn children_toml(children: &[SimChild]) -> String {
    let list: Vec<String> = children
        .iter()
        .map(|c| format!("  \"{}\",", c.addr))
        .collect();
    format!(
        "# {} simulated children ({} machines), written by `queryd simulate`\nchildren = [\n{}\n]\n",
        children.len(),
        children.iter().map(|c| c.machines).sum::<u64>(),
        list.join("\n")
    )
}

/// Writes [`children_toml`] to `path`.
pub fn write_children_file(path: &Path, children: &[SimChild]) -> std::io::Result<()> {
    std::fs::write(path, children_toml(children))
}

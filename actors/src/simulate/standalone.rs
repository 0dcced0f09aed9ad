//! `queryd simulate`: a simulated fleet on its own, serving its machines (for real cluster
//! proxies) or its clusters (for real TLAs) over TCP, so benchmarks and tests measure the
//! production path from the first link up. With TLS (`--tls-cert/--tls-key/--tls-ca`)
//! every child requires its parents' client certificates, as a node's `[link.tls]` does.

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
use crate::tls::{server_config, ClientCerts, TlsConfig};

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
    /// Mutual TLS for every child (`ca` required): parents must present a certificate a
    /// CA of `ca` signed. None: plain TCP.
    pub tls: Option<TlsConfig>,
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
    // Loaded once, before any port is bound: a bad file stops the start naming it.
    let tls = match &cfg.tls {
        Some(t) => {
            t.validate("--tls-*")?;
            Some(
                server_config(t, ClientCerts::Required).map_err(|e| ConfigError::Invalid {
                    what: "--tls-*".into(),
                    message: e.to_string(),
                })?,
            )
        }
        None => None,
    };
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
            tls,
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
        tls = cfg.tls.is_some(),
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

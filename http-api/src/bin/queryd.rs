//! `queryd`: one binary, a subcommand per role.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use query_actors::node::{start_node, NodeConfig};
use query_actors::simulate::SimulateConfig;

/// Embedded defaults: the example files, read as if they sat in `ops/` under the working
/// directory (the repository root, for `make run`).
const DEMO_DEFAULT: &str = include_str!("../../../ops/demo.example.toml");
const TLA_SQL_DEFAULT: &str = include_str!("../../../ops/tla-sql.example.toml");
const EDGE_DEFAULT: &str = include_str!("../../../ops/edge.example.toml");

#[derive(Parser)]
#[command(
    name = "queryd",
    version,
    about = "Query: SQL over the live state of a whole fleet"
)]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// An edge agent: collects tables from local publishers (socket, dropped files, this
    /// host) and seals a generation of the wanted ones every interval.
    Edge(Common),
    /// A TLA/SQL node: aggregates its inputs and answers SQL over HTTP.
    TlaSql(Common),
    /// A TLA/SQL node fed by this machine and a simulated fleet (what `make run` starts).
    Demo(DemoArgs),
    /// Parse and validate a node configuration file, then exit.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Args)]
struct Common {
    /// Node configuration (see ops/<role>.example.toml). Without it, the example's defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides [http] listen, e.g. 127.0.0.1:0 for any free port.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Overrides [generation] interval, e.g. 1s.
    #[arg(long, value_parser = humantime::parse_duration)]
    interval: Option<Duration>,
}

#[derive(Args)]
struct DemoArgs {
    #[command(flatten)]
    common: Common,
    /// Simulated machines.
    #[arg(long)]
    machines: Option<usize>,
    /// Simulated clusters.
    #[arg(long)]
    clusters: Option<usize>,
}

fn load(common: &Common, default: &str, origin: &str) -> Result<NodeConfig, String> {
    let mut cfg = match &common.config {
        Some(path) => NodeConfig::load(path),
        None => NodeConfig::parse(default, origin, Path::new("ops")),
    }
    .map_err(|e| e.to_string())?;
    if let Some(listen) = common.listen {
        cfg.http.listen = listen;
    }
    if let Some(interval) = common.interval {
        cfg.generation.interval = interval;
        cfg.generation.offset = cfg.generation.offset.min(interval / 10);
    }
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let cfg = match &cli.role {
        Role::Edge(common) => load(common, EDGE_DEFAULT, "embedded edge default"),
        Role::TlaSql(common) => load(common, TLA_SQL_DEFAULT, "embedded tla-sql default"),
        Role::Demo(args) => {
            load(&args.common, DEMO_DEFAULT, "embedded demo default").map(|mut cfg| {
                let sim = cfg.simulate.get_or_insert_with(SimulateConfig::default);
                if let Some(m) = args.machines {
                    sim.machines = m;
                }
                if let Some(c) = args.clusters {
                    sim.clusters = c;
                }
                cfg
            })
        }
        Role::CheckConfig { config } => {
            return match NodeConfig::load(config) {
                Ok(_) => {
                    println!("{}: ok", config.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    let cfg = match cfg.and_then(|c| c.validate().map(|_| c).map_err(|e| e.to_string())) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("queryd: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let result = actix_web::rt::System::new().block_on(async move {
        let node = start_node(cfg).map_err(|e| e.to_string())?;
        query_http::serve(node).await.map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("queryd: {e}");
            ExitCode::FAILURE
        }
    }
}

//! `queryd`: one binary, a subcommand per role.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use query_actors::link::frame::Codec;
use query_actors::node::config::GenerationConfig;
use query_actors::node::{start_node, NodeConfig, Role as NodeRole};
use query_actors::simulate::children::Serve;
use query_actors::simulate::hierarchy::start_demo;
use query_actors::simulate::standalone::{start_standalone, write_children_file, StandaloneConfig};
use query_actors::simulate::SimulateConfig;
use query_actors::tls::ca::{self, CertSpec};
use query_actors::tls::TlsConfig;

/// A built-in configuration: its text, and the directory its relative paths start from
/// (where its file sits, under the working directory: the repository root for `make run`).
struct Builtin {
    text: &'static str,
    base: &'static str,
}

/// The demo: `ops/demo.example.toml` is both the example and what `queryd demo` runs.
const DEMO_DEFAULT: Builtin = Builtin {
    text: include_str!("../../../ops/demo.example.toml"),
    base: "ops",
};
/// The other roles without --config: `ops/defaults/<role>.toml`, compiled in: loopback only,
/// plaintext, no tokens. The production examples, `ops/<role>.example.toml`, name files
/// under /etc/query/ and so cannot be defaults.
macro_rules! role_default {
    ($role:literal) => {
        Builtin {
            text: include_str!(concat!("../../../ops/defaults/", $role, ".toml")),
            base: "ops/defaults",
        }
    };
}

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
    /// host), seals a generation of the wanted ones every interval, serves its proxy.
    Edge(Common),
    /// A cluster proxy: merges the generations of its cluster's machines (and its own
    /// rows), serves TLAs.
    ClusterProxy(Common),
    /// A top-level aggregator: merges all clusters, serves SQL nodes.
    Tla(Common),
    /// A SQL node: takes generations from a TLA and answers SQL over HTTP.
    Sql(Common),
    /// A TLA/SQL node: aggregates the clusters and answers SQL over HTTP.
    TlaSql(Common),
    /// A TLA child: merges the tables a TLA defers to it (`[tla_children]` of the TLA)
    /// and sends them back merged.
    TlaChild(Common),
    /// The whole hierarchy in one process: simulated edges → cluster proxies → TLA/SQL
    /// (what `make run` starts).
    Demo(DemoArgs),
    /// A simulated fleet serving its machines (for cluster proxies) or whole clusters (for
    /// TLAs) over TCP with the real link protocol: child i listens on --listen's port + i.
    Simulate(SimulateArgs),
    /// A small CA for tests and the demo: `ca init` makes one, `ca issue` a node certificate
    /// signed by it, for `[link.tls]` (README.md, "TLS between tiers").
    #[command(subcommand)]
    Ca(CaCommand),
    /// Parse and validate a node configuration file, then exit.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Make an HTTP token: prints a new random secret (once: it is not stored anywhere) and
    /// the `[[token]]` entry to add to the node's `[auth] tokens_file`.
    Token(TokenArgs),
}

#[derive(Args)]
struct TokenArgs {
    /// The identity (admission fairness, quarantine and logs name the client by it).
    #[arg(long)]
    name: String,
    /// An aggregator-set domain the token is for (repeat for several; "*": all).
    #[arg(long = "domain", required = true)]
    domains: Vec<String>,
    /// A table it may read (repeat for several); none given: every table of its domains.
    #[arg(long = "table")]
    tables: Vec<String>,
    /// May call admin endpoints (POST /admin/...).
    #[arg(long)]
    admin: bool,
}

fn make_token(args: &TokenArgs) -> ExitCode {
    let tables = (!args.tables.is_empty()).then_some(args.tables.as_slice());
    match query_actors::auth::tokens::generate(&args.name, &args.domains, tables, args.admin) {
        Ok((secret, entry)) => {
            println!(
                "secret (shown once; send it as `Authorization: Bearer <secret>`):\n{secret}\n"
            );
            println!("add to the tokens file ([auth] tokens_file):\n\n{entry}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("queryd token: {e}");
            ExitCode::from(2)
        }
    }
}

#[derive(Subcommand)]
enum CaCommand {
    /// Makes DIR/ca.pem (every node's `ca`) and DIR/ca.key (keep it on this machine); never
    /// replaces an existing CA.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// The CA's name (its certificate's common name).
        #[arg(long, default_value = "Query fleet CA")]
        name: String,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Makes DIR/NAME.pem and DIR/NAME.key, signed by the CA in DIR: a node certificate, both
    /// server and client certificate. Issuing a name again replaces its files (rotation:
    /// restart the node to use them).
    Issue {
        #[arg(long)]
        dir: PathBuf,
        /// The node's name: the files' names and the certificate's common name.
        #[arg(long)]
        name: String,
        /// An address the node is dialed at (repeat for several); parents check it.
        #[arg(long)]
        ip: Vec<IpAddr>,
        /// A DNS name the certificate carries (repeat for several; `[link.tls] server_name`).
        #[arg(long)]
        dns: Vec<String>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

/// Runs `queryd ca ...`.
fn run_ca(cmd: &CaCommand) -> ExitCode {
    let result = match cmd {
        CaCommand::Init { dir, name, days } => ca::init_dir(dir, &CertSpec::for_days(name, *days))
            .map(|cert| {
                println!(
                    "CA made: {} (give it to every node as [link.tls] ca), key {} (keep it here)",
                    cert.display(),
                    dir.join("ca.key").display()
                );
            }),
        CaCommand::Issue {
            dir,
            name,
            ip,
            dns,
            days,
        } => {
            let mut spec = CertSpec::for_days(name, *days);
            spec.ips = ip.clone();
            spec.dns = dns.clone();
            ca::issue_in_dir(dir, &spec).map(|cert| {
                println!(
                    "issued {} and {} for {name}, valid {days} days",
                    cert.display(),
                    dir.join(format!("{name}.key")).display()
                );
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("queryd ca: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Args)]
struct Common {
    /// Node configuration (see ops/<role>.example.toml). Without it, the built-in loopback
    /// default (ops/defaults/<role>.toml; the demo's is ops/demo.example.toml).
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
    /// Cluster proxies between the simulated machines and the TLA/SQL node (whole
    /// clusters each); default: one per cluster, as in a real fleet.
    #[arg(long)]
    proxies: Option<usize>,
}

#[derive(Args)]
struct SimulateArgs {
    /// Simulated machines.
    #[arg(long, default_value_t = 1000)]
    machines: usize,
    /// Simulated clusters (machines are shared out evenly).
    #[arg(long, default_value_t = 20)]
    clusters: usize,
    /// Share of machines whose values change each generation.
    #[arg(long, default_value_t = 0.2)]
    churn: f64,
    /// Seed of the simulation (the same seed, the same fleet).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// What each child is: a machine (parents are cluster proxies) or a whole cluster
    /// (parents are TLAs).
    #[arg(long, value_enum, default_value_t = ServeArg::Clusters)]
    serve: ServeArg,
    /// Address of the first child; child i listens on the same IP at port + i.
    #[arg(long, default_value = "127.0.0.1:7600")]
    listen: SocketAddr,
    /// Generation interval: use the fleet's.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    interval: Duration,
    /// Seal this long past each interval boundary (before the parents' offset).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    offset: Duration,
    /// Link compression of the frames sent.
    #[arg(long, value_enum, default_value_t = CodecArg::Zstd)]
    compression: CodecArg,
    /// The table schemas to publish.
    #[arg(long, default_value = "schemas")]
    schemas: PathBuf,
    /// Compute threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Write the children's addresses here as `children = [...]` (TOML) for the parents.
    #[arg(long)]
    children_file: Option<PathBuf>,
    /// Mutual TLS on every child, as a node's `[link.tls]`: this certificate (PEM chain;
    /// issue it for the --listen IP), with --tls-key and --tls-ca (all three or none).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// The CA bundle parents' client certificates must be signed by (PEM).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
}

/// `[link.tls]` for the simulated children from `--tls-cert/--tls-key/--tls-ca`: all three
/// or none.
fn simulate_tls(args: &SimulateArgs) -> Result<Option<TlsConfig>, String> {
    match (&args.tls_cert, &args.tls_key, &args.tls_ca) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsConfig {
            cert: cert.clone(),
            key: key.clone(),
            ca: Some(ca.clone()),
            server_name: None,
        })),
        (cert, key, ca) => {
            let missing: Vec<&str> = [
                ("--tls-cert", cert.is_none()),
                ("--tls-key", key.is_none()),
                ("--tls-ca", ca.is_none()),
            ]
            .into_iter()
            .filter_map(|(flag, missing)| missing.then_some(flag))
            .collect();
            Err(format!(
                "TLS needs --tls-cert, --tls-key and --tls-ca together; missing {}",
                missing.join(", ")
            ))
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum ServeArg {
    Machines,
    Clusters,
}

#[derive(Clone, Copy, ValueEnum)]
enum CodecArg {
    None,
    Lz4,
    Zstd,
}

/// Runs `queryd simulate` until the process is stopped.
fn simulate(args: &SimulateArgs) -> ExitCode {
    let tls = match simulate_tls(args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("queryd simulate: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = StandaloneConfig {
        fleet: SimulateConfig {
            machines: args.machines,
            clusters: args.clusters,
            churn: args.churn,
            seed: args.seed,
            ..SimulateConfig::default()
        },
        serve: match args.serve {
            ServeArg::Machines => Serve::Machines,
            ServeArg::Clusters => Serve::Clusters,
        },
        listen: args.listen,
        generation: GenerationConfig {
            interval: args.interval,
            offset: args.offset,
        },
        compression: match args.compression {
            CodecArg::None => Codec::None,
            CodecArg::Lz4 => Codec::Lz4,
            CodecArg::Zstd => Codec::Zstd,
        },
        schemas: args.schemas.clone(),
        threads: args.threads,
        tls,
    };
    let children_file = args.children_file.clone();
    let result = actix_web::rt::System::new().block_on(async move {
        let children = start_standalone(&cfg).map_err(|e| (2, e.to_string()))?;
        if let Some(path) = children_file {
            write_children_file(&path, &children)
                .map_err(|e| (1, format!("writing {}: {e}", path.display())))?;
        }
        println!(
            "simulating {} machines as {} children on {} to {}",
            children.iter().map(|c| c.machines).sum::<u64>(),
            children.len(),
            children.first().map(|c| c.addr.as_str()).unwrap_or("-"),
            children.last().map(|c| c.addr.as_str()).unwrap_or("-"),
        );
        // Serves until the process is stopped.
        std::future::pending::<()>().await;
        Ok::<(), (u8, String)>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, e)) => {
            eprintln!("queryd simulate: {e}");
            ExitCode::from(code)
        }
    }
}

fn load(
    common: &Common,
    default: &Builtin,
    origin: &str,
    role: NodeRole,
) -> Result<NodeConfig, String> {
    let mut cfg = match &common.config {
        Some(path) => NodeConfig::load(path),
        None => NodeConfig::parse(default.text, origin, Path::new(default.base)),
    }
    .map_err(|e| e.to_string())?;
    if let Some(listen) = common.listen {
        cfg.http.listen = listen;
    }
    if let Some(interval) = common.interval {
        cfg.generation.interval = interval;
        cfg.generation.offset = cfg.generation.offset.min(interval / 10);
    }
    cfg.role = role;
    cfg.validate().map_err(|e| e.to_string())?;
    cfg.validate_role().map_err(|e| e.to_string())?;
    Ok(cfg)
}

fn main() -> ExitCode {
    query_actors::heap::no_huge_pages();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let cfg = match &cli.role {
        Role::Edge(c) => load(
            c,
            &role_default!("edge"),
            "embedded edge default",
            NodeRole::Edge,
        ),
        Role::ClusterProxy(c) => load(
            c,
            &role_default!("cluster-proxy"),
            "embedded cluster-proxy default",
            NodeRole::ClusterProxy,
        ),
        Role::Tla(c) => load(
            c,
            &role_default!("tla"),
            "embedded tla default",
            NodeRole::Tla,
        ),
        Role::Sql(c) => load(
            c,
            &role_default!("sql"),
            "embedded sql default",
            NodeRole::Sql,
        ),
        Role::TlaSql(c) => load(
            c,
            &role_default!("tla-sql"),
            "embedded tla-sql default",
            NodeRole::TlaSql,
        ),
        Role::TlaChild(c) => load(
            c,
            &role_default!("tla-child"),
            "embedded tla-child default",
            NodeRole::TlaChild,
        ),
        Role::Demo(args) => load(
            &args.common,
            &DEMO_DEFAULT,
            "embedded demo default",
            NodeRole::TlaSql,
        )
        .map(|mut cfg| {
            let sim = cfg.simulate.get_or_insert_with(SimulateConfig::default);
            if let Some(m) = args.machines {
                sim.machines = m;
            }
            if let Some(c) = args.clusters {
                sim.clusters = c;
            }
            cfg
        }),
        Role::Simulate(args) => return simulate(args),
        Role::Ca(cmd) => return run_ca(cmd),
        Role::Token(args) => return make_token(args),
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
    let demo_proxies = match &cli.role {
        Role::Demo(args) => Some(args.proxies),
        _ => None,
    };
    let result = actix_web::rt::System::new().block_on(async move {
        let node = match demo_proxies {
            Some(proxies) => start_demo(cfg, proxies),
            None => start_node(cfg),
        }
        .map_err(|e| e.to_string())?;
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

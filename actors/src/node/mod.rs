//! A running node: its actors (who seals generations, who installs snapshots, who watches
//! files, who keeps the links to children and serves parents, who keeps the request book)
//! and the handle the HTTP layer queries through.
//!
//! Every role is assembled by [`start_node`] from the same pieces; the config's
//! [`Role`] decides which are present.

mod admission;
mod completeness;
pub mod config;
mod departed;
mod handle;
pub mod messages;
pub mod quarantine;
mod reconfigure;
mod schedule;
mod sealer;
mod self_tables;
mod serving;
pub mod simulate_config;
pub mod supervisor;
mod watcher;

pub use admission::{AdmissionLimits, Admitted, ClassCounts};
pub use completeness::{Completeness, MinCompleteness};
pub use config::{NodeConfig, Role};
pub use handle::{Answer, NodeHandle, Queries};
use quarantine::QuarantineTable;
pub use schedule::{next_seal, round_of};
pub use sealer::{add_merged, ClusterCount};

use std::collections::BTreeSet;
use std::sync::Arc;

use actix::Actor;
use arc_swap::ArcSwapOption;
use tokio::sync::watch;

use crate::aggregator_sets::Routing;
use crate::alerts::tables::{AlertEventsTable, AlertsTable};
use crate::alerts::{AlertEvaluator, AlertsShared};
use crate::edge::config::EdgeConfig;
use crate::edge::file_drop::FileDropPublisher;
use crate::edge::host::{HostIdentity, HostPublisher};
use crate::edge::socket;
use crate::edge::store::{EdgeStore, StoreCollector};
use crate::edge::LocalPublisher;
use crate::error::ConfigError;
use crate::history::{self, HistoryKeeper, HistorySchema, HistoryShared};
use crate::metrics::Metrics;
use crate::sql::{ComputedTable, PlanCache, SqlPool};
use crate::table::{load_schema_dir, SchemaRegistry};
use crate::tier::admission::ListenLimits;
use crate::tier::child_link::ChildLink;
use crate::tier::names::watch_addresses_supervised;
use crate::tier::parent_links::{accept_parents, ParentSessions, ServeParents};
use crate::tier::span::Span;
use crate::tier::tla_children::link::TlaChildLink;
use crate::tier::tla_children::serve::{accept_tlas, ServeTla};
use crate::tier::tla_children::Deferral;
use crate::tier::tla_selection::{SharedSelection, TlaSelector};
use crate::tier::transport::{Dialer, Listener};
use crate::tier::{Children, PrewarmFile, RequestBook};
use crate::tls::MutualTls;

/// What an embedding process (the one-process demo) adds to a node.
#[derive(Default)]
pub struct NodeExtras {
    /// Serve parents here instead of `[link] listen` (an in-process listener).
    pub listener: Option<Listener>,
    /// Share a compute pool instead of starting one.
    pub pool: Option<SqlPool>,
    /// More local publishers.
    pub publishers: Vec<Box<dyn LocalPublisher>>,
    /// Tables always requested, beside the configured prewarm.
    pub prewarm: BTreeSet<String>,
    /// The name the node goes by (default `role@listen address`).
    pub name: Option<String>,
}

/// Starts the actors of a node on the current actix system and returns the handle queries
/// go through.
pub fn start_node(config: NodeConfig) -> Result<NodeHandle, ConfigError> {
    start_node_with(config, NodeExtras::default())
}

pub fn start_node_with(config: NodeConfig, extras: NodeExtras) -> Result<NodeHandle, ConfigError> {
    config.validate_role()?;
    let schemas = load_schema_dir(&config.paths.schemas)?;
    let pool = match extras.pool {
        Some(p) => p,
        None => SqlPool::new(config.sql.threads).map_err(|e| ConfigError::Invalid {
            what: "[sql] threads".into(),
            message: format!("cannot start the compute pool: {e}"),
        })?,
    };
    let metrics = Arc::new(Metrics::default());
    // Every long-lived part below is started under it (restarted when it ends or panics).
    let supervisor = supervisor::Supervisor::new(config.role.name(), metrics.clone());
    let current = Arc::new(ArcSwapOption::empty());
    let name = extras.name.unwrap_or_else(|| node_name(&config));

    // The request book: prewarm (file and edge list), parents' requests, queries' uses.
    let prewarm = match &config.requests.prewarm {
        Some(path) => load_prewarm(path, &schemas)?,
        None => BTreeSet::new(),
    };
    let mut fixed = extras.prewarm;
    if let Some(edge) = &config.edge {
        fixed.extend(prewarm_list("[edge] prewarm", &edge.prewarm, &schemas)?);
    }
    // An aggregator set's prewarm, and this node's partition's tables, always requested
    // (replaced when the sets file is edited).
    let (set_tables, routing) = match &config.aggregator_set {
        Some(a) => {
            let (set, partition) = a.load()?;
            (
                set_tables(&set, partition.as_ref(), config.role, &schemas)?,
                Routing::new(&set, partition.as_ref()),
            )
        }
        None => (BTreeSet::new(), None),
    };
    let routing = Arc::new(ArcSwapOption::from(routing.map(Arc::new)));
    // Who may use the HTTP API: the tokens file, the set's domains and names.
    let set = config
        .aggregator_set
        .as_ref()
        .map(|a| a.load())
        .transpose()?;
    let auth = Arc::new(crate::auth::Auth::new(&config, set.as_ref())?);
    let (book, wanted) = RequestBook::new(config.requests.request_ttl, fixed, prewarm, set_tables);
    let book = supervisor.start_actor("request_book", book.supervised(&supervisor));

    // This machine's own rows: the host, the publish socket, dropped files.
    let mut local: Vec<Box<dyn LocalPublisher>> = extras.publishers;
    if config.host.enabled {
        let id = HostIdentity {
            machine_ip: config.node.machine_ip.clone(),
            cluster: config.node.cluster.clone(),
            georegion: config.node.georegion,
            roles: config.host.roles.clone(),
        };
        local.push(Box::new(HostPublisher::new(id, schemas.clone())));
    }
    if let Some(edge) = &config.edge {
        let store = start_edge(
            edge,
            &config.node.machine_ip,
            &schemas,
            &pool,
            wanted.clone(),
            &metrics,
            &supervisor,
        )?;
        if let Some(drop) = edge.file_drop_config() {
            std::fs::create_dir_all(&drop.dir).map_err(|e| ConfigError::io(&drop.dir, e))?;
            local.push(Box::new(FileDropPublisher::start(
                drop,
                config.node.machine_ip.clone(),
                schemas.clone(),
                &pool,
                &supervisor,
            )));
        }
        local.push(Box::new(StoreCollector(store)));
    }

    let local_machine = config.host.enabled || config.edge.is_some();

    // Mutual TLS on links: read and checked now, so a bad file stops the start naming it.
    let link_tls = match &config.link.tls {
        Some(t) => Some(MutualTls::load(t).map_err(|e| ConfigError::Invalid {
            what: "[link.tls]".into(),
            message: e.to_string(),
        })?),
        None => None,
    };
    let dialer = Dialer::new(link_tls.as_ref());

    // The tier below. A SQL node has one child, its TLA, at the address its selector
    // chooses among the candidates; other roles dial each configured child at its
    // addresses (names kept resolved).
    let mut selection = None;
    let mut selector = None;
    let specs: Vec<(String, watch::Receiver<Vec<String>>)> = if config.role == Role::Sql {
        let candidates = watch_addresses_supervised(
            config.tla_candidates()?,
            &config.dns,
            &pool,
            &supervisor,
            "dns:tla_selection",
        );
        let (chosen, address) = watch::channel(Vec::new());
        let shared = SharedSelection::default();
        selector = Some(supervisor.start_actor(
            "tla_selector",
            TlaSelector::new(
                config.tla_selection.clone(),
                candidates,
                chosen,
                config.link.connect_timeout,
                // An advert is a few names and numbers.
                config.link.max_request_frame_bytes,
                pool.clone(),
                shared.clone(),
                metrics.clone(),
                dialer.clone(),
            ),
        ));
        selection = Some(shared);
        vec![("tla".to_string(), address)]
    } else {
        config
            .link
            .child_specs()
            .into_iter()
            .map(|c| {
                let dns = format!("dns:child:{}", c.name);
                let addresses =
                    watch_addresses_supervised(c.addresses, &config.dns, &pool, &supervisor, &dns);
                (c.name, addresses)
            })
            .collect()
    };
    // A TLA's TLA children (`[tla_children]`, applied live): its cluster links forward
    // the deferred tables to them.
    let deferral = (matches!(config.role, Role::Tla | Role::TlaSql) && !specs.is_empty())
        .then(|| Deferral::new(config.tla_children.clone(), name.clone(), metrics.clone()));
    let start_tla_child = deferral.clone().map(|d| {
        let (me, link, pool, dialer) = (
            name.clone(),
            Arc::new(config.link.clone()),
            pool.clone(),
            dialer.clone(),
        );
        Box::new(move |address: String| {
            TlaChildLink::new(
                address,
                me.clone(),
                d.clone(),
                link.clone(),
                pool.clone(),
                dialer.clone(),
            )
            .start();
        }) as Box<dyn Fn(String)>
    });
    if let Some(start) = &start_tla_child {
        for address in &config.tla_children.children {
            start(address.clone());
        }
    }
    let mut span = None;
    // A node with parents forwards the patches its children send (link/diff/forward.rs).
    let serves_parents = extras.listener.is_some() || config.link.listen.is_some();
    let children = (!specs.is_empty()).then(|| {
        let children = Children::new(specs.iter().map(|(n, _)| n.clone()), config.link.drop_after);
        // A TLA of an aggregator set dials the clusters of its span only (edits apply live).
        let in_span = match (&set, selection.is_none()) {
            (Some((set, _)), true) => {
                let s = span.insert(Span::new(children.clone()));
                Some((set, s.clone()))
            }
            _ => None,
        };
        let link_config = Arc::new(config.link.clone());
        for (child, addresses) in specs {
            let addresses = match &in_span {
                Some((set, span)) => span.gate(&child, set.spans(&child), addresses, &pool),
                None => addresses,
            };
            ChildLink::new(
                child,
                addresses,
                name.clone(),
                link_config.clone(),
                children.clone(),
                wanted.clone(),
                pool.clone(),
                metrics.clone(),
                dialer.clone(),
            )
            .supervised(&supervisor)
            .with_deferral(deferral.clone())
            .forwarding(serves_parents)
            .start();
        }
        if let Some((set, span)) = &in_span {
            span.apply(set);
        }
        children
    });

    // The tier above.
    let (published, generations) = watch::channel(None);
    let sessions = Arc::new(ParentSessions::default());
    if extras.listener.is_some() || config.link.listen.is_some() {
        sessions.supervised(&supervisor);
    }
    let started = Arc::new(std::sync::OnceLock::new());
    local.push(Box::new(self_tables::SelfMonitor {
        machine_ip: config.node.machine_ip.clone(),
        node: name.clone(),
        role: config.role.name(),
        schemas: schemas.clone(),
        metrics: metrics.clone(),
        children: children.clone(),
        tla_children: deferral.clone(),
        parents: sessions.clone(),
        generations: generations.clone(),
        wanted: wanted.clone(),
        departures: Default::default(),
        departed_keep: config.link.departed_keep,
        supervisor: supervisor.clone(),
        handle: started.clone(),
    }));
    let mut serve = ServeParents {
        node: name.clone(),
        role: config.role.name().to_string(),
        codec: config.link.compression,
        limits: ListenLimits::from(&config.link),
        generations,
        book: Some(book.clone()),
        metrics: metrics.clone(),
        sessions: sessions.clone(),
        tls: None,
        keys: crate::link::diff::table_keys(&schemas),
    };
    match (extras.listener, config.link.listen) {
        (None, Some(addr)) if config.role == Role::TlaChild => {
            let serve = ServeTla {
                node: name.clone(),
                codec: config.link.compression,
                limits: ListenLimits::from(&config.link),
                max_frame_bytes: config.link.max_frame_bytes,
                drop_after: config.link.drop_after,
                tls: link_tls.as_ref().map(|t| t.server.clone()),
            };
            let std_listener = bind_link(addr)?;
            let p = pool.clone();
            // The bound socket outlives the accept loop: a restart accepts on a copy of it.
            supervisor.spawn_task("tla_listener", &pool, move || {
                let (serve, p) = (serve.clone(), p.clone());
                let listener = std_listener.try_clone();
                async move {
                    match listener.and_then(tokio::net::TcpListener::from_std) {
                        Ok(l) => accept_tlas(Listener::Tcp(l), serve, p).await,
                        Err(e) => tracing::error!(error = %e, "cannot serve the TLA"),
                    }
                }
            });
            tracing::info!(%addr, "serving a TLA as its TLA child");
        }
        (Some(listener), _) => {
            // In-process: a restart listens again under the same name.
            let again = match &listener {
                Listener::Memory(name, _) => Some(name.clone()),
                Listener::Tcp(_) => None,
            };
            let (mut first, p) = (Some(listener), pool.clone());
            supervisor.spawn_task("link_listener", &pool, move || {
                let listener = first
                    .take()
                    .or_else(|| again.as_deref().map(Listener::memory));
                let (serve, p) = (serve.clone(), p.clone());
                async move {
                    match listener {
                        Some(l) => accept_parents(l, serve, p).await,
                        None => tracing::error!("an embedder's TCP listener cannot listen again"),
                    }
                }
            });
        }
        (None, Some(addr)) => {
            serve.tls = link_tls.as_ref().map(|t| t.server.clone());
            let std_listener = bind_link(addr)?;
            let p = pool.clone();
            let serve_tls = serve.tls.is_some();
            // The bound socket outlives the accept loop: a restart accepts on a copy of it.
            supervisor.spawn_task("link_listener", &pool, move || {
                let (serve, p) = (serve.clone(), p.clone());
                let listener = std_listener.try_clone();
                async move {
                    match listener.and_then(tokio::net::TcpListener::from_std) {
                        Ok(l) => accept_parents(Listener::Tcp(l), serve, p).await,
                        Err(e) => tracing::error!(error = %e, "cannot serve parents"),
                    }
                }
            });
            tracing::info!(%addr, tls = serve_tls, "serving parents");
        }
        (None, None) => {}
    }

    let clusters = match config.role {
        config::Role::Tla | config::Role::TlaSql if children.is_some() => ClusterCount::Children,
        config::Role::Sql => ClusterCount::FromChildren,
        _ => ClusterCount::One,
    };
    let inputs = sealer::SealInputs {
        sourced: schemas
            .iter()
            .filter(|d| d.sourced)
            .map(|d| d.name.clone())
            .collect(),
        local_machine,
        merge_grace: config.link.merge_grace.min(config.generation.interval / 2),
        follow_children: config.role == Role::Sql,
        seal_when_delivered: config.link.seal_when_delivered,
        cold_seal_hold: config
            .link
            .cold_seal_hold
            .min(config.generation.interval / 2),
        publishers: std::sync::Mutex::new(local),
        children: children.clone(),
        wanted: Some(wanted.clone()),
        declare_wanted: Some(schemas.clone()),
        clusters,
        deferral: deferral.clone(),
    };

    let queries = handle::Queries::new(&config)?;
    let (installed_tx, installed) = watch::channel(0u64);
    let mut node_tables: Vec<(&'static str, Arc<dyn datafusion::catalog::TableProvider>)> = vec![(
        QuarantineTable::NAME,
        ComputedTable::provider(QuarantineTable::new(queries.quarantine.clone())),
    )];
    let alerts = config.alerts.as_ref().map(|a| {
        let shared = AlertsShared::new(a.definitions.clone());
        node_tables.push((
            AlertsTable::NAME,
            ComputedTable::provider(AlertsTable::new(shared.clone())),
        ));
        node_tables.push((
            AlertEventsTable::NAME,
            ComputedTable::provider(AlertEventsTable::new(a.state.clone())),
        ));
        shared
    });
    let (history, node_schemas) = open_history(&config, &mut node_tables)?;
    let keeper = serving::SnapshotKeeper::new(
        current.clone(),
        pool.clone(),
        metrics.clone(),
        installed_tx,
        config.http.max_result_bytes,
        node_tables,
        node_schemas,
    )
    .with_schemas(schemas.clone())
    .with_plans(Arc::new(PlanCache::new(config.sql.plan_cache_entries)))
    .with_aggregate_cache(config.sql.aggregate_cache_mb << 20)
    // Only SQL nodes are queried as a rule; the others keep one copy of their generation.
    .with_lazy_tables(!matches!(config.role, Role::Sql | Role::TlaSql));
    let keeper = supervisor.start_actor("snapshot_keeper", keeper);
    let watcher = watcher::FileWatcher::new(
        &config.paths,
        config.requests.prewarm.clone(),
        schemas.clone(),
        keeper.clone(),
        book.clone(),
        pool.clone(),
        metrics.clone(),
    )
    .with_tokens(auth.clone());
    let watcher = match reconfigure::Reconfigure::new(&config, schemas.clone()) {
        Some(r) => watcher.with_reconfigure(
            r,
            watcher::Reconfigured {
                routing: routing.clone(),
                selector,
                span,
                tla_children: deferral.clone().zip(start_tla_child),
            },
        ),
        None => watcher,
    };
    supervisor.start_actor("file_watcher", watcher);
    let sealer = sealer::Sealer::new(
        config.generation.clone(),
        inputs,
        keeper,
        published,
        pool.clone(),
        metrics.clone(),
    );
    supervisor.start_actor("sealer", sealer);

    let reload_every = config.paths.reload_every;
    let alerts_config = config.alerts.clone();
    let node = NodeHandle::new(handle::Parts {
        queries,
        current,
        installed,
        metrics,
        pool,
        config: Arc::new(config),
        schemas,
        book,
        wanted,
        children,
        parents: sessions,
        name,
        routing,
        selection,
        auth,
        alerts: alerts.clone(),
        history: history.as_ref().map(|(shared, _)| shared.clone()),
        supervisor: supervisor.clone(),
    });
    let _ = started.set(node.clone());
    if let (Some(cfg), Some(shared)) = (alerts_config, alerts) {
        let evaluator = AlertEvaluator::new(node.clone(), cfg, shared, reload_every)?;
        supervisor.start_actor("alert_evaluator", evaluator);
    }
    if let Some((shared, writer)) = history {
        let keeper = HistoryKeeper::new(node.clone(), shared, writer, reload_every);
        supervisor.start_actor("history_keeper", keeper);
    }
    Ok(node)
}

/// The node's history, if it keeps one: opened (damaged files set aside), its writer
/// started, and the `history` and `report` schemas every snapshot gets. `query_history` is
/// added to the node tables either way (empty without history).
#[allow(clippy::type_complexity)]
fn open_history(
    config: &NodeConfig,
    node_tables: &mut Vec<(&'static str, Arc<dyn datafusion::catalog::TableProvider>)>,
) -> Result<
    (
        Option<(Arc<HistoryShared>, history::Writer)>,
        Vec<(&'static str, Arc<dyn datafusion::catalog::SchemaProvider>)>,
    ),
    ConfigError,
> {
    let opened = config.history.clone().map(history::open).transpose()?;
    node_tables.push((
        history::tables::HistoryTable::NAME,
        ComputedTable::provider(history::tables::HistoryTable::new(
            opened.as_ref().map(|(shared, _)| shared.clone()),
        )),
    ));
    let Some((shared, writer)) = opened else {
        return Ok((None, Vec::new()));
    };
    let schemas = history::SCHEMAS
        .iter()
        .map(|kind| {
            let provider: Arc<dyn datafusion::catalog::SchemaProvider> =
                Arc::new(HistorySchema::new(kind, shared.index.clone()));
            (*kind, provider)
        })
        .collect();
    Ok((Some((shared, writer)), schemas))
}

/// Binds `[link] listen` (non-blocking, for Tokio); a failure stops the start naming it.
fn bind_link(addr: std::net::SocketAddr) -> Result<std::net::TcpListener, ConfigError> {
    std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|_| l))
        .map_err(|e| ConfigError::Invalid {
            what: format!("[link] listen {addr}"),
            message: e.to_string(),
        })
}

/// How this node names itself to parents and in `query_nodes`.
fn node_name(config: &NodeConfig) -> String {
    match config.link.listen {
        Some(addr) => format!("{}@{addr}", config.role.name()),
        None => format!("{}@{}", config.role.name(), config.http.listen),
    }
}

/// Reads `ops/prewarm.toml`.
pub fn load_prewarm(
    path: &std::path::Path,
    schemas: &SchemaRegistry,
) -> Result<BTreeSet<String>, ConfigError> {
    let file: PrewarmFile = crate::config::read_toml(path)?;
    prewarm_list(&path.display().to_string(), &file.tables, schemas)
}

/// A prewarm list checked against the schemas (`"*"`: every table). Every table must have
/// a schema: a typo would otherwise be requested forever and never arrive.
/// The tables a node of `set` keeps requested: the set's prewarm, and its partition's
/// tables (a SQL node's own partition; a TLA, serving every partition, all of them).
pub(super) fn set_tables(
    set: &crate::aggregator_sets::AggregatorSet,
    partition: Option<&crate::aggregator_sets::Partition>,
    role: Role,
    schemas: &SchemaRegistry,
) -> Result<BTreeSet<String>, ConfigError> {
    let mut out = prewarm_list("aggregator set prewarm", &set.prewarm, schemas)?;
    let partitions = match partition {
        Some(p) => vec![p],
        None if !role.answers_sql() => set.partitions.iter().collect(),
        None => Vec::new(),
    };
    for p in partitions {
        out.extend(prewarm_list(
            "aggregator set partition",
            &p.tables,
            schemas,
        )?);
    }
    Ok(out)
}

fn prewarm_list(
    what: &str,
    tables: &[String],
    schemas: &SchemaRegistry,
) -> Result<BTreeSet<String>, ConfigError> {
    let mut out = BTreeSet::new();
    for t in tables {
        if t == "*" {
            out.extend(schemas.iter().map(|d| d.name.clone()));
        } else if schemas.get(t).is_some() {
            out.insert(t.clone());
        } else {
            return Err(ConfigError::Invalid {
                what: what.into(),
                message: format!("prewarm table '{t}' has no schema"),
            });
        }
    }
    Ok(out)
}

/// Opens the publish socket (and TCP listener) and returns the store publishers fill; the
/// store follows the request book (publishers are told `want` when it changes). Binding
/// happens here, so a node that cannot listen fails at start with the reason.
fn start_edge(
    edge: &EdgeConfig,
    machine_ip: &str,
    schemas: &SchemaRegistry,
    pool: &SqlPool,
    mut wanted: watch::Receiver<BTreeSet<String>>,
    metrics: &Arc<Metrics>,
    supervisor: &supervisor::Supervisor,
) -> Result<Arc<EdgeStore>, ConfigError> {
    let store = Arc::new(
        EdgeStore::new(
            machine_ip.to_string(),
            schemas.clone(),
            edge.limits(),
            wanted.borrow_and_update().clone(),
        )
        .with_metrics(metrics.clone()),
    );
    let listen_err = |what: String, e: std::io::Error| ConfigError::Invalid {
        what,
        message: e.to_string(),
    };
    let unix = socket::bind_unix(&edge.socket, edge.socket_mode)
        .map_err(|e| listen_err(format!("[edge] socket {}", edge.socket.display()), e))?;
    // The bound sockets outlive the accept loops: a restart accepts on a copy of them.
    let s = store.clone();
    supervisor.spawn_task("publish_socket.unix", pool, move || {
        let (s, unix) = (s.clone(), unix.try_clone());
        async move {
            match unix {
                Ok(l) => socket::serve_unix(s, l).await,
                Err(e) => tracing::error!(error = %e, "publish socket unusable"),
            }
        }
    });
    if let Some(addr) = edge.tcp {
        let tcp = std::net::TcpListener::bind(addr)
            .map_err(|e| listen_err(format!("[edge] tcp {addr}"), e))?;
        let s = store.clone();
        supervisor.spawn_task("publish_socket.tcp", pool, move || {
            let (s, tcp) = (s.clone(), tcp.try_clone());
            async move {
                match tcp {
                    Ok(l) => socket::serve_tcp(s, l).await,
                    Err(e) => tracing::error!(error = %e, "publish TCP listener unusable"),
                }
            }
        });
    }
    let s = store.clone();
    supervisor.spawn_task("publish_socket.wanted", pool, move || {
        let (s, mut wanted) = (s.clone(), wanted.clone());
        async move {
            // A restart hands the store the current list first.
            wanted.mark_changed();
            while wanted.changed().await.is_ok() {
                let tables = wanted.borrow_and_update().clone();
                s.set_wanted(tables);
            }
        }
    });
    Ok(store)
}

//! Simulated children that speak the real link protocol: every interval the fleet moves one
//! step and each simulated child seals its own generation, which it serves to its parents
//! exactly as a real node does (hello, request, full copy, then diffs).
//!
//! A child is either one machine (what an edge agent serves its cluster proxy) or one whole
//! cluster (what a cluster proxy serves its TLAs: every machine's rows as its own part).
//! Children listen in process (`mem:sim/<name>`, the demo: a thousand machines cost no
//! sockets) or on TCP ports `first_port`, `first_port + 1`, ... of one address
//! (`queryd simulate`, so real proxies or TLAs in other processes can dial them).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use actix::prelude::*;
use serde::Deserialize;
use tokio::sync::watch;

use super::FleetSimulator;
use crate::generation::Generation;
use crate::link::frame::Codec;
use crate::metrics::Metrics;
use crate::node::config::GenerationConfig;
use crate::node::{next_seal, round_of};
use crate::sql::SqlPool;
use crate::tier::parent_links::{accept_parents, ParentSessions, ServeParents};
use crate::tier::transport::Listener;

/// What each simulated child is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Serve {
    /// One child per machine: dialed by (real or in-process) cluster proxies.
    #[default]
    Machines,
    /// One child per cluster, holding all its machines: dialed by TLAs.
    Clusters,
}

/// Where the simulated children listen.
#[derive(Debug, Clone)]
pub enum ChildListen {
    /// In process: `mem:sim/<machine ip or cluster name>`.
    Memory,
    /// TCP: child `i` (in fleet order) on `ip`, port `first_port + i`. With `tls`, every
    /// child requires parents to complete a mutual TLS handshake first, as a node with
    /// `[link.tls]` does (one configuration shared by all children).
    Tcp {
        ip: IpAddr,
        first_port: u16,
        tls: Option<Arc<rustls::ServerConfig>>,
    },
}

/// One simulated child, as a parent would configure it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimChild {
    /// The machine's address or the cluster's name.
    pub name: String,
    pub cluster: String,
    /// What a parent dials: `mem:sim/NAME` or `ip:port`.
    pub addr: String,
    pub machines: u64,
}

pub struct SimulatedChildren {
    fleet: Arc<Mutex<FleetSimulator>>,
    /// Per child name, where its generations go.
    senders: Arc<BTreeMap<String, watch::Sender<Option<Arc<Generation>>>>>,
    serve: Serve,
    config: GenerationConfig,
    pool: SqlPool,
    next_id: u64,
    busy: bool,
}

impl SimulatedChildren {
    /// Opens a listener for every child of `fleet` (TCP ports are bound here, so a port in
    /// use is an error now, not a log line later); generations start with the actor.
    pub fn new(
        fleet: FleetSimulator,
        config: GenerationConfig,
        codec: Codec,
        pool: SqlPool,
        serve: Serve,
        listen: ChildListen,
    ) -> std::io::Result<(Self, Vec<SimChild>)> {
        let mut children: Vec<SimChild> = Vec::new();
        for (ip, cluster) in fleet.machine_list() {
            let name = match serve {
                Serve::Machines => ip.clone(),
                Serve::Clusters => cluster.clone(),
            };
            match children.last_mut() {
                // A cluster's machines are together in fleet order.
                Some(last) if last.name == name => last.machines += 1,
                _ => children.push(SimChild {
                    addr: String::new(),
                    name,
                    cluster,
                    machines: 1,
                }),
            }
        }
        let metrics = Arc::new(Metrics::default());
        let keys = fleet.table_keys();
        let mut senders = BTreeMap::new();
        for (i, child) in children.iter_mut().enumerate() {
            let listener = match &listen {
                ChildListen::Memory => {
                    child.addr = format!("mem:sim/{}", child.name);
                    Pending::Ready(Listener::memory(&format!("sim/{}", child.name)))
                }
                ChildListen::Tcp { ip, first_port, .. } => {
                    let port = u16::try_from(i)
                        .ok()
                        .and_then(|i| first_port.checked_add(i))
                        .ok_or_else(|| {
                            std::io::Error::new(
                                std::io::ErrorKind::InvalidInput,
                                format!(
                                    "{} children from port {first_port} run past port 65535",
                                    i + 1
                                ),
                            )
                        })?;
                    let addr = SocketAddr::new(*ip, port);
                    let l = std::net::TcpListener::bind(addr).map_err(|e| {
                        std::io::Error::new(e.kind(), format!("binding {addr}: {e}"))
                    })?;
                    l.set_nonblocking(true)?;
                    child.addr = addr.to_string();
                    Pending::Tcp(l)
                }
            };
            let (tx, rx) = watch::channel(None);
            let serve_parents = ServeParents {
                node: match serve {
                    Serve::Machines => format!("edge@{}", child.name),
                    Serve::Clusters => format!("cluster-proxy@{}", child.name),
                },
                role: format!("simulated ({})", child.cluster),
                codec,
                limits: crate::tier::admission::ListenLimits::default(),
                generations: rx,
                book: None,
                metrics: metrics.clone(),
                sessions: Arc::new(ParentSessions::default()),
                tls: match &listen {
                    ChildListen::Tcp { tls, .. } => tls.clone(),
                    ChildListen::Memory => None,
                },
                keys: keys.clone(),
            };
            let p = pool.clone();
            let addr = child.addr.clone();
            pool.spawn(async move {
                let listener = match listener {
                    Pending::Ready(l) => l,
                    // Tokio listeners must be made inside the runtime.
                    Pending::Tcp(l) => match tokio::net::TcpListener::from_std(l) {
                        Ok(l) => Listener::Tcp(l),
                        Err(e) => {
                            tracing::error!(addr, error = %e, "simulated child cannot listen");
                            return;
                        }
                    },
                };
                accept_parents(listener, serve_parents, p).await;
            });
            senders.insert(child.name.clone(), tx);
        }
        let actor = SimulatedChildren {
            fleet: Arc::new(Mutex::new(fleet)),
            senders: Arc::new(senders),
            serve,
            config,
            pool,
            next_id: 1,
            busy: false,
        };
        Ok((actor, children))
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
        let (fleet, senders, serve) = (self.fleet.clone(), self.senders.clone(), self.serve);
        // Moving the fleet and cutting it into generations is CPU work: on the pool.
        let work = self.pool.spawn(async move {
            let cut = fleet.lock().unwrap_or_else(|p| p.into_inner()).cut_round(
                serve,
                id,
                round,
                SystemTime::now(),
            );
            for (child, g) in cut {
                if let Some(tx) = senders.get(&child) {
                    tx.send_replace(Some(g));
                }
                // The child's parents (sessions on this pool) usually encode its new
                // generation, and let go of its last one, before the next child's is cut
                // (the simulator's peak at 250,000 machines: BENCHMARKS.md, goal 7).
                tokio::task::yield_now().await;
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

/// A listener before it is handed to the runtime.
enum Pending {
    Ready(Listener),
    Tcp(std::net::TcpListener),
}

impl Actor for SimulatedChildren {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.seal(ctx, SystemTime::now());
        self.schedule(ctx);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::link::diff::LinkDecoder;
    use crate::link::frame::DEFAULT_MAX_FRAME_BYTES as MAX;
    use crate::link::frame::{decode_frame, encode_frame, read_frame, write_frame};
    use crate::link::wire::{ToChild, ToParent, LINK_VERSION};
    use crate::simulate::SimulateConfig;
    use crate::tier::transport::dial;

    /// `n` free consecutive ports on 127.0.0.1 (bound, checked and released).
    fn free_ports(n: u16) -> u16 {
        for _ in 0..50 {
            let Ok(l) = std::net::TcpListener::bind("127.0.0.1:0") else {
                continue;
            };
            let Ok(first) = l.local_addr().map(|a| a.port()) else {
                continue;
            };
            drop(l);
            if first.checked_add(n).is_some()
                && (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", first + i)).is_ok())
            {
                return first;
            }
        }
        panic!("no {n} free consecutive ports");
    }

    /// Whole clusters served over real TCP: a parent dials one, requests `sys`, and gets a
    /// generation holding every machine of that cluster, counted as one cluster.
    #[actix::test]
    async fn a_simulated_cluster_serves_all_its_machines_over_tcp() {
        let schemas = crate::simulate::tests::shipped_schemas();
        let cfg = SimulateConfig {
            machines: 12,
            clusters: 3,
            ..Default::default()
        };
        let fleet = FleetSimulator::new(&cfg, schemas);
        let config = GenerationConfig {
            interval: Duration::from_millis(200),
            offset: Duration::ZERO,
        };
        let first_port = free_ports(3);
        let (actor, children) = SimulatedChildren::new(
            fleet,
            config,
            Codec::Zstd,
            SqlPool::new(1).expect("pool"),
            Serve::Clusters,
            ChildListen::Tcp {
                ip: "127.0.0.1".parse().expect("ip"),
                first_port,
                tls: None,
            },
        )
        .expect("listen");
        let _actor = actor.start();
        assert_eq!(children.len(), 3);
        assert!(children.iter().all(|c| c.machines == 4), "{children:?}");
        assert_eq!(children[1].addr, format!("127.0.0.1:{}", first_port + 1));

        let stream = dial(&children[1].addr, Duration::from_secs(5))
            .await
            .expect("dial");
        let (mut rd, mut wr) = tokio::io::split(stream);
        let send = |m: &ToChild| encode_frame(m, Codec::None).expect("encode");
        let hello = ToChild::Hello {
            parent: "test".into(),
            version: LINK_VERSION,
        };
        write_frame(&mut wr, &send(&hello)).await.expect("hello");
        let next = |body: Option<Vec<u8>>| {
            decode_frame::<ToParent>(&body.expect("a frame"), MAX).expect("decode")
        };
        match next(read_frame(&mut rd, MAX).await.expect("read")) {
            ToParent::Hello { node, .. } => {
                assert_eq!(node, format!("cluster-proxy@{}", children[1].name))
            }
            other => panic!("expected hello, got {other:?}"),
        }
        let request = ToChild::Request {
            tables: vec!["sys".into()],
        };
        write_frame(&mut wr, &send(&request))
            .await
            .expect("request");
        let mut decoder = LinkDecoder::new();
        let g = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let ToParent::Generation(f) = next(read_frame(&mut rd, MAX).await.expect("read"))
                else {
                    panic!("expected a generation");
                };
                let g = decoder.apply(f).expect("apply");
                if g.tables.contains_key("sys") {
                    return g;
                }
            }
        })
        .await
        .expect("a generation with sys");
        assert_eq!((g.machines, g.clusters), (4, 1));
        let sys = &g.tables["sys"];
        assert_eq!(sys.parts.len(), 4, "one part per machine");
        assert!(
            g.tables.keys().all(|t| t == "sys"),
            "only what was requested"
        );
    }
}

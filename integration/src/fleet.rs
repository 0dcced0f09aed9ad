//! A whole hierarchy of `queryd` processes on one loopback block 127.0.`block`.0/24: edges
//! (each its own address, `.11` up) in clusters → one cluster proxy per cluster (`.1` up) →
//! a TLA (`.5`) → a SQL node (`.6`). Every tier seals later in the interval than the one
//! below (10%, 30%, 50%), as an operator would set the offsets; the SQL node seals when its
//! TLA delivers (its 70% offset counts only while the TLA is silent). Shared by the
//! hierarchy tests and the hierarchy benchmark; every process dies with its [`Fleet`].

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use crate::{Node, Workspace};

/// The TLA seals this many tenths of the interval past each boundary.
pub const TLA_TENTHS: u64 = 5;

/// The most clusters a fleet can have: proxies take `.1` to `.4`, below the TLA's `.5`.
pub const MAX_CLUSTERS: usize = 4;
/// The most edges: `.11` to `.250`.
pub const MAX_EDGES: usize = 240;

/// How a fleet is configured. Nothing starts until [`Fleet::start_all`] or
/// [`Fleet::start_bottom_up`].
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// The fleet lives on 127.0.`block`.0/24 (tests running in parallel use different ones).
    pub block: u8,
    pub clusters: usize,
    pub edges_per_cluster: usize,
    /// `[generation] interval` of every node.
    pub interval: Duration,
    /// `[paths] reload_every` of every node.
    pub reload_every: &'static str,
    /// `[link] drop_after` of every parent.
    pub drop_after: &'static str,
    /// `[link] compression` of every sender.
    pub compression: &'static str,
    /// `[requests] request_ttl` of every node.
    pub request_ttl: &'static str,
    /// `[requests] wait` of the SQL node.
    pub sql_wait: &'static str,
    /// Edges publish this machine's sys, processes, ... (stamped with their own address).
    pub host: bool,
    /// The SQL node's prewarm file.
    pub prewarm: Vec<String>,
    /// Edges, proxies and the TLA prewarm the same tables, so the first frame of every link
    /// carries them; otherwise they flow down as requests once the links are up.
    pub prewarm_every_tier: bool,
    /// Mutual TLS on every link: each node's `[link.tls]` is `DIR/<its ip>.pem` and `.key`
    /// and `DIR/ca.pem` (the test issues them, e.g. with `queryd ca`).
    pub tls_dir: Option<PathBuf>,
}

impl FleetSpec {
    /// Two clusters of three edges at a 1 s interval, `queryd`'s defaults otherwise (zstd
    /// links, 10-minute request ttl); tests and benchmarks change what they need.
    pub fn new(block: u8) -> FleetSpec {
        FleetSpec {
            block,
            clusters: 2,
            edges_per_cluster: 3,
            interval: Duration::from_secs(1),
            reload_every: "1s",
            drop_after: "10s",
            compression: "zstd",
            request_ttl: "10m",
            sql_wait: "60s",
            host: false,
            prewarm: Vec::new(),
            prewarm_every_tier: false,
            tls_dir: None,
        }
    }

    pub fn edges(&self) -> usize {
        self.clusters * self.edges_per_cluster
    }
}

/// One `queryd` of the fleet: how to start it, and the process while it runs.
pub struct Member {
    pub role: &'static str,
    pub config: PathBuf,
    /// `[node] machine_ip`.
    pub ip: String,
    /// `[link] listen` (where its parent dials); none for the SQL node.
    pub link: Option<String>,
    pub node: Option<Node>,
}

impl Member {
    pub fn start(&mut self) {
        assert!(self.node.is_none(), "{} is running already", self.ip);
        let config = self.config.to_str().expect("utf8 path");
        self.node = Some(Node::start(&[
            self.role,
            "--config",
            config,
            "--listen",
            "127.0.0.1:0",
        ]));
    }

    /// Kills the process (SIGKILL, then waits for it).
    pub fn kill(&mut self) {
        assert!(self.node.take().is_some(), "{} is not running", self.ip);
    }

    pub fn node(&self) -> &Node {
        self.node.as_ref().expect("node is running")
    }
}

pub struct Fleet {
    pub spec: FleetSpec,
    /// Edge `n` is in cluster `n / edges_per_cluster`.
    pub edges: Vec<Member>,
    pub proxies: Vec<Member>,
    pub tla: Member,
    pub sql: Member,
    /// Last: the processes are killed before their files go.
    pub ws: Workspace,
}

/// A free TCP port on `ip` (bound, then released for the node to take).
pub fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// `["a", "b"]` in TOML.
pub fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

impl Fleet {
    /// Writes every node's config (and an empty file-drop directory per edge); starts
    /// nothing.
    pub fn new(spec: FleetSpec) -> Fleet {
        assert!(
            (1..=MAX_CLUSTERS).contains(&spec.clusters),
            "1 to {MAX_CLUSTERS} clusters"
        );
        assert!(
            (1..=MAX_EDGES).contains(&spec.edges()),
            "1 to {MAX_EDGES} edges"
        );
        let ws = Workspace::new();
        let paths = format!(
            "[paths]\nschemas = \"schemas\"\nstatic_tables = \"static-tables/index.toml\"\nviews = \"views.toml\"\nreload_every = \"{}\"\n",
            spec.reload_every
        );
        let interval_ms = spec.interval.as_millis() as u64;
        let generation = |tenths: u64| {
            format!(
                "[generation]\ninterval = \"{interval_ms}ms\"\noffset = \"{}ms\"\n",
                interval_ms * tenths / 10
            )
        };
        let node = |ip: &str, cluster: &str| {
            format!("[node]\nmachine_ip = \"{ip}\"\ncluster = \"{cluster}\"\n")
        };
        // Every parent's side of its links.
        let parent_link = |children: &[String]| {
            format!(
                "children = {}\ndrop_after = \"{}\"\nconnect_timeout = \"1s\"\nbackoff_min = \"100ms\"\nbackoff_max = \"1s\"\n",
                toml_list(children),
                spec.drop_after
            )
        };
        let write = |name: &str, text: String| {
            let path = ws.path(name);
            std::fs::write(&path, format!("{paths}\n{text}")).expect("write config");
            path
        };
        let ip = |last: usize| format!("127.0.{}.{last}", spec.block);
        let listen = |ip: &str| format!("{ip}:{}", free_port(ip));
        std::fs::write(
            ws.path("prewarm.toml"),
            format!("tables = {}\n", toml_list(&spec.prewarm)),
        )
        .expect("write prewarm");
        let tier_prewarm = if spec.prewarm_every_tier {
            "prewarm = \"prewarm.toml\"\n"
        } else {
            ""
        };
        let requests = format!("[requests]\nrequest_ttl = \"{}\"\n", spec.request_ttl);
        let no_host = "[host]\nenabled = false\n";

        let mut edges = Vec::new();
        let mut proxies = Vec::new();
        for c in 0..spec.clusters {
            let cluster = format!("cluster-{c}");
            let mut children = Vec::new();
            for e in 0..spec.edges_per_cluster {
                let n = c * spec.edges_per_cluster + e;
                let ip = ip(11 + n);
                let link = listen(&ip);
                let drop_dir = ws.path(&format!("drop-{n}"));
                std::fs::create_dir_all(&drop_dir).expect("mkdir");
                let edge_prewarm = if spec.prewarm_every_tier {
                    toml_list(&spec.prewarm)
                } else {
                    "[]".into()
                };
                let config = write(
                    &format!("edge-{n}.toml"),
                    format!(
                        "{node}georegion = {georegion}\n\n{generation}\n[host]\nenabled = {host}\nroles = [\"edge\"]\n\n\
                         [edge]\nsocket = \"{socket}\"\nfile_drop = \"{drop}\"\nprewarm = {edge_prewarm}\n\n\
                         [link]\nlisten = \"{link}\"\ncompression = \"{codec}\"\n\n{requests}",
                        node = node(&ip, &cluster),
                        georegion = c + 1,
                        generation = generation(1),
                        host = spec.host,
                        socket = ws.path(&format!("edge-{n}.sock")).display(),
                        drop = drop_dir.display(),
                        codec = spec.compression,
                    ),
                );
                children.push(link.clone());
                edges.push(Member {
                    role: "edge",
                    config,
                    ip,
                    link: Some(link),
                    node: None,
                });
            }
            let ip = ip(1 + c);
            let link = listen(&ip);
            let config = write(
                &format!("proxy-{c}.toml"),
                format!(
                    "{node}\n{generation}\n{no_host}\n[link]\nlisten = \"{link}\"\ncompression = \"{codec}\"\n{parents}\n{requests}{tier_prewarm}",
                    node = node(&ip, &cluster),
                    generation = generation(3),
                    codec = spec.compression,
                    parents = parent_link(&children),
                ),
            );
            proxies.push(Member {
                role: "cluster-proxy",
                config,
                ip,
                link: Some(link),
                node: None,
            });
        }

        let tla_ip = ip(5);
        let tla_link = listen(&tla_ip);
        let proxy_links: Vec<String> = proxies.iter().filter_map(|p| p.link.clone()).collect();
        let tla = Member {
            role: "tla",
            config: write(
                "tla.toml",
                format!(
                    "{node}\n{generation}\n{no_host}\n[link]\nlisten = \"{tla_link}\"\ncompression = \"{codec}\"\n{parents}\n{requests}{tier_prewarm}",
                    node = node(&tla_ip, "tla"),
                    generation = generation(TLA_TENTHS),
                    codec = spec.compression,
                    parents = parent_link(&proxy_links),
                ),
            ),
            ip: tla_ip,
            link: Some(tla_link.clone()),
            node: None,
        };

        let sql_ip = ip(6);
        let sql = Member {
            role: "sql",
            config: write(
                "sql.toml",
                format!(
                    "{node}\n{generation}\n{no_host}\n[link]\n{parents}\n{requests}wait = \"{wait}\"\nprewarm = \"prewarm.toml\"\n",
                    node = node(&sql_ip, "sql"),
                    generation = generation(7),
                    parents = parent_link(&[tla_link]),
                    wait = spec.sql_wait,
                ),
            ),
            ip: sql_ip,
            link: None,
            node: None,
        };
        if let Some(dir) = &spec.tls_dir {
            for m in edges.iter().chain(&proxies).chain([&tla, &sql]) {
                let d = dir.display();
                let tls = format!(
                    "\n[link.tls]\ncert = \"{d}/{ip}.pem\"\nkey = \"{d}/{ip}.key\"\nca = \"{d}/ca.pem\"\n",
                    ip = m.ip
                );
                let text = std::fs::read_to_string(&m.config).expect("read config");
                std::fs::write(&m.config, text + &tls).expect("write config");
            }
        }
        Fleet {
            spec,
            edges,
            proxies,
            tla,
            sql,
            ws,
        }
    }

    /// Starts every node at once: each link dials again (with backoff) until its child is up.
    pub fn start_all(&mut self) {
        std::thread::scope(|s| {
            for m in self.members_mut() {
                s.spawn(move || m.start());
            }
        });
    }

    /// Starts the tiers one after the other, from the edges up; `ready(node, machines)` is
    /// called for every node of a tier and must return once that node serves what the test
    /// needs from the `machines` machines behind it (1 for an edge).
    pub fn start_bottom_up(&mut self, ready: impl Fn(&Node, usize) + Sync) {
        self.start_edges(&ready);
        self.start_upper_tiers(ready);
    }

    /// Starts every edge, then waits for each to be `ready` (see [`Fleet::start_bottom_up`]).
    pub fn start_edges(&mut self, ready: impl Fn(&Node, usize) + Sync) {
        start_tier(&mut self.edges, 1, &ready);
    }

    /// Starts the proxies, the TLA and the SQL node in that order, each tier once the one
    /// below is `ready` (see [`Fleet::start_bottom_up`]).
    pub fn start_upper_tiers(&mut self, ready: impl Fn(&Node, usize) + Sync) {
        let all = self.spec.edges();
        start_tier(&mut self.proxies, self.spec.edges_per_cluster, &ready);
        start_tier(std::slice::from_mut(&mut self.tla), all, &ready);
        start_tier(std::slice::from_mut(&mut self.sql), all, &ready);
    }

    pub fn members_mut(&mut self) -> impl Iterator<Item = &mut Member> {
        self.edges
            .iter_mut()
            .chain(self.proxies.iter_mut())
            .chain([&mut self.tla, &mut self.sql])
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.edges
            .iter()
            .chain(self.proxies.iter())
            .chain([&self.tla, &self.sql])
    }

    /// The SQL node's process.
    pub fn sql(&self) -> &Node {
        self.sql.node()
    }

    /// Edge `n`'s publish socket.
    pub fn socket(&self, n: usize) -> PathBuf {
        self.ws.path(&format!("edge-{n}.sock"))
    }

    /// Edge `n`'s file-drop directory.
    pub fn drop_dir(&self, n: usize) -> PathBuf {
        self.ws.path(&format!("drop-{n}"))
    }

    /// Machine addresses of the edges `range`.
    pub fn edge_ips(&self, range: std::ops::Range<usize>) -> Vec<String> {
        self.edges[range].iter().map(|e| e.ip.clone()).collect()
    }
}

/// Starts `members` together, then waits for each to be `ready`.
fn start_tier(members: &mut [Member], machines: usize, ready: &(impl Fn(&Node, usize) + Sync)) {
    std::thread::scope(|s| {
        for m in members.iter_mut() {
            s.spawn(move || m.start());
        }
    });
    for m in members.iter() {
        ready(m.node(), machines);
    }
}

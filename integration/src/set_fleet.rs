//! An aggregator set behind real DNS, as processes on loopback: a dnsmasq serving the set's
//! names, simulated machines in 2 clusters, 2 cluster proxies per cluster, 2 TLAs and 3 SQL
//! nodes in 2 partitions. Shared by the aggregator-set test and the failover benchmark;
//! every process dies with its [`SetFleet`].
//!
//! Addresses (each node its own, ports shared):
//! - machines `127.0.70.1:7600..`, `queryd simulate` (3 per cluster);
//! - proxies `127.0.71.1-4:7400` (cluster 1: `.1 .2`, cluster 2: `.3 .4`), named
//!   `proxies.c1.test` and `proxies.c2.test`;
//! - TLAs `127.0.72.1-2:7500`, named `tla.main.test`. Each reaches cluster 1 by its DNS
//!   name and cluster 2 through two [`Relay`]s of its own (`127.0.73.x:7400`), so a test can
//!   cut one TLA off from a cluster as a network fault would;
//! - SQL nodes `127.0.74.1-3`, HTTP on [`SQL_PORT`], named `sql.main.test`; partition
//!   `core` (`sys`, `filesystem`: nodes 1 and 2, `sql-core.main.test`) and `procs`
//!   (`processes`: node 3, `sql-procs.main.test`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{repo, Node, Simulator, Workspace};

/// The SQL nodes' HTTP port (on each one's own address).
pub const SQL_PORT: u16 = 18480;
/// Machines per cluster.
pub const MACHINES_PER_CLUSTER: usize = 3;
pub const MACHINES: usize = 2 * MACHINES_PER_CLUSTER;
pub const PROXIES: [&str; 4] = ["127.0.71.1", "127.0.71.2", "127.0.71.3", "127.0.71.4"];
pub const TLAS: [&str; 2] = ["127.0.72.1", "127.0.72.2"];
pub const SQLS: [&str; 3] = ["127.0.74.1", "127.0.74.2", "127.0.74.3"];
const PROXY_PORT: u16 = 7400;
const TLA_PORT: u16 = 7500;
/// A TLA's link address, as SQL nodes list it.
pub fn tla_link(t: usize) -> String {
    format!("{}:{TLA_PORT}", TLAS[t])
}

/// dnsmasq, from Debian's `dnsmasq-base` (`make test-deps` installs it).
pub fn dnsmasq_bin() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d: PathBuf| d.join("dnsmasq"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("dnsmasq is not installed: `make test-deps` installs Debian's dnsmasq-base")
    })
}

/// A loopback port free for UDP and TCP alike, as dnsmasq listens on both: a free UDP
/// port can be the local port of a TCP connection after a run of many connections (a cold
/// `make bench` failed there with "Address already in use").
fn free_dns_port() -> u16 {
    (0..100)
        .map(|_| crate::fleet::free_port("127.0.0.1"))
        .find(|&port| UdpSocket::bind(("127.0.0.1", port)).is_ok())
        .expect("a loopback port free for both UDP and TCP")
}

/// A real DNS server on loopback: dnsmasq answering from a hosts file this test writes.
/// Records have TTL 0, so a change ([`Dns::set`]) is seen at the next look-up.
pub struct Dns {
    child: Child,
    pub server: SocketAddr,
    hosts: PathBuf,
    records: BTreeMap<String, Vec<String>>,
    _dir: tempfile::TempDir,
}

impl Dns {
    pub fn start(records: &[(&str, &[&str])]) -> Dns {
        let dir = tempfile::tempdir().expect("tempdir");
        // dnsmasq drops to `nobody` and re-reads the file on SIGHUP as that user.
        set_mode(dir.path(), 0o755);
        let hosts = dir.path().join("hosts");
        let port = free_dns_port();
        let server: SocketAddr = ([127, 0, 0, 1], port).into();
        let records: BTreeMap<String, Vec<String>> = records
            .iter()
            .map(|(n, ips)| (n.to_string(), ips.iter().map(|s| s.to_string()).collect()))
            .collect();
        write_hosts(&hosts, &records);
        let log = dir.path().join("dnsmasq.log");
        let child = Command::new(dnsmasq_bin())
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--pid-file=",
                "--log-facility=-",
                "--log-queries",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", hosts.display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start dnsmasq");
        let dns = Dns {
            child,
            server,
            hosts,
            records,
            _dir: dir,
        };
        let (first, mut ips) = dns
            .records
            .iter()
            .next()
            .map(|(n, i)| (n.clone(), i.clone()))
            .expect("at least one record");
        ips.sort();
        let deadline = Instant::now() + Duration::from_secs(20);
        while dns.lookup(&first).as_ref() != Some(&ips) {
            assert!(
                Instant::now() < deadline,
                "dnsmasq does not answer: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        dns
    }

    /// `name`'s addresses from now on (dnsmasq re-reads its hosts file on SIGHUP).
    pub fn set(&mut self, name: &str, ips: &[&str]) {
        self.records.insert(
            name.to_string(),
            ips.iter().map(|s| s.to_string()).collect(),
        );
        write_hosts(&self.hosts, &self.records);
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "SIGHUP to dnsmasq");
        let mut want = self.records[name].clone();
        want.sort();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.lookup(name).as_ref() != Some(&want) {
            assert!(Instant::now() < deadline, "dnsmasq did not take {name}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `name`'s addresses as the server answers now (sorted).
    pub fn lookup(&self, name: &str) -> Option<Vec<String>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut ips: Vec<String> = rt
            .block_on(query_client::dns::lookup(
                name,
                Some(self.server),
                Duration::from_millis(500),
            ))
            .ok()?
            .iter()
            .map(|ip| ip.to_string())
            .collect();
        ips.sort();
        Some(ips)
    }
}

fn write_hosts(path: &Path, records: &BTreeMap<String, Vec<String>>) {
    let mut text = String::new();
    for (name, ips) in records {
        for ip in ips {
            text.push_str(&format!("{ip} {name}\n"));
        }
    }
    std::fs::write(path, text).expect("write hosts");
    set_mode(path, 0o644);
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A TCP relay on loopback standing for the network path between two nodes. [`Relay::cut`]
/// breaks the path as a fault would: open connections are reset and new ones closed at
/// once; [`Relay::restore`] mends it.
pub struct Relay {
    listen: SocketAddr,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    pub fn start(listen: &str, target: &str) -> Relay {
        let listener = TcpListener::bind(listen).expect("bind the relay");
        let relay = Relay {
            listen: listener.local_addr().expect("relay address"),
            cut: Arc::default(),
            stop: Arc::default(),
            open: Arc::default(),
        };
        let (cut, stop, open) = (relay.cut.clone(), relay.stop.clone(), relay.open.clone());
        let target = target.to_string();
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(inbound) = inbound else { continue };
                if cut.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(outbound) = TcpStream::connect(&target) else {
                    continue;
                };
                let pairs = [
                    (inbound.try_clone(), outbound.try_clone()),
                    (outbound.try_clone(), inbound.try_clone()),
                ];
                if let Ok(mut o) = open.lock() {
                    o.extend([inbound, outbound]);
                }
                for pair in pairs {
                    if let (Ok(from), Ok(to)) = pair {
                        std::thread::spawn(move || pump(from, to));
                    }
                }
            }
        });
        relay
    }

    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.close_all();
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    fn close_all(&self) {
        if let Ok(mut o) = self.open.lock() {
            for s in o.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.listen); // wakes the accept loop
        self.close_all();
    }
}

/// The whole set (module docs). Nodes are `Option`s so a test can kill and restart them.
pub struct SetFleet {
    pub dns: Dns,
    pub sim: Simulator,
    pub proxies: Vec<Option<Node>>,
    /// Per TLA: its two relays to cluster 2's proxies.
    pub relays: Vec<[Relay; 2]>,
    pub tlas: Vec<Option<Node>>,
    pub sqls: Vec<Option<Node>>,
    pub ws: Workspace,
}

/// What every node shares: paths, 1 s generations sealed tier by tier, DNS, no host rows
/// (so the fleet is exactly the simulated machines).
fn common(ip: &str, offset_ms: u64, dns: SocketAddr) -> String {
    format!(
        "[paths]\nschemas = \"schemas\"\nstatic_tables = \"static-tables/index.toml\"\nviews = \"views.toml\"\n\n\
         [node]\nmachine_ip = \"{ip}\"\ncluster = \"set\"\n\n\
         [generation]\ninterval = \"1s\"\noffset = \"{offset_ms}ms\"\n\n\
         [host]\nenabled = false\n\n\
         [dns]\nnameserver = \"{dns}\"\nresolve_every = \"500ms\"\ntimeout = \"1s\"\n\n"
    )
}

impl SetFleet {
    /// Starts everything, bottom up, and waits until every SQL node serves all machines.
    /// `tla.main.test` names only the first TLA until a test adds the second.
    pub fn start() -> SetFleet {
        let dns = Dns::start(&[
            ("proxies.c1.test", &PROXIES[..2]),
            ("proxies.c2.test", &PROXIES[2..]),
            ("tla.main.test", &TLAS[..1]),
            ("sql.main.test", &SQLS[..]),
            ("sql-core.main.test", &SQLS[..2]),
            ("sql-procs.main.test", &SQLS[2..]),
        ]);
        let ws = Workspace::new();
        std::fs::write(
            ws.path("sets.toml"),
            format!(
                "[[set]]\nname = \"main\"\nsql_name = \"sql.main.test:{SQL_PORT}\"\ntla_name = \"tla.main.test:{TLA_PORT}\"\nprewarm = [\"sys\"]\n\n\
                 [[set.partition]]\nname = \"core\"\nhostname = \"sql-core.main.test:{SQL_PORT}\"\ntables = [\"sys\", \"filesystem\"]\n\n\
                 [[set.partition]]\nname = \"procs\"\nhostname = \"sql-procs.main.test:{SQL_PORT}\"\ntables = [\"processes\"]\n"
            ),
        )
        .expect("write sets");
        let sim = Simulator::start(&[
            "--machines",
            &MACHINES.to_string(),
            "--clusters",
            "2",
            "--serve",
            "machines",
            "--listen",
            "127.0.70.1:7600",
            "--interval",
            "1s",
            "--offset",
            "100ms",
        ]);
        let relays = (0..2)
            .map(|t| {
                [0, 1].map(|k| {
                    Relay::start(
                        &format!("127.0.73.{}:{PROXY_PORT}", 2 * t + k + 1),
                        &format!("{}:{PROXY_PORT}", PROXIES[2 + k]),
                    )
                })
            })
            .collect();
        let mut fleet = SetFleet {
            dns,
            sim,
            proxies: Vec::new(),
            relays,
            tlas: Vec::new(),
            sqls: Vec::new(),
            ws,
        };
        fleet.proxies = (0..PROXIES.len())
            .map(|p| Some(fleet.start_proxy(p)))
            .collect();
        fleet.tlas = (0..TLAS.len()).map(|t| Some(fleet.start_tla(t))).collect();
        fleet.sqls = (0..SQLS.len()).map(|s| Some(fleet.start_sql(s))).collect();
        for s in 0..SQLS.len() {
            fleet.until_all_machines(s, Duration::from_secs(60));
        }
        fleet
    }

    fn node(&self, name: &str, role: &str, http_ip: &str, port: u16, text: String) -> Node {
        let config = self.ws.path(&format!("{name}.toml"));
        std::fs::write(&config, text).expect("write config");
        Node::start(&[
            role,
            "--config",
            config.to_str().expect("utf8 path"),
            "--listen",
            &format!("{http_ip}:{port}"),
        ])
    }

    fn start_proxy(&self, p: usize) -> Node {
        let ip = PROXIES[p];
        let c = p / 2;
        let machines = &self.sim.children[c * MACHINES_PER_CLUSTER..(c + 1) * MACHINES_PER_CLUSTER];
        let text = format!(
            "{}[link]\nlisten = \"{ip}:{PROXY_PORT}\"\nchildren = {}\ndrop_after = \"2s\"\nbackoff_max = \"1s\"\n",
            common(ip, 300, self.dns.server),
            crate::fleet::toml_list(machines),
        );
        self.node(&format!("proxy{p}"), "cluster-proxy", ip, 0, text)
    }

    /// TLA `t`: cluster 1 by name, cluster 2 through its relays; the set's tables
    /// prewarmed.
    pub fn start_tla(&self, t: usize) -> Node {
        let ip = TLAS[t];
        let relays = self.relays[t]
            .iter()
            .map(|r| r.addr().to_string())
            .collect::<Vec<_>>();
        let text = format!(
            "{}[link]\nlisten = \"{}\"\ndrop_after = \"2s\"\nbackoff_max = \"1s\"\nconnect_timeout = \"1s\"\n\n\
             [[link.child]]\nname = \"cluster-1\"\naddresses = [\"proxies.c1.test:{PROXY_PORT}\"]\n\n\
             [[link.child]]\nname = \"cluster-2\"\naddresses = {}\n\n\
             [aggregator_set]\nfile = \"sets.toml\"\nname = \"main\"\n",
            common(ip, 500, self.dns.server),
            tla_link(t),
            crate::fleet::toml_list(&relays),
        );
        self.node(&format!("tla{t}"), "tla", ip, 0, text)
    }

    pub fn start_sql(&self, s: usize) -> Node {
        let ip = SQLS[s];
        let partition = if s < 2 { "core" } else { "procs" };
        let text = format!(
            "{}[link]\ndrop_after = \"3s\"\nbackoff_max = \"1s\"\nconnect_timeout = \"1s\"\n\n\
             [tla_selection]\nprobe_every = \"250ms\"\nfail_after = 2\n\n\
             [requests]\nwait = \"20s\"\n\n\
             [aggregator_set]\nfile = \"sets.toml\"\nname = \"main\"\npartition = \"{partition}\"\n",
            common(ip, 700, self.dns.server),
        );
        self.node(&format!("sql{s}"), "sql", ip, SQL_PORT, text)
    }

    pub fn sql(&self, s: usize) -> &Node {
        self.sqls[s].as_ref().expect("SQL node running")
    }

    pub fn tla(&self, t: usize) -> &Node {
        self.tlas[t].as_ref().expect("TLA running")
    }

    /// `/health` of SQL node `s`.
    pub fn health(&self, s: usize) -> serde_json::Value {
        self.sql(s).get_json("/health")
    }

    /// The TLA SQL node `s` uses now.
    pub fn current_tla(&self, s: usize) -> Option<String> {
        self.health(s)["tla"]["current"].as_str().map(String::from)
    }

    /// Waits until SQL node `s` serves every machine's rows from a fresh generation.
    pub fn until_all_machines(&self, s: usize, limit: Duration) {
        let node = self.sql(s);
        node.eventually(limit, "every machine at the SQL node", || {
            let h = node.get_json("/health");
            let fresh = h["generation"]["age_ms"].as_u64().is_some_and(|a| a < 3000);
            (h["machines"] == MACHINES as u64 && h["clusters"] == 2 && fresh).then_some(())
        });
    }

    /// `query --dns … -H sql.main.test:PORT --format csv SQL`: (exit code, stdout, stderr).
    pub fn query(&self, host: &str, sql: &str) -> (Option<i32>, String, String) {
        let out = Command::new(crate::queryd_bin().with_file_name("query"))
            .args(["--dns", &self.dns.server.to_string(), "-H", host])
            .args(["--format", "csv"])
            .arg(sql)
            .current_dir(repo())
            .output()
            .expect("run query");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

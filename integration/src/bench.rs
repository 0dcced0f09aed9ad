//! What the benchmarks (`integration/benches/`, `make bench`) share: their knobs from the
//! environment, percentiles, a process's CPU and memory from /proc, a simulated fleet (in
//! process, or as `queryd simulate` → TLA → SQL node processes), and writing a section of
//! BENCHMARKS.md.

use std::process::Command;
use std::time::{Duration, Instant};

use query_actors::simulate::{FleetSimulator, SimulateConfig, TABLES};
use query_actors::table::load_schema_dir;
use query_actors::tls::ca::{self, CertSpec};

use crate::fleet::{free_port, toml_list};
use crate::{repo, Node, Simulator, Workspace};

mod duckdb;
pub use duckdb::{run_duckdb_script, DuckDbServer};

/// `$name` as a number, or `default` when unset or not a number.
pub fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p` quantile (0.0 to 1.0) of `sorted`, nearest rank; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Bytes for a table cell: `950 B`, `28.8 kB`, `6.22 MB` (decimal units).
pub fn human_bytes(b: f64) -> String {
    if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else if b >= 1e4 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

/// `(name, sql)` per `-- name: <name>` block of the queries file; `-- duckdb:` blocks are
/// DuckDB's alternatives and are skipped here.
pub fn parse_queries(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut ours = false;
    for line in text.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("-- name:") {
            out.push((name.trim().to_string(), String::new()));
            ours = true;
        } else if t.starts_with("-- duckdb:") {
            ours = false;
        } else if ours {
            if let Some((_, sql)) = out.last_mut() {
                sql.push_str(line);
                sql.push('\n');
            }
        }
    }
    for (_, sql) in &mut out {
        *sql = sql.trim().trim_end_matches(';').trim().to_string();
    }
    out
}

/// Seals one generation of a simulated fleet of `machines` machines, 50 per cluster.
/// A process's CPU time so far and its memory, from /proc (zeros if it is gone).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcUsage {
    /// User + system CPU seconds.
    pub cpu_s: f64,
    /// Resident memory now, MiB.
    pub rss_mib: f64,
    /// Peak resident memory, MiB.
    pub peak_mib: f64,
}

pub fn proc_usage(pid: u32) -> ProcUsage {
    let ticks = 100.0; // USER_HZ on Linux
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may itself hold spaces and parentheses.
    let after = stat.rfind(')').map(|i| &stat[i + 2..]).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    ProcUsage {
        cpu_s: (field(11) + field(12)) / ticks,
        rss_mib: mib("VmRSS:"),
        peak_mib: mib("VmHWM:"),
    }
}

/// `queryd simulate` serving whole clusters from `ip` (port 20000 on), sealing every
/// `interval_ms` at offset 0.
pub fn whole_clusters_args(
    machines: usize,
    clusters: usize,
    ip: &str,
    interval_ms: u64,
) -> Vec<String> {
    [
        "--machines",
        &machines.to_string(),
        "--clusters",
        &clusters.to_string(),
        "--serve",
        "clusters",
        "--listen",
        &format!("{ip}:20000"),
        "--interval",
        &format!("{interval_ms}ms"),
        "--offset",
        "0ms",
    ]
    .map(String::from)
    .to_vec()
}

/// The simulated fleet of `machines` machines, `per_cluster` to a cluster, over the
/// shipped schemas.
pub fn simulator(machines: usize, per_cluster: usize) -> FleetSimulator {
    let schemas = load_schema_dir(&repo().join("schemas")).expect("shipped schemas load");
    let cfg = SimulateConfig {
        machines,
        clusters: machines.div_ceil(per_cluster.max(1)).max(1),
        ..Default::default()
    };
    cfg.validate().expect("valid fleet size");
    FleetSimulator::new(&cfg, schemas)
}

/// The production path at fleet scale as release processes on loopback block
/// 127.0.`block`.0/24: `queryd simulate` serving the fleet as its cluster proxies would
/// (`PER_CLUSTER` machines each, over TCP) → a `queryd tla` → a `queryd sql` node, both
/// prewarming every simulated table; optionally with mutual TLS on both links. Used by the
/// fleet, overload and link TLS benchmarks; every process dies with it.
pub struct SimulatedFleet {
    pub machines: usize,
    pub clusters: usize,
    pub interval: Duration,
    /// The simulator's children listen on 127.0.`block`.1.
    pub block: u8,
    /// The TLA's link address (the SQL node dials it).
    pub tla_link: String,
    /// Seconds from the start until the SQL node counted every machine.
    pub startup: f64,
    /// Seconds from the start until the TLA counted every machine.
    pub tla_startup: f64,
    pub sim: Simulator,
    pub tla: Node,
    pub sql: Node,
    /// The TLA's and the SQL node's configuration files, to start them again.
    tla_cfg: String,
    sql_cfg: String,
    /// Last: the processes are killed before their files go.
    pub ws: Workspace,
}

impl SimulatedFleet {
    pub const PER_CLUSTER: usize = 70;
    /// The TLA seals this many tenths of the interval past each boundary (the simulator
    /// at 0).
    pub const TLA_TENTHS: u64 = 3;
    /// The SQL node's offset, in tenths of the interval: it seals when the TLA delivers,
    /// and on this schedule only when the TLA delivered nothing in the interval.
    pub const SQL_TENTHS: u64 = 6;

    /// The generation interval for a fleet: long enough for the simulator, the TLA and the
    /// SQL node, which share this machine's cores, to do a round's work.
    pub fn interval_for(machines: usize) -> Duration {
        match machines {
            0..=2_000 => Duration::from_secs(2),
            2_001..=20_000 => Duration::from_secs(5),
            20_001..=100_000 => Duration::from_secs(20),
            // `make bench-full`'s largest fleet: a full copy takes the TLA about 3.5 times
            // as long as at 70,000 machines.
            _ => Duration::from_secs(60),
        }
    }

    /// Starts the three processes and waits until the SQL node counts every machine.
    /// `sql_extra` is appended to the SQL node's config (whole TOML sections, e.g.
    /// `[http]`).
    pub fn start(machines: usize, block: u8, sql_extra: &str) -> SimulatedFleet {
        Self::start_with(machines, block, sql_extra, false)
    }

    /// [`SimulatedFleet::start`], with `tls`: a CA made in the workspace gives the
    /// simulator, the TLA and the SQL node certificates (for their addresses), and both
    /// links (simulated clusters → TLA, TLA → SQL node) run mutual TLS.
    pub fn start_with(machines: usize, block: u8, sql_extra: &str, tls: bool) -> SimulatedFleet {
        let clusters = machines.div_ceil(Self::PER_CLUSTER);
        let interval = Self::interval_for(machines);
        let ms = interval.as_millis() as u64;
        let started = Instant::now();
        let ws = Workspace::new();
        let sim_ip = format!("127.0.{block}.1");
        let tla_ip = format!("127.0.{block}.5");
        let sql_ip = format!("127.0.{block}.6");
        // Per role: `[link.tls]` paths (certificate, key, CA bundle).
        let pki = ws.path("pki");
        let certs = |name: &str, ip: &str| -> [String; 3] {
            let mut spec = CertSpec::for_days(name, 2);
            spec.ips = vec![ip.parse().expect("ip")];
            ca::issue_in_dir(&pki, &spec).expect("issue a certificate");
            [
                format!("{name}.pem"),
                format!("{name}.key"),
                "ca.pem".into(),
            ]
            .map(|f| pki.join(f).to_str().expect("utf8 path").to_string())
        };
        if tls {
            ca::init_dir(&pki, &CertSpec::for_days("bench CA", 2)).expect("make a CA");
        }
        let mut sim_args = whole_clusters_args(machines, clusters, &sim_ip, ms);
        let link_tls = |name: &str, ip: &str| {
            if !tls {
                return String::new();
            }
            let [cert, key, ca] = certs(name, ip);
            format!("\n[link.tls]\ncert = \"{cert}\"\nkey = \"{key}\"\nca = \"{ca}\"\n")
        };
        if tls {
            let [cert, key, ca] = certs("simulate", &sim_ip);
            sim_args.extend(["--tls-cert".into(), cert, "--tls-key".into(), key]);
            sim_args.extend(["--tls-ca".into(), ca]);
        }
        let sim = Simulator::start(&sim_args.iter().map(String::as_str).collect::<Vec<_>>());
        let paths = "[paths]\nschemas = \"schemas\"\nstatic_tables = \"static-tables/index.toml\"\nviews = \"views.toml\"\n";
        std::fs::write(
            ws.path("prewarm.toml"),
            format!("tables = {}\n", toml_list(&TABLES.map(String::from))),
        )
        .expect("prewarm");
        let tla_link = format!("{tla_ip}:{}", free_port(&tla_ip));
        let common = |ip: &str, tenths: u64| {
            format!(
                "{paths}\n[node]\nmachine_ip = \"{ip}\"\ncluster = \"top\"\n\n[generation]\ninterval = \"{ms}ms\"\noffset = \"{}ms\"\n\n[host]\nenabled = false\n",
                ms * tenths / 10
            )
        };
        let drop_after = format!("{}ms", ms * 4);
        let write = |name: &str, text: String| {
            let path = ws.path(name);
            std::fs::write(&path, text).expect("write config");
            path.to_str().expect("utf8 path").to_string()
        };
        let tla_cfg = write(
            "tla.toml",
            format!(
                "{}\n[link]\nlisten = \"{tla_link}\"\nchildren = {}\ndrop_after = \"{drop_after}\"\n\n[requests]\nprewarm = \"prewarm.toml\"\n{}",
                common(&tla_ip, Self::TLA_TENTHS),
                toml_list(&sim.children),
                link_tls("tla", &tla_ip),
            ),
        );
        // The TLA's full copy to the SQL node is about 2.6 kB per machine decompressed
        // (6.3 kB before its parts travelled in blocks): past the default
        // `max_frame_bytes` (1 GiB) from about 400,000 machines, where the SQL node would
        // refuse it and dial again.
        let max_frame = (machines * 8 * 1024).max(1 << 30);
        let sql_cfg = write(
            "sql.toml",
            format!(
                "{}\n[link]\nchildren = [\"{tla_link}\"]\ndrop_after = \"{drop_after}\"\nmax_frame_bytes = {max_frame}\n\n[requests]\nprewarm = \"prewarm.toml\"\nwait = \"600s\"\n\n{sql_extra}\n{}",
                common(&sql_ip, Self::SQL_TENTHS),
                link_tls("sql", &sql_ip),
            ),
        );
        let tla = start_node("tla", &tla_cfg);
        let sql = start_node("sql", &sql_cfg);
        let (tla_startup, startup) = every_machine(&tla, &sql, machines, started);
        SimulatedFleet {
            machines,
            clusters,
            interval,
            block,
            tla_link,
            tla_startup,
            startup,
            sim,
            tla,
            sql,
            tla_cfg,
            sql_cfg,
            ws,
        }
    }

    /// Kills the SQL node and starts it again on its configuration while the fleet and the
    /// TLA run on (an operator's restart, a replacement node): seconds from its start until
    /// it counts every machine again. Its TLA sends it a full copy of the generation held.
    pub fn restart_sql(&mut self) -> f64 {
        self.sql.kill();
        let started = Instant::now();
        self.sql = start_node("sql", &self.sql_cfg);
        every_machine(&self.tla, &self.sql, self.machines, started).1
    }

    /// Kills the TLA and the SQL node and starts them again while the fleet runs on: seconds
    /// from their start until the TLA, then the SQL node, count every machine again. Goal
    /// 4's cold start without the fleet's own (the simulator building every machine's
    /// tables and its first full copies): the clusters are up, as in a deployment.
    pub fn restart_upper_tiers(&mut self) -> (f64, f64) {
        self.sql.kill();
        self.tla.kill();
        let started = Instant::now();
        self.tla = start_node("tla", &self.tla_cfg);
        self.sql = start_node("sql", &self.sql_cfg);
        every_machine(&self.tla, &self.sql, self.machines, started)
    }
}

/// Starts a TLA or SQL node of a [`SimulatedFleet`] on its configuration file.
fn start_node(role: &str, config: &str) -> Node {
    Node::start(&[role, "--config", config, "--listen", "127.0.0.1:0"])
}

/// Seconds from `started` until the TLA, then the SQL node, count every machine: the TLA's
/// share is collecting and merging the clusters' full copies, the rest is its first
/// complete generation's way to the SQL node. Polled together: the TLA is complete by the
/// time the SQL node is.
fn every_machine(tla: &Node, sql: &Node, machines: usize, started: Instant) -> (f64, f64) {
    let mut tla_done = None;
    sql.eventually(
        Duration::from_secs(900),
        "every machine at the SQL node",
        || {
            if tla_done.is_none() && tla.get_json("/health")["machines"] == machines as u64 {
                tla_done = Some(started.elapsed().as_secs_f64());
            }
            let h = sql.get_json("/health");
            (h["machines"] == machines as u64).then_some(())
        },
    );
    let sql_done = started.elapsed().as_secs_f64();
    (tla_done.unwrap_or(sql_done), sql_done)
}

/// What the three processes of a [`SimulatedFleet`] did over whole generations, from the
/// moment the SQL node showed one new generation to the moment it showed the last.
#[derive(Debug, Clone, Default)]
pub struct GenerationWindow {
    /// New generations in the window (each one's data latency is in `latencies`). More
    /// than the intervals it spans when the SQL node seals on its own schedule because the
    /// TLA was late (an overloaded machine).
    pub generations: usize,
    pub seconds: f64,
    /// The fleet's generation interval: the simulator makes one generation per interval.
    pub interval: Duration,
    /// Per new generation, the newest `sys` source's age in the first answer from it, ms,
    /// sorted: publish → visible.
    pub latencies: Vec<f64>,
    /// (role: "simulate", "tla", "sql"; CPU seconds in the window; RSS MiB at its end).
    pub cpu: Vec<(&'static str, f64, f64)>,
    /// (role; lowest and highest RSS MiB read at each poll over the window): a node's RSS
    /// moves with the round (a new generation and its snapshot are made while the last
    /// still serve), and the window ends just after the SQL node installs one.
    pub rss_range: Vec<(&'static str, f64, f64)>,
    /// TCP payload bytes (TLS records and all) the simulator's children sent to the TLA,
    /// and the TLA to the SQL node, in the window; None where `ss` could not tell.
    pub wire_clusters: Option<u64>,
    pub wire_sql: Option<u64>,
}

impl GenerationWindow {
    /// (lowest, highest) RSS MiB of `role` read over the window; NaNs if unknown.
    pub fn rss_range(&self, role: &str) -> (f64, f64) {
        self.rss_range
            .iter()
            .find(|(r, _, _)| *r == role)
            .map_or((f64::NAN, f64::NAN), |(_, lo, hi)| (*lo, *hi))
    }

    /// (CPU seconds, RSS MiB) of `role` over the window.
    pub fn usage(&self, role: &str) -> (f64, f64) {
        self.cpu
            .iter()
            .find(|(r, _, _)| *r == role)
            .map(|(_, c, m)| (*c, *m))
            .unwrap_or_default()
    }

    /// Adds `other` (another window of the same processes' roles) to this one: a mean over
    /// both when divided per generation.
    pub fn merge(&mut self, other: GenerationWindow) {
        if self.cpu.is_empty() {
            *self = other;
            return;
        }
        self.generations += other.generations;
        self.seconds += other.seconds;
        for (role, cpu, rss) in &mut self.cpu {
            let (c, m) = other.usage(role);
            *cpu += c;
            *rss = rss.max(m);
        }
        self.latencies.extend(other.latencies);
        self.latencies.sort_by(f64::total_cmp);
        let add = |a: Option<u64>, b: Option<u64>| Some(a? + b?);
        self.wire_clusters = add(self.wire_clusters, other.wire_clusters);
        self.wire_sql = add(self.wire_sql, other.wire_sql);
    }

    /// CPU cores `role` used on average.
    pub fn cores(&self, role: &str) -> f64 {
        self.usage(role).0 / self.seconds.max(f64::MIN_POSITIVE)
    }

    /// `total` over the window per generation interval (the fleet's rate of generations,
    /// whatever the SQL node sealed); NaN for an empty window.
    pub fn per_interval(&self, total: f64) -> f64 {
        if self.seconds <= 0.0 {
            return f64::NAN;
        }
        total / self.seconds * self.interval.as_secs_f64()
    }

    /// CPU seconds of `role` per generation interval.
    pub fn cpu_per_interval(&self, role: &str) -> f64 {
        self.per_interval(self.usage(role).0)
    }
}

/// Bytes of the TLA's links, as frames (compressed, before any TLS), from `query_links`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkBytes {
    /// Simulated clusters → TLA, summed over the clusters: the last full copy, and the mean
    /// of the later frames (one per generation).
    pub cluster_full: f64,
    pub cluster_frame: f64,
    /// TLA → SQL node: the last full copy and the last frame.
    pub sql_full: f64,
    pub sql_frame: f64,
}

/// The TCP payload bytes sent so far by the established connections `ss` selects with
/// `filter` (e.g. `src 127.0.80.1`); None if `ss` is missing or says nothing.
pub fn tcp_bytes_sent(filter: &str) -> Option<u64> {
    let out = Command::new("ss")
        .args(["-tinH", "state", "established"])
        .args(filter.split_whitespace())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let counts: Vec<u64> = text
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("bytes_sent:")?.parse().ok())
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

impl SimulatedFleet {
    /// Measures `generations` new generations at the SQL node (polling it every `poll`):
    /// CPU of the three processes, data latency, and bytes on the TLA's links' sockets.
    /// Gives up after `generations + 3` intervals (fewer generations in the window then).
    pub fn measure(&self, generations: usize, poll: Duration) -> GenerationWindow {
        let pids = [
            ("simulate", self.sim.pid()),
            ("tla", self.tla.pid()),
            ("sql", self.sql.pid()),
        ];
        let wire = || {
            (
                tcp_bytes_sent(&format!("src 127.0.{}.1", self.block)),
                tcp_bytes_sent(&format!("src {}", self.tla_link)),
            )
        };
        let snapshot = || {
            (
                Instant::now(),
                pids.map(|(_, p)| proc_usage(p).cpu_s),
                wire(),
            )
        };
        let deadline = Instant::now() + self.interval * (generations as u32 + 3);
        let mut start = None;
        let mut latencies = Vec::new();
        let mut last_id = None;
        let mut rss = pids.map(|_| (f64::INFINITY, 0.0f64));
        while latencies.len() < generations && Instant::now() < deadline {
            if start.is_some() {
                for ((_, pid), (lo, hi)) in pids.iter().zip(rss.iter_mut()) {
                    let now = proc_usage(*pid).rss_mib;
                    *lo = lo.min(now);
                    *hi = hi.max(now);
                }
            }
            let (status, a) = self.sql.sql("SELECT COUNT(*) FROM sys");
            if status == 200 {
                let id = a["generation"]["id"].as_u64();
                if last_id.is_some() && id != last_id {
                    if start.is_none() {
                        start = Some(snapshot());
                    } else if let Some(age) = a["tables"][0]["newest_source_age_ms"].as_f64() {
                        latencies.push(age);
                    }
                }
                last_id = id;
            }
            std::thread::sleep(poll);
        }
        let Some((t0, cpu0, (clusters0, sql0))) = start else {
            return GenerationWindow::default();
        };
        let (t1, cpu1, (clusters1, sql1)) = snapshot();
        // The end's reading is in the range too.
        let end = pids.map(|(_, p)| proc_usage(p).rss_mib);
        for ((lo, hi), now) in rss.iter_mut().zip(end) {
            *lo = lo.min(now);
            *hi = hi.max(now);
        }
        latencies.sort_by(f64::total_cmp);
        let delta = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?));
        GenerationWindow {
            generations: latencies.len(),
            seconds: (t1 - t0).as_secs_f64(),
            interval: self.interval,
            latencies,
            cpu: pids
                .iter()
                .zip(cpu0.iter().zip(cpu1).zip(end))
                .map(|((role, _), ((c0, c1), rss))| (*role, c1 - c0, rss))
                .collect(),
            rss_range: pids
                .iter()
                .zip(rss)
                .map(|((role, _), (lo, hi))| (*role, lo, hi))
                .collect(),
            wire_clusters: delta(clusters0, clusters1),
            wire_sql: delta(sql0, sql1),
        }
    }

    /// The TLA's link bytes from `query_links` (queried once: the answer travels the links);
    /// NaN where the SQL node could not answer.
    pub fn link_bytes(&self) -> LinkBytes {
        let (status, links) = self.sql.sql(
            "SELECT direction, SUM(last_full_frame_bytes), \
             SUM(CASE WHEN frames > 1 THEN (bytes - last_full_frame_bytes) / (frames - 1) END), \
             SUM(last_frame_bytes) \
             FROM query_links WHERE node LIKE 'tla@%' GROUP BY direction",
        );
        let mut b = LinkBytes {
            cluster_full: f64::NAN,
            cluster_frame: f64::NAN,
            sql_full: f64::NAN,
            sql_frame: f64::NAN,
        };
        if status != 200 {
            eprintln!("bench: query_links: {links}");
            return b;
        }
        for r in links["rows"].as_array().into_iter().flatten() {
            let f = |i: usize| r[i].as_f64().unwrap_or(f64::NAN);
            match r[0].as_str() {
                Some("child") => (b.cluster_full, b.cluster_frame) = (f(1), f(2)),
                Some("parent") => (b.sql_full, b.sql_frame) = (f(1), f(3)),
                _ => {}
            }
        }
        b
    }
}

/// Replaces (or appends) the section `name` of BENCHMARKS.md, between HTML comment markers,
/// heading it with the machine, date, commit and the command that produced it.
pub fn write_bench_section(name: &str, command: &str, body: &str) -> std::io::Result<()> {
    let path = repo().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        "# Benchmarks\n\nEvery figure here was written by `make bench`; each section names its command.\n".to_string()
    });
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(repo())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    // A run on a tree with changes of its own is not HEAD's figure: say so (BENCHMARKS.md
    // itself, which benchmarks rewrite, does not count).
    let dirty = Command::new("git")
        .args([
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":!BENCHMARKS.md",
        ])
        .current_dir(repo())
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    let commit = if dirty {
        format!("{commit} with uncommitted changes")
    } else {
        commit
    };
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let (start, end) = (
        format!("<!-- bench:{name} -->"),
        format!("<!-- /bench:{name} -->"),
    );
    let section = format!(
        "{start}\n{body}\n\n_Machine: {cpu}, {cores} cores, {mem_gib:.0} GiB. Date: {date}. Commit: {commit}. Command: `{command}`._\n{end}"
    );
    let new = match (old.find(&start), old.find(&end)) {
        (Some(a), Some(b)) if a < b => format!("{}{}{}", &old[..a], section, &old[b + end.len()..]),
        _ => format!("{}\n{}\n", old.trim_end(), section),
    };
    std::fs::write(path, new)
}

/// An HTTP/1.1 client with a connection of its own from a loopback address of its own, so
/// that a node without tokens, which tells clients apart by address (admission, fairness,
/// quarantine), sees each load client as a separate client, as it would see a fleet of
/// users. Keeps its connection alive and reconnects when the node closes it.
pub struct LoopbackClient {
    from: std::net::IpAddr,
    to: std::net::SocketAddr,
    conn: Option<std::io::BufReader<std::net::TcpStream>>,
    timeout: Duration,
}

impl LoopbackClient {
    /// A client at `from` (any 127.0.0.0/8 address) for the node at `base`
    /// (`http://host:port`).
    pub fn new(from: std::net::IpAddr, base: &str, timeout: Duration) -> LoopbackClient {
        let to = base
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("the node's address is host:port");
        LoopbackClient {
            from,
            to,
            conn: None,
            timeout,
        }
    }

    fn connect(&self) -> std::io::Result<std::io::BufReader<std::net::TcpStream>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let stream = rt.block_on(async {
            let socket = match self.to {
                std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            socket.bind(std::net::SocketAddr::new(self.from, 0))?;
            socket.connect(self.to).await?.into_std()
        })?;
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(self.timeout))?;
        Ok(std::io::BufReader::new(stream))
    }

    /// POSTs `sql` to `/sql` as text/plain: (status, body). A connection the node closed
    /// between requests is opened again once.
    pub fn sql(&mut self, sql: &str) -> std::io::Result<(u16, Vec<u8>)> {
        match self.exchange(sql) {
            Ok(answer) => Ok(answer),
            Err(_) => {
                self.conn = None;
                self.exchange(sql)
            }
        }
    }

    fn exchange(&mut self, sql: &str) -> std::io::Result<(u16, Vec<u8>)> {
        use std::io::{BufRead, Read, Write};
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let conn = self.conn.as_mut().ok_or_else(|| bad("no connection"))?;
        let head = format!(
            "POST /sql HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            self.to,
            sql.len()
        );
        let stream = conn.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(sql.as_bytes())?;
        let mut line = String::new();
        conn.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no status line"))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            line.clear();
            if conn.read_line(&mut line)? == 0 {
                return Err(bad("headers cut short"));
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse::<usize>().ok(),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                conn.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| bad("bad chunk size"))?;
                let start = body.len();
                body.resize(start + size, 0);
                conn.read_exact(&mut body[start..])?;
                line.clear();
                conn.read_line(&mut line)?;
                if size == 0 {
                    break;
                }
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            conn.read_exact(&mut body)?;
        } else {
            conn.read_to_end(&mut body)?;
            close = true;
        }
        if close {
            self.conn = None;
        }
        Ok((status, body))
    }
}

//! What the benchmarks (`integration/benches/`, `make bench`) share: their knobs from the
//! environment, percentiles, a process's CPU and memory from /proc, a simulated fleet (in
//! process, or as `queryd simulate` → TLA → SQL node processes), and writing a section of
//! BENCHMARKS.md.

use std::process::Command;
use std::time::{Duration, Instant};

use query_actors::simulate::{FleetSimulator, SimulateConfig, TABLES};
use query_actors::table::load_schema_dir;

use crate::fleet::{free_port, toml_list};
use crate::{repo, Node, Simulator, Workspace};

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
/// prewarming every simulated table. Used by the fleet and overload benchmarks; every
/// process dies with it.
pub struct SimulatedFleet {
    pub machines: usize,
    pub clusters: usize,
    pub interval: Duration,
    /// Seconds from the start until the SQL node counted every machine.
    pub startup: f64,
    pub sim: Simulator,
    pub tla: Node,
    pub sql: Node,
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
            _ => Duration::from_secs(20),
        }
    }

    /// Starts the three processes and waits until the SQL node counts every machine.
    /// `sql_extra` is appended to the SQL node's config (whole TOML sections, e.g.
    /// `[http]`).
    pub fn start(machines: usize, block: u8, sql_extra: &str) -> SimulatedFleet {
        let clusters = machines.div_ceil(Self::PER_CLUSTER);
        let interval = Self::interval_for(machines);
        let ms = interval.as_millis() as u64;
        let started = Instant::now();
        let sim = Simulator::start(&[
            "--machines",
            &machines.to_string(),
            "--clusters",
            &clusters.to_string(),
            "--serve",
            "clusters",
            "--listen",
            &format!("127.0.{block}.1:20000"),
            "--interval",
            &format!("{ms}ms"),
            "--offset",
            "0ms",
        ]);
        let ws = Workspace::new();
        let paths = "[paths]\nschemas = \"schemas\"\nstatic_tables = \"static-tables/index.toml\"\nviews = \"views.toml\"\n";
        std::fs::write(
            ws.path("prewarm.toml"),
            format!("tables = {}\n", toml_list(&TABLES.map(String::from))),
        )
        .expect("prewarm");
        let tla_ip = format!("127.0.{block}.5");
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
                "{}\n[link]\nlisten = \"{tla_link}\"\nchildren = {}\ndrop_after = \"{drop_after}\"\n\n[requests]\nprewarm = \"prewarm.toml\"\n",
                common(&tla_ip, Self::TLA_TENTHS),
                toml_list(&sim.children)
            ),
        );
        let sql_cfg = write(
            "sql.toml",
            format!(
                "{}\n[link]\nchildren = [\"{tla_link}\"]\ndrop_after = \"{drop_after}\"\n\n[requests]\nprewarm = \"prewarm.toml\"\nwait = \"600s\"\n\n{sql_extra}\n",
                common(&format!("127.0.{block}.6"), Self::SQL_TENTHS)
            ),
        );
        let start = |role: &str, config: &str| {
            Node::start(&[role, "--config", config, "--listen", "127.0.0.1:0"])
        };
        let tla = start("tla", &tla_cfg);
        let sql = start("sql", &sql_cfg);
        sql.eventually(
            Duration::from_secs(900),
            "every machine at the SQL node",
            || {
                let h = sql.get_json("/health");
                (h["machines"] == machines as u64).then_some(())
            },
        );
        SimulatedFleet {
            machines,
            clusters,
            interval,
            startup: started.elapsed().as_secs_f64(),
            sim,
            tla,
            sql,
            ws,
        }
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

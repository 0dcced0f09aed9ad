//! What the benchmarks (`integration/benches/`, `make bench`) share: their knobs from the
//! environment, percentiles, a process's CPU and memory from /proc, a simulated fleet, and
//! writing a section of BENCHMARKS.md.

use std::process::Command;

use query_actors::simulate::{FleetSimulator, SimulateConfig};
use query_actors::table::load_schema_dir;

use crate::repo;

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

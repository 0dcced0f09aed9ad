//! TLA children (OSR 3.5, deferring) at fleet scale, as release processes on loopback:
//! `queryd simulate` serving 70,000 machines as 1,000 clusters (70 each, 20% changing per
//! generation, zstd) → a `queryd tla` deferring every simulated table to 0, 1 or 2 `queryd
//! tla-child` processes → a `queryd sql` node. All processes share this machine's cores, so
//! the figures are CPU seconds per generation of each process (utime + stime from /proc)
//! and the TLA's critical path: from every cluster's round being in (or the grace running
//! out) to the generation sealed (`query_last_seal_critical_seconds`), not wall time alone.
//!
//! `BENCH_SCALE` (default 1) scales the fleet; `BENCH_CHILDREN` (default `0,1,2`) the
//! configurations run. Each configuration's figures are kept in
//! `target/tla-children-bench.txt`, so they can be run one at a time (each in its own quiet
//! window); the section is written from every configuration measured so far.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use query_actors::simulate::TABLES;
use query_integration::bench::{
    env_f64, percentile, proc_usage, whole_clusters_args, write_bench_section, SimulatedFleet,
};
use query_integration::fleet::{free_port, toml_list};
use query_integration::{repo, Node, Simulator, Workspace};

const PER_CLUSTER: usize = 70;
/// Generations measured at the TLA per configuration (after one to settle).
const GENERATIONS: usize = 4;

struct Run {
    children: usize,
    machines: usize,
    interval: Duration,
    /// CPU seconds per generation: (process, seconds).
    cpu: Vec<(String, f64)>,
    /// The TLA's seal: whole, and its critical path (median over the window), seconds.
    seal: f64,
    critical: f64,
    critical_max: f64,
    /// Children failures in the window (the TLA took their tables).
    failures: u64,
    up_after: f64,
}

fn metric(node: &Node, name: &str) -> Option<f64> {
    let (status, text) = node.get("/metrics");
    if status != 200 {
        return None;
    }
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn run(children: usize, machines: usize) -> Run {
    let started = Instant::now();
    let clusters = machines.div_ceil(PER_CLUSTER);
    let interval = SimulatedFleet::interval_for(machines);
    let ms = interval.as_millis() as u64;
    let block = 90 + children as u8;
    let sim_ip = format!("127.0.{block}.1");
    let args = whole_clusters_args(machines, clusters, &sim_ip, ms);
    let sim = Simulator::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let ws = Workspace::new();
    std::fs::write(
        ws.path("prewarm.toml"),
        format!("tables = {}\n", toml_list(&TABLES.map(String::from))),
    )
    .expect("prewarm");
    let paths = "[paths]\nschemas = \"schemas\"\nstatic_tables = \"static-tables/index.toml\"\nviews = \"views.toml\"\n";
    let common = |ip: &str, tenths: u64| {
        format!(
            "{paths}\n[node]\nmachine_ip = \"{ip}\"\ncluster = \"top\"\n\n[generation]\ninterval = \"{ms}ms\"\noffset = \"{}ms\"\n\n[host]\nenabled = false\n",
            ms * tenths / 10
        )
    };
    let write = |name: &str, text: String| {
        let path = ws.path(name);
        std::fs::write(&path, text).expect("write config");
        path.to_str().expect("utf8 path").to_string()
    };
    let start = |role: &str, config: &str| {
        Node::start(&[role, "--config", config, "--listen", "127.0.0.1:0"])
    };
    let drop_after = format!("{}ms", ms * 4);
    let child_links: Vec<String> = (0..children)
        .map(|i| {
            let ip = format!("127.0.{block}.{}", 11 + i);
            format!("{ip}:{}", free_port(&ip))
        })
        .collect();
    let kids: Vec<Node> = child_links
        .iter()
        .enumerate()
        .map(|(i, link)| {
            let cfg = write(
                &format!("child{i}.toml"),
                format!(
                    "{}\n[link]\nlisten = \"{link}\"\ndrop_after = \"{drop_after}\"\n",
                    common(&format!("127.0.{block}.{}", 11 + i), 0)
                ),
            );
            start("tla-child", &cfg)
        })
        .collect();
    let tla_ip = format!("127.0.{block}.5");
    let tla_link = format!("{tla_ip}:{}", free_port(&tla_ip));
    let deferral = match children {
        0 => String::new(),
        _ => format!(
            "[tla_children]\nchildren = {}\ntables = {}\ntimeout = \"{}ms\"\n",
            toml_list(&child_links),
            toml_list(&TABLES.map(String::from)),
            // The TLA seals at 30% of the interval: the children may take most of the rest.
            ms * 13 / 20
        ),
    };
    let tla_cfg = write(
        "tla.toml",
        format!(
            "{}\n[link]\nlisten = \"{tla_link}\"\nchildren = {}\ndrop_after = \"{drop_after}\"\n\n[requests]\nprewarm = \"prewarm.toml\"\n\n{deferral}",
            common(&tla_ip, 3),
            toml_list(&sim.children),
        ),
    );
    let sql_ip = format!("127.0.{block}.6");
    let sql_cfg = write(
        "sql.toml",
        format!(
            "{}\n[link]\nchildren = [\"{tla_link}\"]\ndrop_after = \"{drop_after}\"\n\n[requests]\nprewarm = \"prewarm.toml\"\nwait = \"600s\"\n",
            common(&sql_ip, 6),
        ),
    );
    let tla = start("tla", &tla_cfg);
    let sql = start("sql", &sql_cfg);
    sql.eventually(
        Duration::from_secs(600),
        "every machine at the SQL node",
        || {
            let h = sql.get_json("/health");
            (h["machines"] == machines as u64).then_some(())
        },
    );
    let up_after = started.elapsed().as_secs_f64();
    eprintln!("tla_children: {children} children, {machines} machines up after {up_after:.0} s");

    let mut pids: Vec<(String, u32)> = vec![
        ("simulate".into(), sim.pid()),
        ("tla".into(), tla.pid()),
        ("sql".into(), sql.pid()),
    ];
    pids.extend(
        kids.iter()
            .enumerate()
            .map(|(i, k)| (format!("tla-child {}", i + 1), k.pid())),
    );
    let sealed = || metric(&tla, "query_generations_sealed_total").unwrap_or(0.0) as u64;
    let failures = || metric(&tla, "query_tla_child_failures_total").unwrap_or(0.0) as u64;
    // Settle: one generation sealed after every machine is in.
    let wait_next = |after: u64| {
        let deadline = Instant::now() + interval * 3;
        while sealed() <= after && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        sealed()
    };
    let mut n = wait_next(sealed());
    let (t0, cpu0, f0) = (
        Instant::now(),
        pids.iter()
            .map(|(_, p)| proc_usage(*p).cpu_s)
            .collect::<Vec<_>>(),
        failures(),
    );
    let (mut seals, mut critical) = (Vec::new(), Vec::new());
    for _ in 0..GENERATIONS {
        n = wait_next(n);
        seals.push(metric(&tla, "query_last_seal_seconds").unwrap_or(f64::NAN));
        critical.push(metric(&tla, "query_last_seal_critical_seconds").unwrap_or(f64::NAN));
    }
    let seconds = t0.elapsed().as_secs_f64();
    let per_generation = interval.as_secs_f64() / seconds;
    let cpu = pids
        .iter()
        .zip(cpu0)
        .map(|((role, pid), c0)| (role.clone(), (proc_usage(*pid).cpu_s - c0) * per_generation))
        .collect();
    seals.sort_by(f64::total_cmp);
    critical.sort_by(f64::total_cmp);
    let r = Run {
        children,
        machines,
        interval,
        cpu,
        seal: percentile(&seals, 0.5),
        critical: percentile(&critical, 0.5),
        critical_max: critical.last().copied().unwrap_or(f64::NAN),
        failures: failures() - f0,
        up_after,
    };
    drop((sql, tla, kids, sim));
    r
}

fn results_file() -> std::path::PathBuf {
    repo().join("target/tla-children-bench.txt")
}

fn main() {
    // As `queryd` runs: without transparent huge pages.
    query_actors::heap::no_huge_pages();
    let scale = env_f64("BENCH_SCALE", 1.0);
    let machines = ((70_000.0 * scale) as usize).max(PER_CLUSTER);
    let counts: Vec<usize> = std::env::var("BENCH_CHILDREN")
        .unwrap_or_else(|_| "0,1,2".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    // Earlier configurations' rows (one line each: children, machines, markdown row).
    let mut rows: BTreeMap<(usize, usize), String> = std::fs::read_to_string(results_file())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, '\t');
            Some((
                (f.next()?.parse().ok()?, f.next()?.parse().ok()?),
                f.next()?.to_string(),
            ))
        })
        .collect();
    for children in counts {
        let r = run(children, machines);
        let cpu = |role: &str| {
            r.cpu
                .iter()
                .filter(|(p, _)| p == role || p.starts_with(&format!("{role} ")))
                .map(|(_, c)| format!("{c:.2}"))
                .collect::<Vec<_>>()
                .join(" + ")
        };
        let total: f64 = r.cpu.iter().map(|(_, c)| c).sum();
        let row = format!(
            "| {} | {} | {} s | {:.0} s | {} | {} | {} | {} | {:.2} | {:.2} s | {:.2} s (max {:.2}) | {} |",
            r.children,
            r.machines,
            r.interval.as_secs(),
            r.up_after,
            cpu("tla"),
            match cpu("tla-child") {
                c if c.is_empty() => "-".to_string(),
                c => c,
            },
            cpu("sql"),
            cpu("simulate"),
            total,
            r.seal,
            r.critical,
            r.critical_max,
            r.failures,
        );
        eprintln!("{row}");
        rows.insert((r.children, r.machines), row);
        let text: String = rows
            .iter()
            .map(|((c, m), row)| format!("{c}\t{m}\t{row}\n"))
            .collect();
        std::fs::write(results_file(), text).expect("keep the results");
    }
    let body = format!(
        "## TLA children: the fleet's merge shared with 0, 1 and 2 TLA children\n\n\
         `queryd simulate --serve clusters` (70 machines per cluster, 20% changing per generation, zstd) → `queryd tla` deferring every simulated table ({}) to its `queryd tla-child` processes (split by table name: 1 child merges all 6, 2 children 3 each) → `queryd sql`. Every process shares this machine's 2 cores, so the CPU columns are CPU seconds per generation of each process (utime + stime from /proc over {GENERATIONS} generations); `tla` includes decoding what it does not defer (nothing here), forwarding the clusters' frames, decoding the children's merged tables and encoding for the SQL node. *Critical path*: at the TLA, from every cluster's round being in (or the grace running out) to the generation sealed (`query_last_seal_critical_seconds`, median of the window). With children it includes asking them and decoding their answers.\n\n\
         | children | machines | interval | up after | TLA CPU s/gen | children CPU s/gen | SQL node CPU s/gen | simulator CPU s/gen | all CPU s/gen | TLA seal (whole) | TLA critical path | child failures |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n{}\n",
        TABLES.join(", "),
        rows.values().cloned().collect::<Vec<_>>().join("\n"),
    );
    // Rows of earlier runs are kept (`results_file`): the command names this run's.
    let scaled = if scale == 1.0 {
        String::new()
    } else {
        format!("BENCH_SCALE={scale} ")
    };
    let command = match std::env::var("BENCH_CHILDREN") {
        Ok(c) => format!(
            "{scaled}BENCH_CHILDREN={c} cargo bench --workspace --bench tla_children (other rows from earlier runs)"
        ),
        Err(_) => format!(
            "{scaled}cargo bench --workspace --bench tla_children (0, 1 and 2 children in turn)"
        ),
    };
    write_bench_section("tla-children", &command, &body).expect("write BENCHMARKS.md");
}

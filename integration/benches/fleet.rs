//! The production path at fleet scale, as release processes on loopback: `queryd simulate`
//! serving C simulated clusters of 70 machines (what C cluster proxies would send) over TCP
//! → a `queryd tla` → a `queryd sql` node. For each fleet size (1,000, 10,000 and 70,000
//! machines at `BENCH_SCALE` 1):
//!
//! - data latency: for each new generation at the SQL node (a poller asks every 50 ms),
//!   the age of the newest source of `sys` in the first answer from it: the time from the
//!   freshest publish to the answer showing it;
//! - CPU and memory of the three processes over the measured generations, and the bytes per
//!   generation on the TLA's links (`query_links`);
//! - throughput: 16 concurrent HTTP clients running the SQL benchmark's queries
//!   (`bench/queries.sql`) in turn against the SQL node: queries/s, p50/p99 latency.
//!
//! `BENCH_SCALE` (default 1.0) scales the fleets; `BENCH_SECONDS` (default 15) is the
//! throughput run per fleet.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use query_integration::bench::{
    env_f64, human_bytes, parse_queries, percentile, write_bench_section, LinkBytes, SimulatedFleet,
};
use query_integration::{repo, Node};
use serde_json::Value;

const CLIENTS: usize = 16;
/// New generations measured at the SQL node per fleet.
const GENERATIONS: usize = 4;
const POLL: Duration = Duration::from_millis(50);
/// Timed runs per query with no other client (after one warm-up).
const ALONE_RUNS: usize = 3;

struct FleetRun {
    machines: usize,
    clusters: usize,
    interval: Duration,
    startup: f64,
    /// Newest-source age at the first answer of each new generation, ms.
    latencies: Vec<f64>,
    /// (role, CPU cores over the window, RSS MiB).
    usage: Vec<(&'static str, f64, f64)>,
    /// Bytes of the TLA's links, summed over its clusters: the last full copy and the mean
    /// of the other frames; to the SQL node: the last full copy and the last frame.
    cluster_full: f64,
    cluster_frame: f64,
    sql_full: f64,
    sql_frame: f64,
    /// Median ms per query through HTTP with no other client.
    alone: BTreeMap<String, f64>,
    throughput: Throughput,
    /// Arrow MiB of the generation held by the TLA and the SQL node (goal 4: RSS at most
    /// 3x this).
    arrow_mib: (f64, f64),
}

/// `query_generation_arrow_bytes` of a node, MiB (NaN if absent).
fn arrow_mib(node: &Node) -> f64 {
    let (_, text) = node.get("/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix("query_generation_arrow_bytes "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(f64::NAN, |b| b / (1024.0 * 1024.0))
}

#[derive(Default)]
struct Throughput {
    queries: usize,
    errors: usize,
    seconds: f64,
    /// Latency per query name, ms, sorted.
    per_query: BTreeMap<String, Vec<f64>>,
    all: Vec<f64>,
}

fn run_fleet(machines: usize, block: u8, seconds: f64, queries: &[(String, String)]) -> FleetRun {
    let fleet = SimulatedFleet::start(machines, block, "");
    let sql = &fleet.sql;
    let (clusters, interval) = (fleet.clusters, fleet.interval);
    let startup = fleet.startup;
    eprintln!("fleet: {machines} machines up after {startup:.0} s");

    // Data latency, CPU and link bytes over GENERATIONS new generations.
    let window = fleet.measure(GENERATIONS, POLL);
    let usage = ["simulate", "tla", "sql"]
        .map(|role| (role, window.cores(role), window.usage(role).1))
        .to_vec();
    let latencies = window.latencies;
    let arrow_mib = (arrow_mib(&fleet.tla), arrow_mib(sql));
    eprintln!(
        "fleet: {machines} machines: Arrow TLA / SQL node {:.0} / {:.0} MiB",
        arrow_mib.0, arrow_mib.1
    );
    let LinkBytes {
        cluster_full,
        cluster_frame,
        sql_full,
        sql_frame,
    } = fleet.link_bytes();

    let alone = queries
        .iter()
        .map(|(name, q)| {
            let mut times: Vec<f64> = (0..=ALONE_RUNS)
                .map(|_| {
                    let t = Instant::now();
                    let (status, answer) = sql.sql(q);
                    assert_eq!(status, 200, "{name}: {answer}");
                    t.elapsed().as_secs_f64() * 1000.0
                })
                .skip(1)
                .collect();
            times.sort_by(f64::total_cmp);
            (name.clone(), percentile(&times, 0.5))
        })
        .collect();
    let throughput = load(sql, queries, seconds);
    eprintln!(
        "fleet: {machines} machines: {:.1} queries/s",
        throughput.queries as f64 / throughput.seconds
    );
    FleetRun {
        machines,
        clusters,
        interval,
        startup,
        latencies,
        usage,
        cluster_full,
        cluster_frame,
        sql_full,
        sql_frame,
        alone,
        throughput,
        arrow_mib,
    }
}

/// `CLIENTS` threads posting `queries` in turn (each thread starting at its own) for
/// `seconds`.
fn load(sql: &Node, queries: &[(String, String)], seconds: f64) -> Throughput {
    let url = sql.url("/sql");
    let stop = Arc::new(AtomicBool::new(false));
    let results = Arc::new(Mutex::new(Throughput::default()));
    let started = Instant::now();
    std::thread::scope(|s| {
        for c in 0..CLIENTS {
            let (url, stop, results) = (&url, stop.clone(), results.clone());
            s.spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(120))
                    .build();
                let mut i = c;
                let mut mine: Vec<(usize, f64, bool)> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let q = i % queries.len();
                    let t = Instant::now();
                    let ok = agent
                        .post(url)
                        .set("Content-Type", "text/plain")
                        .send_string(&queries[q].1)
                        .ok()
                        .and_then(|r| r.into_json::<Value>().ok())
                        .is_some();
                    mine.push((q, t.elapsed().as_secs_f64() * 1000.0, ok));
                    i += 1;
                }
                let mut r = results.lock().unwrap_or_else(|p| p.into_inner());
                for (q, ms, ok) in mine {
                    if ok {
                        r.queries += 1;
                        r.all.push(ms);
                        r.per_query
                            .entry(queries[q].0.clone())
                            .or_default()
                            .push(ms);
                    } else {
                        r.errors += 1;
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
    });
    let mut r = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
    r.seconds = started.elapsed().as_secs_f64();
    r.all.sort_by(f64::total_cmp);
    for v in r.per_query.values_mut() {
        v.sort_by(f64::total_cmp);
    }
    r
}

fn main() {
    let scale = env_f64("BENCH_SCALE", 1.0).clamp(0.001, 1.0);
    let seconds = env_f64("BENCH_SECONDS", 15.0).max(5.0);
    let text = std::fs::read_to_string(repo().join("bench/queries.sql")).expect("queries");
    let queries = parse_queries(&text);
    let sizes: Vec<usize> = [1_000.0, 10_000.0, 70_000.0]
        .iter()
        .map(|m| ((m * scale) as usize).max(SimulatedFleet::PER_CLUSTER))
        .collect();
    let bench_started = Instant::now();
    let runs: Vec<FleetRun> = sizes
        .iter()
        .zip(80u8..)
        .map(|(&m, block)| run_fleet(m, block, seconds, &queries))
        .collect();

    let mut body = format!(
        "## Fleet: `queryd simulate` → TLA → SQL node, release processes on loopback\n\n\
         `queryd simulate --serve clusters` serves the fleet as its cluster proxies would \
         (70 machines per cluster, one part per machine, 20% of machines changing each \
         generation, zstd) over TCP to a `queryd tla`, which serves a `queryd sql` node; both \
         prewarm every simulated table. The simulator seals at 0% and the TLA at 30% of the \
         interval; the SQL node seals when the TLA's generation arrives. All three processes, the poller and the clients share the \
         machine's cores.\n\n\
         *Data latency*: for {GENERATIONS} new generations at the SQL node, the age of the \
         newest `sys` source in the first answer from it (a poller asks every {} ms): \
         publish → visible. The schedule alone accounts for 30% of the interval. *Throughput*: \
         {CLIENTS} concurrent HTTP clients run the {} queries of `bench/queries.sql` in turn \
         for {seconds:.0} s.\n\n\
         | machines | clusters | interval | up after | latency p50 | latency p99 | TLA CPU | SQL node CPU | simulator CPU | RSS TLA / SQL node | Arrow TLA / SQL node (RSS ×) | clusters → TLA per generation, full / later | TLA → SQL node, full / later | queries/s | query p50 | query p99 | failed |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        POLL.as_millis(),
        queries.len()
    );
    for r in &runs {
        let u = |role: &str| {
            r.usage
                .iter()
                .find(|(n, _, _)| *n == role)
                .map(|(_, c, m)| (*c, *m))
                .unwrap_or_default()
        };
        let t = &r.throughput;
        body.push_str(&format!(
            "| {} | {} | {} s | {:.0} s | {:.0} ms | {:.0} ms | {:.2} cores | {:.2} cores | {:.2} cores | {:.0} / {:.0} MiB | {:.0} / {:.0} MiB ({:.1} / {:.1}) | {} / {} | {} / {} | {:.1} | {:.0} ms | {:.0} ms | {} |\n",
            r.machines,
            r.clusters,
            r.interval.as_secs(),
            r.startup,
            percentile(&r.latencies, 0.5),
            percentile(&r.latencies, 0.99),
            u("tla").0,
            u("sql").0,
            u("simulate").0,
            u("tla").1,
            u("sql").1,
            r.arrow_mib.0,
            r.arrow_mib.1,
            u("tla").1 / r.arrow_mib.0,
            u("sql").1 / r.arrow_mib.1,
            human_bytes(r.cluster_full),
            human_bytes(r.cluster_frame),
            human_bytes(r.sql_full),
            human_bytes(r.sql_frame),
            t.queries as f64 / t.seconds,
            percentile(&t.all, 0.5),
            percentile(&t.all, 0.99),
            t.errors,
        ));
    }
    body.push_str(&format!(
        "\nMedian ms per query through HTTP, alone (one client, {ALONE_RUNS} runs after a warm-up) / \
         under the {CLIENTS}-client load:\n\n| query |"
    ));
    for r in &runs {
        body.push_str(&format!(" {} machines |", r.machines));
    }
    body.push_str("\n|---|");
    for _ in &runs {
        body.push_str("---:|");
    }
    body.push('\n');
    for (name, _) in &queries {
        body.push_str(&format!("| {name} |"));
        for r in &runs {
            let loaded = r
                .throughput
                .per_query
                .get(name)
                .map(|v| percentile(v, 0.5))
                .unwrap_or(f64::NAN);
            let alone = r.alone.get(name).copied().unwrap_or(f64::NAN);
            body.push_str(&format!(" {alone:.0} / {loaded:.0} |"));
        }
        body.push('\n');
    }
    if let Some(big) = runs.last() {
        let t = &big.throughput;
        let qps = t.queries as f64 / t.seconds;
        let p99 = percentile(&big.latencies, 0.99);
        body.push_str(&format!(
            "\n**Against the goals** ({} machines): {qps:.0} queries/s from one SQL node on this \
             {}-core machine, which also runs the simulator and the TLA (goal: 250/s; the mix \
             is joins and aggregations over the whole fleet, each query planned and executed \
             afresh, on cores shared with the rest of the hierarchy); data latency p99 {p99:.0} ms \
             at a {} s interval, of which the schedule accounts for {} ms (goal: within one \
             interval plus the merge time).\n",
            big.machines,
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            big.interval.as_secs(),
            big.interval.as_millis() * u128::from(SimulatedFleet::TLA_TENTHS) / 10,
        ));
    }
    body.push_str(&format!(
        "\nWhole benchmark: {:.0} s.",
        bench_started.elapsed().as_secs_f64()
    ));
    let command = if scale == 1.0 {
        "make bench".to_string()
    } else {
        format!("BENCH_SCALE={scale} cargo bench -p query-integration --bench fleet")
    };
    if let Err(e) = write_bench_section("fleet", &command, &body) {
        eprintln!("fleet: cannot write BENCHMARKS.md: {e}");
        std::process::exit(1);
    }
    println!("{body}");
}

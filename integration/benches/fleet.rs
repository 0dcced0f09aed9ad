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
//! - throughput: 16 concurrent HTTP clients, each from a loopback address of its own (a
//!   node without tokens tells clients apart by address), running the SQL benchmark's queries
//!   (`bench/queries.sql`) in turn against the SQL node, twice: the *varied mix* (each request
//!   draws its own thresholds, names and limit, so no two texts are the same and the answer
//!   cache cannot serve them: issue 17's goal) and the *repeated mix* (the 16 texts as
//!   written, which the per-generation answer cache may serve): queries/s, p50/p99 latency,
//!   and the SQL node's CPU per query; and the highest RSS of the TLA and the SQL node
//!   while the mixes ran (the largest fleet's, in the text against the goals).
//!
//! `BENCH_SCALE` (default 1.0) scales the fleets; `BENCH_FLEETS` (e.g. `250000`) replaces
//! the fleet sizes (then the section is `fleet-big`, a table of its own); `BENCH_SECONDS`
//! (default 15) is each throughput run per fleet. `BENCH_SQL_CONFIG` is TOML appended
//! to the SQL node's config (whole sections), to compare its settings in scratch runs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use query_integration::bench::{
    env_f64, human_bytes, parse_queries, percentile, proc_usage, write_bench_section, LinkBytes,
    LoopbackClient, SimulatedFleet,
};
use query_integration::{repo, Node};
use serde::de::IgnoredAny;
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
    /// Seconds until the SQL node, and the TLA before it, counted every machine.
    startup: f64,
    tla_startup: f64,
    /// Seconds until the SQL node counted every machine again after a restart of it alone,
    /// and until the TLA, then the SQL node, did after a restart of both, the fleet
    /// running on.
    sql_restart: f64,
    both_restart: (f64, f64),
    /// Newest-source age at the first answer of each new generation, ms.
    latencies: Vec<f64>,
    /// (role, CPU cores over the window, RSS MiB).
    usage: Vec<(&'static str, f64, f64)>,
    /// Lowest and highest RSS MiB of the TLA and the SQL node read over the window.
    rss_range: [(f64, f64); 2],
    /// Highest RSS MiB of the TLA and the SQL node under the query mixes.
    load_rss_top: [f64; 2],
    /// Bytes of the TLA's links, summed over its clusters: the last full copy and the mean
    /// of the other frames; to the SQL node: the last full copy and the last frame.
    cluster_full: f64,
    cluster_frame: f64,
    sql_full: f64,
    sql_frame: f64,
    /// Median ms per query through HTTP with no other client.
    alone: BTreeMap<String, f64>,
    /// The varied mix (the goal) and the repeated one (answer cache allowed).
    throughput: Throughput,
    repeated: Throughput,
    /// Arrow MiB of the generation held by the TLA and the SQL node (goal 4: RSS at most
    /// 3x this).
    arrow_mib: (f64, f64),
}

/// (CPU cores, RSS MiB at the end of the measured window) of `role`; zeros if unknown.
fn usage(run: &FleetRun, role: &str) -> (f64, f64) {
    run.usage
        .iter()
        .find(|(r, _, _)| *r == role)
        .map(|(_, c, m)| (*c, *m))
        .unwrap_or_default()
}

/// `query_generation_arrow_bytes` of a node, MiB (NaN if absent).
fn arrow_mib(node: &Node) -> f64 {
    metric(node, "query_generation_arrow_bytes") / (1024.0 * 1024.0)
}

/// A metric of a node without labels (NaN if absent).
fn metric(node: &Node, name: &str) -> f64 {
    let (_, text) = node.get("/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

#[derive(Default)]
struct Throughput {
    queries: usize,
    errors: usize,
    /// Failed requests by HTTP status (0: no answer: connection or parse error), with one
    /// error code seen for each.
    failures: BTreeMap<u16, (usize, String)>,
    seconds: f64,
    /// The SQL node's CPU seconds per answered query, net of what it used per second
    /// while only the poller asked (decoding generations).
    cpu_per_query: f64,
    /// Queries the SQL node stopped at `heavy_query_after` and ran again in a heavy
    /// client's place (`query_queries_moved_to_heavy_total`).
    moved_to_heavy: f64,
    /// Aggregates the SQL node read from results kept for the generation rather than ran
    /// (`query_aggregates_read_total`, `[sql] aggregate_cache_mb`).
    aggregates_read: f64,
    /// Latency per query name, ms, sorted.
    per_query: BTreeMap<String, Vec<f64>>,
    all: Vec<f64>,
}

/// `BENCH_COLD_STARTS=n`: only goal 4's cold start, `n` times per fleet size, each from
/// nothing (the three processes started, the fleet dropped once the SQL node counted every
/// machine), written to a section of its own. One start is one draw: where the fleet's
/// 20 s round falls in the start, and the host's state, move it by seconds.
fn cold_starts(sizes: &[usize], n: usize) {
    const GOAL_S: f64 = 15.0;
    let mut body = format!(
        "## Fleet cold starts: `queryd simulate` → TLA → SQL node from nothing, {n} times\n\n\
         The `fleet` benchmark's processes and configuration, started and dropped {n} times in \
         a row per fleet size, each on a loopback block of its own. *Up after*: seconds from \
         the start of the three processes until the TLA, then the SQL node, counted every \
         machine (`/health`), the simulator's own start included; goal 4: the SQL node under \
         {GOAL_S:.0} s at 70,000 machines.\n\n\
         | machines | starts | SQL node up after, s, in order | median | highest | under {GOAL_S:.0} s | TLA up after, s: median / highest |\n\
         |---:|---:|---|---:|---:|---:|---|\n"
    );
    for &machines in sizes {
        let (mut sql, mut tla) = (Vec::new(), Vec::new());
        for i in 0..n {
            let block = 100 + (i % 100) as u8;
            let fleet = SimulatedFleet::start(machines, block, "");
            eprintln!(
                "fleet: {machines} machines, cold start {} of {n}: up after {:.1} s (at the TLA after {:.1} s)",
                i + 1,
                fleet.startup,
                fleet.tla_startup
            );
            sql.push(fleet.startup);
            tla.push(fleet.tla_startup);
        }
        let each = sql
            .iter()
            .map(|s| format!("{s:.1}"))
            .collect::<Vec<_>>()
            .join(", ");
        let under = sql.iter().filter(|s| **s < GOAL_S).count();
        sql.sort_by(f64::total_cmp);
        tla.sort_by(f64::total_cmp);
        let (sql_mid, sql_top) = (percentile(&sql, 0.5), percentile(&sql, 1.0));
        let (tla_mid, tla_top) = (percentile(&tla, 0.5), percentile(&tla, 1.0));
        body.push_str(&format!(
            "| {machines} | {n} | {each} | {sql_mid:.1} | {sql_top:.1} | {under} of {n} | {tla_mid:.1} / {tla_top:.1} |
"
        ));
    }
    let list = sizes
        .iter()
        .map(|m| m.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let command =
        format!("BENCH_COLD_STARTS={n} BENCH_FLEETS={list} cargo bench --workspace --bench fleet");
    if let Err(e) = write_bench_section("fleet-cold-starts", &command, &body) {
        eprintln!("fleet: cannot write BENCHMARKS.md: {e}");
        std::process::exit(1);
    }
    println!("{body}");
}

fn run_fleet(machines: usize, block: u8, seconds: f64, queries: &[(String, String)]) -> FleetRun {
    let sql_extra = std::env::var("BENCH_SQL_CONFIG").unwrap_or_default();
    let mut fleet = SimulatedFleet::start(machines, block, &sql_extra);
    let sql = &fleet.sql;
    let (clusters, interval) = (fleet.clusters, fleet.interval);
    let (startup, tla_startup) = (fleet.startup, fleet.tla_startup);
    eprintln!(
        "fleet: {machines} machines up after {startup:.1} s (at the TLA after {tla_startup:.1} s)"
    );

    // Data latency, CPU and link bytes over GENERATIONS new generations.
    let window = fleet.measure(GENERATIONS, POLL);
    let usage = ["simulate", "tla", "sql"]
        .map(|role| (role, window.cores(role), window.usage(role).1))
        .to_vec();
    let latencies = window.latencies.clone();
    let rss_range = [window.rss_range("tla"), window.rss_range("sql")];
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

    // Each run its own parameters: the same text again would be a cache hit.
    let alone = queries
        .iter()
        .map(|(name, q)| {
            let mut times: Vec<f64> = (0..=ALONE_RUNS)
                .map(|run| {
                    let text = varied(name, q, 7 * run + 3);
                    let t = Instant::now();
                    let (status, answer) = sql.sql(&text);
                    assert_eq!(status, 200, "{name}: {answer}");
                    t.elapsed().as_secs_f64() * 1000.0
                })
                .skip(1)
                .collect();
            times.sort_by(f64::total_cmp);
            (name.clone(), percentile(&times, 0.5))
        })
        .collect();
    let idle_cores = window.cores("sql");
    let ((throughput, repeated), load_rss_top) = rss_tops([fleet.tla.pid(), sql.pid()], || {
        let throughput = load(sql, queries, seconds, Mix::Varied, idle_cores);
        let repeated = load(sql, queries, seconds, Mix::Repeated, idle_cores);
        (throughput, repeated)
    });
    eprintln!(
        "fleet: {machines} machines: {:.1} queries/s varied, {:.1} repeated",
        throughput.queries as f64 / throughput.seconds,
        repeated.queries as f64 / repeated.seconds,
    );
    // Last: the nodes that come back are not the ones measured above.
    let sql_restart = fleet.restart_sql();
    let both_restart = fleet.restart_upper_tiers();
    eprintln!(
        "fleet: {machines} machines: up again after {sql_restart:.1} s (SQL node restarted), \
         {:.1} / {:.1} s (TLA and SQL node restarted)",
        both_restart.0, both_restart.1
    );
    FleetRun {
        machines,
        clusters,
        interval,
        startup,
        tla_startup,
        sql_restart,
        both_restart,
        latencies,
        usage,
        cluster_full,
        cluster_frame,
        sql_full,
        sql_frame,
        alone,
        throughput,
        repeated,
        arrow_mib,
        rss_range,
        load_rss_top,
    }
}

/// What `f` gives, and the highest RSS (MiB) of each of `pids` while it ran, read every
/// 300 ms: the nodes' RSS climbs highest under the query load, and goal 4 holds there too.
fn rss_tops<T>(pids: [u32; 2], f: impl FnOnce() -> T) -> (T, [f64; 2]) {
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut top = [0.0f64; 2];
            loop {
                for (t, pid) in top.iter_mut().zip(pids) {
                    *t = t.max(proc_usage(pid).rss_mib);
                }
                if done.load(Ordering::Relaxed) {
                    break top;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        let out = f();
        done.store(true, Ordering::Relaxed);
        (out, sampler.join().unwrap_or([f64::NAN; 2]))
    })
}

/// One request's outcome: answered, or failed with (HTTP status, error code).
type Outcome = Result<(), (u16, String)>;

/// " (503 busy: 12, ...)" for a run with failures; "; 3 rerun as heavy" if any were.
fn failures(t: &Throughput) -> String {
    let mut out = String::new();
    if !t.failures.is_empty() {
        let each: Vec<String> = t
            .failures
            .iter()
            .map(|(status, (n, code))| format!("{status} {code}: {n}"))
            .collect();
        out = format!(" ({})", each.join(", "));
    }
    if t.moved_to_heavy > 0.0 {
        out.push_str(&format!("; {} rerun as heavy", t.moved_to_heavy));
    }
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Mix {
    /// Every request's parameters differ ([`varied`]).
    Varied,
    /// The queries as written.
    Repeated,
}

/// One request of the varied mix: query `q` of `bench/queries.sql` with its parameters
/// (thresholds, names, limits) drawn from `i`, a number no other request of the run shares.
/// Thresholds move within a realistic range; the row limit carries `i` itself, so no two
/// requests are textually the same and no answer can come from the answer cache. Panics
/// (the benchmark fails) if a query no longer holds the text a variation replaces.
fn varied(name: &str, text: &str, i: usize) -> String {
    let pick = |options: &[&str]| options[i % options.len()].to_string();
    let range = |lo: usize, hi: usize| (lo + i % (hi - lo + 1)).to_string();
    let tenths = |lo: usize, hi: usize| format!("{:.1}", (lo + i % (hi - lo + 1)) as f64 / 10.0);
    let swaps: Vec<(&str, String)> = match name {
        "paper_dns_rss" => vec![
            ("> 75", format!("> {}", range(50, 95))),
            (
                "role='dns'",
                format!("role='{}'", pick(&["dns", "media", "http", "storage"])),
            ),
        ],
        "paper_hits_per_continent" => vec![(
            "ORDER BY hits DESC",
            format!("HAVING SUM(l.hits) > {} ORDER BY hits DESC", range(0, 1000)),
        )],
        "paper_low_disk" => vec![(
            "(100*bavail)/blocks < 3",
            format!("(100*bavail)/blocks < {}", range(1, 10)),
        )],
        "alert_high_load" => vec![("s.load1 > 3.5", format!("s.load1 > {}", tenths(20, 50)))],
        "alert_interface_drops" => vec![(
            "n.rx_drops > 100000",
            format!("n.rx_drops > {}", range(50_000, 200_000)),
        )],
        "alert_media_without_mediad" => vec![
            (
                "m.role = 'media'",
                format!("m.role = '{}'", pick(&["media", "dns", "storage"])),
            ),
            (
                "'mediad'",
                pick(&["'mediad'", "'dnsd'", "'storaged'", "'sshd'"]),
            ),
        ],
        "alert_recent_restarts" => vec![(
            "INTERVAL '1 day'",
            format!("INTERVAL '{} hours'", range(1, 72)),
        )],
        "view_memory_by_cluster" => vec![(
            "MAX(mem_pct) >= 50",
            format!("MAX(mem_pct) >= {}", range(30, 90)),
        )],
        "view_memory_histogram" => {
            let width = pick(&["5", "10", "20", "25"]);
            vec![(
                "(mem_pct / 10) * 10",
                format!("(mem_pct / {width}) * {width}"),
            )]
        }
        "view_cluster_summary" => {
            vec![("load1_max > 3.0", format!("load1_max > {}", tenths(10, 40)))]
        }
        "report_role_memory" => vec![(
            "GROUP BY m.role",
            format!("WHERE s.load1 >= {} GROUP BY m.role", tenths(0, 20)),
        )],
        "report_top_rss_per_cluster" => vec![("rn <= 3", format!("rn <= {}", range(1, 10)))],
        "report_procs_by_name" => vec![("COUNT(*) > 10", format!("COUNT(*) > {}", range(1, 100)))],
        "report_disk_by_continent" => vec![(
            "GROUP BY c.continent_name",
            format!(
                "WHERE f.blocks > {} GROUP BY c.continent_name",
                range(0, 1000)
            ),
        )],
        "report_network_per_cluster" => vec![(
            "n.name <> 'lo'",
            format!("n.name <> '{}'", pick(&["lo", "eth0", "eth1"])),
        )],
        "report_error_rate_per_region" => vec![(
            "SUM(l.hits) > 0",
            format!("SUM(l.hits) > {}", range(0, 500)),
        )],
        other => panic!("fleet: no variation for query {other}: add one to `varied`"),
    };
    let mut out = text.trim().trim_end_matches(';').to_string();
    for (from, to) in swaps {
        assert!(
            out.contains(from),
            "fleet: query {name} no longer holds `{from}`"
        );
        out = out.replacen(from, &to, 1);
    }
    // The limit carries the request's own number: every text differs, no answer is cut.
    format!("{out}\nLIMIT {}", 1_000_000_000 + i)
}

/// `CLIENTS` threads posting `queries` in turn (each thread starting at its own) for
/// `seconds`, as `mix` says; `idle_cores` is what the SQL node uses without them.
fn load(
    sql: &Node,
    queries: &[(String, String)],
    seconds: f64,
    mix: Mix,
    idle_cores: f64,
) -> Throughput {
    let base = sql.url("");
    let stop = Arc::new(AtomicBool::new(false));
    let results = Arc::new(Mutex::new(Throughput::default()));
    let requests = AtomicUsize::new(0);
    let cpu_before = proc_usage(sql.pid()).cpu_s;
    let moved_before = metric(sql, "query_queries_moved_to_heavy_total");
    let read_before = metric(sql, "query_aggregates_read_total");
    let started = Instant::now();
    std::thread::scope(|s| {
        for c in 0..CLIENTS {
            let (base, stop, results, requests) = (&base, stop.clone(), results.clone(), &requests);
            s.spawn(move || {
                // A client of its own to the node: its own loopback address.
                let from = std::net::IpAddr::from([127, 0, 0, 100 + c as u8]);
                let mut client = LoopbackClient::new(from, base, Duration::from_secs(120));
                let mut i = c;
                let mut mine: Vec<(usize, f64, Outcome)> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let q = i % queries.len();
                    let text = match mix {
                        Mix::Varied => {
                            let n = requests.fetch_add(1, Ordering::Relaxed);
                            varied(&queries[q].0, &queries[q].1, n)
                        }
                        Mix::Repeated => queries[q].1.clone(),
                    };
                    let t = Instant::now();
                    let ok = match client.sql(&text) {
                        // Checked to be JSON without building it: the clients share the
                        // node's cores, and a tree of a 2 MB answer costs them milliseconds.
                        Ok((200, body)) if serde_json::from_slice::<IgnoredAny>(&body).is_ok() => {
                            Ok(())
                        }
                        Ok((status, body)) => {
                            let code = serde_json::from_slice::<Value>(&body)
                                .ok()
                                .and_then(|v| v["error"]["code"].as_str().map(String::from))
                                .unwrap_or_default();
                            Err((status, code))
                        }
                        Err(e) => Err((0, e.kind().to_string())),
                    };
                    mine.push((q, t.elapsed().as_secs_f64() * 1000.0, ok));
                    i += 1;
                }
                let mut r = results.lock().unwrap_or_else(|p| p.into_inner());
                for (q, ms, ok) in mine {
                    if let Err((status, code)) = ok {
                        r.errors += 1;
                        let f = r.failures.entry(status).or_insert((0, code));
                        f.0 += 1;
                    } else {
                        r.queries += 1;
                        r.all.push(ms);
                        r.per_query
                            .entry(queries[q].0.clone())
                            .or_default()
                            .push(ms);
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
    });
    let mut r = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
    r.seconds = started.elapsed().as_secs_f64();
    r.moved_to_heavy = metric(sql, "query_queries_moved_to_heavy_total") - moved_before;
    r.aggregates_read = metric(sql, "query_aggregates_read_total") - read_before;
    let cpu = proc_usage(sql.pid()).cpu_s - cpu_before - idle_cores * r.seconds;
    r.cpu_per_query = cpu.max(0.0) / r.queries.max(1) as f64;
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
    // `BENCH_FLEETS` (machine counts, comma-separated) replaces the default sizes; its
    // figures go to a section of their own so that `make bench` keeps its table.
    let custom = std::env::var("BENCH_FLEETS")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let sizes: Vec<usize> = match &custom {
        Some(list) => list
            .split(',')
            .map(|m| {
                m.trim()
                    .parse::<f64>()
                    .expect("BENCH_FLEETS: machine counts")
            })
            .collect(),
        None => vec![1_000.0, 10_000.0, 70_000.0],
    }
    .iter()
    .map(|m| ((m * scale) as usize).max(SimulatedFleet::PER_CLUSTER))
    .collect();
    if let Some(n) = std::env::var("BENCH_COLD_STARTS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        cold_starts(&sizes, n);
        return;
    }
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
         prewarm every simulated table. The simulator seals at 0% of the interval; the TLA seals \
         when every cluster has delivered the round, at 30% of the interval at the latest \
         (`[link] seal_when_delivered`); the SQL node seals when the TLA's generation arrives. All three processes, the poller and the clients share the \
         machine's cores.\n\n\
         *Up after*: seconds from the start of the processes until the TLA, then the SQL node, \
         counted every machine (`/health`; goal 4's cold start is the SQL node's); the \
         simulator's start is in it (building every machine's tables, its first full copies). \
         *Restarted*: the same after the measurements, the fleet running on: the SQL node \
         killed and started again alone (its TLA sends it a full copy of the generation it \
         holds), then the TLA and the SQL node together (the clusters send the new TLA full \
         copies), as an operator's restart or a replacement node would. \
         *Data latency*: for {GENERATIONS} new generations at the SQL node, the age of the \
         newest `sys` source in the first answer from it (a poller asks every {} ms): \
         publish → visible. *Link bytes* come from `query_links`; the SQL node's last full frame is the one it got when it connected, which at the larger fleets comes before the TLA's first complete generation and holds little (`tla-merge` has the full copy's size). *Arrow*: `query_generation_arrow_bytes`, the memory of the generation a node holds (RSS × is RSS over it). *Throughput*: \
         {CLIENTS} concurrent HTTP clients, each from a loopback address of its own (separate \
         clients to the node's admission control), run the {} queries of `bench/queries.sql` in turn \
         for {seconds:.0} s, twice (second table): the *varied* mix, in which every request \
         draws its own thresholds, names and row limit (no two texts alike, so the answer \
         cache serves none: the goal's mix), and the *repeated* mix, the texts as written \
         (the per-generation answer cache may serve them: an answer cached for one generation \
         is exact). A client checks that each answer is JSON without building it (the \
         clients share the machine's cores with the node). CPU per query is the SQL node's CPU over the run, less what it used per \
         second with only the poller asking (decoding generations), per answered query.\n\n\
         | machines | clusters | interval | up after, TLA / SQL node | restarted: SQL node; TLA + SQL node, TLA / SQL node | latency p50 | latency p99 | TLA CPU | SQL node CPU | simulator CPU | RSS TLA / SQL node | Arrow TLA / SQL node (RSS ×) | clusters → TLA per generation, full / later | TLA → SQL node, its last full frame / later |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        POLL.as_millis(),
        queries.len()
    );
    for r in &runs {
        let u = |role: &str| usage(r, role);
        body.push_str(&format!(
            "| {} | {} | {} s | {:.1} / {:.1} s | {:.1} s; {:.1} / {:.1} s | {:.0} ms | {:.0} ms | {:.2} cores | {:.2} cores | {:.2} cores | {:.0} / {:.0} MiB | {:.0} / {:.0} MiB ({:.1} / {:.1}) | {} / {} | {} / {} |\n",
            r.machines,
            r.clusters,
            r.interval.as_secs(),
            r.tla_startup,
            r.startup,
            r.sql_restart,
            r.both_restart.0,
            r.both_restart.1,
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
        ));
    }
    body.push_str(
        "\n| machines | mix | queries/s | query p50 | query p99 | SQL node CPU per query | aggregates read from kept results, per query | failed; rerun as heavy (stopped at `heavy_query_after`) |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &runs {
        for (mix, t) in [("varied", &r.throughput), ("repeated", &r.repeated)] {
            body.push_str(&format!(
                "| {} | {mix} | {:.1} | {:.0} ms | {:.0} ms | {:.1} ms | {:.2} | {}{} |\n",
                r.machines,
                t.queries as f64 / t.seconds,
                percentile(&t.all, 0.5),
                percentile(&t.all, 0.99),
                t.cpu_per_query * 1000.0,
                t.aggregates_read / t.queries.max(1) as f64,
                t.errors,
                failures(t),
            ));
        }
    }
    body.push_str(&format!(
        "\nMedian ms per query through HTTP, alone (one client, {ALONE_RUNS} runs after a warm-up, \
         each with its own parameters as in the varied mix) / under the {CLIENTS}-client load of the varied mix:\n\n| query |"
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
            "\n**Against the goals** ({} machines): {qps:.0} queries/s of the varied mix from one \
             SQL node on this {}-core machine, which also runs the simulator and the TLA (goal: \
             250/s with p99 under 1 s; measured p99 {:.0} ms), {:.0} queries/s repeated; data \
             latency p99 {p99:.0} ms at a {} s interval, the TLA's deadline being {} ms past the \
             simulator's seal (goal: under 12 s at 70,000 machines); RSS {:.1}x (TLA) and \
             {:.1}x (SQL node) the Arrow size of the generation held (goal: at most 3x), read \
             at the window's end, just after the SQL node installed a new generation; read at \
             each poll over the window it ranged {:.0}-{:.0} MiB at the TLA ({:.1}-{:.1}x) and \
             {:.0}-{:.0} MiB at the SQL node ({:.1}-{:.1}x); under the query mixes after the \
             window (16 clients, varied then repeated, read every 300 ms) it reached {:.0} MiB \
             at the TLA ({:.1}x) and {:.0} MiB at the SQL node ({:.1}x). Cold start (goal: \
             first complete answer under 15 s): the SQL node counted every machine {:.1} s \
             after the three processes started, the simulator's own start included; {:.1} s \
             after a restart of the SQL node alone and {:.1} s after a restart of the TLA and \
             the SQL node, the fleet running on.\n",
            big.machines,
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            percentile(&t.all, 0.99),
            big.repeated.queries as f64 / big.repeated.seconds,
            big.interval.as_secs(),
            big.interval.as_millis() * u128::from(SimulatedFleet::TLA_TENTHS) / 10,
            usage(big, "tla").1 / big.arrow_mib.0,
            usage(big, "sql").1 / big.arrow_mib.1,
            big.rss_range[0].0,
            big.rss_range[0].1,
            big.rss_range[0].0 / big.arrow_mib.0,
            big.rss_range[0].1 / big.arrow_mib.0,
            big.rss_range[1].0,
            big.rss_range[1].1,
            big.rss_range[1].0 / big.arrow_mib.1,
            big.rss_range[1].1 / big.arrow_mib.1,
            big.load_rss_top[0],
            big.load_rss_top[0] / big.arrow_mib.0,
            big.load_rss_top[1],
            big.load_rss_top[1] / big.arrow_mib.1,
            big.startup,
            big.sql_restart,
            big.both_restart.1,
        ));
    }
    body.push_str(&format!(
        "\nWhole benchmark: {:.0} s.",
        bench_started.elapsed().as_secs_f64()
    ));
    let (section, command) = match &custom {
        Some(list) => (
            "fleet-big",
            format!("BENCH_FLEETS={list} cargo bench --workspace --bench fleet (make bench-full)"),
        ),
        None if scale == 1.0 => ("fleet", "make bench".to_string()),
        None => (
            "fleet",
            format!("BENCH_SCALE={scale} cargo bench --workspace --bench fleet"),
        ),
    };
    if custom.is_some() {
        body = body.replacen(
            "## Fleet:",
            "## Fleet, the largest run (`make bench-full`):",
            1,
        );
    }
    if let Err(e) = write_bench_section(section, &command, &body) {
        eprintln!("fleet: cannot write BENCHMARKS.md: {e}");
        std::process::exit(1);
    }
    println!("{body}");
}

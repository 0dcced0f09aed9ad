//! The whole hierarchy as release `queryd` processes on loopback: E edges (each on its own
//! 127.0.k.x address) in 2 clusters → 2 cluster proxies → a TLA → a SQL node, at a 1 s
//! interval. A publisher on every edge's socket publishes `load_info` each interval: 1,000
//! rows of which 50 (5%) change, plus one row carrying a sequence number and the wall-clock
//! time of the publish. Measured, once per link compression (`none`, `lz4`, `zstd`):
//!
//! - publish → visible at the SQL node: a poller queries the SQL node every 25 ms and
//!   notes when each edge's sequence number first appears;
//! - bytes per generation on each link tier, from the senders' own counters in
//!   `query_links`: the first frame of each link (a full copy: the fleet starts bottom-up)
//!   and the mean of every later frame (diffs);
//! - CPU and memory of every process, from /proc.
//!
//! `BENCH_SCALE` (default 1.0) scales the edges (20, at least 4); `BENCH_SECONDS`
//! (default 20) is the measured time per compression.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use query_client::protocol::Row;
use query_client::{ClientError, Publisher};
use query_integration::bench::{env_f64, human_bytes, percentile, proc_usage, write_bench_section};
use query_integration::fleet::{Fleet, FleetSpec, TLA_TENTHS};
use serde_json::json;

const INTERVAL_MS: u64 = 1000;
const CLUSTERS: usize = 2;
/// `load_info` rows per edge, besides the sequence row.
const ROWS: usize = 1000;
/// Rows each publisher changes every interval (5%).
const CHANGED: usize = 50;
const POLL_MS: u64 = 25;
/// The TLA's seal in the interval (the SQL node seals as soon as the TLA's round arrives).
const TLA_OFFSET_MS: i64 = (INTERVAL_MS * TLA_TENTHS / 10) as i64;
const WARM_UP: Duration = Duration::from_secs(5);
/// How long any one expected state may take to appear while the fleet starts.
const LIMIT: Duration = Duration::from_secs(120);
const CODECS: [&str; 3] = ["none", "lz4", "zstd"];

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

/// A fleet of `edges` edges in 2 clusters on 127.0.`block`.0/24 whose links send with
/// `codec`; every tier prewarms `load_info`. Nothing is started.
fn fleet(block: u8, edges: usize, codec: &'static str) -> Fleet {
    let mut spec = FleetSpec::new(block);
    spec.clusters = CLUSTERS;
    spec.edges_per_cluster = edges / CLUSTERS;
    spec.interval = Duration::from_millis(INTERVAL_MS);
    spec.compression = codec;
    spec.prewarm = vec!["load_info".into()];
    spec.prewarm_every_tier = true;
    Fleet::new(spec)
}

fn load_row(georegion: usize, hits: u64, bytes: i64, errors: u64) -> Row {
    let v = json!({"georegion": georegion, "hits": hits, "bytes": bytes, "errors": errors});
    v.as_object().cloned().unwrap_or_default()
}

/// Values of row `g` of edge `n` after `version` changes: vary like real counters.
fn load_values(n: usize, g: usize, version: u64) -> (u64, i64, u64) {
    let mut x = 0x9E37_79B9_7F4A_7C15_u64 ^ ((n as u64) << 40) ^ ((g as u64) << 20) ^ version;
    for _ in 0..3 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    let hits = x % 100_000;
    (hits, (hits * (x % 1000 + 1)) as i64, (x >> 20) % 50)
}

/// One publisher per edge, publishing right after every interval boundary (staggered by
/// a few ms per edge): row 0 carries (hits = sequence number, bytes = publish time in unix
/// ms), rows 1..=1000 are load figures of which `CHANGED` change each time.
struct Publishers {
    stop: Arc<AtomicBool>,
    refused: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Publishers {
    fn start(fleet: &Fleet) -> Publishers {
        let stop = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicU64::new(0));
        let threads = (0..fleet.edges.len())
            .map(|n| {
                let mut p =
                    Publisher::connect_unix(fleet.socket(n), &format!("bench-{n}"), &["load_info"])
                        .expect("publisher hello");
                let (stop, refused) = (stop.clone(), refused.clone());
                std::thread::spawn(move || {
                    let mut versions = vec![0u64; ROWS + 1];
                    let mut rows: Vec<Row> = (0..=ROWS)
                        .map(|g| {
                            let (h, b, e) = load_values(n, g, 0);
                            load_row(g, h, b, e)
                        })
                        .collect();
                    let stagger = (n as u64 * 3) % 40;
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let now = now_ms() as u64;
                        std::thread::sleep(Duration::from_millis(
                            INTERVAL_MS - now % INTERVAL_MS + stagger,
                        ));
                        seq += 1;
                        let first = (seq as usize * CHANGED) % ROWS;
                        for k in 0..CHANGED {
                            let g = 1 + (first + k) % ROWS;
                            versions[g] += 1;
                            let (h, b, e) = load_values(n, g, versions[g]);
                            rows[g] = load_row(g, h, b, e);
                        }
                        rows[0] = load_row(0, seq, now_ms(), 0);
                        match p.publish("load_info", rows.clone()) {
                            Ok(_) => {}
                            Err(ClientError::Refused(_)) => {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        Publishers {
            stop,
            refused,
            threads,
        }
    }
}

impl Drop for Publishers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One link tier's frames, from the sending ends' counters.
#[derive(Default, Clone)]
struct Tier {
    links: usize,
    /// Mean size of each link's first frame (a full copy).
    full: f64,
    /// Mean size of each link's later frames.
    diff: f64,
    /// Frames per link, least.
    frames: i64,
}

/// What one run (one compression) measured.
struct Run {
    codec: &'static str,
    latencies: Vec<f64>,
    /// Answer time less the TLA's scheduled seal of the publish's round (ms).
    past_seal: Vec<f64>,
    /// Sequence numbers between the first and last seen of an edge that never appeared.
    superseded: usize,
    tiers: BTreeMap<&'static str, Tier>,
    /// Per role: (processes, CPU cores per process over the window, largest RSS in MiB).
    usage: BTreeMap<&'static str, (usize, f64, f64)>,
    refused: u64,
    elapsed: f64,
}

const TIERS: [(&str, &str); 3] = [
    ("edge@", "edge → cluster proxy"),
    ("cluster-proxy@", "cluster proxy → TLA"),
    ("tla@", "TLA → SQL node"),
];

fn run(codec: &'static str, block: u8, edges: usize, seconds: f64) -> Run {
    let mut fleet = fleet(block, edges, codec);
    // Bottom-up: each tier starts once the one below serves every row, so the first frame
    // of every link is a full copy of load_info.
    fleet.start_edges(|_, _| {});
    let publishers = Publishers::start(&fleet);
    fleet.start_upper_tiers(|node, machines| {
        let expected = json!([[machines * (ROWS + 1), machines]]);
        node.eventually(
            LIMIT,
            &format!("{} to serve load_info of {machines} machines", node.base),
            || {
                let (_, answer) =
                    node.sql("SELECT COUNT(*), COUNT(DISTINCT machine_ip) FROM load_info");
                (answer["rows"] == expected).then_some(())
            },
        );
    });
    std::thread::sleep(WARM_UP);

    // Publish → visible at the SQL node.
    let sql = fleet.sql.node();
    let pids: Vec<(&'static str, u32)> =
        fleet.members().map(|m| (m.role, m.node().pid())).collect();
    let cpu0: Vec<f64> = pids.iter().map(|(_, p)| proc_usage(*p).cpu_s).collect();
    let started = Instant::now();
    let window_start = now_ms();
    let mut seen: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    let mut latencies = Vec::new();
    let mut past_seal = Vec::new();
    let q = "SELECT machine_ip, hits, bytes FROM load_info WHERE georegion = 0";
    while started.elapsed().as_secs_f64() < seconds {
        let sent = Instant::now();
        let (status, answer) = sql.sql(q);
        let at = now_ms();
        if status == 200 {
            for r in answer["rows"].as_array().into_iter().flatten() {
                let (Some(ip), Some(seq), Some(published)) =
                    (r[0].as_str(), r[1].as_i64(), r[2].as_i64())
                else {
                    continue;
                };
                if published >= window_start && seen.entry(ip.into()).or_default().insert(seq) {
                    latencies.push((at - published) as f64);
                    // The TLA's scheduled seal of the round the publish belongs to.
                    let seal = published - published.rem_euclid(INTERVAL_MS as i64) + TLA_OFFSET_MS;
                    past_seal.push((at - seal) as f64);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(POLL_MS).saturating_sub(sent.elapsed()));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut usage: BTreeMap<&'static str, (usize, f64, f64)> = BTreeMap::new();
    for ((role, pid), c0) in pids.iter().zip(cpu0) {
        let now = proc_usage(*pid);
        let u = usage.entry(role).or_default();
        u.0 += 1;
        u.1 += (now.cpu_s - c0) / elapsed;
        u.2 = u.2.max(now.rss_mib);
    }
    for u in usage.values_mut() {
        u.1 /= u.0 as f64;
    }
    let superseded = seen
        .values()
        .map(|s| match (s.first(), s.last()) {
            (Some(a), Some(b)) => (b - a + 1) as usize - s.len(),
            _ => 0,
        })
        .sum();

    // Bytes per link, from the parent (sending) end of each: queried once, at the end, as
    // query_links itself travels the links once requested (see tests/hierarchy.rs).
    let expected_links = edges + CLUSTERS + 1;
    let rows = sql.eventually(LIMIT, "query_links of every link", || {
        let (status, answer) = sql.sql(
            "SELECT node, frames, bytes, last_full_frame_bytes FROM query_links \
             WHERE direction = 'parent'",
        );
        let rows = answer["rows"].as_array().cloned().unwrap_or_default();
        (status == 200 && rows.len() == expected_links).then_some(rows)
    });
    let mut tiers = BTreeMap::new();
    for (prefix, name) in TIERS {
        let mut t = Tier {
            frames: i64::MAX,
            ..Tier::default()
        };
        for r in rows
            .iter()
            .filter(|r| r[0].as_str().is_some_and(|n| n.starts_with(prefix)))
        {
            let frames = r[1].as_i64().unwrap_or(0);
            let bytes = r[2].as_i64().unwrap_or(0) as f64;
            let full = r[3].as_i64().unwrap_or(0) as f64;
            t.links += 1;
            t.full += full;
            t.diff += (bytes - full) / (frames - 1).max(1) as f64;
            t.frames = t.frames.min(frames);
        }
        if t.links > 0 {
            t.full /= t.links as f64;
            t.diff /= t.links as f64;
        }
        tiers.insert(name, t);
    }
    let refused = publishers.refused.load(Ordering::Relaxed);
    drop(publishers);
    // Anything the nodes found worth a warning, for whoever runs the benchmark.
    for m in fleet.members() {
        let log = std::fs::read_to_string(&m.node().stderr_log).unwrap_or_default();
        let bad: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        if !bad.is_empty() {
            eprintln!(
                "hierarchy ({codec}): {} at {} logged {} warnings/errors, first: {}",
                m.role,
                m.node().base,
                bad.len(),
                bad[0]
            );
        }
    }
    drop(fleet);
    latencies.sort_by(f64::total_cmp);
    past_seal.sort_by(f64::total_cmp);
    Run {
        codec,
        latencies,
        past_seal,
        superseded,
        tiers,
        usage,
        refused,
        elapsed,
    }
}

fn main() {
    let scale = env_f64("BENCH_SCALE", 1.0).clamp(0.01, 1.0);
    let seconds = env_f64("BENCH_SECONDS", 20.0).max(5.0);
    // Even, so both clusters have as many edges.
    let edges = ((20.0 * scale / 2.0).round() as usize).max(2) * CLUSTERS;
    let per_cluster = edges / CLUSTERS;
    let bench_started = Instant::now();

    let runs: Vec<Run> = CODECS
        .iter()
        .zip(60u8..)
        .map(|(codec, block)| {
            eprintln!("hierarchy: {edges} edges, compression {codec}");
            let r = run(codec, block, edges, seconds);
            eprintln!(
                "hierarchy: {codec} done after {:.0} s",
                bench_started.elapsed().as_secs_f64()
            );
            r
        })
        .collect();

    let mut latency = String::from(
        "| compression | median | p99 | max | past the TLA's deadline, median / p99 | samples | superseded |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &runs {
        latency.push_str(&format!(
            "| {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms / {:.0} ms | {} in {:.0} s | {} |\n",
            r.codec,
            percentile(&r.latencies, 0.5),
            percentile(&r.latencies, 0.99),
            r.latencies.last().copied().unwrap_or(f64::NAN),
            percentile(&r.past_seal, 0.5),
            percentile(&r.past_seal, 0.99),
            r.latencies.len(),
            r.elapsed,
            r.superseded,
        ));
    }

    let mut bytes = String::from("| link | links | frame |");
    for r in &runs {
        bytes.push_str(&format!(" {} |", r.codec));
    }
    bytes.push_str("\n|---|---:|---|");
    bytes.push_str(&"---:|".repeat(runs.len()));
    bytes.push('\n');
    for (_, name) in TIERS {
        let links = runs[0].tiers[name].links;
        let machines = match name {
            "edge → cluster proxy" => "1 machine".to_string(),
            "cluster proxy → TLA" => format!("{per_cluster} machines"),
            _ => format!("{edges} machines"),
        };
        bytes.push_str(&format!("| {name} ({machines}) | {links} | full copy |"));
        for r in &runs {
            bytes.push_str(&format!(" {} |", human_bytes(r.tiers[name].full)));
        }
        bytes.push_str("\n| | | diff, mean of later frames |");
        for r in &runs {
            let t = &r.tiers[name];
            bytes.push_str(&format!(
                " {} ({:.1}%) |",
                human_bytes(t.diff),
                100.0 * t.diff / t.full
            ));
        }
        bytes.push('\n');
    }
    let min_frames = runs
        .iter()
        .flat_map(|r| r.tiers.values().map(|t| t.frames))
        .min()
        .unwrap_or(0);

    let mut cpu = String::from("| role | processes |");
    for r in &runs {
        cpu.push_str(&format!(" CPU per process, {} |", r.codec));
    }
    cpu.push_str(" RSS per process, largest |\n|---|---:|");
    cpu.push_str(&"---:|".repeat(runs.len() + 1));
    cpu.push('\n');
    for role in ["edge", "cluster-proxy", "tla", "sql"] {
        let n = runs[0].usage.get(role).map_or(0, |u| u.0);
        cpu.push_str(&format!("| {role} | {n} |"));
        for r in &runs {
            let u = r.usage.get(role).copied().unwrap_or_default();
            cpu.push_str(&format!(" {:.3} cores |", u.1));
        }
        let rss = runs
            .iter()
            .filter_map(|r| r.usage.get(role).map(|u| u.2))
            .fold(0.0, f64::max);
        cpu.push_str(&format!(" {rss:.0} MiB |\n"));
    }
    let refused: u64 = runs.iter().map(|r| r.refused).sum();
    let total = bench_started.elapsed().as_secs_f64();

    let body = format!(
        "## Hierarchy: {edges} edges in {CLUSTERS} clusters → {CLUSTERS} cluster proxies → TLA → SQL node, {INTERVAL_MS} ms interval\n\n\
         Every node is a release `queryd` process on its own loopback address; generations are\n\
         sealed at 100 ms (edges) past each second, by 300 ms (proxies) and 500 ms (TLA) at the\n\
         latest: with `[link] seal_when_delivered` (the default) a parent seals as soon as every\n\
         child has delivered the round, so those two are deadlines; the SQL\n\
         node seals when the TLA's generation arrives. The edges' host publisher is off: on every edge one publisher (the\n\
         `query_client` library, over the socket) publishes `load_info` right after each\n\
         second (staggered by up to 40 ms): {ROWS} rows of which {CHANGED} ({:.0}%) change each\n\
         time, plus one row holding a sequence number and the wall-clock time of the publish.\n\
         The fleet is run once per link compression (`[link] compression` of every sender);\n\
         each run starts bottom-up (a tier starts once the one below serves every row), warms\n\
         up {} s and measures {seconds:.0} s. Publisher, poller and all {} processes share the\n\
         machine's cores.\n\n\
         **Publish → visible at the SQL node.** The benchmark queries the SQL node every\n\
         {POLL_MS} ms for the sequence rows and notes, per edge and sequence number, the first\n\
         answer holding it (time of the answer less the publish time; resolution about\n\
         {POLL_MS} ms plus the query's own time). Sealing on the deadlines alone would make this\n\
         500 ms less the publish's 0-40 ms past the second; sealing when delivered makes it what\n\
         the tiers take. *Past the TLA's deadline* is the answer time less the TLA's deadline\n\
         (500 ms) of the publish's round: negative when the round reached the SQL node before\n\
         the TLA would have sealed it on its schedule. *Superseded*: sequence numbers never seen at the SQL node because a later\n\
         publish replaced them first (a round missed somewhere).\n\n\
         {latency}\n\
         **Bytes per generation per link**, from the sending end of every link\n\
         (`query_links`, `direction = 'parent'`, read once at the end of each run): *full\n\
         copy* is the link's first frame (all of `load_info` behind the sender), *diff* is\n\
         (bytes − first frame) / (frames − 1), i.e. the mean steady-state frame with 5% of\n\
         the rows changing, as a share of the full copy with the same compression. Frames\n\
         include the 4-byte length, codec byte and part headers; at least {min_frames}\n\
         frames per link.\n\n\
         {bytes}\n\
         **CPU and memory** of the processes over the measured window (/proc; the SQL node's\n\
         CPU includes answering the poller's {:.0} queries per second).\n\n\
         {cpu}\n\
         Publishes refused: {refused}. Whole benchmark: {total:.0} s.",
        100.0 * CHANGED as f64 / ROWS as f64,
        WARM_UP.as_secs(),
        edges + CLUSTERS + 2,
        1000.0 / POLL_MS as f64,
    );
    println!("{body}");
    let command = format!("BENCH_SCALE={scale} BENCH_SECONDS={seconds} make bench-full");
    if let Err(e) = write_bench_section("hierarchy", &command, &body) {
        eprintln!("cannot write BENCHMARKS.md: {e}");
        std::process::exit(1);
    }
}

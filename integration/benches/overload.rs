//! Overload: one SQL node at 10,000 machines (× `BENCH_SCALE`), fed as in the fleet
//! benchmark (`queryd simulate` → TLA → SQL node, release processes on loopback), under 64
//! HTTP clients, each from its own loopback address (admission control tells clients apart
//! by address). Two phases of `BENCH_SECONDS` (default 20) each:
//!
//! 1. light: 32 clients loop over light queries (a count, a small GROUP BY, a point lookup);
//! 2. mixed: the same 32 plus 32 heavy clients looping over a self-join of `processes` that
//!    runs for seconds, a GROUP BY over every process and an ORDER BY of every process.
//!
//! Per phase: light-query latency (answered ones) and failures, heavy outcomes by code, the
//! generations the SQL node served (its `/health` polled every 100 ms: rounds missed, and
//! when each round was first seen against its boundary plus the SQL node's offset), the SQL
//! node's CPU and peak RSS. Goal (issue 11): light p99 mixed at most 2× light p99 alone, no
//! missed generation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use query_integration::bench::{
    env_f64, percentile, proc_usage, write_bench_section, SimulatedFleet,
};
use query_integration::post_from;
use serde_json::Value;

const MACHINES: f64 = 10_000.0;
const LIGHT_CLIENTS: usize = 32;
const HEAVY_CLIENTS: usize = 32;
/// Clients use 127.0.0.`FIRST_CLIENT` up: the light ones, then the heavy ones.
const FIRST_CLIENT: usize = 10;
/// A light client's pause between queries (dashboards and people, not a closed loop), so
/// the light phase measures latency, not a saturated queue.
const LIGHT_PAUSE: Duration = Duration::from_millis(200);
/// A heavy client's pause after an immediate refusal (`busy`, `quarantined`), so it does
/// not spin; after an answer or a timeout it sends the next at once.
const REFUSED_PAUSE: Duration = Duration::from_millis(100);
const POLL: Duration = Duration::from_millis(100);
/// The fleet's loopback block, 127.0.`BLOCK`.0/24.
const BLOCK: u8 = 90;

const LIGHT: [&str; 3] = ["count", "GROUP BY cluster", "point lookup"];
const HEAVY: [&str; 3] = [
    "self-join on procname",
    "GROUP BY machine, procname",
    "ORDER BY every row",
];

/// Client `c`'s `i`th light query: (index in `LIGHT`, SQL).
fn light_query(c: usize, i: usize, ips: &[String]) -> (usize, String) {
    let k = (c + i) % LIGHT.len();
    let sql = match k {
        0 => "SELECT COUNT(*) FROM sys WHERE memtotal > 0".to_string(),
        1 => "SELECT cluster, COUNT(*) AS machines, AVG(load1) AS load FROM sys \
              GROUP BY cluster ORDER BY cluster"
            .to_string(),
        _ => format!(
            "SELECT hostname, load1, memfree FROM sys WHERE machine_ip = '{}'",
            ips[(c * 7 + i) % ips.len().max(1)]
        ),
    };
    (k, sql)
}

/// Client `c`'s `i`th heavy query. The client's number is in the text, so each client's
/// queries are distinct ones to the quarantine, as different users' would be.
fn heavy_query(c: usize, i: usize) -> (usize, String) {
    let k = (c + i) % HEAVY.len();
    let sql = match k {
        // 12 processes a machine, one of each name: 10,000² pairs per name at 10,000
        // machines.
        0 => format!(
            "SELECT COUNT(*) FROM processes a JOIN processes b ON a.procname = b.procname \
             WHERE a.rss > b.rss + {c}"
        ),
        1 => format!(
            "SELECT machine_ip, procname, COUNT(*) AS n, SUM(rss) AS rss, MAX(cpu_seconds) AS cpu \
             FROM processes WHERE pid <> {c} GROUP BY machine_ip, procname \
             ORDER BY rss DESC LIMIT 100"
        ),
        _ => format!("SELECT * FROM processes WHERE pid <> {c} ORDER BY cpu_seconds DESC"),
    };
    (k, sql)
}

struct Sample {
    light: bool,
    query: usize,
    ms: f64,
    /// `ok`, the error body's code, `http <status>` or `no answer`.
    code: String,
    /// For an answer: the node's own time for it (`elapsed_ms`: admission, planning and
    /// running, not the HTTP exchange).
    node_ms: Option<(f64, f64)>,
}

fn outcome(status: u16, text: &str) -> String {
    match status {
        200 => "ok".into(),
        0 => "no answer".into(),
        _ => serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(String::from))
            .unwrap_or_else(|| format!("http {status}")),
    }
}

/// One client's loop until `stop`: light or heavy queries from `source`.
fn client(
    base: &str,
    source: &str,
    light: bool,
    c: usize,
    ips: &[String],
    stop: &AtomicBool,
) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let (query, sql) = if light {
            light_query(c, i, ips)
        } else {
            heavy_query(c, i)
        };
        let started = Instant::now();
        let (status, text) = post_from(source, base, "/sql", &sql);
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let code = outcome(status, &text);
        let refused = code == "busy" || code == "quarantined";
        let node_ms = if light && status == 200 {
            serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| Some((v["elapsed_ms"].as_f64()?, v["queued_ms"].as_f64()?)))
        } else {
            None
        };
        out.push(Sample {
            light,
            query,
            ms,
            code,
            node_ms,
        });
        i += 1;
        if light {
            std::thread::sleep(LIGHT_PAUSE);
        } else if refused {
            std::thread::sleep(REFUSED_PAUSE);
        }
    }
    out
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// One answer of the SQL node's `/health`.
struct Seen {
    /// Wall-clock ms when the answer arrived.
    at_ms: f64,
    id: u64,
    /// The generation's `sealed_at` (the TLA's seal it merged), wall-clock ms.
    sealed_ms: f64,
    running: u64,
    queued: u64,
    /// How long `/health` took to answer.
    took_ms: f64,
}

fn poll_health(url: &str, stop: &AtomicBool) -> Vec<Seen> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let health = agent
            .get(url)
            .call()
            .ok()
            .and_then(|r| r.into_json::<Value>().ok());
        let at_ms = now_ms();
        let took = started.elapsed();
        if let Some(h) = health {
            let g = &h["generation"];
            if let (Some(id), Some(age)) = (g["id"].as_u64(), g["age_ms"].as_f64()) {
                out.push(Seen {
                    at_ms,
                    id,
                    sealed_ms: at_ms - age,
                    running: h["queries"]["running"].as_u64().unwrap_or(0),
                    queued: h["queries"]["queued"].as_u64().unwrap_or(0),
                    took_ms: took.as_secs_f64() * 1000.0,
                });
            }
        }
        std::thread::sleep(POLL.saturating_sub(took));
    }
    out
}

struct Phase {
    heavy: bool,
    samples: Vec<Sample>,
    seen: Vec<Seen>,
    start_ms: f64,
    stop_ms: f64,
    /// CPU cores used over the phase: SQL node, TLA, simulator.
    cpu: [f64; 3],
    sql_peak_mib: f64,
}

fn run_phase(fleet: &SimulatedFleet, heavy: bool, seconds: f64, ips: &[String]) -> Phase {
    let base = fleet.sql.base.as_str();
    let health = fleet.sql.url("/health");
    let pids = [fleet.sql.pid(), fleet.tla.pid(), fleet.sim.pid()];
    let stop = AtomicBool::new(false);
    let cpu0 = pids.map(|p| proc_usage(p).cpu_s);
    let started = Instant::now();
    let start_ms = now_ms();
    let mut cpu = [0.0; 3];
    let mut stop_ms = start_ms;
    let (samples, seen) = std::thread::scope(|s| {
        let (stop, health) = (&stop, &health);
        let poller = s.spawn(move || poll_health(health, stop));
        let heavies = if heavy { HEAVY_CLIENTS } else { 0 };
        let clients: Vec<_> = (0..LIGHT_CLIENTS + heavies)
            .map(|n| {
                let source = format!("127.0.0.{}", FIRST_CLIENT + n);
                let light = n < LIGHT_CLIENTS;
                s.spawn(move || client(base, &source, light, n, ips, stop))
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
        stop_ms = now_ms();
        let elapsed = started.elapsed().as_secs_f64();
        for (c, (p, c0)) in cpu.iter_mut().zip(pids.iter().zip(cpu0)) {
            *c = (proc_usage(*p).cpu_s - c0) / elapsed;
        }
        let samples: Vec<Sample> = clients
            .into_iter()
            .flat_map(|h| h.join().expect("client thread"))
            .collect();
        (samples, poller.join().expect("poller thread"))
    });
    Phase {
        heavy,
        samples,
        seen,
        start_ms,
        stop_ms,
        cpu,
        sql_peak_mib: proc_usage(pids[0]).peak_mib,
    }
}

/// What the SQL node served during a phase, by round (interval of wall-clock time).
struct Rounds {
    /// Rounds whose expected time (boundary + the SQL node's offset) fell in the phase
    /// with a whole interval after their boundary left in it.
    due: usize,
    missed: usize,
    /// New generation ids the poller never saw.
    ids_unseen: u64,
    /// New generations of a round already served: the SQL node sealed on its own clock
    /// because the TLA delivered nothing.
    reseals: usize,
    /// Per round first seen in the phase: ms from its boundary, sorted.
    after_boundary: Vec<f64>,
    /// Of those, how many came after boundary + the SQL node's offset, and the most by.
    late: usize,
    max_late: f64,
}

fn rounds(p: &Phase, interval_ms: f64, offset_ms: f64) -> Rounds {
    let round = |sealed_ms: f64| (sealed_ms / interval_ms).floor() as i64;
    let mut served = BTreeSet::new();
    let mut after_boundary = Vec::new();
    let (mut ids_unseen, mut reseals) = (0, 0);
    let mut last: Option<(u64, i64)> = None;
    for s in &p.seen {
        let r = round(s.sealed_ms);
        match last {
            // The generation served when the phase began: its round counts as served.
            None => {
                served.insert(r);
            }
            Some((id, _)) if s.id == id => continue,
            Some((id, last_round)) => {
                ids_unseen += s.id.saturating_sub(id + 1);
                if r == last_round {
                    reseals += 1;
                } else if served.insert(r) {
                    after_boundary.push(s.at_ms - r as f64 * interval_ms);
                }
            }
        }
        last = Some((s.id, r));
    }
    let first = ((p.start_ms - offset_ms) / interval_ms).ceil() as i64;
    let last_due = (p.stop_ms / interval_ms).floor() as i64 - 1;
    let due: Vec<i64> = (first..=last_due).collect();
    let missed = due.iter().filter(|r| !served.contains(r)).count();
    after_boundary.sort_by(f64::total_cmp);
    let late: Vec<f64> = after_boundary
        .iter()
        .map(|a| a - offset_ms)
        .filter(|l| *l > 0.0)
        .collect();
    Rounds {
        due: due.len(),
        missed,
        ids_unseen,
        reseals,
        max_late: late.iter().copied().fold(0.0, f64::max),
        late: late.len(),
        after_boundary,
    }
}

/// Latencies (ms, sorted) of the answered queries that match, and the failures by code.
fn answered(p: &Phase, keep: impl Fn(&Sample) -> bool) -> (Vec<f64>, BTreeMap<String, usize>) {
    let mut ms = Vec::new();
    let mut failed = BTreeMap::new();
    for s in p.samples.iter().filter(|s| keep(s)) {
        if s.code == "ok" {
            ms.push(s.ms);
        } else {
            *failed.entry(s.code.clone()).or_default() += 1;
        }
    }
    ms.sort_by(f64::total_cmp);
    (ms, failed)
}

fn codes(failed: &BTreeMap<String, usize>) -> String {
    if failed.is_empty() {
        return "0".into();
    }
    failed
        .iter()
        .map(|(c, n)| format!("{n} {c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Heavy outcomes as `ok / busy / timeout / quarantined / other`.
fn heavy_outcomes(p: &Phase, keep: impl Fn(&Sample) -> bool) -> String {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for s in p.samples.iter().filter(|s| !s.light && keep(s)) {
        *by.entry(s.code.as_str()).or_default() += 1;
    }
    let main = ["ok", "busy", "timeout", "quarantined"];
    let mut text = main
        .iter()
        .map(|c| by.get(c).copied().unwrap_or(0).to_string())
        .collect::<Vec<_>>()
        .join(" / ");
    let other: Vec<String> = by
        .iter()
        .filter(|(c, _)| !main.contains(c))
        .map(|(c, n)| format!("{n} {c}"))
        .collect();
    text.push_str(&format!(
        " / {}",
        if other.is_empty() {
            "0".into()
        } else {
            other.join(", ")
        }
    ));
    text
}

/// The machine's load averages, from /proc/loadavg.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

fn main() {
    let scale = env_f64("BENCH_SCALE", 1.0).clamp(0.001, 1.0);
    let seconds = env_f64("BENCH_SECONDS", 20.0).max(5.0);
    let machines = ((MACHINES * scale) as usize).max(SimulatedFleet::PER_CLUSTER);
    let interval = SimulatedFleet::interval_for(machines);
    // Half the interval: a heavy query gives its place back in time for the next round's
    // queries, and a runaway one is stopped before it costs a whole round of CPU.
    let timeout = interval / 2;
    let bench_started = Instant::now();
    // OVERLOAD_SQL_CONFIG: more of the SQL node's `[sql]` section, to try settings.
    let sql_extra = std::env::var("OVERLOAD_SQL_CONFIG").unwrap_or_default();
    let fleet = SimulatedFleet::start(
        machines,
        BLOCK,
        &format!(
            "[http]\nquery_timeout = \"{}ms\"\n[sql]\n{sql_extra}\n",
            timeout.as_millis()
        ),
    );
    eprintln!(
        "overload: {machines} machines up after {:.0} s",
        fleet.startup
    );
    let (status, answer) = fleet
        .sql
        .sql("SELECT machine_ip FROM sys ORDER BY machine_ip LIMIT 200");
    assert_eq!(status, 200, "machine addresses: {answer}");
    let ips: Vec<String> = answer["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r[0].as_str().map(String::from))
        .collect();
    let load_before = loadavg();
    let phases = [false, true].map(|heavy| {
        let p = run_phase(&fleet, heavy, seconds, &ips);
        eprintln!(
            "overload: phase {} done: {} queries",
            if heavy { "mixed" } else { "light" },
            p.samples.len()
        );
        p
    });

    for p in &phases {
        let sorted = |f: fn(&(f64, f64)) -> f64| {
            let mut v: Vec<f64> = p
                .samples
                .iter()
                .filter_map(|s| s.node_ms.as_ref().map(f))
                .collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let (node, queued) = (sorted(|t| t.0), sorted(|t| t.1));
        eprintln!(
            "overload: {} phase: light answers' time in the node p50 {:.0} ms, p99 {:.0} ms; \
             waiting for a place p50 {:.0} ms, p99 {:.0} ms",
            if p.heavy { "mixed" } else { "light" },
            percentile(&node, 0.5),
            percentile(&node, 0.99),
            percentile(&queued, 0.5),
            percentile(&queued, 0.99)
        );
    }
    let interval_ms = interval.as_secs_f64() * 1000.0;
    let offset_ms = interval_ms * SimulatedFleet::SQL_TENTHS as f64 / 10.0;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut body = format!(
        "## Overload: light and heavy queries against one SQL node\n\n\
         The fleet benchmark's processes (`queryd simulate` → TLA → SQL node) at {machines} \
         machines, {} s interval; the SQL node has `query_timeout = \"{}ms\"` (half the \
         interval) and the default admission control ({cores} query threads a pool here: \
         {} places for light clients, {} for heavy ones and {} for new ones, whose queries \
         run on the lower-priority pool; a client becomes heavy once a query of its holds a \
         place 100 ms). Clients post from their own loopback addresses. \
         Two phases of {seconds:.0} s: **light**: {LIGHT_CLIENTS} clients looping over a \
         count, a GROUP BY of `sys` by cluster and a point lookup by `machine_ip`, pausing \
         {} ms between queries; **mixed**: the same plus {HEAVY_CLIENTS} heavy clients \
         looping without pause over a self-join of `processes` on `procname` (seconds of CPU; \
         times out), a GROUP BY of `processes` by machine and name, and an ORDER BY of every \
         process (the answer cut at `max_result_rows`); each heavy client's text is its own \
         (its number in a literal), so the quarantine sees {HEAVY_CLIENTS} users, and it \
         waits {} ms after an immediate refusal. Generations: the SQL node's `/health` every \
         {} ms; a round is due when its boundary + the SQL node's offset ({}%) falls in the \
         phase with its interval ending in it; *seen* is when the poller first saw a \
         generation of the round, from the round's boundary. CPU in cores over the phase.\n\n\
         | phase | light answered | light p50 | light p99 | light max | light failed | heavy ok / busy / timeout / quarantined / other | most running / queued | rounds due / missed | ids unseen / re-seals | seen p50 / max | seen past the offset | `/health` max | CPU SQL node / TLA / simulator | SQL node peak RSS |\n\
         |---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        interval.as_secs(),
        timeout.as_millis(),
        2 * cores,
        cores,
        cores,
        LIGHT_PAUSE.as_millis(),
        REFUSED_PAUSE.as_millis(),
        POLL.as_millis(),
        SimulatedFleet::SQL_TENTHS * 10,
    );
    let mut p99s = Vec::new();
    let mut light_failed_mixed = 0;
    let mut all_rounds = Vec::new();
    for p in &phases {
        let (light, failed) = answered(p, |s| s.light);
        let r = rounds(p, interval_ms, offset_ms);
        let most = |f: fn(&Seen) -> u64| p.seen.iter().map(f).max().unwrap_or(0);
        let health_max = p.seen.iter().map(|s| s.took_ms).fold(0.0, f64::max);
        body.push_str(&format!(
            "| {} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {} | {} | {} / {} | {} / {} | {} / {} | {:.0} / {:.0} ms | {} (most {:.0} ms) | {:.0} ms | {:.2} / {:.2} / {:.2} | {:.0} MiB |\n",
            if p.heavy { "mixed" } else { "light" },
            light.len(),
            percentile(&light, 0.5),
            percentile(&light, 0.99),
            light.last().copied().unwrap_or(f64::NAN),
            codes(&failed),
            if p.heavy { heavy_outcomes(p, |_| true) } else { "–".into() },
            most(|s| s.running),
            most(|s| s.queued),
            r.due,
            r.missed,
            r.ids_unseen,
            r.reseals,
            percentile(&r.after_boundary, 0.5),
            r.after_boundary.last().copied().unwrap_or(f64::NAN),
            r.late,
            r.max_late,
            health_max,
            p.cpu[0],
            p.cpu[1],
            p.cpu[2],
            p.sql_peak_mib,
        ));
        p99s.push(percentile(&light, 0.99));
        if p.heavy {
            light_failed_mixed = failed.values().sum::<usize>();
        }
        all_rounds.push(r);
    }

    body.push_str(
        "\nPer query: answered, p50 / p99 ms; failures by code (light), outcomes \
         ok / busy / timeout / quarantined / other (heavy).\n\n\
         | query | light phase | mixed phase |\n|---|---|---|\n",
    );
    for (k, name) in LIGHT.iter().enumerate() {
        body.push_str(&format!("| light: {name} |"));
        for p in &phases {
            let (ms, failed) = answered(p, |s| s.light && s.query == k);
            body.push_str(&format!(
                " {}, {:.0} / {:.0} ms, failed {} |",
                ms.len(),
                percentile(&ms, 0.5),
                percentile(&ms, 0.99),
                codes(&failed)
            ));
        }
        body.push('\n');
    }
    for (k, name) in HEAVY.iter().enumerate() {
        let p = &phases[1];
        let (ms, _) = answered(p, |s| !s.light && s.query == k);
        body.push_str(&format!(
            "| heavy: {name} | – | {}; answered p50 {:.0} ms |\n",
            heavy_outcomes(p, |s| s.query == k),
            percentile(&ms, 0.5)
        ));
    }

    let ratio = p99s[1] / p99s[0];
    let missed: usize = all_rounds.iter().map(|r| r.missed).sum();
    let unseen: u64 = all_rounds.iter().map(|r| r.ids_unseen).sum();
    let reseals: usize = all_rounds.iter().map(|r| r.reseals).sum();
    let met = ratio <= 2.0 && missed == 0 && unseen == 0 && light_failed_mixed == 0;
    body.push_str(&format!(
        "\n**Against the goal** (light p99 with the heavy clients at most 2× without, every light \
         query answered, no missed generation): **{}**. Light p99 {:.0} ms alone, {:.0} ms \
         mixed ({ratio:.1}×); {light_failed_mixed} light queries failed in the mixed phase; \
         generations: {missed} due rounds missed, {unseen} ids unseen, {reseals} re-seals on the \
         SQL node's own clock over both phases; latest first sight {:.0} ms past the SQL \
         node's offset. SQL node CPU {:.2} cores light, {:.2} mixed, on {cores} cores shared \
         with the TLA, the simulator and the clients.\n",
        if met { "met" } else { "missed" },
        p99s[0],
        p99s[1],
        all_rounds.iter().map(|r| r.max_late).fold(0.0, f64::max),
        phases[0].cpu[0],
        phases[1].cpu[0],
    ));
    body.push_str(&format!(
        "\nWhole benchmark: {:.0} s. Load average (1, 5, 15 min) when the phases began: {load_before}; \
         when they ended: {} (anything else running on the machine shows here).",
        bench_started.elapsed().as_secs_f64(),
        loadavg()
    ));
    let command = if scale == 1.0 && seconds == 20.0 {
        "make bench".to_string()
    } else {
        format!(
            "BENCH_SCALE={scale} BENCH_SECONDS={seconds} cargo bench --workspace --bench overload"
        )
    };
    if let Err(e) = write_bench_section("overload", &command, &body) {
        eprintln!("overload: cannot write BENCHMARKS.md: {e}");
        std::process::exit(1);
    }
    println!("{body}");
}

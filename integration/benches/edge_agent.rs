//! Edge agent under load: P publishers × T tables × R rows, a full copy of every table each
//! interval, over the Unix socket, against a release `queryd edge`. Measures the agent's
//! CPU and memory and the time from each interval tick to the sealed generation, and writes
//! them to BENCHMARKS.md.
//!
//! `BENCH_SCALE` (default 1.0) scales publishers and rows for quick runs;
//! `BENCH_SECONDS` (default 20) is the measured time.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use query_integration::bench::{env_f64, percentile, proc_usage, write_bench_section};
use query_integration::Workspace;
use serde_json::{json, Value};

const TABLES: usize = 20;
const INTERVAL_MS: u64 = 1000;
const OFFSET_MS: u64 = 500;

fn main() {
    // As `queryd` runs: without transparent huge pages.
    query_actors::heap::no_huge_pages();
    let scale = env_f64("BENCH_SCALE", 1.0).clamp(0.01, 1.0);
    let seconds = env_f64("BENCH_SECONDS", 20.0).max(5.0);
    let publishers = ((100.0 * scale).round() as usize).max(1);
    let rows_per_table = ((1000.0 * scale).round() as usize).max(1);

    // Twenty tables of eight columns each, in a schemas directory of their own.
    let ws = Workspace::new();
    for t in 0..TABLES {
        std::fs::write(
            ws.path(&format!("schemas/bench_t{t:02}.toml")),
            format!(
                r#"name = "bench_t{t:02}"
columns = [
  {{ name = "id", type = "int64" }}, {{ name = "a", type = "int64" }}, {{ name = "b", type = "int64" }},
  {{ name = "c", type = "int64" }}, {{ name = "x", type = "float64" }}, {{ name = "y", type = "float64" }},
  {{ name = "name", type = "string" }}, {{ name = "state", type = "string" }},
]
"#
            ),
        )
        .expect("write schema");
    }
    let socket = ws.path("publish.sock");
    let node = ws.start(
        "edge",
        &format!(
            "[generation]\ninterval = \"{INTERVAL_MS}ms\"\noffset = \"{OFFSET_MS}ms\"\n\n[host]\nenabled = false\n\n\
             [edge]\nsocket = \"{}\"\nprewarm = [\"*\"]\nmax_publishers = 1000\nmax_rows_per_publish = 100000\nmax_stored_bytes = 4294967296\n",
            socket.display()
        ),
    );

    // Each table's publish line, encoded once and sent by every publisher.
    let lines: Vec<Vec<u8>> = (0..TABLES)
        .map(|t| {
            let rows: Vec<Value> = (0..rows_per_table)
                .map(|i| {
                    let i = i as i64;
                    json!({"id": i, "a": i * 7, "b": i % 13, "c": 1_000_000 + i, "x": i as f64 * 0.5,
                           "y": 99.25, "name": format!("item-{i:06}"), "state": "running"})
                })
                .collect();
            let mut line = serde_json::to_vec(&json!({"publish": {"table": format!("bench_t{t:02}"), "rows": rows}}))
                .expect("encode");
            line.push(b'\n');
            line
        })
        .collect();
    let bytes_per_round = lines.iter().map(Vec::len).sum::<usize>() * publishers;
    let lines = Arc::new(lines);
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..publishers)
        .map(|p| {
            let (lines, stop, refused, socket) =
                (lines.clone(), stop.clone(), refused.clone(), socket.clone());
            std::thread::spawn(move || {
                let s = UnixStream::connect(&socket).expect("connect");
                let mut w = s.try_clone().expect("clone");
                let mut r = BufReader::new(s);
                let tables: Vec<String> = (0..TABLES).map(|t| format!("bench_t{t:02}")).collect();
                let hello = json!({"hello": {"publisher": format!("p{p:03}"), "tables": tables}});
                writeln!(w, "{hello}").expect("hello");
                let mut reply = String::new();
                r.read_line(&mut reply).expect("want");
                while !stop.load(Ordering::Relaxed) {
                    // Publish right after each interval boundary, as a publisher should.
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_millis() as u64;
                    std::thread::sleep(Duration::from_millis(
                        INTERVAL_MS - now % INTERVAL_MS + (p as u64 % 50),
                    ));
                    for line in lines.iter() {
                        if w.write_all(line).is_err() {
                            return;
                        }
                        reply.clear();
                        if r.read_line(&mut reply).unwrap_or(0) == 0 {
                            return;
                        }
                        if !reply.starts_with("{\"ok\"") {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();

    // Warm up, then measure: CPU and memory of the agent, and each generation's seal latency.
    std::thread::sleep(Duration::from_secs(5));
    let cpu0 = proc_usage(node.pid()).cpu_s;
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut rows_seen = Vec::new();
    let mut last_id = 0;
    while started.elapsed().as_secs_f64() < seconds {
        let h = node.get_json("/health");
        let id = h["generation"]["id"].as_u64().unwrap_or(0);
        if id != last_id {
            last_id = id;
            // When it was sealed, less the tick it belongs to (the boundary plus the offset).
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64;
            let sealed = now.saturating_sub(h["generation"]["age_ms"].as_u64().unwrap_or(0));
            let tick = (sealed - OFFSET_MS) / INTERVAL_MS * INTERVAL_MS + OFFSET_MS;
            latencies.push((sealed - tick) as f64);
            let t = node.get_json("/tables");
            let total: u64 = t["tables"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x["rows"].as_u64()).sum())
                .unwrap_or(0);
            rows_seen.push(total as f64);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let end = proc_usage(node.pid());
    let (cpu1, rss, hwm) = (end.cpu_s, end.rss_mib, end.peak_mib);
    stop.store(true, Ordering::Relaxed);
    drop(node);
    for t in threads {
        let _ = t.join();
    }

    latencies.sort_by(f64::total_cmp);
    rows_seen.sort_by(f64::total_cmp);
    let expected_rows = (publishers * TABLES * rows_per_table) as f64;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let body = format!(
        "## Edge agent: {publishers} publishers × {TABLES} tables × {rows_per_table} rows, {INTERVAL_MS} ms interval\n\n\
         One `queryd edge` (release build) on the publish socket; every publisher sends a full copy of\n\
         each table every interval ({:.1} MB of JSON per interval). Publishers run in the benchmark\n\
         process on the same {cores} cores.\n\n\
         | figure | value |\n|---|---|\n\
         | agent CPU | {:.2} cores ({:.0}% of the machine) |\n\
         | agent memory (RSS now / peak) | {rss:.0} MiB / {hwm:.0} MiB |\n\
         | tick → sealed generation, median | {:.0} ms |\n\
         | tick → sealed generation, p99 | {:.0} ms |\n\
         | generations measured | {} in {elapsed:.0} s |\n\
         | rows per generation, median (expected {expected_rows:.0}) | {:.0} |\n\
         | publishes refused | {} |",
        bytes_per_round as f64 / 1e6,
        (cpu1 - cpu0) / elapsed,
        100.0 * (cpu1 - cpu0) / elapsed / cores as f64,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.len(),
        percentile(&rows_seen, 0.5),
        refused.load(Ordering::Relaxed),
    );
    println!("{body}");
    let command = format!("BENCH_SCALE={scale} BENCH_SECONDS={seconds} make bench");
    if let Err(e) = write_bench_section("edge-agent", &command, &body) {
        eprintln!("cannot write BENCHMARKS.md: {e}");
        std::process::exit(1);
    }
}

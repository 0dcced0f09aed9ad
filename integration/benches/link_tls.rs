//! The cost of mutual TLS on links (issue 12): the fleet benchmark's production path
//! (`queryd simulate` serving 10,000 machines as clusters of 70 → a `queryd tla` → a
//! `queryd sql` node, release processes on loopback) run with the same seed without and
//! with mutual TLS on both links, alternately (`ROUNDS` times each, so a machine getting
//! busier or quieter does not favour one). For each, over the same number of new
//! generations at the SQL node per run:
//!
//! - CPU seconds per generation (per interval: one generation each) of the simulator, the
//!   TLA and the SQL node (/proc);
//! - bytes per generation on the TLA's links: frames (`query_links`, compressed, before
//!   TLS) and TCP payload (`ss`: the frames plus TLS records);
//! - data latency (publish → visible at the SQL node), p50 and p99;
//!
//! and the difference in percent. `BENCH_SCALE` (default 1.0) scales the fleet.

use std::time::Duration;

use query_integration::bench::{
    env_f64, human_bytes, percentile, write_bench_section, GenerationWindow, LinkBytes,
    SimulatedFleet,
};

/// New generations measured per run.
const GENERATIONS: usize = 6;
/// Runs of each kind, alternating: plain, TLS, plain, TLS, ...
const ROUNDS: usize = 3;
const POLL: Duration = Duration::from_millis(50);
const MACHINES: f64 = 10_000.0;
/// Loopback blocks 127.0.`b`.0/24 of the runs, one per run: 86 up to 86 + 2 `ROUNDS` - 1
/// (other benchmarks use 60s, 80-82, 90).
const FIRST_BLOCK: u8 = 86;
const ROLES: [(&str, &str); 3] = [
    ("simulate", "simulator"),
    ("tla", "TLA"),
    ("sql", "SQL node"),
];

struct Run {
    startup: f64,
    window: GenerationWindow,
    links: LinkBytes,
}

fn run(machines: usize, block: u8, tls: bool) -> Run {
    let what = if tls { "mutual TLS" } else { "plain TCP" };
    let fleet = SimulatedFleet::start_with(machines, block, "", tls);
    eprintln!(
        "link_tls: {machines} machines over {what}, up after {:.0} s",
        fleet.startup
    );
    let window = fleet.measure(GENERATIONS, POLL);
    // Each run's figures, to see the spread between runs of a kind.
    eprintln!(
        "link_tls: {what}: {} generations in {:.1} s, CPU s per generation {:?}, data latency ms {:?}",
        window.generations,
        window.seconds,
        ROLES.map(|(role, _)| (window.cpu_per_interval(role) * 1000.0).round() / 1000.0),
        window.latencies.iter().map(|l| l.round()).collect::<Vec<_>>()
    );
    assert!(
        window.generations > 0,
        "link_tls: no new generation at the SQL node over {what}"
    );
    Run {
        startup: fleet.startup,
        links: fleet.link_bytes(),
        window,
    }
}

/// `bytes` (over the window) per generation interval of `r`'s window; NaN if unknown.
fn per_gen(r: &Run, bytes: Option<u64>) -> f64 {
    bytes
        .map(|b| r.window.per_interval(b as f64))
        .unwrap_or(f64::NAN)
}

/// `+3.1 %`: how much more `with` is than `without`.
fn change(without: f64, with: f64) -> String {
    if without.is_finite() && with.is_finite() && without > 0.0 {
        format!("{:+.1} %", (with - without) / without * 100.0)
    } else {
        "-".into()
    }
}

/// Whether this CPU has AES instructions (AES-GCM is then the cheap suite).
fn aes_ni() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("flags"))
                .map(|l| l.split_whitespace().any(|f| f == "aes"))
        })
        .unwrap_or(false)
}

fn main() {
    let scale = env_f64("BENCH_SCALE", 1.0).clamp(0.001, 1.0);
    let machines = ((MACHINES * scale) as usize).max(SimulatedFleet::PER_CLUSTER);
    let interval = SimulatedFleet::interval_for(machines);
    let started = std::time::Instant::now();
    // One after the other (each fleet stops before the next starts): they share the cores.
    let [mut plain, mut tls] = [false, true].map(|_| Run {
        startup: 0.0,
        window: GenerationWindow::default(),
        links: LinkBytes::default(),
    });
    for (i, block) in (0..2 * ROUNDS).zip(FIRST_BLOCK..) {
        let on = i % 2 == 1;
        let r = run(machines, block, on);
        let into = if on { &mut tls } else { &mut plain };
        into.startup += r.startup / ROUNDS as f64;
        into.window.merge(r.window);
        into.links = r.links;
    }

    let mut rows: Vec<(String, f64, f64, String)> = Vec::new();
    let mut total = (0.0, 0.0);
    for (role, name) in ROLES {
        let (a, b) = (
            plain.window.cpu_per_interval(role),
            tls.window.cpu_per_interval(role),
        );
        total = (total.0 + a, total.1 + b);
        rows.push((format!("{name} CPU per generation"), a, b, "s".into()));
    }
    rows.push((
        "all three, CPU per generation".into(),
        total.0,
        total.1,
        "s".into(),
    ));
    let bytes = |r: &Run| {
        [
            r.links.cluster_frame,
            r.links.sql_frame,
            per_gen(r, r.window.wire_clusters),
            per_gen(r, r.window.wire_sql),
        ]
    };
    let names = [
        "clusters → TLA, frames per generation",
        "TLA → SQL node, frames per generation",
        "clusters → TLA, TCP bytes per generation",
        "TLA → SQL node, TCP bytes per generation",
    ];
    for ((name, a), b) in names.iter().zip(bytes(&plain)).zip(bytes(&tls)) {
        rows.push((name.to_string(), a, b, "B".into()));
    }
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        rows.push((
            format!("data latency {name}"),
            percentile(&plain.window.latencies, p),
            percentile(&tls.window.latencies, p),
            "ms".into(),
        ));
    }
    rows.push((
        "up after (start → every machine at the SQL node), mean".into(),
        plain.startup,
        tls.startup,
        "s1".into(),
    ));

    let cell = |v: f64, unit: &str| match unit {
        "s" => format!("{v:.3} s"),
        "s1" => format!("{v:.1} s"),
        "ms" => format!("{v:.0} ms"),
        _ => human_bytes(v),
    };
    let mut body = format!(
        "## Link TLS: the cost of mutual TLS between tiers\n\n\
         The fleet benchmark's path (`queryd simulate --serve clusters`, {machines} machines in \
         clusters of {} → `queryd tla` → `queryd sql`, release processes on loopback, a {} s \
         interval) run with the same seed over plain TCP and with mutual TLS on both links \
         (`queryd simulate --tls-*` and `[link.tls]`, certificates from `queryd ca`), \
         alternately, {ROUNDS} runs of each (fresh processes every run). Each run \
         is measured over {GENERATIONS} new generations at the SQL node, from the moment it \
         shows one to the moment it shows the last: CPU seconds of each process (/proc), \
         bytes on the TLA's links and data latency (the newest `sys` source's age in the \
         first answer from each generation, polled every {} ms). *Per generation* is per \
         interval of the window (the simulator makes one generation per interval; an \
         overloaded SQL node seals extra ones of its own, so it does not count them). \
         *Frames* are the link \
         frames as `query_links` counts them (compressed, before TLS; the same in both runs \
         up to the data's churn); *TCP bytes* are what the sockets sent (`ss` bytes_sent): \
         frames plus TLS records (22 bytes per record of up to 16 KiB) and the handshakes' \
         share.\n\n\
         TLS 1.3 with TLS13_AES_128_GCM_SHA256 (rustls with the *ring* provider; \
         `actors/src/tls.rs` puts AES-128-GCM first, the unit test \
         `tls::tests::links_negotiate_tls13_aes_128_gcm` checks that links negotiate it), \
         X25519 key exchange, ECDSA P-256 certificates; this CPU {} AES-NI. Connections are \
         long-lived, so the handshakes (one per link at start) cost nothing per generation; \
         the cost is encrypting and decrypting each generation's frames.\n\n\
         | figure | plain TCP | mutual TLS | difference |\n|---|---:|---:|---:|\n",
        SimulatedFleet::PER_CLUSTER,
        interval.as_secs(),
        POLL.as_millis(),
        if aes_ni() { "has" } else { "lacks" },
    );
    for (name, a, b, unit) in &rows {
        body.push_str(&format!(
            "| {name} | {} | {} | {} |\n",
            cell(*a, unit),
            cell(*b, unit),
            change(*a, *b)
        ));
    }
    body.push_str(&format!(
        "\nMeasured (all runs): {} plain and {} TLS generations at the SQL node over \
         {:.1} s and {:.1} s; frames are the last run's. The three processes, the poller and \
         anything else on the machine share its cores: on a busy machine the TLA falls \
         behind (data latency beyond the interval) and the figures say little. Latency moves \
         with the schedule (the TLA seals {}% into the interval). Whole benchmark: {:.0} s.",
        plain.window.generations,
        tls.window.generations,
        plain.window.seconds,
        tls.window.seconds,
        SimulatedFleet::TLA_TENTHS * 10,
        started.elapsed().as_secs_f64(),
    ));
    let command = if scale == 1.0 {
        "make bench-full".to_string()
    } else {
        format!("BENCH_SCALE={scale} cargo bench --workspace --bench link_tls")
    };
    if let Err(e) = write_bench_section("link_tls", &command, &body) {
        eprintln!("link_tls: cannot write BENCHMARKS.md: {e}");
        std::process::exit(1);
    }
    println!("{body}");
}

//! How fast SQL nodes of an aggregator set switch TLAs, on the set of the aggregator-set
//! test (`query_integration::set_fleet`: dnsmasq, 6 simulated machines in 2 clusters, 4
//! proxies, 2 TLAs, 3 SQL nodes, 1 s interval, probes every 250 ms, `fail_after = 2`,
//! TLAs' `drop_after = 2s`), as release processes. Repeated `BENCH_REPEATS` times (default
//! 5) each:
//!
//! - **TLA killed**: the TLA the SQL nodes use is SIGKILLed; measured per SQL node, the time
//!   until it uses the other TLA, and until it serves every machine from a generation the
//!   other TLA sealed after the kill. The killed TLA is then restarted.
//! - **TLA cut off from a cluster**: the links from the TLA in use to cluster 2 break (its
//!   relays reset every connection); measured, the time until every SQL node uses the TLA
//!   that sees both clusters. Then the links are mended.

use std::time::{Duration, Instant};

use query_integration::bench::{env_f64, percentile, write_bench_section};
use query_integration::set_fleet::{tla_link, SetFleet, MACHINES, TLAS};

const LIMIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);

fn main() {
    let repeats = env_f64("BENCH_REPEATS", 5.0).max(1.0) as usize;
    let started = Instant::now();
    let mut fleet = SetFleet::start();
    fleet.dns.set("tla.main.test", &TLAS);
    settle(&fleet);

    let (mut kill_switch, mut kill_fresh, mut cut_switch) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..repeats {
        // Kill the TLA in use.
        let t = in_use(&fleet);
        let t0 = Instant::now();
        drop(fleet.tlas[t].take());
        let mut switched = [None; 3];
        let mut fresh = [None; 3];
        while fresh.iter().any(Option::is_none) {
            assert!(t0.elapsed() < LIMIT, "no switch after a TLA kill");
            for s in 0..3 {
                let h = fleet.health(s);
                if switched[s].is_none() && h["tla"]["current"] == tla_link(1 - t) {
                    switched[s] = Some(t0.elapsed());
                }
                // Sealed after the kill: from the other TLA.
                let age = h["generation"]["age_ms"].as_u64().unwrap_or(u64::MAX);
                if switched[s].is_some()
                    && fresh[s].is_none()
                    && h["machines"] == MACHINES as u64
                    && u128::from(age) < t0.elapsed().as_millis()
                {
                    fresh[s] = Some(t0.elapsed());
                }
            }
            std::thread::sleep(POLL);
        }
        kill_switch.extend(switched.iter().flatten().map(Duration::as_secs_f64));
        kill_fresh.extend(fresh.iter().flatten().map(Duration::as_secs_f64));
        fleet.tlas[t] = Some(fleet.start_tla(t));
        settle(&fleet);

        // Cut the TLA in use off from cluster 2.
        let t = in_use(&fleet);
        let t0 = Instant::now();
        for r in &fleet.relays[t] {
            r.cut();
        }
        let mut moved = [None; 3];
        while moved.iter().any(Option::is_none) {
            assert!(t0.elapsed() < LIMIT, "no switch after a cut");
            for (s, m) in moved.iter_mut().enumerate() {
                if m.is_none() && fleet.current_tla(s) == Some(tla_link(1 - t)) {
                    *m = Some(t0.elapsed());
                }
            }
            std::thread::sleep(POLL);
        }
        cut_switch.extend(moved.iter().flatten().map(Duration::as_secs_f64));
        for r in &fleet.relays[t] {
            r.restore();
        }
        settle(&fleet);
        eprintln!("failover: round {} of {repeats} done", round + 1);
    }

    let row = |what: &str, v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        format!(
            "| {what} | {} | {:.2} | {:.2} | {:.2} |\n",
            v.len(),
            percentile(v, 0.5),
            v[0],
            v[v.len() - 1]
        )
    };
    let body = format!(
        "## Failover: SQL nodes switching TLAs ({repeats} repeats)\n\n\
         The aggregator set of the aggregator-set test as release `queryd` processes on\n\
         loopback, names served by dnsmasq: {MACHINES} simulated machines in 2 clusters, 2\n\
         cluster proxies per cluster, 2 TLAs, 3 SQL nodes; 1 s interval; SQL nodes probe\n\
         every TLA every 250 ms and leave one after 2 failed probes; TLAs drop a cluster\n\
         silent for 2 s. Times are seconds from the fault, per SQL node (3 per repeat),\n\
         read from `/health` every {} ms.\n\n\
         | fault → | samples | median s | min s | max s |\n|---|---|---|---|---|\n{}{}{}\n\
         *TLA killed → switched*: the SQL node dials the other TLA (two probes refused).\n\
         *→ fresh again*: it serves every machine from a generation sealed after the kill\n\
         (the new TLA's next frame, a full copy, then the SQL node's next seal); until then\n\
         it answers from the dead TLA's last generation, whose age grows. *Cut off → switched*: the TLA in use loses\n\
         cluster 2 (connections reset); it drops the cluster after `drop_after` (2 s),\n\
         advertises 1 cluster at its next seal, and the SQL nodes move at their next\n\
         probe to the TLA that sees 2. Whole benchmark: {:.0} s.",
        POLL.as_millis(),
        row("TLA killed → switched", &mut kill_switch),
        row("TLA killed → fresh again", &mut kill_fresh),
        row("TLA cut off from a cluster → switched", &mut cut_switch),
        started.elapsed().as_secs_f64(),
    );
    println!("{body}");
    let command = format!("BENCH_REPEATS={repeats} make bench-full");
    if let Err(e) = write_bench_section("failover", &command, &body) {
        eprintln!("cannot write BENCHMARKS.md: {e}");
        std::process::exit(1);
    }
}

/// The TLA SQL node 0 uses (after [`settle`] they all agree).
fn in_use(fleet: &SetFleet) -> usize {
    let current = fleet.current_tla(0).expect("a TLA in use");
    (0..TLAS.len())
        .find(|t| tla_link(*t) == current)
        .expect("a known TLA")
}

/// Waits until both TLAs see both clusters, every SQL node uses the same TLA, and every one
/// serves fresh rows of every machine.
fn settle(fleet: &SetFleet) {
    let t0 = Instant::now();
    loop {
        assert!(t0.elapsed() < LIMIT, "the set did not settle");
        let healths: Vec<_> = (0..3).map(|s| fleet.health(s)).collect();
        let seen_by_all = healths.iter().all(|h| {
            h["tla"]["candidates"].as_array().is_some_and(|c| {
                c.len() == 2
                    && c.iter()
                        .all(|c| c["clusters"] == 2 && c["failed_probes"] == 0)
            }) && h["machines"] == MACHINES as u64
                && h["generation"]["age_ms"].as_u64().is_some_and(|a| a < 1500)
        });
        let one_tla = healths
            .windows(2)
            .all(|w| w[0]["tla"]["current"] == w[1]["tla"]["current"]);
        if seen_by_all && one_tla {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

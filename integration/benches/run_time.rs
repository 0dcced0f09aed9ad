//! How long `make bench` took, step by step: the last step of `make bench`, which passes
//! each step's wall-clock seconds in `BENCH_STEPS` (`name=seconds` separated by spaces, in
//! order) and whether the release build started from an empty target directory in
//! `BENCH_BUILD` (`cold` or `warm`). The bound: under 30 minutes on a fresh machine,
//! that is with a cold build and the tools still to install. `BENCH_RUN` names the target
//! (`bench`, the default, or `bench-full`); each has its own section.

use query_integration::bench::{env_f64, write_bench_section};

fn main() {
    let steps: Vec<(String, f64)> = std::env::var("BENCH_STEPS")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| {
            let (name, secs) = s.split_once('=')?;
            Some((name.to_string(), secs.parse().ok()?))
        })
        .collect();
    if steps.is_empty() {
        eprintln!("run_time: BENCH_STEPS is empty; run it through `make bench`");
        std::process::exit(2);
    }
    let build = std::env::var("BENCH_BUILD").unwrap_or_else(|_| "unknown".into());
    let scale = env_f64("BENCH_SCALE", 1.0);
    let run = std::env::var("BENCH_RUN").unwrap_or_else(|_| "bench".into());
    if run != "bench" && run != "bench-full" {
        eprintln!("run_time: BENCH_RUN is `bench` or `bench-full`, not `{run}`");
        std::process::exit(2);
    }
    let total: f64 = steps.iter().map(|(_, s)| s).sum();
    let minutes = |s: f64| format!("{}:{:02}", (s / 60.0) as u64, s as u64 % 60);
    let mut body = format!(
        "## `make {run}` itself: {} (min:s), release build {build}, BENCH_SCALE {scale}\n\n\
         Wall-clock time of each step of the run that wrote this file (the steps before \
         this one; the table is written last). A fresh machine means a cold build (empty \
         target directory, crates to download) and the Debian packages and the DuckDB \
         virtualenv still to install, which `make {run}` does while cargo builds \
         (`tools+build`).\n\n| step | time |\n|---|---:|\n",
        minutes(total)
    );
    for (name, secs) in &steps {
        body.push_str(&format!("| {name} | {} |\n", minutes(*secs)));
    }
    body.push_str(&format!("| **total** | **{}** |\n", minutes(total)));
    let section = format!("make-{run}");
    if let Err(e) = write_bench_section(&section, &format!("make {run}"), &body) {
        eprintln!("run_time: cannot write BENCHMARKS.md: {e}");
        std::process::exit(1);
    }
    println!("{body}");
}

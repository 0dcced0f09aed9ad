//! `queryfuzz`: runs the fuzzing targets (see the crate docs and FUZZING.md).
//!
//! ```text
//! queryfuzz --target publish|frame|sql|all --inputs N --seed S
//! queryfuzz --target sql --deep            # after the engine's expression limits land
//! queryfuzz --target frame --seed 1 --start 81234 --inputs 1 --in-process   # one input
//! ```
//!
//! Exit status 1 when any target had a crash (a panic, an abort, a violated oracle or the
//! RSS bound exceeded).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use query_fuzz::runner::Progress;
use query_fuzz::sql::GenLimits;
use query_fuzz::supervise::{finding_json, report_json, run_supervised};
use query_fuzz::{make_target, run, RunConfig, SqlSettings, TARGETS};

#[derive(Parser, Debug)]
#[command(about = "Fuzzes the publish line decoder, link frame decoding and the SQL front door")]
struct Args {
    /// publish, frame, sql, or all (one after the other).
    #[arg(long, default_value = "all")]
    target: String,
    /// Inputs per target.
    #[arg(long, default_value_t = 100_000)]
    inputs: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Index of the first input (inputs are a function of seed and index).
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Stop a target after this many seconds; the count run is reported.
    #[arg(long)]
    max_seconds: Option<f64>,
    /// Fail when the process's peak RSS exceeds this (unbounded growth).
    #[arg(long, default_value_t = 1024)]
    max_rss_mb: u64,
    /// Sample RSS every this many inputs.
    #[arg(long, default_value_t = 1000)]
    rss_every: u64,
    /// SQL: generate what needs the engine's expression and memory limits (huge chains,
    /// deep nesting, allocating functions). Aborts are expected until those limits exist.
    #[arg(long)]
    deep: bool,
    /// SQL: nesting depth of generated expressions (default 16; 10,000 with --deep).
    #[arg(long)]
    max_depth: Option<usize>,
    /// SQL: terms of one generated chain or IN list (default 64; 100,000 with --deep).
    #[arg(long)]
    max_terms: Option<usize>,
    /// SQL: per-query time limit, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Run in this process (an abort then ends the run); default: in child processes.
    #[arg(long)]
    in_process: bool,
    /// Internal: this process is a supervised child.
    #[arg(long, hide = true)]
    worker: bool,
    /// Internal: the child's progress file.
    #[arg(long, hide = true)]
    progress: Option<PathBuf>,
}

impl Args {
    fn sql(&self) -> SqlSettings {
        let mut gen = if self.deep {
            GenLimits::deep()
        } else {
            GenLimits::moderate()
        };
        if let Some(d) = self.max_depth {
            gen.max_depth = d;
        }
        if let Some(t) = self.max_terms {
            gen.max_terms = t;
        }
        SqlSettings {
            gen,
            timeout: Duration::from_millis(self.timeout_ms),
        }
    }

    fn config(&self) -> RunConfig {
        let mut cfg = RunConfig::new(self.seed, self.inputs);
        cfg.start = self.start;
        cfg.max_time = self.max_seconds.map(Duration::from_secs_f64);
        cfg.max_rss_bytes = self.max_rss_mb << 20;
        cfg.rss_every = self.rss_every;
        cfg
    }

    /// The arguments a child gets (it adds start, inputs, time and progress itself).
    fn worker_args(&self, target: &str) -> Vec<String> {
        let mut a = vec![
            "--worker".to_string(),
            format!("--target={target}"),
            format!("--seed={}", self.seed),
            format!("--max-rss-mb={}", self.max_rss_mb),
            format!("--rss-every={}", self.rss_every),
            format!("--timeout-ms={}", self.timeout_ms),
        ];
        if self.deep {
            a.push("--deep".into());
        }
        if let Some(d) = self.max_depth {
            a.push(format!("--max-depth={d}"));
        }
        if let Some(t) = self.max_terms {
            a.push(format!("--max-terms={t}"));
        }
        a
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.worker {
        return worker(&args);
    }
    let targets: Vec<&str> = if args.target == "all" {
        TARGETS.to_vec()
    } else {
        vec![args.target.as_str()]
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("queryfuzz: cannot find this executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "queryfuzz: seed {}, {} inputs per target{}",
        args.seed,
        args.inputs,
        if args.deep { ", SQL deep mode" } else { "" }
    );
    let mut failed = false;
    for name in targets {
        let sql = args.sql();
        let result = if args.in_process {
            make_target(name, &sql).map(|mut t| run(t.as_mut(), &args.config(), None, &mut |_| {}))
        } else {
            run_supervised(
                name,
                &args.config(),
                &exe,
                &args.worker_args(name),
                &mut || make_target(name, &sql),
            )
        };
        match result {
            Ok(r) => {
                println!("{}", r.summary());
                failed |= r.crash_count() > 0;
            }
            Err(e) => {
                eprintln!("queryfuzz: target {name}: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// A supervised child: runs its share, printing findings as they happen, then its report.
fn worker(args: &Args) -> ExitCode {
    let mut target = match make_target(&args.target, &args.sql()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("queryfuzz: target {}: {e}", args.target);
            return ExitCode::FAILURE;
        }
    };
    let progress = match &args.progress {
        Some(p) => match OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(p)
        {
            Ok(file) => Some(Progress { file }),
            Err(e) => {
                eprintln!("queryfuzz: {}: {e}", p.display());
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let mut out = std::io::stdout();
    let report = run(
        target.as_mut(),
        &args.config(),
        progress.as_ref(),
        &mut |f| {
            let _ = writeln!(out, "finding {}", finding_json(f));
            let _ = out.flush();
        },
    );
    println!("report {}", report_json(&report));
    ExitCode::SUCCESS
}

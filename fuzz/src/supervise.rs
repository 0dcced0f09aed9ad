//! Runs a target in child processes, so that an abort — a stack overflow, an allocation
//! failure — is a finding with its input rather than the end of the run.
//!
//! The child (`queryfuzz --worker`) writes, before each input, the input's index and its
//! counts so far into a progress file, and prints each finding as a JSON line as it
//! happens; at the end it prints its report. If it dies without a report, the supervisor
//! reads the progress file, regenerates the input that was running (inputs are a function
//! of seed and index), records an `abort`, and starts a new child after it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::runner::{input_rng, Finding, Report, RunConfig, Target, PROGRESS_WORDS};

pub fn finding_json(f: &Finding) -> String {
    json!({"index": f.index, "kind": f.kind, "message": f.message, "input": f.input}).to_string()
}

fn finding_from(v: &Value) -> Finding {
    Finding {
        index: v["index"].as_u64().unwrap_or_default(),
        kind: v["kind"].as_str().unwrap_or_default().to_string(),
        message: v["message"].as_str().unwrap_or_default().to_string(),
        input: v["input"].as_str().unwrap_or_default().to_string(),
    }
}

pub fn report_json(r: &Report) -> String {
    json!({
        "inputs": r.inputs, "accepted": r.accepted, "refused": r.refused,
        "timeouts": r.timeouts, "contained_panics": r.contained_panics,
        "rss_warm": r.rss_warm, "rss_end": r.rss_end, "rss_peak": r.rss_peak,
    })
    .to_string()
}

/// Runs `cfg` of target `name` in child processes started as `exe worker_args... --start
/// S --inputs N [--max-seconds T] --progress P`. `make_target` builds the target in this
/// process only when an abort's input must be regenerated.
pub fn run_supervised(
    name: &str,
    cfg: &RunConfig,
    exe: &Path,
    worker_args: &[String],
    make_target: &mut dyn FnMut() -> Result<Box<dyn Target>, String>,
) -> Result<Report, String> {
    let progress =
        std::env::temp_dir().join(format!("queryfuzz-{}-{name}.progress", std::process::id()));
    let started = Instant::now();
    let end = cfg.start.saturating_add(cfg.inputs);
    let mut total = Report {
        target: name.to_string(),
        seed: cfg.seed,
        ..Report::default()
    };
    let mut start = cfg.start;
    let mut target: Option<Box<dyn Target>> = None;
    while start < end {
        let mut cmd = Command::new(exe);
        cmd.args(worker_args)
            .arg("--start")
            .arg(start.to_string())
            .arg("--inputs")
            .arg((end - start).to_string())
            .arg("--progress")
            .arg(&progress)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(t) = cfg.max_time {
            let left = t.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            cmd.arg("--max-seconds").arg(left.as_secs_f64().to_string());
        }
        let _ = std::fs::remove_file(&progress);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        total.processes += 1;
        let mut report = None;
        if let Some(out) = child.stdout.take() {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(j) = line.strip_prefix("finding ") {
                    if let Ok(v) = serde_json::from_str::<Value>(j) {
                        total.findings.push(finding_from(&v));
                    }
                } else if let Some(j) = line.strip_prefix("report ") {
                    report = serde_json::from_str::<Value>(j).ok();
                } else {
                    println!("{line}");
                }
            }
        }
        let status = child.wait().map_err(|e| e.to_string())?;
        if let Some(r) = report {
            let n = |k: &str| r[k].as_u64().unwrap_or_default();
            add(
                &mut total,
                [
                    n("inputs"),
                    n("accepted"),
                    n("refused"),
                    n("timeouts"),
                    n("contained_panics"),
                ],
            );
            if total.rss_warm == 0 {
                total.rss_warm = n("rss_warm");
            }
            total.rss_end = n("rss_end");
            total.rss_peak = total.rss_peak.max(n("rss_peak"));
            break;
        }
        // Died inside an input: which one, and the counts before it.
        let words = read_progress(&progress)
            .ok_or_else(|| format!("the worker ended ({status}) before its first input"))?;
        let index = words[0];
        add(
            &mut total,
            [words[1] + 1, words[2], words[3], words[4], words[5]],
        );
        total.rss_peak = total.rss_peak.max(words[6]);
        if target.is_none() {
            target = Some(make_target()?);
        }
        let input = target
            .as_ref()
            .map(|t| t.show(&t.generate(&mut input_rng(cfg.seed, index))))
            .unwrap_or_default();
        let f = Finding {
            index,
            kind: "abort".into(),
            message: format!("the process ended: {status}"),
            input,
        };
        eprintln!("queryfuzz: {} at input {index}: {}", f.kind, f.message);
        total.findings.push(f);
        start = index + 1;
    }
    let _ = std::fs::remove_file(&progress);
    total.elapsed = started.elapsed().max(Duration::from_nanos(1));
    Ok(total)
}

fn add(total: &mut Report, [inputs, accepted, refused, timeouts, contained]: [u64; 5]) {
    total.inputs += inputs;
    total.accepted += accepted;
    total.refused += refused;
    total.timeouts += timeouts;
    total.contained_panics += contained;
}

fn read_progress(path: &Path) -> Option<[u64; PROGRESS_WORDS]> {
    let bytes = std::fs::read(path).ok()?;
    let mut words = [0u64; PROGRESS_WORDS];
    for (w, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
        *w = u64::from_le_bytes(chunk.try_into().ok()?);
    }
    (bytes.len() >= PROGRESS_WORDS * 8).then_some(words)
}

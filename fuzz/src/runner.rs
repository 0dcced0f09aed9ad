//! Runs one target's inputs in this process: generates input `i` from `(seed, i)`, runs it
//! under `catch_unwind`, counts outcomes, and samples memory so growth is seen.
//!
//! - A panic that reaches the runner is a **crash**; so is a [`Outcome::Violation`] (an
//!   input the target's oracle says must have been handled otherwise, e.g. a valid frame
//!   refused).
//! - A panic that something inside caught (Arrow's IPC reader behind the link decoder's
//!   guard, a query's task on the compute pool) is **contained**: the node survives it, but
//!   it is counted and the first few are reported with their input.
//! - An abort (stack overflow) ends the process; [`crate::supervise`] records it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::SeedableRng;

/// What one input did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Decoded, validated or answered.
    Accepted,
    /// Refused with an error: fine, that is what bad input should get.
    Refused,
    /// Did not finish within the target's time limit.
    Timeout,
    /// The target's oracle failed (not a panic): a crash.
    Violation(String),
}

/// A fuzzing target: a generator of inputs and a way to run one.
pub trait Target {
    fn name(&self) -> &'static str;
    /// The input for `rng` (seeded from the run's seed and the input's index).
    fn generate(&self, rng: &mut SmallRng) -> Vec<u8>;
    /// Feeds one input to the code under test.
    fn run(&mut self, input: &[u8]) -> Outcome;
    /// How an input is shown in a report: text where it is text.
    fn show(&self, input: &[u8]) -> String {
        show_bytes(input)
    }
}

/// An input's bytes for a report: the text if UTF-8 (cut at 400 characters), else hex.
pub fn show_bytes(input: &[u8]) -> String {
    const MAX: usize = 400;
    match std::str::from_utf8(input) {
        Ok(s) if s.chars().count() <= MAX => format!("{s:?}"),
        Ok(s) => format!(
            "{:?}... ({} bytes)",
            s.chars().take(MAX).collect::<String>(),
            input.len()
        ),
        Err(_) => {
            let hex: String = input
                .iter()
                .take(MAX / 2)
                .map(|b| format!("{b:02x}"))
                .collect();
            let more = if input.len() > MAX / 2 { "..." } else { "" };
            format!("hex {hex}{more} ({} bytes)", input.len())
        }
    }
}

/// One noteworthy input.
#[derive(Debug, Clone)]
pub struct Finding {
    pub index: u64,
    /// `panic`, `violation`, `abort` (crashes); `contained panic`, `timeout` (notes).
    pub kind: String,
    pub message: String,
    /// The input as [`Target::show`] shows it.
    pub input: String,
}

impl Finding {
    pub fn is_crash(&self) -> bool {
        matches!(self.kind.as_str(), "panic" | "violation" | "abort")
    }
}

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub seed: u64,
    /// Index of the first input (to resume after an abort, or reproduce one input).
    pub start: u64,
    pub inputs: u64,
    /// Stop early after this long (the count run is reported).
    pub max_time: Option<Duration>,
    /// Sample RSS every this many inputs.
    pub rss_every: u64,
    /// The run fails if the process's peak RSS exceeds this.
    pub max_rss_bytes: u64,
    /// Findings of each note kind kept in the report (all are counted).
    pub keep_notes: usize,
}

impl RunConfig {
    pub fn new(seed: u64, inputs: u64) -> Self {
        RunConfig {
            seed,
            start: 0,
            inputs,
            max_time: None,
            rss_every: 1000,
            max_rss_bytes: 2 << 30,
            keep_notes: 5,
        }
    }
}

/// Counts of a run (or of several segments of one, added up).
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub target: String,
    pub seed: u64,
    pub inputs: u64,
    pub accepted: u64,
    pub refused: u64,
    pub timeouts: u64,
    pub contained_panics: u64,
    pub findings: Vec<Finding>,
    pub elapsed: Duration,
    /// RSS after the first sample (warm: target built, first inputs run) and at the end.
    pub rss_warm: u64,
    pub rss_end: u64,
    /// Highest RSS the process reached (VmHWM), and the highest sampled.
    pub rss_peak: u64,
    /// Processes the run took (more than one after aborts).
    pub processes: u64,
}

impl Report {
    pub fn crashes(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.is_crash())
    }

    pub fn crash_count(&self) -> usize {
        self.crashes().count()
    }

    pub fn per_second(&self) -> f64 {
        self.inputs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// One paragraph: counts, rate, memory, then every finding.
    pub fn summary(&self) -> String {
        let mb = |b: u64| b as f64 / (1 << 20) as f64;
        let mut s = format!(
            "target {}: {} inputs (seed {}) in {:.1} s, {:.0} inputs/s; accepted {}, refused {}, \
             timeouts {}, contained panics {}; crashes {}; RSS warm {:.1} MiB, end {:.1} MiB, \
             peak {:.1} MiB; processes {}",
            self.target,
            self.inputs,
            self.seed,
            self.elapsed.as_secs_f64(),
            self.per_second(),
            self.accepted,
            self.refused,
            self.timeouts,
            self.contained_panics,
            self.crash_count(),
            mb(self.rss_warm),
            mb(self.rss_end),
            mb(self.rss_peak),
            self.processes.max(1),
        );
        for f in &self.findings {
            s.push_str(&format!(
                "\n  {} at input {}: {}\n    input: {}",
                f.kind, f.index, f.message, f.input
            ));
        }
        s
    }
}

/// The RNG for input `index` of `seed`: inputs are independent of each other, so any one
/// can be regenerated alone.
pub fn input_rng(seed: u64, index: u64) -> SmallRng {
    SmallRng::seed_from_u64(splitmix(seed ^ splitmix(index.wrapping_add(0x5151))))
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------------------
// Panics: counted by a hook, silent while inputs run (millions of expected, contained
// panics would flood the terminal), reported through findings instead.
// ---------------------------------------------------------------------------------------

static PANICS: AtomicU64 = AtomicU64::new(0);
static QUIET: AtomicBool = AtomicBool::new(false);
static LAST_PANIC: Mutex<String> = Mutex::new(String::new());
static HOOK: Once = Once::new();

fn install_panic_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            if let Ok(mut last) = LAST_PANIC.lock() {
                *last = format!("{msg}{at}");
            }
            if !QUIET.load(Ordering::SeqCst) {
                previous(info);
            }
        }));
    });
}

fn last_panic() -> String {
    LAST_PANIC.lock().map(|s| s.clone()).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------

/// Resident set size now, from /proc/self/statm (0 where there is no /proc).
pub fn rss_now() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    pages * rustix::param::page_size() as u64
}

/// The highest RSS this process has had (VmHWM in /proc/self/status), transients included.
pub fn rss_high_water() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Where a supervised child records how far it got (see [`crate::supervise`]).
pub struct Progress {
    pub file: File,
}

/// The words of a progress record: index of the input running, then the counts so far.
pub const PROGRESS_WORDS: usize = 7;

impl Progress {
    fn write(&self, index: u64, r: &Report) {
        let words = [
            index,
            r.inputs,
            r.accepted,
            r.refused,
            r.timeouts,
            r.contained_panics,
            r.rss_peak,
        ];
        let mut bytes = [0u8; PROGRESS_WORDS * 8];
        for (chunk, w) in bytes.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        // Best effort: a lost record only makes an abort's input unknown.
        let _ = self.file.write_all_at(&bytes, 0);
    }
}

/// Runs `cfg.inputs` inputs of `target`. `on_finding` sees each finding as it happens (a
/// supervised child prints it, so it survives a later abort); `progress` records the index
/// of each input before it runs.
pub fn run(
    target: &mut dyn Target,
    cfg: &RunConfig,
    progress: Option<&Progress>,
    on_finding: &mut dyn FnMut(&Finding),
) -> Report {
    install_panic_hook();
    let mut r = Report {
        target: target.name().to_string(),
        seed: cfg.seed,
        processes: 1,
        ..Report::default()
    };
    let mut notes_kept = std::collections::HashMap::<String, usize>::new();
    let started = Instant::now();
    let end = cfg.start.saturating_add(cfg.inputs);
    for index in cfg.start..end {
        if cfg.max_time.is_some_and(|t| started.elapsed() >= t) {
            break;
        }
        if let Some(p) = progress {
            p.write(index, &r);
        }
        let input = target.generate(&mut input_rng(cfg.seed, index));
        let panics_before = PANICS.load(Ordering::SeqCst);
        QUIET.store(true, Ordering::SeqCst);
        let result = catch_unwind(AssertUnwindSafe(|| target.run(&input)));
        QUIET.store(false, Ordering::SeqCst);
        let contained = PANICS.load(Ordering::SeqCst) > panics_before;
        r.inputs += 1;
        let finding = |kind: &str, message: String| Finding {
            index,
            kind: kind.into(),
            message,
            input: target.show(&input),
        };
        let mut found = Vec::new();
        match result {
            Err(_) => found.push(finding("panic", last_panic())),
            Ok(outcome) => {
                if contained {
                    r.contained_panics += 1;
                    found.push(finding("contained panic", last_panic()));
                }
                match outcome {
                    Outcome::Accepted => r.accepted += 1,
                    Outcome::Refused => r.refused += 1,
                    Outcome::Timeout => {
                        r.timeouts += 1;
                        found.push(finding("timeout", "no result within the time limit".into()));
                    }
                    Outcome::Violation(m) => found.push(finding("violation", m)),
                }
            }
        }
        for f in found {
            let keep = f.is_crash() || {
                let n = notes_kept.entry(f.kind.clone()).or_default();
                *n += 1;
                *n <= cfg.keep_notes
            };
            if keep {
                on_finding(&f);
                r.findings.push(f);
            }
        }
        if r.inputs.is_multiple_of(cfg.rss_every.max(1)) {
            let now = rss_now();
            if r.rss_warm == 0 {
                r.rss_warm = now;
            }
            r.rss_peak = r.rss_peak.max(now).max(rss_high_water());
            if r.rss_peak > cfg.max_rss_bytes {
                let f = Finding {
                    index,
                    kind: "violation".into(),
                    message: format!(
                        "peak RSS {} MiB exceeds the bound of {} MiB (--max-rss-mb)",
                        r.rss_peak >> 20,
                        cfg.max_rss_bytes >> 20
                    ),
                    input: target.show(&input),
                };
                on_finding(&f);
                r.findings.push(f);
                break;
            }
        }
    }
    r.elapsed = started.elapsed();
    r.rss_end = rss_now();
    if r.rss_warm == 0 {
        r.rss_warm = r.rss_end;
    }
    r.rss_peak = r.rss_peak.max(r.rss_end).max(rss_high_water());
    if r.rss_peak > cfg.max_rss_bytes && !r.findings.iter().any(|f| f.message.contains("RSS")) {
        r.findings.push(Finding {
            index: end,
            kind: "violation".into(),
            message: format!(
                "peak RSS {} MiB exceeds the bound of {} MiB (--max-rss-mb)",
                r.rss_peak >> 20,
                cfg.max_rss_bytes >> 20
            ),
            input: String::new(),
        });
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Panics on inputs starting with 0, is contained on 1, violates on 2.
    struct Boom;

    impl Target for Boom {
        fn name(&self) -> &'static str {
            "boom"
        }
        fn generate(&self, rng: &mut SmallRng) -> Vec<u8> {
            use rand::Rng;
            vec![rng.random_range(0..8u8)]
        }
        fn run(&mut self, input: &[u8]) -> Outcome {
            match input[0] {
                0 => panic!("boom"),
                1 => {
                    let _ = catch_unwind(|| panic!("inner"));
                    Outcome::Refused
                }
                2 => Outcome::Violation("oracle".into()),
                _ => Outcome::Accepted,
            }
        }
    }

    #[test]
    fn panics_violations_and_contained_panics_are_told_apart() {
        let r = run(&mut Boom, &RunConfig::new(1, 400), None, &mut |_| {});
        assert_eq!(r.inputs, 400);
        let kinds: std::collections::BTreeSet<_> =
            r.findings.iter().map(|f| f.kind.as_str()).collect();
        assert!(
            kinds.contains("panic") && kinds.contains("violation"),
            "{kinds:?}"
        );
        assert!(r.contained_panics > 0);
        assert!(
            r.crashes().any(|f| f.message.contains("boom")),
            "{}",
            r.summary()
        );
        assert!(r.crashes().all(|f| f.kind != "contained panic"));
        // Deterministic: the same seed gives the same findings.
        let again = run(&mut Boom, &RunConfig::new(1, 400), None, &mut |_| {});
        assert_eq!(again.crash_count(), r.crash_count());
    }

    #[test]
    fn memory_bound_is_enforced() {
        let mut cfg = RunConfig::new(1, 10);
        cfg.rss_every = 1;
        cfg.max_rss_bytes = 1; // any process exceeds one byte
        let r = run(&mut Boom, &cfg, None, &mut |_| {});
        assert!(
            r.crashes().any(|f| f.message.contains("RSS")),
            "{}",
            r.summary()
        );
    }
}

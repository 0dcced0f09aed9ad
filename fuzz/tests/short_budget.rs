//! The CI budget: each target runs a few seconds' worth of inputs (debug build) and must
//! have no crash: no panic reaching the runner, no violated oracle, RSS under the bound.
//! `make fuzz` runs 1,000,000 inputs per target in release (FUZZING.md).

use query_fuzz::{make_target, run, RunConfig, SqlSettings};

fn fuzz(target: &str, inputs: u64, max_rss_mb: u64) {
    let mut t = make_target(target, &SqlSettings::default()).expect("target");
    let mut cfg = RunConfig::new(1, inputs);
    cfg.rss_every = 100;
    cfg.max_rss_bytes = max_rss_mb << 20;
    let r = run(t.as_mut(), &cfg, None, &mut |_| {});
    println!("{}", r.summary());
    assert_eq!(r.inputs, inputs);
    assert_eq!(r.crash_count(), 0, "{}", r.summary());
    // The generators must reach the code under test, not only its first error.
    assert!(r.accepted > 0 && r.refused > 0, "{}", r.summary());
}

#[test]
fn publish_lines() {
    fuzz("publish", 5_000, 1024);
}

#[test]
fn link_frames() {
    fuzz("frame", 5_000, 1024);
}

#[test]
fn sql_front_door() {
    fuzz("sql", 300, 2048);
}

/// Issue 11's shapes (chains of 5,000+ terms, 100,000-term IN lists, 10,000-deep nesting,
/// allocating functions, the TopK LIMIT) against the SQL front door: refused or answered,
/// never a crash.
#[test]
fn sql_front_door_deep() {
    let settings = SqlSettings {
        gen: query_fuzz::sql::GenLimits::deep(),
        ..Default::default()
    };
    let mut t = make_target("sql", &settings).expect("target");
    let mut cfg = RunConfig::new(1, 60);
    cfg.rss_every = 10;
    cfg.max_rss_bytes = 3 << 30;
    let r = run(t.as_mut(), &cfg, None, &mut |_| {});
    println!("{}", r.summary());
    assert_eq!(r.crash_count(), 0, "{}", r.summary());
    assert!(r.refused > 0, "{}", r.summary());
}

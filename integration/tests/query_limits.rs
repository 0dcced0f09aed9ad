//! Queries cannot crash, stall or starve a node (issue 11): a real `queryd demo` gets the
//! hostile and careless queries that used to abort it or hold it for minutes, and after
//! each one still answers `SELECT 1` from another client within a second, keeps sealing,
//! and stays within bounded memory.
//!
//! The tests share the machine's two cores, so they run one at a time (`SERIAL`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use query_integration::bench::proc_usage;
use query_integration::{post_from, Node, Workspace};
use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

/// A nested-loop join that runs for many seconds on the demo fleet.
const HEAVY: &str = "SELECT COUNT(*) FROM processes a, processes b, processes c \
                     WHERE a.rss * b.rss > c.rss * 7919 + a.pid";

fn demo(ws: &Workspace, extra: &str) -> Node {
    let node = ws.start(
        "demo",
        &format!(
            "[generation]\ninterval = \"1s\"\noffset = \"100ms\"\n\n[simulate]\nmachines = 200\nclusters = 4\n\n{extra}"
        ),
    );
    node.eventually(Duration::from_secs(60), "all 200 machines", || {
        (node.sql("SELECT COUNT(*) FROM sys").1["rows"] == serde_json::json!([[201]])).then_some(())
    });
    node
}

/// (status, JSON body, time taken) of `sql` sent from the loopback address `from`.
fn sql_from(node: &Node, from: &str, sql: &str) -> (u16, Value, Duration) {
    let started = Instant::now();
    let (status, text) = post_from(from, &node.base, "/sql", sql);
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body, started.elapsed())
}

/// Another client's `SELECT 1` answers within a second; returns the generation it read.
fn light_answers(node: &Node, after: &str) -> u64 {
    let (status, body, took) = sql_from(node, "127.0.0.2", "SELECT 1");
    assert_eq!(status, 200, "SELECT 1 after {after}: {body}");
    assert!(
        took < Duration::from_secs(1),
        "SELECT 1 after {after} took {took:?}"
    );
    body["generation"]["id"].as_u64().expect("generation id")
}

/// The start of an answer, for assertion messages.
fn short(body: &Value) -> String {
    body.to_string().chars().take(300).collect()
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[test]
fn hostile_queries_get_clear_errors_and_the_node_keeps_answering() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let ws = Workspace::new();
    let mut node = demo(
        &ws,
        "[http]\nquery_timeout = \"5s\"\nmax_result_bytes = 8388608\n",
    );
    let chain = |term: &str, op: &str, n: usize| vec![term; n].join(op);
    let mut megabyte = String::from("SELECT COUNT(*) FROM sys WHERE ");
    while megabyte.len() < (1 << 20) - 64 {
        megabyte.push_str("memtotal = 1 OR ");
    }
    megabyte.push_str("memtotal = 2");
    let ips = chain("machine_ip = '10.0.0.1'", " OR ", 2_000);
    let in_list = format!(
        "SELECT COUNT(*) FROM sys WHERE machine_ip IN ({})",
        chain("'10.0.0.1'", ", ", 5_000)
    );
    let cases: Vec<(String, u16, &str)> = vec![
        (
            format!("SELECT {}", chain("1", "+", 5_000)),
            400,
            "too_complex",
        ),
        (
            format!("SELECT {}", chain("'a'", " || ", 4_000)),
            400,
            "too_complex",
        ),
        (megabyte, 400, "too_complex"),
        (format!("SELECT COUNT(*) FROM sys WHERE {ips}"), 200, ""),
        (in_list, 200, ""),
        (
            "SELECT repeat('x', 1000000000)".into(),
            400,
            "execution_error",
        ),
        (
            "SELECT lpad('x', 2000000000, 'y')".into(),
            400,
            "execution_error",
        ),
        (
            "SELECT repeat('x', 200000000)".into(),
            400,
            "execution_error",
        ),
        (
            "SELECT a.*, b.* FROM processes a, processes b".into(),
            400,
            "answer_too_large",
        ),
    ];
    for (sql, status, expected) in &cases {
        let shown: String = sql.chars().take(60).collect();
        let (got, body, took) = sql_from(&node, "127.0.0.1", sql);
        let said = short(&body);
        assert_eq!(got, *status, "{shown}...: {said}");
        if got != 200 {
            assert_eq!(code(&body), *expected, "{shown}...: {said}");
            let message = body["error"]["message"].as_str().unwrap_or("");
            assert!(
                message.contains("max_") || message.contains("levels deep"),
                "the message names the limit: {message}"
            );
        }
        assert!(took < Duration::from_secs(10), "{shown}... took {took:?}");
        light_answers(&node, &shown);
        assert!(node.alive(), "{shown}... killed the node");
    }
    let rss = proc_usage(node.pid()).peak_mib;
    assert!(rss < 1536.0, "peak RSS {rss:.0} MiB: memory is not bounded");
}

#[test]
fn heavy_queries_cannot_starve_light_ones_or_sealing() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let ws = Workspace::new();
    let timeout = Duration::from_secs(2);
    let node = demo(&ws, "[http]\nquery_timeout = \"2s\"\n");
    let base = node.base.clone();
    let heavy: Vec<_> = (0..64)
        .map(|_| {
            let base = base.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let (status, text) = post_from("127.0.0.1", &base, "/sql", HEAVY);
                (status, text, started.elapsed())
            })
        })
        .collect();
    // While they run, another client's light queries answer, and generations keep coming.
    std::thread::sleep(Duration::from_millis(300));
    let first = light_answers(&node, "64 heavy queries started");
    let mut last = first;
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        last = light_answers(&node, "64 heavy queries running");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        last >= first + 3,
        "sealing went on: generations {first} to {last} in 5 s at a 1 s interval"
    );
    let mut busy = 0;
    for h in heavy {
        let (status, text, took) = h.join().expect("client thread");
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_eq!(status, 503, "{text}");
        match code(&body) {
            "busy" => busy += 1,
            // It may wait twice (a place to parse, one to run), then runs to its deadline.
            "timeout" => assert!(took < timeout + Duration::from_secs(2 * 5 + 3), "{took:?}"),
            other => panic!("unexpected {other}: {text}"),
        }
    }
    assert!(
        busy >= 40,
        "one client's flood is mostly refused: {busy} busy"
    );
    let health = node.get_json("/health");
    assert!(health["queries"]["running"].is_number(), "{health}");
}

#[test]
fn a_query_that_keeps_hitting_limits_is_quarantined_until_lifted() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let ws = Workspace::new();
    let node = demo(
        &ws,
        "[http]\nquery_timeout = \"1s\"\n\n[sql.quarantine]\nstrikes = 3\nwindow = \"1m\"\ncool_down = \"10m\"\n",
    );
    for i in 0..3 {
        let (status, body, took) = sql_from(&node, "127.0.0.1", HEAVY);
        assert_eq!((status, code(&body)), (503, "timeout"), "run {i}: {body}");
        // On time: the deadline is not kept by the pool the query keeps busy.
        assert!(
            took < Duration::from_secs(3),
            "the 1 s timeout came after {took:?}"
        );
    }
    // Differently spaced, same query: refused at once.
    let respaced = HEAVY.replace(' ', "  ");
    let (status, body, took) = sql_from(&node, "127.0.0.1", &respaced);
    assert_eq!((status, code(&body)), (429, "quarantined"), "{body}");
    assert!(
        took < Duration::from_secs(1),
        "refused without running: {took:?}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("time limit 3 times")),
        "{body}"
    );
    light_answers(&node, "a quarantine");

    let (status, body, _) = sql_from(
        &node,
        "127.0.0.2",
        "SELECT limit_hit, count, client, until IS NOT NULL AS refused FROM query_quarantine",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["rows"],
        serde_json::json!([["time", 3, "127.0.0.1", true]]),
        "{body}"
    );
    let (_, metrics) = node.get("/metrics");
    assert!(metrics.contains("query_queries_quarantined 1"), "{metrics}");

    let (status, text) = node.post_text("/admin/quarantine/lift", "text/plain", HEAVY);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"lifted\":1"), "{text}");
    let (status, body, _) = sql_from(&node, "127.0.0.1", HEAVY);
    assert_eq!(
        (status, code(&body)),
        (503, "timeout"),
        "runs again: {body}"
    );
}

#[test]
fn health_says_degraded_while_every_query_place_is_taken() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let ws = Workspace::new();
    let node = demo(
        &ws,
        // Queries stay in their class for the test (none moves to the heavy pool, which
        // would free the new clients' place for the SELECT 1 below), and new clients have
        // one place (the default is one a query thread).
        "[http]\nquery_timeout = \"3s\"\n\n[sql]\nmax_concurrent_queries = 1\nmax_queued_queries = 1\nmax_heavy_queries = 1\nheavy_query_after = \"10s\"\n",
    );
    assert_eq!(node.get_json("/health")["status"], "ok");
    let heavy: Vec<_> = ["127.0.0.3", "127.0.0.4"]
        .into_iter()
        .map(|from| {
            let base = node.base.clone();
            std::thread::spawn(move || post_from(from, &base, "/sql", HEAVY).0)
        })
        .collect();
    let health = node.eventually(Duration::from_secs(3), "degraded", || {
        let h = node.get_json("/health");
        (h["status"] == "degraded").then_some(h)
    });
    assert!(
        health["degraded"].to_string().contains("503 busy"),
        "{health}"
    );
    let (status, body, _) = sql_from(&node, "127.0.0.2", "SELECT 1");
    assert_eq!((status, code(&body)), (503, "busy"), "{}", short(&body));
    for h in heavy {
        assert_eq!(h.join().expect("client thread"), 503);
    }
    node.eventually(Duration::from_secs(5), "ok again", || {
        (node.get_json("/health")["status"] == "ok").then_some(())
    });
}

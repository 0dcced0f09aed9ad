//! Query History and reports end to end, in real `queryd demo` processes (a simulated fleet
//! behind two in-process proxies): tables kept at their cadence, the same rows in history as
//! in the live generation, time predicates, live joined with history, compaction keeping
//! answers identical, retention deleting files, reports kept with a broken one reported;
//! the node killed (SIGKILL) again and again while writing serves every kept generation
//! whole and once, and sets damaged files aside at start; a full disk pauses history (health,
//! metrics, an alert) while generations and queries go on.

use std::path::Path;
use std::time::{Duration, Instant};

use query_integration::{repo, Node, Workspace};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(90);

fn history_toml() -> &'static str {
    "[[table]]\nname = \"sys\"\nevery = 1\nretention = \"1h\"\n\n\
     [[table]]\nname = \"processes\"\nevery = 2\nretention = \"6s\"\n"
}

fn reports_toml() -> &'static str {
    r#"[[report]]
name = "fleet_memory"
sql = "SELECT SUM(memtotal - memavailable) / 1048576.0 AS used_gib FROM sys"
every = "1s"
retention = "1h"
values = ["used_gib"]

[[report]]
name = "broken"
sql = "SELECT no_such_column FROM sys"
every = "1s"
retention = "1h"
values = ["no_such_column"]

[[report]]
name = "clash"
sql = "SELECT now() AS generation_time, 1 AS x"
every = "1s"
retention = "1h"
values = ["x"]
"#
}

/// The config sections of a demo node keeping history in `history/` of its workspace.
fn config(history_extra: &str, more: &str) -> String {
    format!(
        "[generation]\ninterval = \"1s\"\noffset = \"100ms\"\n\n\
         [simulate]\nmachines = 40\nclusters = 2\nprocesses_per_machine = 3\n\n\
         [history]\ndir = \"history\"\ntables = \"history.toml\"\nreports = \"reports.toml\"\n{history_extra}\n{more}"
    )
}

fn start(ws: &Workspace, history_extra: &str, more: &str) -> Node {
    std::fs::write(ws.path("history.toml"), history_toml()).expect("history.toml");
    std::fs::write(ws.path("reports.toml"), reports_toml()).expect("reports.toml");
    ws.start("demo", &config(history_extra, more))
}

fn rows(node: &Node, sql: &str) -> Vec<Value> {
    let (status, body) = node.sql(sql);
    assert_eq!(status, 200, "{sql}: {body}");
    body["rows"].as_array().expect("rows").clone()
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

fn metric(node: &Node, name: &str) -> f64 {
    let (_, text) = node.get("/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn parquet_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn history_is_kept_queried_joined_compacted_and_expired() {
    let ws = Workspace::new();
    let node = start(
        &ws,
        "compact_window = \"4s\"\nmaintain_every = \"500ms\"\ndelete_grace = \"500ms\"\n",
        "",
    );

    // The live generation's rows, and the same generation in history.
    let live_sql = "SELECT machine_ip, load1, memfree FROM sys ORDER BY machine_ip";
    let (live, generation) = node.eventually(LIMIT, "sys published at the top", || {
        let (status, body) = node.sql(live_sql);
        let r = body["rows"].as_array().cloned().unwrap_or_default();
        (status == 200 && r.len() > 40).then(|| (r, int(&body["generation"]["id"])))
    });
    let kept = node.eventually(LIMIT, "that generation kept", || {
        let r = rows(
            &node,
            &format!("SELECT machine_ip, load1, memfree FROM history.sys WHERE generation = {generation} ORDER BY machine_ip"),
        );
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(
        kept, live,
        "history holds exactly the live rows of generation {generation}"
    );

    // A few generations kept: sys every generation, processes every second one.
    let times = node.eventually(LIMIT, "six generations of sys", || {
        let t = rows(
            &node,
            "SELECT DISTINCT generation_time FROM history.sys ORDER BY 1",
        );
        (t.len() >= 6).then_some(t)
    });
    let machines = live.len() as i64;
    for r in rows(
        &node,
        "SELECT generation, count(*), count(DISTINCT machine_ip) FROM history.sys GROUP BY 1",
    ) {
        let (n, distinct) = (int(&r[1]), int(&r[2]));
        assert!(
            n == distinct && n <= machines,
            "generation {} kept once",
            r[0]
        );
    }
    let first = times[0][0].as_str().expect("time").to_string();
    let last = times[times.len() - 1][0]
        .as_str()
        .expect("time")
        .to_string();
    let span = rows(
        &node,
        &format!("SELECT count(DISTINCT s.generation_time), count(DISTINCT p.generation_time) FROM history.sys s LEFT JOIN history.processes p ON p.generation_time = s.generation_time WHERE s.generation_time BETWEEN '{first}' AND '{last}'"),
    );
    let (s, p) = (int(&span[0][0]), int(&span[0][1]));
    assert!(
        s >= 6 && p >= 1 && p <= s / 2 + 1,
        "processes every 2nd generation: {p} of {s}"
    );

    // Time predicates: only the generations asked for.
    let since = times[2][0].as_str().expect("time");
    let after = rows(
        &node,
        &format!("SELECT count(DISTINCT generation_time), min(generation_time) FROM history.sys WHERE generation_time >= '{since}' AND generation_time <= '{last}'"),
    );
    assert_eq!(int(&after[0][0]), times.len() as i64 - 2);
    assert_eq!(after[0][1].as_str(), Some(since));

    // Live joined with history: today's rows against a kept generation.
    let joined = rows(
        &node,
        &format!("SELECT count(*), count(h.load1) FROM sys s JOIN history.sys h ON s.machine_ip = h.machine_ip WHERE h.generation_time = '{first}'"),
    );
    assert_eq!(int(&joined[0][0]), machines);

    // Compaction (4 s windows) merges files and keeps answers identical.
    let before_sql = format!(
        "SELECT generation_time, machine_ip, load1, memfree FROM history.sys WHERE generation_time <= '{last}' ORDER BY 1, 2"
    );
    let before = rows(&node, &before_sql);
    node.eventually(LIMIT, "a compaction", || {
        (metric(&node, "query_history_compactions_total") >= 2.0).then_some(())
    });
    let files = rows(
        &node,
        "SELECT files FROM query_history WHERE name = 'history.sys'",
    );
    let kept_generations = rows(
        &node,
        "SELECT count(DISTINCT generation_time) FROM history.sys",
    );
    assert!(
        int(&files[0][0]) < int(&kept_generations[0][0]),
        "fewer files than generations after compaction"
    );
    assert_eq!(
        rows(&node, &before_sql),
        before,
        "compaction changed an answer"
    );

    // Retention (6 s for processes): the oldest files go, from the index and the disk.
    let first_p = rows(&node, "SELECT min(generation_time) FROM history.processes")[0][0].clone();
    node.eventually(LIMIT, "processes past retention deleted", || {
        let now = rows(&node, "SELECT min(generation_time) FROM history.processes")[0][0].clone();
        (now != first_p && !now.is_null()).then_some(())
    });
    let oldest = rows(
        &node,
        "SELECT count(*) FROM history.processes WHERE generation_time < now() - INTERVAL '20 seconds'",
    );
    assert_eq!(
        int(&oldest[0][0]),
        0,
        "nothing older than retention + a window is served"
    );
    node.eventually(LIMIT, "expired files deleted from disk", || {
        let on_disk = parquet_files(&ws.path("history/history.processes"));
        let indexed = int(&rows(
            &node,
            "SELECT files FROM query_history WHERE name = 'history.processes'",
        )[0][0]);
        (on_disk as i64 == indexed).then_some(())
    });

    // Reports: kept every period; the broken one reported, the good one unaffected.
    node.eventually(LIMIT, "three runs of the report kept", || {
        let r = rows(
            &node,
            "SELECT count(*), count(DISTINCT generation_time) FROM report.fleet_memory",
        );
        (int(&r[0][1]) >= 3 && r[0][0] == r[0][1]).then_some(())
    });
    let reports = node.get_json("/reports");
    let by_name = |n: &str| {
        reports["reports"]
            .as_array()
            .expect("reports")
            .iter()
            .find(|r| r["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("report {n} listed: {reports}"))
    };
    let broken = by_name("broken");
    assert!(
        broken["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("no_such_column"),
        "{broken}"
    );
    assert!(int(&broken["failures"]) >= 1);
    let good = by_name("fleet_memory");
    assert!(
        good["last_error"].is_null() && int(&good["runs"]) >= 3,
        "{good}"
    );
    let (status, body) = node.sql("SELECT * FROM report.broken");
    assert_eq!(status, 400, "a report that never ran has no table: {body}");
    let errors = rows(
        &node,
        "SELECT name, error FROM query_history WHERE kind = 'report' AND error IS NOT NULL ORDER BY name",
    );
    assert_eq!(errors.len(), 2, "{errors:?}");
    // Rows that cannot be kept are that report's problem: history goes on.
    assert_eq!(errors[1][0], "report.clash");
    assert!(
        errors[1][1]
            .as_str()
            .unwrap_or("")
            .contains("generation_time"),
        "{errors:?}"
    );
    assert_eq!(node.get_json("/health")["history"]["state"], "writing");

    // A broken edit of either file keeps the last good definitions, and says why.
    std::fs::write(
        ws.path("history.toml"),
        "[[table]]\nname = \"sys\"\nevery = 0\nretention = \"1h\"\n",
    )
    .expect("edit");
    std::fs::write(ws.path("reports.toml"), "[[report]\nname = ").expect("edit");
    let health = node.eventually(LIMIT, "the broken edits reported", || {
        let h = node.get_json("/health");
        (h["history"]["definitions_error"].is_string() && h["history"]["reports_error"].is_string())
            .then_some(h)
    });
    assert!(
        health["history"]["definitions_error"]
            .to_string()
            .contains("every"),
        "{health}"
    );
    let kept_before = int(&rows(
        &node,
        "SELECT count(DISTINCT generation_time) FROM history.sys",
    )[0][0]);
    let runs_before = int(&rows(&node, "SELECT count(*) FROM report.fleet_memory")[0][0]);
    node.eventually(LIMIT, "sys and the report still kept", || {
        let kept = int(&rows(
            &node,
            "SELECT count(DISTINCT generation_time) FROM history.sys",
        )[0][0]);
        let runs = int(&rows(&node, "SELECT count(*) FROM report.fleet_memory")[0][0]);
        (kept > kept_before + 1 && runs > runs_before + 1).then_some(())
    });

    // GET /tables lists history with its range and size.
    let tables = node.get_json("/tables");
    let sys = tables["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .find(|t| t["name"] == "history.sys")
        .cloned()
        .expect("history.sys listed");
    assert_eq!(sys["origin"], "history");
    assert!(
        int(&sys["bytes"]) > 0 && sys["from"].is_string() && sys["to"].is_string(),
        "{sys}"
    );
    assert!(sys["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .any(|c| c["name"] == "generation_time"));
}

#[test]
fn a_killed_node_serves_every_kept_generation_whole_once_and_sets_damaged_files_aside() {
    let ws = Workspace::new();
    // Killed at different moments of its write cycle (generations every second).
    for (i, run_for) in [1300u64, 2100, 2700, 1900].iter().enumerate() {
        let node = start(
            &ws,
            "compact_window = \"3s\"\nmaintain_every = \"300ms\"\n",
            "",
        );
        if i == 0 {
            node.eventually(LIMIT, "a first kept generation", || {
                let (s, b) = node.sql("SELECT count(*) FROM history.sys");
                (s == 200 && b["rows"][0][0].as_i64() > Some(0)).then_some(())
            });
        }
        std::thread::sleep(Duration::from_millis(*run_for));
        drop(node); // SIGKILL
    }
    // What a crash can leave: a half-written temporary file, and a file damaged on disk.
    let folder = ws.path("history/history.sys");
    std::fs::write(
        folder.join(".0000000000001-0000000000001.parquet.tmp"),
        b"PAR1 half",
    )
    .expect("tmp");
    std::fs::write(
        folder.join("0000000000002-0000000000002.parquet"),
        b"PAR1 not a parquet file",
    )
    .expect("damaged");

    let node = start(&ws, "", "");
    let health = node.get_json("/health");
    let damaged = health["history"]["damaged"]
        .as_array()
        .expect("damaged listed")
        .clone();
    assert_eq!(damaged.len(), 1, "{health}");
    assert!(
        damaged[0]["file"]
            .as_str()
            .unwrap_or("")
            .contains("damaged"),
        "{damaged:?}"
    );
    assert!(ws
        .path("history/damaged/history.sys-0000000000002-0000000000002.parquet")
        .exists());
    assert!(!folder
        .join(".0000000000001-0000000000001.parquet.tmp")
        .exists());
    assert_eq!(metric(&node, "query_history_damaged_files"), 1.0);

    // 40 simulated machines and this one. A generation sealed as the node starts may hold
    // fewer (a proxy not merged yet): what it held is what is kept.
    let machines = 41;
    let per_generation = rows(
        &node,
        "SELECT generation_time, count(*), count(DISTINCT machine_ip) FROM history.sys GROUP BY 1 ORDER BY 1",
    );
    assert!(
        per_generation.len() >= 4,
        "generations of several runs kept: {per_generation:?}"
    );
    for r in &per_generation {
        let (n, distinct) = (int(&r[1]), int(&r[2]));
        assert!(
            n == distinct && n <= machines,
            "generation {} served once: {n} rows, {distinct} machines",
            r[0]
        );
    }
    let whole = per_generation
        .iter()
        .filter(|r| int(&r[1]) == machines)
        .count();
    assert!(
        whole * 2 >= per_generation.len(),
        "most generations hold the whole fleet: {per_generation:?}"
    );
    assert!(
        per_generation[0][0]
            .as_str()
            .unwrap_or("")
            .starts_with("20"),
        "the damaged file is not served"
    );
}

#[test]
fn a_full_disk_pauses_history_and_alerts_while_generations_and_queries_go_on() {
    let ws = Workspace::new();
    std::fs::copy(repo().join("ops/alerts.toml"), ws.path("alerts.toml")).expect("alerts");
    // The cap is hit by the first file.
    let node = start(
        &ws,
        "max_disk_bytes = 1\n",
        "[alerts]\ndefinitions = \"alerts.toml\"\nstate = \"alerts.db\"\n",
    );
    let health = node.eventually(LIMIT, "history paused", || {
        let h = node.get_json("/health");
        (h["history"]["state"] == "paused").then_some(h)
    });
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["degraded"].to_string().contains("max_disk_bytes"),
        "{health}"
    );
    assert_eq!(metric(&node, "query_history_paused"), 1.0);
    let first = int(&health["generation"]["id"]);
    node.eventually(LIMIT, "the history_paused alert firing", || {
        let r = rows(
            &node,
            "SELECT state FROM query_alerts WHERE alert = 'history_paused'",
        );
        (r.first().and_then(|r| r[0].as_str()) == Some("firing")).then_some(())
    });
    let skipped = metric(&node, "query_history_skipped_total");
    assert!(skipped >= 1.0);
    // Generations and live queries go on.
    node.eventually(LIMIT, "newer generations", || {
        (int(&node.get_json("/health")["generation"]["id"]) > first + 1).then_some(())
    });
    assert_eq!(node.sql("SELECT count(*) FROM sys").0, 200);
    let kept = rows(
        &node,
        "SELECT count(DISTINCT generation_time) FROM history.sys",
    );
    assert!(
        int(&kept[0][0]) <= 1,
        "nothing written past the cap: {kept:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        metric(&node, "query_history_skipped_total") > skipped,
        "later generations skipped, not queued"
    );
}

//! A real `queryd` process (TLA/SQL with a simulated fleet) answering over HTTP on
//! loopback: formats, the papers' queries, read-only refusals, limits, static-table and
//! view reloads, and the per-generation view cache seen through /metrics.

use std::time::Duration;

use query_integration::{Node, Workspace};
use serde_json::Value;

const CONTINENTS: &str = "SELECT c.continent_name, SUM(l.hits) hits
FROM load_info l, region_data r, continent_data c
WHERE l.georegion = r.id AND r.continent = c.continent
GROUP BY c.continent_name ORDER BY hits DESC";

/// A demo node of 200 simulated machines, returned once its generation holds every machine
/// (in the first rounds after start, links still connecting, a generation can hold fewer:
/// a child not yet heard from is not waited for).
fn demo(ws: &Workspace, extra: &str) -> Node {
    let node = ws.start(
        "demo",
        &format!(
            "[generation]
interval = \"2s\"
offset = \"100ms\"

[simulate]
machines = 200
clusters = 4

{extra}"
        ),
    );
    node.eventually(Duration::from_secs(60), "all 200 machines", || {
        (node.sql("SELECT COUNT(*) FROM sys").1["rows"] == serde_json::json!([[201]])).then_some(())
    });
    node
}

#[test]
fn answers_sql_in_every_body_form_and_format() {
    let ws = Workspace::new();
    let node = demo(&ws, "");

    // text/plain, the form field of a browser, JSON, and what `curl -d` sends.
    for (ct, body) in [
        ("text/plain", "SELECT COUNT(*) AS n FROM sys".to_string()),
        (
            "application/x-www-form-urlencoded",
            "sql=SELECT+COUNT%28*%29+AS+n+FROM+sys".to_string(),
        ),
        (
            "application/json",
            r#"{"sql": "SELECT COUNT(*) AS n FROM sys"}"#.to_string(),
        ),
        (
            "application/x-www-form-urlencoded",
            "SELECT COUNT(*) AS n FROM sys".to_string(),
        ),
    ] {
        let (status, answer) = node.post("/sql", ct, &body);
        assert_eq!(status, 200, "{ct}: {answer}");
        // 200 simulated machines plus the node itself.
        assert_eq!(answer["rows"][0][0], 201, "{ct}: {answer}");
        assert_eq!(answer["columns"][0]["name"], "n");
        assert_eq!(answer["columns"][0]["type"], "int64");
        assert!(answer["generation"]["id"]
            .as_u64()
            .is_some_and(|id| id >= 1));
        assert!(answer["generation"]["age_ms"].is_u64());
        assert!(answer["elapsed_ms"].is_f64());
        let sys = &answer["tables"][0];
        assert_eq!(
            (sys["name"].as_str(), sys["origin"].as_str()),
            (Some("sys"), Some("published"))
        );
        assert_eq!(sys["sources"], 201);
        let (oldest, newest) = (
            sys["oldest_source_age_ms"].as_u64(),
            sys["newest_source_age_ms"].as_u64(),
        );
        assert!(
            matches!((oldest, newest), (Some(o), Some(n)) if n <= o),
            "the newest source is no older than the oldest: {sys}"
        );
    }

    let (status, csv) = node.post_text(
        "/sql?format=csv",
        "text/plain",
        "SELECT continent, continent_name FROM continent_data ORDER BY continent",
    );
    assert_eq!(status, 200);
    assert_eq!(csv.lines().next(), Some("continent,continent_name"));
    assert_eq!(csv.lines().nth(1), Some("AF,Africa"));
    assert_eq!(csv.lines().count(), 8);

    let (status, nd) = node.post_text(
        "/sql?format=ndjson",
        "text/plain",
        "SELECT continent FROM continent_data ORDER BY continent LIMIT 2",
    );
    assert_eq!(status, 200);
    assert_eq!(nd, "{\"continent\":\"AF\"}\n{\"continent\":\"AN\"}\n");

    // Output names may repeat (issue 15): the answer keeps the names written.
    let (status, answer) = node.post("/sql", "text/plain", "SELECT 1 AS n, 2 AS n");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["columns"][0]["name"], "n");
    assert_eq!(answer["columns"][1]["name"], "n");
    assert_eq!(answer["rows"][0], serde_json::json!([1, 2]));
    let (status, csv) = node.post_text("/sql?format=csv", "text/plain", "SELECT 1 AS n, 2 AS n");
    assert_eq!(status, 200);
    assert_eq!(csv.lines().next(), Some("n,n"));

    let (status, err) = node.post("/sql?format=xml", "text/plain", "SELECT 1");
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
}

#[test]
fn papers_queries_run_on_the_shipped_tables() {
    let ws = Workspace::new();
    let node = demo(&ws, "");
    let (status, answer) = node.sql(CONTINENTS);
    assert_eq!(status, 200, "{answer}");
    let rows = answer["rows"].as_array().expect("rows");
    assert!(rows.len() >= 5, "most continents have traffic: {answer}");
    let hits: Vec<i64> = rows.iter().map(|r| r[1].as_i64().expect("int")).collect();
    assert!(
        hits.windows(2).all(|w| w[0] >= w[1]),
        "ORDER BY hits DESC: {hits:?}"
    );
    let tables: Vec<&str> = answer["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(tables, ["continent_data", "load_info", "region_data"]);

    for sql in [
        "SELECT sys.machine_ip ip, procname, rss, pid FROM sys, processes
         WHERE sys.machine_ip = processes.machine_ip AND (rss*100)/sys.memtotal > 75
           AND sys.machine_ip IN (SELECT machine_ip FROM machinerole WHERE role='dns')",
        "SELECT machine_ip ip_key, mountp mnt_key, bavail*bsize free_space, (100*bavail)/blocks pct
         FROM filesystem a WHERE blocks > 0 AND (100*bavail)/blocks < 3",
    ] {
        let (status, answer) = node.sql(sql);
        assert_eq!(status, 200, "{sql}: {answer}");
    }
    // The node's own machine is in sys, from /proc.
    let (_, own) = node.sql("SELECT hostname, memtotal FROM sys WHERE machine_ip = '127.0.0.1'");
    assert_eq!(own["row_count"], 1, "{own}");
    assert!(own["rows"][0][1].as_i64().is_some_and(|m| m > 0));
}

#[test]
fn refuses_writes_and_bad_requests_with_json_errors() {
    let ws = Workspace::new();
    let node = demo(&ws, "[http]\nmax_body_bytes = 4096\nmax_result_rows = 5\n");
    for (sql, kind) in [
        ("CREATE TABLE t (a INT)", "CREATE TABLE"),
        ("DROP TABLE sys", "DROP TABLE"),
        ("INSERT INTO sys (machine_ip) VALUES ('x')", "INSERT"),
        ("CREATE VIEW v AS SELECT 1", "CREATE VIEW"),
    ] {
        let (status, err) = node.sql(sql);
        assert_eq!(status, 400, "{sql}");
        assert_eq!(err["error"]["code"], "not_read_only");
        let msg = err["error"]["message"].as_str().expect("message");
        assert!(msg.starts_with(kind), "{msg}");
    }
    let (status, err) = node.sql("SELECT * FROM nosuch");
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("sql_error"))
    );
    let (status, err) = node.sql("SELEC 1");
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("sql_error"))
    );
    let (status, err) = node.sql("");
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );

    // Body limit: a clear 413, and the node carries on.
    let big = format!("SELECT 1 -- {}", "x".repeat(10_000));
    let (status, err) = node.sql(&big);
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );

    // Row limit: cut, and said so.
    let (status, answer) = node.sql("SELECT * FROM processes");
    assert_eq!(status, 200);
    assert_eq!(answer["row_count"], 5);
    assert_eq!(answer["truncated"], true);

    let (status, body) = node.get("/nosuch");
    assert_eq!(status, 404);
    assert!(body.contains("\"not_found\""), "{body}");
    let (status, body) = node.get("/sql");
    assert_eq!(status, 405);
    assert!(body.contains("\"method_not_allowed\""), "{body}");
    let (status, _) = node.sql("SELECT 1");
    assert_eq!(status, 200, "still serving");
}

#[test]
fn long_queries_time_out_and_are_cancelled() {
    let ws = Workspace::new();
    let mut node = demo(&ws, "[http]\nquery_timeout = \"1s\"\n");
    let started = std::time::Instant::now();
    let (status, err) = node.sql("SELECT COUNT(*) FROM processes a, processes b, processes c WHERE a.rss * b.rss > c.rss * 7919 + a.pid");
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (503, Some("timeout")),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    let (status, _) = node.sql("SELECT 1");
    assert_eq!(status, 200);
    assert!(node.alive());
}

#[test]
fn broken_static_table_keeps_the_last_good_copy() {
    let ws = Workspace::new();
    let node = demo(&ws, "");
    let count = |node: &Node| node.sql("SELECT COUNT(*) FROM region_data").1["rows"][0][0].as_i64();
    let before = count(&node).expect("region_data rows");

    let file = ws.path("static-tables/region_data.toml");
    let good = std::fs::read_to_string(&file).expect("read");
    std::fs::write(
        &file,
        good.replace("[1, \"us-east\"", "[\"one\", \"us-east\""),
    )
    .expect("write");
    let tables = node.eventually(Duration::from_secs(15), "the error in /tables", || {
        let t = node.get_json("/tables");
        t["errors"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
            .then_some(t)
    });
    let msg = tables["errors"][0]["message"].as_str().expect("message");
    assert!(msg.contains("row 0") && msg.contains("'id'"), "{msg}");
    assert_eq!(count(&node), Some(before), "old copy kept, whole");
    assert_eq!(node.sql(CONTINENTS).0, 200);

    // Truncated mid-row: still the old copy.
    std::fs::write(&file, &good[..good.len() / 2]).expect("write");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(count(&node), Some(before));

    // A fixed file with one more region is picked up and the error clears.
    std::fs::write(
        &file,
        good.replace(
            "rows = [",
            "rows = [\n  [99, \"atlantis\", \"EU\", \"XA\"],",
        ),
    )
    .expect("write");
    node.eventually(Duration::from_secs(15), "the new copy", || {
        (count(&node) == Some(before + 1)).then_some(())
    });
    let t = node.get_json("/tables");
    assert_eq!(t["errors"].as_array().map(|e| e.len()), Some(0), "{t}");
}

/// A static table whose rows are a CSV file beside its TOML schema: listed in the index
/// live, NULLs served, an edit to the CSV alone reloaded, a broken CSV refused whole with
/// its last good copy kept.
#[test]
fn a_static_table_from_a_csv_file_holds_nulls_and_reloads() {
    let ws = Workspace::new();
    let node = demo(&ws, "");
    let dir = ws.path("static-tables");
    std::fs::write(
        dir.join("racks.toml"),
        "name = \"racks\"\ndescription = \"Rack of each machine\"\nkey = [\"machine_ip\"]\n\
         columns = [\n  { name = \"machine_ip\", type = \"string\" },\n  { name = \"rack\", type = \"int64\", nullable = true },\n]\n\
         data = \"racks.csv\"\n",
    )
    .expect("write");
    let csv = dir.join("racks.csv");
    std::fs::write(&csv, "machine_ip,rack\n10.0.0.1,7\n\"10.0.0.2\",\n").expect("write");
    let index = dir.join("index.toml");
    let listed = std::fs::read_to_string(&index).expect("index");
    std::fs::write(
        &index,
        listed.replace("tables = [", "tables = [\n  \"racks.toml\","),
    )
    .expect("write");

    let q = "SELECT machine_ip, rack FROM racks ORDER BY machine_ip";
    node.eventually(Duration::from_secs(15), "the CSV table", || {
        let (status, body) = node.sql(q);
        (status == 200).then_some(())?;
        (body["rows"] == serde_json::json!([["10.0.0.1", 7], ["10.0.0.2", null]])).then_some(())
    });

    // A bad field: refused whole, named by file, line and column; the last copy stays.
    std::fs::write(
        &csv,
        "machine_ip,rack\n10.0.0.1,7\n10.0.0.2,eight\n10.0.0.3,9\n",
    )
    .expect("write");
    let tables = node.eventually(Duration::from_secs(15), "the error in /tables", || {
        let t = node.get_json("/tables");
        t["errors"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
            .then_some(t)
    });
    let msg = tables["errors"][0]["message"].as_str().expect("message");
    assert!(
        msg.contains("racks.csv") && msg.contains("line 3") && msg.contains("'rack'"),
        "{msg}"
    );
    assert_eq!(
        node.sql(q).1["rows"].as_array().map(Vec::len),
        Some(2),
        "last good copy"
    );

    // Fixed: the new rows, the error gone.
    std::fs::write(&csv, "machine_ip,rack\n10.0.0.1,7\n10.0.0.2,8\n10.0.0.3,\n").expect("write");
    node.eventually(Duration::from_secs(15), "the fixed CSV", || {
        let t = node.get_json("/tables");
        (node.sql(q).1["rows"].as_array().map(Vec::len) == Some(3)
            && t["errors"].as_array().is_some_and(|e| e.is_empty()))
        .then_some(())
    });
}

#[test]
fn views_are_computed_once_per_generation_and_reload_without_restart() {
    let ws = Workspace::new();
    // A long interval so that a burst of queries falls in one generation.
    let node = ws.start("demo", "[generation]\ninterval = \"30s\"\noffset = \"1s\"\n\n[simulate]\nmachines = 200\nclusters = 4\n");
    let base = node.base.clone();

    let (generation, metrics) = node.eventually(
        Duration::from_secs(90),
        "a burst within one generation",
        || {
            let handles: Vec<_> = (0..12)
                .map(|_| {
                    let url = format!("{base}/sql");
                    std::thread::spawn(move || {
                        let r = ureq::post(&url)
                            .send_string("SELECT COUNT(*) FROM busy_machines")
                            .ok()?;
                        let v: Value = serde_json::from_str(&r.into_string().ok()?).ok()?;
                        v["generation"]["id"].as_u64()
                    })
                })
                .collect();
            let ids: Vec<Option<u64>> = handles
                .into_iter()
                .map(|h| h.join().ok().flatten())
                .collect();
            let first = ids[0]?;
            if !ids.iter().all(|i| *i == Some(first)) {
                return None;
            }
            let (_, metrics) = node.get("/metrics");
            metrics
                .contains(&format!("query_generation_id {first}"))
                .then_some((first, metrics))
        },
    );
    // busy_machines reads machine_memory: each computed once for 12 queries.
    for view in ["busy_machines", "machine_memory"] {
        let line =
            format!("query_view_computations{{view=\"{view}\",generation=\"{generation}\"}} 1");
        assert!(metrics.contains(&line), "missing `{line}` in\n{metrics}");
    }
    let unused =
        format!("query_view_computations{{view=\"low_disk\",generation=\"{generation}\"}} 0");
    assert!(metrics.contains(&unused), "{metrics}");
    assert!(metrics.contains("# TYPE query_queries_total counter"));

    // A new view appears without a restart; a broken views.toml keeps the old views.
    let views = ws.path("views.toml");
    let mut text = std::fs::read_to_string(&views).expect("read");
    text.push_str("\n[[view]]\nname = \"dns_machines\"\nsql = \"SELECT machine_ip FROM machinerole WHERE role = 'dns'\"\n");
    std::fs::write(&views, &text).expect("write");
    node.eventually(Duration::from_secs(15), "the new view", || {
        (node.sql("SELECT COUNT(*) FROM dns_machines").0 == 200).then_some(())
    });
    std::fs::write(&views, "[[view]]\nname = \"x\"\n").expect("write");
    let t = node.eventually(Duration::from_secs(15), "the views file error", || {
        let t = node.get_json("/tables");
        t["errors"]
            .as_array()?
            .iter()
            .any(|e| e["kind"] == "views_file")
            .then_some(t)
    });
    assert!(t.to_string().contains("sql"), "{t}");
    assert_eq!(
        node.sql("SELECT COUNT(*) FROM dns_machines").0,
        200,
        "last good views stay"
    );
}

#[test]
fn health_tables_and_metrics() {
    let ws = Workspace::new();
    let node = demo(&ws, "");
    let h = node.get_json("/health");
    assert_eq!(h["status"], "ok");
    assert_eq!(h["role"], "tla-sql");
    // The first generation may precede the fleet's first complete round.
    let t = node.eventually(Duration::from_secs(30), "sys from the whole fleet", || {
        let t = node.get_json("/tables");
        t["tables"]
            .as_array()?
            .iter()
            .any(|x| x["name"] == "sys" && x["sources"] == 201)
            .then_some(t)
    });
    let by_name = |n: &str| {
        t["tables"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == n).cloned())
    };
    let sys = by_name("sys").expect("sys listed");
    assert_eq!(sys["origin"], "published");
    assert_eq!(sys["sources"], 201);
    assert!(sys["columns"].as_array().is_some_and(|c| c.len() == 19));
    assert_eq!(by_name("region_data").expect("static")["origin"], "static");
    assert_eq!(by_name("machine_memory").expect("view")["origin"], "view");
    let (status, m) = node.get("/metrics");
    assert_eq!(status, 200);
    assert!(m.contains("query_generation_id "), "{m}");
    assert!(
        m.contains("query_table_rows{table=\"sys\",origin=\"published\"} 201"),
        "{m}"
    );
}

#[test]
fn tla_sql_role_serves_this_machine_and_static_tables() {
    let example = query_integration::repo().join("ops/defaults/tla-sql.toml");
    let node = Node::start(&[
        "tla-sql",
        "--config",
        example.to_str().expect("utf8"),
        "--listen",
        "127.0.0.1:0",
    ]);
    let (status, answer) = node.sql("SELECT machine_ip, cluster FROM sys");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["rows"], serde_json::json!([["127.0.0.1", "local"]]));
    let (_, roles) = node.sql("SELECT role FROM machinerole ORDER BY role");
    assert_eq!(roles["rows"], serde_json::json!([["sql"], ["tla"]]));
    let (_, fs) = node.sql("SELECT COUNT(*) FROM filesystem WHERE blocks > 0");
    assert!(fs["rows"][0][0].as_i64().is_some_and(|n| n >= 1), "{fs}");
    assert_eq!(
        node.sql("SELECT COUNT(*) FROM continent_data").1["rows"][0][0],
        7
    );
}

/// The value of the counter `name` in /metrics.
fn counter(node: &Node, name: &str) -> u64 {
    let (_, m) = node.get("/metrics");
    m.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics"))
}

fn cache_hits(node: &Node) -> u64 {
    counter(node, "query_answer_cache_hits_total")
}

/// The same statement three times on one generation: the third answer is the first, served
/// from the answer cache, which keeps an answer the second time its statement is answered
/// (whitespace and case of keywords do not matter); a statement calling now() or reading
/// the node's own tables is run each time.
#[test]
fn the_same_statement_on_one_generation_is_run_at_most_twice() {
    let ws = Workspace::new();
    let node = demo(&ws, "");
    // A statement of its own for each attempt (its limit), so that one that spans two
    // generations leaves nothing met to the next.
    let mut attempt = 0;
    let (first, second) = node.eventually(
        Duration::from_secs(30),
        "three answers of one generation",
        || {
            attempt += 1;
            let sql = format!("{CONTINENTS} LIMIT {}", 100 + attempt);
            let again = sql.replace('\n', "  ").replace("SELECT", "select");
            let before = cache_hits(&node);
            let (s1, a1) = node.sql(&sql);
            let (s2, a2) = node.sql(&again);
            let run_twice = cache_hits(&node);
            let (s3, a3) = node.sql(&sql);
            assert_eq!((s1, s2, s3), (200, 200, 200), "{a1} {a2} {a3}");
            let after = cache_hits(&node);
            let id = |a: &serde_json::Value| a["generation"]["id"].clone();
            (id(&a1) == id(&a2) && id(&a2) == id(&a3)).then(|| {
                assert_eq!(run_twice, before, "the second answer was run");
                assert_eq!(after - before, 1, "the third answer came from the cache");
                assert_eq!(a2["rows"], a3["rows"]);
                (a1, a3)
            })
        },
    );
    assert_eq!(first["rows"], second["rows"]);
    assert_eq!(first["columns"], second["columns"]);
    assert!(
        first["rows"].as_array().is_some_and(|r| r.len() == 7),
        "{first}"
    );

    for sql in [
        "SELECT COUNT(*), now() FROM sys",
        "SELECT COUNT(*) FROM sys WHERE random() >= 0",
        "SELECT COUNT(*) FROM query_quarantine",
    ] {
        let before = cache_hits(&node);
        for _ in 0..3 {
            let (status, answer) = node.sql(sql);
            assert_eq!(status, 200, "{sql}: {answer}");
        }
        assert_eq!(cache_hits(&node), before, "{sql} is run each time");
    }
}

fn plans_reused(node: &Node) -> u64 {
    counter(node, "query_plans_reused_total")
}

/// A statement met in an earlier generation runs on the plan kept for it
/// (`[sql] plan_cache_entries`), with the new generation's data, and later on its kept
/// physical plan too; one calling now() is planned each time.
#[test]
fn a_statement_met_in_an_earlier_generation_runs_on_its_kept_plan() {
    let ws = Workspace::new();
    let node = demo(&ws, "");
    let (status, first) = node.sql(CONTINENTS);
    assert_eq!(status, 200, "{first}");
    let id = |a: &serde_json::Value| a["generation"]["id"].as_u64().expect("generation id");
    let later = node.eventually(
        Duration::from_secs(30),
        "an answer on its kept plan",
        || {
            let before = plans_reused(&node);
            let (status, answer) = node.sql(CONTINENTS);
            assert_eq!(status, 200, "{answer}");
            (id(&answer) > id(&first) && plans_reused(&node) > before).then_some(answer)
        },
    );
    assert!(
        later["rows"].as_array().is_some_and(|r| r.len() == 7),
        "{later}"
    );
    // Met again with the same values in later generations: its physical plan is kept too,
    // and bound to each new generation's tables.
    let bound = node.eventually(
        Duration::from_secs(60),
        "an answer on its kept physical plan",
        || {
            let before = counter(&node, "query_physical_plans_reused_total");
            let (status, answer) = node.sql(CONTINENTS);
            assert_eq!(status, 200, "{answer}");
            (id(&answer) > id(&later)
                && counter(&node, "query_physical_plans_reused_total") > before)
                .then_some(answer)
        },
    );
    assert!(
        bound["rows"].as_array().is_some_and(|r| r.len() == 7),
        "{bound}"
    );
    let with_now = "SELECT COUNT(*), now() FROM sys";
    let before = plans_reused(&node);
    for _ in 0..3 {
        let (status, answer) = node.sql(with_now);
        assert_eq!(status, 200, "{answer}");
    }
    assert_eq!(plans_reused(&node), before, "a plan with now() is not kept");
}

fn aggregates_read(node: &Node) -> u64 {
    counter(node, "query_aggregates_read_total")
}

/// The same aggregate under other thresholds on one generation: from the third time it is
/// read from its kept result (`[sql] aggregate_cache_mb`), and each answer is the first's
/// rows above its threshold; with `aggregate_cache_mb = 0` it runs each time.
#[test]
fn an_aggregate_under_another_threshold_is_read_from_its_kept_result() {
    let ws = Workspace::new();
    let node = demo(&ws, "");
    let by_threshold =
        |t: i64| CONTINENTS.replace("ORDER BY", &format!("HAVING SUM(l.hits) > {t} ORDER BY"));
    let id = |a: &serde_json::Value| a["generation"]["id"].as_u64().expect("generation id");
    let answers = node.eventually(
        Duration::from_secs(30),
        "four answers of one generation",
        || {
            let before = aggregates_read(&node);
            let answers: Vec<serde_json::Value> = [-1, 0, 1, 2]
                .into_iter()
                .map(|t| {
                    let (status, answer) = node.sql(&by_threshold(t));
                    assert_eq!(status, 200, "{answer}");
                    answer
                })
                .collect();
            let one = answers.iter().all(|a| id(a) == id(&answers[0]));
            one.then(|| {
                // The third and fourth read it; more if an earlier try met it in this
                // generation.
                let read = aggregates_read(&node) - before;
                assert!((2..=4).contains(&read), "{read} aggregates read");
                answers
            })
        },
    );
    let all = answers[0]["rows"].as_array().expect("rows").clone();
    assert_eq!(all.len(), 7, "{}", answers[0]);
    for (answer, t) in answers.iter().zip([-1, 0, 1, 2]) {
        let above: Vec<_> = all
            .iter()
            .filter(|r| r[1].as_i64().is_some_and(|h| h > t))
            .cloned()
            .collect();
        assert_eq!(answer["rows"].as_array(), Some(&above), "threshold {t}");
    }

    drop(node);
    let ws = Workspace::new();
    let off = demo(&ws, "[sql]\naggregate_cache_mb = 0");
    for t in 0..4 {
        let (status, answer) = off.sql(&by_threshold(t));
        assert_eq!(status, 200, "{answer}");
    }
    assert_eq!(
        aggregates_read(&off),
        0,
        "nothing kept with aggregate_cache_mb = 0"
    );
}

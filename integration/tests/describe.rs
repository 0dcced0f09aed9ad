//! Self-describing tables and answers that state their completeness, on real processes:
//! `query_columns`, SHOW TABLES / SHOW COLUMNS / DESCRIBE and `GET /tables` descriptions on
//! a demo node; the round and clusters/machines seen against expected in JSON and in the
//! headers of CSV and NDJSON answers; the 503 for a query asking more clusters than seen;
//! and two SQL nodes of one TLA stating the same round.

use std::time::Duration;

use query_integration::fleet::{free_port, toml_list};
use query_integration::{Node, Simulator, Workspace};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(60);

/// A demo node of 100 simulated machines in 4 clusters, once every machine is in.
/// The shipped `cluster_expected` describes the `make run` fleet (20 clusters); tests of
/// the expectations a node derives itself make it an ordinary table.
fn not_sourced(ws: &Workspace) {
    let path = ws.path("static-tables/cluster_expected.toml");
    let text = std::fs::read_to_string(&path).expect("cluster_expected.toml");
    assert!(text.contains("sourced = true\n"), "shipped as sourced");
    std::fs::write(&path, text.replace("sourced = true\n", "")).expect("write");
}

fn demo(ws: &Workspace) -> Node {
    let node = ws.start(
        "demo",
        "[generation]\ninterval = \"2s\"\noffset = \"100ms\"\n\n[simulate]\nmachines = 100\nclusters = 4\n",
    );
    node.eventually(LIMIT, "all 100 machines", || {
        (node.sql("SELECT COUNT(*) FROM sys").1["rows"] == json!([[101]])).then_some(())
    });
    node
}

fn rows(answer: &Value) -> Vec<Value> {
    answer["rows"].as_array().cloned().unwrap_or_default()
}

#[test]
fn tables_describe_themselves_in_sql_and_get_tables() {
    let ws = Workspace::new();
    let node = demo(&ws);

    // A published table: schemas/sys.toml's descriptions, machine_ip first.
    let (status, sys) = node.sql(
        "SELECT column_name, position, type, nullable, description, table_description, origin \
         FROM query_columns WHERE table_name = 'sys' ORDER BY position",
    );
    assert_eq!(status, 200, "{sys}");
    let sys = rows(&sys);
    assert_eq!(sys.len(), 19, "{sys:?}");
    assert_eq!(sys[0][0], "machine_ip");
    assert_eq!(
        sys[1],
        json!([
            "hostname",
            2,
            "string",
            false,
            "Host name",
            "Machine identity, memory, CPU load and uptime; one row per machine",
            "published"
        ])
    );
    // Static tables, views (columns described by the tables they read) and the node's own.
    for (sql, expected) in [
        (
            "SELECT description, origin FROM query_columns WHERE table_name = 'region_data' AND column_name = 'id'",
            json!([["Region id", "static"]]),
        ),
        (
            "SELECT description, table_description, origin FROM query_columns WHERE table_name = 'machine_memory' AND column_name = 'hostname'",
            json!([["Host name (from sys.hostname)", "Memory use per machine, percent of total", "view"]]),
        ),
        (
            "SELECT origin FROM query_columns WHERE table_name = 'query_quarantine' AND column_name = 'until'",
            json!([["self"]]),
        ),
        (
            "SELECT type FROM query_columns WHERE table_name = 'query_columns' AND column_name = 'position'",
            json!([["int64"]]),
        ),
        // Every column of the node's own tables is described.
        (
            "SELECT COUNT(*) FROM query_columns WHERE origin = 'self' AND (description = '' OR table_description = '')",
            json!([[0]]),
        ),
    ] {
        let (status, answer) = node.sql(sql);
        assert_eq!(status, 200, "{sql}: {answer}");
        assert_eq!(answer["rows"], expected, "{sql}");
    }

    // SHOW TABLES, SHOW COLUMNS and DESCRIBE answer over HTTP.
    let (status, tables) = node.sql("SHOW TABLES");
    assert_eq!(status, 200, "{tables}");
    let names: Vec<String> = rows(&tables)
        .iter()
        .filter_map(|r| r[2].as_str().map(String::from))
        .collect();
    for t in ["sys", "region_data", "machine_memory", "query_columns"] {
        assert!(
            names.iter().any(|n| n == t),
            "{t} in SHOW TABLES: {names:?}"
        );
    }
    let (status, cols) = node.sql("SHOW COLUMNS FROM sys");
    assert_eq!(status, 200, "{cols}");
    assert!(
        rows(&cols)
            .iter()
            .any(|r| r.to_string().contains("\"hostname\"")),
        "{cols}"
    );
    let (status, desc) = node.sql("DESCRIBE sys");
    assert_eq!(status, 200, "{desc}");
    assert_eq!(desc["row_count"], 19, "{desc}");
    assert_eq!(desc["columns"][0]["name"], "column_name", "{desc}");
    assert_eq!(desc["rows"][1][0], "hostname", "{desc}");

    // GET /tables carries the same descriptions.
    let t = node.get_json("/tables");
    let by_name = |n: &str| {
        t["tables"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == n).cloned())
            .unwrap_or(Value::Null)
    };
    let sys = by_name("sys");
    assert_eq!(
        sys["description"],
        "Machine identity, memory, CPU load and uptime; one row per machine"
    );
    assert_eq!(
        sys["columns"][1],
        json!({"name": "hostname", "type": "string", "nullable": false, "description": "Host name"})
    );
    assert_eq!(by_name("region_data")["description"], "Geographic regions");
    assert_eq!(by_name("query_columns")["origin"], "self");
}

/// POSTs `sql` with `format` and the extra headers; returns status, the X-Query-* headers
/// asked for, and the body.
fn post(
    node: &Node,
    path: &str,
    sql: &str,
    headers: &[(&str, &str)],
    wanted: &[&str],
) -> (u16, Vec<Option<String>>, String) {
    let mut req = ureq::post(&node.url(path)).set("Content-Type", "text/plain");
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let resp = match req.send_string(sql) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("POST {path}: {e}"),
    };
    let got = wanted
        .iter()
        .map(|h| resp.header(h).map(String::from))
        .collect();
    (resp.status(), got, resp.into_string().unwrap_or_default())
}

const FACTS: [&str; 6] = [
    "X-Query-Generation",
    "X-Query-Round",
    "X-Query-Clusters-Seen",
    "X-Query-Clusters-Expected",
    "X-Query-Machines-Seen",
    "X-Query-Machines-Expected",
];

#[test]
fn answers_state_their_completeness_and_refuse_less_than_asked() {
    let ws = Workspace::new();
    not_sourced(&ws);
    let node = demo(&ws);
    // A generation's facts: read them until JSON and both header formats were computed on
    // one generation (a switch between the requests is possible, not likely twice).
    let sql = "SELECT COUNT(*) AS n FROM sys";
    let (answer, csv, nd) = node.eventually(LIMIT, "three answers from one generation", || {
        let (status, _, body) = post(&node, "/sql", sql, &[], &[]);
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).expect("JSON");
        let (s1, csv, _) = post(&node, "/sql?format=csv", sql, &[], &FACTS);
        let (s2, nd, _) = post(&node, "/sql?format=ndjson", sql, &[], &FACTS);
        assert_eq!((s1, s2), (200, 200));
        let id = answer["generation"]["id"].to_string();
        (csv[0].as_deref() == Some(&id) && nd[0].as_deref() == Some(&id))
            .then_some((answer, csv, nd))
    });
    let c = &answer["completeness"];
    let round = answer["generation"]["round"].as_u64().expect("round");
    assert!(round > 0, "{answer}");
    // 100 simulated machines in 4 clusters and the node itself, all in.
    assert_eq!(c["clusters"]["seen"], c["clusters"]["expected"], "{answer}");
    assert_eq!(c["machines"]["seen"], 101, "{answer}");
    assert_eq!(c["machines"]["expected"], 101, "{answer}");
    let seen = c["clusters"]["seen"].as_u64().expect("clusters seen");
    assert!(seen >= 1, "{answer}");
    let expected = [
        Some(answer["generation"]["id"].to_string()),
        Some(round.to_string()),
        Some(seen.to_string()),
        Some(seen.to_string()),
        Some("101".to_string()),
        Some("101".to_string()),
    ];
    assert_eq!(csv, expected, "CSV headers");
    assert_eq!(nd, expected, "NDJSON headers");

    // Asking for no more than is seen answers; asking for more is a clear 503.
    let (status, _, _) = post(&node, &format!("/sql?min_clusters={seen}"), sql, &[], &[]);
    assert_eq!(status, 200);
    let more = (seen + 1).to_string();
    for (path, headers) in [
        (format!("/sql?min_clusters={more}&format=csv"), vec![]),
        (
            "/sql?format=ndjson".to_string(),
            vec![("X-Query-Min-Clusters", more.as_str())],
        ),
    ] {
        let (status, _, body) = post(&node, &path, sql, &headers, &[]);
        assert_eq!(status, 503, "{path}: {body}");
        let err: Value = serde_json::from_str(&body).expect("error JSON");
        assert_eq!(err["error"]["code"], "incomplete", "{body}");
        let m = err["error"]["message"].as_str().expect("message");
        assert!(
            m.contains(&format!(
                "{seen} clusters seen, at least {more} asked (min_clusters)"
            )),
            "{m}"
        );
    }
    let (status, _, body) = post(&node, "/sql?min_machines=102", sql, &[], &[]);
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("101 machines seen, at least 102 asked"),
        "{body}"
    );
    let (status, _, body) = post(&node, "/sql?min_clusters=lots", sql, &[], &[]);
    assert_eq!(status, 400, "{body}");

    let (_, metrics) = node.get("/metrics");
    assert!(
        metrics.contains("query_queries_incomplete_total 3"),
        "{metrics}"
    );
    // /health states the same facts.
    let h = node.get_json("/health");
    assert_eq!(h["completeness"]["machines"]["seen"], 101, "{h}");
    assert!(h["generation"]["round"].is_u64(), "{h}");
    // And so does the node's query_nodes row, of the generation before its own.
    node.eventually(LIMIT, "query_nodes with expected counts", || {
        let (status, a) = node.sql(
            "SELECT machines, machines_expected, clusters, clusters_expected FROM query_nodes \
             WHERE role = 'tla-sql'",
        );
        assert_eq!(status, 200, "{a}");
        let seen = Value::from(seen);
        (a["rows"] == serde_json::json!([[101, 101, seen, seen]])).then_some(())
    });
}

fn node_section(ip: &str, interval: &str, offset_ms: u64) -> String {
    format!(
        "[node]\nmachine_ip = \"{ip}\"\ncluster = \"top\"\n\n[generation]\ninterval = \"{interval}\"\noffset = \"{offset_ms}ms\"\n\n[host]\nenabled = false\n"
    )
}

fn link(children: &[String], listen: Option<&str>) -> String {
    format!(
        "[link]\nchildren = {}\ndrop_after = \"10s\"\nbackoff_min = \"100ms\"\nbackoff_max = \"1s\"\n{}",
        toml_list(children),
        listen.map_or(String::new(), |l| format!("listen = \"{l}\"\n"))
    )
}

#[test]
fn two_sql_nodes_of_one_tla_state_the_same_round() {
    let sim = Simulator::start(&[
        "--machines",
        "30",
        "--clusters",
        "3",
        "--serve",
        "clusters",
        "--listen",
        "127.0.53.1:7600",
        "--interval",
        "2s",
        "--offset",
        "100ms",
    ]);
    let tla_ws = Workspace::new();
    let tla_ip = "127.0.53.5";
    let tla_link = format!("{tla_ip}:{}", free_port(tla_ip));
    let tla = tla_ws.start(
        "tla",
        &format!(
            "{}\n{}",
            node_section(tla_ip, "2s", 500),
            link(&sim.children, Some(&tla_link))
        ),
    );
    // The SQL nodes' own clocks run at another interval: their own round numbers differ
    // from the TLA's, so equal rounds in answers are the TLA's.
    let sql_ws: Vec<Workspace> = (0..2).map(|_| Workspace::new()).collect();
    sql_ws.iter().for_each(not_sourced);
    let sql: Vec<Node> = sql_ws
        .iter()
        .enumerate()
        .map(|(i, ws)| {
            ws.start(
                "sql",
                &format!(
                    "{}\n{}\n[requests]\nwait = \"30s\"\n",
                    node_section(&format!("127.0.53.{}", 10 + i), "7s", 0),
                    link(std::slice::from_ref(&tla_link), None)
                ),
            )
        })
        .collect();
    let query = "SELECT COUNT(*) FROM sys";
    sql[0].eventually(
        LIMIT,
        "the same round, data and coverage at both SQL nodes",
        || {
            let before = tla.get_json("/health")["generation"]["round"].as_u64()?;
            let answers: Vec<Value> = sql.iter().map(|n| n.sql(query).1).collect();
            let after = tla.get_json("/health")["generation"]["round"].as_u64()?;
            let round = |a: &Value| a["generation"]["round"].as_u64();
            let complete = |a: &Value| {
                a["rows"] == json!([[30]])
                    && a["completeness"]["clusters"] == json!({"seen": 3, "expected": 3})
                    && a["completeness"]["machines"] == json!({"seen": 30, "expected": 30})
            };
            (before == after
                && answers.iter().all(complete)
                && round(&answers[0]) == round(&answers[1])
                && round(&answers[0]).is_some_and(|r| r + 1 >= before && r <= after))
            .then_some(())
        },
    );
}

/// A token limited to `sys`: the catalog (SHOW TABLES, query_columns, information_schema:
/// names, types and descriptions, never rows) is open to it, as documented; `GET /tables`
/// lists only what it may read; another table's rows stay refused.
#[test]
fn a_token_limited_to_some_tables_sees_the_catalog_but_not_other_rows() {
    let ws = Workspace::new();
    let (secret, entry) = query_integration::make_token(&[
        "--name",
        "sys-reader",
        "--domain",
        "noc",
        "--table",
        "sys",
    ]);
    std::fs::write(ws.path("tokens.toml"), entry).expect("tokens");
    let node = ws.start(
        "demo",
        "[generation]\ninterval = \"2s\"\noffset = \"100ms\"\n\n[simulate]\nmachines = 20\nclusters = 2\n\n[auth]\ntokens_file = \"tokens.toml\"\n",
    );
    let bearer = format!("Bearer {secret}");
    let auth = [("Authorization", bearer.as_str())];
    let (status, _, body) = post(&node, "/sql", "SELECT COUNT(*) FROM processes", &auth, &[]);
    assert_eq!(status, 403, "{body}");
    for sql in [
        "SHOW TABLES",
        "SELECT DISTINCT table_name FROM query_columns WHERE table_name = 'processes'",
    ] {
        let answer = node.eventually(LIMIT, "processes in the catalog", || {
            let (status, _, body) = post(&node, "/sql", sql, &auth, &[]);
            assert_eq!(status, 200, "{sql}: {body}");
            body.contains("\"processes\"").then_some(body)
        });
        assert!(answer.contains("\"processes\""), "{answer}");
    }
    let resp = ureq::get(&node.url("/tables"))
        .set("Authorization", &bearer)
        .call()
        .expect("GET /tables");
    let t: Value = serde_json::from_str(&resp.into_string().expect("body")).expect("JSON");
    let names: Vec<&str> = t["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .filter_map(|x| x["name"].as_str())
        .collect();
    assert!(
        names.contains(&"sys") && names.contains(&"query_columns"),
        "{names:?}"
    );
    assert!(!names.contains(&"processes"), "{names:?}");
}

/// History and report tables are described too: a kept table by its live table's
/// descriptions plus the two columns history adds, a report by its name.
#[test]
fn history_and_report_tables_are_described() {
    let ws = Workspace::new();
    std::fs::write(
        ws.path("history.toml"),
        "[[table]]\nname = \"sys\"\nevery = 1\nretention = \"1h\"\n",
    )
    .expect("history.toml");
    std::fs::write(
        ws.path("reports.toml"),
        "[[report]]\nname = \"fleet_memory\"\nsql = \"SELECT SUM(memtotal) AS total FROM sys\"\nevery = \"1s\"\nretention = \"1h\"\nvalues = [\"total\"]\n",
    )
    .expect("reports.toml");
    let node = ws.start(
        "demo",
        "[generation]\ninterval = \"1s\"\noffset = \"100ms\"\n\n[simulate]\nmachines = 10\nclusters = 2\n\n\
         [history]\ndir = \"history\"\ntables = \"history.toml\"\nreports = \"reports.toml\"\n",
    );
    let sql = "SELECT table_name, column_name, description, origin FROM query_columns \
               WHERE (table_name = 'history.sys' AND column_name IN ('hostname', 'generation_time')) \
                  OR table_name = 'report.fleet_memory' ORDER BY table_name, position";
    let expected = json!([
        ["history.sys", "hostname", "Host name", "history"],
        [
            "history.sys",
            "generation_time",
            "When the kept generation was sealed (UTC)",
            "history"
        ],
        ["report.fleet_memory", "total", "", "report"],
        [
            "report.fleet_memory",
            "generation_time",
            "When the kept generation was sealed (UTC)",
            "report"
        ],
        [
            "report.fleet_memory",
            "generation",
            "Id of the kept generation at this node",
            "report"
        ],
    ]);
    node.eventually(LIMIT, "history and report tables in query_columns", || {
        let (status, answer) = node.sql(sql);
        assert_eq!(status, 200, "{answer}");
        (answer["rows"] == expected).then_some(())
    });
    let (_, d) = node.sql(
        "SELECT DISTINCT table_description FROM query_columns WHERE table_name = 'history.sys'",
    );
    assert_eq!(
        d["rows"],
        json!([["Kept generations of sys: Machine identity, memory, CPU load and uptime; one row per machine"]])
    );
}

/// A sourced table (OSR 2.3: the fleet's configuration) sets what answers are expected to
/// cover: here it lists a fifth cluster the simulated fleet does not have, so answers say
/// 4 of 5 clusters and 100 of 130 machines (plus the node itself), and a query asking for
/// every configured cluster gets a 503 rather than a partial answer.
#[test]
fn a_sourced_table_sets_the_expected_clusters_and_machines() {
    let ws = Workspace::new();
    let names: Vec<String> = (0..5)
        .map(|c| format!("[\"cluster-{c:04}\", {}]", if c < 4 { 25 } else { 30 }))
        .collect();
    std::fs::write(
        ws.path("static-tables/cluster_expected.toml"),
        format!(
            "name = \"cluster_expected\"\nsourced = true\nkey = [\"cluster\"]\n\
             columns = [{{ name = \"cluster\", type = \"string\" }}, {{ name = \"machines\", type = \"int64\" }}]\n\
             rows = [{}]\n",
            names.join(", ")
        ),
    )
    .expect("write cluster_expected");
    let node = demo(&ws);
    let (status, answer) = node.sql("SELECT COUNT(*) FROM sys");
    assert_eq!(status, 200, "{answer}");
    let c = &answer["completeness"];
    assert_eq!(c["clusters"]["expected"], 5, "{answer}");
    assert_eq!(c["machines"]["expected"], 130, "{answer}");
    assert_eq!(c["machines"]["seen"], 101, "{answer}");
    let (status, _, body) = post(&node, "/sql?min_clusters=5", "SELECT 1", &[], &[]);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("expected 5 clusters"), "{body}");
    // query_nodes reports seen against the sourced expectation too.
    node.eventually(LIMIT, "query_nodes with the sourced expectation", || {
        let (status, a) = node.sql(
            "SELECT machines, machines_expected, clusters_expected FROM query_nodes \
             WHERE role = 'tla-sql'",
        );
        assert_eq!(status, 200, "{a}");
        (a["rows"] == json!([[101, 130, 5]])).then_some(())
    });
}

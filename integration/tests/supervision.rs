//! Supervision with real processes: one small hierarchy (an edge → a cluster proxy → a TLA
//! → a SQL node with a Postgres listener, on 127.0.48.0/24) started with the test-only
//! fault hook (`QUERYD_FAULT_INJECTION=1`, `POST /debug/panic?actor=NAME`). A panic is
//! injected into each kind of supervised part in turn; each time the node keeps answering
//! SQL, the part comes back and does its work again (publishing after the publish socket
//! listener restarted, a new generation after the sealer restarted, a static table edit
//! after the file watcher restarted, a new table requested after the request book
//! restarted, a link re-dialed and accepted after the child link and the link listener
//! restarted, ...), and `query_actors` shows one restart with the panic as its last error.
//! First, a demo node started without the variable has no hook (404) and lists its nodes'
//! parts in `query_actors`; last, with tokens on, the hook answers admin tokens only.

use std::time::Duration;

use query_client::Publisher;
use query_integration::fleet::{free_port, Fleet, FleetSpec};
use query_integration::{make_token, Node, Workspace};
use serde_json::{json, Value};

/// How long any one expected state may take. Generous: the machine is small and shared.
const LIMIT: Duration = Duration::from_secs(30);

fn rows(answer: &Value) -> Vec<Value> {
    answer["rows"].as_array().cloned().unwrap_or_default()
}

/// Polls `sql` at `node` until it answers 200 with `want` as its rows.
#[track_caller]
fn until_rows(node: &Node, sql: &str, want: Value, what: &str) {
    let mut last = Value::Null;
    let found = node.eventually_quiet(LIMIT, || {
        let (status, answer) = node.sql(sql);
        let ok = status == 200 && answer["rows"] == want;
        last = answer;
        ok.then_some(())
    });
    assert!(
        found.is_some(),
        "{what}: {sql} never gave {want}; last {last}"
    );
}

/// The generation a node answers from now.
fn generation(node: &Node) -> u64 {
    let (status, answer) = node.sql("SELECT 1");
    assert_eq!(status, 200, "the node answers: {answer}");
    answer["generation"]["id"].as_u64().expect("generation id")
}

/// Injects a panic into `actor` at `node`.
fn inject(node: &Node, actor: &str) {
    let (status, answer) = node.post(&format!("/debug/panic?actor={actor}"), "text/plain", "");
    assert_eq!(status, 200, "inject into {actor}: {answer}");
    assert_eq!(answer["injected"], json!(actor));
}

/// Waits until `node`'s own `query_actors` row of `actor` says running, `restarts` times,
/// last because of the injected panic.
#[track_caller]
fn until_restarted(node: &Node, role: &str, actor: &str, restarts: u64) {
    let sql = format!(
        "SELECT state, restarts, last_error FROM query_actors WHERE role = '{role}' AND actor = '{actor}'"
    );
    let want = json!([[
        "running",
        restarts,
        format!("panicked: fault injected into {actor}")
    ]]);
    until_rows(node, &sql, want, &format!("{actor} back at the {role}"));
}

/// Keeps answering: a query that reads published and static tables.
#[track_caller]
fn answers(node: &Node) {
    let (status, answer) = node.sql("SELECT COUNT(*) FROM continent_data");
    assert_eq!(status, 200, "the node keeps answering: {answer}");
}

trait Quiet {
    fn eventually_quiet<T>(&self, limit: Duration, check: impl FnMut() -> Option<T>) -> Option<T>;
}

impl Quiet for Node {
    /// Like `Node::eventually`, returning None at the limit (the caller says what failed).
    fn eventually_quiet<T>(
        &self,
        limit: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(v) = check() {
                return Some(v);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn load_row(georegion: i64, hits: i64) -> query_client::protocol::Row {
    match json!({"georegion": georegion, "hits": hits, "bytes": 1, "errors": 0}) {
        Value::Object(m) => m,
        _ => unreachable!("an object"),
    }
}

#[test]
fn every_supervised_kind_comes_back_after_a_panic() {
    // Without the variable there is no fault hook; the demo's nodes list their parts too.
    let ws = Workspace::new();
    let demo = ws.start(
        "demo",
        "[generation]\ninterval = \"1s\"\noffset = \"100ms\"\n\n[simulate]\nmachines = 20\nclusters = 2\n",
    );
    let (status, answer) = demo.post("/debug/panic?actor=sealer", "text/plain", "");
    assert_eq!(status, 404, "no fault hook without the variable: {answer}");
    until_rows(
        &demo,
        "SELECT COUNT(DISTINCT role) >= 2, MIN(restarts) FROM query_actors WHERE actor = 'sealer' AND state = 'running'",
        json!([[true, 0]]),
        "the demo's nodes in query_actors",
    );
    drop(demo);

    // Only this test runs in this binary: the children started from here on inherit it.
    std::env::set_var("QUERYD_FAULT_INJECTION", "1");
    let mut spec = FleetSpec::new(48);
    spec.clusters = 1;
    spec.edges_per_cluster = 1;
    spec.host = true;
    spec.reload_every = "200ms";
    spec.drop_after = "5s";
    spec.request_ttl = "1m";
    spec.sql_wait = "20s";
    spec.prewarm = vec!["sys".into(), "load_info".into()];
    spec.prewarm_every_tier = true;
    let mut fleet = Fleet::new(spec);
    // The SQL node also speaks the Postgres protocol (its accept loop is supervised too).
    let pg = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let sql_config = fleet.sql.config.clone();
    let text = std::fs::read_to_string(&sql_config).expect("sql config");
    std::fs::write(&sql_config, format!("{text}\n[pg]\nlisten = \"{pg}\"\n")).expect("write");
    fleet.start_all();
    let edge_ip = fleet.edges[0].ip.clone();
    let (edge, proxy, tla, sql) = (
        fleet.edges[0].node(),
        fleet.proxies[0].node(),
        fleet.tla.node(),
        fleet.sql(),
    );
    let sys = format!("SELECT machine_ip FROM sys WHERE machine_ip = '{edge_ip}'");
    until_rows(
        sql,
        &sys,
        json!([[edge_ip]]),
        "the edge's sys row at the SQL node",
    );

    // Every role lists its parts, all running, none restarted.
    for (node, role, part) in [
        (edge, "edge", "publish_socket.unix"),
        (edge, "edge", "sealer"),
        (proxy, "cluster-proxy", "link_listener"),
        (tla, "tla", "snapshot_keeper"),
        (sql, "sql", "tla_selector"),
        (sql, "sql", "pg_listener"),
    ] {
        let q = format!(
            "SELECT kind, state, restarts FROM query_actors WHERE role = '{role}' AND actor = '{part}'"
        );
        let kind = if part.contains('.') || part.ends_with("listener") {
            "task"
        } else {
            "actor"
        };
        until_rows(node, &q, json!([[kind, "running", 0]]), part);
    }
    // An unknown part is a 404 naming query_actors.
    let (status, answer) = edge.post("/debug/panic?actor=nosuch", "text/plain", "");
    assert_eq!(status, 404, "{answer}");

    // The publish socket's accept loop: a publisher connecting after the restart is served
    // and its rows reach the SQL node.
    inject(edge, "publish_socket.unix");
    until_restarted(edge, "edge", "publish_socket.unix", 1);
    answers(edge);
    let socket = fleet.socket(0);
    let mut publisher = None;
    for _ in 0..100 {
        match Publisher::connect_unix(&socket, "after-restart", &["load_info"]) {
            Ok(p) if p.is_wanted("load_info") => {
                publisher = Some(p);
                break;
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let mut publisher = publisher.expect("a publisher connects after the listener restarted");
    publisher
        .publish("load_info", vec![load_row(7, 4242)])
        .expect("publish");
    until_rows(
        sql,
        "SELECT hits FROM load_info WHERE georegion = 7",
        json!([[4242]]),
        "a publish after the listener restart at the SQL node",
    );

    // The sealer: generations go on (and ids keep increasing) after it restarted.
    let before = generation(edge);
    inject(edge, "sealer");
    until_restarted(edge, "edge", "sealer", 1);
    let found = edge.eventually_quiet(LIMIT, || (generation(edge) > before + 1).then_some(()));
    assert!(
        found.is_some(),
        "new generations sealed after the sealer restarted"
    );

    // The file watcher: a static table edit made after its restart is applied.
    inject(edge, "file_watcher");
    until_restarted(edge, "edge", "file_watcher", 1);
    let continents = fleet.ws.path("static-tables/continent_data.toml");
    let text = std::fs::read_to_string(&continents).expect("continent_data");
    let edited = text.replace(
        "[\"AN\", \"Antarctica\"],",
        "[\"AN\", \"Antarctica\"],\n  [\"ZZ\", \"Zealandia\"],",
    );
    assert_ne!(text, edited);
    std::fs::write(&continents, edited).expect("write");
    until_rows(
        edge,
        "SELECT continent_name FROM continent_data WHERE continent = 'ZZ'",
        json!([["Zealandia"]]),
        "the static table edit after the file watcher restarted",
    );

    // The file-drop scanner: a file dropped after its restart is published.
    inject(edge, "file_drop");
    until_restarted(edge, "edge", "file_drop", 1);
    std::fs::write(
        fleet.drop_dir(0).join("load_info.csv"),
        "georegion,hits,bytes,errors\n9,555,1,0\n",
    )
    .expect("drop a file");
    until_rows(
        sql,
        "SELECT hits FROM load_info WHERE georegion = 9",
        json!([[555]]),
        "a file dropped after the scanner restarted, at the SQL node",
    );

    // The request book (at the proxy): a table first queried after its restart is
    // requested through it down to the edge and arrives at the SQL node.
    inject(proxy, "request_book");
    until_restarted(proxy, "cluster-proxy", "request_book", 1);
    until_rows(
        sql,
        &format!("SELECT COUNT(*) > 0 FROM processes WHERE machine_ip = '{edge_ip}'"),
        json!([[true]]),
        "a table requested after the request book restarted",
    );

    // A table's request actor (at the proxy): the table stays requested and flows.
    inject(proxy, "table_request:load_info");
    until_restarted(proxy, "cluster-proxy", "table_request:load_info", 1);
    publisher
        .publish("load_info", vec![load_row(7, 4300)])
        .expect("publish");
    until_rows(
        sql,
        "SELECT hits FROM load_info WHERE georegion = 7",
        json!([[4300]]),
        "load_info still requested after its request actor restarted",
    );

    // The edge's link listener, then the proxy's link session: the proxy dials again and
    // the restarted listener accepts it; data flows again.
    inject(edge, "link_listener");
    until_restarted(edge, "edge", "link_listener", 1);
    let links =
        "SELECT actor FROM query_actors WHERE role = 'cluster-proxy' AND actor LIKE 'child_link:%'";
    let child = proxy
        .eventually_quiet(LIMIT, || {
            let (status, answer) = proxy.sql(links);
            let r = rows(&answer);
            (status == 200 && r.len() == 1).then(|| r[0][0].as_str().map(String::from))?
        })
        .expect("the proxy lists its child link");
    let connects = |node: &Node| -> Option<i64> {
        let (_, answer) = node.sql(
            "SELECT connects FROM query_links WHERE direction = 'child' AND node LIKE 'cluster-proxy@%'",
        );
        rows(&answer).first().and_then(|r| r[0].as_i64())
    };
    let connected = connects(proxy).unwrap_or(0);
    inject(proxy, &child);
    let q = format!(
        "SELECT state, restarts, last_error FROM query_actors WHERE role = 'cluster-proxy' AND actor = '{child}'"
    );
    until_rows(
        proxy,
        &q,
        json!([[
            "running",
            1,
            format!("session panicked: fault injected into {child}")
        ]]),
        "the child link's restart",
    );
    let found = proxy.eventually_quiet(LIMIT, || {
        (connects(proxy).unwrap_or(0) > connected).then_some(())
    });
    assert!(found.is_some(), "the link to the edge connects again");
    publisher
        .publish("load_info", vec![load_row(7, 4343)])
        .expect("publish");
    until_rows(
        sql,
        "SELECT hits FROM load_info WHERE georegion = 7",
        json!([[4343]]),
        "data flows over the new link",
    );

    // A parent session at the edge: it ends alone, the proxy dials again.
    let connected = connects(proxy).unwrap_or(0);
    inject(edge, "parent_sessions");
    until_rows(
        edge,
        "SELECT kind, restarts, last_error LIKE 'panicked: fault injected into parent_sessions (parent %' FROM query_actors WHERE role = 'edge' AND actor = 'parent_sessions'",
        json!([["session", 1, true]]),
        "the parent session's panic at the edge",
    );
    let found = proxy.eventually_quiet(LIMIT, || {
        (connects(proxy).unwrap_or(0) > connected).then_some(())
    });
    assert!(
        found.is_some(),
        "the proxy's link to the edge connects again"
    );
    answers(edge);

    // The snapshot keeper (at the TLA): new generations are still installed and served.
    let before = generation(tla);
    inject(tla, "snapshot_keeper");
    until_restarted(tla, "tla", "snapshot_keeper", 1);
    let found = tla.eventually_quiet(LIMIT, || (generation(tla) > before + 1).then_some(()));
    assert!(
        found.is_some(),
        "snapshots installed after the keeper restarted"
    );

    // The SQL node's TLA selector and Postgres listener.
    inject(sql, "tla_selector");
    until_restarted(sql, "sql", "tla_selector", 1);
    inject(sql, "pg_listener");
    until_restarted(sql, "sql", "pg_listener", 1);
    let found = sql.eventually_quiet(LIMIT, || {
        std::net::TcpStream::connect(&pg).ok().and_then(|mut s| {
            use std::io::{Read, Write};
            // An SSLRequest: a Postgres server answers one byte ('N' or 'S').
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            s.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).ok()?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).ok()?;
            matches!(b[0], b'N' | b'S').then_some(())
        })
    });
    assert!(found.is_some(), "the Postgres listener accepts again");
    until_rows(sql, &sys, json!([[edge_ip]]), "the SQL node still answers");

    // The restarts are counted in /metrics, per part.
    let (_, metrics) = edge.get("/metrics");
    assert!(
        metrics.contains("query_actor_restarts_by_actor_total{actor=\"sealer\"} 1"),
        "{metrics}"
    );
    // And the edge's record flows up the hierarchy like any table.
    until_rows(
        sql,
        "SELECT restarts FROM query_actors WHERE role = 'edge' AND actor = 'sealer'",
        json!([[1]]),
        "the edge's query_actors at the SQL node",
    );
    drop(fleet);

    // With tokens on, the hook is for admin tokens only.
    let (admin, admin_entry) = make_token(&["--name", "noc-admin", "--domain", "noc", "--admin"]);
    let (reader, reader_entry) =
        make_token(&["--name", "reader", "--domain", "noc", "--table", "sys"]);
    std::fs::write(
        ws.path("tokens.toml"),
        format!("{admin_entry}\n{reader_entry}"),
    )
    .expect("tokens file");
    std::fs::write(
        ws.path("sets.toml"),
        "[[set]]\nname = \"operations\"\ndomain = [\"noc\"]\nsql_name = \"sql.ops.test\"\ntla_name = \"tla.ops.test:7500\"\n",
    )
    .expect("sets file");
    let guarded = ws.start(
        "demo",
        "[generation]\ninterval = \"1s\"\noffset = \"100ms\"\n\n[simulate]\nmachines = 20\nclusters = 2\n\n\
         [aggregator_set]\nfile = \"sets.toml\"\nname = \"operations\"\n\n\
         [auth]\ntokens_file = \"tokens.toml\"\n",
    );
    let post = |token: &str| -> u16 {
        let mut r = ureq::post(&guarded.url("/debug/panic?actor=sealer"));
        if !token.is_empty() {
            r = r.set("Authorization", &format!("Bearer {token}"));
        }
        match r.send_string("") {
            Ok(resp) => resp.status(),
            Err(ureq::Error::Status(c, _)) => c,
            Err(e) => panic!("POST /debug/panic: {e}"),
        }
    };
    assert_eq!(post(""), 401, "no token");
    assert_eq!(post(&reader), 403, "a token without admin");
    assert_eq!(post(&admin), 200, "an admin token");
}

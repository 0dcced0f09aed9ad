//! A partitioned aggregator set: two TLA/SQL nodes on their own loopback addresses, one per
//! partition. A node asked for the other partition's table redirects (307, Location, a JSON
//! body naming the partition's host) instead of fetching it; the `query` client follows the
//! redirect and prints the answer; a query over both partitions' tables is refused. The
//! `query` command and the library it is built on (`query_client::sql::SqlClient`) are
//! both run.

use std::process::Command;
use std::time::Duration;

use query_client::sql::{Lookup, SqlClient, SqlError};
use query_integration::{queryd_bin, Node, Workspace};

const LIMIT: Duration = Duration::from_secs(60);

/// A TLA/SQL node of partition `partition`, returned once it answers for `own` (one of
/// its tables).
fn node(ws: &Workspace, name: &str, ip: &str, http: &str, partition: &str, own: &str) -> Node {
    let config = ws.path(&format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[paths]\nschemas = \"schemas\"\nstatic_tables = \"static-tables/index.toml\"\nviews = \"views.toml\"\n\n\
             [node]\nmachine_ip = \"{ip}\"\ncluster = \"{name}\"\n\n\
             [generation]\ninterval = \"1s\"\noffset = \"100ms\"\n\n\
             [requests]\nwait = \"20s\"\n\n\
             [aggregator_set]\nfile = \"sets.toml\"\nname = \"main\"\npartition = \"{partition}\"\n"
        ),
    )
    .expect("write config");
    let n = Node::start(&[
        "tla-sql",
        "--config",
        config.to_str().expect("utf8 path"),
        "--listen",
        http,
    ]);
    // The partition's own tables are prewarmed: there from the first generations on.
    let q = format!("SELECT COUNT(*) FROM {own}");
    n.eventually(LIMIT, "the node's own tables", || {
        (n.sql(&q).0 == 200).then_some(())
    });
    n
}

#[test]
fn another_partitions_table_is_a_redirect_the_client_follows() {
    let ws = Workspace::new();
    let (a_http, b_http) = ("127.0.61.1:18401", "127.0.61.2:18402");
    std::fs::write(
        ws.path("sets.toml"),
        format!(
            "[[set]]\nname = \"main\"\nsql_name = \"sql.main.test\"\ntla_name = \"tla.main.test\"\n\n\
             [[set.partition]]\nname = \"core\"\nhostname = \"{a_http}\"\ntables = [\"sys\", \"filesystem\"]\n\n\
             [[set.partition]]\nname = \"procs\"\nhostname = \"{b_http}\"\ntables = [\"processes\"]\n"
        ),
    )
    .expect("write sets");
    let a = node(&ws, "a", "127.0.61.1", a_http, "core", "sys");
    let _b = node(&ws, "b", "127.0.61.2", b_http, "procs", "processes");

    // At A, processes belongs to the other partition.
    let (status, body) = a.sql("SELECT COUNT(*) FROM processes");
    assert_eq!(status, 307, "{body}");
    assert_eq!(body["error"]["code"], "other_partition", "{body}");
    assert_eq!(body["redirect"]["partition"], "procs", "{body}");
    assert_eq!(body["redirect"]["host"], b_http, "{body}");

    // The client follows it and answers from B.
    let query = queryd_bin().with_file_name("query");
    let out = Command::new(&query)
        .args(["-H", a_http, "--format", "csv"])
        .arg("SELECT machine_ip, COUNT(*) > 0 AS has_rows FROM processes GROUP BY machine_ip")
        .output()
        .expect("run query");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "query: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("127.0.61.2,true"),
        "answered by B: {stdout}"
    );
    // The library does the same.
    let client = SqlClient::new(Lookup::system(), LIMIT, None);
    let answer = client
        .query(
            a_http,
            "SELECT machine_ip FROM processes GROUP BY machine_ip",
        )
        .expect("the library follows the redirect");
    assert_eq!(answer.from.to_string(), b_http, "answered by B");
    assert_eq!(answer.columns, ["machine_ip"]);
    assert_eq!(answer.rows, [[serde_json::json!("127.0.61.2")]]);

    // Tables of both partitions together: no node holds them, a clear 400.
    let (status, body) =
        a.sql("SELECT COUNT(*) FROM sys, processes WHERE sys.machine_ip = processes.machine_ip");
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("different partitions")),
        "{body}"
    );
    // The client reports it as the query's fault: exit code 1.
    let out = Command::new(&query)
        .args(["-H", a_http])
        .arg("SELECT COUNT(*) FROM sys, processes WHERE sys.machine_ip = processes.machine_ip")
        .output()
        .expect("run query");
    assert_eq!(out.status.code(), Some(1));
    match client.query(
        a_http,
        "SELECT COUNT(*) FROM sys, processes WHERE sys.machine_ip = processes.machine_ip",
    ) {
        Err(e @ SqlError::Rejected { .. }) => assert_eq!(e.exit_code(), 1, "{e}"),
        other => panic!("the query's fault, not the node's: {other:?}"),
    }

    // Its own tables, and tables of no partition, A answers itself.
    let (status, body) = a.sql("SELECT COUNT(*) FROM sys");
    assert_eq!(status, 200, "{body}");
    let (status, body) = a.sql("SELECT COUNT(*) FROM network_interfaces");
    assert_eq!(status, 200, "{body}");

    // Live reconfiguration: processes moves to A's partition in the sets file; A answers
    // it itself from then on, without a restart (and B now redirects to A).
    let sets = ws.path("sets.toml");
    let text = std::fs::read_to_string(&sets).expect("read sets");
    std::fs::write(
        &sets,
        text.replace("\"filesystem\"]", "\"filesystem\", \"processes\"]")
            .replace("tables = [\"processes\"]", "tables = [\"load_info\"]"),
    )
    .expect("write sets");
    a.eventually(LIMIT, "A to answer processes itself", || {
        (a.sql("SELECT COUNT(*) FROM processes").0 == 200).then_some(())
    });
    // A broken edit keeps the running set.
    std::fs::write(&sets, "[[set]]\nname = ").expect("write sets");
    std::thread::sleep(Duration::from_secs(1));
    let (status, body) = a.sql("SELECT COUNT(*) FROM processes");
    assert_eq!(status, 200, "{body}");
    assert_eq!(a.sql("SELECT COUNT(*) FROM load_info").0, 307);
}

/// The whole set behind real DNS (dnsmasq): names re-resolved, 500 client queries while a
/// SQL node is SIGKILLed, the TLA in use killed (answers go on, then the node switches),
/// a TLA cut off from a cluster (its SQL nodes move to the TLA that sees more), a proxy
/// killed (its TLAs use the cluster's other proxy), and a partition redirect.
#[test]
fn an_aggregator_set_rides_out_node_deaths_and_a_partition() {
    use query_integration::set_fleet::{tla_link, SetFleet, MACHINES, SQL_PORT, TLAS};
    use std::time::Instant;

    let mut fleet = SetFleet::start();
    let sql_name = format!("sql.main.test:{SQL_PORT}");
    let count_sys = "SELECT COUNT(*) AS n FROM sys";

    // Every SQL node found the only TLA the name had, and sees the whole fleet.
    for s in 0..3 {
        assert_eq!(
            fleet.current_tla(s),
            Some(tla_link(0)),
            "{}",
            fleet.health(s)
        );
    }

    // Re-resolution: the second TLA joins the name; every SQL node learns it without a
    // restart, and stays where it is (both see every cluster).
    fleet.dns.set("tla.main.test", &TLAS);
    for s in 0..3 {
        let node = fleet.sql(s);
        node.eventually(LIMIT, "the new TLA among the candidates", || {
            let h = node.get_json("/health");
            let c = h["tla"]["candidates"].as_array()?.clone();
            (c.len() == 2 && c.iter().all(|c| c["clusters"] == 2)).then_some(())
        });
        assert_eq!(fleet.current_tla(s), Some(tla_link(0)));
    }

    // A table of the other partition: a node of `core` redirects, the client follows.
    let (status, body) = fleet.sql(0).sql("SELECT COUNT(*) FROM processes");
    assert_eq!(status, 307, "{body}");
    assert_eq!(
        body["redirect"]["host"],
        format!("sql-procs.main.test:{SQL_PORT}"),
        "{body}"
    );
    let (code, out, err) = fleet.query(
        &sql_name,
        "SELECT COUNT(DISTINCT machine_ip) AS machines FROM processes",
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.trim(), format!("machines\n{MACHINES}"), "{err}");

    // 500 queries through the set's name while SQL node 1 is SIGKILLed: none fails. Two
    // threads run the `query` command, two share one library client.
    let client = SqlClient::new(Lookup::new(Some(fleet.dns.server)), LIMIT, None);
    let victim = fleet.sqls[0].take();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let t0 = Instant::now();
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for thread in 0..4 {
            let (fleet, client, sql_name, failures, done) =
                (&fleet, &client, &sql_name, &failures, &done);
            scope.spawn(move || {
                for _ in 0..125 {
                    let failed = if thread < 2 {
                        let (code, out, err) = fleet.query(sql_name, count_sys);
                        (code != Some(0) || out.trim() != format!("n\n{MACHINES}"))
                            .then(|| format!("query {code:?}: {out}{err}"))
                    } else {
                        match client.query(sql_name, count_sys) {
                            Ok(a) if a.rows == [[serde_json::json!(MACHINES)]] => None,
                            other => Some(format!("library: {other:?}")),
                        }
                    };
                    if let Some(f) = failed {
                        failures.lock().expect("lock").push(f);
                    }
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
        while done.load(std::sync::atomic::Ordering::SeqCst) < 100 {
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(victim); // SIGKILL
        eprintln!(
            "SQL node 1 killed after {} of 500 queries",
            done.load(std::sync::atomic::Ordering::SeqCst)
        );
    });
    eprintln!("500 queries in {:?}", t0.elapsed());
    let failures = failures.into_inner().expect("lock");
    assert!(
        failures.is_empty(),
        "{} of 500 failed: {failures:?}",
        failures.len()
    );

    // The TLA SQL node 2 uses is killed: it keeps answering from its last generation
    // (older and older), then switches to the other TLA and is fresh again.
    let killed = fleet.tlas.iter().position(|t| t.is_some()).expect("a TLA");
    assert_eq!(fleet.current_tla(1), Some(tla_link(killed)));
    let other = tla_link(1 - killed);
    let t0 = Instant::now();
    drop(fleet.tlas[killed].take());
    let mut stale_answers = 0;
    let switched = fleet
        .sql(1)
        .eventually(LIMIT, "the switch to the other TLA", || {
            let (status, body) = fleet.sql(1).sql(count_sys);
            assert_eq!(status, 200, "answers go on while the TLA is gone: {body}");
            assert_eq!(body["rows"][0][0], MACHINES as u64, "{body}");
            if body["generation"]["age_ms"]
                .as_u64()
                .is_some_and(|a| a > 1000)
            {
                stale_answers += 1;
            }
            (fleet.current_tla(1) == Some(other.clone())).then(|| t0.elapsed())
        });
    let h = fleet.health(1);
    assert!(h["tla"]["switches"].as_u64() >= Some(1), "{h}");
    fleet.until_all_machines(1, LIMIT);
    eprintln!("TLA killed: switched after {switched:?} ({stale_answers} answers from the old generation meanwhile)");

    // Bring the dead TLA back; SQL nodes stay where they are (equal clusters).
    fleet.tlas[killed] = Some(fleet.start_tla(killed));
    fleet
        .sql(1)
        .eventually(LIMIT, "the restarted TLA seen again", || {
            let h = fleet.health(1);
            let c = h["tla"]["candidates"].as_array()?.clone();
            c.iter()
                .all(|c| c["clusters"] == 2 && c["failed_probes"] == 0)
                .then_some(())
        });
    assert_eq!(fleet.current_tla(1), Some(other.clone()));

    // The TLA in use is cut off from cluster 2 (its relays to that cluster's proxies
    // break): it advertises one cluster, and the SQL nodes move to the one that sees two.
    let cut = 1 - killed;
    let t0 = Instant::now();
    for r in &fleet.relays[cut] {
        r.cut();
    }
    for s in 1..3 {
        let node = fleet.sql(s);
        let took = node.eventually(LIMIT, "the move to the TLA seeing more clusters", || {
            (fleet.current_tla(s) == Some(tla_link(killed))).then(|| t0.elapsed())
        });
        eprintln!("TLA cut off from a cluster: SQL node {s} switched after {took:?}");
    }
    let h = fleet.tla(cut).get_json("/health");
    assert_eq!(
        h["clusters"], 1,
        "the cut-off TLA advertises what it sees: {h}"
    );
    fleet.until_all_machines(1, LIMIT);
    for r in &fleet.relays[cut] {
        r.restore();
    }

    // A cluster proxy dies: the TLAs that used it move to its cluster's other proxy, and
    // no cluster is dropped.
    drop(fleet.proxies[0].take());
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        let h = fleet.tla(killed).get_json("/health");
        assert_eq!(
            h["clusters"], 2,
            "cluster 1 still seen through its other proxy: {h}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    fleet.until_all_machines(1, LIMIT);
    let (code, out, err) = fleet.query(&sql_name, count_sys);
    assert_eq!(
        (code, out.trim()),
        (Some(0), format!("n\n{MACHINES}").as_str()),
        "{err}"
    );

    // Live reconfiguration of TLA selection: SQL node 2 is pinned to the TLA it does not
    // use by an edit of its config file, and moves there without a restart.
    let using = fleet.current_tla(1).expect("a TLA in use");
    let other = if using == tla_link(0) {
        tla_link(1)
    } else {
        tla_link(0)
    };
    let config = fleet.ws.path("sql1.toml");
    let text = std::fs::read_to_string(&config).expect("read sql1.toml");
    std::fs::write(
        &config,
        text.replace(
            "fail_after = 2\n",
            &format!("fail_after = 2\npin = [\"{other}\"]\n"),
        ),
    )
    .expect("write sql1.toml");
    fleet.sql(1).eventually(LIMIT, "the pinned TLA", || {
        (fleet.current_tla(1) == Some(other.clone())).then_some(())
    });
    fleet.until_all_machines(1, LIMIT);
}

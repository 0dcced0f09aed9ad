//! The whole hierarchy as separate `queryd` processes on loopback: 6 edges (each its own
//! 127.0.k.x address, publishing its own rows) in 2 clusters → 2 cluster proxies → a TLA →
//! a SQL node. Everything is checked through the nodes' HTTP APIs: rows of every machine
//! reach the SQL node; a table first queried there is requested through every tier and
//! expires after its ttl; killed edges, proxies and TLAs drop out and come back; and
//! unchanged data costs a small fraction of a full copy on every link.
//!
//! Every test starts its own fleet on its own 127.0.k.0/24 block (tests run in parallel);
//! every process is killed when its test ends, passed or failed.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use query_client::protocol::Row;
use query_client::{ClientError, Publisher};
use query_integration::fleet::{Fleet, FleetSpec};
use query_integration::Node;
use serde_json::{json, Value};

/// How long any one expected state may take to appear. Generous: the machine is small and
/// shared; nothing here asserts on speed.
const LIMIT: Duration = Duration::from_secs(60);

const EDGES_PER_CLUSTER: usize = 3;

/// How a test's fleet differs from the others.
struct Options {
    /// The fleet lives on 127.0.`block`.0/24.
    block: u8,
    /// Edges publish this machine's sys, processes, ... (stamped with their own address).
    host: bool,
    /// The SQL node's prewarm list.
    prewarm: &'static [&'static str],
    /// `[link] drop_after` at every parent.
    drop_after: &'static str,
    /// Rows of `load_info.csv` dropped into every edge's file-drop directory (0: none).
    dropped_load_rows: usize,
    /// Every tier prewarms the SQL node's tables too, and the tiers start one after the
    /// other, each once the one below serves those tables from all its machines: the first
    /// frame of every link then carries them (a full copy). Otherwise every node starts at
    /// once and only the SQL node prewarms (tables flow down as requests after connecting).
    bottom_up: bool,
    /// A table edge 0 has no schema for (an older agent): it never provides it.
    edge0_lacks: Option<&'static str>,
}

/// Starts a fleet of 2 clusters × 3 edges at a 1 s interval with a 3 s request ttl.
fn start_fleet(o: Options) -> Fleet {
    let mut spec = FleetSpec::new(o.block);
    spec.edges_per_cluster = EDGES_PER_CLUSTER;
    spec.reload_every = "200ms";
    spec.drop_after = o.drop_after;
    spec.compression = "lz4";
    spec.request_ttl = "3s";
    spec.sql_wait = "45s";
    spec.host = o.host;
    spec.prewarm = o.prewarm.iter().map(|t| t.to_string()).collect();
    spec.prewarm_every_tier = o.bottom_up;
    let mut fleet = Fleet::new(spec);
    if let Some(table) = o.edge0_lacks {
        let own = fleet.ws.path("schemas-edge-0");
        std::fs::create_dir_all(&own).expect("mkdir");
        for e in std::fs::read_dir(fleet.ws.path("schemas")).expect("schemas") {
            let e = e.expect("entry");
            if e.file_name() != *format!("{table}.toml") {
                std::fs::copy(e.path(), own.join(e.file_name())).expect("copy");
            }
        }
        let config = fleet.ws.path("edge-0.toml");
        let text = std::fs::read_to_string(&config).expect("edge-0.toml");
        let changed = text.replace("schemas = \"schemas\"", "schemas = \"schemas-edge-0\"");
        assert_ne!(text, changed, "edge-0.toml names its schemas");
        std::fs::write(&config, changed).expect("write");
    }
    if o.dropped_load_rows > 0 {
        for n in 0..fleet.edges.len() {
            std::fs::write(
                fleet.drop_dir(n).join("load_info.csv"),
                load_csv(n, o.dropped_load_rows),
            )
            .expect("write load_info.csv");
        }
    }
    if o.bottom_up {
        fleet.start_bottom_up(|node, machines| {
            for t in o.prewarm {
                let q = format!("SELECT COUNT(DISTINCT machine_ip) FROM {t}");
                node.eventually(
                    LIMIT,
                    &format!("{} to serve {t} of {machines} machines", node.url("")),
                    || (node.sql(&q).1["rows"] == json!([[machines]])).then_some(()),
                );
            }
        });
    } else {
        fleet.start_all();
    }
    fleet
}

/// A fleet whose edges publish their host tables, the SQL node prewarming `sys`, started
/// all at once; returns once every edge's `sys` row is at the SQL node, with the edges'
/// addresses.
fn sys_fleet(block: u8, drop_after: &'static str) -> (Fleet, Vec<String>) {
    let fleet = start_fleet(Options {
        block,
        host: true,
        prewarm: &["sys"],
        drop_after,
        dropped_load_rows: 0,
        bottom_up: false,
        edge0_lacks: None,
    });
    let edges = all_edge_ips(&fleet);
    until_sys_machines(&fleet, &edges, "every edge's sys row at the SQL node");
    (fleet, edges)
}

fn all_edge_ips(fleet: &Fleet) -> Vec<String> {
    fleet.edge_ips(0..fleet.edges.len())
}

/// Waits until `SELECT machine_ip FROM sys` at the SQL node lists exactly `ips`.
#[track_caller]
fn until_sys_machines(fleet: &Fleet, ips: &[String], what: &str) {
    let sql = fleet.sql();
    let mut last = Value::Null;
    let q = "SELECT machine_ip FROM sys ORDER BY machine_ip";
    let seen = sql.eventually(LIMIT, what, || {
        let (status, answer) = sql.sql(q);
        if status != 200 {
            last = answer;
            return None;
        }
        let got = first_column(&answer);
        last = answer;
        (got == ips).then_some(got)
    });
    assert_eq!(seen, ips, "{what}: {last}");
}

/// `load_info.csv` for edge `n`: `rows` rows of varied values, the same on every read.
fn load_csv(n: usize, rows: usize) -> String {
    let mut out = String::from("georegion,hits,bytes,errors\n");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (n as u64 + 1);
    for g in 0..rows {
        // xorshift: values compress like real counters, not like a constant column.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let hits = x % 100_000;
        out.push_str(&format!(
            "{},{hits},{},{}\n",
            g + 1,
            hits * (x % 1000 + 1),
            (x >> 20) % 50
        ));
    }
    out
}

fn first_column(answer: &Value) -> Vec<String> {
    answer["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| r[0].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn health(node: &Node) -> Value {
    node.get_json("/health")
}

fn requested(node: &Node) -> BTreeSet<String> {
    health(node)["requested_tables"]
        .as_array()
        .expect("requested_tables")
        .iter()
        .filter_map(|t| t.as_str().map(String::from))
        .collect()
}

fn listed_tables(node: &Node) -> BTreeSet<String> {
    node.get_json("/tables")["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .filter_map(|t| t["name"].as_str().map(String::from))
        .collect()
}

fn load_rows(rows: Value) -> Vec<Row> {
    rows.as_array()
        .expect("array")
        .iter()
        .map(|r| r.as_object().expect("object").clone())
        .collect()
}

/// A publisher on an edge's socket that offers `load_info` and publishes it every 200 ms
/// while the agent wants it (a publish of an unwanted table is refused; the refusal, like
/// every reply, brings the agent's current `want`).
struct LoadPublisher {
    stop: Arc<AtomicBool>,
    /// Every `want` the publisher has seen, in order (deduplicated consecutive).
    wants: Arc<Mutex<Vec<Vec<String>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LoadPublisher {
    fn start(socket: PathBuf, rows: Vec<Row>) -> LoadPublisher {
        let stop = Arc::new(AtomicBool::new(false));
        let wants = Arc::new(Mutex::new(Vec::new()));
        let mut p = Publisher::connect_unix(&socket, "hierarchy-test", &["load_info"])
            .expect("publisher hello");
        let (s, w) = (stop.clone(), wants.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match p.publish("load_info", rows.clone()) {
                    Ok(_) | Err(ClientError::Refused(_)) => {}
                    Err(e) => panic!("publisher lost the agent: {e}"),
                }
                let now = p.wanted().to_vec();
                let mut seen = w.lock().expect("lock");
                if seen.last() != Some(&now) {
                    seen.push(now);
                }
                drop(seen);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        LoadPublisher {
            stop,
            wants,
            thread: Some(thread),
        }
    }

    fn wants(&self) -> Vec<Vec<String>> {
        self.wants.lock().expect("lock").clone()
    }
}

impl Drop for LoadPublisher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn has(list: &[String], table: &str) -> bool {
    list.iter().any(|t| t == table)
}

/// Tests 1 and 2: every machine's rows arrive; the TLA sees both clusters; tables first
/// queried at the SQL node are requested through every tier and expire after the ttl.
#[test]
fn every_machine_arrives_and_queried_tables_come_and_go() {
    let (fleet, edges) = sys_fleet(41, "5s");
    let sql = fleet.sql();

    let tla = fleet.tla.node();
    tla.eventually(LIMIT, "the TLA to see 2 clusters and 6 machines", || {
        let h = health(tla);
        (h["clusters"] == 2 && h["machines"] == 6).then_some(())
    });
    let h = health(tla);
    assert_eq!(h["role"], "tla", "{h}");
    assert_eq!(
        h["children"],
        json!({"configured": 2, "connected": 2}),
        "{h}"
    );
    sql.eventually(LIMIT, "the SQL node to report what its TLA sees", || {
        let h = health(sql);
        (h["clusters"] == 2 && h["machines"] == 6).then_some(())
    });
    for (i, p) in fleet.proxies.iter().enumerate() {
        let h = health(p.node());
        assert_eq!(h["role"], "cluster-proxy", "{h}");
        assert_eq!(h["clusters"], 1, "proxy {i}: {h}");
    }

    // Neither processes nor load_info is requested anywhere yet.
    for m in fleet.members() {
        let r = requested(m.node());
        assert!(
            !r.contains("processes") && !r.contains("load_info"),
            "{} requests {r:?} before any query",
            m.ip
        );
    }
    let listed = listed_tables(sql);
    assert!(listed.contains("sys"), "{listed:?}");
    assert!(!listed.contains("processes"), "{listed:?}");

    // processes: published by every edge's host publisher once requested. The first
    // query waits for the first generation holding it and answers with edges' rows.
    let q =
        "SELECT machine_ip, COUNT(*) AS n FROM processes GROUP BY machine_ip ORDER BY machine_ip";
    let (status, answer) = sql.sql(q);
    assert_eq!(status, 200, "first query of processes: {answer}");
    let first = first_column(&answer);
    assert!(!first.is_empty(), "rows from the edges: {answer}");
    assert!(
        first.iter().all(|ip| edges.contains(ip)),
        "only edges publish processes: {answer}"
    );
    sql.eventually(LIMIT, "processes of all 6 machines", || {
        (first_column(&sql.sql(q).1) == edges).then_some(())
    });

    // load_info: published by a test publisher on one edge's socket, only once wanted.
    let edge = &fleet.edges[4];
    let published = load_rows(json!([
        {"georegion": 1, "hits": 100, "bytes": 1000, "errors": 1},
        {"georegion": 2, "hits": 200, "bytes": 2000, "errors": 2},
    ]));
    let publisher = LoadPublisher::start(fleet.socket(4), published);
    let q = "SELECT machine_ip, georegion, hits, bytes, errors FROM load_info ORDER BY georegion";
    let (status, answer) = sql.sql(q);
    assert_eq!(status, 200, "first query of load_info: {answer}");
    let expected = json!([[edge.ip, 1, 100, 1000, 1], [edge.ip, 2, 200, 2000, 2],]);
    // The first generation holding load_info may precede the publisher's first copy (it
    // learns of the request from the agent); the rows follow.
    sql.eventually(LIMIT, "the publisher's rows at the SQL node", || {
        (sql.sql(q).1["rows"] == expected).then_some(())
    });
    assert!(
        publisher.wants().iter().any(|w| has(w, "load_info")),
        "the agent told the publisher: {:?}",
        publisher.wants()
    );

    // No more queries: after the ttl both tables leave every request list, the SQL node's
    // generation and the publisher's want.
    for m in fleet.members() {
        let node = m.node();
        node.eventually(LIMIT, &format!("{} to stop requesting", m.ip), || {
            let r = requested(node);
            (!r.contains("processes") && !r.contains("load_info")).then_some(())
        });
    }
    assert!(requested(sql).contains("sys"), "prewarmed tables stay");
    sql.eventually(LIMIT, "GET /tables without the expired tables", || {
        let listed = listed_tables(sql);
        (!listed.contains("processes") && !listed.contains("load_info")).then_some(listed)
    });
    assert!(listed_tables(sql).contains("sys"));
    sql.eventually(
        LIMIT,
        "the publisher to be told load_info is no longer wanted",
        || {
            let wants = publisher.wants();
            wants
                .last()
                .is_some_and(|w| !has(w, "load_info"))
                .then_some(())
        },
    );
    let (status, answer) = sql.sql("SELECT COUNT(*) FROM sys");
    assert_eq!(status, 200, "{answer}");
}

/// Test 3: a killed edge's rows vanish after `drop_after` (listed in `query_departed` with
/// its last `sys` row meanwhile) and return when it restarts.
#[test]
fn a_killed_edge_drops_out_and_returns() {
    let (mut fleet, all) = sys_fleet(42, "2s");

    fleet.edges[1].kill();
    let rest: Vec<String> = all
        .iter()
        .filter(|ip| **ip != fleet.edges[1].ip)
        .cloned()
        .collect();
    until_sys_machines(&fleet, &rest, "the killed edge's rows to vanish");
    let proxy = fleet.proxies[0].node();
    proxy.eventually(LIMIT, "its proxy to count 2 machines", || {
        (health(proxy)["machines"] == 2).then_some(())
    });
    let sql = fleet.sql();
    sql.eventually(LIMIT, "the SQL node to count 5 machines", || {
        (health(sql)["machines"] == 5).then_some(())
    });

    // Its last known state: one query at the SQL node (OSR 2.3's departed machines).
    let departed = "SELECT kind, machine, last_sys LIKE '%\"machine_ip\"%' AS has_sys, \
                    dropped_at >= last_heard AS ordered FROM query_departed";
    let gone = json!([["machine", fleet.edges[1].ip, true, true]]);
    sql.eventually(LIMIT, "the killed edge in query_departed", || {
        (sql.sql(departed).1["rows"] == gone).then_some(())
    });

    fleet.edges[1].start();
    until_sys_machines(&fleet, &all, "the restarted edge's rows to return");
    let sql = fleet.sql();
    sql.eventually(LIMIT, "the returned edge to leave query_departed", || {
        (sql.sql(departed).1["rows"] == json!([])).then_some(())
    });
    let proxy = fleet.proxies[0].node();
    proxy.eventually(LIMIT, "its proxy to count 3 machines again", || {
        (health(proxy)["machines"] == 3).then_some(())
    });
}

/// Per-table drop (OSR 2.3): edge 0 is alive and sends `sys` every interval but never
/// provides `load_info` (its agent has no schema for it). Its proxy holds the table back
/// (carried, so no answer mixes fresh and missing rows) only for `drop_after`; then edge 0
/// stops counting for that table alone: every other machine's `load_info` flows to the SQL
/// node, edge 0's `sys` row stays, and `query_links` names the dropped table.
#[test]
fn a_child_that_never_provides_a_table_is_dropped_for_it_alone() {
    let fleet = start_fleet(Options {
        block: 46,
        host: true,
        prewarm: &["sys", "load_info"],
        drop_after: "2s",
        dropped_load_rows: 3,
        bottom_up: false,
        edge0_lacks: Some("load_info"),
    });
    let sql = fleet.sql();
    let others = fleet.edge_ips(1..fleet.edges.len());
    let q = "SELECT DISTINCT machine_ip FROM load_info ORDER BY machine_ip";
    sql.eventually(LIMIT, "load_info of the five other machines", || {
        let (status, answer) = sql.sql(q);
        (status == 200 && first_column(&answer) == others).then_some(())
    });
    until_sys_machines(&fleet, &all_edge_ips(&fleet), "edge 0 still counts for sys");
    let q = "SELECT peer, live, tables_dropped FROM query_links \
             WHERE direction = 'child' AND tables_dropped IS NOT NULL";
    let edge0 = format!("{}:", fleet.edges[0].ip);
    sql.eventually(LIMIT, "query_links naming edge 0's dropped table", || {
        let (status, answer) = sql.sql(q);
        let rows = answer["rows"].as_array()?.clone();
        (status == 200
            && rows.len() == 1
            && rows[0][0].as_str().is_some_and(|p| p.starts_with(&edge0))
            && rows[0][1] == true
            && rows[0][2] == "load_info")
            .then_some(())
    });
}

/// An aggregator set's span: the TLA of a set spanning cluster 0 only dials cluster 0's
/// proxy; the SQL node sees that cluster's machines and the TLA counts one cluster.
#[test]
fn a_tla_aggregates_the_clusters_of_its_sets_span_only() {
    let mut spec = FleetSpec::new(47);
    spec.edges_per_cluster = EDGES_PER_CLUSTER;
    spec.reload_every = "200ms";
    spec.drop_after = "5s";
    spec.sql_wait = "45s";
    spec.host = true;
    spec.prewarm = vec!["sys".to_string()];
    let mut fleet = Fleet::new(spec);
    let cluster0 = fleet.proxies[0].link.clone().expect("proxy link");
    std::fs::write(
        fleet.ws.path("sets.toml"),
        format!(
            "[[set]]\nname = \"eu\"\nspan = [\"{cluster0}\"]\nsql_name = \"sql.eu.test\"\ntla_name = \"tla.eu.test:7500\"\n"
        ),
    )
    .expect("write sets");
    let config = fleet.ws.path("tla.toml");
    let text = std::fs::read_to_string(&config).expect("tla.toml");
    std::fs::write(
        &config,
        text + "\n[aggregator_set]\nfile = \"sets.toml\"\nname = \"eu\"\n",
    )
    .expect("write tla.toml");
    fleet.start_all();

    let cluster0_machines = fleet.edge_ips(0..EDGES_PER_CLUSTER);
    until_sys_machines(&fleet, &cluster0_machines, "cluster 0's machines only");
    let tla = fleet.tla.node();
    let h = health(tla);
    assert_eq!(h["clusters"], 1, "{h}");
    assert_eq!(h["children"]["configured"], 1, "{h}");
    // Cluster 1's machines never arrive.
    std::thread::sleep(Duration::from_secs(2));
    until_sys_machines(
        &fleet,
        &cluster0_machines,
        "still cluster 0's machines only",
    );

    // The span edited live: cluster 1 instead of cluster 0, then every cluster.
    let cluster1 = fleet.proxies[1].link.clone().expect("proxy link");
    let sets = |span: &str| {
        std::fs::write(
            fleet.ws.path("sets.toml"),
            format!(
                "[[set]]\nname = \"eu\"\nspan = {span}\nsql_name = \"sql.eu.test\"\ntla_name = \"tla.eu.test:7500\"\n"
            ),
        )
        .expect("write sets");
    };
    sets(&format!("[\"{cluster1}\"]"));
    let cluster1_machines = fleet.edge_ips(EDGES_PER_CLUSTER..2 * EDGES_PER_CLUSTER);
    until_sys_machines(
        &fleet,
        &cluster1_machines,
        "cluster 1's machines after the edit",
    );
    let h = health(fleet.tla.node());
    assert_eq!(h["children"]["configured"], 1, "{h}");
    sets("[\"*\"]");
    let all = fleet.edge_ips(0..2 * EDGES_PER_CLUSTER);
    until_sys_machines(&fleet, &all, "every cluster's machines");
    // Polled: under load a cluster's frame may miss one round's seal after the SQL node
    // already answered with both clusters (the TLA counts those of its last generation).
    let tla = fleet.tla.node();
    tla.eventually(LIMIT, "the TLA to count both clusters", || {
        (health(tla)["clusters"] == 2).then_some(())
    });
}

/// Test 4: a killed and restarted proxy, then a killed and restarted TLA, are dialled
/// again and answers resume with all 6 machines.
#[test]
fn killed_proxy_and_tla_are_reconnected() {
    let (mut fleet, all) = sys_fleet(43, "2s");

    // The proxy of cluster 0.
    fleet.proxies[0].kill();
    let tla = fleet.tla.node();
    tla.eventually(LIMIT, "the TLA to drop the killed proxy's cluster", || {
        let h = health(tla);
        (h["clusters"] == 1 && h["children"]["connected"] == 1).then_some(())
    });
    let cluster1 = fleet.edge_ips(EDGES_PER_CLUSTER..2 * EDGES_PER_CLUSTER);
    until_sys_machines(&fleet, &cluster1, "only cluster 1's machines");

    fleet.proxies[0].start();
    let tla = fleet.tla.node();
    tla.eventually(LIMIT, "the TLA to dial the restarted proxy", || {
        let h = health(tla);
        (h["clusters"] == 2 && h["children"]["connected"] == 2 && h["machines"] == 6).then_some(())
    });
    until_sys_machines(&fleet, &all, "all 6 machines after the proxy's restart");

    // The TLA.
    fleet.tla.kill();
    let sql = fleet.sql();
    sql.eventually(LIMIT, "the SQL node to drop the killed TLA", || {
        let h = health(sql);
        (h["clusters"] == 0 && h["children"]["connected"] == 0).then_some(())
    });
    fleet.tla.start();
    let sql = fleet.sql();
    sql.eventually(LIMIT, "the SQL node to dial the restarted TLA", || {
        let h = health(sql);
        (h["clusters"] == 2 && h["machines"] == 6 && h["children"]["connected"] == 1).then_some(())
    });
    until_sys_machines(&fleet, &all, "all 6 machines after the TLA's restart");
    let h = health(fleet.tla.node());
    assert_eq!(
        h["children"],
        json!({"configured": 2, "connected": 2}),
        "{h}"
    );
}

/// Test 5: after the first generation, unchanged data costs at most 10% of a full copy on
/// every link.
///
/// The edges publish only a dropped `load_info.csv` (host publisher off), identical every
/// generation. The fleet starts bottom-up with `load_info` prewarmed at every tier, so
/// the first (full) frame of every link is a full copy of it.
#[test]
fn unchanged_data_costs_a_fraction_of_a_full_copy_on_every_link() {
    let fleet = start_fleet(Options {
        block: 44,
        host: false,
        prewarm: &["load_info"],
        drop_after: "10s",
        dropped_load_rows: LOAD_ROWS,
        bottom_up: true,
        edge0_lacks: None,
    });
    assert_unchanged_data_is_cheap(&fleet);
}

/// Test 5 as a fleet normally starts: every node at once, only the SQL node prewarms, so
/// `load_info` is requested down the links after they connect. Unchanged data must cost
/// as little here, measured against the full copy of what each link carries.
///
/// Here the first frame of each connection holds no tables (sent before the request
/// arrived); the yardstick is the frame in which the tables arrived with all their rows
/// (`last_full_frame_bytes`: the last frame that sent every part in full).
#[test]
fn unchanged_data_is_cheap_when_tables_are_requested_after_connecting() {
    let fleet = start_fleet(Options {
        block: 45,
        host: false,
        prewarm: &["load_info"],
        drop_after: "10s",
        dropped_load_rows: LOAD_ROWS,
        bottom_up: false,
        edge0_lacks: None,
    });
    assert_unchanged_data_is_cheap(&fleet);
}

const LOAD_ROWS: usize = 300;

/// Reads every link's sizes from `query_links` at the SQL node and checks that the last
/// frame is at most 10% of the last full frame on each link that carried more than 2.
///
/// `query_links` is itself a table that changes every generation (frame counters) and
/// travels the links once requested, so it is queried once, at the end, and only the
/// **parent** end of each link (the sender's count) is used. A node's rows in the first
/// generation that holds `query_links` were collected when it sealed its first generation
/// with that table; its parent link's last frame then is the one of its previous
/// generation, which did not carry `query_links` (unchanged `load_info` only). The child
/// ends in that same generation already describe the frames that brought `query_links`
/// up, so they measure a new table, not unchanged data.
fn assert_unchanged_data_is_cheap(fleet: &Fleet) {
    let sql = fleet.sql();
    let edges = all_edge_ips(fleet);
    let q = "SELECT machine_ip, COUNT(*) FROM load_info GROUP BY machine_ip ORDER BY machine_ip";
    let expected: Vec<Value> = edges.iter().map(|ip| json!([ip, LOAD_ROWS])).collect();
    sql.eventually(
        LIMIT,
        "every edge's dropped load_info at the SQL node",
        || (sql.sql(q).1["rows"] == json!(expected)).then_some(()),
    );

    // Let every node seal (and so send) at least 3 more generations on its links.
    let gen_id = |n: &Node| {
        health(n)["generation"]["id"]
            .as_u64()
            .expect("generation id")
    };
    let start: Vec<u64> = fleet.members().map(|m| gen_id(m.node())).collect();
    for (m, start) in fleet.members().zip(start) {
        let node = m.node();
        node.eventually(
            LIMIT,
            &format!("{} to seal 3 more generations", m.ip),
            || (gen_id(node) >= start + 3).then_some(()),
        );
    }

    for m in fleet.members() {
        assert!(
            !requested(m.node()).contains("query_links"),
            "{}: query_links is requested before the measurement",
            m.ip
        );
    }
    let (status, answer) = sql.sql(
        "SELECT node, direction, peer, frames, last_frame_bytes, last_full_frame_bytes \
         FROM query_links ORDER BY direction, node, peer",
    );
    assert_eq!(status, 200, "{answer}");
    let rows = answer["rows"].as_array().expect("rows").clone();
    let all_ends = serde_json::to_string(&rows).unwrap_or_default();
    let parents: Vec<&Value> = rows.iter().filter(|r| r[1] == "parent").collect();
    // 6 edges → their proxies, 2 proxies → the TLA, the TLA → the SQL node.
    let senders: BTreeSet<String> = parents
        .iter()
        .map(|r| r[0].as_str().unwrap_or_default().to_string())
        .collect();
    let expected_senders: BTreeSet<String> = fleet
        .members()
        .filter_map(|m| m.link.as_ref().map(|l| format!("{}@{l}", m.role)))
        .collect();
    assert_eq!(
        senders, expected_senders,
        "one parent end per link: {all_ends}"
    );
    assert_eq!(parents.len(), 9, "{all_ends}");
    let mut failures = Vec::new();
    for r in &parents {
        let frames = r[3].as_i64().expect("frames");
        let last = r[4].as_i64().expect("last_frame_bytes");
        let full = r[5].as_i64().expect("last_full_frame_bytes");
        assert!(frames > 2, "every link carried more than 2 frames: {r}");
        eprintln!(
            "{} -> {}: {frames} frames, last {last} B, last full {full} B",
            r[0], r[2]
        );
        if last * 10 > full {
            failures.push(format!(
                "{} -> {}: last frame {last} B, last full frame {full} B",
                r[0], r[2]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "unchanged data cost more than 10% of a full copy:\n{}\nall link ends (node, direction, peer, frames, last, last full): {all_ends}",
        failures.join("\n"),
    );
}

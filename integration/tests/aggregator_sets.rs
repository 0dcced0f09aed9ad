//! A partitioned aggregator set: two TLA/SQL nodes on their own loopback addresses, one per
//! partition. A node asked for the other partition's table redirects (307, Location, a JSON
//! body naming the partition's host) instead of fetching it; the `query` client follows the
//! redirect and prints the answer; a query over both partitions' tables is refused.

use std::process::Command;
use std::time::Duration;

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

    // Its own tables, and tables of no partition, A answers itself.
    let (status, body) = a.sql("SELECT COUNT(*) FROM sys");
    assert_eq!(status, 200, "{body}");
    let (status, body) = a.sql("SELECT COUNT(*) FROM network_interfaces");
    assert_eq!(status, 200, "{body}");
}

//! A real edge agent process (`queryd edge`) with publishers over its Unix socket:
//! well-formed, malformed, oversized, vanishing and too many of them; dropped files; the
//! host publisher; the `query publish` command and the Python example. Every effect is
//! checked through the node's HTTP API.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use query_client::protocol::Row;
use query_client::{ClientError, Publisher};
use query_integration::{Node, Workspace};
use serde_json::{json, Value};

struct Edge {
    node: Node,
    socket: PathBuf,
    drop_dir: PathBuf,
    _ws: Workspace,
}

fn start_edge() -> Edge {
    let ws = Workspace::new();
    let socket = ws.path("publish.sock");
    let drop_dir = ws.path("drop");
    let node = ws.start(
        "edge",
        &format!(
            r#"[node]
machine_ip = "127.0.0.9"

[generation]
interval = "300ms"
offset = "50ms"

[host]
roles = ["http"]

[edge]
socket = "{}"
prewarm = ["sys", "load_info", "machinerole"]
file_drop = "{}"
max_line_bytes = 4096
max_rows_per_publish = 20
max_publishers = 6
publisher_stale_after = "2s"
"#,
            socket.display(),
            drop_dir.display()
        ),
    );
    Edge {
        node,
        socket,
        drop_dir,
        _ws: ws,
    }
}

fn rows(v: Value) -> Vec<Row> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|r| r.as_object().expect("object").clone())
        .collect()
}

fn load(georegion: i64, hits: i64) -> Value {
    json!({"georegion": georegion, "hits": hits, "bytes": hits * 10, "errors": 0})
}

/// A raw connection, for what the client library would never send.
struct Raw {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Raw {
    fn connect(path: &Path) -> Raw {
        let s = UnixStream::connect(path).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Raw {
            w: s.try_clone().expect("clone"),
            r: BufReader::new(s),
        }
    }

    fn send(&mut self, line: &[u8]) {
        let _ = self.w.write_all(line);
        let _ = self.w.write_all(b"\n");
    }

    /// The next message, or None when the agent closed the connection.
    fn recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.r.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).expect("agent sends JSON")),
        }
    }
}

#[track_caller]
fn select(node: &Node, sql: &str) -> Value {
    let (status, answer) = node.sql(sql);
    assert_eq!(status, 200, "{sql}: {answer}");
    answer["rows"].clone()
}

/// Waits until `sql` returns `expected` (a later generation has sealed it).
#[track_caller]
fn until_rows(node: &Node, sql: &str, expected: Value) {
    node.eventually(Duration::from_secs(10), sql, || {
        (node.sql(sql).1["rows"] == expected).then_some(())
    });
}

#[test]
fn publishers_over_the_socket() {
    let edge = start_edge();
    let node = &edge.node;

    // Only wanted tables are asked for: processes is declared but not prewarmed.
    let mut a =
        Publisher::connect_unix(&edge.socket, "a", &["load_info", "processes"]).expect("hello");
    assert_eq!(a.wanted(), ["load_info"]);
    assert_eq!(
        a.publish("load_info", rows(json!([load(1, 100), load(2, 50)])))
            .expect("ok"),
        2
    );
    match a.publish("processes", Vec::new()) {
        Err(ClientError::Refused(e)) => assert!(e.message.contains("not requested"), "{e}"),
        other => panic!("unwanted table accepted: {other:?}"),
    }
    let q = "SELECT machine_ip, georegion, hits FROM load_info ORDER BY georegion";
    until_rows(
        node,
        q,
        json!([["127.0.0.9", 1, 100], ["127.0.0.9", 2, 50]]),
    );
    let (_, answer) = node.sql(q);
    assert_eq!(answer["tables"][0]["sources"], 1, "one publisher: {answer}");

    // A second publisher of the same table: rows are combined.
    let mut b = Publisher::connect_unix(&edge.socket, "b", &["load_info"]).expect("hello");
    b.publish("load_info", rows(json!([load(3, 7)])))
        .expect("ok");
    until_rows(node, "SELECT SUM(hits) FROM load_info", json!([[157]]));

    // Bad publishes are refused with table, row and column; the last good copy stays.
    for (bad, row, column) in [
        (
            json!([load(1, 1), {"georegion": "x", "hits": 1, "bytes": 1, "errors": 0}]),
            1,
            "georegion",
        ),
        (
            json!([{"georegion": 1, "bytes": 1, "errors": 0}]),
            0,
            "hits",
        ),
        (
            json!([{"georegion": 1, "hits": 1, "bytes": 1, "errors": 0, "colour": "red"}]),
            0,
            "colour",
        ),
        (
            json!([{"machine_ip": "6.6.6.6", "georegion": 1, "hits": 1, "bytes": 1, "errors": 0}]),
            0,
            "machine_ip",
        ),
    ] {
        match a.publish("load_info", rows(bad)) {
            Err(ClientError::Refused(e)) => {
                assert_eq!(
                    (e.table.as_deref(), e.row, e.column.as_deref()),
                    (Some("load_info"), Some(row), Some(column)),
                    "{e}"
                );
            }
            other => panic!("bad publish accepted: {other:?}"),
        }
    }
    let too_many: Vec<Value> = (0..21).map(|i| load(1, i)).collect();
    assert!(matches!(
        a.publish("load_info", rows(Value::Array(too_many))),
        Err(ClientError::Refused(_))
    ));
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        select(node, "SELECT SUM(hits) FROM load_info"),
        json!([[157]]),
        "previous copies kept"
    );

    // Malformed JSON: an error, and the session goes on.
    let mut raw = Raw::connect(&edge.socket);
    raw.send(br#"{"hello": {"publisher": "raw", "tables": ["machinerole"]}}"#);
    assert_eq!(raw.recv(), Some(json!({"want": ["machinerole"]})));
    for junk in [
        &b"{not json"[..],
        b"[1,2]",
        b"\xff\xfe\x00",
        br#"{"publish": {"table": "machinerole"}}"#,
    ] {
        raw.send(junk);
        let reply = raw.recv().expect("still connected");
        assert!(
            reply["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("malformed") || m.contains("UTF-8")),
            "{reply}"
        );
    }
    raw.send(br#"{"publish": {"table": "machinerole", "rows": [{"role": "raw"}]}}"#);
    assert_eq!(
        raw.recv(),
        Some(json!({"ok": {"table": "machinerole", "rows": 1}}))
    );
    // Publishing before hello, and an undeclared table.
    let mut early = Raw::connect(&edge.socket);
    early.send(br#"{"publish": {"table": "machinerole", "rows": []}}"#);
    assert!(early.recv().expect("reply")["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("hello")));
    raw.send(br#"{"publish": {"table": "sys", "rows": []}}"#);
    assert!(raw.recv().expect("reply")["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("not declared")));
    // A hello with a table that has no schema is refused whole.
    let mut unknown = Raw::connect(&edge.socket);
    unknown.send(br#"{"hello": {"publisher": "u", "tables": ["nosuch"]}}"#);
    assert!(unknown.recv().expect("reply")["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("nosuch")));

    // Oversized line: an error, then the connection is closed cleanly.
    let mut big = Raw::connect(&edge.socket);
    big.send(&vec![b'x'; 10_000]);
    let reply = big.recv().expect("an error first");
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("4096")),
        "{reply}"
    );
    assert_eq!(big.recv(), None, "then closed");

    // Connection limit: 6. Open now: a, b and raw (early, unknown and big were closed).
    // A connection that never says hello makes room for a newcomer; when all six are
    // publishers that spoke recently, the newcomer is refused.
    drop(big);
    let hello = |name: &str| {
        let mut c = Raw::connect(&edge.socket);
        c.send(
            format!(r#"{{"hello": {{"publisher": "{name}", "tables": ["machinerole"]}}}}"#)
                .as_bytes(),
        );
        assert_eq!(c.recv(), Some(json!({"want": ["machinerole"]})));
        c
    };
    let mut silent = Raw::connect(&edge.socket);
    let _fifth = hello("fifth");
    let _sixth = hello("sixth");
    let _seventh = hello("seventh");
    let reply = silent.recv().expect("told why");
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("make room")),
        "{reply}"
    );
    assert_eq!(silent.recv(), None);
    // All six spoke within hello_timeout.
    a.publish("load_info", rows(json!([load(1, 100), load(2, 50)])))
        .expect("ok");
    b.publish("load_info", rows(json!([load(3, 7)])))
        .expect("ok");
    raw.send(br#"{"publish": {"table": "machinerole", "rows": [{"role": "raw"}]}}"#);
    assert!(raw.recv().is_some_and(|m| m.get("ok").is_some()));
    let mut eighth = Raw::connect(&edge.socket);
    let reply = eighth.recv().expect("error");
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("too many publishers")),
        "{reply}"
    );
    assert_eq!(eighth.recv(), None);

    // Everything else kept working; the node is alive.
    until_rows(
        node,
        "SELECT role FROM machinerole WHERE role = 'raw'",
        json!([["raw"]]),
    );

    // A vanishing publisher: its rows stay for publisher_stale_after (2 s), then leave,
    // while `a`, which keeps publishing, stays.
    a.publish("load_info", rows(json!([load(1, 100), load(2, 50)])))
        .expect("ok");
    b.publish("load_info", rows(json!([load(3, 7)])))
        .expect("ok");
    drop(b);
    std::thread::sleep(Duration::from_millis(800));
    a.publish("load_info", rows(json!([load(1, 100), load(2, 50)])))
        .expect("ok");
    assert_eq!(
        select(node, "SELECT SUM(hits) FROM load_info"),
        json!([[157]]),
        "kept while fresh"
    );
    node.eventually(Duration::from_secs(10), "b's rows to leave", || {
        a.publish("load_info", rows(json!([load(1, 100), load(2, 50)])))
            .ok()?;
        std::thread::sleep(Duration::from_millis(300));
        (node.sql("SELECT SUM(hits) FROM load_info").1["rows"] == json!([[150]])).then_some(())
    });
}

#[test]
fn file_drop_host_cli_and_python_publishers() {
    let edge = start_edge();
    let node = &edge.node;

    // The host publisher: this machine's sys, with the agent's machine_ip; processes is not
    // wanted, so it is not collected until a query at the agent requests it.
    until_rows(node, "SELECT machine_ip FROM sys", json!([["127.0.0.9"]]));
    let listed = node.get_json("/tables");
    assert!(
        !listed.to_string().contains("\"processes\""),
        "not collected before a query: {listed}"
    );
    let (status, answer) = node.sql("SELECT COUNT(*) > 0 FROM processes");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["rows"], json!([[true]]), "the host's processes");

    // Dropped files: CSV and JSONL published; a broken one reported, last good copy kept.
    std::fs::write(
        edge.drop_dir.join("machinerole.csv"),
        "role\n\"dns,edge\"\nweb\n",
    )
    .expect("write");
    until_rows(
        node,
        "SELECT role FROM machinerole WHERE role <> 'http' ORDER BY role",
        json!([["dns,edge"], ["web"]]),
    );
    std::fs::write(edge.drop_dir.join("machinerole.csv"), "rolle\nweb\n").expect("write");
    let tables = node.eventually(Duration::from_secs(10), "the file error in /tables", || {
        let t = node.get_json("/tables");
        t["errors"]
            .as_array()?
            .iter()
            .any(|e| e["kind"] == "publisher")
            .then_some(t)
    });
    // The error names the file and line, and does not quote the file.
    let text = tables.to_string();
    assert!(
        text.contains("machinerole.csv") && text.contains("line 1, field 1"),
        "{tables}"
    );
    assert!(!text.contains("rolle"), "{tables}");
    assert_eq!(
        select(
            node,
            "SELECT COUNT(*) FROM machinerole WHERE role <> 'http'"
        ),
        json!([[2]])
    );

    // `query publish` from a shell script.
    let query = query_integration::queryd_bin().with_file_name("query");
    let publish = |input: &str| {
        let mut child = Command::new(&query)
            .args(["publish", "load_info", "--socket"])
            .arg(&edge.socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run query");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write");
        child.wait_with_output().expect("wait")
    };
    let ok = publish("{\"georegion\": 5, \"hits\": 11, \"bytes\": 1, \"errors\": 0}\n\n{\"georegion\": 6, \"hits\": 12, \"bytes\": 1, \"errors\": 0}\n");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout).trim(),
        "published 2 rows of load_info"
    );
    let bad = publish("{\"georegion\": 5, \"hits\": \"many\", \"bytes\": 1, \"errors\": 0}\n");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("column 'hits'"));
    until_rows(node, "SELECT SUM(hits) FROM load_info", json!([[23]]));

    // The stdlib-only Python example.
    let out = Command::new("python3")
        .arg(query_integration::repo().join("ops/examples/publisher.py"))
        .arg("--socket")
        .arg(&edge.socket)
        .arg("--once")
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("published 3 rows of load_info") && said.contains("rows of machinerole"),
        "{said}"
    );
    until_rows(
        node,
        "SELECT COUNT(*) FROM machinerole WHERE role = 'python-example'",
        json!([[1]]),
    );
}

#[test]
fn python_example_publishes_into_the_demo_deployment() {
    let ws = Workspace::new();
    let socket = ws.path("demo.sock");
    let node = ws.start(
        "demo",
        &format!(
            "[generation]\ninterval = \"500ms\"\noffset = \"50ms\"\n\n[simulate]\nmachines = 50\nclusters = 2\n\n\
             [edge]\nsocket = \"{}\"\nprewarm = [\"*\"]\n",
            socket.display()
        ),
    );
    let out = Command::new("python3")
        .arg(query_integration::repo().join("ops/examples/publisher.py"))
        .arg("--socket")
        .arg(&socket)
        .arg("--once")
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Beside the 50 simulated machines and the node's own row.
    until_rows(
        &node,
        "SELECT machine_ip FROM machinerole WHERE role = 'python-example'",
        json!([["127.0.0.1"]]),
    );
    let (_, answer) = node.sql("SELECT COUNT(DISTINCT machine_ip) FROM load_info");
    assert_eq!(answer["rows"], json!([[51]]), "{answer}");
}

/// An edge agent with an empty prewarm: a query at its own HTTP endpoint requests the table
/// from its local publishers, as a query at an aggregator requests it from below; the
/// publisher (refused while nobody wanted the table) is told, publishes, and the rows come.
#[test]
fn a_query_at_the_edge_requests_the_table_from_its_publishers() {
    let ws = Workspace::new();
    let socket = ws.path("publish.sock");
    let node = ws.start(
        "edge",
        &format!(
            "[node]\nmachine_ip = \"127.0.0.19\"\n\n[generation]\ninterval = \"300ms\"\noffset = \"50ms\"\n\n\
             [host]\nenabled = false\n\n[edge]\nsocket = \"{}\"\nprewarm = []\n",
            socket.display()
        ),
    );
    let mut p = Publisher::connect_unix(&socket, "edge-query-test", &["load_info"]).expect("hello");
    match p.publish("load_info", rows(json!([load(7, 70)]))) {
        Err(ClientError::Refused(e)) => assert!(e.to_string().contains("not requested"), "{e}"),
        other => panic!("nobody wants load_info yet: {other:?}"),
    }
    // The first query requests it; the publisher learns so from its next reply.
    let (status, answer) = node.sql("SELECT georegion, hits FROM load_info");
    assert_eq!(status, 200, "{answer}");
    node.eventually(
        Duration::from_secs(20),
        "the publisher's rows at the edge",
        || {
            let _ = p.publish("load_info", rows(json!([load(7, 70)])));
            (node.sql("SELECT georegion, hits FROM load_info").1["rows"] == json!([[7, 70]]))
                .then_some(())
        },
    );
}

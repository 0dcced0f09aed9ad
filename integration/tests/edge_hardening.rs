//! A real edge agent (`queryd edge`) under what an attacker or a careless user sends to its
//! publish socket and drop directory (issue 11): idle connections, one connection trying
//! to fill the agent, an HTTP POST to the TCP port, symlinks, FIFOs, oversized and
//! half-written files. After each, the node still answers `SELECT 1` within a second,
//! still seals, and real publishers still get in.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use query_client::protocol::Row;
use query_client::{ClientError, Publisher};
use query_integration::{Node, Workspace};
use serde_json::{json, Value};

struct Edge {
    node: Node,
    socket: PathBuf,
    tcp: String,
    drop_dir: PathBuf,
    _ws: Workspace,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// An edge with small limits; `extra` adds `[edge]` keys.
fn start_edge(extra: &str) -> Edge {
    let ws = Workspace::new();
    let socket = ws.path("publish.sock");
    let drop_dir = ws.path("drop");
    let tcp = format!("127.0.0.1:{}", free_port());
    let node = ws.start(
        "edge",
        &format!(
            r#"[node]
machine_ip = "127.0.0.9"

[generation]
interval = "300ms"
offset = "50ms"

[host]
enabled = false

[edge]
socket = "{}"
tcp = "{tcp}"
prewarm = ["load_info", "machinerole"]
file_drop = "{}"
hello_timeout = "2s"
{extra}
"#,
            socket.display(),
            drop_dir.display()
        ),
    );
    Edge {
        node,
        socket,
        tcp,
        drop_dir,
        _ws: ws,
    }
}

fn generation(node: &Node) -> u64 {
    node.sql("SELECT 1").1["generation"]["id"]
        .as_u64()
        .unwrap_or(0)
}

/// Everything the agent sends until it closes the connection. A TCP peer that closes with
/// our unread bytes pending resets the connection after its last line: that counts as
/// closed too.
fn read_until_closed(s: &mut dyn Read) -> (String, std::io::Result<()>) {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        match s.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    (String::from_utf8_lossy(&all).into_owned(), end)
}

/// The node answers `SELECT 1` within a second and seals a newer generation.
#[track_caller]
fn alive(node: &Node) {
    let before = generation(node);
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    let started = Instant::now();
    let answer = agent
        .post(&node.url("/sql"))
        .set("Content-Type", "text/plain")
        .send_string("SELECT 1")
        .expect("SELECT 1 answers")
        .into_string()
        .expect("body");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "SELECT 1 took {took:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&answer).expect("JSON")["rows"],
        json!([[1]])
    );
    node.eventually(Duration::from_secs(10), "a newer generation", || {
        (generation(node) > before).then_some(())
    });
}

fn count(node: &Node, sql: &str) -> i64 {
    let (status, answer) = node.sql(sql);
    assert_eq!(status, 200, "{sql}: {answer}");
    answer["rows"][0][0].as_i64().expect("a count")
}

fn roles(n: usize, role: &str) -> Vec<Row> {
    (0..n)
        .map(|_| {
            let mut r = Row::new();
            r.insert("role".into(), role.into());
            r
        })
        .collect()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn idle_connections_do_not_lock_publishers_out() {
    let edge = start_edge("max_publishers = 16");
    let node = &edge.node;
    // 256 connections on the Unix socket and 64 on TCP that never say hello.
    let mut idle: Vec<Box<dyn Read>> = Vec::new();
    for _ in 0..256 {
        let s = UnixStream::connect(&edge.socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        idle.push(Box::new(s));
    }
    for _ in 0..64 {
        let s = TcpStream::connect(&edge.tcp).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        idle.push(Box::new(s));
    }
    // The agent takes the flood in first (while it is still accepting, a newcomer whose
    // hello it has not read yet is as silent as the idle ones, and may be closed too).
    node.eventually(
        Duration::from_secs(20),
        "the idle connections accepted",
        || {
            let (_, m) = node.get("/metrics");
            m.lines()
                .find_map(|l| l.strip_prefix("query_publish_connections_total "))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .filter(|n| *n >= 320)
                .map(|_| ())
        },
    );
    // A real publisher still gets in, on either transport.
    let mut p = Publisher::connect_unix(&edge.socket, "real", &["machinerole"]).expect("hello");
    assert_eq!(p.wanted(), ["machinerole"]);
    assert_eq!(p.publish("machinerole", roles(1, "real")).expect("ok"), 1);
    let mut t = Publisher::connect_tcp(&edge.tcp, "real-tcp", &["machinerole"]).expect("hello");
    assert_eq!(
        t.publish("machinerole", roles(1, "real-tcp")).expect("ok"),
        1
    );
    node.eventually(Duration::from_secs(10), "the real publishers' rows", || {
        (count(
            node,
            "SELECT COUNT(*) FROM machinerole WHERE role LIKE 'real%'",
        ) == 2)
            .then_some(())
    });
    alive(node);
    // Every idle connection is closed: made room for others, or past hello_timeout (2 s).
    for (i, c) in idle.iter_mut().enumerate() {
        let (text, r) = read_until_closed(c.as_mut());
        assert!(r.is_ok(), "idle connection {i} still open: {r:?}");
        assert!(
            text.contains("make room") || text.contains("hello_timeout"),
            "{i}: {text}"
        );
    }
    // The publishers that said hello and publish were not closed.
    assert_eq!(p.publish("machinerole", roles(1, "real")).expect("ok"), 1);
    alive(node);
}

#[test]
fn one_connection_cannot_fill_the_agent() {
    let edge = start_edge(
        "max_publishers = 64\nmax_line_bytes = 2097152\nmax_bytes_per_publisher = 1572864\n\
         max_stored_bytes = 3145728\nmax_publisher_names = 64",
    );
    let node = &edge.node;
    let rss_before = rss_kib(node.pid());
    let big = roles(1500, &"x".repeat(400)); // a 0.6 MB line, 0.6 MB of rows
    let line = |v: Value| {
        let mut l = serde_json::to_vec(&v).expect("json");
        l.push(b'\n');
        l
    };
    // 40 hellos on one connection: the second one closes it.
    let s = UnixStream::connect(&edge.socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    let mut replies = Vec::new();
    for i in 0..40 {
        let hello = json!({"hello": {"publisher": format!("n{i}"), "tables": ["machinerole"]}});
        let publish = json!({"publish": {"table": "machinerole", "rows": big}});
        if w.write_all(&line(hello)).is_err() || w.write_all(&line(publish)).is_err() {
            break;
        }
    }
    let mut reply = String::new();
    while r.read_line(&mut reply).is_ok_and(|n| n > 0) {
        replies.push(std::mem::take(&mut reply));
    }
    let all = replies.concat();
    assert!(all.contains("one hello per connection"), "{all}");
    assert!(replies.len() <= 3, "closed at the second hello: {all}");

    // 40 names on 40 connections: the agent's byte limit refuses most.
    let mut publishers = Vec::new();
    let mut refused = Vec::new();
    for i in 0..40 {
        let mut p = Publisher::connect_unix(&edge.socket, &format!("m{i}"), &["machinerole"])
            .expect("hello");
        match p.publish("machinerole", big.clone()) {
            Ok(_) => {}
            Err(ClientError::Refused(e)) => refused.push(e.message),
            Err(e) => panic!("{e}"),
        }
        publishers.push(p);
    }
    assert!(refused.len() >= 30, "{} refused", refused.len());
    assert!(
        refused.iter().all(|m| m.contains("max_stored_bytes")),
        "{refused:?}"
    );
    // A publisher over its own limit.
    let mut greedy = Publisher::connect_unix(&edge.socket, "greedy", &["machinerole", "load_info"])
        .expect("hello");
    match greedy.publish("machinerole", roles(5000, &"y".repeat(400))) {
        Err(ClientError::Refused(e)) => assert!(e.message.contains("max_bytes_per_publisher")),
        other => panic!("{other:?}"),
    }
    // What is stored is bounded by max_stored_bytes (3 MiB: at most ~7,800 such rows).
    node.eventually(Duration::from_secs(10), "the accepted rows", || {
        (count(node, "SELECT COUNT(*) FROM machinerole") > 0).then_some(())
    });
    let rows = count(node, "SELECT COUNT(*) FROM machinerole");
    assert!(rows <= 7_800, "{rows} rows stored");
    let grown_mib = rss_kib(node.pid()).saturating_sub(rss_before) / 1024;
    assert!(grown_mib < 200, "RSS grew by {grown_mib} MiB");
    alive(node);
}

#[test]
fn an_http_post_to_the_tcp_port_publishes_nothing() {
    let edge = start_edge("");
    let node = &edge.node;
    let body = "{\"hello\": {\"publisher\": \"web\", \"tables\": [\"machinerole\"]}}\n\
                {\"publish\": {\"table\": \"machinerole\", \"rows\": [{\"role\": \"attacker\"}]}}\n";
    // As curl -d @rows.ndjson or a browser's form POST sends it.
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {}\r\nUser-Agent: curl/8.0\r\nContent-Type: application/x-ndjson\r\n\
         Content-Length: {}\r\n\r\n{body}",
        edge.tcp,
        body.len()
    );
    let mut s = TcpStream::connect(&edge.tcp).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(request.as_bytes()).expect("send");
    let (answer, r) = read_until_closed(&mut s);
    assert!(r.is_ok(), "closed by the agent: {r:?}");
    assert!(answer.contains("send hello first"), "{answer}");
    assert_eq!(answer.lines().count(), 1, "{answer}");
    // ureq, like a browser, gets no HTTP answer.
    let posted = ureq::post(&format!("http://{}/", edge.tcp))
        .timeout(Duration::from_secs(10))
        .send_string(body);
    assert!(posted.is_err(), "{posted:?}");
    // A real publisher over TCP works; the attacker's row never appears.
    let mut p = Publisher::connect_tcp(&edge.tcp, "tcp", &["machinerole"]).expect("hello");
    p.publish("machinerole", roles(1, "tcp")).expect("ok");
    node.eventually(Duration::from_secs(10), "the real row", || {
        (count(node, "SELECT COUNT(*) FROM machinerole WHERE role = 'tcp'") == 1).then_some(())
    });
    alive(node);
    assert_eq!(
        count(
            node,
            "SELECT COUNT(*) FROM machinerole WHERE role = 'attacker'"
        ),
        0
    );
}

#[test]
fn dropped_files_cannot_leak_stall_or_bloat() {
    let edge = start_edge("file_drop_poll = \"1s\"\nfile_drop_max_bytes = 65536");
    let node = &edge.node;
    let d = &edge.drop_dir;
    let rss_before = rss_kib(node.pid());
    // A symlink to a private file, a FIFO nobody writes, a CSV over the size cap.
    let secret = edge._ws.path("secret.csv");
    std::fs::write(&secret, "role\nTOP-SECRET\n").expect("write");
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    std::os::unix::fs::symlink(&secret, d.join("machinerole.csv")).expect("symlink");
    let fifo = d.join("load_info.csv");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let huge: String = (0..200_000).map(|i| format!("{i},1,1,1\n")).collect();
    std::fs::write(d.join("load_info.jsonl.tmp"), "not read: being written").expect("write");
    std::fs::write(
        d.join("load_info.tsv"),
        format!("georegion,hits,bytes,errors\n{huge}"),
    )
    .expect("write");
    let tables = node.eventually(Duration::from_secs(15), "three refusals", || {
        let t = node.get_json("/tables");
        let errors = t["errors"].as_array()?.clone();
        (errors.iter().filter(|e| e["kind"] == "publisher").count() >= 3).then_some(t)
    });
    let text = tables.to_string();
    assert!(!text.contains("TOP-SECRET"), "{text}");
    for (file, what) in [
        ("machinerole.csv", "symbolic link"),
        ("load_info.csv", "not a regular file"),
        ("load_info.tsv", "file_drop_max_bytes"),
    ] {
        assert!(
            tables["errors"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| {
                    e["source"].as_str().is_some_and(|s| s.ends_with(file))
                        && e["message"].as_str().is_some_and(|m| m.contains(what))
                })),
            "{file}: {text}"
        );
    }
    alive(node);
    assert_eq!(count(node, "SELECT COUNT(*) FROM machinerole"), 0);
    assert_eq!(count(node, "SELECT COUNT(*) FROM load_info"), 0);
    let grown_mib = rss_kib(node.pid()).saturating_sub(rss_before) / 1024;
    assert!(grown_mib < 100, "RSS grew by {grown_mib} MiB");

    // A half-written file under a dot-name is not read; renamed, it is published whole.
    std::fs::remove_file(d.join("machinerole.csv")).expect("rm");
    let rows: String = (0..100).map(|i| format!("r{i}\n")).collect();
    std::fs::write(
        d.join(".machinerole.csv"),
        format!("role\n{}", &rows[..200]),
    )
    .expect("write");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(count(node, "SELECT COUNT(*) FROM machinerole"), 0);
    std::fs::write(d.join(".machinerole.csv"), format!("role\n{rows}")).expect("write");
    std::fs::rename(d.join(".machinerole.csv"), d.join("machinerole.csv")).expect("mv");
    node.eventually(Duration::from_secs(10), "the renamed file", || {
        (count(node, "SELECT COUNT(*) FROM machinerole") == 100).then_some(())
    });

    // Written in place, slowly: never published half; published once it stays unchanged.
    let writer = {
        let path = d.join("machinerole.csv");
        std::thread::spawn(move || {
            let mut f = std::fs::File::create(&path).expect("create");
            f.write_all(b"role\n").expect("write");
            for i in 0..40 {
                f.write_all(format!("slow{i}\n").as_bytes()).expect("write");
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let mut seen = Vec::new();
    while !writer.is_finished() {
        seen.push(count(node, "SELECT COUNT(*) FROM machinerole"));
        std::thread::sleep(Duration::from_millis(100));
    }
    writer.join().expect("writer");
    assert!(
        seen.iter().all(|n| *n == 100 || *n == 40),
        "a partial copy was published: {seen:?}"
    );
    node.eventually(Duration::from_secs(10), "the complete file", || {
        (count(node, "SELECT COUNT(*) FROM machinerole") == 40).then_some(())
    });
    alive(node);
}

//! The link listener of a real edge (`queryd edge` started under `ulimit -n 512`) against
//! hostile peers (issue 11): hellos announcing 900 MiB then stalling, and 1,100 idle
//! connections. Throughout, the node answers `SELECT 1` within a second, keeps sealing, its
//! publish socket takes a publisher, a real parent is served, and its memory stays bounded.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use query_actors::link::frame::{decode_frame, encode_frame, read_frame, write_frame, Codec};
use query_actors::link::wire::{ToChild, ToParent, LINK_VERSION};
use query_client::Publisher;
use query_integration::{Node, Workspace};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The node's descriptor limit: 1,100 connections held would exhaust it.
const NOFILE: u32 = 512;
const IDLE: usize = 1100;
const MAX: usize = 1 << 20;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// A counter from `/metrics`.
fn metric(node: &Node, name: &str) -> u64 {
    let (status, text) = node.get("/metrics");
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// The node still does its job: SQL within a second, a publisher gets in, seals go on.
#[track_caller]
fn serving(node: &Node, socket: &Path, what: &str) {
    let t = Instant::now();
    let (status, answer) = node.sql("SELECT 1 AS one");
    assert_eq!(status, 200, "{what}: {answer}");
    assert_eq!(answer["rows"][0][0], 1, "{what}: {answer}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "{what}: SELECT 1 took {:?}",
        t.elapsed()
    );
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!("probe-{}", N.fetch_add(1, Ordering::Relaxed));
    let p = Publisher::connect_unix(socket, &name, &["load_info"])
        .unwrap_or_else(|e| panic!("{what}: the publish socket refused: {e}"));
    assert_eq!(p.wanted(), ["load_info"], "{what}");
    let sealed = metric(node, "query_generations_sealed_total");
    node.eventually(Duration::from_secs(5), "a seal", || {
        (metric(node, "query_generations_sealed_total") > sealed).then_some(())
    });
}

async fn connect_from(ip: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::from((ip, 0)))?;
    tokio::time::timeout(Duration::from_secs(5), s.connect(to))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))?
}

/// Whether the node closed the connection within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// A parent: hello and a request; the node's hello and a generation within a second.
async fn real_parent(ip: [u8; 4], to: SocketAddr) -> TcpStream {
    let mut s = connect_from(ip, to).await.expect("parent connects");
    let exchange = async {
        let hello = ToChild::Hello {
            parent: "test-parent".into(),
            version: LINK_VERSION,
        };
        write_frame(&mut s, &encode_frame(&hello, Codec::None).expect("encode"))
            .await
            .expect("hello");
        let body = read_frame(&mut s, MAX).await.expect("read").expect("frame");
        assert!(matches!(
            decode_frame::<ToParent>(&body, MAX).expect("decode"),
            ToParent::Hello { .. }
        ));
        let request = ToChild::Request {
            tables: vec!["load_info".into()],
        };
        write_frame(
            &mut s,
            &encode_frame(&request, Codec::None).expect("encode"),
        )
        .await
        .expect("request");
        let body = read_frame(&mut s, 64 << 20)
            .await
            .expect("read")
            .expect("frame");
        assert!(matches!(
            decode_frame::<ToParent>(&body, 64 << 20).expect("decode"),
            ToParent::Generation(_)
        ));
    };
    tokio::time::timeout(Duration::from_secs(1), exchange)
        .await
        .expect("a real parent is served within a second");
    s
}

#[test]
fn hostile_link_peers_do_not_stop_the_node() {
    let ws = Workspace::new();
    let socket = ws.path("publish.sock");
    let port = free_port();
    let link: SocketAddr = ([127, 0, 0, 1], port).into();
    let cfg = ws.config(&format!(
        r#"[node]
machine_ip = "127.0.0.9"

[generation]
interval = "500ms"
offset = "50ms"

[host]
enabled = false

[edge]
socket = "{}"
prewarm = ["load_info"]

[link]
listen = "{link}"
hello_timeout = "2s"
"#,
        socket.display()
    ));
    let node = Node::start_limited(
        &[
            "edge",
            "--config",
            cfg.to_str().expect("utf8"),
            "--listen",
            "127.0.0.1:0",
        ],
        Some(NOFILE),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    serving(&node, &socket, "at start");
    let rss_before = rss_kib(node.pid());

    // Three hellos announcing 900 MiB each, a few KiB sent, then a stall: refused from the
    // length prefix at once.
    let mut stalled = rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..3u8 {
            let mut s = connect_from([127, 0, 3, i + 1], link)
                .await
                .expect("connect");
            let mut start = (900u32 << 20).to_be_bytes().to_vec();
            start.push(0);
            start.extend_from_slice(&[0x5a; 4096]);
            let _ = s.write_all(&start).await;
            v.push(s);
        }
        v
    });
    rt.block_on(async {
        for s in &mut stalled {
            assert!(
                closed_within(s, Duration::from_secs(1)).await,
                "a 900 MiB hello is closed at once"
            );
        }
    });
    serving(&node, &socket, "after 900 MiB hellos");
    let _parent = rt.block_on(real_parent([127, 0, 3, 100], link));

    // 1,100 idle connections from many addresses (at most 8 each), held open.
    let idle = rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..IDLE {
            let a = i / 8; // 8 connections per address, the per-address cap
            let ip = [127, 0, 4 + (a / 200) as u8, (a % 200) as u8 + 1];
            if let Ok(s) = connect_from(ip, link).await {
                v.push(s);
            }
        }
        v
    });
    assert!(idle.len() > IDLE / 2, "only {} connected", idle.len());
    serving(&node, &socket, "with 1,100 idle link connections");
    let _second = rt.block_on(real_parent([127, 0, 3, 101], link));
    let (idle, open) = rt.block_on(count_open(idle, Duration::from_millis(300)));
    assert!(
        open <= 64,
        "{open} idle link connections held (max_parent_sessions 64)"
    );
    // At the hello deadline the rest go too.
    rt.block_on(async { tokio::time::sleep(Duration::from_secs(2)).await });
    let (_idle, open) = rt.block_on(count_open(idle, Duration::from_millis(300)));
    assert_eq!(open, 0, "idle connections outlive the hello deadline");
    assert!(metric(&node, "query_link_limit_errors_total") >= 3 + 64);
    serving(&node, &socket, "after the idle connections");
    let _third = rt.block_on(real_parent([127, 0, 3, 102], link));

    let rss_after = rss_kib(node.pid());
    assert!(
        rss_after < rss_before + 100 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    let log = std::fs::read_to_string(&node.stderr_log).unwrap_or_default();
    assert!(
        log.contains("max_request_frame_bytes"),
        "the log names the limit"
    );
}

/// Checks every connection at once; returns them, and how many the node still holds open.
async fn count_open(conns: Vec<TcpStream>, within: Duration) -> (Vec<TcpStream>, usize) {
    let mut set = tokio::task::JoinSet::new();
    for mut s in conns {
        set.spawn(async move {
            let closed = closed_within(&mut s, within).await;
            (s, closed)
        });
    }
    let (mut back, mut open) = (Vec::new(), 0);
    while let Some(r) = set.join_next().await {
        let (s, closed) = r.expect("check");
        open += usize::from(!closed);
        back.push(s);
    }
    (back, open)
}

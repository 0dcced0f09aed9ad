//! The link listener under hostile peers, over real loopback sockets: huge announced
//! hellos, idle connections past the caps, decompression bombs. In each, a real parent
//! connecting meanwhile is served (hello and a generation) within a second.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::*;
use crate::generation::GenerationBuilder;
use crate::link::frame::decode_frame;

const MAX: usize = 1 << 20;

/// A child serving parents on a loopback port, on its own pool.
struct Child {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    _generations: watch::Sender<Option<Arc<Generation>>>,
    _pool: SqlPool,
}

fn serve(limits: ListenLimits) -> Child {
    let pool = SqlPool::new(2).expect("pool");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let metrics = Arc::new(Metrics::default());
    let generation = GenerationBuilder::default().seal(1, 1, SystemTime::now());
    let (tx, generations) = watch::channel(Some(generation));
    let serve = ServeParents {
        node: "child".into(),
        role: "edge".into(),
        codec: Codec::Zstd,
        limits,
        generations,
        book: None,
        metrics: metrics.clone(),
        sessions: Arc::default(),
        tls: None,
        keys: Default::default(),
    };
    let p = pool.clone();
    pool.spawn(async move {
        let l = tokio::net::TcpListener::from_std(listener).expect("listener");
        accept_parents(Listener::Tcp(l), serve, p).await
    });
    Child {
        addr,
        metrics,
        _generations: tx,
        _pool: pool,
    }
}

/// The client side runs on its own runtime (the child's pool is another).
fn client<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Connects from a chosen loopback address (127.0.0.0/8 is all ours), so tests can be
/// several peers.
async fn connect_from(ip: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().expect("socket");
    s.bind(SocketAddr::from((ip, 0))).expect("bind");
    s.connect(to).await.expect("connect")
}

/// Whether the child closed the connection within `within` (after whatever it sent).
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

/// The first frame the child sent, if it was a refusal: its message.
async fn refusal(s: &mut TcpStream) -> Option<String> {
    let body = tokio::time::timeout(Duration::from_secs(1), read_frame(s, MAX))
        .await
        .ok()?
        .ok()??;
    match decode_frame::<ToParent>(&body, MAX).ok()? {
        ToParent::Refused { message } => Some(message),
        _ => None,
    }
}

/// A real parent: hello, then a request; the child's hello and a generation must come
/// within a second. The connection is returned open.
async fn real_parent(ip: [u8; 4], to: SocketAddr) -> TcpStream {
    let mut s = connect_from(ip, to).await;
    let exchange = async {
        let hello = ToChild::Hello {
            parent: "parent".into(),
            version: LINK_VERSION,
        };
        write_frame(&mut s, &encode_frame(&hello, Codec::Zstd).expect("encode"))
            .await
            .expect("hello");
        let body = read_frame(&mut s, MAX).await.expect("read").expect("frame");
        match decode_frame::<ToParent>(&body, MAX).expect("decode") {
            ToParent::Hello { node, .. } => assert_eq!(node, "child"),
            other => panic!("expected hello, got {other:?}"),
        }
        let request = ToChild::Request { tables: Vec::new() };
        write_frame(
            &mut s,
            &encode_frame(&request, Codec::None).expect("encode"),
        )
        .await
        .expect("request");
        let body = read_frame(&mut s, MAX).await.expect("read").expect("frame");
        match decode_frame::<ToParent>(&body, MAX).expect("decode") {
            ToParent::Generation(g) => assert_eq!(g.id, 1),
            other => panic!("expected a generation, got {other:?}"),
        }
    };
    tokio::time::timeout(Duration::from_secs(1), exchange)
        .await
        .expect("a real parent is served within a second");
    s
}

/// Waits (bounded) until `counter` reaches `n`.
async fn until(counter: &AtomicU64, n: u64) {
    for _ in 0..100 {
        if counter.load(Ordering::Relaxed) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "counter at {}, expected {n}",
        counter.load(Ordering::Relaxed)
    );
}

#[test]
fn hellos_announcing_900_mib_are_closed_at_once() {
    let child = serve(ListenLimits::default());
    client(async {
        let mut stalled = Vec::new();
        for i in 0..3u8 {
            let mut s = connect_from([127, 0, 0, 10 + i], child.addr).await;
            let mut start = (900u32 << 20).to_be_bytes().to_vec();
            start.push(Codec::None.id());
            start.extend_from_slice(&[0x5a; 4096]);
            // The child may close before all of it is written.
            let _ = s.write_all(&start).await;
            stalled.push(s);
        }
        for s in &mut stalled {
            assert!(
                closed_within(s, Duration::from_secs(1)).await,
                "closed at once, not at the hello deadline"
            );
        }
        until(&child.metrics.link_limit_errors, 3).await;
        let _parent = real_parent([127, 0, 0, 20], child.addr).await;
    });
}

#[test]
fn idle_connections_are_capped_evicted_and_closed_at_the_hello_deadline() {
    let child = serve(ListenLimits {
        max_parent_sessions: 6,
        max_sessions_per_address: 3,
        hello_timeout: Duration::from_millis(800),
        ..ListenLimits::default()
    });
    client(async {
        let a = [127, 0, 0, 30];
        let mut idle = Vec::new();
        for _ in 0..3 {
            idle.push(connect_from(a, child.addr).await);
        }
        // A fourth from the same address is told why and closed.
        let mut fourth = connect_from(a, child.addr).await;
        let why = refusal(&mut fourth).await.expect("a refusal");
        assert!(why.contains("max_sessions_per_address"), "{why}");
        assert!(closed_within(&mut fourth, Duration::from_secs(1)).await);
        for _ in 0..3 {
            idle.push(connect_from([127, 0, 0, 31], child.addr).await);
        }
        // Full of idle connections: a real parent takes the oldest one's place.
        let mut parent = real_parent([127, 0, 0, 32], child.addr).await;
        assert!(
            closed_within(&mut idle[0], Duration::from_secs(1)).await,
            "the oldest idle connection made room"
        );
        // The rest are closed at the hello deadline; the parent stays.
        for s in &mut idle[1..] {
            assert!(closed_within(s, Duration::from_secs(3)).await);
        }
        assert!(!closed_within(&mut parent, Duration::from_millis(200)).await);
        until(&child.metrics.link_refused, 1).await;
        until(&child.metrics.link_limit_errors, 6).await;
        let _second = real_parent([127, 0, 0, 33], child.addr).await;
    });
}

#[test]
fn hundreds_of_idle_connections_hold_at_most_the_cap() {
    let limits = ListenLimits::default();
    let cap = limits.max_parent_sessions;
    let child = serve(limits);
    client(async {
        // 300 connections from 40 addresses, 8 or fewer each.
        let mut conns = Vec::new();
        for i in 0..300u32 {
            let ip = [127, 0, 1, (i % 40) as u8 + 1];
            conns.push(connect_from(ip, child.addr).await);
        }
        let parent = real_parent([127, 0, 2, 1], child.addr).await;
        let open = futures::future::join_all(
            conns
                .iter_mut()
                .map(|s| closed_within(s, Duration::from_millis(300))),
        )
        .await
        .into_iter()
        .filter(|closed| !closed)
        .count();
        assert!(
            open < cap,
            "{open} idle connections held beside the parent, cap {cap}"
        );
        drop(parent);
    });
}

#[test]
fn a_compressed_bomb_as_hello_is_refused() {
    let child = serve(ListenLimits::default());
    client(async {
        let zeros = vec![0u8; 32 << 20];
        let payload = zstd::bulk::compress(&zeros, 1).expect("compress");
        let mut frame = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
        frame.push(Codec::Zstd.id());
        frame.extend_from_slice(&payload);
        let mut s = connect_from([127, 0, 0, 40], child.addr).await;
        s.write_all(&frame).await.expect("write");
        assert!(closed_within(&mut s, Duration::from_secs(1)).await);
        until(&child.metrics.link_limit_errors, 1).await;
        let _parent = real_parent([127, 0, 0, 41], child.addr).await;
    });
}

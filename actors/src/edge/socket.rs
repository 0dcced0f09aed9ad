//! The local publish socket: a Unix domain socket (and optionally TCP on loopback)
//! speaking the newline-delimited JSON protocol of `query_client::protocol`.
//!
//! Each connection is a session task on the compute pool: a reader that decodes and
//! validates lines, a writer that sends replies and `want` updates in order. A bad line gets
//! an error and the session goes on; a line over the size limit gets an error and the
//! connection is closed, since the rest of that line cannot be read safely.
//!
//! Nothing that connects may hold the agent: the first line must be a valid `hello` within
//! `hello_timeout` (so an HTTP request sent to the TCP port publishes nothing), one hello per
//! connection, a connection silent for `idle_timeout` is closed, and when every slot is
//! taken the connections that never said hello or idle longest make room
//! ([`super::admission`]). On the Unix socket the peer's uid and pid are known
//! (`SO_PEERCRED`): the uid is part of the publisher's identity and may be restricted.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use query_client::protocol::{
    decode_line, encode_line, FromAgent, FromPublisher, Hello, PublishError, PublishOk,
};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;

use super::admission::{Evicted, Ticket};
use super::store::EdgeStore;

/// A hello is a name and a list of tables: it never needs more.
const MAX_HELLO_BYTES: usize = 64 << 10;
/// Longest publisher name.
const MAX_NAME_BYTES: usize = 128;
/// How long queued replies may take to reach a closing connection.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds the Unix socket (replacing a stale one left by a previous run) with `mode`.
pub fn bind_unix(path: &Path, mode: u32) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)?;
        } else {
            return Err(std::io::Error::other(format!(
                "{} exists and is not a socket",
                path.display()
            )));
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    listener.set_nonblocking(true)?;
    tracing::info!(socket = %path.display(), "publish socket ready");
    Ok(listener)
}

/// Accepts publishers on the bound Unix socket.
pub async fn serve_unix(store: Arc<EdgeStore>, listener: std::os::unix::net::UnixListener) {
    match UnixListener::from_std(listener) {
        Ok(l) => accept_loop(store, l).await,
        Err(e) => tracing::error!(error = %e, "publish socket unusable"),
    }
}

/// Accepts publishers on a bound loopback TCP listener.
pub async fn serve_tcp(store: Arc<EdgeStore>, listener: std::net::TcpListener) {
    match listener
        .set_nonblocking(true)
        .and_then(|_| TcpListener::from_std(listener))
    {
        Ok(l) => {
            tracing::info!(addr = ?l.local_addr().ok(), "publish TCP listener ready");
            accept_loop(store, l).await
        }
        Err(e) => tracing::error!(error = %e, "publish TCP listener unusable"),
    }
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub enum Peer {
    /// From `SO_PEERCRED`; `None` if the kernel did not say.
    Unix {
        uid: Option<u32>,
        pid: Option<i32>,
    },
    Tcp(Option<SocketAddr>),
}

impl Peer {
    /// The publisher's identity in the store: its name, and its uid on the Unix socket, so
    /// another user cannot replace a publisher's rows by taking its name.
    fn identity(&self, name: &str) -> String {
        match self {
            Peer::Unix { uid: Some(uid), .. } => format!("{name}@uid{uid}"),
            _ => name.to_string(),
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Unix { uid, pid } => {
                let show = |v: Option<String>| v.unwrap_or_else(|| "?".into());
                write!(
                    f,
                    "unix uid {} pid {}",
                    show(uid.map(|u| u.to_string())),
                    show(pid.map(|p| p.to_string()))
                )
            }
            Peer::Tcp(Some(a)) => write!(f, "tcp {a}"),
            Peer::Tcp(None) => write!(f, "tcp"),
        }
    }
}

/// A listener whose connections split into a read and a write half.
trait Accept {
    type R: AsyncRead + Unpin + Send + 'static;
    type W: AsyncWrite + Unpin + Send + 'static;
    fn accept_split(
        &self,
    ) -> impl std::future::Future<Output = std::io::Result<(Self::R, Self::W, Peer)>> + Send;
}

impl Accept for UnixListener {
    type R = tokio::net::unix::OwnedReadHalf;
    type W = tokio::net::unix::OwnedWriteHalf;
    async fn accept_split(&self) -> std::io::Result<(Self::R, Self::W, Peer)> {
        let (stream, _) = self.accept().await?;
        let peer = match stream.peer_cred() {
            Ok(c) => Peer::Unix {
                uid: Some(c.uid()),
                pid: c.pid(),
            },
            Err(_) => Peer::Unix {
                uid: None,
                pid: None,
            },
        };
        let (r, w) = stream.into_split();
        Ok((r, w, peer))
    }
}

impl Accept for TcpListener {
    type R = tokio::net::tcp::OwnedReadHalf;
    type W = tokio::net::tcp::OwnedWriteHalf;
    async fn accept_split(&self) -> std::io::Result<(Self::R, Self::W, Peer)> {
        let (stream, addr) = self.accept().await?;
        let (r, w) = stream.into_split();
        Ok((r, w, Peer::Tcp(Some(addr))))
    }
}

/// Lets a log line through at most once per period, counting what it held back, so a
/// flood (accept errors, connections made to be closed) cannot flood the log.
pub struct Throttle {
    period: Duration,
    last: Mutex<Option<Instant>>,
    held: AtomicU64,
}

impl Throttle {
    pub const fn new(period: Duration) -> Self {
        Throttle {
            period,
            last: Mutex::new(None),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one let through)` when this one may be logged.
    pub fn ready(&self) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|l| now.duration_since(l) < self.period) {
            self.held.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.held.swap(0, Ordering::Relaxed))
    }
}

static ACCEPT_ERRORS: Throttle = Throttle::new(Duration::from_secs(10));
static REFUSALS: Throttle = Throttle::new(Duration::from_secs(10));
static EVICTIONS: Throttle = Throttle::new(Duration::from_secs(10));

async fn accept_loop<L: Accept>(store: Arc<EdgeStore>, listener: L) {
    loop {
        match listener.accept_split().await {
            Ok((r, w, peer)) => {
                tokio::spawn(session(store.clone(), r, w, peer));
            }
            // Out of descriptors (EMFILE) and the like: say so now and then, breathe, go on.
            // The loop never ends on an accept error.
            Err(e) => {
                if let Some(held) = ACCEPT_ERRORS.ready() {
                    tracing::warn!(error = %e, similar_since_last = held, "accepting a publisher failed");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

enum Line {
    Data,
    Eof,
    TooLong,
}

/// Reads one line into `buf` without ever holding more than `max` bytes of it.
async fn read_line_limited<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    buf.clear();
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok(if buf.is_empty() {
                Line::Eof
            } else {
                Line::Data
            });
        }
        let (take, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if buf.len() + take > max.saturating_add(1) {
            return Ok(Line::TooLong);
        }
        buf.extend_from_slice(&available[..take]);
        r.consume(take);
        if done {
            return Ok(Line::Data);
        }
    }
}

/// Aborts a helper task when the session ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Tells a connection why it is refused and closes it, without waiting on the peer long.
async fn refuse<W: AsyncWrite + Unpin>(mut w: W, e: PublishError) {
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, async {
        let _ = w.write_all(&encode_line(&FromAgent::Error(e))).await;
        let _ = w.shutdown().await;
    })
    .await;
}

async fn session<R, W>(store: Arc<EdgeStore>, r: R, w: W, peer: Peer)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    store
        .metrics
        .publish_connections
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let allowed = &store.limits.allowed_uids;
    if let Peer::Unix { uid, .. } = &peer {
        if !allowed.is_empty() && !uid.is_some_and(|u| allowed.contains(&u)) {
            if let Some(held) = REFUSALS.ready() {
                tracing::warn!(%peer, similar_since_last = held, "publisher refused: uid not in [edge] allowed_uids");
            }
            store.metrics.record_publish_refusal("allowed_uids");
            let who = uid.map_or("an unknown uid".to_string(), |u| format!("uid {u}"));
            let e = PublishError::new(format!("{who} may not publish here ([edge] allowed_uids)"));
            return refuse(w, e).await;
        }
    }
    let ticket = match store.connections.admit(Instant::now()) {
        Ok((ticket, evicted)) => {
            if evicted != Evicted::None {
                store
                    .metrics
                    .record_publish_refusal("max_publishers_closed");
                if let Some(held) = EVICTIONS.ready() {
                    tracing::info!(why = ?evicted, similar_since_last = held, "publish socket full ([edge] max_publishers): closed a connection to make room");
                }
            }
            ticket
        }
        Err(e) => {
            store.metrics.record_publish_refusal("max_publishers");
            if let Some(held) = REFUSALS.ready() {
                tracing::warn!(%peer, similar_since_last = held, error = %e, "publisher refused");
            }
            return refuse(w, e).await;
        }
    };
    let (tx, rx) = mpsc::channel::<FromAgent>(64);
    let idle = store.limits.idle_timeout;
    let mut writer = tokio::spawn(write_replies(w, rx, idle));
    let close = ticket.close.clone();
    tokio::select! {
        _ = run(&store, &ticket, &peer, r, &tx) => {}
        _ = close.notified() => {
            let _ = tx.try_send(FromAgent::Error(PublishError::new(
                "closed to make room for another connection ([edge] max_publishers): \
                 this one said no hello or was idle longest",
            )));
        }
    }
    drop(tx);
    // Queued replies go out unless the peer does not read them.
    if tokio::time::timeout(FLUSH_TIMEOUT, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    drop(ticket);
}

/// Writes replies in order; a peer that stops reading for `idle` is given up on.
async fn write_replies<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<FromAgent>,
    idle: Duration,
) {
    while let Some(msg) = rx.recv().await {
        match tokio::time::timeout(idle, w.write_all(&encode_line(&msg))).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, w.shutdown()).await;
}

/// Checks a hello: its name, its tables, and room for one more publisher.
fn check_hello(store: &EdgeStore, h: &Hello, peer: &Peer) -> Result<String, PublishError> {
    let name = &h.publisher;
    if name.is_empty()
        || name.len() > MAX_NAME_BYTES
        || name.chars().any(|c| c.is_control() || c == '@')
    {
        return Err(PublishError::new(format!(
            "hello refused: a publisher name is 1 to {MAX_NAME_BYTES} bytes, without '@' or \
             control characters"
        )));
    }
    let max_tables = store.limits.max_tables_per_publisher;
    if h.tables.len() > max_tables {
        store
            .metrics
            .record_publish_refusal("max_tables_per_publisher");
        return Err(PublishError::new(format!(
            "hello refused: {} tables declared, the limit is {max_tables} \
             ([edge] max_tables_per_publisher)",
            h.tables.len()
        )));
    }
    let unknown: Vec<_> = h
        .tables
        .iter()
        .filter(|t| store.schemas.get(t).is_none())
        .take(8)
        .cloned()
        .collect();
    if !unknown.is_empty() {
        // Refused whole, so a publisher never believes a table is accepted.
        return Err(PublishError::new(format!(
            "hello refused: no schema for {unknown:?}"
        )));
    }
    let identity = peer.identity(name);
    store.admit_name(&identity)?;
    Ok(identity)
}

/// One connection: its hello, then its publishes, until it ends, errs or times out.
async fn run<R: AsyncRead + Unpin>(
    store: &Arc<EdgeStore>,
    ticket: &Ticket,
    peer: &Peer,
    r: R,
    tx: &mpsc::Sender<FromAgent>,
) {
    let limits = &store.limits;
    let say = |m: String| async move {
        let _ = tx.send(FromAgent::Error(PublishError::new(m))).await;
    };
    let mut reader = BufReader::new(r);
    let mut buf = Vec::new();

    // The first line must be a hello, whole, within hello_timeout: anything else (an HTTP
    // request's `POST / HTTP/1.1`, a publish) closes the connection.
    let deadline = tokio::time::Instant::now() + limits.hello_timeout;
    let hello_max = MAX_HELLO_BYTES.min(limits.max_line_bytes);
    let hello = loop {
        let line = tokio::time::timeout_at(
            deadline,
            read_line_limited(&mut reader, &mut buf, hello_max),
        )
        .await;
        match line {
            Err(_) => {
                store.metrics.record_publish_refusal("hello_timeout");
                let t = limits.hello_timeout;
                return say(format!(
                    "no hello within {t:?} ([edge] hello_timeout); closing the connection"
                ))
                .await;
            }
            Ok(Err(_)) | Ok(Ok(Line::Eof)) => return,
            Ok(Ok(Line::TooLong)) => {
                store.metrics.record_publish_refusal("hello_first");
                return say(format!(
                    "a hello is at most {hello_max} bytes; closing the connection"
                ))
                .await;
            }
            Ok(Ok(Line::Data)) if buf.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(Ok(Line::Data)) => match decode_line(&buf) {
                Ok(FromPublisher::Hello(h)) => break h,
                // Not quoted back: the line may be anything.
                _ => {
                    store.metrics.record_publish_refusal("hello_first");
                    return say(
                        "send hello first: the first line must be {\"hello\": {\"publisher\": \
                         ..., \"tables\": [...]}}; closing the connection"
                            .into(),
                    )
                    .await;
                }
            },
        }
    };
    ticket.active(Instant::now());
    let identity = match check_hello(store, &hello, peer) {
        Ok(id) => id,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "hello refused");
            let _ = tx.send(FromAgent::Error(e)).await;
            return;
        }
    };
    ticket.said_hello();
    let declared: BTreeSet<String> = hello.tables.into_iter().collect();
    tracing::info!(publisher = %identity, %peer, tables = ?declared, "publisher connected");
    // The forwarder answers the hello with the first want.
    let _forwarder = AbortOnDrop(tokio::spawn(forward_wants(
        store.clone(),
        declared.clone(),
        tx.clone(),
    )));

    let max = limits.max_line_bytes;
    let mut idle_deadline = tokio::time::Instant::now() + limits.idle_timeout;
    loop {
        let line =
            tokio::time::timeout_at(idle_deadline, read_line_limited(&mut reader, &mut buf, max))
                .await;
        let reply = match line {
            Err(_) => {
                store.metrics.record_publish_refusal("idle_timeout");
                let t = limits.idle_timeout;
                say(format!(
                    "nothing received for {t:?} ([edge] idle_timeout); closing the connection"
                ))
                .await;
                break;
            }
            Ok(Err(_)) | Ok(Ok(Line::Eof)) => break,
            Ok(Ok(Line::TooLong)) => {
                store.metrics.record_publish_refusal("max_line_bytes");
                say(format!(
                    "line exceeds the limit of {max} bytes ([edge] max_line_bytes); closing the \
                     connection"
                ))
                .await;
                break;
            }
            // Blank lines are allowed but do not count as activity.
            Ok(Ok(Line::Data)) if buf.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(Ok(Line::Data)) => {
                ticket.active(Instant::now());
                idle_deadline = tokio::time::Instant::now() + limits.idle_timeout;
                match decode_line(&buf) {
                    Err(e) => FromAgent::Error(e),
                    Ok(FromPublisher::Hello(_)) => {
                        store.metrics.record_publish_refusal("one_hello");
                        say(
                            "one hello per connection: connect again to publish as another \
                             publisher; closing the connection"
                                .into(),
                        )
                        .await;
                        break;
                    }
                    Ok(FromPublisher::Publish(p)) if !declared.contains(&p.table) => {
                        FromAgent::Error(
                            PublishError::new("table not declared in this publisher's hello")
                                .table(&p.table),
                        )
                    }
                    Ok(FromPublisher::Publish(p)) => match store.publish(&identity, &p) {
                        Ok(rows) => FromAgent::Ok(PublishOk {
                            table: p.table,
                            rows,
                        }),
                        Err(e) => {
                            tracing::debug!(publisher = %identity, error = %e, "publish refused");
                            FromAgent::Error(e)
                        }
                    },
                }
            }
        };
        if tx.send(reply).await.is_err() {
            break;
        }
    }
    tracing::info!(publisher = %identity, "publisher disconnected");
}

/// Sends the publisher its wanted tables now and whenever that set changes.
async fn forward_wants(
    store: Arc<EdgeStore>,
    declared: BTreeSet<String>,
    tx: mpsc::Sender<FromAgent>,
) {
    let mut rx = store.subscribe();
    let mut last: Option<Vec<String>> = None;
    loop {
        let want: Vec<String> = rx
            .borrow_and_update()
            .intersection(&declared)
            .cloned()
            .collect();
        if last.as_ref() != Some(&want) {
            if tx.send(FromAgent::Want(want.clone())).await.is_err() {
                return;
            }
            last = Some(want);
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::store::tests::store;
    use crate::edge::store::{EdgeLimits, StoreCollector};
    use crate::edge::LocalPublisher;
    use tokio::io::{AsyncBufReadExt, DuplexStream, Lines};

    struct Client {
        lines: Lines<BufReader<tokio::io::ReadHalf<DuplexStream>>>,
        w: tokio::io::WriteHalf<DuplexStream>,
    }

    impl Client {
        async fn send(&mut self, line: &str) {
            let _ = self.w.write_all(line.as_bytes()).await;
            let _ = self.w.write_all(b"\n").await;
        }

        /// The next message, or None once the agent closed the connection.
        async fn recv(&mut self) -> Option<serde_json::Value> {
            let line = tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
                .await
                .expect("the agent answers or closes in time");
            line.ok()
                .flatten()
                .map(|l| serde_json::from_str(&l).expect("JSON"))
        }

        async fn error(&mut self) -> String {
            let m = self.recv().await.expect("a reply");
            m["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }
    }

    fn connect(store: &Arc<EdgeStore>, peer: Peer) -> Client {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (sr, sw) = tokio::io::split(server);
        tokio::spawn(session(store.clone(), sr, sw, peer));
        let (cr, cw) = tokio::io::split(client);
        Client {
            lines: BufReader::new(cr).lines(),
            w: cw,
        }
    }

    fn tcp() -> Peer {
        Peer::Tcp(None)
    }

    const HELLO: &str = r#"{"hello": {"publisher": "a", "tables": ["machinerole"]}}"#;
    const PUBLISH: &str = r#"{"publish": {"table": "machinerole", "rows": [{"role": "x"}]}}"#;

    #[tokio::test]
    async fn an_http_post_publishes_nothing() {
        let s = Arc::new(store(EdgeLimits::defaults()));
        let mut c = connect(&s, tcp());
        c.send("POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-ndjson\r\n\r")
            .await;
        c.send(HELLO).await;
        c.send(PUBLISH).await;
        assert!(c.error().await.contains("send hello first"));
        assert_eq!(c.recv().await, None, "closed");
        // A publish as the first line is no better.
        let mut c = connect(&s, tcp());
        c.send(PUBLISH).await;
        assert!(c.error().await.contains("send hello first"));
        assert_eq!(c.recv().await, None);
        assert_eq!(s.stored_bytes(), 0);
        assert!(s.connections.is_empty());
    }

    #[tokio::test]
    async fn hello_and_idle_timeouts_close_connections() {
        let mut limits = EdgeLimits::defaults();
        limits.hello_timeout = Duration::from_millis(100);
        limits.idle_timeout = Duration::from_millis(300);
        let s = Arc::new(store(limits));
        let mut silent = connect(&s, tcp());
        // Blank lines are not a hello.
        silent.send("").await;
        assert!(silent.error().await.contains("hello_timeout"));
        assert_eq!(silent.recv().await, None);

        let mut c = connect(&s, tcp());
        c.send(HELLO).await;
        assert_eq!(
            c.recv().await,
            Some(serde_json::json!({"want": ["machinerole"]}))
        );
        c.send(PUBLISH).await;
        assert!(c.recv().await.is_some_and(|m| m["ok"]["rows"] == 1));
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            c.send("").await;
        }
        assert!(c.error().await.contains("idle_timeout"));
        assert_eq!(c.recv().await, None);
        assert!(s.connections.is_empty());
    }

    #[tokio::test]
    async fn one_hello_per_connection() {
        let s = Arc::new(store(EdgeLimits::defaults()));
        let mut c = connect(&s, tcp());
        c.send(HELLO).await;
        assert!(c.recv().await.is_some_and(|m| m.get("want").is_some()));
        c.send(r#"{"hello": {"publisher": "b", "tables": ["machinerole"]}}"#)
            .await;
        assert!(c.error().await.contains("one hello per connection"));
        assert_eq!(c.recv().await, None);
        // A refused hello closes too.
        for hello in [
            r#"{"hello": {"publisher": "u", "tables": ["nosuch"]}}"#,
            r#"{"hello": {"publisher": "a@uid0", "tables": ["machinerole"]}}"#,
            r#"{"hello": {"publisher": "", "tables": []}}"#,
        ] {
            let mut c = connect(&s, tcp());
            c.send(hello).await;
            assert!(c.error().await.contains("hello refused"));
            assert_eq!(c.recv().await, None);
        }
        let mut limits = EdgeLimits::defaults();
        limits.max_tables_per_publisher = 1;
        let s = Arc::new(store(limits));
        let mut c = connect(&s, tcp());
        c.send(r#"{"hello": {"publisher": "a", "tables": ["machinerole", "load_info"]}}"#)
            .await;
        assert!(c.error().await.contains("max_tables_per_publisher"));
    }

    #[tokio::test]
    async fn silent_connections_make_room_for_publishers() {
        let mut limits = EdgeLimits::defaults();
        limits.max_publishers = 4;
        let s = Arc::new(store(limits));
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(connect(&s, tcp()));
        }
        // Let the four be admitted first.
        for _ in 0..100 {
            if s.connections.len() == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(s.connections.len(), 4);
        let mut c = connect(&s, tcp());
        c.send(HELLO).await;
        assert!(c.recv().await.is_some_and(|m| m.get("want").is_some()));
        assert!(idle[0].error().await.contains("make room"));
        assert_eq!(idle[0].recv().await, None);
        assert_eq!(s.connections.len(), 4);
    }

    /// A listener out of file descriptors for a while, then with one connection.
    struct Flaky {
        errors: std::sync::atomic::AtomicUsize,
        conn: Mutex<Option<DuplexStream>>,
    }

    impl Accept for Flaky {
        type R = tokio::io::ReadHalf<DuplexStream>;
        type W = tokio::io::WriteHalf<DuplexStream>;
        async fn accept_split(&self) -> std::io::Result<(Self::R, Self::W, Peer)> {
            if self.errors.load(Ordering::Relaxed) > 0 {
                self.errors.fetch_sub(1, Ordering::Relaxed);
                return Err(std::io::Error::from_raw_os_error(24)); // EMFILE
            }
            let conn = self.conn.lock().expect("lock").take();
            match conn {
                Some(s) => {
                    let (r, w) = tokio::io::split(s);
                    Ok((r, w, tcp()))
                }
                None => std::future::pending().await,
            }
        }
    }

    #[tokio::test]
    async fn accept_errors_never_end_the_accept_loop() {
        let s = Arc::new(store(EdgeLimits::defaults()));
        let (client, server) = tokio::io::duplex(1 << 16);
        let listener = Flaky {
            errors: 5.into(),
            conn: Mutex::new(Some(server)),
        };
        let _serving = AbortOnDrop(tokio::spawn(accept_loop(s.clone(), listener)));
        let (cr, cw) = tokio::io::split(client);
        let mut c = Client {
            lines: BufReader::new(cr).lines(),
            w: cw,
        };
        c.send(HELLO).await;
        assert_eq!(
            c.recv().await,
            Some(serde_json::json!({"want": ["machinerole"]}))
        );
    }

    #[tokio::test]
    async fn unix_peers_are_known_by_uid() {
        let mut limits = EdgeLimits::defaults();
        limits.allowed_uids = vec![7];
        let s = Arc::new(store(limits));
        let mut stranger = connect(
            &s,
            Peer::Unix {
                uid: Some(8),
                pid: Some(1),
            },
        );
        assert!(stranger.error().await.contains("uid 8 may not publish"));
        assert_eq!(stranger.recv().await, None);
        let mut c = connect(
            &s,
            Peer::Unix {
                uid: Some(7),
                pid: Some(1),
            },
        );
        c.send(HELLO).await;
        assert!(c.recv().await.is_some_and(|m| m.get("want").is_some()));
        c.send(PUBLISH).await;
        assert!(c.recv().await.is_some_and(|m| m["ok"]["rows"] == 1));
        let out = StoreCollector(s.clone()).collect(std::time::SystemTime::now());
        assert_eq!(out.tables[0].part.key, "10.0.0.1/a@uid7");
    }
}

//! The local publish socket: a Unix domain socket (and optionally TCP on loopback)
//! speaking the newline-delimited JSON protocol of `query_client::protocol`.
//!
//! Each connection is a session task on the compute pool: a reader that decodes and
//! validates lines, a writer that sends replies and `want` updates in order. A bad line gets
//! an error and the session goes on; a line over the size limit gets an error and the
//! connection is closed, since the rest of that line cannot be read safely.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use query_client::protocol::{
    decode_line, encode_line, FromAgent, FromPublisher, PublishError, PublishOk,
};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;

use super::store::EdgeStore;

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

/// A listener whose connections split into a read and a write half.
trait Accept {
    type R: AsyncRead + Unpin + Send + 'static;
    type W: AsyncWrite + Unpin + Send + 'static;
    fn accept_split(
        &self,
    ) -> impl std::future::Future<Output = std::io::Result<(Self::R, Self::W)>> + Send;
}

impl Accept for UnixListener {
    type R = tokio::net::unix::OwnedReadHalf;
    type W = tokio::net::unix::OwnedWriteHalf;
    async fn accept_split(&self) -> std::io::Result<(Self::R, Self::W)> {
        Ok(self.accept().await?.0.into_split())
    }
}

impl Accept for TcpListener {
    type R = tokio::net::tcp::OwnedReadHalf;
    type W = tokio::net::tcp::OwnedWriteHalf;
    async fn accept_split(&self) -> std::io::Result<(Self::R, Self::W)> {
        Ok(self.accept().await?.0.into_split())
    }
}

async fn accept_loop<L: Accept>(store: Arc<EdgeStore>, listener: L) {
    loop {
        match listener.accept_split().await {
            Ok((r, w)) => {
                tokio::spawn(session(store.clone(), r, w));
            }
            // Out of descriptors and the like: say so, breathe, go on.
            Err(e) => {
                tracing::warn!(error = %e, "accepting a publisher failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
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

async fn session<R, W>(store: Arc<EdgeStore>, r: R, mut w: W)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    if let Err(e) = store.connect() {
        let _ = w.write_all(&encode_line(&FromAgent::Error(e))).await;
        let _ = w.shutdown().await;
        return;
    }
    let (tx, mut rx) = mpsc::channel::<FromAgent>(64);
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if w.write_all(&encode_line(&msg)).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    });

    let mut reader = BufReader::new(r);
    let mut buf = Vec::new();
    let mut publisher: Option<(String, BTreeSet<String>)> = None;
    let mut want_forwarder: Option<tokio::task::JoinHandle<()>> = None;
    let max = store.limits.max_line_bytes;
    loop {
        let reply = match read_line_limited(&mut reader, &mut buf, max).await {
            Ok(Line::Eof) | Err(_) => break,
            Ok(Line::TooLong) => {
                let e = PublishError::new(format!(
                    "line exceeds the limit of {max} bytes; closing the connection"
                ));
                let _ = tx.send(FromAgent::Error(e)).await;
                break;
            }
            Ok(Line::Data) if buf.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(Line::Data) => match decode_line(&buf) {
                Err(e) => FromAgent::Error(e),
                Ok(FromPublisher::Hello(h)) => {
                    let unknown: Vec<_> = h
                        .tables
                        .iter()
                        .filter(|t| store.schemas.get(t).is_none())
                        .cloned()
                        .collect();
                    if !unknown.is_empty() {
                        // Refused whole, so a publisher never believes a table is accepted.
                        FromAgent::Error(PublishError::new(format!(
                            "hello refused: no schema for {unknown:?}"
                        )))
                    } else {
                        let declared: BTreeSet<String> = h.tables.into_iter().collect();
                        tracing::info!(publisher = %h.publisher, tables = ?declared, "publisher connected");
                        publisher = Some((h.publisher, declared.clone()));
                        if let Some(f) = want_forwarder.take() {
                            f.abort();
                        }
                        // The forwarder answers the hello with the first want.
                        want_forwarder = Some(tokio::spawn(forward_wants(
                            store.clone(),
                            declared,
                            tx.clone(),
                        )));
                        continue;
                    }
                }
                Ok(FromPublisher::Publish(p)) => match &publisher {
                    None => FromAgent::Error(
                        PublishError::new("send hello before publishing").table(&p.table),
                    ),
                    Some((_, declared)) if !declared.contains(&p.table) => FromAgent::Error(
                        PublishError::new("table not declared in this publisher's hello")
                            .table(&p.table),
                    ),
                    Some((name, _)) => match store.publish(name, &p) {
                        Ok(rows) => FromAgent::Ok(PublishOk {
                            table: p.table,
                            rows,
                        }),
                        Err(e) => {
                            tracing::debug!(publisher = %name, error = %e, "publish refused");
                            FromAgent::Error(e)
                        }
                    },
                },
            },
        };
        if tx.send(reply).await.is_err() {
            break;
        }
    }
    if let Some(f) = want_forwarder {
        f.abort();
    }
    drop(tx);
    let _ = writer.await;
    store.disconnect();
    if let Some((name, _)) = publisher {
        tracing::info!(publisher = %name, "publisher disconnected");
    }
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

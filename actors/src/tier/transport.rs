//! Byte streams between tiers: TCP between processes, or in-process pipes (`mem:NAME`) so
//! the demo runs a whole hierarchy in one process over the same protocol code.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// One end of a link.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}
pub type BoxStream = Pin<Box<dyn Stream>>;

/// In-process pipes carry frames up to this size without blocking the writer.
const PIPE_BYTES: usize = 1 << 20;

type Registry = Mutex<HashMap<String, mpsc::Sender<DuplexStream>>>;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// Connects to a child: `host:port` over TCP, `mem:NAME` in process.
pub async fn dial(addr: &str, timeout: Duration) -> std::io::Result<BoxStream> {
    if let Some(name) = addr.strip_prefix("mem:") {
        let tx = registry()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned();
        let tx = tx.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                format!("no in-process listener '{name}'"),
            )
        })?;
        let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
        tx.send(theirs).await.map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                format!("in-process listener '{name}' is gone"),
            )
        })?;
        return Ok(Box::pin(ours));
    }
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connecting to {addr} timed out after {timeout:?}"),
            )
        })??;
    // Frames are written whole; waiting to coalesce them only adds latency.
    stream.set_nodelay(true)?;
    Ok(Box::pin(stream))
}

/// Where parents connect to this node.
pub enum Listener {
    Tcp(TcpListener),
    Memory(String, mpsc::Receiver<DuplexStream>),
}

impl Listener {
    /// An in-process listener named `name` (dialed as `mem:NAME`).
    pub fn memory(name: &str) -> Listener {
        let (tx, rx) = mpsc::channel(64);
        registry()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), tx);
        Listener::Memory(name.to_string(), rx)
    }

    /// The next parent; None when an in-process listener's registry entry is gone.
    pub async fn accept(&mut self) -> std::io::Result<Option<Accepted>> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                // Frames are written whole; failing to say so only adds latency, and must
                // not count as a failed accept.
                if let Err(e) = s.set_nodelay(true) {
                    tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
                }
                Ok(Some(Accepted {
                    stream: Box::pin(s),
                    peer: peer.to_string(),
                    host: peer.ip().to_string(),
                }))
            }
            Listener::Memory(name, rx) => Ok(rx.recv().await.map(|s| {
                let peer = format!("mem-parent-of:{name}");
                Accepted {
                    stream: Box::pin(s) as BoxStream,
                    host: peer.clone(),
                    peer,
                }
            })),
        }
    }
}

/// A connection a [`Listener`] accepted.
pub struct Accepted {
    pub stream: BoxStream,
    /// The peer as logs name it (`ip:port`).
    pub peer: String,
    /// The peer's address without the port: sessions are counted per host.
    pub host: String,
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Memory(name, _) = self {
            registry()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(name);
        }
    }
}

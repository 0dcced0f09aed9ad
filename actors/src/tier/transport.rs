//! Byte streams between tiers: TCP between processes (mutual TLS over it with `[link.tls]`:
//! [`Dialer`] here, the listener's side in `parent_links`), or in-process pipes
//! (`mem:NAME`, always plain) so the demo runs a whole hierarchy in one process over the
//! same protocol code.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;

use crate::link::LinkError;
use crate::tls::{describe_handshake, MutualTls};

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

/// How this node dials its children: plain, or mutual TLS on TCP (`[link.tls]`). In-process
/// `mem:` pipes are always plain.
#[derive(Clone, Default)]
pub struct Dialer {
    tls: Option<(Arc<ClientConfig>, Option<ServerName<'static>>)>,
}

impl Dialer {
    /// Plain TCP (or TLS with `tls`).
    pub fn new(tls: Option<&MutualTls>) -> Dialer {
        Dialer {
            tls: tls.map(|t| (t.client.clone(), t.server_name.clone())),
        }
    }

    /// Connects to `addr` and, with TLS, completes the handshake, all within `timeout`.
    /// The child's certificate must carry `[link.tls] server_name` if set, else the host
    /// of `addr`.
    pub async fn dial(&self, addr: &str, timeout: Duration) -> std::io::Result<BoxStream> {
        let Some((config, name)) = self.tls.as_ref().filter(|_| !addr.starts_with("mem:")) else {
            return dial(addr, timeout).await;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let name = match name {
            Some(n) => n.clone(),
            None => server_name_of(addr)?,
        };
        let tcp = dial(addr, timeout).await?;
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        match tokio::time::timeout_at(deadline, connector.connect(name, tcp)).await {
            Ok(Ok(s)) => Ok(Box::pin(s)),
            Ok(Err(e)) => {
                let (_, why) = describe_handshake(&e);
                Err(std::io::Error::new(
                    e.kind(),
                    format!("TLS handshake with {addr} failed: {why}"),
                ))
            }
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("TLS handshake with {addr} timed out after {timeout:?}"),
            )),
        }
    }
}

/// The host of `HOST:PORT` (or `[V6]:PORT`) as the name a server's certificate must carry
/// (an IP literal is an IP name).
fn server_name_of(addr: &str) -> std::io::Result<ServerName<'static>> {
    query_client::dns::split_host(addr, 0)
        .and_then(|(host, _)| ServerName::try_from(host).ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("'{addr}' has no host a certificate can name"),
            )
        })
}

/// With TLS 1.3 a client learns that the server refused its certificate only at its first
/// read: an I/O error carrying the server's alert becomes a handshake error saying why.
pub fn explain_tls(e: LinkError) -> LinkError {
    match e {
        LinkError::Io(io)
            if io
                .get_ref()
                .is_some_and(|i| i.is::<tokio_rustls::rustls::Error>()) =>
        {
            let (kind, message) = describe_handshake(&io);
            LinkError::Handshake { kind, message }
        }
        other => other,
    }
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

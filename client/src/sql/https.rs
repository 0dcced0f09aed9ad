//! HTTPS for [`super::SqlClient`] (and so `query`): rustls (ring provider, TLS 1.3, as the nodes) trusting the CAs of
//! `--ca`, presenting `--cert`/`--key` if given, plugged into ureq as its TLS connector.
//! ureq's own `tls` feature is not used: it would add webpki-roots and turn on rustls's
//! TLS 1.2 and logging for the whole workspace, and a fleet's nodes carry certificates of
//! its own CA anyway.
//!
//! The client dials addresses it resolved itself, so the name a node's certificate must
//! carry is set per request (`Https::expect_name`, kept per thread: ureq connects on the
//! calling thread, and one client may serve several threads): the host asked for (`-H NAME`, or a
//! redirect's host), not the address dialed.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// The trust (and identity) HTTPS connections use: load it with [`Https::load`].
pub struct Https {
    config: Arc<ClientConfig>,
}

thread_local! {
    /// The name the next connection made on this thread must present a certificate for.
    static EXPECTED: RefCell<Option<ServerName<'static>>> = const { RefCell::new(None) };
}

fn certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{what} {}: no certificate in it", path.display()));
    }
    Ok(certs)
}

impl Https {
    /// Trusts the CAs of the PEM bundle `ca`; with `identity` (certificate chain, key),
    /// presents that client certificate.
    pub fn load(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Https, super::SqlError> {
        Self::configure(ca, identity).map_err(super::SqlError::Setup)
    }

    fn configure(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Https, String> {
        let mut roots = RootCertStore::empty();
        for c in certs("--ca", ca)? {
            roots
                .add(c)
                .map_err(|e| format!("--ca {}: not a usable CA: {e}", ca.display()))?;
        }
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| format!("TLS setup: {e}"))?
                .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = certs("--cert", cert)?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("--key {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("--cert/--key: {e}"))?
            }
        };
        Ok(Https {
            config: Arc::new(config),
        })
    }

    /// The name (`host`, `host:port`, `[v6]:port`) whose certificate the next connection
    /// must present.
    pub(super) fn expect_name(&self, host: &str) -> Result<(), String> {
        let name = server_name(host)?;
        EXPECTED.with(|e| *e.borrow_mut() = Some(name));
        Ok(())
    }
}

/// The name part of `host[:port]`, as rustls checks it (an IP literal is an IP name).
fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let (name, _) = crate::dns::split_host(host, 0)
        .ok_or_else(|| format!("'{host}' is not of the form host[:port]"))?;
    ServerName::try_from(name).map_err(|e| format!("'{host}' is not a name TLS can check: {e}"))
}

#[derive(Debug)]
struct TlsStream(StreamOwned<ClientConnection, Box<dyn ureq::ReadWrite>>);

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl ureq::ReadWrite for TlsStream {
    fn socket(&self) -> Option<&TcpStream> {
        self.0.get_ref().socket()
    }
}

impl ureq::TlsConnector for Https {
    fn connect(
        &self,
        dns_name: &str,
        mut io: Box<dyn ureq::ReadWrite>,
    ) -> Result<Box<dyn ureq::ReadWrite>, ureq::Error> {
        let io_err = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
        let expected = EXPECTED.with(|e| e.borrow().clone());
        let name = match expected {
            Some(n) => n,
            None => server_name(dns_name).map_err(io_err)?,
        };
        let mut conn = ClientConnection::new(self.config.clone(), name)
            .map_err(|e| io_err(format!("TLS: {e}")))?;
        // The handshake now, so a refused certificate is this address's failure.
        conn.complete_io(&mut io)?;
        Ok(Box::new(TlsStream(StreamOwned::new(conn, io))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_their_port() {
        let n = |h: &str| server_name(h).map(|s| s.to_str().into_owned());
        assert_eq!(n("sql.example:8443"), Ok("sql.example".into()));
        assert_eq!(n("sql.example"), Ok("sql.example".into()));
        assert_eq!(n("10.0.0.20:8080"), Ok("10.0.0.20".into()));
        assert_eq!(n("[::1]:8080"), Ok("::1".into()));
        assert!(n("not a name").is_err());
    }
}

//! TLS for the whole node: what a `[... tls]` section names (certificate chain, key, the
//! CA bundle peers are checked against), loading and checking those files with errors that
//! name the file and the problem, and the rustls configurations built from them: a server
//! that requires (links, HTTPS with a `ca`) or does not ask for (HTTPS) client
//! certificates, and a client that presents this node's certificate. Also how a failed
//! handshake is described in logs and `/metrics`, and a small CA for tests and the demo
//! ([`ca`]).
//!
//! rustls with the `ring` provider only, TLS 1.3 only: every peer is a Query node built
//! from the same source, so there is nothing older to talk to.
//!
//! Files are read when the node starts; a renewed certificate is picked up by a restart
//! (there is no live reload).

pub mod ca;
mod der;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::Deserialize;

pub use der::Validity;

/// A `tls` section: this node's identity and whom it trusts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM: this node's certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM: the certificate's private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: PathBuf,
    /// PEM bundle of the CAs whose certificates peers must present (and that sign ours).
    /// Required for links (mutual TLS); a server without client certificates needs none.
    pub ca: Option<PathBuf>,
    /// When dialing: the name the peer's certificate must carry, instead of the host of the
    /// address dialed (an IP when a DNS name was resolved).
    pub server_name: Option<String>,
}

impl TlsConfig {
    /// Relative paths are relative to the directory of the config file.
    pub fn resolve(&mut self, base: &Path) {
        for p in [Some(&mut self.cert), Some(&mut self.key), self.ca.as_mut()]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Checks the section's shape (the files are read at start, see [`MutualTls::load`]).
    pub fn validate(&self, what: &str) -> crate::error::ConfigResult<()> {
        let bad = |m: String| {
            Err(crate::error::ConfigError::Invalid {
                what: what.into(),
                message: m,
            })
        };
        for (key, p) in [("cert", Some(&self.cert)), ("key", Some(&self.key))]
            .into_iter()
            .chain([("ca", self.ca.as_ref())])
        {
            if p.is_some_and(|p| p.as_os_str().is_empty()) {
                return bad(format!("{key} must name a PEM file"));
            }
        }
        if let Some(name) = &self.server_name {
            if ServerName::try_from(name.as_str()).is_err() {
                return bad(format!(
                    "server_name '{name}' is neither a DNS name nor an IP address"
                ));
            }
        }
        Ok(())
    }
}

/// What can be wrong with the files of a `tls` section, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} holds no private key (expected PEM: -----BEGIN PRIVATE KEY-----, or RSA/EC PRIVATE KEY)", path.display())]
    NoKey { path: PathBuf },
    #[error("{} is not valid PEM: {message}", path.display())]
    Pem { path: PathBuf, message: String },
    #[error("certificate {} cannot be parsed: {message}", path.display())]
    BadCertificate { path: PathBuf, message: String },
    #[error("certificate {} expired at {not_after} (issue a new one and restart the node)", path.display())]
    Expired { path: PathBuf, not_after: String },
    #[error("certificate {} is not valid yet: valid from {not_before} (check this machine's clock)", path.display())]
    NotYetValid { path: PathBuf, not_before: String },
    #[error("the key {} does not match the certificate {}", key.display(), cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("the key {} cannot be used: {message}", path.display())]
    BadKey { path: PathBuf, message: String },
    #[error("certificate {} is not trusted by the CA bundle {}: {reason} (peers trusting the same CAs would refuse it)", cert.display(), ca.display())]
    Untrusted {
        cert: PathBuf,
        ca: PathBuf,
        reason: String,
    },
    #[error("{what}: {message}")]
    Setup { what: &'static str, message: String },
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate of a PEM file, at least one; each parsed far enough to know when it
/// is valid.
pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    for c in &certs {
        Validity::of(c).map_err(|message| TlsError::BadCertificate {
            path: path.to_path_buf(),
            message,
        })?;
    }
    Ok(certs)
}

/// The first private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read("key", path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_path_buf(),
        },
        e => TlsError::Pem {
            path: path.to_path_buf(),
            message: e.to_string(),
        },
    })
}

/// The ring provider: the only one built (aws-lc-rs needs cmake and minutes of build).
/// AES-128-GCM first (ring's default puts AES-256-GCM first): with AES-NI it is the
/// cheapest suite, and links carry whole tables each interval. The client's order decides,
/// and both ends are Query nodes, so this is the suite links use; the others stay for peers
/// that offer nothing else.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(p)
}

/// This node's certificate chain and key, checked: the certificate is valid now and the key
/// is its key.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    pub fn load(cfg: &TlsConfig) -> Result<Identity, TlsError> {
        Identity::load_at(cfg, SystemTime::now())
    }

    fn load_at(cfg: &TlsConfig, now: SystemTime) -> Result<Identity, TlsError> {
        let chain = load_certs("cert", &cfg.cert)?;
        let key = load_key(&cfg.key)?;
        // The leaf's dates: an expired certificate would fail every handshake with a
        // message at the peer; say so here, at start, naming the file.
        if let Ok(v) = Validity::of(&chain[0]) {
            v.check(now).map_err(|e| e.into_error(&cfg.cert))?;
        }
        let signing = provider()
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| TlsError::BadKey {
                path: cfg.key.clone(),
                message: e.to_string(),
            })?;
        let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(TlsError::KeyMismatch {
                    key: cfg.key.clone(),
                    cert: cfg.cert.clone(),
                })
            }
            // Unknown: the key type cannot tell its public key; the handshake will tell.
            Err(_) => {}
        }
        Ok(Identity { chain, key })
    }
}

/// The trusted roots of a CA bundle. An expired CA in the bundle is logged, not refused: a
/// bundle keeps the old CA for a while when a fleet moves to a new one.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let certs = load_certs("ca", path)?;
    let mut roots = RootCertStore::empty();
    let now = SystemTime::now();
    for (i, c) in certs.into_iter().enumerate() {
        if let Ok(v) = Validity::of(&c) {
            if let Err(e) = v.check(now) {
                tracing::warn!(ca = %path.display(), index = i, "a CA of the bundle is not valid now: {}", e.into_error(path));
            }
        }
        roots.add(c).map_err(|e| TlsError::BadCertificate {
            path: path.to_path_buf(),
            message: format!("certificate #{i} is not a usable CA: {e}"),
        })?;
    }
    Ok(roots)
}

/// Whether a server asks clients for certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts {
    /// Every client presents a certificate signed by a CA of `ca` (links).
    Required,
    /// Clients are not asked (a server whose users authenticate otherwise).
    NotAsked,
    /// Every client presents a certificate signed by a CA of `ca`, which need not have
    /// signed ours (HTTPS: users' certificates come from their own CA, the node's from
    /// whichever CA its clients trust).
    RequiredOtherCa,
    /// As `RequiredOtherCa` for a client that presents a certificate (an untrusted one
    /// fails the handshake), but a client may present none (HTTPS beside tokens: it then
    /// authenticates with a token).
    OptionalOtherCa,
}

fn setup(what: &'static str) -> impl Fn(rustls::Error) -> TlsError {
    move |e| TlsError::Setup {
        what,
        message: e.to_string(),
    }
}

fn ca_path(cfg: &TlsConfig) -> Result<&Path, TlsError> {
    cfg.ca.as_deref().ok_or(TlsError::Setup {
        what: "tls",
        message: "ca (the CA bundle peers' certificates are checked against) is required".into(),
    })
}

fn client_verifier(ca: &Path, optional: bool) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider());
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder.build().map_err(|e| TlsError::Setup {
        what: "client certificate verifier",
        message: e.to_string(),
    })
}

/// A TLS server: this node's identity; with [`ClientCerts::Required`], only clients whose
/// certificate a CA of `ca` signed complete the handshake.
pub fn server_config(cfg: &TlsConfig, clients: ClientCerts) -> Result<Arc<ServerConfig>, TlsError> {
    let id = Identity::load(cfg)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(setup("TLS versions"))?;
    let builder = match clients {
        ClientCerts::Required => {
            let ca = ca_path(cfg)?;
            let verifier = client_verifier(ca, false)?;
            check_trusted(&*verifier, &id, cfg, ca)?;
            builder.with_client_cert_verifier(verifier)
        }
        ClientCerts::RequiredOtherCa => {
            builder.with_client_cert_verifier(client_verifier(ca_path(cfg)?, false)?)
        }
        ClientCerts::OptionalOtherCa => {
            builder.with_client_cert_verifier(client_verifier(ca_path(cfg)?, true)?)
        }
        ClientCerts::NotAsked => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(id.chain, id.key)
        .map_err(setup("server certificate"))?;
    Ok(Arc::new(config))
}

/// A TLS client presenting this node's certificate and trusting the servers a CA of `ca`
/// signed.
pub fn client_config(cfg: &TlsConfig) -> Result<Arc<ClientConfig>, TlsError> {
    let id = Identity::load(cfg)?;
    let roots = load_roots(ca_path(cfg)?)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(setup("TLS versions"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(id.chain, id.key)
        .map_err(setup("client certificate"))?;
    Ok(Arc::new(config))
}

/// Our own certificate must pass the check peers apply to it (signed by a CA of the bundle,
/// usable as a client certificate): a fleet shares one bundle, so a certificate from another
/// CA is a mistake found here rather than at every peer.
fn check_trusted(
    verifier: &dyn ClientCertVerifier,
    id: &Identity,
    cfg: &TlsConfig,
    ca: &Path,
) -> Result<(), TlsError> {
    verifier
        .verify_client_cert(&id.chain[0], &id.chain[1..], UnixTime::now())
        .map(|_| ())
        .map_err(|e| TlsError::Untrusted {
            cert: cfg.cert.clone(),
            ca: ca.to_path_buf(),
            reason: describe_rustls(&e).1,
        })
}

/// The common name of a peer's certificate (logs; an HTTPS client's identity).
pub fn peer_name(certs: &[CertificateDer<'_>]) -> Option<String> {
    der::subject_common_name(certs.first()?).ok().flatten()
}

/// Both sides of mutual TLS on links: a server requiring client certificates, a client
/// presenting ours, and the name dialed peers must carry (if not their address).
#[derive(Clone)]
pub struct MutualTls {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    pub server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for MutualTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MutualTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl MutualTls {
    pub fn load(cfg: &TlsConfig) -> Result<MutualTls, TlsError> {
        let server_name = match &cfg.server_name {
            Some(n) => Some(
                ServerName::try_from(n.clone()).map_err(|e| TlsError::Setup {
                    what: "server_name",
                    message: e.to_string(),
                })?,
            ),
            None => None,
        };
        Ok(MutualTls {
            server: server_config(cfg, ClientCerts::Required)?,
            client: client_config(cfg)?,
            server_name,
        })
    }
}

/// Why a handshake failed, as `/metrics` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HandshakeFailure {
    /// The client presented no certificate.
    NoCertificate,
    /// The peer's certificate is not signed by a trusted CA.
    UntrustedIssuer,
    Expired,
    NotValidYet,
    /// The server's certificate does not carry the name or address dialed.
    WrongName,
    /// The certificate is not for this use (client or server authentication).
    WrongPurpose,
    /// The peer does not speak TLS (a node without `[link.tls]`, or not a Query node).
    NotTls,
    /// The peer refused our certificate (its alert says why).
    RefusedByPeer,
    /// No handshake within the deadline.
    Timeout,
    Other,
}

impl HandshakeFailure {
    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::NoCertificate => "no_certificate",
            HandshakeFailure::UntrustedIssuer => "untrusted_issuer",
            HandshakeFailure::Expired => "expired",
            HandshakeFailure::NotValidYet => "not_valid_yet",
            HandshakeFailure::WrongName => "wrong_name",
            HandshakeFailure::WrongPurpose => "wrong_purpose",
            HandshakeFailure::NotTls => "not_tls",
            HandshakeFailure::RefusedByPeer => "refused_by_peer",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Other => "other",
        }
    }
}

/// Why a handshake failed, from the error tokio-rustls returned, in an operator's words.
pub fn describe_handshake(e: &std::io::Error) -> (HandshakeFailure, String) {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(r) => describe_rustls(r),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => (
            HandshakeFailure::RefusedByPeer,
            "the peer closed the connection during the handshake (it does not trust our certificate, or does not speak TLS)".into(),
        ),
        None => (HandshakeFailure::Other, e.to_string()),
    }
}

fn describe_rustls(e: &rustls::Error) -> (HandshakeFailure, String) {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    use HandshakeFailure as F;
    match e {
        E::NoCertificatesPresented => (
            F::NoCertificate,
            "the peer presented no certificate (mutual TLS: every node needs [link.tls] cert and key)".into(),
        ),
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer | C::BadSignature => (
                F::UntrustedIssuer,
                "the peer's certificate is not signed by a CA of [link.tls] ca (untrusted issuer)"
                    .into(),
            ),
            C::Expired | C::ExpiredContext { .. } => {
                (F::Expired, format!("the peer's certificate has expired ({c:?})"))
            }
            C::NotValidYet | C::NotValidYetContext { .. } => (
                F::NotValidYet,
                format!("the peer's certificate is not valid yet ({c:?})"),
            ),
            C::NotValidForName | C::NotValidForNameContext { .. } => (
                F::WrongName,
                format!("the peer's certificate does not carry the name dialed; issue it for the node's address or set [link.tls] server_name ({c:?})"),
            ),
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => (
                F::WrongPurpose,
                "the peer's certificate is not for this use (node certificates need both server and client authentication)".into(),
            ),
            other => (F::Other, format!("the peer's certificate is invalid: {other:?}")),
        },
        E::AlertReceived(alert) => {
            let kind = match alert {
                A::CertificateExpired => F::Expired,
                A::UnknownCA | A::BadCertificate | A::CertificateUnknown => F::UntrustedIssuer,
                A::CertificateRequired => F::NoCertificate,
                _ => F::RefusedByPeer,
            };
            (
                kind,
                format!("the peer refused the handshake with alert {alert:?} (it does not accept our certificate)"),
            )
        }
        E::InvalidMessage(_) | E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => (
            F::NotTls,
            format!("the peer does not speak TLS as expected (a node without [link.tls]?): {e}"),
        ),
        other => (F::Other, other.to_string()),
    }
}

#[cfg(test)]
mod tests;

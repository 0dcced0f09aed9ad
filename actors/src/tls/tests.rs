use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use super::ca::{self, CertSpec};
use super::*;

const DAY: Duration = Duration::from_secs(86_400);

/// A CA in a temporary directory and helpers to issue into it.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        ca::init_dir(dir.path(), &CertSpec::for_days("test CA", 30)).expect("ca init");
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn spec(name: &str) -> CertSpec {
        let mut s = CertSpec::for_days(name, 10);
        s.ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        s
    }

    fn issue(&self, spec: &CertSpec) -> TlsConfig {
        ca::issue_in_dir(self.dir.path(), spec).expect("issue");
        self.config(&spec.name)
    }

    fn config(&self, name: &str) -> TlsConfig {
        TlsConfig {
            cert: self.path(&format!("{name}.pem")),
            key: self.path(&format!("{name}.key")),
            ca: Some(self.path("ca.pem")),
            server_name: None,
        }
    }
}

fn err_text(r: Result<MutualTls, TlsError>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn good_files_load() {
    let pki = Pki::new();
    let cfg = pki.issue(&Pki::spec("node-a"));
    MutualTls::load(&cfg).expect("loads");
    server_config(&cfg, ClientCerts::NotAsked).expect("a server without client certificates");
    // A server without client certificates needs no CA bundle.
    let no_ca = TlsConfig { ca: None, ..cfg };
    server_config(&no_ca, ClientCerts::NotAsked).expect("no ca needed");
    assert!(server_config(&no_ca, ClientCerts::Required).is_err());
}

#[test]
fn missing_file_names_it() {
    let pki = Pki::new();
    let mut cfg = pki.issue(&Pki::spec("node-a"));
    cfg.cert = pki.path("nope.pem");
    let e = err_text(MutualTls::load(&cfg));
    assert!(
        e.contains("cannot read cert") && e.contains("nope.pem"),
        "{e}"
    );
}

#[test]
fn a_file_without_a_key_or_certificate_says_so() {
    let pki = Pki::new();
    let mut cfg = pki.issue(&Pki::spec("node-a"));
    // The certificate file where the key should be.
    cfg.key = cfg.cert.clone();
    let e = err_text(MutualTls::load(&cfg));
    assert!(
        e.contains("holds no private key") && e.contains("node-a.pem"),
        "{e}"
    );

    let mut cfg = pki.config("node-a");
    cfg.cert = cfg.key.clone();
    let e = err_text(MutualTls::load(&cfg));
    assert!(
        e.contains("holds no certificate") && e.contains("node-a.key"),
        "{e}"
    );

    std::fs::write(
        pki.path("garbage.pem"),
        "-----BEGIN CERTIFICATE-----\n!!!\n",
    )
    .expect("w");
    let mut cfg = pki.config("node-a");
    cfg.cert = pki.path("garbage.pem");
    let e = err_text(MutualTls::load(&cfg));
    assert!(e.contains("garbage.pem"), "{e}");
}

#[test]
fn an_expired_certificate_is_reported_as_expired() {
    let pki = Pki::new();
    let mut spec = Pki::spec("old");
    spec.not_before = SystemTime::now() - 10 * DAY;
    spec.not_after = SystemTime::now() - DAY;
    let cfg = pki.issue(&spec);
    let e = err_text(MutualTls::load(&cfg));
    assert!(e.contains("expired at") && e.contains("old.pem"), "{e}");

    let mut spec = Pki::spec("future");
    spec.not_before = SystemTime::now() + DAY;
    spec.not_after = SystemTime::now() + 10 * DAY;
    let cfg = pki.issue(&spec);
    let e = err_text(MutualTls::load(&cfg));
    assert!(
        e.contains("not valid yet") && e.contains("future.pem"),
        "{e}"
    );
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let pki = Pki::new();
    pki.issue(&Pki::spec("a"));
    pki.issue(&Pki::spec("b"));
    let mut cfg = pki.config("a");
    cfg.key = pki.path("b.key");
    let e = err_text(MutualTls::load(&cfg));
    assert!(
        e.contains("does not match") && e.contains("b.key") && e.contains("a.pem"),
        "{e}"
    );
}

#[test]
fn a_certificate_of_another_ca_is_refused_at_start() {
    let ours = Pki::new();
    let theirs = Pki::new();
    let mut cfg = theirs.issue(&Pki::spec("stranger"));
    cfg.ca = Some(ours.path("ca.pem"));
    let e = err_text(MutualTls::load(&cfg));
    assert!(
        e.contains("not trusted by the CA bundle") && e.contains("untrusted issuer"),
        "{e}"
    );
}

#[test]
fn config_shape_is_checked() {
    let cfg: TlsConfig =
        toml::from_str("cert = \"a.pem\"\nkey = \"a.key\"\nca = \"ca.pem\"\n").expect("parses");
    cfg.validate("[link.tls]").expect("valid");
    assert!(toml::from_str::<TlsConfig>("cert = \"a\"\nkey = \"b\"\nkeyy = \"c\"\n").is_err());
    let bad = TlsConfig {
        server_name: Some("not a name!".into()),
        ..cfg.clone()
    };
    let e = bad.validate("[link.tls]").expect_err("bad name");
    assert!(e.to_string().contains("server_name"), "{e}");
    let mut rel = cfg;
    rel.resolve(Path::new("/etc/query"));
    assert_eq!(rel.cert, Path::new("/etc/query/a.pem"));
    assert_eq!(rel.ca.as_deref(), Some(Path::new("/etc/query/ca.pem")));
}

#[test]
fn ca_refuses_to_replace_itself_and_bad_names() {
    let pki = Pki::new();
    let e = ca::init_dir(pki.dir.path(), &CertSpec::for_days("again", 1)).expect_err("exists");
    assert!(e.to_string().contains("exists already"), "{e}");
    let e = ca::issue_in_dir(pki.dir.path(), &Pki::spec("../x")).expect_err("bad name");
    assert!(e.to_string().contains("--name"), "{e}");
    let e = ca::issue_in_dir(pki.dir.path(), &CertSpec::for_days("n", 1)).expect_err("no SAN");
    assert!(e.to_string().contains("--ip"), "{e}");
}

/// Runs a handshake over an in-process pipe: (server's result, client's result).
async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    name: &str,
) -> (std::io::Result<()>, std::io::Result<()>) {
    let (a, b) = tokio::io::duplex(1 << 16);
    let name = ServerName::try_from(name.to_string()).expect("name");
    let s = async move {
        let mut t = tokio_rustls::TlsAcceptor::from(server).accept(a).await?;
        // TLS 1.3: the client's certificate is checked by the server after the client
        // finished; read to see the outcome at the client too.
        tokio::io::AsyncWriteExt::write_all(&mut t, b"x").await?;
        tokio::io::AsyncWriteExt::flush(&mut t).await
    };
    let c = async move {
        let mut t = tokio_rustls::TlsConnector::from(client)
            .connect(name, b)
            .await?;
        let mut buf = [0u8; 1];
        tokio::io::AsyncReadExt::read_exact(&mut t, &mut buf)
            .await
            .map(|_| ())
    };
    tokio::join!(s, c)
}

#[tokio::test]
async fn handshakes_refuse_untrusted_peers_with_reasons() {
    let pki = Pki::new();
    let server = MutualTls::load(&pki.issue(&Pki::spec("server"))).expect("server");
    let client = MutualTls::load(&pki.issue(&Pki::spec("client"))).expect("client");
    let (s, c) = handshake(server.server.clone(), client.client.clone(), "127.0.0.1").await;
    s.expect("server side");
    c.expect("client side");

    // A client without a certificate.
    let bare = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(load_roots(&pki.path("ca.pem")).expect("roots"))
        .with_no_client_auth();
    let (s, _) = handshake(server.server.clone(), Arc::new(bare), "127.0.0.1").await;
    let (kind, why) = describe_handshake(&s.expect_err("refused"));
    assert_eq!(kind, HandshakeFailure::NoCertificate, "{why}");

    // A client whose certificate another CA signed (which trusts ours, so it gets as far).
    let other = Pki::new();
    let mut cfg = other.issue(&Pki::spec("stranger"));
    let stranger_client = {
        let id = Identity::load(&cfg).expect("id");
        ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_root_certificates(load_roots(&pki.path("ca.pem")).expect("roots"))
            .with_client_auth_cert(id.chain, id.key)
            .expect("client")
    };
    let (s, _) = handshake(
        server.server.clone(),
        Arc::new(stranger_client),
        "127.0.0.1",
    )
    .await;
    let (kind, why) = describe_handshake(&s.expect_err("refused"));
    assert_eq!(kind, HandshakeFailure::UntrustedIssuer, "{why}");
    assert!(why.contains("untrusted issuer"), "{why}");

    // Our client dialing a server of another CA: the client refuses.
    cfg.ca = Some(other.path("ca.pem"));
    let stranger = MutualTls::load(&cfg).expect("stranger");
    let (_, c) = handshake(stranger.server.clone(), client.client.clone(), "127.0.0.1").await;
    let (kind, why) = describe_handshake(&c.expect_err("refused"));
    assert_eq!(kind, HandshakeFailure::UntrustedIssuer, "{why}");

    // The name dialed is not in the server's certificate.
    let (_, c) = handshake(server.server.clone(), client.client.clone(), "10.9.9.9").await;
    let (kind, why) = describe_handshake(&c.expect_err("wrong name"));
    assert_eq!(kind, HandshakeFailure::WrongName, "{why}");
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused_as_expired() {
    let pki = Pki::new();
    let server = MutualTls::load(&pki.issue(&Pki::spec("server"))).expect("server");
    let mut spec = Pki::spec("old");
    spec.not_before = SystemTime::now() - 10 * DAY;
    spec.not_after = SystemTime::now() - DAY;
    let cfg = pki.issue(&spec);
    // Built without the start-up check, as a peer's would be.
    let id = Identity::load_at(&cfg, SystemTime::now() - 5 * DAY).expect("was valid");
    let old = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(load_roots(&pki.path("ca.pem")).expect("roots"))
        .with_client_auth_cert(id.chain, id.key)
        .expect("client");
    let (s, _) = handshake(server.server.clone(), Arc::new(old), "127.0.0.1").await;
    let (kind, why) = describe_handshake(&s.expect_err("refused"));
    assert_eq!(kind, HandshakeFailure::Expired, "{why}");
    assert!(why.contains("expired"), "{why}");
}

#[test]
fn plain_bytes_are_not_tls() {
    let e = std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
    );
    assert_eq!(describe_handshake(&e).0, HandshakeFailure::NotTls);
}

/// Links use the cheapest suite with AES-NI (the link TLS benchmark states it).
#[tokio::test]
async fn links_negotiate_tls13_aes_128_gcm() {
    let pki = Pki::new();
    let server = MutualTls::load(&pki.issue(&Pki::spec("server"))).expect("server");
    let client = MutualTls::load(&pki.issue(&Pki::spec("client"))).expect("client");
    let (a, b) = tokio::io::duplex(1 << 16);
    let name = ServerName::try_from("127.0.0.1".to_string()).expect("name");
    let (s, c) = tokio::join!(
        tokio_rustls::TlsAcceptor::from(server.server.clone()).accept(a),
        tokio_rustls::TlsConnector::from(client.client.clone()).connect(name, b),
    );
    let want = Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let c = c.expect("client side");
    assert_eq!(
        c.get_ref().1.negotiated_cipher_suite().map(|s| s.suite()),
        want
    );
    let s = s.expect("server side");
    assert_eq!(
        s.get_ref().1.negotiated_cipher_suite().map(|s| s.suite()),
        want
    );
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

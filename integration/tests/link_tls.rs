//! Mutual TLS between tiers (issue 12) with real `queryd` processes on loopback, their
//! certificates made by `queryd ca`: a whole hierarchy (edges → cluster proxy → TLA → SQL
//! node) answers SQL over mTLS; peers without a certificate, with one of another CA, with
//! an expired one, or without TLS at all are refused at the handshake and receive no table
//! data, while the node keeps serving real parents; a node with an expired certificate, or
//! listening beyond loopback without TLS, does not start and says why. `queryd simulate
//! --tls-*` serves its simulated clusters only to parents with a certificate.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use query_actors::link::frame::{decode_frame, encode_frame, read_frame, write_frame, Codec};
use query_actors::link::wire::{ToChild, ToParent, LINK_VERSION};
use query_actors::tier::transport::Dialer;
use query_actors::tls::ca::{self, CertSpec};
use query_actors::tls::{MutualTls, TlsConfig};
use query_integration::fleet::{free_port, toml_list, Fleet, FleetSpec};
use query_integration::{queryd_ca, queryd_exits, Node, Simulator, Workspace};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(45);
const MAX: usize = 64 << 20;

/// A node's log without the terminal colours tracing adds.
fn log_of(node: &Node) -> String {
    log_file(&node.stderr_log)
}

/// A log file without the terminal colours tracing adds.
fn log_file(path: &Path) -> String {
    let raw = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn ca_init(dir: &Path) {
    queryd_ca(&["init", "--dir", dir.to_str().expect("utf8")]);
}

fn ca_issue(dir: &Path, name: &str, ip: &str) {
    queryd_ca(&[
        "issue",
        "--dir",
        dir.to_str().expect("utf8"),
        "--name",
        name,
        "--ip",
        ip,
        "--days",
        "2",
    ]);
}

fn tls_config(dir: &Path, name: &str) -> TlsConfig {
    TlsConfig {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
        ca: Some(dir.join("ca.pem")),
        server_name: None,
    }
}

#[test]
fn a_whole_hierarchy_answers_sql_over_mutual_tls() {
    let pki = tempfile::tempdir().expect("tempdir");
    ca_init(pki.path());
    let mut spec = FleetSpec::new(70);
    spec.clusters = 1;
    spec.edges_per_cluster = 2;
    spec.host = true;
    spec.prewarm = vec!["sys".into()];
    spec.reload_every = "200ms";
    spec.tls_dir = Some(pki.path().to_path_buf());
    let mut fleet = Fleet::new(spec);
    for m in fleet.members() {
        ca_issue(pki.path(), &m.ip, &m.ip);
    }
    fleet.start_all();

    let edges = fleet.edge_ips(0..fleet.edges.len());
    let sql = fleet.sql();
    let q = "SELECT machine_ip FROM sys ORDER BY machine_ip";
    let want = json!(edges.iter().map(|e| [e]).collect::<Vec<_>>());
    sql.eventually(
        LIMIT,
        "every edge's sys row at the SQL node over mTLS",
        || {
            let (status, answer) = sql.sql(q);
            (status == 200 && answer["rows"] == want).then_some(())
        },
    );
    for m in fleet.members() {
        let log = log_of(m.node());
        assert!(
            !log.contains("TLS handshake refused") && !log.contains("TLS handshake with"),
            "{} ({}): a handshake failed: {log}",
            m.role,
            m.ip
        );
    }
    let log = log_of(fleet.tla.node());
    assert!(
        log.contains("tls=true"),
        "the TLA serves parents over TLS: {log}"
    );
}

/// An edge at 127.0.71.1 serving `sys` over mutual TLS; its workspace and link address.
fn tls_edge(pki: &Path) -> (Workspace, Node, SocketAddr) {
    ca_issue(pki, "edge", "127.0.71.1");
    let ws = Workspace::new();
    let link: SocketAddr = format!("127.0.71.1:{}", free_port("127.0.71.1"))
        .parse()
        .expect("addr");
    let edge = tls_config(pki, "edge");
    let node = ws.start(
        "edge",
        &format!(
            r#"[node]
machine_ip = "127.0.71.1"

[generation]
interval = "500ms"
offset = "50ms"

[edge]
socket = "{socket}"
prewarm = ["sys"]

[link]
listen = "{link}"
hello_timeout = "2s"

[link.tls]
cert = "{cert}"
key = "{key}"
ca = "{ca}"
"#,
            socket = ws.path("publish.sock").display(),
            cert = edge.cert.display(),
            key = edge.key.display(),
            ca = pki.join("ca.pem").display(),
        ),
    );
    (ws, node, link)
}

/// Says hello and requests `sys`, then reads what comes back: the frames decoded, until
/// the connection fails or closes, or `within` passes.
async fn hello_and_request<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    within: Duration,
) -> (Vec<ToParent>, String) {
    let hello = ToChild::Hello {
        parent: "intruder".into(),
        version: LINK_VERSION,
    };
    let request = ToChild::Request {
        tables: vec!["sys".into()],
    };
    let mut frames = Vec::new();
    let ended = tokio::time::timeout(within, async {
        for m in [&hello, &request] {
            if let Err(e) =
                write_frame(&mut s, &encode_frame(m, Codec::None).expect("encode")).await
            {
                return format!("write failed: {e}");
            }
            let _ = s.flush().await;
        }
        loop {
            match read_frame(&mut s, MAX).await {
                Ok(Some(body)) => match decode_frame::<ToParent>(&body, MAX) {
                    Ok(f) => frames.push(f),
                    Err(e) => return format!("undecodable: {e}"),
                },
                Ok(None) => return "closed".to_string(),
                Err(e) => return format!("read failed: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| "still open".to_string());
    (frames, ended)
}

/// A TLS client presenting `cert` (None: no certificate) and trusting `ca`.
fn client(
    ca_pem: &Path,
    cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_pem).expect("ca") {
        roots.add(c.expect("ca cert")).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("versions")
    .with_root_certificates(roots);
    let config = match cert {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).expect("client"),
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Connects with `connector` and tries hello + request; what came back.
async fn tls_intruder(
    connector: tokio_rustls::TlsConnector,
    link: SocketAddr,
) -> (Vec<ToParent>, String) {
    let tcp = TcpStream::connect(link).await.expect("connect");
    let name = ServerName::IpAddress(link.ip().into());
    match connector.connect(name, tcp).await {
        // TLS 1.3: the server checks the client's certificate after the client finished.
        Ok(s) => hello_and_request(s, Duration::from_secs(10)).await,
        Err(e) => (Vec::new(), format!("handshake failed: {e}")),
    }
}

fn metric(node: &Node, line_start: &str) -> u64 {
    let (_, text) = node.get("/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or(0)
}

/// A real parent's exchange over mTLS: hello back, then a generation holding `sys`.
async fn trusted_parent(tls: &MutualTls, link: SocketAddr) {
    let s = Dialer::new(Some(tls))
        .dial(&link.to_string(), Duration::from_secs(5))
        .await
        .expect("a trusted parent connects");
    let (frames, ended) = hello_and_request(s, Duration::from_secs(3)).await;
    assert!(
        matches!(frames.first(), Some(ToParent::Hello { .. })),
        "hello back ({ended})"
    );
    assert!(
        frames.iter().any(|f| matches!(f, ToParent::Generation(_))),
        "a generation ({ended})"
    );
}

#[test]
fn untrusted_peers_are_refused_at_the_handshake() {
    let pki = tempfile::tempdir().expect("tempdir");
    ca_init(pki.path());
    let other = tempfile::tempdir().expect("tempdir");
    ca_init(other.path());
    ca_issue(other.path(), "stranger", "127.0.0.1");
    ca_issue(pki.path(), "parent", "127.0.0.1");
    let (_ws, node, link) = tls_edge(pki.path());
    let parent = MutualTls::load(&tls_config(pki.path(), "parent")).expect("parent");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(trusted_parent(&parent, link));

    // The issue's attack: an unauthenticated hello and a table request in plain TCP. The
    // node answers with a TLS alert at most, and closes.
    rt.block_on(async {
        let (frames, ended) = hello_and_request(
            TcpStream::connect(link).await.expect("connect"),
            Duration::from_secs(10),
        )
        .await;
        assert!(
            frames.is_empty(),
            "plain peer got frames: {} ({ended})",
            frames.len()
        );
        assert_ne!(ended, "still open", "a plain peer is disconnected");
    });

    // A TLS client without a certificate.
    let ca_pem = pki.path().join("ca.pem");
    let (frames, ended) = rt.block_on(tls_intruder(client(&ca_pem, None), link));
    assert!(
        frames.is_empty(),
        "no certificate, yet {} frames ({ended})",
        frames.len()
    );
    assert_ne!(ended, "still open");

    // A certificate another CA signed (the client trusts ours, so it gets that far).
    let stranger = tls_config(other.path(), "stranger");
    let chain = CertificateDer::pem_file_iter(&stranger.cert)
        .expect("pem")
        .collect::<Result<Vec<_>, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(&stranger.key).expect("key");
    let (frames, ended) = rt.block_on(tls_intruder(client(&ca_pem, Some((chain, key))), link));
    assert!(
        frames.is_empty(),
        "another CA's certificate, yet {} frames ({ended})",
        frames.len()
    );
    assert_ne!(ended, "still open");

    // The node keeps serving: SQL, and a trusted parent.
    let (status, answer) = node.sql("SELECT COUNT(*) FROM sys");
    assert_eq!(status, 200, "{answer}");
    rt.block_on(trusted_parent(&parent, link));

    let refused = |reason: &str| {
        metric(
            &node,
            &format!("query_link_tls_refused_total{{reason=\"{reason}\"}}"),
        )
    };
    node.eventually(Duration::from_secs(5), "refusals counted", || {
        (refused("no_certificate") >= 1
            && refused("untrusted_issuer") >= 1
            && refused("not_tls") >= 1)
            .then_some(())
    });
    let log = log_of(&node);
    for says in [
        "presented no certificate",
        "untrusted issuer",
        "does not speak TLS",
    ] {
        assert!(log.contains(says), "the log says '{says}': {log}");
    }
    assert!(
        log.contains("TLS handshake refused") && log.contains("peer=\"127.0.0.1:"),
        "the log names the peer: {log}"
    );
}

#[test]
fn an_expired_certificate_is_refused_and_reported() {
    let pki = tempfile::tempdir().expect("tempdir");
    ca_init(pki.path());
    let (ws, node, link) = tls_edge(pki.path());

    // A peer whose certificate (our CA's) expired yesterday.
    let ca_pem = std::fs::read_to_string(pki.path().join("ca.pem")).expect("ca");
    let ca_key = std::fs::read_to_string(pki.path().join("ca.key")).expect("ca key");
    let day = Duration::from_secs(86_400);
    let mut spec = CertSpec::for_days("expired", 1);
    spec.ips = vec!["127.0.0.1".parse().expect("ip")];
    spec.not_before = SystemTime::now() - 10 * day;
    spec.not_after = SystemTime::now() - day;
    let (cert, key) = ca::issue(&ca_pem, &ca_key, &spec).expect("issue");
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let connector = client(&pki.path().join("ca.pem"), Some((chain, key)));
    let (frames, ended) = rt.block_on(tls_intruder(connector, link));
    assert!(
        frames.is_empty(),
        "expired, yet {} frames ({ended})",
        frames.len()
    );
    node.eventually(Duration::from_secs(5), "the log says expired", || {
        let log = log_of(&node);
        (log.contains("TLS handshake refused") && log.contains("expired")).then_some(())
    });
    let (status, _) = node.sql("SELECT 1");
    assert_eq!(status, 200, "still serving");

    // A node whose own certificate expired does not start, and says which file and when.
    std::fs::write(pki.path().join("old.pem"), &cert).expect("write");
    let cfg = ws.config(&format!(
        "[node]\nmachine_ip = \"127.0.71.2\"\n[edge]\nsocket = \"{}\"\n[link]\nlisten = \"127.0.71.2:{}\"\n[link.tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
        ws.path("second.sock").display(),
        free_port("127.0.71.2"),
        pki.path().join("old.pem").display(),
        pki.path().join("edge.key").display(),
        pki.path().join("ca.pem").display(),
    ));
    let err = refused_start(&[
        "edge",
        "--config",
        cfg.to_str().expect("utf8"),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(
        err.contains("old.pem") && err.contains("expired at"),
        "{err}"
    );
}

#[test]
fn a_public_link_listener_without_tls_does_not_start() {
    let ws = Workspace::new();
    let cfg = ws.config(&format!(
        "[edge]\nsocket = \"{}\"\n[link]\nlisten = \"0.0.0.0:{}\"\n",
        ws.path("p.sock").display(),
        free_port("127.0.0.1"),
    ));
    let err = refused_start(&[
        "edge",
        "--config",
        cfg.to_str().expect("utf8"),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(
        err.contains("not a loopback address") && err.contains("allow_plaintext"),
        "{err}"
    );
}

/// Runs `queryd ARGS`, expecting it to exit at once with an error; returns its stderr.
fn refused_start(args: &[&str]) -> String {
    let (status, _, err) = queryd_exits(args, &format!("{args:?} should not start"));
    assert!(!status.success(), "queryd {args:?} should not start");
    err
}

#[test]
fn a_tls_simulator_serves_only_parents_with_certificates() {
    let pki = tempfile::tempdir().expect("tempdir");
    ca_init(pki.path());
    ca_issue(pki.path(), "simulate", "127.0.75.1");
    ca_issue(pki.path(), "tla", "127.0.75.5");
    let sim_tls = tls_config(pki.path(), "simulate");
    let path = |p: &Path| p.to_str().expect("utf8").to_string();
    let (cert, key, ca) = (
        path(&sim_tls.cert),
        path(&sim_tls.key),
        path(&pki.path().join("ca.pem")),
    );

    // Part of the TLS flags: refused, naming what is missing.
    let (status, _, err) = queryd_exits(
        &[
            "simulate",
            "--listen",
            "127.0.75.1:7600",
            "--tls-cert",
            &cert,
        ],
        "simulate with --tls-cert alone",
    );
    assert!(!status.success());
    assert!(
        err.contains("--tls-key")
            && err.contains("--tls-ca")
            && !err.contains("missing --tls-cert"),
        "{err}"
    );

    // A file that cannot be read: refused at start, naming it.
    let (status, _, err) = queryd_exits(
        &[
            "simulate",
            "--listen",
            "127.0.75.1:7600",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-ca",
            "/nonexistent/ca.pem",
        ],
        "simulate with a missing CA file",
    );
    assert!(!status.success());
    assert!(
        err.contains("--tls-*") && err.contains("cannot read ca /nonexistent/ca.pem"),
        "{err}"
    );

    let sim = Simulator::start(&[
        "--machines",
        "140",
        "--clusters",
        "2",
        "--serve",
        "clusters",
        "--listen",
        "127.0.75.1:7600",
        "--interval",
        "1s",
        "--offset",
        "100ms",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-ca",
        &ca,
    ]);
    let tla = tls_config(pki.path(), "tla");
    let section = |ip: &str| {
        format!(
            "[node]\nmachine_ip = \"{ip}\"\ncluster = \"top\"\n\n[generation]\ninterval = \"1s\"\noffset = \"500ms\"\n\n[host]\nenabled = false\n\n[requests]\nwait = \"30s\"\n\n[link]\nchildren = {}\nbackoff_min = \"100ms\"\nbackoff_max = \"1s\"\n",
            toml_list(&sim.children)
        )
    };
    // A TLA with a certificate of the fleet's CA receives every simulated machine.
    let ws = Workspace::new();
    let with_cert = ws.start(
        "tla-sql",
        &format!(
            "{}\n[link.tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{ca}\"\n",
            section("127.0.75.5"),
            tla.cert.display(),
            tla.key.display(),
        ),
    );
    with_cert.eventually(LIMIT, "140 machines over mTLS", || {
        let (status, a) = with_cert.sql("SELECT COUNT(DISTINCT machine_ip) FROM sys");
        (status == 200 && a["rows"] == json!([[140]])).then_some(())
    });

    // A TLA without `[link.tls]` (plain TCP) is refused at the handshake and sees nothing.
    let ws2 = Workspace::new();
    let plain = ws2.start("tla-sql", &section("127.0.75.6"));
    with_cert.eventually(LIMIT, "the simulator refuses the plain TLA", || {
        let log = log_file(&sim.stderr_log);
        (log.contains("TLS handshake refused") && log.contains("does not speak TLS")).then_some(())
    });
    // A TLS client without a certificate gets no frames either.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let link: SocketAddr = sim.children[0].parse().expect("addr");
    let (frames, ended) = rt.block_on(tls_intruder(client(&pki.path().join("ca.pem"), None), link));
    assert!(
        frames.is_empty(),
        "no certificate, yet {} frames ({ended})",
        frames.len()
    );
    assert_ne!(ended, "still open");
    let (status, a) = plain.sql("SELECT COUNT(*) FROM sys");
    assert!(
        status != 200 || a["rows"] == json!([[0]]),
        "the plain TLA got rows: {a}"
    );
    assert_eq!(plain.get_json("/health")["machines"], 0);
    // The TLA with a certificate keeps receiving.
    let (status, a) = with_cert.sql("SELECT COUNT(DISTINCT machine_ip) FROM sys");
    assert_eq!((status, &a["rows"]), (200, &json!([[140]])), "{a}");
}

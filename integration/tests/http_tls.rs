//! HTTPS (issue 12) with a real `queryd` and certificates made by `queryd ca`: with
//! `[http.tls]` a node answers SQL over TLS to a client trusting the test CA and accepts its
//! own `https://` origin, while plain HTTP and clients trusting another CA get no answer;
//! with `ca`, only clients presenting a certificate of that CA are answered, and beside a
//! tokens file such a certificate's common name is the client's identity, granted by a
//! `[[client]]` entry; a missing certificate file stops the node at start, naming the file.
//! The `query` client speaks HTTPS with `--ca` (and `--cert`/`--key`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use query_actors::tls::{client_config, load_roots, TlsConfig};
use query_integration::{queryd_bin, queryd_ca, queryd_exits, Node, Workspace};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(20);

/// A CA in `dir` and a certificate `name` for 127.0.0.1 signed by it.
fn ca_with(dir: &Path, name: &str) {
    let d = dir.to_str().expect("utf8");
    if !dir.join("ca.pem").exists() {
        queryd_ca(&["init", "--dir", d]);
    }
    queryd_ca(&[
        "issue",
        "--dir",
        d,
        "--name",
        name,
        "--ip",
        "127.0.0.1",
        "--days",
        "2",
    ]);
}

fn path(dir: &Path, file: &str) -> String {
    dir.join(file).to_str().expect("utf8").to_string()
}

/// A client trusting the CA of `dir`, without a certificate of its own.
fn trusting(dir: &Path) -> Arc<ClientConfig> {
    let roots = load_roots(&dir.join("ca.pem")).expect("test CA");
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A client trusting the CA of `server_ca` and presenting `name` of `client_ca`.
fn presenting(server_ca: &Path, client_ca: &Path, name: &str) -> Arc<ClientConfig> {
    // client_config trusts the servers its `ca` signed: give it the server's CA.
    client_config(&TlsConfig {
        cert: client_ca.join(format!("{name}.pem")),
        key: client_ca.join(format!("{name}.key")),
        ca: Some(server_ca.join("ca.pem")),
        server_name: None,
    })
    .expect("client certificate")
}

/// One HTTP/1.1 request to `addr`, over TLS with `tls`, plain otherwise. The raw answer,
/// or why there was none (a refused handshake, a closed connection).
fn request(
    addr: SocketAddr,
    tls: Option<Arc<ClientConfig>>,
    method: &str,
    target: &str,
    headers: &[(&str, String)],
    body: &str,
) -> Result<String, String> {
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let exchange = async move {
            let mut tcp = TcpStream::connect(addr).await?;
            let mut out = Vec::new();
            let read = match tls {
                Some(cfg) => {
                    let name = ServerName::IpAddress(addr.ip().into());
                    let mut s = tokio_rustls::TlsConnector::from(cfg)
                        .connect(name, tcp)
                        .await?;
                    s.write_all(req.as_bytes()).await?;
                    s.read_to_end(&mut out).await
                }
                None => {
                    tcp.write_all(req.as_bytes()).await?;
                    tcp.read_to_end(&mut out).await
                }
            };
            match read {
                // A server closing without close_notify after its answer is still an answer.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
                r => {
                    r?;
                }
            }
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&out).into_owned())
        };
        match tokio::time::timeout(LIMIT, exchange).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("no answer in time".into()),
        }
    })
}

/// The status and JSON body of an HTTP answer; status 0 when there was no HTTP answer.
fn parse(answer: &Result<String, String>) -> (u16, Value) {
    let Ok(text) = answer else {
        return (0, Value::Null);
    };
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        unchunk(body)
    } else {
        body.to_string()
    };
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// A chunked body (answers are streamed) put together.
fn unchunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
    }
    out
}

/// Starts a TLA/SQL node with `[http.tls]` = `tls` (TOML keys); its HTTPS address once it
/// prints it (the node's own https:// URL).
fn start(ws: &Workspace, tls: &str) -> (Node, SocketAddr) {
    start_with(ws, tls, "")
}

/// [`start`] with `extra` sections after `[http.tls]`.
fn start_with(ws: &Workspace, tls: &str, extra: &str) -> (Node, SocketAddr) {
    let cfg = ws.config(&format!(
        "[generation]\ninterval = \"1s\"\noffset = \"100ms\"\n\n[http.tls]\n{tls}\n\n{extra}\n"
    ));
    let node = Node::start_listening(
        &[
            "tla-sql",
            "--config",
            cfg.to_str().expect("utf8"),
            "--listen",
            "127.0.0.1:0",
        ],
        None,
    );
    let addr = node
        .base
        .strip_prefix("https://")
        .unwrap_or_else(|| panic!("an HTTPS listener prints an https:// URL: {}", node.base))
        .parse()
        .expect("address");
    (node, addr)
}

/// Waits until /health answers 200 over TLS with `client`.
fn wait_healthy(node: &Node, addr: SocketAddr, client: &Arc<ClientConfig>) {
    node.eventually(Duration::from_secs(60), "/health 200 over HTTPS", || {
        let r = request(addr, Some(client.clone()), "GET", "/health", &[], "");
        (parse(&r).0 == 200).then_some(())
    });
}

fn no_http_answer(r: &Result<String, String>) -> bool {
    !matches!(r, Ok(text) if text.starts_with("HTTP/"))
}

#[test]
fn https_answers_sql_and_plain_http_gets_nothing() {
    let ws = Workspace::new();
    let pki = tempfile::tempdir().expect("tempdir");
    ca_with(pki.path(), "http");
    let (node, addr) = start(
        &ws,
        &format!(
            "cert = \"{}\"\nkey = \"{}\"\n",
            path(pki.path(), "http.pem"),
            path(pki.path(), "http.key")
        ),
    );
    let client = trusting(pki.path());
    wait_healthy(&node, addr, &client);

    let answer = request(addr, Some(client.clone()), "POST", "/sql", &[], "SELECT 1");
    let (status, body) = parse(&answer);
    assert_eq!(status, 200, "{answer:?}");
    assert_eq!(body["rows"], json!([[1]]), "{answer:?}");

    // The console's own page on https:// is the same origin; another site's is not.
    let own = [("Origin", format!("https://{addr}"))];
    assert_eq!(
        parse(&request(
            addr,
            Some(client.clone()),
            "POST",
            "/sql",
            &own,
            "SELECT 1"
        ))
        .0,
        200
    );
    let foreign = [("Origin", "https://attacker.example".to_string())];
    let (status, body) = parse(&request(
        addr,
        Some(client.clone()),
        "POST",
        "/sql",
        &foreign,
        "SELECT 1",
    ));
    assert_eq!(status, 403, "{body}");

    // Plain HTTP to the TLS port: no HTTP answer, and the node keeps serving.
    let plain = request(addr, None, "POST", "/sql", &[], "SELECT 1");
    assert!(no_http_answer(&plain), "plain HTTP answered: {plain:?}");
    // A client that does not trust the node's CA refuses the handshake.
    let other = tempfile::tempdir().expect("tempdir");
    ca_with(other.path(), "someone");
    let untrusted = request(
        addr,
        Some(trusting(other.path())),
        "GET",
        "/health",
        &[],
        "",
    );
    assert!(no_http_answer(&untrusted), "{untrusted:?}");
    assert!(
        // Both test CAs carry the same name: the signature tells them apart.
        untrusted
            .as_ref()
            .err()
            .is_some_and(|e| e.contains("invalid peer certificate")),
        "{untrusted:?}"
    );
    assert_eq!(
        parse(&request(
            addr,
            Some(client),
            "POST",
            "/sql",
            &[],
            "SELECT 1"
        ))
        .0,
        200
    );
}

#[test]
fn with_a_ca_only_clients_with_its_certificates_are_answered() {
    let ws = Workspace::new();
    // The node's certificate and its users' come from different CAs.
    let pki = tempfile::tempdir().expect("tempdir");
    ca_with(pki.path(), "http");
    let users = tempfile::tempdir().expect("tempdir");
    ca_with(users.path(), "alice");
    let (node, addr) = start(
        &ws,
        &format!(
            "cert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
            path(pki.path(), "http.pem"),
            path(pki.path(), "http.key"),
            path(users.path(), "ca.pem")
        ),
    );
    let alice = presenting(pki.path(), users.path(), "alice");
    wait_healthy(&node, addr, &alice);
    let (status, body) = parse(&request(addr, Some(alice), "POST", "/sql", &[], "SELECT 1"));
    assert_eq!((status, &body["rows"]), (200, &json!([[1]])), "{body}");

    // No certificate, or one of another CA (the node's own): refused, no answer.
    let anonymous = request(
        addr,
        Some(trusting(pki.path())),
        "POST",
        "/sql",
        &[],
        "SELECT 1",
    );
    assert!(no_http_answer(&anonymous), "{anonymous:?}");
    let stranger = presenting(pki.path(), pki.path(), "http");
    let other_ca = request(addr, Some(stranger), "POST", "/sql", &[], "SELECT 1");
    assert!(no_http_answer(&other_ca), "{other_ca:?}");
}

#[test]
fn a_missing_certificate_stops_the_node_naming_the_file() {
    let ws = Workspace::new();
    let cfg = ws.config(
        "[generation]\ninterval = \"1s\"\noffset = \"100ms\"\n\n[http.tls]\ncert = \"missing.pem\"\nkey = \"missing.key\"\n",
    );
    let (status, out, err) = queryd_exits(
        &[
            "tla-sql",
            "--config",
            cfg.to_str().expect("utf8"),
            "--listen",
            "127.0.0.1:0",
        ],
        "without its [http.tls] certificate",
    );
    assert!(!status.success(), "{err}");
    assert!(!out.contains("listening on"), "{out}");
    let file = ws.path("missing.pem");
    assert!(
        err.contains("[http.tls]") && err.contains(&*file.to_string_lossy()),
        "{err}"
    );
}

#[test]
fn client_certificates_are_identities_granted_in_the_tokens_file() {
    let ws = Workspace::new();
    let pki = tempfile::tempdir().expect("tempdir");
    ca_with(pki.path(), "http");
    // Users' certificates: alice is granted a table, bob is trusted but granted nothing; a
    // third CA's "alice" is not trusted at all.
    let users = tempfile::tempdir().expect("tempdir");
    ca_with(users.path(), "alice");
    ca_with(users.path(), "bob");
    let strangers = tempfile::tempdir().expect("tempdir");
    ca_with(strangers.path(), "alice");
    let (secret, entry) =
        query_actors::auth::tokens::generate("carol", &["*".into()], None, false).expect("token");
    let tokens = ws.path("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "{entry}\n[[client]]\nname = \"alice\"\ndomains = [\"*\"]\ntables = [\"continent_data\"]\n"
        ),
    )
    .expect("write tokens");
    let (node, addr) = start_with(
        &ws,
        &format!(
            "cert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
            path(pki.path(), "http.pem"),
            path(pki.path(), "http.key"),
            path(users.path(), "ca.pem")
        ),
        &format!("[auth]\ntokens_file = \"{}\"\n", tokens.display()),
    );
    let alice = presenting(pki.path(), users.path(), "alice");
    wait_healthy(&node, addr, &alice);
    let sql = |client: Arc<ClientConfig>, headers: &[(&str, String)], q: &str| {
        parse(&request(addr, Some(client), "POST", "/sql", headers, q))
    };
    let message = |body: &Value| {
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };

    // Alice's certificate is her identity: her grant's table, and only it.
    let (status, body) = sql(alice.clone(), &[], "SELECT COUNT(*) FROM continent_data");
    assert_eq!((status, &body["rows"]), (200, &json!([[7]])), "{body}");
    let (status, body) = sql(alice.clone(), &[], "SELECT * FROM sys");
    assert_eq!(status, 403, "{body}");
    assert!(
        message(&body).contains("client certificate 'alice' may not read table sys"),
        "{body}"
    );

    // Bob's certificate is trusted (the handshake passes) but grants nothing.
    let bob = presenting(pki.path(), users.path(), "bob");
    let (status, body) = sql(bob.clone(), &[], "SELECT 1");
    assert_eq!(status, 403, "{body}");
    assert!(
        message(&body).contains("client certificate 'bob' is trusted but has no grant"),
        "{body}"
    );

    // Tokens still work beside certificates, with or without one; none at all: 401.
    let bearer = [("Authorization", format!("Bearer {secret}"))];
    let (status, body) = sql(trusting(pki.path()), &bearer, "SELECT 1");
    assert_eq!((status, &body["rows"]), (200, &json!([[1]])), "{body}");
    assert_eq!(sql(bob, &bearer, "SELECT 1").0, 200, "the token decides");
    let (status, body) = sql(trusting(pki.path()), &[], "SELECT 1");
    assert_eq!(status, 401, "{body}");

    // A certificate of a CA the node does not trust never gets an HTTP answer.
    let stranger = request(
        addr,
        Some(presenting(pki.path(), strangers.path(), "alice")),
        "POST",
        "/sql",
        &[],
        "SELECT 1",
    );
    assert!(no_http_answer(&stranger), "{stranger:?}");
}

#[test]
fn a_partition_redirect_from_an_https_node_says_https() {
    let ws = Workspace::new();
    let pki = tempfile::tempdir().expect("tempdir");
    ca_with(pki.path(), "http");
    std::fs::write(
        ws.path("sets.toml"),
        "[[set]]\nname = \"main\"\nsql_name = \"sql.main.test\"\ntla_name = \"tla.main.test\"\n\n\
         [[set.partition]]\nname = \"core\"\nhostname = \"core.main.test:8443\"\ntables = [\"sys\"]\n\n\
         [[set.partition]]\nname = \"procs\"\nhostname = \"procs.main.test:8443\"\ntables = [\"processes\"]\n",
    )
    .expect("write sets");
    let (node, addr) = start_with(
        &ws,
        &format!(
            "cert = \"{}\"\nkey = \"{}\"\n",
            path(pki.path(), "http.pem"),
            path(pki.path(), "http.key")
        ),
        "[aggregator_set]\nfile = \"sets.toml\"\nname = \"main\"\npartition = \"core\"\n",
    );
    let client = trusting(pki.path());
    wait_healthy(&node, addr, &client);
    let answer = request(
        addr,
        Some(client),
        "POST",
        "/sql",
        &[],
        "SELECT COUNT(*) FROM processes",
    );
    let (status, body) = parse(&answer);
    assert_eq!(status, 307, "{answer:?}");
    assert_eq!(body["redirect"]["host"], "procs.main.test:8443", "{body}");
    let text = answer.as_deref().unwrap_or_default().to_ascii_lowercase();
    assert!(
        text.contains("\r\nlocation: https://procs.main.test:8443/sql\r\n"),
        "{answer:?}"
    );
}

/// Runs the `query` client with `args` (no token from the environment): exit code, stdout,
/// stderr.
fn query_cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(queryd_bin().with_file_name("query"))
        .args(args)
        .env_remove("QUERY_TOKEN")
        .env_remove("QUERY_HOST")
        .output()
        .expect("run query");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_query_client_speaks_https_with_the_test_ca() {
    let ws = Workspace::new();
    let pki = tempfile::tempdir().expect("tempdir");
    ca_with(pki.path(), "http");
    let users = tempfile::tempdir().expect("tempdir");
    ca_with(users.path(), "alice");
    let tokens = ws.path("tokens.toml");
    std::fs::write(
        &tokens,
        "[[client]]\nname = \"alice\"\ndomains = [\"*\"]\ntables = [\"continent_data\"]\n",
    )
    .expect("write tokens");
    let (node, addr) = start_with(
        &ws,
        &format!(
            "cert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
            path(pki.path(), "http.pem"),
            path(pki.path(), "http.key"),
            path(users.path(), "ca.pem")
        ),
        &format!("[auth]\ntokens_file = \"{}\"\n", tokens.display()),
    );
    wait_healthy(&node, addr, &trusting(pki.path()));
    let url = format!("https://{addr}");
    let ca = path(pki.path(), "ca.pem");
    let sql = "SELECT COUNT(*) AS n FROM continent_data";

    // With the node's CA and alice's certificate: answered.
    let (code, out, err) = query_cli(&[
        "-H",
        &url,
        "--ca",
        &ca,
        "--cert",
        &path(users.path(), "alice.pem"),
        "--key",
        &path(users.path(), "alice.key"),
        "--format",
        "csv",
        sql,
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.trim(), "n\n7", "{out}");

    // Without a certificate the node wants a token: refused (exit 1), saying so.
    let (code, _, err) = query_cli(&["-H", &url, "--ca", &ca, sql]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("unauthenticated"), "{err}");

    // Trusting another CA: the node's certificate is refused; https:// without --ca says
    // what is missing. Neither reaches the node (exit 2).
    let other = tempfile::tempdir().expect("tempdir");
    ca_with(other.path(), "x");
    let (code, _, err) = query_cli(&["-H", &url, "--ca", &path(other.path(), "ca.pem"), sql]);
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = query_cli(&["-H", &url, sql]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("needs a CA bundle (`query --ca FILE`)"),
        "{err}"
    );
}

//! Authentication and authorisation on HTTP with a real `queryd` on loopback: tokens made
//! by `queryd token`, refused without one (401), for another domain (403), for a table the
//! token may not read, directly or through a view (403 naming the table), on admin
//! endpoints without `admin`; a foreign `Host` (421) and a cross-origin post (403) are
//! refused; the token's name is the client's identity; a non-loopback listener without
//! tokens does not start.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use query_integration::{make_token, queryd_bin, queryd_exits, Node, Workspace};
use serde_json::Value;

/// One request with the given headers (a `Host` of our choice too): (status, whole
/// response text).
fn raw(
    node: &Node,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let addr = node.base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    s.write_all(req.as_bytes()).expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

/// POST /sql with `token` (none if empty): (status, JSON body).
fn sql(node: &Node, token: &str, q: &str) -> (u16, Value) {
    let mut r = ureq::post(&node.url("/sql")).set("Content-Type", "text/plain");
    if !token.is_empty() {
        r = r.set("Authorization", &format!("Bearer {token}"));
    }
    let (status, text) = match r.send_string(q) {
        Ok(resp) => (resp.status(), resp.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(c, resp)) => (c, resp.into_string().unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    };
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn get(node: &Node, token: &str, path: &str) -> (u16, String) {
    let mut r = ureq::get(&node.url(path));
    if !token.is_empty() {
        r = r.set("Authorization", &format!("Bearer {token}"));
    }
    match r.call() {
        Ok(resp) => (resp.status(), resp.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(c, resp)) => (c, resp.into_string().unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

#[test]
fn tokens_domains_tables_admin_host_and_origin() {
    let ws = Workspace::new();
    let (admin, admin_entry) = make_token(&["--name", "noc-admin", "--domain", "noc", "--admin"]);
    let (sys_only, sys_entry) =
        make_token(&["--name", "sys-reader", "--domain", "noc", "--table", "sys"]);
    let (web, web_entry) = make_token(&["--name", "web-user", "--domain", "web"]);
    std::fs::write(
        ws.path("tokens.toml"),
        format!("{admin_entry}\n{sys_entry}\n{web_entry}"),
    )
    .expect("tokens file");
    std::fs::write(
        ws.path("sets.toml"),
        "[[set]]\nname = \"operations\"\ndomain = [\"noc\"]\nsql_name = \"sql.ops.test\"\ntla_name = \"tla.ops.test:7500\"\n",
    )
    .expect("sets file");
    // A view over processes: a token without processes may not read it either.
    let mut views = std::fs::read_to_string(ws.path("views.toml")).expect("views");
    views.push_str("\n[[view]]\nname = \"busy_processes\"\nsql = \"SELECT * FROM processes\"\n");
    std::fs::write(ws.path("views.toml"), views).expect("views");

    let node = ws.start(
        "demo",
        "[generation]\ninterval = \"1s\"\noffset = \"100ms\"\n\n[simulate]\nmachines = 20\nclusters = 2\n\n\
         [sql.quarantine]\nstrikes = 1\n\n\
         [aggregator_set]\nfile = \"sets.toml\"\nname = \"operations\"\n\n\
         [requests]\nwait = \"20s\"\n\n\
         [http]\nallowed_origins = [\"https://dash.example\"]\n\n\
         [auth]\ntokens_file = \"tokens.toml\"\n",
    );

    // /health needs no token (Node::start waited on it); everything else does.
    let (status, body) = sql(&node, "", "SELECT 1");
    assert_eq!((status, code(&body)), (401, "unauthenticated"), "{body}");
    let (status, text) = raw(&node, "POST", "/sql", &[], "SELECT 1");
    assert_eq!(status, 401);
    assert!(
        text.contains("WWW-Authenticate: Bearer") || text.contains("www-authenticate: Bearer"),
        "{text}"
    );
    let (status, body) = sql(&node, "qt_0000", "SELECT 1");
    assert_eq!((status, code(&body)), (401, "unauthenticated"), "{body}");
    assert_eq!(get(&node, "", "/tables").0, 401);
    assert_eq!(get(&node, "", "/metrics").0, 401);
    assert_eq!(
        get(&node, "", "/").0,
        200,
        "the console page itself is open"
    );
    // So are its static assets (a <script> tag sends no token), under the same Host rule.
    for (asset, kind) in [
        ("/console/uplot.js", "text/javascript"),
        ("/console/uplot.css", "text/css"),
    ] {
        let (status, text) = raw(&node, "GET", asset, &[], "");
        assert_eq!(status, 200, "{asset} is open like the page");
        let text = text.to_ascii_lowercase();
        assert!(text.contains(&format!("content-type: {kind}")), "{asset}");
        assert!(text.contains("uplot"), "{asset}");
        let foreign = [("Host", "attacker.example")];
        assert_eq!(raw(&node, "GET", asset, &foreign, "").0, 421, "{asset}");
    }

    // Another domain's token.
    let (status, body) = sql(&node, &web, "SELECT 1");
    assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");
    let m = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        m.contains("'web-user' is not for domain noc of aggregator set 'operations'"),
        "{m}"
    );

    // A token for sys only: sys answers, processes is refused by name, directly and
    // through a view, and /tables lists what it may read.
    let sys_rows = node.eventually(Duration::from_secs(60), "sys with the sys token", || {
        let (status, body) = sql(&node, &sys_only, "SELECT COUNT(*) FROM sys");
        (status == 200).then_some(body)
    });
    assert!(
        sys_rows["rows"][0][0].as_i64().unwrap_or(0) > 0,
        "{sys_rows}"
    );
    for q in [
        "SELECT COUNT(*) FROM processes",
        "SELECT * FROM busy_processes",
        "SELECT s.hostname FROM sys s JOIN processes p ON s.machine_ip = p.machine_ip",
        "DESCRIBE processes",
    ] {
        let (status, body) = sql(&node, &sys_only, q);
        assert_eq!((status, code(&body)), (403, "forbidden"), "{q}: {body}");
        let m = body["error"]["message"].as_str().unwrap_or_default();
        assert!(m.contains("may not read table processes"), "{q}: {m}");
    }
    let (status, tables) = get(&node, &sys_only, "/tables");
    assert_eq!(status, 200, "{tables}");
    assert!(tables.contains("\"name\":\"sys\""), "{tables}");
    assert!(!tables.contains("\"name\":\"processes\""), "{tables}");
    assert!(!tables.contains("\"name\":\"busy_processes\""), "{tables}");
    // The admin token has no table list: it reads processes (through the view too).
    let (status, body) = sql(&node, &admin, "SELECT COUNT(*) FROM busy_processes");
    assert!(status == 200 || code(&body) == "tables_not_ready", "{body}");

    // Admin endpoints need admin = true.
    let lift = |token: &str| {
        raw(
            &node,
            "POST",
            "/admin/quarantine/lift",
            &[("Authorization", format!("Bearer {token}").as_str())],
            "",
        )
    };
    let (status, text) = lift(&sys_only);
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("may not call admin endpoints"), "{text}");
    assert_eq!(lift(&admin).0, 200);

    // The token's name is the client's identity: a query quarantined after one strike is
    // listed under it.
    let deep = format!("SELECT {}", vec!["1"; 400].join("+"));
    let (status, body) = sql(&node, &admin, &deep);
    assert_eq!((status, code(&body)), (400, "too_complex"), "{body}");
    let (status, body) = sql(&node, &admin, "SELECT client FROM query_quarantine");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"], serde_json::json!([["noc-admin"]]), "{body}");

    // Host: a name that is not the node's (DNS rebinding) is refused, with a good token.
    let bearer = format!("Bearer {admin}");
    let (status, text) = raw(
        &node,
        "POST",
        "/sql",
        &[
            ("Host", "attacker.example"),
            ("Authorization", bearer.as_str()),
        ],
        "SELECT 1",
    );
    assert_eq!(status, 421, "{text}");
    assert!(
        text.contains("unknown_host") && text.contains("attacker.example"),
        "{text}"
    );
    let port = node.base.rsplit(':').next().unwrap_or_default().to_string();
    for host in [format!("localhost:{port}"), "sql.ops.test".to_string()] {
        let (status, text) = raw(
            &node,
            "POST",
            "/sql",
            &[("Host", host.as_str()), ("Authorization", bearer.as_str())],
            "SELECT 1",
        );
        assert_eq!(status, 200, "{host}: {text}");
    }

    // Origin: another site's page may not post; the console's own origin may.
    let (status, text) = raw(
        &node,
        "POST",
        "/sql",
        &[
            ("Origin", "http://attacker.example"),
            ("Authorization", bearer.as_str()),
        ],
        "SELECT 1",
    );
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("cross_origin"), "{text}");
    assert!(
        !text
            .to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "{text}"
    );
    let (status, text) = raw(
        &node,
        "POST",
        "/admin/quarantine/lift",
        &[("Origin", "null"), ("Authorization", bearer.as_str())],
        "",
    );
    assert_eq!(status, 403, "{text}");
    let own = node.base.clone();
    let (status, text) = raw(
        &node,
        "POST",
        "/sql",
        &[("Origin", own.as_str()), ("Authorization", bearer.as_str())],
        "SELECT 1",
    );
    assert_eq!(status, 200, "{text}");

    // A listed origin: its preflight is answered without a token, and its answers name it
    // (never `*`).
    let (status, text) = raw(
        &node,
        "OPTIONS",
        "/sql",
        &[
            ("Origin", "https://dash.example"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "authorization"),
        ],
        "",
    );
    assert_eq!(status, 204, "{text}");
    let lower = text.to_ascii_lowercase();
    assert!(
        lower.contains("access-control-allow-origin: https://dash.example"),
        "{text}"
    );
    assert!(
        lower.contains("access-control-allow-headers: authorization"),
        "{text}"
    );
    let (status, text) = raw(
        &node,
        "POST",
        "/sql",
        &[
            ("Origin", "https://dash.example"),
            ("Authorization", bearer.as_str()),
        ],
        "SELECT 1",
    );
    assert_eq!(status, 200, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("access-control-allow-origin: https://dash.example"),
        "{text}"
    );

    // Refusals are counted by reason.
    let (status, metrics) = get(&node, &admin, "/metrics");
    assert_eq!(status, 200);
    for reason in ["unauthenticated", "forbidden", "table", "host", "origin"] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("query_http_refusals_total{{reason=\"{reason}\"}}")))
            .unwrap_or_else(|| panic!("{reason}: {metrics}"));
        assert!(!line.ends_with(" 0"), "{line}");
    }
    assert!(metrics.contains("query_auth_tokens 3"), "{metrics}");
}

#[test]
fn a_token_removed_from_the_file_stops_working_and_a_broken_file_changes_nothing() {
    let ws = Workspace::new();
    let (alice, alice_entry) = make_token(&["--name", "alice", "--domain", "*"]);
    let (bob, bob_entry) = make_token(&["--name", "bob", "--domain", "*"]);
    std::fs::write(
        ws.path("tokens.toml"),
        format!("{alice_entry}\n{bob_entry}"),
    )
    .expect("write");
    let node = ws.start(
        "tla-sql",
        "[generation]\ninterval = \"1s\"\noffset = \"100ms\"\n\n[auth]\ntokens_file = \"tokens.toml\"\n",
    );
    assert_eq!(sql(&node, &alice, "SELECT 1").0, 200);
    // A broken copy: the last good tokens stay.
    std::fs::write(
        ws.path("tokens.toml"),
        format!("{alice_entry}\n[[token]]\nname = 5\n"),
    )
    .expect("write");
    // Read and refused (counted), not merely not read yet.
    node.eventually(
        Duration::from_secs(10),
        "the broken tokens file refused",
        || {
            let (_, m) = get(&node, &alice, "/metrics");
            m.lines()
                .find_map(|l| l.strip_prefix("query_config_errors_total "))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .filter(|n| *n > 0)
        },
    );
    assert_eq!(sql(&node, &bob, "SELECT 1").0, 200, "last good copy");
    // Bob removed.
    std::fs::write(ws.path("tokens.toml"), &alice_entry).expect("write");
    node.eventually(Duration::from_secs(10), "bob's token refused", || {
        (sql(&node, &bob, "SELECT 1").0 == 401).then_some(())
    });
    assert_eq!(sql(&node, &alice, "SELECT 1").0, 200);
}

#[test]
fn a_public_listener_without_tokens_does_not_start() {
    let ws = Workspace::new();
    let cfg = ws.config("[generation]\ninterval = \"1s\"\noffset = \"100ms\"\n");
    // The check runs on the configuration, before anything binds.
    let (status, _, err) = queryd_exits(
        &[
            "tla-sql",
            "--config",
            cfg.to_str().expect("utf8"),
            "--listen",
            "0.0.0.0:0",
        ],
        "on 0.0.0.0 without tokens",
    );
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("not a loopback address") && err.contains("allow_unauthenticated = true"),
        "{err}"
    );

    // Told explicitly, the same configuration is accepted (checked without starting).
    let public =
        ws.config("[http]\nlisten = \"0.0.0.0:0\"\n\n[auth]\nallow_unauthenticated = true\n");
    let out = Command::new(queryd_bin())
        .args(["check-config", "--config", public.to_str().expect("utf8")])
        .output()
        .expect("check-config");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused = ws.config("[http]\nlisten = \"0.0.0.0:0\"\n");
    let out = Command::new(queryd_bin())
        .args(["check-config", "--config", refused.to_str().expect("utf8")])
        .output()
        .expect("check-config");
    assert!(!out.status.success());
}

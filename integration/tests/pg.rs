//! The Postgres wire protocol of a real `queryd` on loopback, with real clients: `psql`
//! (Debian's postgresql-client) and psycopg (`.test-venv`, run through
//! integration/tools/pg_client.py): the README's queries, `\dt`, `\d`, parameters, every
//! column type, errors with their SQLSTATE, a cancel, tokens, Grafana's queries, and the
//! listener's limits.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use query_integration::{make_token, queryd_exits, repo, Node, Workspace};

/// A demo node of 200 machines with `[pg]` on any free port, once its generation holds
/// every machine (asked over HTTP with `token`, if the node needs one).
fn demo(ws: &Workspace, extra: &str, token: Option<&str>) -> Node {
    let node = ws.start(
        "demo",
        &format!(
            "[generation]\ninterval = \"2s\"\noffset = \"100ms\"\n\n\
             [simulate]\nmachines = 200\nclusters = 4\n\n\
             [pg]\nlisten = \"127.0.0.1:0\"\n{extra}"
        ),
    );
    node.eventually(Duration::from_secs(60), "all 200 machines", || {
        let mut req = ureq::post(&node.url("/sql"));
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let body: serde_json::Value = req
            .send_string("SELECT COUNT(*) FROM sys")
            .ok()?
            .into_json()
            .ok()?;
        (body["rows"] == serde_json::json!([[201]])).then_some(())
    });
    node
}

/// `psql` against `node` running `-c command` for each of `commands`: (success, stdout,
/// stderr).
fn psql(node: &Node, commands: &[&str], password: Option<&str>) -> (bool, String, String) {
    let addr = node.pg_addr();
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let mut cmd = Command::new("psql");
    cmd.args([
        "-h", host, "-p", port, "-U", "test", "-d", "query", "-X", "-A", "-t",
    ])
    .args(["-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose"])
    .env("PGCONNECT_TIMEOUT", "20")
    .env_remove("PGPASSWORD");
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = cmd
        .output()
        .expect("run psql (Debian's postgresql-client: `make test-deps`)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs pg_client.py's `checks` against `node`; panics with its output if one fails.
fn psycopg(node: &Node, checks: &str, token: Option<&str>) {
    let python = repo().join(".test-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make test-deps` (a virtualenv with psycopg)",
        python.display()
    );
    let addr = node.pg_addr();
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let mut cmd = Command::new(python);
    cmd.arg(repo().join("integration/tools/pg_client.py"))
        .args([host, port, checks]);
    if let Some(t) = token {
        cmd.arg(t);
    }
    let out = cmd.output().expect("run pg_client.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pg_client.py {checks}:\n{text}");
    for check in checks.split(',') {
        assert!(text.contains(&format!("ok {check}")), "{check}:\n{text}");
    }
}

#[test]
fn psql_and_psycopg_against_a_demo_node() {
    let ws = Workspace::new();
    // Small limits, so a cross join hits them in the test's time.
    let node = demo(
        &ws,
        "\n[http]\nquery_timeout = \"3s\"\nmax_result_bytes = 1048576\nmax_result_rows = 1000\n",
        None,
    );

    // psql: the README's queries, \dt, \d, and an error with its SQLSTATE.
    let (ok, out, err) = psql(&node, &["SELECT COUNT(*) FROM sys"], None);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "201");
    let (ok, _, err) = psql(
        &node,
        &[
            "SELECT c.continent_name, SUM(l.hits) hits FROM load_info l, region_data r, continent_data c \
             WHERE l.georegion = r.id AND r.continent = c.continent GROUP BY c.continent_name ORDER BY hits DESC",
            "SELECT sys.machine_ip ip, procname, rss, pid FROM sys, processes \
             WHERE sys.machine_ip = processes.machine_ip AND (rss*100)/sys.memtotal > 75 \
             AND sys.machine_ip IN (SELECT machine_ip FROM machinerole WHERE role='dns')",
            "SELECT machine_ip, mountp, bavail*bsize free_space, (100*bavail)/blocks pct \
             FROM filesystem WHERE blocks > 0 AND (100*bavail)/blocks < 3",
        ],
        None,
    );
    assert!(ok, "{err}");
    let (ok, out, err) = psql(&node, &["\\dt"], None);
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l == "public|sys|table|query"), "{out}");
    assert!(out.contains("|processes|table|"), "{out}");
    let (ok, out, err) = psql(&node, &["\\d sys"], None);
    assert!(ok, "{err}");
    assert!(out.contains("load1|double precision"), "{out}");
    assert!(out.contains("machine_ip|text"), "{out}");
    assert!(out.contains("boot_time|timestamp"), "{out}");
    let (ok, out, err) = psql(&node, &["\\dn"], None);
    assert!(ok && out.trim() == "public|query", "{out}{err}");
    let (ok, _, err) = psql(&node, &["\\d no_such_table"], None);
    assert!(!ok && err.contains("Did not find any relation"), "{err}");
    // Table-name completion (psql 15's query for `SELECT * FROM proc<TAB>`).
    let (ok, out, err) = psql(
        &node,
        &[
            "SELECT c.relname, NULL::pg_catalog.text FROM pg_catalog.pg_class c \
           WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm') AND (c.relname) LIKE 'proc%' \
           AND pg_catalog.pg_table_is_visible(c.oid) LIMIT 1000",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "processes|", "{out}");
    let (ok, _, err) = psql(&node, &["SELECT * FROM no_such_table"], None);
    assert!(!ok && err.contains("42P01"), "{err}");
    let (ok, _, err) = psql(&node, &["DELETE FROM sys"], None);
    assert!(!ok && err.contains("25006"), "{err}");

    // psycopg: types, parameters, prepared statements, session commands, errors, a
    // cancel, Grafana's queries, the warning of a cut answer.
    psycopg(
        &node,
        "readme,types,params,session,errors,cancel,grafana,truncated,describe",
        None,
    );

    let metrics = node.get("/metrics").1;
    assert!(metrics.contains("query_pg_connections "), "{metrics}");
    assert!(
        metrics.contains("query_pg_errors_total{sqlstate=\"42P01\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("query_pg_errors_total{sqlstate=\"57014\"}"),
        "{metrics}"
    );
    let statements: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("query_pg_statements_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("query_pg_statements_total");
    assert!(statements > 20, "{statements}");
}

#[test]
fn the_password_is_a_token_with_its_tables() {
    let ws = Workspace::new();
    let (sys_only, entry) =
        make_token(&["--name", "sys-reader", "--domain", "*", "--table", "sys"]);
    std::fs::write(ws.path("tokens.toml"), entry).expect("tokens file");
    let node = demo(
        &ws,
        "\n[auth]\ntokens_file = \"tokens.toml\"\n",
        Some(&sys_only),
    );
    // A wrong or missing password is refused; the token is accepted and limited to its
    // tables.
    let (ok, _, err) = psql(&node, &["SELECT 1"], Some("qt_wrong"));
    assert!(
        !ok && err.contains("password authentication failed"),
        "{err}"
    );
    let (ok, out, err) = psql(&node, &["SELECT COUNT(*) FROM sys"], Some(&sys_only));
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "201");
    psycopg(&node, "auth_refused,forbidden", Some(&sys_only));
    let metrics = ureq::get(&node.url("/metrics"))
        .set("Authorization", &format!("Bearer {sys_only}"))
        .call()
        .expect("metrics")
        .into_string()
        .expect("text");
    assert!(
        metrics.contains("query_pg_errors_total{sqlstate=\"28P01\"}"),
        "{metrics}"
    );
}

#[test]
fn connection_limit_idle_timeout_and_hostile_bytes() {
    let ws = Workspace::new();
    let node = demo(&ws, "max_connections = 2\nidle_timeout = \"2s\"\n", None);
    let addr = node.pg_addr();

    // Garbage, and a message claiming a gigabyte: an error or a close, never a crash.
    for bytes in [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        // An SSLRequest (answered N), then a length of -1.
        [0, 0, 0, 8, 4, 210, 22, 47, 255, 255, 255, 255, 0, 0].to_vec(),
        {
            // A startup message, then a Query of 1 GiB announced.
            let mut m = vec![0, 0, 0, 0, 0, 3, 0, 0];
            m.extend_from_slice(b"user\0test\0\0");
            let len = m.len() as u32;
            m[..4].copy_from_slice(&len.to_be_bytes());
            m.extend_from_slice(&[b'Q', 0x40, 0, 0, 0]);
            m
        },
    ] {
        let mut s = TcpStream::connect(&addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let _ = s.write_all(&bytes);
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
    }
    let (ok, out, err) = psql(&node, &["SELECT 1"], None);
    assert!(ok && out.trim() == "1", "{err}");

    // Two connections open: the third is refused with 53300.
    let held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let (ok, _, err) = psql(&node, &["SELECT 1"], None);
    assert!(!ok && err.contains("too many clients"), "{err}");
    drop(held);
    // The held connections had not started: they are dropped after the startup timeout
    // at most; idle ones after idle_timeout (2s).
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let (ok, _, err) = psql(&node, &["SELECT 1"], None);
        if ok {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{err}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // An idle connection is closed with 57P05.
    let mut s = TcpStream::connect(&addr).expect("connect");
    let mut m = vec![0, 0, 0, 0, 0, 3, 0, 0];
    m.extend_from_slice(b"user\0test\0database\0query\0\0");
    let len = m.len() as u32;
    m[..4].copy_from_slice(&len.to_be_bytes());
    s.write_all(&m).expect("startup");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.contains("57P05") && text.contains("idle_timeout"),
        "{text}"
    );

    let metrics = node.get("/metrics").1;
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("query_pg_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("query_pg_refused_total");
    assert!(refused >= 1, "{metrics}");
}

#[test]
fn a_public_pg_listener_without_tokens_does_not_start() {
    let ws = Workspace::new();
    let cfg = ws.config("[pg]\nlisten = \"0.0.0.0:0\"\n");
    let (status, _, err) = queryd_exits(
        &["tla-sql", "--config", cfg.to_str().expect("utf8")],
        "pg on 0.0.0.0 without tokens",
    );
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("[pg]") && err.contains("not a loopback address"),
        "{err}"
    );
}

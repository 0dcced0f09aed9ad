//! Helpers for multi-process tests: start real `queryd` processes on loopback addresses,
//! talk to them over HTTP, and stop them when the test ends (even when it fails).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub mod bench;
pub mod browser;
pub mod fleet;
pub mod receivers;
pub mod set_fleet;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `queryd` binary: `$QUERYD_BIN`, or the one `cargo build` left beside the tests.
pub fn queryd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("QUERYD_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test> -> target/<profile>/queryd
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("queryd"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p query-http` first (`make test` does)",
        bin.display()
    );
    bin
}

/// A copy of the shipped schemas, static tables and views in a temporary directory, so a
/// test can edit them, and a node config pointing at them.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        let dir = tempfile::tempdir().expect("tempdir");
        let copy_dir = |from: &Path, to: &Path| {
            std::fs::create_dir_all(to).expect("mkdir");
            for e in std::fs::read_dir(from).expect("read_dir").flatten() {
                std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
            }
        };
        copy_dir(&repo().join("schemas"), &dir.path().join("schemas"));
        copy_dir(
            &repo().join("static-tables"),
            &dir.path().join("static-tables"),
        );
        std::fs::copy(repo().join("ops/views.toml"), dir.path().join("views.toml"))
            .expect("copy views");
        Workspace { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes `node.toml` with the paths of this workspace plus `extra` TOML sections.
    pub fn config(&self, extra: &str) -> PathBuf {
        let path = self.path("node.toml");
        let text = format!(
            "[paths]\nschemas = \"schemas\"\nstatic_tables = \"static-tables/index.toml\"\nviews = \"views.toml\"\nreload_every = \"200ms\"\n\n{extra}\n"
        );
        std::fs::write(&path, text).expect("write config");
        path
    }
}

impl Workspace {
    /// Starts `queryd <role>` on this workspace's files with `extra` config sections, on
    /// any free loopback port.
    pub fn start(&self, role: &str, extra: &str) -> Node {
        let cfg = self.config(extra);
        Node::start(&[
            role,
            "--config",
            cfg.to_str().expect("utf8 path"),
            "--listen",
            "127.0.0.1:0",
        ])
    }
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

/// Starts `queryd <args>` from the repository root, its log in `dir/stderr.log`; with
/// `nofile`, under that descriptor limit (`ulimit -n`).
fn spawn_queryd(args: &[&str], dir: &Path, stdout: Stdio, nofile: Option<u32>) -> (Child, PathBuf) {
    let stderr_log = dir.join("stderr.log");
    let mut cmd = match nofile {
        None => Command::new(queryd_bin()),
        Some(n) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                .arg(queryd_bin());
            c
        }
    };
    let child = cmd
        .args(args)
        .current_dir(repo())
        // QUERY_NODE_LOG: another filter for the nodes' logs while diagnosing a run.
        .env(
            "RUST_LOG",
            std::env::var("QUERY_NODE_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(stdout)
        .stderr(std::fs::File::create(&stderr_log).expect("log file"))
        .spawn()
        .expect("start queryd");
    (child, stderr_log)
}

/// A running `queryd simulate` (no HTTP): its children's link addresses; killed when
/// dropped.
pub struct Simulator {
    child: Child,
    /// What parents dial, in fleet order.
    pub children: Vec<String>,
    pub stderr_log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Simulator {
    /// Starts `queryd simulate <args>` and waits until its children listen (it writes their
    /// addresses to a file then).
    pub fn start(args: &[&str]) -> Simulator {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("children.toml");
        let mut all = vec!["simulate"];
        all.extend_from_slice(args);
        all.extend(["--children-file", file.to_str().expect("utf8 path")]);
        let (mut child, stderr_log) = spawn_queryd(&all, dir.path(), Stdio::null(), None);
        let deadline = Instant::now() + Duration::from_secs(60);
        let text = loop {
            if let Ok(t) = std::fs::read_to_string(&file) {
                if t.trim_end().ends_with(']') {
                    break t;
                }
            }
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "queryd simulate did not start: {}",
                    std::fs::read_to_string(&stderr_log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let children = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix('"')?.split('"').next())
            .map(String::from)
            .collect();
        Simulator {
            child,
            children,
            stderr_log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `queryd`; killed when dropped.
pub struct Node {
    child: Child,
    pub base: String,
    /// `host:port` of its Postgres listener (`[pg] listen`), once printed.
    pg: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    pub stderr_log: PathBuf,
    _logdir: tempfile::TempDir,
}

impl Node {
    /// Starts `queryd <args>` and waits until it prints the address it listens on.
    pub fn start(args: &[&str]) -> Node {
        Node::start_limited(args, None)
    }

    /// Like [`Node::start`], with the process's descriptor limit lowered to `nofile`.
    pub fn start_limited(args: &[&str], nofile: Option<u32>) -> Node {
        let node = Node::start_listening(args, nofile);
        node.wait_ready(Duration::from_secs(60));
        node
    }

    /// Starts `queryd <args>` and returns once it prints the address it listens on, without
    /// waiting for /health (a caller speaking HTTPS checks it itself).
    pub fn start_listening(args: &[&str], nofile: Option<u32>) -> Node {
        let logdir = tempfile::tempdir().expect("tempdir");
        let (mut child, stderr_log) = spawn_queryd(args, logdir.path(), Stdio::piped(), nofile);
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let pg = std::sync::Arc::new(std::sync::Mutex::new(None));
        let pg_seen = pg.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.trim_end_matches('/').to_string());
                } else if let Some(addr) = line.strip_prefix("postgres listening on ") {
                    if let Ok(mut p) = pg_seen.lock() {
                        *p = Some(addr.trim().to_string());
                    }
                }
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(b) => b,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "queryd did not start: {}",
                    std::fs::read_to_string(&stderr_log).unwrap_or_default()
                );
            }
        };
        Node {
            child,
            base,
            pg,
            stderr_log,
            _logdir: logdir,
        }
    }

    /// Waits until /health answers 200 (the first generation is served).
    pub fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(r) = ureq::get(&format!("{}/health", self.base)).call() {
                if r.status() == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("node at {} never became healthy", self.base);
    }

    /// `host:port` of the node's Postgres listener (printed before the HTTP one).
    pub fn pg_addr(&self) -> String {
        self.pg
            .lock()
            .ok()
            .and_then(|p| p.clone())
            .expect("the node printed no `postgres listening on` line: is [pg] listen set?")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// POSTs SQL as text/plain; returns (status, body).
    pub fn sql(&self, sql: &str) -> (u16, serde_json::Value) {
        self.post("/sql", "text/plain", sql)
    }

    pub fn post(&self, path: &str, content_type: &str, body: &str) -> (u16, serde_json::Value) {
        let (status, text) = self.post_text(path, content_type, body);
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    pub fn post_text(&self, path: &str, content_type: &str, body: &str) -> (u16, String) {
        let r = ureq::post(&self.url(path))
            .set("Content-Type", content_type)
            .send_string(body);
        read(r)
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        read(ureq::get(&self.url(path)).call())
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let (status, text) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {text}");
        serde_json::from_str(&text).expect("JSON")
    }

    /// Polls `check` every 100 ms until it returns Some, or panics after `limit`.
    pub fn eventually<T>(
        &self,
        limit: Duration,
        what: &str,
        mut check: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = check() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The process id, for benchmarks that read its CPU and memory from /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the process and waits for it to go (its ports are free afterwards), as
    /// dropping it would, for a test that starts a node on the same configuration again.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read(r: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    match r {
        Ok(resp) => (resp.status(), resp.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_string().unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// POSTs `body` to `path` at `node` (an `http://ADDR` base) from the loopback address
/// `source` (e.g. "127.0.0.2"), so a test can act as several clients: nodes tell clients
/// apart by address. Returns (status, body); status 0 with the error if no answer came.
pub fn post_from(source: &str, node: &str, path: &str, body: &str) -> (u16, String) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return (0, e.to_string()),
    };
    rt.block_on(async {
        match http_post_from(source, node, path, body).await {
            Ok(r) => r,
            Err(e) => (0, e.to_string()),
        }
    })
}

async fn http_post_from(
    source: &str,
    node: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bad = |m: &str| std::io::Error::other(m.to_string());
    let addr: std::net::SocketAddr = node
        .trim_start_matches("http://")
        .parse()
        .map_err(|_| bad("node address"))?;
    let src: std::net::IpAddr = source.parse().map_err(|_| bad("source address"))?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::new(src, 0))?;
    let mut stream = socket.connect(addr).await?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    Ok((
        status,
        if chunked {
            dechunk(rest)
        } else {
            rest.to_string()
        },
    ))
}

/// The body of a chunked HTTP/1.1 response.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// Runs `queryd ca ARGS` (making a test CA or certificate); panics with its output if it
/// fails.
pub fn queryd_ca(args: &[&str]) {
    let out = Command::new(queryd_bin())
        .arg("ca")
        .args(args)
        .output()
        .expect("run queryd ca");
    assert!(
        out.status.success(),
        "queryd ca {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `queryd ARGS`, which must exit by itself (a configuration it refuses) within 30 s:
/// its exit status, standard output and standard error. Panics, saying `what` started,
/// if it keeps running.
pub fn queryd_exits(args: &[&str], what: &str) -> (std::process::ExitStatus, String, String) {
    use std::io::Read;
    let mut child = Command::new(queryd_bin())
        .args(args)
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start queryd");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("queryd started: {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status, out, err)
}

/// Runs `queryd token <args>` (a real token, as an operator makes one): (the secret, the
/// `[[token]]` entry for a tokens file, which holds the secret's hash only).
pub fn make_token(args: &[&str]) -> (String, String) {
    let out = std::process::Command::new(queryd_bin())
        .arg("token")
        .args(args)
        .output()
        .expect("run queryd token");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "queryd token: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = text
        .lines()
        .find(|l| l.starts_with("qt_"))
        .expect("the secret is printed")
        .to_string();
    let entry = text
        .split_once("[[token]]")
        .map(|(_, e)| format!("[[token]]{e}"))
        .expect("the entry is printed");
    assert!(
        !entry.contains(&secret),
        "the entry holds the hash, not the secret"
    );
    (secret, entry)
}

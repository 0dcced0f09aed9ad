//! Real alert receivers on loopback for tests: Prometheus Alertmanager (Debian's
//! `prometheus-alertmanager`), an SMTP server (aiosmtpd in `.test-venv`, running
//! `integration/tools/smtp_sink.py`) and a webhook receiver recording POST bodies. Each is
//! stopped when dropped; every wait is bounded. `make test-deps` installs the first two.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::fleet::free_port;
use crate::repo;

/// Polls `check` every 50 ms until it returns Some, or panics naming `what` after `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A webhook receiver: answers every POST with `status` (200 unless changed) and records
/// the bodies in arrival order.
pub struct WebhookSink {
    pub addr: SocketAddr,
    bodies: Arc<Mutex<Vec<String>>>,
    status: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl WebhookSink {
    pub fn start() -> WebhookSink {
        WebhookSink::start_on(0)
    }

    /// On `127.0.0.1:port` (0: any).
    pub fn start_on(port: u16) -> WebhookSink {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind webhook sink");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s, st) = (bodies.clone(), status.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        if let Some(body) = serve_one(conn, s.load(Ordering::Relaxed)) {
                            if let Ok(mut v) = b.lock() {
                                v.push(body);
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        WebhookSink {
            addr,
            bodies,
            status,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The POST bodies received so far, as JSON.
    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.bodies
            .lock()
            .map(|v| {
                v.iter()
                    .map(|b| {
                        serde_json::from_str(b).unwrap_or(serde_json::Value::String(b.clone()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The status later POSTs get.
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
    }
}

/// Reads one HTTP/1.1 request (headers, Content-Length body), answers `status` and closes.
fn serve_one(conn: TcpStream, status: u16) -> Option<String> {
    conn.set_nonblocking(false).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(conn);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0u8; length.min(1 << 20)];
    reader.read_exact(&mut body).ok()?;
    let mut conn = reader.into_inner();
    let _ = write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    Some(String::from_utf8_lossy(&body).into_owned())
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A running Prometheus Alertmanager on loopback (no clustering); killed when dropped.
pub struct Alertmanager {
    child: Child,
    pub url: String,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

/// Debian's binary (`make test-deps` installs `prometheus-alertmanager`).
pub const ALERTMANAGER_BIN: &str = "/usr/bin/prometheus-alertmanager";

impl Alertmanager {
    /// Starts it with a one-receiver configuration that routes everything nowhere, and
    /// waits until `/-/ready` answers.
    pub fn start() -> Alertmanager {
        assert!(
            std::path::Path::new(ALERTMANAGER_BIN).exists(),
            "{ALERTMANAGER_BIN} is missing: run `make test-deps`"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: \"null\"\n  group_wait: 1s\nreceivers:\n  - name: \"null\"\n",
        )
        .expect("write config");
        let log = dir.path().join("alertmanager.log");
        // The port is chosen here (Alertmanager does not print one it picked): retried if
        // someone took it meanwhile.
        for _ in 0..5 {
            let port = free_port("127.0.0.1");
            let url = format!("http://127.0.0.1:{port}");
            let mut child = Command::new(ALERTMANAGER_BIN)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--cluster.listen-address=")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log"))
                .spawn()
                .expect("start alertmanager");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                if let Ok(r) = ureq::get(&format!("{url}/-/ready")).call() {
                    if r.status() == 200 {
                        return Alertmanager {
                            child,
                            url,
                            log,
                            _dir: dir,
                        };
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "alertmanager did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// `GET /api/v2/alerts`: the alerts it holds (active, not resolved).
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        ureq::get(&format!("{}/api/v2/alerts", self.url))
            .call()
            .ok()
            .and_then(|r| r.into_json::<serde_json::Value>().ok())
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real SMTP server (aiosmtpd) saving each message as a file; killed when dropped.
pub struct SmtpSink {
    child: Child,
    /// `host:port`, what an e-mail receiver's `smtp` key takes.
    pub addr: String,
    dir: tempfile::TempDir,
}

impl SmtpSink {
    pub fn start() -> SmtpSink {
        let python = repo().join(".test-venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run `make test-deps` (a virtualenv with aiosmtpd)",
            python.display()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(python)
            .arg(repo().join("integration/tools/smtp_sink.py"))
            .arg("127.0.0.1")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start smtp_sink.py");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => SmtpSink { child, addr, dir },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("smtp_sink.py did not start");
            }
        }
    }

    /// The messages received so far (envelope headers, then the message), in order.
    pub fn messages(&self) -> Vec<String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

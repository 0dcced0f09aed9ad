//! Headless Chromium for the console tests: load a page and take its DOM or a screenshot
//! (`dump_dom`), or drive a page over the DevTools protocol and click like a user
//! ([`Browser`]).

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The Chromium binary; panics naming `make test-deps` if there is none.
pub fn chromium() -> String {
    for c in ["chromium", "/usr/bin/chromium", "chromium-browser"] {
        if Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return c.to_string();
        }
    }
    panic!("headless Chromium is needed for the console test: `make test-deps` installs it");
}

/// Headless, no sandbox (root), and none of Chromium's own connections out (this machine's
/// network refuses them); a fresh `--user-data-dir` is added by each caller.
pub const CHROMIUM_FLAGS: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,800",
];

/// Loads `url` in headless Chromium and returns the DOM after scripts ran.
pub fn dump_dom(url: &str, screenshot: Option<&std::path::Path>) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut cmd = Command::new(chromium());
    cmd.args(CHROMIUM_FLAGS)
        .arg("--virtual-time-budget=15000")
        .arg(format!("--user-data-dir={}", profile.path().display()));
    match screenshot {
        Some(p) => {
            // A file left by an earlier run must not pass for this one's.
            let _ = std::fs::remove_file(p);
            cmd.arg(format!("--screenshot={}", p.display()))
        }
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).output().expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `sql` percent-encoded for a URL's fragment (`/#sql=...`).
pub fn encode(sql: &str) -> String {
    sql.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Headless Chromium driven over its DevTools protocol on a pipe (`--remote-debugging-pipe`:
/// commands on its fd 3, answers on its fd 4, each a JSON text ended by NUL), so a test can
/// click like a user; no WebSocket client needed. Killed when dropped.
pub struct Browser {
    child: Child,
    commands: ChildStdin,
    answers: mpsc::Receiver<Value>,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

pub const BROWSER_LIMIT: Duration = Duration::from_secs(60);

impl Browser {
    /// Opens `url` in a new page of a new headless Chromium.
    pub fn open(url: &str) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        // The shell moves the pipes Rust gives it as stdin/stdout to fds 3 and 4.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 </dev/null >/dev/null"#)
            .arg(chromium())
            .args(CHROMIUM_FLAGS)
            .arg("--remote-debugging-pipe")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        let commands = child.stdin.take().expect("stdin");
        let mut out = child.stdout.take().expect("stdout");
        let (tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            let mut pending = Vec::new();
            let mut buf = [0u8; 65536];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    return;
                }
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.iter().position(|&b| b == 0) {
                    let msg: Vec<u8> = pending.drain(..=end).collect();
                    let Ok(v) = serde_json::from_slice::<Value>(&msg[..end]) else {
                        continue;
                    };
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            commands,
            answers,
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        let target = b.send(None, "Target.createTarget", json!({ "url": url }));
        let target = target["targetId"].as_str().expect("targetId").to_string();
        let attached = b.send(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        );
        b.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        b
    }

    /// One command (to the browser, or to the page's session); its result, or its error
    /// as `{"error": ...}`.
    pub fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).expect("json");
        bytes.push(0);
        self.commands.write_all(&bytes).expect("write to chromium");
        let deadline = Instant::now() + BROWSER_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = self
                .answers
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no answer from chromium to {method}: {e}"));
            if answer["id"].as_u64() == Some(id) {
                return match answer.get("error") {
                    Some(e) => json!({ "error": e }),
                    None => answer["result"].clone(),
                };
            }
        }
    }

    /// The value of a JavaScript expression in the page, or None if it threw (e.g. while
    /// the page is still loading).
    pub fn eval(&mut self, expression: &str) -> Option<Value> {
        let session = self.session.clone();
        let r = self.send(
            Some(&session),
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        if r.get("error").is_some() || r.get("exceptionDetails").is_some() {
            return None;
        }
        Some(r["result"]["value"].clone())
    }

    /// Polls `expression` until it is truthy (bounded); returns its value.
    pub fn wait_for(&mut self, what: &str, expression: &str) -> Value {
        let deadline = Instant::now() + BROWSER_LIMIT;
        loop {
            match self.eval(expression) {
                Some(v) if !v.is_null() && v != json!(false) && v != json!("") => return v,
                _ => {}
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A left click in the middle of the element `selector`, as mouse events from the
    /// browser (trusted, as a user's), after scrolling it into view.
    pub fn click(&mut self, selector: &str) {
        let at = self.middle_of(selector);
        for kind in ["mousePressed", "mouseReleased"] {
            self.mouse(kind, &at);
        }
    }

    /// The mouse moved to the middle of the element `selector` (hover), as a user's.
    pub fn hover(&mut self, selector: &str) {
        let at = self.middle_of(selector);
        self.mouse("mouseMoved", &at);
    }

    /// The middle of the element `selector` in the viewport, once it exists, scrolled
    /// into view.
    fn middle_of(&mut self, selector: &str) -> Value {
        let sel = serde_json::to_string(selector).expect("json");
        self.wait_for(
            &format!("{selector} on screen"),
            &format!(
                "(() => {{ const e = document.querySelector({sel}); if (!e) return null; \
                 e.scrollIntoView({{ block: 'center' }}); const r = e.getBoundingClientRect(); \
                 return {{ x: r.x + r.width / 2, y: r.y + r.height / 2 }}; }})()"
            ),
        )
    }

    fn mouse(&mut self, kind: &str, at: &Value) {
        let session = self.session.clone();
        let button = if kind == "mouseMoved" { "none" } else { "left" };
        let r = self.send(
            Some(&session),
            "Input.dispatchMouseEvent",
            json!({ "type": kind, "x": at["x"], "y": at["y"], "button": button, "clickCount": 1 }),
        );
        assert!(r.get("error").is_none(), "{kind}: {r}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

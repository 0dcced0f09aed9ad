//! Alert notifications reaching real receivers on loopback: the dispatcher (library level,
//! on its own actix system) delivering the SQLite outbox to a webhook receiver, a real
//! Prometheus Alertmanager and a real SMTP server; a receiver down for a while; the outbox
//! bound; no re-delivery across a dispatcher restart on the same database.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::Addr;
use query_actors::alerts::notify::dispatch::{Dispatcher, Firing, Nudge, SetReceivers};
use query_actors::alerts::notify::{outbox, AlertState, Notification, ReceiverConfig};
use query_actors::metrics::{AlertReceiverStats, Metrics};
use query_integration::fleet::free_port;
use query_integration::receivers::{wait_for, Alertmanager, SmtpSink, WebhookSink};

const LIMIT: Duration = Duration::from_secs(30);

/// Every log line of this test process (all tests: filter by receiver name).
static LOG: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut l) = LOG.lock() {
            l.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    let _ = tracing_subscriber::fmt()
        .with_writer(|| LogWriter)
        .with_ansi(false)
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .try_init();
}

/// Log lines containing every one of `parts`.
fn log_lines(parts: &[&str]) -> Vec<String> {
    let text = LOG
        .lock()
        .map(|l| String::from_utf8_lossy(&l).into_owned())
        .unwrap_or_default();
    text.lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .map(String::from)
        .collect()
}

/// The dispatcher on a system of its own thread, stopped (and its workers with it) on drop.
struct Running {
    addr: Addr<Dispatcher>,
    system: actix::System,
    thread: Option<std::thread::JoinHandle<()>>,
    metrics: Arc<Metrics>,
}

impl Running {
    fn start(db: &Path, receivers: BTreeMap<String, ReceiverConfig>) -> Running {
        let metrics = Arc::new(Metrics::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let (db, m) = (db.to_path_buf(), metrics.clone());
        let thread = std::thread::spawn(move || {
            let system = actix::System::new();
            let addr = system.block_on(async move { Dispatcher::start(db, receivers, m) });
            let _ = tx.send((addr, actix::System::current()));
            let _ = system.run();
        });
        let (addr, system) = rx.recv_timeout(LIMIT).expect("dispatcher started");
        Running {
            addr,
            system,
            thread: Some(thread),
            metrics,
        }
    }

    fn stats(&self, receiver: &str) -> AlertReceiverStats {
        self.metrics.alert_receiver(receiver).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.system.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn receiver(toml_text: &str) -> ReceiverConfig {
    let c: ReceiverConfig = toml::from_str(toml_text).expect("receiver toml");
    c.validate("test").expect("valid receiver");
    c
}

fn fast(kind_and_target: &str) -> ReceiverConfig {
    receiver(&format!(
        "{kind_and_target}\ntimeout = \"2s\"\ninitial_backoff = \"100ms\"\nmax_backoff = \"400ms\"\nresend_every = \"1s\"\n"
    ))
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn note(dedup: &str, machine: &str, state: AlertState) -> Notification {
    let now = SystemTime::now();
    Notification {
        dedup_key: dedup.into(),
        alert: "disk_full".into(),
        key: BTreeMap::from([
            ("machine_ip".into(), machine.into()),
            ("mountp".into(), "/var".into()),
        ]),
        key_text: format!("machine_ip={machine} mountp=/var"),
        state,
        since: rfc3339(now - Duration::from_secs(120)),
        ended: (state == AlertState::Resolved).then(|| rfc3339(now - Duration::from_secs(1))),
        priority: "page".into(),
        owner: "storage-oncall".into(),
        description: "filesystem under 3% free".into(),
        runbook: "https://runbooks.invalid/disk".into(),
        labels: BTreeMap::from([("team".into(), "storage".into())]),
        generation: 7,
        generation_time: rfc3339(now),
        values: BTreeMap::from([("free_pct".into(), "2.5".into())]),
        error: None,
    }
}

/// Enqueues in one transaction, as the evaluator does; returns what each enqueue did.
fn enqueue(db: &Path, receiver: &str, notes: &[Notification], max: usize) -> Vec<outbox::Enqueued> {
    // The node opens the same file as it starts; an open at that moment was once refused
    // ("database is locked", in `make test`), likely by the switch to WAL, whose lock
    // SQLite's busy timeout does not always wait for. Only this test opens the file from a
    // second process; it tries again for a while.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut conn = loop {
        match outbox::open(db) {
            Ok(conn) => break conn,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("outbox busy, retrying: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("open db: {e}"),
        }
    };
    let tx = conn.transaction().expect("tx");
    let done = notes
        .iter()
        .map(|n| outbox::enqueue(&tx, receiver, n, max).expect("enqueue"))
        .collect();
    tx.commit().expect("commit");
    done
}

fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("alerts.db")
}

fn keys(bodies: &[serde_json::Value]) -> Vec<String> {
    bodies
        .iter()
        .map(|b| b["dedup_key"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[test]
fn a_notification_reaches_webhook_alertmanager_and_smtp() {
    let hook = WebhookSink::start();
    let am = Alertmanager::start();
    let smtp = SmtpSink::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = db_path(&dir);
    let receivers = BTreeMap::from([
        ("hook".to_string(), fast(&format!("kind = \"webhook\"\nurl = \"{}\"", hook.url()))),
        ("am".to_string(), fast(&format!("kind = \"alertmanager\"\nurl = \"{}\"", am.url))),
        (
            "mail".to_string(),
            fast(&format!(
                "kind = \"email\"\nsmtp = \"{}\"\nfrom = \"query@example.org\"\nto = [\"ops@example.org\", \"storage@example.org\"]",
                smtp.addr
            )),
        ),
    ]);
    let firing = note(
        "disk_full/10.0.0.1/firing/7",
        "10.0.0.1",
        AlertState::Firing,
    );
    for r in ["hook", "am", "mail"] {
        enqueue(&db, r, std::slice::from_ref(&firing), 100);
    }
    let running = Running::start(&db, receivers);

    // Webhook: the Notification document itself.
    let bodies = wait_for(LIMIT, "webhook POST", || {
        let b = hook.bodies();
        (!b.is_empty()).then_some(b)
    });
    assert_eq!(bodies[0]["dedup_key"], "disk_full/10.0.0.1/firing/7");
    assert_eq!(bodies[0]["state"], "firing");
    assert_eq!(bodies[0]["key"]["machine_ip"], "10.0.0.1");
    assert_eq!(bodies[0]["priority"], "page");

    // Alertmanager: active, with the instance's labels and annotations.
    let alert = wait_for(LIMIT, "alert in alertmanager", || {
        am.alerts().into_iter().next()
    });
    let labels = &alert["labels"];
    assert_eq!(labels["alertname"], "disk_full", "{alert}");
    assert_eq!(labels["machine_ip"], "10.0.0.1");
    assert_eq!(labels["mountp"], "/var");
    assert_eq!(labels["priority"], "page");
    assert_eq!(labels["owner"], "storage-oncall");
    assert_eq!(labels["team"], "storage");
    assert_eq!(alert["status"]["state"], "active", "{alert}");
    assert_eq!(
        alert["annotations"]["description"],
        "filesystem under 3% free"
    );
    assert_eq!(alert["annotations"]["values"], "free_pct=2.5");

    // SMTP: one message to both recipients, subject with alert, state and priority.
    let mail = wait_for(LIMIT, "e-mail", || smtp.messages().into_iter().next());
    assert!(
        mail.contains("X-Envelope-To: ops@example.org,storage@example.org"),
        "{mail}"
    );
    assert!(
        mail.contains("Subject: [Query] disk_full FIRING (page): machine_ip=10.0.0.1 mountp=/var"),
        "{mail}"
    );
    assert!(mail.contains("filesystem under 3% free"), "{mail}");
    assert!(mail.contains("values: free_pct=2.5"), "{mail}");
    assert!(
        mail.contains("dedup key: disk_full/10.0.0.1/firing/7"),
        "{mail}"
    );

    // Resolved: sent once; Alertmanager no longer lists it as active.
    let resolved = note(
        "disk_full/10.0.0.1/resolved/9",
        "10.0.0.1",
        AlertState::Resolved,
    );
    for r in ["hook", "am", "mail"] {
        enqueue(&db, r, std::slice::from_ref(&resolved), 100);
    }
    running.addr.do_send(Firing(BTreeMap::new()));
    running.addr.do_send(Nudge);
    wait_for(LIMIT, "resolved webhook POST", || {
        (hook.bodies().len() == 2).then_some(())
    });
    assert_eq!(hook.bodies()[1]["state"], "resolved");
    wait_for(LIMIT, "alert resolved in alertmanager", || {
        let active: Vec<_> = am
            .alerts()
            .into_iter()
            .filter(|a| a["status"]["state"] == "active")
            .collect();
        active.is_empty().then_some(())
    });
    let mail = wait_for(LIMIT, "resolved e-mail", || smtp.messages().get(1).cloned());
    assert!(
        mail.contains("Subject: [Query] disk_full RESOLVED (page)"),
        "{mail}"
    );
    wait_for(LIMIT, "metrics", || {
        let s = running.stats("mail");
        (s.ok == 2 && s.depth == 0 && !s.down).then_some(())
    });
    let text = running.metrics.render(None, SystemTime::now());
    assert!(
        text.contains("query_alert_deliveries_total{receiver=\"hook\",outcome=\"ok\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("query_alert_outbox_depth{receiver=\"am\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("query_alert_receiver_up{receiver=\"am\"} 1"),
        "{text}"
    );
}

#[test]
fn alertmanager_gets_the_firing_set_again_every_resend_interval() {
    let am = Alertmanager::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = db_path(&dir);
    let receivers = BTreeMap::from([(
        "am".to_string(),
        fast(&format!("kind = \"alertmanager\"\nurl = \"{}\"", am.url)),
    )]);
    let running = Running::start(&db, receivers);
    // Nothing in the outbox: the firing set alone (as after a restart of Alertmanager).
    let set = vec![note("k", "10.0.0.2", AlertState::Firing)];
    running
        .addr
        .do_send(Firing(BTreeMap::from([("am".to_string(), set)])));
    let first = wait_for(LIMIT, "firing alert", || am.alerts().into_iter().next());
    assert_eq!(first["labels"]["machine_ip"], "10.0.0.2");
    let ends = |a: &serde_json::Value| {
        humantime::parse_rfc3339_weak(a["endsAt"].as_str().unwrap_or("")).expect("endsAt")
    };
    // endsAt is ahead (4 resends of 1 s) and pushed forward by each re-send.
    assert!(ends(&first) > SystemTime::now(), "{first}");
    wait_for(LIMIT, "a re-send moving endsAt", || {
        am.alerts()
            .into_iter()
            .next()
            .filter(|a| ends(a) > ends(&first))
    });
}

#[test]
fn a_receiver_down_for_a_while_gets_everything_up_to_the_bound() {
    capture_logs();
    let port = free_port("127.0.0.1");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = db_path(&dir);
    let url = format!("http://127.0.0.1:{port}/hook");
    let receivers = BTreeMap::from([(
        "hook-down".to_string(),
        fast(&format!(
            "kind = \"webhook\"\nurl = \"{url}\"\noutbox_max_items = 5"
        )),
    )]);
    let running = Running::start(&db, receivers);
    // Down: attempts fail and are counted, the receiver is reported down.
    enqueue(
        &db,
        "hook-down",
        &[note("k0", "10.0.0.1", AlertState::Firing)],
        5,
    );
    running.addr.do_send(Nudge);
    wait_for(LIMIT, "failed attempts", || {
        let s = running.stats("hook-down");
        (s.retry >= 2 && s.down).then_some(())
    });
    // 8 items for a bound of 5 while down: the 3 oldest are dropped.
    let more: Vec<Notification> = (1..8)
        .map(|i| note(&format!("k{i}"), &format!("10.0.0.{i}"), AlertState::Firing))
        .collect();
    let done = enqueue(&db, "hook-down", &more, 5);
    assert_eq!(done.iter().map(|e| e.dropped).sum::<usize>(), 3);
    running.addr.do_send(Nudge);
    wait_for(LIMIT, "depth and drops in metrics", || {
        let s = running.stats("hook-down");
        (s.depth == 5 && s.dropped == 3).then_some(())
    });
    // Up: everything kept arrives, in order, once.
    let hook = WebhookSink::start_on(port);
    wait_for(LIMIT, "the 5 kept notifications", || {
        (hook.bodies().len() >= 5).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(keys(&hook.bodies()), ["k3", "k4", "k5", "k6", "k7"]);
    wait_for(LIMIT, "receiver up in metrics", || {
        let s = running.stats("hook-down");
        (s.ok == 5 && s.depth == 0 && !s.down && s.dropped == 3).then_some(())
    });
    // One WARN when it went down (not one per retry), one INFO when it came back.
    let down = log_lines(&["WARN", "alert receiver is down", "receiver=hook-down"]);
    assert_eq!(down.len(), 1, "{down:?}");
    assert!(down[0].contains(&url), "{down:?}");
    let back = log_lines(&["INFO", "alert receiver is back", "receiver=hook-down"]);
    assert_eq!(back.len(), 1, "{back:?}");
    let text = running.metrics.render(None, SystemTime::now());
    assert!(
        text.contains("query_alert_deliveries_total{receiver=\"hook-down\",outcome=\"dropped\"} 3"),
        "{text}"
    );
}

#[test]
fn a_refused_notification_is_dropped_and_the_next_ones_go_through() {
    let hook = WebhookSink::start();
    hook.set_status(400);
    let dir = tempfile::tempdir().expect("tempdir");
    let db = db_path(&dir);
    let receivers = BTreeMap::from([(
        "hook".to_string(),
        fast(&format!("kind = \"webhook\"\nurl = \"{}\"", hook.url())),
    )]);
    enqueue(
        &db,
        "hook",
        &[note("bad", "10.0.0.1", AlertState::Firing)],
        10,
    );
    let running = Running::start(&db, receivers);
    wait_for(LIMIT, "the refused item dropped", || {
        (running.stats("hook").dropped == 1).then_some(())
    });
    assert!(!running.stats("hook").down, "a receiver that answers is up");
    hook.set_status(200);
    enqueue(
        &db,
        "hook",
        &[note("good", "10.0.0.1", AlertState::Firing)],
        10,
    );
    running.addr.do_send(Nudge);
    wait_for(LIMIT, "the next item", || {
        (hook.bodies().len() == 2).then_some(())
    });
    assert_eq!(keys(&hook.bodies()), ["bad", "good"]);
}

#[test]
fn delivered_notifications_are_not_sent_again_after_a_restart() {
    let hook = WebhookSink::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = db_path(&dir);
    let receivers = BTreeMap::from([(
        "hook".to_string(),
        fast(&format!("kind = \"webhook\"\nurl = \"{}\"", hook.url())),
    )]);
    let n1 = note("t1", "10.0.0.1", AlertState::Firing);
    let n2 = note("t2", "10.0.0.2", AlertState::Firing);
    enqueue(&db, "hook", &[n1.clone(), n2.clone()], 10);
    {
        let running = Running::start(&db, receivers.clone());
        wait_for(LIMIT, "both delivered", || {
            (running.stats("hook").ok == 2).then_some(())
        });
    }
    // Stopped. A crash-replay of the same transitions is no new item; a new one is due.
    let n3 = note("t3", "10.0.0.3", AlertState::Firing);
    let done = enqueue(&db, "hook", &[n1, n2, n3], 10);
    assert_eq!(
        done.iter().map(|e| e.inserted).collect::<Vec<_>>(),
        [false, false, true]
    );
    let running = Running::start(&db, receivers);
    wait_for(LIMIT, "the due one delivered after restart", || {
        (running.stats("hook").ok == 1).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(keys(&hook.bodies()), ["t1", "t2", "t3"]);
}

#[test]
fn a_backlog_is_delivered_in_order_and_a_reload_redirects_the_receiver() {
    let hook = WebhookSink::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = db_path(&dir);
    // First pointed at a port where nothing listens, with a long backoff.
    let wrong = receiver(&format!(
        "kind = \"webhook\"\nurl = \"http://127.0.0.1:{}/\"\ninitial_backoff = \"1h\"\nmax_backoff = \"1h\"",
        free_port("127.0.0.1")
    ));
    let notes: Vec<Notification> = (0..200)
        .map(|i| note(&format!("b{i:03}"), "10.0.0.1", AlertState::Firing))
        .collect();
    enqueue(&db, "hook", &notes, 1000);
    let running = Running::start(&db, BTreeMap::from([("hook".to_string(), wrong)]));
    wait_for(LIMIT, "the receiver down", || {
        running.stats("hook").down.then_some(())
    });
    // Live reload with the right URL: tried at once, not after the hour of backoff.
    running.addr.do_send(SetReceivers(BTreeMap::from([(
        "hook".to_string(),
        fast(&format!("kind = \"webhook\"\nurl = \"{}\"", hook.url())),
    )])));
    wait_for(LIMIT, "the 200 notifications", || {
        (hook.bodies().len() >= 200).then_some(())
    });
    let expected: Vec<String> = (0..200).map(|i| format!("b{i:03}")).collect();
    assert_eq!(keys(&hook.bodies()), expected);
    wait_for(LIMIT, "depth 0", || {
        let s = running.stats("hook");
        (s.depth == 0 && s.ok == 200 && !s.down).then_some(())
    });
}

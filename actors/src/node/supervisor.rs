//! The node's supervisor: a registry of its long-lived parts (accept loops, DNS watchers,
//! the sealer, snapshot keeper, file watcher, request book, ...) that restarts a part when it
//! ends or panics, with a backoff doubling from [`BACKOFF_MIN`] to [`BACKOFF_MAX`] (back to
//! the minimum once a part has run [`RESET_AFTER`]), logs one line per restart with its
//! cause, counts it, and lists every part in the `query_actors` self table.
//!
//! Two kinds of part:
//! - tasks: a factory makes the future again; whatever must outlive a restart (a bound
//!   listener, a channel, an `Arc`) is captured by the factory, not by the future.
//! - actix actors ([`Supervisor::start_actor`]): the actor's context future is polled
//!   inside `catch_unwind`; after a panic (or a stop) it is restarted *in place*: the same
//!   mailbox (every `Addr` others hold still works) and the same actor value, whose
//!   [`actix::Supervised::restarting`] resets what was in flight; `started` runs again.
//!
//! Child links restart their own sessions ([`crate::tier::child_link`]) and report here.
//! A test-only fault hook ([`Supervisor::inject_panic`]) makes a named part panic on its
//! own task.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant, SystemTime};

use actix::dev::ContextFut;
use actix::{Actor, AsyncContext, Context, Supervised};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::sql::SqlPool;

/// The first wait before a restart; doubled at each restart in a row.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest wait before a restart.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A part that ran this long before ending starts over from [`BACKOFF_MIN`].
pub const RESET_AFTER: Duration = Duration::from_secs(60);
/// At most one restart line per part in this period (the others are counted in the next).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What a part is, in `query_actors.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An actix actor, restarted in place.
    Actor,
    /// A tokio task (an accept loop, a DNS watcher), started again from its factory.
    Task,
    /// A child link: its actor restarts its sessions and reports here.
    Link,
    /// Parent sessions: each ends alone (its parent dials again) and reports here.
    Session,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Actor => "actor",
            Kind::Task => "task",
            Kind::Link => "link",
            Kind::Session => "session",
        }
    }
}

/// Where a part is, in `query_actors.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    /// Ended or panicked; waiting out its backoff.
    Restarting,
    /// Ended for good (not restarted).
    Stopped,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Restarting => "restarting",
            State::Stopped => "stopped",
        }
    }
}

/// One row of `query_actors`.
#[derive(Debug, Clone, PartialEq)]
pub struct PartStatus {
    pub name: String,
    pub kind: Kind,
    pub state: State,
    pub restarts: u64,
    pub last_error: Option<String>,
    /// When it was last (re)started.
    pub since: SystemTime,
}

struct Entry {
    status: PartStatus,
    fault: Arc<Notify>,
    last_log: Option<Instant>,
    held_lines: u64,
}

struct Inner {
    role: &'static str,
    metrics: Arc<Metrics>,
    backoff: (Duration, Duration),
    parts: Mutex<BTreeMap<String, Entry>>,
}

/// The node's registry and supervisor (cheap to clone; one per node).
#[derive(Clone)]
pub struct Supervisor(Arc<Inner>);

impl Supervisor {
    pub fn new(role: &'static str, metrics: Arc<Metrics>) -> Self {
        Self::with_backoff(role, metrics, BACKOFF_MIN, BACKOFF_MAX)
    }

    /// With another backoff (tests).
    pub fn with_backoff(
        role: &'static str,
        metrics: Arc<Metrics>,
        min: Duration,
        max: Duration,
    ) -> Self {
        Supervisor(Arc::new(Inner {
            role,
            metrics,
            backoff: (min, max),
            parts: Mutex::new(BTreeMap::new()),
        }))
    }

    pub fn role(&self) -> &'static str {
        self.0.role
    }

    fn parts(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.0.parts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `name` (running since now) and returns its fault trigger. A name registered
    /// again (a part started anew) keeps its counts.
    pub fn register(&self, name: &str, kind: Kind) -> Arc<Notify> {
        let mut parts = self.parts();
        let entry = parts.entry(name.to_string()).or_insert_with(|| Entry {
            status: PartStatus {
                name: name.to_string(),
                kind,
                state: State::Running,
                restarts: 0,
                last_error: None,
                since: SystemTime::now(),
            },
            fault: Arc::new(Notify::new()),
            last_log: None,
            held_lines: 0,
        });
        entry.fault.clone()
    }

    /// Every part, by name.
    pub fn status(&self) -> Vec<PartStatus> {
        self.parts().values().map(|e| e.status.clone()).collect()
    }

    pub fn status_of(&self, name: &str) -> Option<PartStatus> {
        self.parts().get(name).map(|e| e.status.clone())
    }

    /// Test-only fault hook: makes `name` panic on its own task or event loop (at once if
    /// it runs, else as soon as it does). False if no such part.
    pub fn inject_panic(&self, name: &str) -> bool {
        match self.parts().get(name) {
            Some(e) => {
                tracing::warn!(actor = name, "fault injection: making it panic");
                e.fault.notify_one();
                true
            }
            None => false,
        }
    }

    /// `name` ended (`cause`) and `state` follows: counted, logged (one line, at most every
    /// [`LOG_EVERY`] per part), shown in `query_actors`.
    pub fn record_restart(&self, name: &str, cause: &str, state: State, wait: Duration) {
        self.0
            .metrics
            .actor_restarts
            .fetch_add(1, Ordering::Relaxed);
        self.0.metrics.record_actor_restart(name);
        let mut parts = self.parts();
        let Some(e) = parts.get_mut(name) else {
            return;
        };
        e.status.restarts += 1;
        e.status.last_error = Some(cause.to_string());
        e.status.state = state;
        if state == State::Running {
            // Restarted by its owner (a child link's session): running again already.
            e.status.since = SystemTime::now();
        }
        let now = Instant::now();
        if e.last_log
            .is_some_and(|t| now.duration_since(t) < LOG_EVERY)
        {
            e.held_lines += 1;
            return;
        }
        e.last_log = Some(now);
        let held = std::mem::take(&mut e.held_lines);
        let restarts = e.status.restarts;
        drop(parts);
        tracing::error!(
            actor = name,
            role = self.0.role,
            restarts,
            restart_in_ms = wait.as_millis() as u64,
            similar_since_last = held,
            "{name} stopped ({cause}); restarting it"
        );
    }

    fn set_running(&self, name: &str) {
        if let Some(e) = self.parts().get_mut(name) {
            e.status.state = State::Running;
            e.status.since = SystemTime::now();
        }
    }

    fn set_stopped(&self, name: &str) {
        if let Some(e) = self.parts().get_mut(name) {
            e.status.state = State::Stopped;
        }
    }

    /// Runs the task `factory` makes on the compute pool, and again whenever it ends or
    /// panics.
    pub fn spawn_task<F, Fut>(&self, name: &str, pool: &SqlPool, mut factory: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let fault = self.register(name, Kind::Task);
        let label = name.to_string();
        let run = self.clone().monitor(name.to_string(), fault, move |fault| {
            tokio::spawn(with_fault(label.clone(), fault, factory()))
        });
        pool.spawn(run);
    }

    /// Like [`Supervisor::spawn_task`], on the current thread's local task set (a future
    /// that is not `Send`, on the actix system).
    pub fn spawn_local_task<F, Fut>(&self, name: &str, mut factory: F)
    where
        F: FnMut() -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let fault = self.register(name, Kind::Task);
        let label = name.to_string();
        let run = self.clone().monitor(name.to_string(), fault, move |fault| {
            actix_rt::spawn(with_fault(label.clone(), fault, factory()))
        });
        actix_rt::spawn(run);
    }

    /// Starts the task `spawn` returns, waits for it to end, restarts it after the
    /// backoff; forever (the node's runtime going away ends it).
    pub async fn monitor<S>(self, name: String, fault: Arc<Notify>, mut spawn: S)
    where
        S: FnMut(Arc<Notify>) -> JoinHandle<()>,
    {
        let (min, max) = self.0.backoff;
        let mut backoff = min;
        loop {
            let started = Instant::now();
            let cause = match spawn(fault.clone()).await {
                Ok(()) => "ended".to_string(),
                Err(e) if e.is_panic() => format!("panicked: {}", panic_message(&*e.into_panic())),
                Err(_) => "cancelled".to_string(),
            };
            if started.elapsed() >= RESET_AFTER {
                backoff = min;
            }
            self.record_restart(&name, &cause, State::Restarting, backoff);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(max);
            self.set_running(&name);
        }
    }

    /// Starts `actor` on the current actix system under this supervisor, registered as
    /// `name`.
    pub fn start_actor<A>(&self, name: &str, actor: A) -> actix::Addr<A>
    where
        A: Actor<Context = Context<A>> + Supervised + Unpin,
    {
        let fault = self.register(name, Kind::Actor);
        let ctx = Context::new();
        let addr = ctx.address();
        let fut = ctx.into_future(actor);
        let (min, _) = self.0.backoff;
        actix_rt::spawn(ActorSupervisor {
            fut,
            _keep: addr.clone(),
            name: name.to_string(),
            supervisor: self.clone(),
            fault_trigger: fault.clone(),
            fault: Box::pin(notified(fault)),
            wait: None,
            backoff: min,
            started: Instant::now(),
        });
        addr
    }
}

async fn notified(n: Arc<Notify>) {
    n.notified().await
}

/// `fut`, or a panic with `name` when the fault hook fires first.
pub(crate) async fn with_fault<F: Future<Output = T>, T>(
    name: String,
    fault: Arc<Notify>,
    fut: F,
) -> T {
    tokio::select! {
        out = fut => out,
        _ = fault.notified() => panic!("fault injected into {name}"),
    }
}

/// The text of a panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// The future an actix actor runs in: its context, caught when it panics, restarted in
/// place after the backoff.
struct ActorSupervisor<A: Actor<Context = Context<A>>> {
    fut: ContextFut<A, Context<A>>,
    /// Keeps the mailbox connected: a part nobody else holds an address of (the sealer)
    /// is restarted too.
    _keep: actix::Addr<A>,
    name: String,
    supervisor: Supervisor,
    fault_trigger: Arc<Notify>,
    fault: Pin<Box<dyn Future<Output = ()>>>,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
    backoff: Duration,
    started: Instant,
}

impl<A> Future for ActorSupervisor<A>
where
    A: Actor<Context = Context<A>> + Supervised + Unpin,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            if let Some(wait) = &mut this.wait {
                if wait.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.wait = None;
                // The same mailbox; `restarting` then `started` run on the same value.
                let fut = &mut this.fut;
                match std::panic::catch_unwind(AssertUnwindSafe(|| fut.restart())) {
                    Ok(true) => {}
                    Ok(false) => {
                        this.supervisor.set_stopped(&this.name);
                        return Poll::Ready(());
                    }
                    Err(payload) => {
                        // `restarting` itself panicked: try again after a longer wait.
                        let cause = format!("panicked restarting: {}", panic_message(&*payload));
                        this.schedule_restart(&cause);
                        continue;
                    }
                }
                this.supervisor.set_running(&this.name);
                this.started = Instant::now();
            }
            let faulted = this.fault.as_mut().poll(cx).is_ready();
            if faulted {
                this.fault = Box::pin(notified(this.fault_trigger.clone()));
            }
            let name = &this.name;
            let fut = &mut this.fut;
            let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
                if faulted {
                    panic!("fault injected into {name}");
                }
                Pin::new(fut).poll(cx)
            }));
            let cause = match polled {
                Ok(Poll::Pending) => return Poll::Pending,
                Ok(Poll::Ready(())) => "stopped".to_string(),
                Err(payload) => format!("panicked: {}", panic_message(&*payload)),
            };
            this.schedule_restart(&cause);
        }
    }
}

impl<A: Actor<Context = Context<A>>> ActorSupervisor<A> {
    fn schedule_restart(&mut self, cause: &str) {
        let (min, max) = self.supervisor.0.backoff;
        if self.started.elapsed() >= RESET_AFTER {
            self.backoff = min;
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(max);
        self.supervisor
            .record_restart(&self.name, cause, State::Restarting, wait);
        self.wait = Some(Box::pin(tokio::time::sleep(wait)));
    }
}

#[cfg(test)]
mod tests {
    use super::{with_fault, Kind, Metrics, State, Supervisor};
    use actix::{Actor, Context, Handler, Message, Supervised};
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    fn supervisor(min_ms: u64, max_ms: u64) -> Supervisor {
        Supervisor::with_backoff(
            "test",
            Arc::new(Metrics::default()),
            Duration::from_millis(min_ms),
            Duration::from_millis(max_ms),
        )
    }

    /// Polls `f` every 10 ms until it holds (20 s at most: a panic backtrace can be slow).
    async fn eventually(mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "condition not met within 20 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_task_that_panics_is_restarted_with_a_doubling_backoff_and_counted() {
        let sup = supervisor(40, 160);
        let starts = Arc::new(Mutex::new(Vec::<Instant>::new()));
        let s = starts.clone();
        let fault = sup.register("t", Kind::Task);
        tokio::spawn(sup.clone().monitor("t".into(), fault, move |_| {
            let s = s.clone();
            tokio::spawn(async move {
                let n = {
                    let mut v = s.lock().unwrap_or_else(|p| p.into_inner());
                    v.push(Instant::now());
                    v.len()
                };
                if n <= 4 {
                    panic!("boom {n}");
                }
                std::future::pending::<()>().await
            })
        }));
        eventually(|| starts.lock().map(|v| v.len() >= 5).unwrap_or(false)).await;
        let st = sup.status_of("t").expect("registered");
        assert_eq!(st.restarts, 4);
        assert_eq!(st.last_error.as_deref(), Some("panicked: boom 4"));
        assert_eq!(st.kind, Kind::Task);
        eventually(|| {
            sup.status_of("t")
                .is_some_and(|s| s.state == State::Running)
        })
        .await;
        let v = starts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let gaps: Vec<Duration> = v.windows(2).map(|w| w[1] - w[0]).collect();
        // 40, 80, 160, 160 (capped): each wait at least its backoff, so it doubled (a
        // fixed backoff would give gaps under 80 ms; upper bounds are not checked: a
        // panic's backtrace can take a while).
        for (gap, min) in gaps.iter().zip([40u64, 80, 160, 160]) {
            assert!(*gap >= Duration::from_millis(min), "{gaps:?}");
        }
        assert_eq!(sup.0.metrics.actor_restarts.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn a_task_that_ends_is_started_again_and_the_fault_hook_panics_it() {
        let sup = supervisor(10, 20);
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let fault = sup.register("loop", Kind::Task);
        let label = "loop".to_string();
        tokio::spawn(sup.clone().monitor("loop".into(), fault, move |fault| {
            let r = r.clone();
            let label = label.clone();
            tokio::spawn(with_fault(label, fault, async move {
                if r.fetch_add(1, Ordering::SeqCst) == 0 {
                    return; // ends once
                }
                std::future::pending::<()>().await
            }))
        }));
        eventually(|| runs.load(Ordering::SeqCst) == 2).await;
        assert_eq!(
            sup.status_of("loop").map(|s| s.last_error),
            Some(Some("ended".into()))
        );
        assert!(sup.inject_panic("loop"));
        assert!(!sup.inject_panic("nobody"));
        eventually(|| runs.load(Ordering::SeqCst) == 3).await;
        let st = sup.status_of("loop").expect("registered");
        assert_eq!(st.restarts, 2);
        assert_eq!(
            st.last_error.as_deref(),
            Some("panicked: fault injected into loop")
        );
    }

    /// Counts its starts and restarts; `Boom` panics in its handler.
    struct Counter {
        value: Arc<AtomicU64>,
        started: Arc<AtomicU64>,
        restarting: Arc<AtomicU64>,
    }
    impl Actor for Counter {
        type Context = Context<Self>;
        fn started(&mut self, _: &mut Context<Self>) {
            self.started.fetch_add(1, Ordering::SeqCst);
        }
    }
    impl Supervised for Counter {
        fn restarting(&mut self, _: &mut Context<Self>) {
            self.restarting.fetch_add(1, Ordering::SeqCst);
        }
    }
    #[derive(Message)]
    #[rtype(result = "u64")]
    struct Add;
    #[derive(Message)]
    #[rtype(result = "()")]
    struct Boom;
    impl Handler<Add> for Counter {
        type Result = u64;
        fn handle(&mut self, _: Add, _: &mut Context<Self>) -> u64 {
            self.value.fetch_add(1, Ordering::SeqCst) + 1
        }
    }
    impl Handler<Boom> for Counter {
        type Result = ();
        fn handle(&mut self, _: Boom, _: &mut Context<Self>) {
            panic!("handler blew up");
        }
    }

    #[actix::test]
    async fn an_actor_that_panics_restarts_in_place_and_its_address_keeps_working() {
        let sup = supervisor(20, 100);
        let (value, started, restarting) = (Arc::default(), Arc::default(), Arc::default());
        let counter = Counter {
            value: Arc::clone(&value),
            started: Arc::clone(&started),
            restarting: Arc::clone(&restarting),
        };
        let addr = sup.start_actor("counter", counter);
        assert_eq!(addr.send(Add).await.ok(), Some(1));
        addr.do_send(Boom);
        // Queued behind the panic: answered after the restart, by the same address.
        assert_eq!(addr.send(Add).await.ok(), Some(2));
        assert_eq!(restarting.load(Ordering::SeqCst), 1);
        assert_eq!(started.load(Ordering::SeqCst), 2);
        let st = sup.status_of("counter").expect("registered");
        assert_eq!(
            (st.kind, st.state, st.restarts),
            (Kind::Actor, State::Running, 1)
        );
        assert_eq!(st.last_error.as_deref(), Some("panicked: handler blew up"));

        // The fault hook panics it on its own event loop.
        assert!(sup.inject_panic("counter"));
        eventually(|| restarting.load(Ordering::SeqCst) == 2).await;
        assert_eq!(addr.send(Add).await.ok(), Some(3));
        let st = sup.status_of("counter").expect("registered");
        assert_eq!(st.restarts, 2);
        assert_eq!(
            st.last_error.as_deref(),
            Some("panicked: fault injected into counter")
        );
        assert_eq!(sup.0.metrics.actor_restarts.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn an_owner_reports_restarts_it_does_itself() {
        let sup = supervisor(10, 20);
        sup.register("child_link:c1", Kind::Link);
        sup.record_restart(
            "child_link:c1",
            "session panicked: x",
            State::Running,
            Duration::ZERO,
        );
        let st = sup.status_of("child_link:c1").expect("registered");
        assert_eq!((st.state, st.restarts), (State::Running, 1));
        assert_eq!(st.last_error.as_deref(), Some("session panicked: x"));
    }
}

//! Admission control for queries. Clients (an address; later an authenticated identity)
//! are in one of three classes by their recent cost (how long their places were held, a
//! maximum fading with a 30 s half-life), each with places of its own, so no class can
//! take another's: **light** clients run at most `max_concurrent` queries at once, clients
//! of **heavy** queries (recent cost at least `heavy_after`) at most `max_heavy` together,
//! and **new** clients (no recent cost) at most `max_heavy` together. Queries of heavy and
//! new clients run on a pool of lower priority (see `handle.rs`). Beyond its class's
//! places a query waits, at most `max_queued` in all, each up to `queue_timeout`; beyond,
//! 503 `busy`. One client may hold at most `per_client` places (running or waiting) and
//! run at most `running_per_client` at once, so a client sending 64 queries gets `busy`
//! for most of them and never takes every place of its class. A freed place goes to the
//! waiting client with the fewest queries running, then to the one whose recent queries
//! cost least (first come among equals), not simply to the oldest waiter. When the queue
//! is full, a newcomer takes the slot of the waiter whose client costs most, if that costs
//! more than its own: clients of heavy queries cannot fill the queue against light ones.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::QueryError;

#[derive(Debug, Clone, Copy)]
pub struct AdmissionLimits {
    pub max_concurrent: usize,
    pub max_queued: usize,
    pub per_client: usize,
    pub running_per_client: usize,
    pub queue_timeout: Duration,
    /// Places that clients of heavy queries (recent cost at least `heavy_after`) may hold
    /// together: the rest of the query threads stay free for light queries. Clients not
    /// known yet hold as many places together, apart from those.
    pub max_heavy: usize,
    pub heavy_after: Duration,
    /// Cores the queries share (the query pool's threads): a place's cost is its time
    /// with its share of them ([`State::tick`]).
    pub cores: usize,
}

impl AdmissionLimits {
    /// Whether a client of recent cost `cost` (seconds) is a client of heavy queries.
    fn heavy(&self, cost: f64) -> bool {
        cost >= self.heavy_after.as_secs_f64()
    }
}

pub struct Admission {
    limits: AdmissionLimits,
    state: Mutex<State>,
    /// Queries refused as busy since start.
    pub busy_total: AtomicU64,
}

#[derive(Default)]
struct State {
    running: usize,
    clients: HashMap<String, Client>,
    waiters: VecDeque<Waiter>,
    next_ticket: u64,
    /// Each client's recent cost: seconds its places were held, a maximum that halves every
    /// `COST_HALF_LIFE` (raised to each query's time as it ends). Kept after a client goes
    /// idle, so a client of heavy queries that waits between them, or sends a light one
    /// now and then, is still known as heavy.
    costs: HashMap<String, (f64, Instant)>,
    /// Places held now by clients that were light when admitted.
    light_running: usize,
    /// Places held now by clients that were heavy when admitted.
    heavy_running: usize,
    /// Places held now by clients that were not known when admitted.
    new_running: usize,
    /// Seconds of one query's fair share of the cores since start: wall time while at
    /// most `cores` queries run, slower when more share them ([`State::tick`]).
    shared_secs: f64,
    /// When `shared_secs` was last brought up to date.
    ticked: Option<Instant>,
}

/// What admission knows of a client, which decides where its query runs and from which
/// share of the places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Its recent queries were light: the light pool, any free place.
    Light,
    /// No history: a share of its own (`max_heavy` places), on the heavy pool, so a burst
    /// of new clients cannot take the places or threads of known light ones.
    New,
    /// Its recent queries held their place `heavy_after` or longer: at most `max_heavy`
    /// places together, on the heavy pool.
    Heavy,
}

/// Places held now by each class of client, and clients known as heavy now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassCounts {
    pub light: usize,
    pub heavy: usize,
    pub new: usize,
    pub heavy_clients: usize,
}

/// Clients whose recent cost is remembered at most (the longest unseen are forgotten).
const MAX_COSTS: usize = 4096;

/// How fast a client's recent cost fades: a client of 2.5 s queries is known as heavy
/// (500 ms) for about 70 s after its last one.
const COST_HALF_LIFE: Duration = Duration::from_secs(30);

/// A recorded cost `(seconds, when)`, faded to `now`.
fn decayed((cost, at): (f64, Instant), now: Instant) -> f64 {
    let halvings = now.saturating_duration_since(at).as_secs_f64() / COST_HALF_LIFE.as_secs_f64();
    cost * 0.5f64.powf(halvings)
}

#[derive(Default)]
struct Client {
    running: usize,
    queued: usize,
}

struct Waiter {
    ticket: u64,
    client: String,
    grant: oneshot::Sender<Grant>,
    /// A query moving to the heavy pool: its client's earlier place is still held by the
    /// stopping run, so the client's own caps do not apply to it.
    moving: bool,
}

/// What a waiter receives.
enum Grant {
    /// A place, granted in the client's class then, at `since` (`shared_secs`).
    Place { class: Class, since: f64 },
    /// Refused: the queue was full and a query of a client with cheaper recent queries
    /// took this one's slot.
    Evicted,
}

/// A running query's place; freed when dropped.
pub struct Admitted {
    admission: Arc<Admission>,
    client: String,
    /// `shared_secs` when the place was granted.
    since: f64,
    class: Class,
    /// Set (under the admission lock) once the place's share of its class is given back
    /// ahead of the place itself: see [`ClassShare`].
    share_back: Arc<AtomicBool>,
}

impl Admitted {
    /// The client's class when the place was granted.
    pub fn class(&self) -> Class {
        self.class
    }

    /// A handle that gives this place's share of its class back while the place itself
    /// is still held: a query stopped to move to the heavy pool keeps its place (it is
    /// still running) until its task stops, which for a long operator step may take a
    /// while; its class's share is free for others at once.
    pub fn share(&self) -> ClassShare {
        ClassShare {
            admission: self.admission.clone(),
            class: self.class,
            back: self.share_back.clone(),
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut st = self.admission.lock();
        st.tick(self.admission.limits.cores);
        let held = st.shared_secs - self.since;
        st.record_cost(&self.client, held);
        if !self.share_back.load(Ordering::Relaxed) {
            st.uncount(self.class);
        }
        self.admission.release_locked(&mut st, &self.client);
    }
}

/// See [`Admitted::share`].
pub struct ClassShare {
    admission: Arc<Admission>,
    class: Class,
    back: Arc<AtomicBool>,
}

impl ClassShare {
    /// Gives the share back (once; the place, when dropped, then leaves it alone).
    pub fn give_back(&self) {
        let mut st = self.admission.lock();
        if !self.back.swap(true, Ordering::Relaxed) {
            st.uncount(self.class);
            self.admission.dispatch(&mut st);
        }
    }
}

/// A waiting query's place in the queue; leaves it when dropped (timed out, or the client
/// hung up), giving back a place granted meanwhile.
struct Waiting {
    admission: Arc<Admission>,
    client: String,
    ticket: u64,
    grant: oneshot::Receiver<Grant>,
    done: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut st = self.admission.lock();
        if let Some(i) = st.waiters.iter().position(|w| w.ticket == self.ticket) {
            st.waiters.remove(i);
            st.client(&self.client).queued -= 1;
            st.forget_idle(&self.client);
        } else if let Ok(Grant::Place { class, .. }) = self.grant.try_recv() {
            // Granted just as we gave up: the place goes to the next one.
            st.uncount(class);
            self.admission.release_locked(&mut st, &self.client);
        }
        // Otherwise dispatch saw the receiver gone and took its place back itself.
    }
}

impl State {
    fn client(&mut self, name: &str) -> &mut Client {
        self.clients.entry(name.to_string()).or_default()
    }

    /// Brings `shared_secs` up to now, before the number of running queries changes or a
    /// place's time is read. A place's cost is what it ran of its fair share: its wall
    /// time, but counted at `cores / running` while more queries than cores run. Wall
    /// time alone grew with the load: under the fleet benchmark's steady mix (16 clients,
    /// 6 places on 2 cores) a 20 ms query held its place 100 ms, and within 20 s 15 of the
    /// 16 clients were heavy, sharing the heavy places while light ones stood idle.
    fn tick(&mut self, cores: usize) {
        let now = Instant::now();
        if let Some(then) = self.ticked {
            let wall = now.saturating_duration_since(then).as_secs_f64();
            let share = (cores.max(1) as f64 / self.running.max(1) as f64).min(1.0);
            self.shared_secs += wall * share;
        }
        self.ticked = Some(now);
    }

    fn record_cost(&mut self, name: &str, seconds: f64) {
        let now = Instant::now();
        if !self.costs.contains_key(name) && self.costs.len() >= MAX_COSTS {
            if let Some(oldest) = self
                .costs
                .iter()
                .min_by_key(|(_, (_, seen))| *seen)
                .map(|(k, _)| k.clone())
            {
                self.costs.remove(&oldest);
            }
        }
        let c = self.costs.entry(name.to_string()).or_insert((0.0, now));
        *c = (decayed(*c, now).max(seconds), now);
    }

    /// `name`'s recent cost now (0 for a client not known).
    fn cost(&self, name: &str) -> f64 {
        self.costs
            .get(name)
            .map_or(0.0, |c| decayed(*c, Instant::now()))
    }

    /// (`name`'s class, may it not take another place now: its class's share is full).
    fn class_held_back(&self, name: &str, limits: &AdmissionLimits) -> (Class, bool) {
        if !self.costs.contains_key(name) {
            return (Class::New, self.new_running >= limits.max_heavy);
        }
        if limits.heavy(self.cost(name)) {
            return (Class::Heavy, self.heavy_running >= limits.max_heavy);
        }
        (Class::Light, self.light_running >= limits.max_concurrent)
    }

    fn count(&mut self, class: Class) {
        match class {
            Class::Light => self.light_running += 1,
            Class::New => self.new_running += 1,
            Class::Heavy => self.heavy_running += 1,
        }
    }

    fn uncount(&mut self, class: Class) {
        match class {
            Class::Light => self.light_running -= 1,
            Class::New => self.new_running -= 1,
            Class::Heavy => self.heavy_running -= 1,
        }
    }

    /// Makes room in a full queue for `newcomer` by refusing the waiter whose client's
    /// recent queries cost the most, if that is more than the newcomer's: many clients of
    /// heavy queries cannot fill the queue against light ones. False when none costs more.
    fn evict_costlier(&mut self, newcomer: &str) -> bool {
        let mine = self.cost(newcomer);
        let costliest = self
            .waiters
            .iter()
            .enumerate()
            .map(|(i, w)| (self.cost(&w.client), i))
            .filter(|(cost, _)| *cost > mine)
            // The costliest; among equals the newest, which has waited least.
            .max_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let Some(w) = costliest.and_then(|(_, i)| self.waiters.remove(i)) else {
            return false;
        };
        self.client(&w.client).queued -= 1;
        self.forget_idle(&w.client);
        // A waiter that already gave up has nothing to tell.
        let _ = w.grant.send(Grant::Evicted);
        true
    }

    fn forget_idle(&mut self, name: &str) {
        if self
            .clients
            .get(name)
            .is_some_and(|c| c.running == 0 && c.queued == 0)
        {
            self.clients.remove(name);
        }
    }
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Arc<Self> {
        Arc::new(Admission {
            limits,
            state: Mutex::new(State::default()),
            busy_total: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is counters and queues only: a poisoned lock still holds usable values.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn busy(&self, why: String) -> QueryError {
        self.busy_total.fetch_add(1, Ordering::Relaxed);
        QueryError::Busy(why)
    }

    /// Counts a query refused as busy elsewhere (its deadline passed while it waited).
    pub fn count_busy(&self) {
        self.busy_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Makes `client` known as heavy now, for one half-life of its cost (30 s), unless its
    /// queries' real times say longer: a query stopped to move to the heavy pool gives its
    /// place back only once its task stops, and the next admission must already know the
    /// client as heavy. Its run in the heavy place then records its real time. Not the
    /// query's whole timeout, as before: one query that ran 100 ms in a slow moment made
    /// its client heavy for minutes (30 s halvings of 60 s), and under a steady mix every
    /// client in time shared the heavy places (the fleet benchmark's varied mix over 60 s:
    /// 156 queries/s against 326 in 15 s).
    pub fn mark_heavy(&self, client: &str) {
        let heavy = 2.0 * self.limits.heavy_after.as_secs_f64();
        self.lock().record_cost(client, heavy);
    }

    /// Places held now by class, and clients known as heavy (what `/metrics` shows).
    pub fn classes(&self) -> ClassCounts {
        let st = self.lock();
        let now = Instant::now();
        ClassCounts {
            light: st.light_running,
            heavy: st.heavy_running,
            new: st.new_running,
            heavy_clients: st
                .costs
                .values()
                .filter(|c| self.limits.heavy(decayed(**c, now)))
                .count(),
        }
    }

    /// How much slower than alone a query runs now: running queries per core, at least
    /// one. A light or new client's query is stopped once it has held its place
    /// `heavy_after` times this (its cost reaching `heavy_after`, as a place's cost counts).
    pub fn slowdown(&self) -> f64 {
        let running = self.lock().running as f64;
        (running / self.limits.cores.max(1) as f64).max(1.0)
    }

    /// Queries running now.
    pub fn running(&self) -> usize {
        self.lock().running
    }

    /// Queries waiting for a place now.
    pub fn queued(&self) -> usize {
        self.lock().waiters.len()
    }

    /// True when the queue is full (nobody waits while a place of its class is free, so
    /// the places its waiters need are all taken): a query that finds no free place in
    /// its class is refused.
    pub fn saturated(&self) -> bool {
        self.lock().waiters.len() >= self.limits.max_queued
    }

    /// Waits for a place for `client`'s query, or refuses it: at once when the client holds
    /// its share or the queue is full, after `queue_timeout` in the queue otherwise.
    pub async fn admit(self: &Arc<Self>, client: &str) -> Result<Admitted, QueryError> {
        self.admit_inner(client, false).await
    }

    /// A new place for a query stopped in its place to move to the heavy pool: like
    /// `admit`, but its client's caps on places do not count the place it is leaving
    /// (held until the stopped run's task ends).
    pub async fn admit_moving(self: &Arc<Self>, client: &str) -> Result<Admitted, QueryError> {
        self.admit_inner(client, true).await
    }

    async fn admit_inner(
        self: &Arc<Self>,
        client: &str,
        moving: bool,
    ) -> Result<Admitted, QueryError> {
        let mut waiting = {
            let mut st = self.lock();
            let (running, queued) = st
                .clients
                .get(client)
                .map_or((0, 0), |c| (c.running, c.queued));
            if !moving && running + queued >= self.limits.per_client {
                drop(st);
                return Err(self.busy(format!(
                    "{client} has {} queries running or queued, the most one client may \
                     ([sql] max_queries_per_client)",
                    running + queued
                )));
            }
            // Places are granted as soon as they free (`dispatch`), so a free place means
            // no waiter may take it: it is this client's if it is under its share.
            let (class, held_back) = st.class_held_back(client, &self.limits);
            if (moving || running < self.limits.running_per_client) && !held_back {
                st.tick(self.limits.cores);
                st.running += 1;
                st.client(client).running += 1;
                st.count(class);
                return Ok(Admitted {
                    admission: self.clone(),
                    client: client.to_string(),
                    since: st.shared_secs,
                    class,
                    share_back: Arc::default(),
                });
            }
            if st.waiters.len() >= self.limits.max_queued && !st.evict_costlier(client) {
                let (r, q) = (st.running, st.waiters.len());
                drop(st);
                return Err(self.busy(format!(
                    "{r} queries running and {q} queued ([sql] max_concurrent_queries, \
                     max_queued_queries)"
                )));
            }
            let (tx, rx) = oneshot::channel();
            let ticket = st.next_ticket;
            st.next_ticket += 1;
            st.client(client).queued += 1;
            st.waiters.push_back(Waiter {
                ticket,
                client: client.to_string(),
                grant: tx,
                moving,
            });
            Waiting {
                admission: self.clone(),
                client: client.to_string(),
                ticket,
                grant: rx,
                done: false,
            }
        };
        match tokio::time::timeout(self.limits.queue_timeout, &mut waiting.grant).await {
            Ok(Ok(Grant::Evicted)) => {
                waiting.done = true;
                Err(self.busy(
                    "the queue was full and a client with cheaper recent queries took this \
                     query's place in it ([sql] max_queued_queries)"
                        .into(),
                ))
            }
            Ok(Ok(Grant::Place { class, since })) => {
                waiting.done = true;
                Ok(Admitted {
                    admission: self.clone(),
                    client: client.to_string(),
                    since,
                    class,
                    share_back: Arc::default(),
                })
            }
            Ok(Err(_)) => Err(QueryError::Internal("admission dropped a waiter".into())),
            Err(_) => {
                drop(waiting);
                Err(self.busy(format!(
                    "waited {:?} in the queue for one of {} places ([sql] queue_timeout)",
                    self.limits.queue_timeout, self.limits.max_concurrent
                )))
            }
        }
    }

    /// Gives a place back and grants it, under one lock, so that a newcomer cannot take
    /// the freed place ahead of the waiters.
    fn release_locked(&self, st: &mut State, client: &str) {
        st.tick(self.limits.cores);
        st.running -= 1;
        st.client(client).running -= 1;
        st.forget_idle(client);
        self.dispatch(st);
    }

    /// Grants free places to waiters: each to the waiting client with the fewest queries
    /// running (and under its running share), then the cheapest recently (a light query
    /// waits for the next free place, not behind every heavy one), oldest first.
    fn dispatch(&self, st: &mut State) {
        loop {
            let pick = st
                .waiters
                .iter()
                .enumerate()
                .filter_map(|(i, w)| {
                    let running = st.clients.get(&w.client).map_or(0, |c| c.running);
                    let (_, held_back) = st.class_held_back(&w.client, &self.limits);
                    ((w.moving || running < self.limits.running_per_client) && !held_back)
                        .then_some((running, st.cost(&w.client), i))
                })
                .min_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)));
            let Some((_, _, i)) = pick else { break };
            let Some(w) = st.waiters.remove(i) else { break };
            let (class, _) = st.class_held_back(&w.client, &self.limits);
            let c = st.client(&w.client);
            c.queued -= 1;
            c.running += 1;
            st.tick(self.limits.cores);
            st.running += 1;
            st.count(class);
            let since = st.shared_secs;
            if w.grant.send(Grant::Place { class, since }).is_err() {
                // The waiter is gone (its Drop could not find it in the queue any more).
                st.running -= 1;
                st.uncount(class);
                st.client(&w.client).running -= 1;
                st.forget_idle(&w.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AdmissionLimits {
        AdmissionLimits {
            max_concurrent: 2,
            max_queued: 2,
            per_client: 3,
            running_per_client: 1,
            queue_timeout: Duration::from_millis(300),
            max_heavy: 2,
            heavy_after: Duration::from_secs(1),
            // More than the tests run at once: a place's cost is its wall time.
            cores: 8,
        }
    }

    /// Makes `clients` known as light: each ran a query that held its place a moment.
    async fn known(a: &Arc<Admission>, clients: &[&str]) {
        for c in clients {
            drop(a.admit(c).await.expect("a first query"));
        }
    }

    #[tokio::test]
    async fn one_client_cannot_take_every_place() {
        let a = Admission::new(limits());
        known(&a, &["greedy", "polite"]).await;
        // "fourth" costs more than the waiters, so it cannot take a slot from them.
        let p = a.admit("fourth").await.expect("fourth's first query");
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(p);
        let first = a.admit("greedy").await.expect("first");
        // The greedy client's second waits although a place is free: it already runs its
        // share; a third is over its places.
        let a2 = a.clone();
        let second = tokio::spawn(async move { a2.admit("greedy").await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let a3 = a.clone();
        let third = tokio::spawn(async move { a3.admit("greedy").await.map(drop) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        match a.admit("greedy").await {
            Err(QueryError::Busy(m)) => assert!(m.contains("max_queries_per_client"), "{m}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        // Another client gets the free place at once, ahead of the greedy one's queue.
        let polite = a.admit("polite").await.expect("the free place");
        assert_eq!((a.running(), a.queued()), (2, 2));
        assert!(a.saturated());
        assert!(matches!(a.admit("fourth").await, Err(QueryError::Busy(_))));
        drop(first);
        second
            .await
            .expect("joined")
            .expect("admitted when the first ended");
        drop(polite);
        third.await.expect("joined").expect("admitted in turn");
        assert_eq!(a.running(), 0);
        assert!(a.lock().clients.is_empty(), "every count given back");
    }

    #[tokio::test]
    async fn the_queue_wait_is_bounded_and_a_freed_place_goes_to_the_least_served() {
        let a = Admission::new(AdmissionLimits {
            running_per_client: 2,
            ..limits()
        });
        known(&a, &["a", "c", "d"]).await;
        let p1 = a.admit("a").await.expect("first");
        let p2 = a.admit("a").await.expect("second");
        match a.admit("c").await {
            Err(QueryError::Busy(m)) => assert!(m.contains("queue_timeout"), "{m}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert_eq!(a.queued(), 0, "the timed-out waiter left the queue");
        // "a" queues first, then "d"; when one of a's queries ends, d (running none) gets
        // the place before a (still running one).
        let a1 = a.clone();
        let again = tokio::spawn(async move { a1.admit("a").await.map(drop) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let a2 = a.clone();
        let d = tokio::spawn(async move { a2.admit("d").await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(p1);
        let d = d.await.expect("joined").expect("d admitted first");
        assert_eq!(a.queued(), 1, "a still waits");
        drop(p2);
        again.await.expect("joined").expect("a admitted in turn");
        drop(d);
        assert_eq!(a.running(), 0);
    }

    #[tokio::test]
    async fn a_light_client_goes_before_heavy_ones_waiting_longer() {
        let a = Admission::new(AdmissionLimits {
            max_concurrent: 1,
            max_queued: 8,
            ..limits()
        });
        // "heavy" held its place 200 ms last time (still a light client: under 1 s);
        // "light" and "other" a moment.
        known(&a, &["light", "other"]).await;
        let p = a.admit("heavy").await.expect("heavy");
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(p);
        let running = a.admit("other").await.expect("the place");
        let a1 = a.clone();
        let heavy = tokio::spawn(async move { a1.admit("heavy").await.map(drop) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let a2 = a.clone();
        let light = tokio::spawn(async move { a2.admit("light").await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(running);
        let light = light.await.expect("joined").expect("light first");
        assert_eq!(a.queued(), 1, "heavy still waits");
        drop(light);
        heavy.await.expect("joined").expect("heavy next");
    }

    #[tokio::test]
    async fn heavy_clients_together_leave_places_for_light_ones() {
        let a = Admission::new(AdmissionLimits {
            max_concurrent: 3,
            max_queued: 8,
            max_heavy: 1,
            heavy_after: Duration::from_millis(100),
            ..limits()
        });
        for client in ["h1", "h2"] {
            let p = a.admit(client).await.expect("first query");
            tokio::time::sleep(Duration::from_millis(120)).await;
            drop(p);
        }
        let heavy = a.admit("h1").await.expect("one heavy place");
        let a1 = a.clone();
        let second = tokio::spawn(async move { a1.admit("h2").await.map(drop) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(a.queued(), 1, "h2 waits although places are free");
        let light = a
            .admit("light")
            .await
            .expect("light gets a free place at once");
        drop(heavy);
        second
            .await
            .expect("joined")
            .expect("h2 takes the heavy place in turn");
        drop(light);
        let st = a.lock();
        assert_eq!(
            (
                st.running,
                st.light_running,
                st.heavy_running,
                st.new_running
            ),
            (0, 0, 0, 0)
        );
    }

    #[tokio::test]
    async fn a_place_costs_its_share_of_the_cores_not_its_wall_time() {
        let a = Admission::new(AdmissionLimits {
            max_concurrent: 4,
            heavy_after: Duration::from_millis(300),
            cores: 1,
            ..limits()
        });
        known(&a, &["a", "b", "alone"]).await;
        // Two queries sharing one core for 400 ms: 200 ms each of it, light.
        let (pa, pb) = (
            a.admit("a").await.expect("a"),
            a.admit("b").await.expect("b"),
        );
        assert!(a.slowdown() >= 2.0, "two running on one core");
        tokio::time::sleep(Duration::from_millis(400)).await;
        drop((pa, pb));
        for c in ["a", "b"] {
            let cost = a.lock().cost(c);
            assert!((0.19..0.3).contains(&cost), "{c}: {cost}");
        }
        // The same 400 ms alone is the whole core's: heavy.
        let p = a.admit("alone").await.expect("alone");
        assert_eq!(a.slowdown(), 1.0);
        tokio::time::sleep(Duration::from_millis(400)).await;
        drop(p);
        assert!(a.lock().cost("alone") >= 0.39);
        assert_eq!(a.classes().heavy_clients, 1);
    }

    #[tokio::test]
    async fn a_client_marked_heavy_is_heavy_for_a_while_not_for_minutes() {
        let a = Admission::new(limits());
        known(&a, &["light", "moved"]).await;
        assert_eq!(a.classes().heavy_clients, 0);
        a.mark_heavy("moved");
        let place = a.admit("moved").await.expect("a heavy place");
        assert_eq!(place.class(), Class::Heavy);
        assert_eq!(
            a.classes(),
            ClassCounts {
                light: 0,
                heavy: 1,
                new: 0,
                heavy_clients: 1
            }
        );
        // Twice `heavy_after` (1 s here): heavy for one half-life, then light again unless
        // a run of its own held a place longer. The query's timeout would keep it heavy
        // for minutes after one slow moment.
        let cost = a.lock().cost("moved");
        assert!((1.9..=2.0).contains(&cost), "{cost}");
        let later = Instant::now() + COST_HALF_LIFE + Duration::from_secs(1);
        assert!(decayed((cost, Instant::now()), later) < 1.0, "light again");
        drop(place);
        assert_eq!(a.classes().heavy, 0, "its place given back");
    }

    #[tokio::test]
    async fn a_light_client_takes_a_full_queues_slot_from_a_heavy_one() {
        let a = Admission::new(AdmissionLimits {
            max_concurrent: 1,
            max_queued: 2,
            queue_timeout: Duration::from_secs(5),
            ..limits()
        });
        // Recent costs: h1 50 ms, h2 80 ms, h3 120 ms (all light clients: under 1 s);
        // "light" and "other" a moment.
        known(&a, &["light", "other"]).await;
        for (client, ms) in [("h1", 50), ("h2", 80), ("h3", 120)] {
            let p = a.admit(client).await.expect("first query");
            tokio::time::sleep(Duration::from_millis(ms)).await;
            drop(p);
        }
        let running = a.admit("other").await.expect("the place");
        let a1 = a.clone();
        let h1 = tokio::spawn(async move { a1.admit("h1").await.map(drop) });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let a2 = a.clone();
        let h2 = tokio::spawn(async move { a2.admit("h2").await.map(drop) });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(a.queued(), 2, "the queue is full");
        // A newcomer costlier than every waiter is refused; a light one evicts the
        // costliest waiter.
        match a.admit("h3").await {
            Err(QueryError::Busy(m)) => assert!(m.contains("max_queued_queries"), "{m}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        let a3 = a.clone();
        let light = tokio::spawn(async move { a3.admit("light").await });
        match h2.await.expect("joined") {
            Err(QueryError::Busy(m)) => assert!(m.contains("cheaper recent queries"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(a.queued(), 2, "light waits in h2's slot");
        drop(running);
        let light = light.await.expect("joined").expect("light goes first");
        drop(light);
        h1.await.expect("joined").expect("h1 in turn");
        assert_eq!(a.running(), 0);
        assert!(a.lock().clients.is_empty(), "every count given back");
    }

    #[tokio::test]
    async fn new_clients_have_places_of_their_own() {
        let a = Admission::new(AdmissionLimits {
            max_concurrent: 1,
            max_queued: 8,
            max_heavy: 1,
            ..limits()
        });
        known(&a, &["light"]).await;
        // A new client takes the new clients' one place; another waits for it, while the
        // known light client still finds its class's place free.
        let first = a.admit("new1").await.expect("new place");
        assert_eq!(first.class(), Class::New);
        let a1 = a.clone();
        let second = tokio::spawn(async move { a1.admit("new2").await.map(|p| p.class()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(a.queued(), 1, "new2 waits for the new clients' place");
        let light = a.admit("light").await.expect("light place at once");
        assert_eq!(light.class(), Class::Light);
        drop(first);
        let class = second.await.expect("joined").expect("new2 in turn");
        assert_eq!(class, Class::New);
        // new1 is known now, as light (its query held its place a moment).
        drop(light);
        assert_eq!(a.admit("new1").await.expect("place").class(), Class::Light);
    }

    #[tokio::test]
    async fn a_stopping_query_gives_its_class_share_back_before_its_place() {
        let a = Admission::new(AdmissionLimits {
            max_heavy: 1,
            max_queued: 8,
            ..limits()
        });
        let stopping = a.admit("new1").await.expect("the new clients' place");
        let a1 = a.clone();
        let waiting = tokio::spawn(async move { a1.admit("new2").await.map(|p| p.class()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(a.queued(), 1, "new2 waits for the share");
        stopping.share().give_back();
        let class = waiting.await.expect("joined").expect("new2 admitted");
        assert_eq!(class, Class::New);
        assert_eq!(a.running(), 1, "new1's place is held until it stops");
        drop(stopping);
        let st = a.lock();
        assert_eq!((st.running, st.new_running), (0, 0), "counted once");
    }

    #[tokio::test]
    async fn a_client_that_hangs_up_while_waiting_leaves_no_trace() {
        let a = Admission::new(limits());
        let _p1 = a.admit("a").await.expect("first");
        let _p2 = a.admit("b").await.expect("second");
        let a1 = a.clone();
        let waiter = tokio::spawn(async move { a1.admit("c").await.map(drop) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(a.queued(), 0);
        assert!(!a.lock().clients.contains_key("c"));
    }
}

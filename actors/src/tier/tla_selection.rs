//! How a SQL node chooses the TLA it takes generations from (LISA 2010 section 8.2).
//!
//! Every TLA advertises how many clusters its latest generation covers. The
//! [`TlaSelector`] actor probes each candidate TLA (the addresses of the aggregator set's
//! TLA name, re-resolved, or a configured list) every `probe_every`, and:
//! - at first picks an arbitrary one among the best (clusters × (1 + bonus));
//! - switches when another sees at least `switch_margin` more (an arbitrary one among
//!   those), so a TLA that lost clusters is left while equal TLAs keep their SQL nodes;
//! - switches when its TLA failed `fail_after` probes in a row (dead or cut off); until then
//!   the node keeps answering from its last generation, whose age the answers show;
//! - considers only `pin`ned TLAs when a pin is set (fault quarantine, OSR 2010 3.6).
//!
//! The choice goes out on a watch channel that the SQL node's link to "the TLA" dials.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::transport::{explain_tls, Dialer};
use crate::error::{ConfigError, ConfigResult};
use crate::link::frame::{decode_frame, encode_frame, read_frame, write_frame, Codec};
use crate::link::wire::{Advert, ToChild, ToParent, LINK_VERSION};
use crate::link::LinkError;
use crate::metrics::Metrics;
use crate::sql::SqlPool;

/// `[tla_selection]` of a SQL node.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlaSelectionConfig {
    /// Switch when another TLA sees at least this share more clusters (0.05: 5%).
    pub switch_margin: f64,
    /// How often every candidate is asked what it sees.
    #[serde(with = "humantime_serde")]
    pub probe_every: Duration,
    /// Probes in a row a TLA may fail before it counts as gone.
    pub fail_after: u32,
    /// Bonuses for nearby TLAs, by `IP` or `IP:PORT`: a TLA's score is its clusters times
    /// (1 + bonus).
    pub bonus: BTreeMap<String, f64>,
    /// Only these TLAs (`IP` or `IP:PORT`) are used; empty: any of the set.
    pub pin: Vec<String>,
}

impl Default for TlaSelectionConfig {
    fn default() -> Self {
        TlaSelectionConfig {
            switch_margin: 0.05,
            probe_every: Duration::from_secs(5),
            fail_after: 2,
            bonus: BTreeMap::new(),
            pin: Vec::new(),
        }
    }
}

impl TlaSelectionConfig {
    pub fn validate(&self) -> ConfigResult<()> {
        let bad = |m: String| {
            Err(ConfigError::Invalid {
                what: "[tla_selection]".into(),
                message: m,
            })
        };
        if !(0.0..=10.0).contains(&self.switch_margin) {
            return bad("switch_margin must be between 0 and 10".into());
        }
        if self.probe_every < Duration::from_millis(50) || self.fail_after == 0 {
            return bad("probe_every must be at least 50ms and fail_after at least 1".into());
        }
        for (k, b) in &self.bonus {
            if !b.is_finite() || *b < 0.0 {
                return bad(format!("bonus of {k} must be a number >= 0"));
            }
        }
        Ok(())
    }

    /// `key` (IP or IP:PORT) names `address` (IP:PORT).
    fn names(key: &str, address: &str) -> bool {
        key == address || address.rsplit_once(':').is_some_and(|(ip, _)| ip == key)
    }

    fn bonus_of(&self, address: &str) -> f64 {
        self.bonus
            .iter()
            .filter(|(k, _)| Self::names(k, address))
            .map(|(_, b)| *b)
            .fold(0.0, f64::max)
    }

    fn allowed(&self, address: &str) -> bool {
        self.pin.is_empty() || self.pin.iter().any(|k| Self::names(k, address))
    }
}

/// One candidate as the selector sees it (for `/health`).
#[derive(Debug, Clone, Default)]
pub struct Candidate {
    /// Clusters it advertised at its last answered probe.
    pub clusters: Option<u64>,
    pub machines: Option<u64>,
    pub node: Option<String>,
    /// Probes failed in a row.
    pub failures: u32,
    pub last_error: Option<String>,
    pub bonus: f64,
    /// Whether the pin allows it.
    pub allowed: bool,
}

/// What the selector decided, shared with the node's handle.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub current: Option<String>,
    pub since: Option<SystemTime>,
    pub switches: u64,
    pub last_reason: Option<String>,
    pub candidates: BTreeMap<String, Candidate>,
}

pub type SharedSelection = Arc<Mutex<Selection>>;

pub struct TlaSelector {
    config: TlaSelectionConfig,
    candidates: watch::Receiver<Vec<String>>,
    chosen: watch::Sender<Vec<String>>,
    connect_timeout: Duration,
    /// Largest probe answer accepted (`[link] max_request_frame_bytes`: an advert is small).
    max_answer_bytes: usize,
    pool: SqlPool,
    shared: SharedSelection,
    metrics: Arc<Metrics>,
    /// Plain, or mutual TLS (`[link.tls]`).
    dialer: Dialer,
    rng: SmallRng,
    probing: bool,
    /// The warning last logged, while its condition lasts.
    trouble: Option<&'static str>,
    /// The probe timer (replaced when `probe_every` is edited).
    timer: Option<SpawnHandle>,
}

impl TlaSelector {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: TlaSelectionConfig,
        candidates: watch::Receiver<Vec<String>>,
        chosen: watch::Sender<Vec<String>>,
        connect_timeout: Duration,
        max_answer_bytes: usize,
        pool: SqlPool,
        shared: SharedSelection,
        metrics: Arc<Metrics>,
        dialer: Dialer,
    ) -> Self {
        TlaSelector {
            config,
            candidates,
            chosen,
            connect_timeout,
            max_answer_bytes,
            pool,
            shared,
            metrics,
            dialer,
            rng: SmallRng::from_os_rng(),
            probing: false,
            trouble: None,
            timer: None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Selection> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn probe_all(&mut self, ctx: &mut Context<Self>) {
        if self.probing {
            return;
        }
        let addresses = self.candidates.borrow().clone();
        self.probing = true;
        let (timeout, max) = (self.connect_timeout, self.max_answer_bytes);
        let dialer = self.dialer.clone();
        let work = self.pool.spawn(async move {
            let probes = addresses.iter().map(|a| probe(a, timeout, max, &dialer));
            let answers = futures::future::join_all(probes).await;
            addresses.into_iter().zip(answers).collect::<Vec<_>>()
        });
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(work).map(|res, act, _ctx| {
                act.probing = false;
                match res {
                    Ok(answers) => act.apply(answers),
                    Err(e) => tracing::error!(error = %e, "probing the TLAs panicked"),
                }
            }),
        );
    }

    /// Records the probes' answers and switches if the rules say so.
    fn apply(&mut self, answers: Vec<(String, Result<Advert, LinkError>)>) {
        let fail_after = self.config.fail_after;
        let margin = self.config.switch_margin;
        let mut sel = self.lock().clone();
        let mut next = BTreeMap::new();
        for (address, answer) in answers {
            let mut c = sel.candidates.remove(&address).unwrap_or_default();
            c.bonus = self.config.bonus_of(&address);
            c.allowed = self.config.allowed(&address);
            match answer {
                Ok(a) => {
                    c.clusters = Some(a.clusters);
                    c.machines = Some(a.machines);
                    c.node = Some(a.node);
                    c.failures = 0;
                    c.last_error = None;
                }
                Err(e) => {
                    c.failures = c.failures.saturating_add(1);
                    c.last_error = Some(e.to_string());
                }
            }
            next.insert(address, c);
        }
        sel.candidates = next;
        let views: Vec<View> = sel
            .candidates
            .iter()
            .filter(|(_, c)| c.allowed)
            .map(|(a, c)| View {
                address: a.clone(),
                clusters: c.clusters.filter(|_| c.failures < fail_after),
                bonus: c.bonus,
            })
            .collect();
        let rng = &mut self.rng;
        if let Decision::Switch { to, reason } =
            decide(sel.current.as_deref(), &views, margin, |n| {
                rng.random_range(0..n)
            })
        {
            match &sel.current {
                Some(from) => tracing::warn!(from, to, reason, "switching TLA"),
                None => tracing::info!(to, reason, "TLA chosen"),
            }
            if sel.current.is_some() {
                sel.switches += 1;
                self.metrics
                    .tla_switches
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            sel.current = Some(to.clone());
            sel.since = Some(SystemTime::now());
            sel.last_reason = Some(reason);
            self.chosen.send_replace(vec![to]);
        }
        // Said once when it starts, not at every probe.
        let trouble = if sel.current.is_none() && !views.is_empty() {
            Some("no TLA answers; none chosen yet")
        } else if views.is_empty() && !sel.candidates.is_empty() {
            Some("no candidate TLA is allowed by the pin")
        } else {
            None
        };
        if let Some(t) = trouble.filter(|t| self.trouble != Some(*t)) {
            tracing::warn!(candidates = sel.candidates.len(), pin = ?self.config.pin, "{t}");
        }
        self.trouble = trouble;
        *self.lock() = sel;
    }
}

/// Restarted in place: the choice is kept; `started` probes again and sets a new timer.
impl Supervised for TlaSelector {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.probing = false;
        self.timer = None;
    }
}

impl Actor for TlaSelector {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.probe_all(ctx);
        self.timer = Some(ctx.run_interval(self.config.probe_every, |act, ctx| act.probe_all(ctx)));
    }
}

/// `[tla_selection]` edited in the node's config file: applied from the next probe on.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetSelectionConfig(pub TlaSelectionConfig);

impl Handler<SetSelectionConfig> for TlaSelector {
    type Result = ();
    fn handle(&mut self, msg: SetSelectionConfig, ctx: &mut Context<Self>) {
        if msg.0 == self.config {
            return;
        }
        tracing::info!(pin = ?msg.0.pin, bonus = ?msg.0.bonus, switch_margin = msg.0.switch_margin, probe_every = ?msg.0.probe_every, "TLA selection reconfigured");
        let every = msg.0.probe_every;
        let timer_changed = every != self.config.probe_every;
        self.config = msg.0;
        if timer_changed {
            if let Some(t) = self.timer.take() {
                ctx.cancel_future(t);
            }
            self.timer = Some(ctx.run_interval(every, |act, ctx| act.probe_all(ctx)));
        }
        // Pins and bonuses take effect at once.
        self.probe_all(ctx);
    }
}

/// Asks the node at `address` what it sees: a probe instead of hello, one answer.
pub async fn probe(
    address: &str,
    timeout: Duration,
    max: usize,
    dialer: &Dialer,
) -> Result<Advert, LinkError> {
    let exchange = async {
        let stream = dialer.dial(address, timeout).await?;
        let (mut rd, mut wr) = tokio::io::split(stream);
        let probe = ToChild::Probe {
            version: LINK_VERSION,
        };
        write_frame(&mut wr, &encode_frame(&probe, Codec::None)?).await?;
        wr.flush().await?;
        match read_frame(&mut rd, max).await.map_err(explain_tls)? {
            Some(body) => match decode_frame::<ToParent>(&body, max)? {
                ToParent::Advert(a) => Ok(a),
                ToParent::Refused { message } => Err(LinkError::Refused(message)),
                _ => Err(LinkError::Protocol("expected an advert".into())),
            },
            None => Err(LinkError::Protocol(
                "closed before answering the probe".into(),
            )),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| LinkError::Silent(timeout))?
}

/// A candidate as the rules see it.
#[derive(Debug, Clone)]
pub(crate) struct View {
    pub address: String,
    /// Clusters it sees; None when it does not answer.
    pub clusters: Option<u64>,
    pub bonus: f64,
}

impl View {
    fn score(&self) -> Option<f64> {
        self.clusters.map(|c| c as f64 * (1.0 + self.bonus))
    }
}

#[derive(Debug, PartialEq)]
pub(crate) enum Decision {
    Stay,
    Switch { to: String, reason: String },
}

/// The selection rules (module docs); `pick(n)` chooses an index below `n` arbitrarily.
pub(crate) fn decide(
    current: Option<&str>,
    views: &[View],
    margin: f64,
    mut pick: impl FnMut(usize) -> usize,
) -> Decision {
    let mut choose = |among: Vec<&View>, reason: String| match among.len() {
        0 => Decision::Stay,
        n => Decision::Switch {
            to: among[pick(n)].address.clone(),
            reason,
        },
    };
    let answering: Vec<&View> = views.iter().filter(|v| v.clusters.is_some()).collect();
    let best = answering
        .iter()
        .filter_map(|v| v.score())
        .fold(None, |m: Option<f64>, s| Some(m.map_or(s, |m| m.max(s))));
    let Some(best) = best else {
        return Decision::Stay;
    };
    let mine = current.and_then(|c| views.iter().find(|v| v.address == c));
    match mine.and_then(|m| m.score().map(|s| (m, s))) {
        // No TLA yet, or ours is gone (failed probes, left the name, pinned out): one of
        // the best, arbitrarily, so SQL nodes spread over equal TLAs.
        None => {
            let near_best: Vec<&View> = answering
                .iter()
                .copied()
                .filter(|v| v.score().is_some_and(|s| s * (1.0 + margin) >= best))
                .collect();
            let reason = match (current, mine) {
                (None, _) => "first choice".to_string(),
                (Some(c), Some(_)) => format!("{c} does not answer"),
                (Some(c), None) => format!("{c} is no longer a candidate"),
            };
            choose(near_best, reason)
        }
        Some((m, score)) => {
            let better: Vec<&View> = answering
                .iter()
                .copied()
                .filter(|v| {
                    v.address != m.address
                        && v.score()
                            .is_some_and(|s| s > score && s >= score * (1.0 + margin))
                })
                .collect();
            let reason = format!(
                "another TLA sees more clusters than {} ({})",
                m.address,
                m.clusters.unwrap_or(0)
            );
            choose(better, reason)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(address: &str, clusters: Option<u64>) -> View {
        View {
            address: address.into(),
            clusters,
            bonus: 0.0,
        }
    }

    fn to(d: Decision) -> Option<String> {
        match d {
            Decision::Switch { to, .. } => Some(to),
            Decision::Stay => None,
        }
    }

    #[test]
    fn the_first_choice_is_any_of_the_best() {
        let views = [v("a", Some(10)), v("b", Some(10)), v("c", Some(3))];
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..4 {
            seen.insert(to(decide(None, &views, 0.05, |n| i % n)).expect("a choice"));
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(decide(None, &[v("a", None)], 0.05, |_| 0), Decision::Stay);
    }

    #[test]
    fn it_switches_only_past_the_margin() {
        let views = [v("a", Some(100)), v("b", Some(104))];
        assert_eq!(decide(Some("a"), &views, 0.05, |_| 0), Decision::Stay);
        let views = [v("a", Some(100)), v("b", Some(105)), v("c", Some(110))];
        let picks: Vec<_> = (0..2)
            .map(|i| to(decide(Some("a"), &views, 0.05, |n| i % n)).expect("switch"))
            .collect();
        assert_eq!(picks, vec!["b", "c"], "any of those past the margin");
        // From a TLA that sees nothing, any that sees something.
        let views = [v("a", Some(0)), v("b", Some(1))];
        assert_eq!(to(decide(Some("a"), &views, 0.05, |_| 0)), Some("b".into()));
    }

    #[test]
    fn a_dead_or_removed_tla_is_left_and_nothing_answering_means_stay() {
        let views = [v("a", None), v("b", Some(5))];
        assert_eq!(to(decide(Some("a"), &views, 0.05, |_| 0)), Some("b".into()));
        assert_eq!(
            to(decide(Some("gone"), &views[1..], 0.05, |_| 0)),
            Some("b".into())
        );
        assert_eq!(
            decide(Some("a"), &[v("a", None), v("b", None)], 0.05, |_| 0),
            Decision::Stay
        );
    }

    #[test]
    fn bonuses_favour_nearby_tlas() {
        let mut near = v("near", Some(100));
        near.bonus = 0.1;
        let views = [near, v("far", Some(108))];
        assert_eq!(to(decide(None, &views, 0.0, |_| 0)), Some("near".into()));
        assert_eq!(decide(Some("near"), &views, 0.0, |_| 0), Decision::Stay);
    }

    #[test]
    fn keys_name_ips_or_addresses_and_the_pin_filters() {
        let cfg = TlaSelectionConfig {
            bonus: [("127.0.3.1".to_string(), 0.2)].into_iter().collect(),
            pin: vec!["127.0.3.2:7000".into()],
            ..TlaSelectionConfig::default()
        };
        assert_eq!(cfg.bonus_of("127.0.3.1:7000"), 0.2);
        assert_eq!(cfg.bonus_of("127.0.3.11:7000"), 0.0);
        assert!(cfg.allowed("127.0.3.2:7000"));
        assert!(!cfg.allowed("127.0.3.1:7000"));
        assert!(cfg.validate().is_ok());
        let bad = TlaSelectionConfig {
            switch_margin: -1.0,
            ..TlaSelectionConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}

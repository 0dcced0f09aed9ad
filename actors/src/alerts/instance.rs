//! The life of alert instances, counted in evaluations (never in wall-clock time): a row
//! returned by `for` consecutive evaluations fires; a firing row absent from `clear_after`
//! consecutive evaluations resolves; an absence the generation cannot vouch for (the
//! instance's machine or cluster is missing, a table is missing or stale) makes the
//! instance `unknown` instead, keeping its history. A failing alert has one `error`
//! instance. Pure functions of the previous state and one evaluation, so every rule is a
//! unit test.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::config::AlertDef;
use super::notify::{AlertState, Notification};
use crate::table::unix_millis;

/// The key of an alert's `error` instance (real keys are `col=value` pairs).
pub const ERROR_KEY: &str = "(error)";

/// One instance of one alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub key_text: String,
    pub key: BTreeMap<String, String>,
    /// The row's other columns, as last seen.
    pub values: BTreeMap<String, String>,
    pub state: AlertState,
    /// Consecutive evaluations that returned it (towards `for`).
    pub seen: u32,
    /// Consecutive evaluations, able to see it, that did not return it (towards
    /// `clear_after`).
    pub absent: u32,
    /// Firing (or error): when it began; pending: when first seen; resolved: when it had
    /// begun firing.
    pub since: SystemTime,
    /// When it entered its present state.
    pub changed: SystemTime,
    /// It has fired (and not resolved since): `unknown` goes back to `firing`, silently.
    pub fired: bool,
    /// The last round that returned it.
    pub last_seen_round: u64,
    /// The error of an `error` instance.
    pub error: Option<String>,
}

/// One row of an alert's answer, as text.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub key: BTreeMap<String, String>,
    pub values: BTreeMap<String, String>,
}

impl Row {
    pub fn key_text(&self) -> String {
        key_text(&self.key)
    }
}

pub fn key_text(key: &BTreeMap<String, String>) -> String {
    key.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether the generation could have returned an instance: its machine (`machine_ip`)
/// and cluster (`cluster`) are in it.
pub trait Coverage {
    fn has_machine(&self, machine_ip: &str) -> bool;
    fn has_cluster(&self, cluster: &str) -> bool;
}

impl Instance {
    fn covered(&self, coverage: &dyn Coverage) -> bool {
        let get = |c: &str| self.key.get(c).or_else(|| self.values.get(c));
        get("machine_ip").is_none_or(|m| coverage.has_machine(m))
            && get("cluster").is_none_or(|c| coverage.has_cluster(c))
    }
}

/// What one evaluation of an alert found.
pub enum Outcome<'a> {
    /// The SQL ran on a generation holding every table it reads, fresh enough.
    Rows {
        rows: Vec<Row>,
        coverage: &'a dyn Coverage,
    },
    /// A table it reads is missing from the generation or older than `max_age`.
    Unknown(String),
    /// The SQL failed.
    Failed(String),
}

/// A change of one instance's state.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: Option<AlertState>,
    pub to: AlertState,
    /// Receivers hear of it (firing, resolved after firing, error and its end).
    pub notify: bool,
    /// The instance after the change.
    pub instance: Instance,
    /// The instance is forgotten (a pending one that went away).
    pub removed: bool,
}

/// The instances of one alert.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Instances {
    pub by_key: BTreeMap<String, Instance>,
}

impl Instances {
    /// Applies one evaluation (of round `round`, a generation sealed at `at`) and returns
    /// what changed. Resolved instances older than `keep_resolved` are forgotten.
    pub fn step(
        &mut self,
        def: &AlertDef,
        outcome: Outcome<'_>,
        round: u64,
        at: SystemTime,
        keep_resolved: Duration,
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        match outcome {
            Outcome::Failed(error) => {
                self.fail(error, at, &mut out);
                return out;
            }
            Outcome::Unknown(why) => {
                self.clear_error(at, &mut out);
                for inst in self.by_key.values_mut() {
                    if matches!(inst.state, AlertState::Pending | AlertState::Firing) {
                        let from = inst.state;
                        inst.state = AlertState::Unknown;
                        inst.changed = at;
                        inst.error = Some(why.clone());
                        out.push(change(Some(from), inst, false));
                    }
                }
            }
            Outcome::Rows { rows, coverage } => {
                self.clear_error(at, &mut out);
                let mut returned = BTreeMap::new();
                for row in rows {
                    returned.insert(row.key_text(), row);
                }
                for (k, row) in &returned {
                    let inst = self.by_key.entry(k.clone()).or_insert_with(|| Instance {
                        key_text: k.clone(),
                        key: row.key.clone(),
                        values: row.values.clone(),
                        state: AlertState::Resolved,
                        seen: 0,
                        absent: 0,
                        since: at,
                        changed: at,
                        fired: false,
                        last_seen_round: 0,
                        error: None,
                    });
                    let existed = inst.last_seen_round != 0 || inst.state != AlertState::Resolved;
                    inst.values = row.values.clone();
                    inst.absent = 0;
                    inst.seen = inst.seen.saturating_add(1);
                    inst.last_seen_round = round;
                    inst.error = None;
                    let from = inst.state;
                    let to = if inst.fired || inst.seen >= def.for_evaluations {
                        AlertState::Firing
                    } else {
                        AlertState::Pending
                    };
                    if from == AlertState::Resolved {
                        // Back after resolving: a new episode.
                        inst.since = at;
                    }
                    if to != from {
                        // Unknown → firing is the same episode: receivers heard of it.
                        let notify = to == AlertState::Firing && !inst.fired;
                        if to == AlertState::Firing && !inst.fired {
                            inst.fired = true;
                            inst.since = at;
                        }
                        inst.state = to;
                        inst.changed = at;
                        out.push(change(existed.then_some(from), inst, notify));
                    }
                }
                let mut forget = Vec::new();
                for (k, inst) in self.by_key.iter_mut() {
                    if returned.contains_key(k) || inst.state == AlertState::Resolved {
                        continue;
                    }
                    if !inst.covered(coverage) {
                        if inst.state != AlertState::Unknown {
                            let from = inst.state;
                            inst.state = AlertState::Unknown;
                            inst.changed = at;
                            inst.error =
                                Some("its machine or cluster is not in this generation".into());
                            out.push(change(Some(from), inst, false));
                        }
                        continue;
                    }
                    inst.seen = 0;
                    inst.absent = inst.absent.saturating_add(1);
                    let from = inst.state;
                    if !inst.fired {
                        // Pending (or unknown before firing) that went away: never fired.
                        inst.state = AlertState::Resolved;
                        inst.changed = at;
                        let mut t = change(Some(from), inst, false);
                        t.removed = true;
                        out.push(t);
                        forget.push(k.clone());
                    } else if inst.absent >= def.clear_after {
                        inst.state = AlertState::Resolved;
                        inst.fired = false;
                        inst.changed = at;
                        inst.error = None;
                        out.push(change(Some(from), inst, true));
                    } else if from == AlertState::Unknown {
                        // Seen again to be absent: counting towards clear_after, firing.
                        inst.state = AlertState::Firing;
                        inst.changed = at;
                        inst.error = None;
                        out.push(change(Some(from), inst, false));
                    }
                }
                for k in forget {
                    self.by_key.remove(&k);
                }
            }
        }
        self.by_key.retain(|_, i| {
            i.state != AlertState::Resolved
                || at.duration_since(i.changed).unwrap_or_default() < keep_resolved
        });
        out
    }

    fn fail(&mut self, error: String, at: SystemTime, out: &mut Vec<Transition>) {
        match self.by_key.get_mut(ERROR_KEY) {
            Some(inst) => inst.error = Some(error),
            None => {
                let inst = Instance {
                    key_text: ERROR_KEY.into(),
                    key: BTreeMap::new(),
                    values: BTreeMap::new(),
                    state: AlertState::Error,
                    seen: 0,
                    absent: 0,
                    since: at,
                    changed: at,
                    fired: true,
                    last_seen_round: 0,
                    error: Some(error),
                };
                out.push(change(None, &inst, true));
                self.by_key.insert(ERROR_KEY.into(), inst);
            }
        }
    }

    /// The alert ran: its error instance, if any, resolves (receivers heard of it).
    fn clear_error(&mut self, at: SystemTime, out: &mut Vec<Transition>) {
        if let Some(mut inst) = self.by_key.remove(ERROR_KEY) {
            inst.state = AlertState::Resolved;
            inst.changed = at;
            inst.fired = false;
            let mut t = change(Some(AlertState::Error), &inst, true);
            t.removed = true;
            out.push(t);
        }
    }

    /// Instances receivers should be told are firing now (Alertmanager is re-sent these):
    /// firing ones, unknown ones that had fired (missing data is not a resolution) and
    /// errors.
    pub fn active(&self) -> impl Iterator<Item = &Instance> {
        self.by_key.values().filter(|i| {
            matches!(i.state, AlertState::Firing | AlertState::Error)
                || (i.state == AlertState::Unknown && i.fired)
        })
    }
}

fn change(from: Option<AlertState>, inst: &Instance, notify: bool) -> Transition {
    Transition {
        from,
        to: inst.state,
        notify,
        instance: inst.clone(),
        removed: false,
    }
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The notification of `inst` in state `state` (firing, resolved or error), made by the
/// evaluation of generation `generation` sealed at `at`. Its dedup key names the alert,
/// the instance, the episode (`since`) and the state: stable across restarts and retries.
pub fn notification(
    def: &AlertDef,
    inst: &Instance,
    state: AlertState,
    generation: u64,
    at: SystemTime,
) -> Notification {
    Notification {
        dedup_key: format!(
            "{}|{}|{}|{}",
            def.name,
            inst.key_text,
            unix_millis(inst.since),
            state.as_str()
        ),
        alert: def.name.clone(),
        key: inst.key.clone(),
        key_text: inst.key_text.clone(),
        state,
        since: rfc3339(inst.since),
        ended: (state == AlertState::Resolved).then(|| rfc3339(inst.changed)),
        priority: def.priority.clone(),
        owner: def.owner.clone(),
        description: def.description.clone(),
        runbook: def.runbook.clone(),
        labels: def.labels.clone(),
        generation,
        generation_time: rfc3339(at),
        values: inst.values.clone(),
        error: inst.error.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct All(bool);
    impl Coverage for All {
        fn has_machine(&self, _: &str) -> bool {
            self.0
        }
        fn has_cluster(&self, _: &str) -> bool {
            self.0
        }
    }

    fn def(for_: u32, clear: u32) -> AlertDef {
        let text = format!(
            "name = \"disk\"\nsql = \"SELECT 1\"\nkey = [\"machine_ip\"]\nfor = {for_}\nclear_after = {clear}\n"
        );
        toml::from_str(&text).expect("def")
    }

    fn row(ip: &str) -> Row {
        Row {
            key: BTreeMap::from([("machine_ip".to_string(), ip.to_string())]),
            values: BTreeMap::from([("free".to_string(), "1".to_string())]),
        }
    }

    fn t(round: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + round * 10)
    }

    /// Runs rounds; each round lists the machines returned; returns the notified states.
    fn run(
        d: &AlertDef,
        inst: &mut Instances,
        rounds: &[(u64, &[&str], bool)],
    ) -> Vec<(u64, AlertState)> {
        let mut notified = Vec::new();
        for &(round, ips, covered) in rounds {
            let cov = All(covered);
            let rows = ips.iter().map(|ip| row(ip)).collect();
            for tr in inst.step(
                d,
                Outcome::Rows {
                    rows,
                    coverage: &cov,
                },
                round,
                t(round),
                Duration::from_secs(3600),
            ) {
                if tr.notify {
                    notified.push((round, tr.to));
                }
            }
        }
        notified
    }

    #[test]
    fn fires_after_for_and_resolves_after_clear_after() {
        let d = def(3, 2);
        let mut i = Instances::default();
        let n = run(
            &d,
            &mut i,
            &[
                (1, &["a"], true),
                (2, &["a"], true),
                (3, &["a"], true),
                (4, &["a"], true),
                (5, &[], true),
                (6, &[], true),
            ],
        );
        assert_eq!(n, vec![(3, AlertState::Firing), (6, AlertState::Resolved)]);
        assert_eq!(i.by_key["machine_ip=a"].since, t(3));
    }

    #[test]
    fn a_flapping_row_with_for_3_never_fires() {
        let d = def(3, 2);
        let mut i = Instances::default();
        let rounds: Vec<(u64, &[&str], bool)> = (1..=21)
            .map(|r| (r, if r % 2 == 0 { &["a"][..] } else { &[][..] }, true))
            .collect();
        assert_eq!(run(&d, &mut i, &rounds), vec![]);
        assert!(
            i.by_key.is_empty(),
            "a pending instance that goes away is forgotten"
        );
    }

    #[test]
    fn one_absence_short_of_clear_after_keeps_firing() {
        let d = def(1, 2);
        let mut i = Instances::default();
        let n = run(
            &d,
            &mut i,
            &[
                (1, &["a"], true),
                (2, &[], true),
                (3, &["a"], true),
                (4, &[], true),
            ],
        );
        assert_eq!(n, vec![(1, AlertState::Firing)]);
        assert_eq!(i.by_key["machine_ip=a"].state, AlertState::Firing);
    }

    #[test]
    fn missing_machine_is_unknown_not_resolved_and_comes_back_silently() {
        let d = def(1, 1);
        let mut i = Instances::default();
        let n = run(
            &d,
            &mut i,
            &[(1, &["a"], true), (2, &[], false), (3, &[], false)],
        );
        assert_eq!(n, vec![(1, AlertState::Firing)]);
        let a = &i.by_key["machine_ip=a"];
        assert_eq!((a.state, a.since), (AlertState::Unknown, t(1)));
        let n = run(&d, &mut i, &[(4, &["a"], true)]);
        assert_eq!(n, vec![], "back to firing without a new notification");
        let a = &i.by_key["machine_ip=a"];
        assert_eq!((a.state, a.since), (AlertState::Firing, t(1)));
        let n = run(&d, &mut i, &[(5, &[], true)]);
        assert_eq!(n, vec![(5, AlertState::Resolved)]);
    }

    #[test]
    fn stale_table_makes_instances_unknown() {
        let d = def(1, 1);
        let mut i = Instances::default();
        run(&d, &mut i, &[(1, &["a"], true)]);
        let tr = i.step(
            &d,
            Outcome::Unknown("sys is 5m old".into()),
            2,
            t(2),
            Duration::from_secs(60),
        );
        assert_eq!(tr.len(), 1);
        assert!(!tr[0].notify);
        assert_eq!(i.by_key["machine_ip=a"].state, AlertState::Unknown);
    }

    #[test]
    fn a_failing_alert_is_an_error_notified_once_then_resolved() {
        let d = def(1, 1);
        let mut i = Instances::default();
        run(&d, &mut i, &[(1, &["a"], true)]);
        let first = i.step(
            &d,
            Outcome::Failed("bad sql".into()),
            2,
            t(2),
            Duration::from_secs(60),
        );
        assert_eq!(first.iter().filter(|t| t.notify).count(), 1);
        let again = i.step(
            &d,
            Outcome::Failed("bad sql".into()),
            3,
            t(3),
            Duration::from_secs(60),
        );
        assert!(again.is_empty(), "notified once");
        assert_eq!(
            i.by_key["machine_ip=a"].state,
            AlertState::Firing,
            "instances untouched"
        );
        let n = run(&d, &mut i, &[(4, &["a"], true)]);
        assert_eq!(n, vec![(4, AlertState::Resolved)], "the error's end");
        assert!(!i.by_key.contains_key(ERROR_KEY));
    }

    #[test]
    fn dedup_keys_are_stable_per_episode() {
        let d = def(1, 1);
        let mut i = Instances::default();
        run(&d, &mut i, &[(1, &["a"], true)]);
        let inst = &i.by_key["machine_ip=a"];
        let a = notification(&d, inst, AlertState::Firing, 7, t(1));
        let b = notification(&d, inst, AlertState::Firing, 9, t(2));
        assert_eq!(a.dedup_key, b.dedup_key);
        assert_ne!(
            a.dedup_key,
            notification(&d, inst, AlertState::Resolved, 9, t(2)).dedup_key
        );
    }
}

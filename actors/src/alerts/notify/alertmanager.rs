//! The `alertmanager` receiver: Prometheus Alertmanager's v2 API, `POST {url}/api/v2/alerts`
//! with a JSON array of `postableAlert` (labels, annotations, startsAt, endsAt).
//!
//! Labels identify an alert to Alertmanager: alertname, the instance key columns,
//! priority, owner and the alert's own labels, and nothing specific to the node, so the
//! SQL nodes of one aggregator set evaluating the same alerts send identical label sets
//! and Alertmanager deduplicates them. A firing alert's endsAt is [`ENDS_AFTER_RESENDS`]
//! resend intervals ahead and is pushed forward by each re-send (as Prometheus does): if
//! every node stops sending, Alertmanager resolves it by itself.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::dispatch::Failure;
use super::{AlertState, Notification};
use crate::alerts::instance::rfc3339;

/// A firing alert's endsAt: this many `resend_every` after the send.
pub const ENDS_AFTER_RESENDS: u32 = 4;

/// Sends `alerts` (in order; the last of several with the same labels wins) in one POST.
pub fn deliver(
    url: &str,
    timeout: Duration,
    resend_every: Duration,
    alerts: &[Notification],
    now: SystemTime,
) -> Result<(), Failure> {
    let body = body(alerts, resend_every, now);
    let endpoint = format!("{}/api/v2/alerts", url.trim_end_matches('/'));
    super::webhook::post_json(&endpoint, timeout, &body.to_string(), None)
}

/// The JSON array posted. One element per label set: Alertmanager would merge several
/// with the same labels received at the same instant in no defined order.
pub fn body(alerts: &[Notification], resend_every: Duration, now: SystemTime) -> Value {
    let mut seen: BTreeMap<BTreeMap<String, String>, usize> = BTreeMap::new();
    let mut out: Vec<Value> = Vec::new();
    for n in alerts {
        let labels = labels(n);
        let alert = postable(n, &labels, resend_every, now);
        match seen.get(&labels) {
            Some(&i) => out[i] = alert,
            None => {
                seen.insert(labels, out.len());
                out.push(alert);
            }
        }
    }
    Value::Array(out)
}

fn postable(
    n: &Notification,
    labels: &BTreeMap<String, String>,
    resend_every: Duration,
    now: SystemTime,
) -> Value {
    let starts = parse_time(&n.since);
    let ends = match (n.state, n.ended.as_deref().and_then(parse_time)) {
        (AlertState::Resolved, Some(ended)) => ended,
        (AlertState::Resolved, None) => now,
        _ => now + resend_every * ENDS_AFTER_RESENDS,
    };
    // Alertmanager refuses an alert ending before it starts (clock steps, bad data).
    let ends = starts.map_or(ends, |s| ends.max(s));
    let mut annotations = BTreeMap::new();
    let mut annotate = |k: &str, v: &str| {
        if !v.is_empty() {
            annotations.insert(k.to_string(), v.to_string());
        }
    };
    annotate("description", &n.description);
    annotate("runbook", &n.runbook);
    annotate("key_text", &n.key_text);
    let values: Vec<String> = n.values.iter().map(|(k, v)| format!("{k}={v}")).collect();
    annotate("values", &values.join(" "));
    annotate("error", n.error.as_deref().unwrap_or(""));
    annotate("generation", &n.generation.to_string());
    let mut alert = json!({
        "labels": labels,
        "annotations": annotations,
        "endsAt": rfc3339(ends),
    });
    if let Some(s) = starts {
        alert["startsAt"] = json!(rfc3339(s));
    }
    alert
}

/// The label set: the alert's own labels, then the key columns, then alertname, priority
/// and owner (which neither may override). Names are made valid for Alertmanager
/// (`[a-zA-Z_][a-zA-Z0-9_]*`); empty values are left out, as Prometheus does.
pub fn labels(n: &Notification) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let fixed = [
        ("alertname", n.alert.as_str()),
        ("priority", n.priority.as_str()),
        ("owner", n.owner.as_str()),
    ];
    for (k, v) in n
        .labels
        .iter()
        .chain(&n.key)
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(fixed)
    {
        if !v.is_empty() {
            out.insert(label_name(k), v.to_string());
        }
    }
    out
}

fn label_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        out.insert(0, '_');
    }
    out
}

fn parse_time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::notify::tests::sample;

    #[test]
    fn postable_alert_shape() {
        let now = humantime::parse_rfc3339("2026-11-28T10:05:00Z").expect("time");
        let mut n = sample("k1");
        n.key.insert("mount-point".into(), "/".into());
        n.labels.insert("alertname".into(), "spoofed".into());
        n.owner = String::new();
        let v = body(&[n], Duration::from_secs(60), now);
        let a = &v[0];
        assert_eq!(a["labels"]["alertname"], "disk_full");
        assert_eq!(a["labels"]["machine_ip"], "10.0.0.1");
        assert_eq!(a["labels"]["mount_point"], "/");
        assert_eq!(a["labels"]["priority"], "page");
        assert_eq!(a["labels"]["team"], "storage");
        assert!(a["labels"].get("owner").is_none(), "empty label left out");
        assert_eq!(a["annotations"]["description"], "filesystem under 3% free");
        assert_eq!(a["annotations"]["values"], "free_pct=2.5");
        assert_eq!(
            a["annotations"]["key_text"],
            "machine_ip=10.0.0.1 mountp=/var"
        );
        assert_eq!(a["startsAt"], "2026-11-28T10:00:00.000Z");
        assert_eq!(a["endsAt"], "2026-11-28T10:09:00.000Z", "4 resends ahead");
    }

    #[test]
    fn resolved_ends_at_its_time_and_replaces_the_firing_one() {
        let now = humantime::parse_rfc3339("2026-11-28T10:05:00Z").expect("time");
        let firing = sample("k1");
        let mut resolved = sample("k2");
        resolved.state = AlertState::Resolved;
        resolved.ended = Some("2026-11-28T10:03:00Z".into());
        let v = body(&[firing, resolved], Duration::from_secs(60), now);
        assert_eq!(v.as_array().map(Vec::len), Some(1));
        assert_eq!(v[0]["endsAt"], "2026-11-28T10:03:00.000Z");
        // Ending before the start is clamped (Alertmanager would refuse the batch).
        let mut odd = sample("k3");
        odd.state = AlertState::Resolved;
        odd.ended = Some("2026-11-28T09:00:00Z".into());
        let v = body(&[odd], Duration::from_secs(60), now);
        assert_eq!(v[0]["endsAt"], v[0]["startsAt"]);
    }

    #[test]
    fn label_names_are_made_valid() {
        assert_eq!(label_name("machine_ip"), "machine_ip");
        assert_eq!(label_name("9lives"), "_9lives");
        assert_eq!(label_name("a.b-c"), "a_b_c");
    }
}

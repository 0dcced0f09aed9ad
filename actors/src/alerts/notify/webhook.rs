//! The `webhook` receiver: one POST of one [`Notification`] as JSON per item, and the
//! blocking HTTP call it shares with the Alertmanager receiver.

use std::time::Duration;

use super::dispatch::Failure;
use super::Notification;

/// POSTs `n` to `url`; the `X-Query-Dedup-Key` header repeats its dedup key so a receiver
/// can drop a duplicate without parsing the body.
pub fn deliver(url: &str, timeout: Duration, n: &Notification) -> Result<(), Failure> {
    let body = serde_json::to_string(n).map_err(|e| Failure::Refused(e.to_string()))?;
    post_json(url, timeout, &body, Some(&n.dedup_key))
}

/// One POST of a JSON body, bounded by `timeout` (connect, send and answer). A 4xx answer
/// other than 408/429 means the receiver refuses this content: retrying cannot help.
pub(super) fn post_json(
    url: &str,
    timeout: Duration,
    body: &str,
    dedup_key: Option<&str>,
) -> Result<(), Failure> {
    let agent = ureq::AgentBuilder::new()
        .timeout(timeout)
        .redirects(0)
        .build();
    let mut req = agent
        .post(url)
        .set("Content-Type", "application/json")
        .set("User-Agent", "query-alerts");
    if let Some(key) = dedup_key {
        req = req.set("X-Query-Dedup-Key", key);
    }
    match req.send_string(body) {
        Ok(_) => Ok(()),
        Err(ureq::Error::Status(code, resp)) => {
            let mut text = resp.into_string().unwrap_or_default();
            text.truncate(200);
            let what = format!("HTTP {code}: {}", text.trim());
            if (400..500).contains(&code) && code != 408 && code != 429 {
                Err(Failure::Refused(what))
            } else {
                Err(Failure::Retry(what))
            }
        }
        Err(ureq::Error::Transport(t)) => Err(Failure::Retry(t.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::notify::tests::sample;

    #[test]
    fn webhook_body_is_the_notification() {
        let n = sample("k1");
        let v = serde_json::to_value(&n).expect("json");
        for field in [
            "dedup_key",
            "alert",
            "key",
            "key_text",
            "state",
            "since",
            "priority",
            "owner",
            "description",
            "runbook",
            "labels",
            "generation",
            "generation_time",
            "values",
        ] {
            assert!(v.get(field).is_some(), "{field} missing: {v}");
        }
        assert_eq!(v["state"], "firing");
        assert_eq!(v["key"]["machine_ip"], "10.0.0.1");
    }

    #[test]
    fn unreachable_receiver_is_a_retry() {
        // A port just freed: nothing listens there.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let r = deliver(
            &format!("http://{addr}/"),
            Duration::from_secs(2),
            &sample("k"),
        );
        assert!(matches!(r, Err(Failure::Retry(_))), "{r:?}");
    }
}

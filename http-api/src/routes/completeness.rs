//! How an answer states its completeness: the `completeness` block of JSON answers and the
//! `X-Query-*` headers every format carries (CSV and NDJSON have nowhere else to say it),
//! and the minimum a query asks for (`?min_clusters=`, `X-Query-Min-Clusters`, and the
//! same for machines).

use actix_web::HttpRequest;
use query_actors::node::{Completeness, MinCompleteness};
use serde_json::{json, Value};

use crate::error::ApiError;

/// The answer's coverage as response headers; an expected count the node cannot know is
/// left out.
pub fn headers(c: &Completeness) -> Vec<(&'static str, String)> {
    let mut out = vec![
        ("X-Query-Round", c.round.to_string()),
        ("X-Query-Clusters-Seen", c.clusters_seen.to_string()),
        ("X-Query-Machines-Seen", c.machines_seen.to_string()),
    ];
    if let Some(e) = c.clusters_expected {
        out.push(("X-Query-Clusters-Expected", e.to_string()));
    }
    if let Some(e) = c.machines_expected {
        out.push(("X-Query-Machines-Expected", e.to_string()));
    }
    out
}

/// The `completeness` block of a JSON answer.
pub fn json(c: &Completeness) -> Value {
    json!({
        "clusters": { "seen": c.clusters_seen, "expected": c.clusters_expected },
        "machines": { "seen": c.machines_seen, "expected": c.machines_expected },
    })
}

/// The minimum asked for: a query parameter or a header (both given: the stricter).
pub fn asked(
    req: &HttpRequest,
    min_clusters: Option<&str>,
    min_machines: Option<&str>,
) -> Result<MinCompleteness, ApiError> {
    let one = |param: &str, value: Option<&str>, header: &str| -> Result<Option<u64>, ApiError> {
        let header_value = req
            .headers()
            .get(header)
            .map(|v| v.to_str().unwrap_or("\u{fffd}"));
        let mut min = None;
        for (what, v) in [(param, value), (header, header_value)] {
            if let Some(v) = v {
                let n: u64 = v.trim().parse().map_err(|_| {
                    ApiError::BadRequest(format!(
                        "{what} must be a whole number of at least 0, not '{v}'"
                    ))
                })?;
                min = Some(min.map_or(n, |m: u64| m.max(n)));
            }
        }
        Ok(min)
    };
    Ok(MinCompleteness {
        clusters: one("min_clusters", min_clusters, "X-Query-Min-Clusters")?,
        machines: one("min_machines", min_machines, "X-Query-Min-Machines")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn sample(expected: Option<u64>) -> Completeness {
        Completeness {
            round: 885_000_123,
            clusters_seen: 3,
            clusters_expected: expected,
            machines_seen: 60,
            machines_expected: None,
        }
    }

    #[test]
    fn headers_and_json_state_seen_and_expected() {
        let h = headers(&sample(Some(4)));
        let get = |name: &str| h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str());
        assert_eq!(get("X-Query-Round"), Some("885000123"));
        assert_eq!(get("X-Query-Clusters-Seen"), Some("3"));
        assert_eq!(get("X-Query-Clusters-Expected"), Some("4"));
        assert_eq!(get("X-Query-Machines-Seen"), Some("60"));
        // Not known: left out, not "null" or 0.
        assert_eq!(get("X-Query-Machines-Expected"), None);
        assert_eq!(
            json(&sample(Some(4))),
            json!({
                "clusters": { "seen": 3, "expected": 4 },
                "machines": { "seen": 60, "expected": null },
            })
        );
    }

    #[test]
    fn the_minimum_comes_from_the_query_or_a_header_the_stricter_wins() {
        let req = TestRequest::default().to_http_request();
        assert_eq!(
            asked(&req, None, None).expect("none"),
            MinCompleteness::default()
        );
        assert_eq!(
            asked(&req, Some("3"), Some("50")).expect("params"),
            MinCompleteness {
                clusters: Some(3),
                machines: Some(50)
            }
        );
        let req = TestRequest::default()
            .insert_header(("X-Query-Min-Clusters", "5"))
            .to_http_request();
        assert_eq!(
            asked(&req, Some("3"), None).expect("both").clusters,
            Some(5)
        );
        assert_eq!(
            asked(&req, Some("7"), None).expect("both").clusters,
            Some(7)
        );
        match asked(&req, Some("many"), None) {
            Err(ApiError::BadRequest(m)) => assert!(m.contains("min_clusters"), "{m}"),
            other => panic!("{other:?}"),
        }
        let req = TestRequest::default()
            .insert_header(("X-Query-Min-Machines", "-1"))
            .to_http_request();
        match asked(&req, None, None) {
            Err(ApiError::BadRequest(m)) => assert!(m.contains("X-Query-Min-Machines"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}

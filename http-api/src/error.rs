//! HTTP errors: every failure becomes `{"error": {"code", "message"}}` with a status
//! chosen here, and only here: 4xx when the caller can fix it, 5xx when we must.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use query_actors::auth::Refusal;
use query_actors::QueryError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("request body exceeds the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    /// No such endpoint, or what an endpoint was asked for does not exist here (an
    /// alert's name; alerts on a node without `[alerts]`).
    #[error("{0}")]
    NotFound(String),
    /// The generation served covers fewer clusters or machines than the query asked for
    /// (`min_clusters`, `min_machines`): no partial answer.
    #[error("{0}")]
    Incomplete(String),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    /// Refused before the endpoint: no or unknown token, another domain, a foreign Host or
    /// Origin.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// `QueryError::OtherPartition` from a node reached over `scheme` (http or https): the
    /// Location says the same scheme, since a set's nodes are configured alike.
    #[error("{error}")]
    Redirect {
        scheme: &'static str,
        error: QueryError,
    },
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Query(e) | ApiError::Redirect { error: e, .. } => e.code(),
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Incomplete(_) => "incomplete",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Refused(r) => match r {
                Refusal::Unauthenticated(_) => "unauthenticated",
                Refusal::Forbidden(_) => "forbidden",
                Refusal::Misdirected(_) => "unknown_host",
                Refusal::CrossOrigin(_) => "cross_origin",
            },
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Redirect { .. } => StatusCode::TEMPORARY_REDIRECT,
            ApiError::Query(e) => match e {
                QueryError::BadRequest(_)
                | QueryError::NotReadOnly(_)
                | QueryError::Sql(_)
                | QueryError::TooComplex(_)
                | QueryError::AnswerTooLarge(_)
                | QueryError::Execution(_) => StatusCode::BAD_REQUEST,
                // The client may retry later (Retry-After is set), unlike a 4xx.
                QueryError::Quarantined { .. } => StatusCode::TOO_MANY_REQUESTS,
                QueryError::Timeout(_)
                | QueryError::Busy(_)
                | QueryError::NoGeneration
                | QueryError::TablesNotReady { .. }
                | QueryError::ResourcesExhausted(_) => StatusCode::SERVICE_UNAVAILABLE,
                QueryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
                QueryError::Forbidden(_) => StatusCode::FORBIDDEN,
                // Not a failure: the answer is at another partition's nodes.
                QueryError::OtherPartition { .. } => StatusCode::TEMPORARY_REDIRECT,
            },
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Incomplete(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Refused(r) => match r {
                Refusal::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
                Refusal::Forbidden(_) | Refusal::CrossOrigin(_) => StatusCode::FORBIDDEN,
                // The request reached a server that does not answer for that name.
                Refusal::Misdirected(_) => StatusCode::MISDIRECTED_REQUEST,
            },
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::error!(code = self.code(), error = %self, "request failed");
        }
        let mut body = serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string() }
        });
        let mut response = HttpResponse::build(status);
        match self {
            ApiError::Query(QueryError::Busy(_)) => {
                response.insert_header(("Retry-After", "1"));
            }
            ApiError::Query(QueryError::Quarantined {
                retry_after_secs, ..
            }) => {
                response.insert_header(("Retry-After", retry_after_secs.to_string()));
            }
            ApiError::Refused(Refusal::Unauthenticated(_)) => {
                response.insert_header(("WWW-Authenticate", "Bearer realm=\"query\""));
            }
            _ => {}
        }
        let (scheme, partition) = match self {
            ApiError::Redirect { scheme, error } => (*scheme, Some(error)),
            ApiError::Query(e) => ("http", Some(e)),
            _ => ("http", None),
        };
        if let Some(QueryError::OtherPartition {
            partition, host, ..
        }) = partition
        {
            // 307 keeps the method and body: `curl -L` and `query` post the SQL again there.
            response.insert_header(("Location", format!("{scheme}://{host}/sql")));
            body["redirect"] = serde_json::json!({ "partition": partition, "host": host });
        }
        response.json(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn caller_faults_are_4xx_ours_are_5xx() {
        let cases = [
            (
                ApiError::from(QueryError::NotReadOnly("DROP TABLE".into())),
                400,
            ),
            (ApiError::from(QueryError::Sql("no such table".into())), 400),
            (
                ApiError::from(QueryError::Timeout(Duration::from_secs(1))),
                503,
            ),
            (ApiError::from(QueryError::NoGeneration), 503),
            (ApiError::from(QueryError::Internal("bug".into())), 500),
            (ApiError::PayloadTooLarge(10), 413),
            (ApiError::Incomplete("2 clusters seen".into()), 503),
            (ApiError::from(QueryError::TooComplex("deep".into())), 400),
            (ApiError::from(QueryError::AnswerTooLarge(10)), 400),
            (ApiError::from(QueryError::Busy("full".into())), 503),
            (
                ApiError::from(QueryError::Forbidden("processes".into())),
                403,
            ),
            (ApiError::from(Refusal::Unauthenticated("no".into())), 401),
            (ApiError::from(Refusal::Forbidden("domain".into())), 403),
            (ApiError::from(Refusal::CrossOrigin("o".into())), 403),
            (ApiError::from(Refusal::Misdirected("h".into())), 421),
            (
                ApiError::from(QueryError::Quarantined {
                    until: "later".into(),
                    retry_after_secs: 60,
                    limit: "time".into(),
                    strikes: 3,
                }),
                429,
            ),
        ];
        for (e, status) in cases {
            assert_eq!(e.status_code().as_u16(), status, "{e}");
        }
    }

    #[test]
    fn a_partition_redirect_keeps_the_scheme() {
        let other = || QueryError::OtherPartition {
            partition: "procs".into(),
            host: "procs.example:8080".into(),
            tables: vec!["processes".into()],
        };
        for (e, location) in [
            (ApiError::from(other()), "http://procs.example:8080/sql"),
            (
                ApiError::Redirect {
                    scheme: "https",
                    error: other(),
                },
                "https://procs.example:8080/sql",
            ),
        ] {
            assert_eq!(e.code(), "other_partition");
            let r = e.error_response();
            assert_eq!(r.status().as_u16(), 307);
            let h = r.headers().get("Location").expect("Location");
            assert_eq!(h.to_str().unwrap_or_default(), location);
        }
    }

    #[test]
    fn a_401_asks_for_a_bearer_token() {
        let r = ApiError::from(Refusal::Unauthenticated("no token".into())).error_response();
        assert_eq!(r.status().as_u16(), 401);
        let h = r.headers().get("WWW-Authenticate").expect("header");
        assert!(h.to_str().unwrap_or_default().starts_with("Bearer"));
    }
}

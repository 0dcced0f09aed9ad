//! HTTP errors: every failure becomes `{"error": {"code", "message"}}` with a status
//! chosen here, and only here: 4xx when the caller can fix it, 5xx when we must.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use query_actors::QueryError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("request body exceeds the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    BadRequest(String),
    #[error("no such endpoint: {0}")]
    NotFound(String),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Query(e) => e.code(),
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Query(e) => match e {
                QueryError::BadRequest(_)
                | QueryError::NotReadOnly(_)
                | QueryError::Sql(_)
                | QueryError::Execution(_) => StatusCode::BAD_REQUEST,
                QueryError::Timeout(_)
                | QueryError::NoGeneration
                | QueryError::TablesNotReady { .. }
                | QueryError::ResourcesExhausted(_) => StatusCode::SERVICE_UNAVAILABLE,
                QueryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
                // Not a failure: the answer is at another partition's nodes.
                QueryError::OtherPartition { .. } => StatusCode::TEMPORARY_REDIRECT,
            },
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
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
        if let ApiError::Query(QueryError::OtherPartition {
            partition, host, ..
        }) = self
        {
            // 307 keeps the method and body: `curl -L` and `query` post the SQL again there.
            response.insert_header(("Location", format!("http://{host}/sql")));
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
        ];
        for (e, status) in cases {
            assert_eq!(e.status_code().as_u16(), status, "{e}");
        }
    }
}

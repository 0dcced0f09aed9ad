//! Errors of the Postgres protocol server, and the one place they become SQLSTATE codes.

use pgwire::error::{ErrorInfo, PgWireError};
use query_actors::QueryError;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// From the node's query path: mapped like HTTP maps it to a status.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// A statement or parameter the protocol layer cannot take.
    #[error("{0}")]
    Protocol(String),
    /// A parameter value that does not match its declared type.
    #[error("{0}")]
    BadParameter(String),
    /// A SQL text longer than `[http] max_body_bytes`.
    #[error("the statement is {0} bytes; the limit is {1} ([http] max_body_bytes)")]
    TooLong(usize, usize),
    /// A session command Query does not support (`SET TRANSACTION READ WRITE`, ...).
    #[error("{0}")]
    Unsupported(String),
}

impl PgError {
    /// The SQLSTATE of this error (PostgreSQL's appendix A).
    pub fn sqlstate(&self) -> &'static str {
        match self {
            PgError::Query(e) => match e {
                QueryError::BadRequest(_) => "42601",
                QueryError::NotReadOnly(_) => "25006",
                QueryError::Sql(m) => sql_error_state(m),
                QueryError::Execution(m) if m.contains("max_result_bytes") => "53400",
                QueryError::Execution(m) if m.to_lowercase().contains("divide by zero") => "22012",
                QueryError::Execution(_) => "22000",
                QueryError::TooComplex(_) => "54001",
                QueryError::AnswerTooLarge(_) => "53400",
                QueryError::Timeout(_) => "57014",
                QueryError::Busy(_) => "53300",
                QueryError::Quarantined { .. } => "53000",
                QueryError::TablesNotReady { .. } | QueryError::NoGeneration => "57P03",
                QueryError::OtherPartition { .. } => "0A000",
                QueryError::Forbidden(_) => "42501",
                QueryError::ResourcesExhausted(_) => "53200",
                QueryError::Internal(_) => "XX000",
            },
            PgError::Protocol(_) => "08P01",
            PgError::BadParameter(_) => "22P02",
            PgError::TooLong(..) => "54000",
            PgError::Unsupported(_) => "0A000",
        }
    }
}

/// DataFusion's planning errors are one kind for HTTP; clients of Postgres tell a syntax
/// error from an unknown table or column by their codes.
fn sql_error_state(message: &str) -> &'static str {
    let m = message.to_lowercase();
    if m.contains("parsererror") || m.contains("syntax") || m.contains("sql error") {
        "42601"
    } else if m.contains("table") && (m.contains("not found") || m.contains("doesn't exist")) {
        "42P01"
    } else if m.contains("no field named") || m.contains("column") && m.contains("not found") {
        "42703"
    } else if m.contains("function") && (m.contains("invalid") || m.contains("not found")) {
        "42883"
    } else if m.contains("not implemented") || m.contains("unsupported") {
        "0A000"
    } else {
        "42000"
    }
}

impl From<PgError> for PgWireError {
    fn from(e: PgError) -> Self {
        PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".to_owned(),
            e.sqlstate().to_owned(),
            e.to_string(),
        )))
    }
}

/// A FATAL error that ends the connection (refused authentication, limits).
pub fn fatal(sqlstate: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_owned(),
        sqlstate.to_owned(),
        message,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn classes_of_errors_have_their_postgres_codes() {
        let q = |e: QueryError| PgError::Query(e).sqlstate();
        assert_eq!(q(QueryError::NotReadOnly("INSERT".into())), "25006");
        assert_eq!(q(QueryError::Timeout(Duration::from_secs(1))), "57014");
        assert_eq!(
            q(QueryError::Sql(
                "SQL error: ParserError(\"Expected: an expression\")".into()
            )),
            "42601"
        );
        assert_eq!(
            q(QueryError::Sql(
                "table 'datafusion.public.nope' not found".into()
            )),
            "42P01"
        );
        assert_eq!(
            q(QueryError::Sql("Schema error: No field named nope.".into())),
            "42703"
        );
        assert_eq!(q(QueryError::ResourcesExhausted("memory".into())), "53200");
        assert_eq!(q(QueryError::Busy("full".into())), "53300");
        assert_eq!(PgError::TooLong(10, 5).sqlstate(), "54000");
    }
}

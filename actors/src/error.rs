//! The crate's error enums. HTTP status codes for them are chosen in one place:
//! `query_http::error`.

use std::path::Path;
use std::time::Duration;

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;

pub type ConfigResult<T> = Result<T, ConfigError>;

/// A configuration, schema, view or static-table file that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
}

impl ConfigError {
    pub fn io(path: &Path, e: std::io::Error) -> Self {
        ConfigError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}

/// Why a query got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueryError {
    /// The request itself is malformed (empty SQL, several statements, bad parameters).
    #[error("{0}")]
    BadRequest(String),
    /// The statement is valid SQL but not a read-only one.
    #[error("{0} statements are not allowed: Query is read-only (SELECT, WITH, EXPLAIN, SHOW TABLES, DESCRIBE)")]
    NotReadOnly(String),
    /// Parsing or planning failed: a syntax error, an unknown table or column, a type error.
    #[error("{0}")]
    Sql(String),
    /// Execution failed because of the data the query asked for (e.g. division by zero).
    #[error("{0}")]
    Execution(String),
    /// The statement is larger or deeper than the node accepts (checked before planning).
    #[error("the statement is too complex: {0}")]
    TooComplex(String),
    /// The answer grew past `[http] max_result_bytes` while it was read.
    #[error("the answer exceeded {0} bytes ([http] max_result_bytes); select fewer rows or columns, or aggregate")]
    AnswerTooLarge(usize),
    /// The query ran longer than the node allows.
    #[error("query did not finish within {0:?} ([http] query_timeout)")]
    Timeout(Duration),
    /// Admission control: too many queries running and queued, or too many of this client's.
    #[error("the node is busy: {0}; retry shortly")]
    Busy(String),
    /// This query hit a limit too often and is refused for a while.
    #[error("this query is quarantined until {until} after hitting the {limit} limit {strikes} times; change it (e.g. add a LIMIT or a WHERE) or ask an operator to lift it (POST /admin/quarantine/lift)")]
    Quarantined {
        until: String,
        retry_after_secs: u64,
        limit: String,
        strikes: usize,
    },
    /// Tables the query needs were requested below but have not arrived in time.
    #[error("tables not available yet: {} (requested from the tier below; waited {waited:?}); retry shortly", missing.join(", "))]
    TablesNotReady {
        missing: Vec<String>,
        waited: Duration,
    },
    /// The tables belong to another partition of this node's aggregator set: the client is
    /// redirected there.
    #[error("{} belong to partition '{partition}' of this aggregator set: ask {host}", tables.join(", "))]
    OtherPartition {
        partition: String,
        host: String,
        tables: Vec<String>,
    },
    /// The client's token may not read a table the query reads.
    #[error("{0}")]
    Forbidden(String),
    /// The node has no generation to answer from yet.
    #[error("no generation has been sealed yet; retry shortly")]
    NoGeneration,
    /// Memory or another limit of the node ran out.
    #[error("resources exhausted: {0}")]
    ResourcesExhausted(String),
    /// Our fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl QueryError {
    /// A stable, machine-readable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            QueryError::BadRequest(_) => "bad_request",
            QueryError::NotReadOnly(_) => "not_read_only",
            QueryError::Sql(_) => "sql_error",
            QueryError::Execution(_) => "execution_error",
            QueryError::TooComplex(_) => "too_complex",
            QueryError::AnswerTooLarge(_) => "answer_too_large",
            QueryError::Timeout(_) => "timeout",
            QueryError::Busy(_) => "busy",
            QueryError::Quarantined { .. } => "quarantined",
            QueryError::NoGeneration => "no_generation",
            QueryError::Forbidden(_) => "forbidden",
            QueryError::OtherPartition { .. } => "other_partition",
            QueryError::TablesNotReady { .. } => "tables_not_ready",
            QueryError::ResourcesExhausted(_) => "resources_exhausted",
            QueryError::Internal(_) => "internal",
        }
    }

    /// The limit this error says the query hit, if it is one that counts towards
    /// quarantine (the query's own doing, not the node's state).
    pub fn limit_hit(&self) -> Option<&'static str> {
        match self {
            QueryError::TooComplex(_) => Some("complexity"),
            QueryError::AnswerTooLarge(_) => Some("answer size"),
            QueryError::Timeout(_) => Some("time"),
            // The node's queries together at their limit is the node's state, not this
            // query's doing.
            QueryError::ResourcesExhausted(m) if m.contains("node_query_memory_mb") => None,
            QueryError::ResourcesExhausted(_) => Some("memory"),
            QueryError::Execution(m) if m.contains("max_result_bytes") => Some("answer size"),
            _ => None,
        }
    }
}

impl From<DataFusionError> for QueryError {
    fn from(e: DataFusionError) -> Self {
        let message = e.message().to_string();
        match e.find_root() {
            DataFusionError::SQL(..)
            | DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_) => QueryError::Sql(message),
            DataFusionError::ArrowError(a, _) => match a.as_ref() {
                ArrowError::DivideByZero
                | ArrowError::ArithmeticOverflow(_)
                | ArrowError::CastError(_)
                | ArrowError::ParseError(_)
                | ArrowError::ComputeError(_)
                | ArrowError::InvalidArgumentError(_) => QueryError::Execution(message),
                _ => QueryError::Internal(message),
            },
            DataFusionError::Execution(_) => QueryError::Execution(message),
            DataFusionError::ResourcesExhausted(_) => QueryError::ResourcesExhausted(message),
            _ => QueryError::Internal(message),
        }
    }
}

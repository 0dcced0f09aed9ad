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
    /// The query ran longer than the node allows.
    #[error("query did not finish within {0:?}")]
    Timeout(Duration),
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
            QueryError::Timeout(_) => "timeout",
            QueryError::NoGeneration => "no_generation",
            QueryError::OtherPartition { .. } => "other_partition",
            QueryError::TablesNotReady { .. } => "tables_not_ready",
            QueryError::ResourcesExhausted(_) => "resources_exhausted",
            QueryError::Internal(_) => "internal",
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

//! Which statements a Query node runs: read-only ones only.

use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::Statement;

use crate::error::QueryError;

/// Accepts SELECT/WITH queries, EXPLAIN of those, SHOW TABLES, SHOW COLUMNS and DESCRIBE;
/// refuses everything else with an error naming the statement kind.
pub fn check_read_only(stmt: &DfStatement) -> Result<(), QueryError> {
    match stmt {
        DfStatement::Statement(s) => match s.as_ref() {
            Statement::Query(_)
            | Statement::ShowTables { .. }
            | Statement::ShowColumns { .. }
            | Statement::ExplainTable { .. } => Ok(()),
            Statement::Explain { statement, .. } => {
                check_read_only(&DfStatement::Statement(statement.clone()))
            }
            other => Err(QueryError::NotReadOnly(statement_kind(&other.to_string()))),
        },
        DfStatement::Explain(e) => check_read_only(&e.statement),
        DfStatement::CreateExternalTable(_) => {
            Err(QueryError::NotReadOnly("CREATE EXTERNAL TABLE".into()))
        }
        DfStatement::CopyTo(_) => Err(QueryError::NotReadOnly("COPY".into())),
        DfStatement::Reset(_) => Err(QueryError::NotReadOnly("RESET".into())),
    }
}

/// The statement's leading keywords, e.g. "INSERT", "CREATE TABLE", "DROP VIEW".
fn statement_kind(sql: &str) -> String {
    let words: Vec<&str> = sql.split_whitespace().take(3).collect();
    let n = match words.first().map(|w| w.to_ascii_uppercase()) {
        Some(w) if matches!(w.as_str(), "CREATE" | "DROP" | "ALTER" | "TRUNCATE") => {
            // CREATE [OR REPLACE|TEMPORARY|UNIQUE] X: keep up to the object kind.
            if words.get(1).is_some_and(|w| {
                matches!(
                    w.to_ascii_uppercase().as_str(),
                    "OR" | "TEMPORARY" | "TEMP" | "UNIQUE" | "EXTERNAL"
                )
            }) {
                3
            } else {
                2
            }
        }
        _ => 1,
    };
    words
        .iter()
        .take(n)
        .map(|w| w.to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::parser::DFParser;

    fn check(sql: &str) -> Result<(), QueryError> {
        let mut stmts = DFParser::parse_sql(sql).expect("parses");
        check_read_only(&stmts.pop_front().expect("one statement"))
    }

    #[test]
    fn allows_reads() {
        for sql in [
            "SELECT 1",
            "WITH a AS (SELECT 1) SELECT * FROM a",
            "EXPLAIN SELECT 1",
            "SHOW TABLES",
            "DESCRIBE sys",
            "SHOW COLUMNS FROM sys",
        ] {
            check(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    #[test]
    fn refuses_writes_naming_the_kind() {
        for (sql, kind) in [
            ("CREATE TABLE t (a INT)", "CREATE TABLE"),
            ("CREATE OR REPLACE VIEW v AS SELECT 1", "CREATE OR REPLACE"),
            ("DROP TABLE sys", "DROP TABLE"),
            ("INSERT INTO sys VALUES (1)", "INSERT"),
            ("DELETE FROM sys", "DELETE"),
            ("UPDATE sys SET a = 1", "UPDATE"),
            ("SET datafusion.execution.batch_size = 1", "SET"),
            ("EXPLAIN INSERT INTO sys VALUES (1)", "INSERT"),
            (
                "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
                "CREATE EXTERNAL TABLE",
            ),
            ("COPY sys TO '/tmp/x.csv'", "COPY"),
        ] {
            match check(sql) {
                Err(QueryError::NotReadOnly(k)) => assert_eq!(k, kind, "{sql}"),
                other => panic!("{sql}: {other:?}"),
            }
        }
    }
}

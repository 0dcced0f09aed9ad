//! Which tables a query reads, before it is planned: a SQL node requests the published
//! ones from the tier below and waits for them. Views are followed to the tables they
//! read (views may use views); CTE names are not tables.

use std::collections::{BTreeMap, BTreeSet};

use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::resolve::resolve_table_references;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;

/// Table names `sql` reads, through `views` (name → SQL). SQL that does not parse names
/// nothing: planning will report the error.
pub fn referenced_tables(sql: &str, views: &BTreeMap<String, String>) -> BTreeSet<String> {
    follow_views(direct_tables(sql), views)
}

/// Table names a checked statement reads, through `views`.
pub fn referenced_tables_of(
    statement: &Statement,
    views: &BTreeMap<String, String>,
) -> BTreeSet<String> {
    follow_views(statement_tables(statement), views)
}

fn follow_views(direct: Vec<String>, views: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut seen_views = BTreeSet::new();
    let mut todo = vec![direct];
    while let Some(names) = todo.pop() {
        for name in names {
            match views.get(&name) {
                Some(view_sql) => {
                    // A view that (wrongly) uses itself is followed once.
                    if seen_views.insert(name) {
                        todo.push(direct_tables(view_sql));
                    }
                }
                None => {
                    out.insert(name);
                }
            }
        }
    }
    out
}

fn direct_tables(sql: &str) -> Vec<String> {
    let Ok(statements) = DFParser::parse_sql_with_dialect(sql, &PostgreSqlDialect {}) else {
        return Vec::new();
    };
    statements.iter().flat_map(statement_tables).collect()
}

fn statement_tables(statement: &Statement) -> Vec<String> {
    match resolve_table_references(statement, true) {
        Ok((tables, _ctes)) => tables.iter().map(|t| t.table().to_string()).collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn follows_views_and_skips_ctes() {
        let views: BTreeMap<String, String> = [
            ("mem".to_string(), "SELECT * FROM sys".to_string()),
            (
                "busy".to_string(),
                "SELECT * FROM mem m, load_info l WHERE m.machine_ip = l.machine_ip".to_string(),
            ),
        ]
        .into();
        assert_eq!(
            referenced_tables(
                "WITH x AS (SELECT * FROM busy) SELECT * FROM x, region_data r",
                &views
            ),
            names(&["sys", "load_info", "region_data"])
        );
        assert_eq!(
            referenced_tables(
                "SELECT 1 FROM processes WHERE pid IN (SELECT pid FROM filesystem)",
                &views
            ),
            names(&["processes", "filesystem"])
        );
        assert!(referenced_tables("SELEC nonsense", &views).is_empty());
    }
}

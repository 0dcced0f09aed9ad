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

/// The tables behind `name`: itself, or those the view of that name reads.
pub fn tables_behind(name: &str, views: &BTreeMap<String, String>) -> BTreeSet<String> {
    follow_views(vec![name.to_string()], views)
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
        // `information_schema` tables keep their schema: they are metadata, not tables
        // of the node (a token's table list does not apply to them).
        Ok((tables, _ctes)) => tables
            .iter()
            .map(|t| match t.schema() {
                Some(s) if s.eq_ignore_ascii_case("information_schema") => {
                    format!("information_schema.{}", t.table())
                }
                s => crate::history::qualified_name(s, t.table())
                    .unwrap_or_else(|| t.table().to_string()),
            })
            .collect(),
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
        let show = referenced_tables("SHOW TABLES", &views);
        assert!(show.contains("information_schema.tables"), "{show:?}");
        assert!(referenced_tables("SHOW TABLES", &views)
            .iter()
            .all(|t| t.starts_with("information_schema.")));
        assert_eq!(
            referenced_tables("DESCRIBE processes", &views),
            names(&["processes"])
        );
    }
}

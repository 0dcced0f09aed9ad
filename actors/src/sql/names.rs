//! Output column names that repeat, which SQL allows: `SELECT 1 AS a, 2 AS a`,
//! `SELECT col2, -col2 AS col2 FROM tab0`, two unaliased scalar subqueries. DataFusion
//! needs unique names inside a plan, so a statement it refuses for a name clash is planned
//! again with the clashing items of its top-level select lists renamed: each gets the name
//! Postgres gives it (`figure_name`, after Postgres's `FigureColname`) plus a marker and its
//! position, unique inside the plan. `user_schema` drops the marker, so the answer shows
//! the names the user wrote or Postgres would show, repeated as written (answers are rows
//! of arrays; the JSON `columns` list may repeat a name).
//!
//! Only clashing items are renamed: every other answer keeps DataFusion's names
//! (`count(*)`, `sum(sys.memtotal)`), which alerts, reports and the console already read.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{
    CastKind, DataType, Expr, Ident, Query, SelectItem, SetExpr, Statement,
};

/// Separates a user-visible name from the position that makes it unique in the plan: a
/// control character no one types in a name.
const MARKER: char = '\u{1f}';

/// True for DataFusion's errors about output names that are not unique.
pub fn is_name_clash(message: &str) -> bool {
    message.contains("Projections require unique expression names")
        || (message.contains("qualified field name") && message.contains("ambiguous"))
}

/// Renames the clashing items of the statement's top-level select lists; false if there
/// was nothing to rename (the clash is elsewhere, e.g. in a subquery).
pub fn rename_clashes(statement: &mut DfStatement) -> bool {
    let s = match statement {
        DfStatement::Statement(s) => s,
        DfStatement::Explain(e) => match e.statement.as_mut() {
            DfStatement::Statement(s) => s,
            _ => return false,
        },
        _ => return false,
    };
    let Statement::Query(q) = s.as_mut() else {
        return false;
    };
    rename_in_set_expr(&mut q.body)
}

fn rename_in_set_expr(body: &mut SetExpr) -> bool {
    match body {
        SetExpr::Select(select) => {
            let names: Vec<Option<String>> = select.projection.iter().map(item_name).collect();
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for n in names.iter().flatten() {
                *counts.entry(n.as_str()).or_default() += 1;
            }
            let mut renamed = false;
            for (i, (item, name)) in select.projection.iter_mut().zip(&names).enumerate() {
                let Some(name) = name else { continue };
                if counts.get(name.as_str()).copied().unwrap_or(0) < 2 {
                    continue;
                }
                let alias = Ident::with_quote('"', format!("{name}{MARKER}{i}"));
                let expr = match std::mem::replace(item, SelectItem::Wildcard(Default::default())) {
                    SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
                    other => {
                        *item = other;
                        continue;
                    }
                };
                *item = SelectItem::ExprWithAlias { expr, alias };
                renamed = true;
            }
            renamed
        }
        SetExpr::Query(q) => rename_in_set_expr(&mut q.body),
        SetExpr::SetOperation { left, right, .. } => {
            let l = rename_in_set_expr(left);
            rename_in_set_expr(right) || l
        }
        _ => false,
    }
}

/// The name an item's column gets: its alias, else Postgres's; None for wildcards.
fn item_name(item: &SelectItem) -> Option<String> {
    match item {
        SelectItem::UnnamedExpr(e) => Some(figure_name(e).unwrap_or_else(|| "?column?".into())),
        SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.clone()),
        _ => None,
    }
}

/// Postgres's name for an unaliased expression (`FigureColnameInternal`): a column's name,
/// a function's name, a cast's inner name or else its type, a scalar subquery's own column,
/// `case` (or its ELSE's name), `exists`, `array`; None where Postgres says `?column?`.
pub fn figure_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(i) => Some(i.value.clone()),
        Expr::CompoundIdentifier(parts) => parts.last().map(|i| i.value.clone()),
        Expr::Nested(inner) => figure_name(inner),
        Expr::Function(f) => f
            .name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .map(|i| i.value.to_lowercase()),
        Expr::Cast {
            kind,
            expr,
            data_type,
            ..
        } => figure_name(expr).or_else(|| match kind {
            CastKind::Cast | CastKind::DoubleColon | CastKind::TryCast | CastKind::SafeCast => {
                Some(type_name(data_type))
            }
        }),
        Expr::Collate { expr, .. } => figure_name(expr),
        Expr::Subquery(q) => query_first_name(q),
        Expr::Exists { .. } => Some("exists".into()),
        Expr::Array(_) => Some("array".into()),
        Expr::Case { else_result, .. } => Some(
            else_result
                .as_deref()
                .and_then(figure_name)
                .unwrap_or_else(|| "case".into()),
        ),
        Expr::Substring { .. } => Some("substring".into()),
        Expr::Trim { .. } => Some("btrim".into()),
        Expr::Position { .. } => Some("position".into()),
        Expr::Extract { .. } => Some("extract".into()),
        Expr::Ceil { .. } => Some("ceil".into()),
        Expr::Floor { .. } => Some("floor".into()),
        _ => None,
    }
}

/// The name of a subquery's first output column, as Postgres gives it.
fn query_first_name(q: &Query) -> Option<String> {
    let mut body = q.body.as_ref();
    loop {
        match body {
            SetExpr::Select(s) => {
                return match s.projection.first()? {
                    SelectItem::UnnamedExpr(e) => figure_name(e),
                    SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.clone()),
                    _ => None,
                }
            }
            SetExpr::Query(q) => body = q.body.as_ref(),
            SetExpr::SetOperation { left, .. } => body = left.as_ref(),
            _ => return None,
        }
    }
}

/// Postgres's internal name of a type written in a cast (`::integer` is `int4`).
fn type_name(t: &DataType) -> String {
    let written = t.to_string().to_lowercase();
    let base = written.split('(').next().unwrap_or(&written).trim();
    match base {
        "int" | "integer" | "int4" => "int4",
        "bigint" | "int8" => "int8",
        "smallint" | "int2" => "int2",
        "real" | "float4" => "float4",
        "double precision" | "double" | "float" | "float8" => "float8",
        "boolean" | "bool" => "bool",
        "decimal" | "numeric" => "numeric",
        "character varying" | "varchar" => "varchar",
        "character" | "char" => "bpchar",
        other => other,
    }
    .to_string()
}

/// The answer's schema with the names the user sees (markers dropped); None if no field
/// carries a marker.
pub fn user_schema(schema: &SchemaRef) -> Option<SchemaRef> {
    if !schema.fields().iter().any(|f| f.name().contains(MARKER)) {
        return None;
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let name = f.name().split(MARKER).next().unwrap_or_default();
            f.as_ref().clone().with_name(name)
        })
        .collect();
    Some(Arc::new(Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    )))
}

/// `batch` under `schema` (same columns, other names).
pub fn renamed(batch: RecordBatch, schema: &SchemaRef) -> RecordBatch {
    match RecordBatch::try_new(schema.clone(), batch.columns().to_vec()) {
        Ok(b) => b,
        // Same columns and types: cannot fail; keep the batch as it was if it did.
        Err(_) => batch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::front_door::{parse_checked, ParseLimits};
    use datafusion::sql::sqlparser::ast::Statement;

    fn names(sql: &str) -> Vec<Option<String>> {
        let s = parse_checked(sql, &ParseLimits::default()).expect("parses");
        let DfStatement::Statement(s) = s else {
            panic!()
        };
        let Statement::Query(q) = *s else { panic!() };
        let SetExpr::Select(sel) = *q.body else {
            panic!()
        };
        sel.projection.iter().map(item_name).collect()
    }

    #[test]
    fn postgres_names() {
        let got = names(
            "SELECT a, t.b, count(*), sum(x) AS s, 1, a + 1, CAST(a AS bigint), 1::integer, \
             (SELECT max(c) FROM u), CASE WHEN a THEN 1 END, CASE WHEN a THEN 1 ELSE b END, \
             EXISTS (SELECT 1), (a), NULLIF(a, 1), COALESCE(a, b), *",
        );
        let want = [
            "a", "b", "count", "s", "?column?", "?column?", "a", "int4", "max", "case", "b",
            "exists", "a", "nullif", "coalesce",
        ];
        let mut want: Vec<Option<String>> = want.iter().map(|s| Some(s.to_string())).collect();
        want.push(None);
        assert_eq!(got, want);
    }

    #[test]
    fn only_clashing_items_are_renamed() {
        let mut s = parse_checked("SELECT 1 AS a, 2 AS a, 3 AS b", &ParseLimits::default())
            .expect("parses");
        assert!(rename_clashes(&mut s));
        let text = s.to_string();
        assert!(text.contains(&format!("\"a{MARKER}0\"")), "{text}");
        assert!(text.contains(&format!("\"a{MARKER}1\"")), "{text}");
        assert!(text.contains("3 AS b"), "{text}");
        let mut none =
            parse_checked("SELECT 1 AS a, 2 AS b", &ParseLimits::default()).expect("parses");
        assert!(!rename_clashes(&mut none));
    }

    /// The answer's column names, as a client sees them.
    async fn answer_names(sql: &str) -> Result<Vec<String>, String> {
        use crate::sql::{QueryLimits, Snapshot};
        let snap = Snapshot::empty_for_tests().await;
        let out = snap
            .query(sql, &QueryLimits::default())
            .await
            .map_err(|e| e.to_string())?;
        for b in &out.batches {
            assert_eq!(b.schema(), out.schema, "batches carry the names shown");
        }
        Ok(out
            .schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect())
    }

    #[tokio::test]
    async fn answers_keep_the_names_written() {
        let cases: &[(&str, &[&str])] = &[
            ("SELECT 1 AS col0, 2 AS col0", &["col0", "col0"]),
            (
                "WITH tab0(col2) AS (VALUES (1), (2)) SELECT col2, - col2 AS col2 FROM tab0",
                &["col2", "col2"],
            ),
            (
                "WITH t1(b, c) AS (VALUES (1, 2)) SELECT (SELECT count(*) FROM t1 AS x \
                 WHERE x.b < t1.b), (SELECT count(*) FROM t1 AS x WHERE x.c > t1.c) FROM t1",
                &["count", "count"],
            ),
            // Postgres names only where names clash; elsewhere DataFusion's, as before.
            ("SELECT count(*), 1 AS a, 2 AS a", &["count(*)", "a", "a"]),
            ("SELECT 1 AS x, 2 AS y ORDER BY x", &["x", "y"]),
            (
                "SELECT 1 AS a, 2 AS a UNION ALL SELECT 3, 4 ORDER BY 1",
                &["a", "a"],
            ),
        ];
        for (sql, want) in cases {
            let got = answer_names(sql).await;
            let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            assert_eq!(got, Ok(want), "{sql}");
        }
        // EXPLAIN of such a statement plans it the same way.
        assert!(answer_names("EXPLAIN SELECT 1 AS a, 2 AS a").await.is_ok());
        // ORDER BY a name that is not unique stays an error, as in Postgres.
        assert!(answer_names("SELECT 1 AS a, 2 AS a ORDER BY a")
            .await
            .is_err());
    }
}

//! A statement's shape: its text with the constants it filters by, and its row limit,
//! taken out. Dashboards and alert rules send one statement many times with other
//! thresholds, names and limits (`load1 > 3.5`, then `load1 > 4.0`); planning each text
//! afresh costs 0.5-1.6 ms at 70,000 machines (BENCHMARKS.md, "How it grows"). Statements
//! of one shape share one kept plan (`plans`): the plan has placeholders where the
//! constants were, and each use puts the request's values in and the limit on top.
//!
//! Only constants whose value cannot change the plan's meaning become parameters:
//! - a number or quoted string compared (`=`, `<>`, `<`, `<=`, `>`, `>=`) with something
//!   that is not a constant, in `WHERE`, `HAVING` or a join's `ON`, through `AND`, `OR`,
//!   `NOT`, parentheses and the subqueries there (`IN`, `EXISTS`, scalar), and in derived
//!   tables and `WITH` queries. Nothing in a select list, `GROUP BY`, `ORDER BY` or a
//!   function's arguments: those name output columns or choose what is computed;
//! - the outermost `LIMIT n [OFFSET m]`, which is a cut on top of the plan.
//!
//! A placeholder takes the type of what it is compared with (DataFusion infers it), so a
//! value is put in only where converting it to that type keeps its meaning exactly
//! (`fits`): an integer into any integer or float column it converts to and back from
//! unchanged, a decimal number into a `Float64` one, a string into a string one. Else the
//! statement goes by its own text, as a statement without a shape (its plan kept by its
//! text): a filter of a timestamp by a string never fits, and is not planned twice.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, JoinConstraint, JoinOperator, LimitClause, Query, Select, SetExpr,
    Statement, TableFactor, TableWithJoins, UnaryOperator, Value,
};

/// A statement with its parameters out.
#[derive(Debug)]
pub struct Shape {
    /// The statement with `$1`, `$2`, ... in place of its parameters and without its
    /// outermost `LIMIT`; None if nothing was taken out (the statement is its own shape).
    statement: Option<DfStatement>,
    /// The parameters' values, `$1` first, as DataFusion reads the constants.
    values: Vec<ScalarValue>,
    /// The outermost `OFFSET` and `LIMIT`.
    limit: Option<(usize, usize)>,
}

impl Shape {
    /// The shape of `statement`. A statement with placeholders of its own, or that is not a
    /// query, is its own shape.
    pub fn of(statement: &DfStatement) -> Shape {
        let own = Shape::own();
        let DfStatement::Statement(s) = statement else {
            return own;
        };
        let Statement::Query(q) = s.as_ref() else {
            return own;
        };
        if has_placeholder(statement) {
            return own;
        }
        let mut query = q.clone();
        let limit = take_limit(&mut query);
        let mut values = Vec::new();
        walk_query(&mut query, &mut values);
        if values.is_empty() && limit.is_none() {
            return own;
        }
        Shape {
            statement: Some(DfStatement::Statement(Box::new(Statement::Query(query)))),
            values,
            limit,
        }
    }

    /// A statement that is its own shape.
    pub fn own() -> Shape {
        Shape {
            statement: None,
            values: Vec::new(),
            limit: None,
        }
    }

    /// Whether anything was taken out of the statement.
    pub fn parameterized(&self) -> bool {
        self.statement.is_some()
    }

    /// This statement's values converted to the parameters of a plan of its shape (`types`,
    /// `parameter_types`), for `apply`; None if one does not fit.
    pub fn values_for(&self, types: &[Option<DataType>]) -> Option<Vec<ScalarValue>> {
        if types.len() != self.values.len() {
            return None;
        }
        self.values
            .iter()
            .zip(types)
            .map(|(v, t)| match t {
                Some(t) => fits(v, t),
                None => Some(v.clone()),
            })
            .collect()
    }

    /// The statement to plan and key the plan by: the shape, or `own` if it is its own.
    pub fn statement<'a>(&'a self, own: &'a DfStatement) -> &'a DfStatement {
        self.statement.as_ref().unwrap_or(own)
    }

    /// The types of a shape's plan's parameters, `$1` first (None for one the optimizer
    /// removed); None if one of them has no type, so that no value could be checked.
    pub fn parameter_types(&self, plan: &LogicalPlan) -> Option<Vec<Option<DataType>>> {
        let types = plan.get_parameter_types().ok()?;
        (1..=self.values.len())
            .map(|i| match types.get(&format!("${i}")) {
                None => Some(None),
                Some(Some(t)) => Some(Some(t.clone())),
                Some(None) => None,
            })
            .collect()
    }

    /// `plan` (planned from the shape) with `values` (`values_for`) in and this statement's
    /// limit on top.
    pub fn apply(&self, plan: LogicalPlan, values: Vec<ScalarValue>) -> Option<LogicalPlan> {
        if !self.parameterized() {
            return Some(plan);
        }
        let plan = if values.is_empty() {
            plan
        } else {
            plan.with_param_values(ParamValues::from(values)).ok()?
        };
        match self.limit {
            None => Some(plan),
            Some((skip, fetch)) => LogicalPlanBuilder::from(plan)
                .limit(skip, Some(fetch))
                .and_then(|b| b.build())
                .ok(),
        }
    }
}

/// `value` as type `to`, if that keeps its meaning in a comparison exactly: what the
/// statement written with the constant would compare (DataFusion coerces both sides to a
/// common type) is what the plan compares with the value converted.
fn fits(value: &ScalarValue, to: &DataType) -> Option<ScalarValue> {
    let from = value.data_type();
    let allowed = match (&from, to) {
        (DataType::Int64, t) => {
            t.is_integer() || matches!(t, DataType::Float64 | DataType::Float32)
        }
        (DataType::Float64, DataType::Float64) => true,
        (DataType::Utf8, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) => true,
        _ => false,
    };
    if !allowed {
        return None;
    }
    let converted = value.cast_to(to).ok()?;
    (converted.cast_to(&from).ok()? == *value && !converted.is_null()).then_some(converted)
}

/// Whether the statement holds a placeholder (`$1`) of its own.
fn has_placeholder(statement: &DfStatement) -> bool {
    use datafusion::sql::sqlparser::ast::Visit;
    use std::ops::ControlFlow;
    struct Finder;
    impl datafusion::sql::sqlparser::ast::Visitor for Finder {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            match e {
                Expr::Value(v) if matches!(v.value, Value::Placeholder(_)) => {
                    ControlFlow::Break(())
                }
                _ => ControlFlow::Continue(()),
            }
        }
    }
    match statement {
        DfStatement::Statement(s) => s.visit(&mut Finder).is_break(),
        _ => true,
    }
}

/// Takes out the outermost `LIMIT n [OFFSET m]` when both are plain numbers.
fn take_limit(query: &mut Query) -> Option<(usize, usize)> {
    let Some(LimitClause::LimitOffset {
        limit: Some(limit),
        offset,
        limit_by,
    }) = &query.limit_clause
    else {
        return None;
    };
    if !limit_by.is_empty() || query.fetch.is_some() {
        return None;
    }
    // `LIMIT 0` stays: planned as an empty answer, while a cut of 0 rows put on top of a
    // plan would reach DataFusion's top-k sort, which needs k > 0.
    let fetch = count(limit).filter(|&n| n > 0)?;
    let skip = match offset {
        None => 0,
        Some(o) => count(&o.value)?,
    };
    query.limit_clause = None;
    Some((skip, fetch))
}

/// A row count written as a plain number that DataFusion reads as an `i64` (a larger one
/// stays in the text, where it is refused as the statement's own error).
fn count(e: &Expr) -> Option<usize> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, false) => n.parse::<i64>().ok()?.try_into().ok(),
            _ => None,
        },
        _ => None,
    }
}

fn walk_query(query: &mut Query, values: &mut Vec<ScalarValue>) {
    if let Some(with) = &mut query.with {
        for cte in &mut with.cte_tables {
            walk_query(&mut cte.query, values);
        }
    }
    walk_set(&mut query.body, values);
}

fn walk_set(set: &mut SetExpr, values: &mut Vec<ScalarValue>) {
    match set {
        SetExpr::Select(select) => walk_select(select, values),
        SetExpr::Query(q) => walk_query(q, values),
        SetExpr::SetOperation { left, right, .. } => {
            walk_set(left, values);
            walk_set(right, values);
        }
        _ => {}
    }
}

fn walk_select(select: &mut Select, values: &mut Vec<ScalarValue>) {
    for from in &mut select.from {
        walk_from(from, values);
    }
    if let Some(e) = &mut select.selection {
        walk_filter(e, values);
    }
    if let Some(e) = &mut select.having {
        walk_filter(e, values);
    }
}

fn walk_from(from: &mut TableWithJoins, values: &mut Vec<ScalarValue>) {
    walk_factor(&mut from.relation, values);
    for join in &mut from.joins {
        walk_factor(&mut join.relation, values);
        let constraint = match &mut join.join_operator {
            JoinOperator::Join(c)
            | JoinOperator::Inner(c)
            | JoinOperator::Left(c)
            | JoinOperator::LeftOuter(c)
            | JoinOperator::Right(c)
            | JoinOperator::RightOuter(c)
            | JoinOperator::FullOuter(c)
            | JoinOperator::Semi(c)
            | JoinOperator::LeftSemi(c)
            | JoinOperator::RightSemi(c)
            | JoinOperator::Anti(c)
            | JoinOperator::LeftAnti(c)
            | JoinOperator::RightAnti(c) => Some(c),
            _ => None,
        };
        if let Some(JoinConstraint::On(e)) = constraint {
            walk_filter(e, values);
        }
    }
}

fn walk_factor(factor: &mut TableFactor, values: &mut Vec<ScalarValue>) {
    match factor {
        TableFactor::Derived { subquery, .. } => walk_query(subquery, values),
        TableFactor::NestedJoin {
            table_with_joins, ..
        } => walk_from(table_with_joins, values),
        _ => {}
    }
}

/// A condition: its comparisons with constants become parameters.
fn walk_filter(e: &mut Expr, values: &mut Vec<ScalarValue>) {
    match e {
        Expr::BinaryOp { left, op, right } if is_comparison(op) => {
            match (constant(left), constant(right)) {
                (None, Some(v)) => {
                    walk_filter(left, values);
                    **right = parameter(v, values);
                }
                (Some(v), None) => {
                    **left = parameter(v, values);
                    walk_filter(right, values);
                }
                (None, None) => {
                    walk_filter(left, values);
                    walk_filter(right, values);
                }
                (Some(_), Some(_)) => {}
            }
        }
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And | BinaryOperator::Or,
            right,
        } => {
            walk_filter(left, values);
            walk_filter(right, values);
        }
        Expr::UnaryOp {
            op: UnaryOperator::Not,
            expr,
        }
        | Expr::Nested(expr) => walk_filter(expr, values),
        Expr::InSubquery { expr, subquery, .. } => {
            walk_filter(expr, values);
            walk_query(subquery, values);
        }
        Expr::Exists { subquery, .. } | Expr::Subquery(subquery) => walk_query(subquery, values),
        _ => {}
    }
}

fn is_comparison(op: &BinaryOperator) -> bool {
    matches!(
        op,
        BinaryOperator::Eq
            | BinaryOperator::NotEq
            | BinaryOperator::Lt
            | BinaryOperator::LtEq
            | BinaryOperator::Gt
            | BinaryOperator::GtEq
    )
}

/// The value DataFusion reads from a constant that may become a parameter: an integer that
/// fits `i64`, a number with a point or exponent as `f64`, a quoted string.
fn constant(e: &Expr) -> Option<ScalarValue> {
    let Expr::Value(v) = e else {
        return None;
    };
    match &v.value {
        Value::Number(n, false) if !n.contains('_') => match n.parse::<i64>() {
            Ok(i) => Some(ScalarValue::Int64(Some(i))),
            Err(_) if n.contains(['.', 'e', 'E']) => {
                n.parse::<f64>().ok().map(|f| ScalarValue::Float64(Some(f)))
            }
            Err(_) => None,
        },
        Value::SingleQuotedString(s) => Some(ScalarValue::Utf8(Some(s.clone()))),
        _ => None,
    }
}

/// The next placeholder, `value` its value.
fn parameter(value: ScalarValue, values: &mut Vec<ScalarValue>) -> Expr {
    values.push(value);
    Expr::Value(Value::Placeholder(format!("${}", values.len())).with_empty_span())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::{GenerationBuilder, Part};
    use crate::sql::engine::tests::sql_node_snapshot;
    use crate::sql::engine::{QueryLimits, Snapshot};
    use crate::sql::front_door::{parse_checked, ParseLimits};
    use crate::sql::plans::PlanCache;
    use datafusion::arrow::array::{
        ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, UInt64Array, UInt8Array,
    };
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use std::sync::Arc;

    fn shape(sql: &str) -> (String, Vec<ScalarValue>, Option<(usize, usize)>) {
        let statement = parse_checked(sql, &ParseLimits::default()).expect("parses");
        let shape = Shape::of(&statement);
        (
            shape.statement(&statement).to_string(),
            shape.values,
            shape.limit,
        )
    }

    #[test]
    fn filter_constants_and_the_outer_limit_come_out() {
        let (text, values, limit) = shape(
            "SELECT a, b > 7 AS big FROM t JOIN u ON t.k = u.k AND u.c <> 'x' \
             WHERE (a > 3.5 OR NOT b = 'y') AND t.k IN (SELECT k FROM v WHERE w <= 2) \
             GROUP BY a, b HAVING COUNT(*) >= 10 ORDER BY 1 LIMIT 20 OFFSET 5",
        );
        assert_eq!(
            text,
            "SELECT a, b > 7 AS big FROM t JOIN u ON t.k = u.k AND u.c <> $1 \
             WHERE (a > $2 OR NOT b = $3) AND t.k IN (SELECT k FROM v WHERE w <= $4) \
             GROUP BY a, b HAVING COUNT(*) >= $5 ORDER BY 1"
        );
        assert_eq!(
            values,
            vec![
                ScalarValue::Utf8(Some("x".into())),
                ScalarValue::Float64(Some(3.5)),
                ScalarValue::Utf8(Some("y".into())),
                ScalarValue::Int64(Some(2)),
                ScalarValue::Int64(Some(10)),
            ]
        );
        assert_eq!(limit, Some((5, 20)));
    }

    #[test]
    fn a_subquery_compared_with_a_constant_has_its_own_taken_out() {
        let (text, values, _) =
            shape("SELECT a FROM t WHERE (SELECT COUNT(*) FROM v WHERE w = 'q') > 1");
        assert_eq!(
            text,
            "SELECT a FROM t WHERE (SELECT COUNT(*) FROM v WHERE w = $1) > $2"
        );
        assert_eq!(values.len(), 2);
    }

    #[test]
    fn other_constants_stay_in_the_text() {
        for sql in [
            // Arithmetic, function arguments, lists, patterns, NULL, a negative number,
            // two constants, an interval, an inner limit, a select list.
            "SELECT a FROM t WHERE a * 100 > b",
            "SELECT a FROM t WHERE date_trunc('day', ts) = ts",
            "SELECT a FROM t WHERE a IN (1, 2)",
            "SELECT a FROM t WHERE name LIKE 'x%'",
            "SELECT a FROM t WHERE a = NULL",
            "SELECT a FROM t WHERE a > -5",
            "SELECT a FROM t WHERE 1 = 1",
            "SELECT a FROM t WHERE ts > now() - INTERVAL '1 day'",
            "SELECT a FROM (SELECT a FROM t LIMIT 3) s",
            "SELECT a = 5, 'x' FROM t ORDER BY a = 2",
            "SELECT a FROM t WHERE a > $1",
            "SELECT a FROM t LIMIT ALL",
            "SELECT a FROM t LIMIT 0",
            // Past i64: refused as the statement's own error.
            "SELECT a FROM t LIMIT 9223372036854775808",
            "SELECT a FROM t LIMIT 1 OFFSET 18446744073709551615",
        ] {
            let (text, values, limit) = shape(sql);
            assert_eq!(
                (values.as_slice(), limit),
                (&[][..], None),
                "{sql} became {text}"
            );
        }
    }

    #[test]
    fn a_value_fits_only_where_it_keeps_its_meaning() {
        let int = ScalarValue::Int64(Some(300));
        assert_eq!(
            fits(&int, &DataType::UInt64),
            Some(ScalarValue::UInt64(Some(300)))
        );
        assert_eq!(fits(&int, &DataType::UInt8), None, "does not fit");
        assert_eq!(
            fits(&int, &DataType::Float64),
            Some(ScalarValue::Float64(Some(300.0)))
        );
        assert_eq!(fits(&ScalarValue::Int64(Some(-1)), &DataType::UInt32), None);
        let odd = ScalarValue::Int64(Some(16_777_217));
        assert_eq!(fits(&odd, &DataType::Float32), None, "2^24 + 1 has no f32");
        assert_eq!(
            fits(&ScalarValue::Int64(Some(3)), &DataType::Float32),
            Some(ScalarValue::Float32(Some(3.0)))
        );
        let float = ScalarValue::Float64(Some(3.5));
        assert_eq!(fits(&float, &DataType::Int64), None, "would be cut to 3");
        assert_eq!(fits(&float, &DataType::Float32), None);
        assert_eq!(fits(&float, &DataType::Float64), Some(float.clone()));
        let text = ScalarValue::Utf8(Some("dns".into()));
        assert_eq!(
            fits(&text, &DataType::Utf8View),
            Some(ScalarValue::Utf8View(Some("dns".into())))
        );
        assert_eq!(fits(&text, &DataType::Int64), None, "'5' = int is a cast");
        assert_eq!(fits(&int, &DataType::Utf8), None);
        assert_eq!(
            fits(
                &int,
                &DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Nanosecond, None)
            ),
            None
        );
    }

    /// `t`: a row per machine m0-m8 (`name` a, b or c; `n` 0-8; `u`, `f`, `small` from
    /// it); `r`: the role of m0-m5. A snapshot keeping plans in `plans` (none if 0).
    async fn snapshot(plans: usize) -> Snapshot {
        let t = Arc::new(Schema::new(vec![
            Field::new("machine_ip", DataType::Utf8, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
            Field::new("u", DataType::UInt64, false),
            Field::new("f", DataType::Float64, false),
            Field::new("small", DataType::UInt8, false),
        ]));
        let r = Arc::new(Schema::new(vec![
            Field::new("machine_ip", DataType::Utf8, false),
            Field::new("role", DataType::Utf8, false),
        ]));
        let mut builder = GenerationBuilder::default();
        for i in 0..9i64 {
            let ip = format!("m{i}");
            let columns: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from(vec![ip.clone()])),
                Arc::new(StringArray::from(vec![["a", "b", "c"][i as usize % 3]])),
                Arc::new(Int64Array::from(vec![i])),
                Arc::new(UInt64Array::from(vec![(i * 100) as u64])),
                Arc::new(Float64Array::from(vec![i as f64 / 4.0])),
                Arc::new(UInt8Array::from(vec![(i * 30) as u8])),
            ];
            let part = |batch| Part::new(ip.clone(), batch, vec![]);
            let batch = RecordBatch::try_new(t.clone(), columns).expect("batch");
            builder.add("t", part(batch)).expect("part");
            if i < 6 {
                let role = ["dns", "media"][i as usize % 2];
                let columns: Vec<ArrayRef> = vec![
                    Arc::new(StringArray::from(vec![ip.clone()])),
                    Arc::new(StringArray::from(vec![role])),
                ];
                let batch = RecordBatch::try_new(r.clone(), columns).expect("batch");
                builder.add("r", part(batch)).expect("part");
            }
        }
        sql_node_snapshot(builder, Arc::new(PlanCache::new(plans))).await
    }

    /// An answer as text (rows in order), or its error; and whether a kept plan served it.
    async fn answer(snapshot: &Snapshot, sql: &str) -> (String, bool) {
        match snapshot.query(sql, &QueryLimits::default()).await {
            Ok(out) => (
                pretty_format_batches(&out.batches)
                    .expect("formats")
                    .to_string(),
                out.phases.plan_reused,
            ),
            Err(e) => (format!("error: {e}"), false),
        }
    }

    /// Owned statement texts.
    fn texts(statements: &[&str]) -> Vec<String> {
        statements.iter().map(|s| s.to_string()).collect()
    }

    /// `template` with `{0}`, `{1}`, ... filled from each row of `values`.
    fn each(template: &str, values: &[&[&str]]) -> Vec<String> {
        values
            .iter()
            .map(|row| {
                row.iter()
                    .enumerate()
                    .fold(template.to_string(), |sql, (i, v)| {
                        sql.replace(&format!("{{{i}}}"), v)
                    })
            })
            .collect()
    }

    /// Statements of one shape, each run in turn on a snapshot that keeps plans (the shape
    /// is planned when met the second time, its plan reused from the third) and on one that
    /// keeps none: the answers must be the same. `reused` says which runs must have reused
    /// the shape's plan.
    async fn same_answers(
        kept: &Snapshot,
        fresh: &Snapshot,
        statements: &[String],
        reused: &[bool],
    ) {
        for (i, sql) in statements.iter().enumerate() {
            let (got, was_reused) = answer(kept, sql).await;
            let (want, _) = answer(fresh, sql).await;
            assert_eq!(got, want, "{sql}");
            assert_eq!(was_reused, reused[i], "plan reused for {sql}");
        }
    }

    #[tokio::test]
    async fn statements_of_one_shape_answer_as_if_each_were_planned() {
        let fresh = snapshot(0).await;
        let first_two = [false, false, true, true, true];
        let join = "SELECT t.name, r.role FROM t JOIN r ON t.machine_ip = r.machine_ip \
                    AND r.role <> {0} WHERE t.machine_ip IN (SELECT machine_ip FROM r WHERE role = {1}) \
                    AND NOT EXISTS (SELECT 1 FROM t t2 WHERE t2.machine_ip = t.machine_ip AND t2.n > {2}) \
                    ORDER BY t.name, r.role";
        let window = "WITH ranked AS (SELECT name, n, ROW_NUMBER() OVER (PARTITION BY name \
                      ORDER BY n DESC) AS rn FROM t) \
                      SELECT name, n FROM ranked WHERE rn <= {0} ORDER BY name, n{1}";
        let union = "SELECT t.n, r.role FROM t LEFT JOIN r ON t.machine_ip = r.machine_ip \
                     AND r.role = {0} WHERE t.n < {1} UNION ALL SELECT n, name FROM t \
                     WHERE n >= {2} ORDER BY 1, 2{3}";
        let cases: Vec<(Vec<String>, Vec<bool>)> = vec![
            (
                // An integer column, the outer limit and offset.
                texts(&[
                    "SELECT name, n FROM t WHERE n > 2 ORDER BY n DESC LIMIT 10",
                    "SELECT name, n FROM t WHERE n > 3 ORDER BY n DESC LIMIT 2",
                    "SELECT name, n FROM t WHERE n > 0 ORDER BY n DESC LIMIT 0",
                    "SELECT name, n FROM t WHERE n > 5 ORDER BY n DESC LIMIT 100",
                    "SELECT name, n FROM t WHERE n > 1 ORDER BY n DESC LIMIT 3 OFFSET 2",
                ]),
                // `LIMIT 0` is a shape of its own.
                vec![false, false, false, true, true],
            ),
            (
                // Unsigned: a negative number is not a constant (no shape change); a point
                // number does not fit, so it is planned from its text.
                texts(&[
                    "SELECT name, u FROM t WHERE u >= 300 ORDER BY u",
                    "SELECT name, u FROM t WHERE u >= 301 ORDER BY u",
                    "SELECT name, u FROM t WHERE u >= 700 ORDER BY u",
                    "SELECT name, u FROM t WHERE u >= 200.5 ORDER BY u",
                    "SELECT name, u FROM t WHERE 400 < u ORDER BY u",
                ]),
                vec![false, false, true, false, false],
            ),
            (
                // A value that never fits its shape's plan: the statement goes by its own
                // text, kept from its second time; the shape's plan stays for the others.
                texts(&[
                    "SELECT name, u FROM t WHERE u >= 300 ORDER BY u",
                    "SELECT name, u FROM t WHERE u >= 301 ORDER BY u",
                    "SELECT name, u FROM t WHERE u >= 200.5 ORDER BY u",
                    "SELECT name, u FROM t WHERE u >= 200.5 ORDER BY u",
                    "SELECT name, u FROM t WHERE u >= 200.5 ORDER BY u",
                    "SELECT name, u FROM t WHERE u >= 200.5 ORDER BY u",
                    "SELECT name, u FROM t WHERE u >= 700 ORDER BY u",
                ]),
                vec![false, false, false, false, true, true, true],
            ),
            (
                // Float: an integer fits exactly.
                texts(&[
                    "SELECT name, f FROM t WHERE f > 1.5 ORDER BY f",
                    "SELECT name, f FROM t WHERE f > 0.25 ORDER BY f",
                    "SELECT name, f FROM t WHERE f > 1 ORDER BY f",
                    "SELECT name, f FROM t WHERE f > 1.75 ORDER BY f",
                    "SELECT name, f FROM t WHERE f > 1e0 ORDER BY f",
                ]),
                first_two.to_vec(),
            ),
            (
                // A value too large for the column's type is planned from its text.
                texts(&[
                    "SELECT n FROM t WHERE small < 60 ORDER BY n",
                    "SELECT n FROM t WHERE small < 90 ORDER BY n",
                    "SELECT n FROM t WHERE small < 300 ORDER BY n",
                    "SELECT n FROM t WHERE small < 120 ORDER BY n",
                    "SELECT n FROM t WHERE small < 255 ORDER BY n",
                ]),
                vec![false, false, false, true, true],
            ),
            (
                // Strings; a number compared with a string column is planned from its text.
                texts(&[
                    "SELECT COUNT(*) AS c FROM t WHERE name = 'a'",
                    "SELECT COUNT(*) AS c FROM t WHERE name = 'b'",
                    "SELECT COUNT(*) AS c FROM t WHERE name = 'zz'",
                    "SELECT COUNT(*) AS c FROM t WHERE name = 5",
                    "SELECT COUNT(*) AS c FROM t WHERE name = 'c'",
                ]),
                vec![false, false, true, false, true],
            ),
            (
                // HAVING; an arithmetic operand stays.
                texts(&[
                    "SELECT name, SUM(n) AS s FROM t GROUP BY name HAVING SUM(n) > 9 ORDER BY name",
                    "SELECT name, SUM(n) AS s FROM t GROUP BY name HAVING SUM(n) > 12 ORDER BY name",
                    "SELECT name, SUM(n) AS s FROM t GROUP BY name HAVING SUM(n) > 0 ORDER BY name",
                    "SELECT name, SUM(n) AS s FROM t GROUP BY name HAVING SUM(n) > 14 ORDER BY name",
                    "SELECT name, SUM(n) AS s FROM t GROUP BY name HAVING SUM(n) * 2 > 20 ORDER BY name",
                ]),
                vec![false, false, true, true, false],
            ),
            (
                // A join's ON, an IN subquery (the join on machine ids), NOT EXISTS.
                each(
                    join,
                    &[
                        &["'dns'", "'media'", "4"],
                        &["'media'", "'dns'", "1"],
                        &["'x'", "'dns'", "2"],
                        &["'dns'", "'media'", "8"],
                        &["'dns'", "'nope'", "0"],
                    ],
                ),
                first_two.to_vec(),
            ),
            (
                // A window's row number (a heap per partition when the number is known).
                each(
                    window,
                    &[&["1", ""], &["2", ""], &["3", ""], &["0", ""], &["2", " LIMIT 4"]],
                ),
                vec![false, false, true, true, true],
            ),
            (
                // A derived table and arithmetic on the other side.
                texts(&[
                    "SELECT s.name, s.n FROM (SELECT name, n FROM t WHERE n < 7) s WHERE (s.n * 100) / 3 > 50 ORDER BY s.n",
                    "SELECT s.name, s.n FROM (SELECT name, n FROM t WHERE n < 8) s WHERE (s.n * 100) / 3 > 150 ORDER BY s.n",
                    "SELECT s.name, s.n FROM (SELECT name, n FROM t WHERE n < 6) s WHERE (s.n * 100) / 3 > 99 ORDER BY s.n",
                    "SELECT s.name, s.n FROM (SELECT name, n FROM t WHERE n < 9) s WHERE (s.n * 100) / 3 > 0 ORDER BY s.n",
                    "SELECT s.name, s.n FROM (SELECT name, n FROM t WHERE n < 2) s WHERE (s.n * 100) / 3 > 0 ORDER BY s.n",
                ]),
                first_two.to_vec(),
            ),
            (
                // Both sides of a UNION, a LEFT JOIN's ON (which keeps unmatched rows).
                each(
                    union,
                    &[
                        &["'dns'", "7", "7", ""],
                        &["'media'", "5", "5", ""],
                        &["'dns'", "3", "8", ""],
                        &["'x'", "9", "0", " LIMIT 5"],
                        &["'media'", "6", "6", ""],
                    ],
                ),
                first_two.to_vec(),
            ),
            (
                // A shape that does not plan (HAVING no longer matches GROUP BY) is refused:
                // each statement planned from its text.
                texts(&[
                    "SELECT n > 5 AS big FROM t GROUP BY n > 5 HAVING (n > 5) = true",
                    "SELECT n > 6 AS big FROM t GROUP BY n > 6 HAVING (n > 6) = true",
                    "SELECT n > 6 AS big FROM t GROUP BY n > 6 HAVING (n > 6) = true",
                    "SELECT n > 6 AS big FROM t GROUP BY n > 6 HAVING (n > 6) = true",
                ]),
                vec![false, false, false, false],
            ),
        ];
        for (statements, reused) in cases {
            let kept = snapshot(64).await;
            same_answers(&kept, &fresh, &statements, &reused).await;
        }
    }
}

//! Correlated subqueries that DataFusion cannot run, decorrelated by an analyzer rule (run
//! after DataFusion's own, so types are coerced). DataFusion pulls a correlation above an
//! aggregate only when it is `inner = outer`; `(SELECT count(*) FROM t1 AS x WHERE x.c >
//! t1.c)` reached the physical planner as a `ScalarSubquery` and failed. So did correlated
//! subqueries without aggregate, and `EXISTS` / `IN` used as values.
//!
//! In a projection, filter, sort or aggregate, such a subquery becomes
//!
//! ```text
//! outer + row_number() AS rn  LEFT JOIN  (subquery input, true AS marker) ON correlation
//!   → GROUP BY every outer column (rn makes duplicate outer rows distinct)
//!     aggregates, each FILTER (WHERE marker IS NOT NULL)
//! ```
//!
//! and its value an expression over that row. The aggregates are the subquery's own (the
//! filter keeps the empty group's answers SQL's: `count(*) = 0`, NULL from the others);
//! `first_value` of the one row a subquery without aggregate may match, checked by
//! `single_row` (more than one is Postgres's error), or the first in its `ORDER BY ...
//! LIMIT 1`; counts for `EXISTS` and `IN`. Equality correlations of aggregates and
//! `EXISTS` / `IN` conjuncts of a filter stay DataFusion's (same plans as before); shapes
//! this rule does not recognise are left unchanged (and fail as before, with DataFusion's
//! error). `x NOT IN (correlated)` in a filter is `not_in`'s.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchemaRef, Result, ScalarValue};

use super::not_in::not_in_to_not_exists;
use super::single_row::single_row;
use datafusion::config::ConfigOptions;
use datafusion::functions_aggregate::expr_fn::{count, first_value};
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::expr::{AggregateFunction, InSubquery};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    lit, when, BinaryExpr, Cast, Expr, FetchType, JoinType, LogicalPlan, LogicalPlanBuilder,
    Operator, SkipType, SortExpr, Subquery,
};
use datafusion::optimizer::AnalyzerRule;

/// Prefix of the names this rule gives to what it adds (row numbers, aliases, values).
const PREFIX: &str = "__query_sq";

#[derive(Debug, Default)]
pub struct DecorrelateScalarAggregates;

impl AnalyzerRule for DecorrelateScalarAggregates {
    fn analyze(&self, plan: LogicalPlan, _: &ConfigOptions) -> Result<LogicalPlan> {
        // Most statements have no subquery: leave them without rebuilding any node.
        if !has_subquery(&plan)? {
            return Ok(plan);
        }
        let mut next = 0usize;
        plan.transform_up_with_subqueries(|node| rewrite_node(node, &mut next))
            .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "decorrelate_scalar_aggregates"
    }
}

/// Whether any expression of `plan` (views included) holds a subquery.
fn has_subquery(plan: &LogicalPlan) -> Result<bool> {
    let mut found = false;
    plan.apply_with_subqueries(|node| {
        found = node.expressions().iter().any(|e| {
            e.exists(|x| {
                Ok(matches!(
                    x,
                    Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_)
                ))
            })
            .unwrap_or(true)
        });
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })?;
    Ok(found)
}

/// A subquery this rule decorrelates: `target` (the subquery expression) becomes `value`,
/// computed from `aggs` over the rows of `input` that `predicate` joins to each outer row.
struct Candidate {
    target: Expr,
    /// The subquery's references to the outer row.
    outer_refs: Vec<Expr>,
    /// Aggregates over `input`'s columns and outer references, each filtered to the rows
    /// that matched.
    aggs: Vec<Expr>,
    /// In terms of `agg_column(i)` placeholders and outer references.
    value: Expr,
    predicate: Expr,
    input: Arc<LogicalPlan>,
}

fn rewrite_node(node: LogicalPlan, next: &mut usize) -> Result<Transformed<LogicalPlan>> {
    let node = not_in_to_not_exists(node)?;
    if node.transformed {
        return Ok(node);
    }
    let node = node.data;
    if !matches!(
        node,
        LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::Sort(_)
            | LogicalPlan::Aggregate(_)
    ) {
        return Ok(Transformed::no(node));
    }
    let inputs = node.inputs();
    let [outer] = inputs.as_slice() else {
        return Ok(Transformed::no(node));
    };
    // EXISTS and IN that are conjuncts of a filter are DataFusion's (semi and anti joins);
    // elsewhere (a select list, under OR) it cannot run them.
    let joined_by_datafusion: Vec<&Expr> = match &node {
        LogicalPlan::Filter(f) => split_conjunction(&f.predicate)
            .into_iter()
            .map(|e| match e {
                Expr::Not(inner) => inner.as_ref(),
                e => e,
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut candidates = Vec::new();
    for e in node.expressions() {
        e.apply(|x| {
            let found = match x {
                Expr::ScalarSubquery(sq) => scalar_candidate(x, sq),
                Expr::Exists(ex) if !joined_by_datafusion.contains(&x) => {
                    exists_candidate(x, &ex.subquery, ex.negated)
                }
                Expr::InSubquery(i) if !joined_by_datafusion.contains(&x) => {
                    in_candidate(x, i, outer.schema())
                }
                _ => None,
            };
            match found {
                Some(c) => {
                    candidates.push(c);
                    Ok(TreeNodeRecursion::Jump)
                }
                None => Ok(TreeNodeRecursion::Continue),
            }
        })?;
    }
    if candidates.is_empty() {
        return Ok(Transformed::no(node));
    }
    let original_schema = node.schema().clone();
    let mut input = (*outer).clone();
    // ORDER BY (subquery over t1.c) when the select list lacks t1.c: DataFusion adds the
    // columns ORDER BY needs to the projection below the sort, but not those a subquery
    // needs; add them here (the projection restoring the sort's columns drops them).
    if let (LogicalPlan::Sort(_), LogicalPlan::Projection(p)) = (&node, &input) {
        let mut missing: Vec<Expr> = Vec::new();
        for c in &candidates {
            for r in &c.outer_refs {
                if let Expr::OuterReferenceColumn(_, col) = r {
                    let e = Expr::Column(col.clone());
                    if p.schema.index_of_column(col).is_err()
                        && p.input.schema().index_of_column(col).is_ok()
                        && !missing.contains(&e)
                    {
                        missing.push(e);
                    }
                }
            }
        }
        if !missing.is_empty() {
            let mut exprs = p.expr.clone();
            exprs.extend(missing);
            input = LogicalPlanBuilder::from(p.input.as_ref().clone())
                .project(exprs)?
                .build()?;
        }
    }
    let mut replacements: Vec<(Expr, Expr)> = Vec::new();
    for c in candidates {
        match decorrelate(input.clone(), &c, next)? {
            Some((plan, value)) => {
                input = plan;
                replacements.push((c.target, value));
            }
            None => return Ok(Transformed::no(node)),
        }
    }
    let preserver = NamePreserver::new(&node);
    let exprs = node
        .expressions()
        .into_iter()
        .map(|e| {
            let saved = preserver.save(&e);
            let new = e
                .transform_down(|x| match replacements.iter().find(|(t, _)| *t == x) {
                    Some((_, v)) => Ok(Transformed::new(v.clone(), true, TreeNodeRecursion::Jump)),
                    None => Ok(Transformed::no(x)),
                })
                .map(|t| t.data)?;
            Ok(saved.restore(new))
        })
        .collect::<Result<Vec<_>>>()?;
    let rebuilt = node.with_new_exprs(exprs, vec![input])?;
    if matches!(
        rebuilt,
        LogicalPlan::Projection(_) | LogicalPlan::Aggregate(_)
    ) {
        return Ok(Transformed::yes(rebuilt));
    }
    // A filter or sort passes its input's columns on: keep only the original ones.
    let columns: Vec<Expr> = original_schema
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect();
    let plan = LogicalPlanBuilder::from(rebuilt)
        .project(columns)?
        .build()?;
    Ok(Transformed::yes(plan))
}

/// A scalar subquery: an aggregate whose correlation DataFusion cannot pull up
/// (`aggregate_candidate`), or a correlated one without aggregate, which must give at most
/// one row per outer row (checked when run, as Postgres does).
fn scalar_candidate(target: &Expr, sq: &Subquery) -> Option<Candidate> {
    aggregate_candidate(target, sq).or_else(|| single_row_candidate(target, sq))
}

/// `[Projection]* → Aggregate (no GROUP BY) → Filter → input` whose filter holds a
/// correlation DataFusion cannot pull over the aggregate, and no outer reference below.
fn aggregate_candidate(target: &Expr, sq: &Subquery) -> Option<Candidate> {
    let mut plan = sq.subquery.as_ref();
    let mut value: Option<Expr> = None;
    loop {
        match plan {
            LogicalPlan::Projection(p) => {
                value = Some(match value {
                    None => {
                        let [e] = p.expr.as_slice() else { return None };
                        e.clone().unalias()
                    }
                    Some(v) => substitute(v, |c| {
                        let i = p.schema.index_of_column(c).ok()?;
                        Some(p.expr.get(i)?.clone().unalias())
                    })?,
                });
                plan = p.input.as_ref();
            }
            LogicalPlan::Aggregate(a) => {
                if !a.group_expr.is_empty() {
                    return None;
                }
                let value = match value {
                    None => {
                        let [_] = a.aggr_expr.as_slice() else {
                            return None;
                        };
                        Expr::Column(agg_column(0))
                    }
                    Some(v) => substitute(v, |c| {
                        let i = a.schema.index_of_column(c).ok()?;
                        Some(Expr::Column(agg_column(i)))
                    })?,
                };
                // Down to the filter through projections and aliases (a derived table,
                // `FROM (SELECT ... WHERE x.c > t1.c) AS d`, or what this rule left of a
                // subquery nested in this one), the aggregates carried along.
                let mut aggs: Vec<Expr> = a.aggr_expr.iter().map(|e| e.clone().unalias()).collect();
                let mut below = a.input.as_ref();
                let f = loop {
                    match below {
                        LogicalPlan::Projection(p) => {
                            aggs = aggs
                                .into_iter()
                                .map(|e| {
                                    substitute(e, |c| {
                                        let i = p.schema.index_of_column(c).ok()?;
                                        Some(p.expr.get(i)?.clone().unalias())
                                    })
                                })
                                .collect::<Option<_>>()?;
                            below = p.input.as_ref();
                        }
                        LogicalPlan::SubqueryAlias(sa) => {
                            aggs = aggs
                                .into_iter()
                                .map(|e| {
                                    substitute(e, |c| {
                                        let i = sa.schema.index_of_column(c).ok()?;
                                        let (q, f) = sa.input.schema().qualified_field(i);
                                        Some(Expr::Column(Column::new(q.cloned(), f.name())))
                                    })
                                })
                                .collect::<Option<_>>()?;
                            below = sa.input.as_ref();
                        }
                        LogicalPlan::Filter(f) => break f,
                        _ => return None,
                    }
                };
                let correlated: Vec<&Expr> = split_conjunction(&f.predicate)
                    .into_iter()
                    .filter(|e| e.contains_outer())
                    .collect();
                if correlated.is_empty() || correlated.iter().all(|e| datafusion_pulls_up(e)) {
                    return None;
                }
                if has_outer_reference(&f.input) {
                    return None;
                }
                return Some(Candidate {
                    target: target.clone(),
                    outer_refs: sq.outer_ref_columns.clone(),
                    aggs,
                    value,
                    predicate: f.predicate.clone(),
                    input: f.input.clone(),
                });
            }
            _ => return None,
        }
    }
}

/// `Projection(e) → Filter (correlated) → input`: the value is `e` of the one matching
/// row, NULL if none; more than one is an error when run.
fn single_row_candidate(target: &Expr, sq: &Subquery) -> Option<Candidate> {
    // Peel `[Limit 1] → Projection(e) → [Sort → Projection]` down to the filter,
    // carrying `e` and the sort order through the projections. With `LIMIT 1` the value
    // is the first row in that order (`... ORDER BY time DESC LIMIT 1`, the latest).
    let mut plan = sq.subquery.clone();
    let mut value: Option<Expr> = None;
    let mut first = false;
    let mut order: Vec<SortExpr> = Vec::new();
    loop {
        match plan.as_ref() {
            LogicalPlan::Limit(l) if !first && order.is_empty() => {
                first = matches!(l.get_skip_type(), Ok(SkipType::Literal(0)))
                    && matches!(l.get_fetch_type(), Ok(FetchType::Literal(Some(1))));
                if !first {
                    return None;
                }
                plan = l.input.clone();
            }
            LogicalPlan::Projection(p) => {
                match value {
                    None => {
                        let [e] = p.expr.as_slice() else { return None };
                        value = Some(e.clone().unalias());
                    }
                    Some(v) => {
                        let through = |c: &Column| {
                            let i = p.schema.index_of_column(c).ok()?;
                            Some(p.expr.get(i)?.clone().unalias())
                        };
                        value = Some(substitute(v, through)?);
                        order = order
                            .into_iter()
                            .map(|mut s| {
                                s.expr = substitute(s.expr, through)?;
                                Some(s)
                            })
                            .collect::<Option<_>>()?;
                    }
                }
                plan = p.input.clone();
            }
            LogicalPlan::Sort(sort) if value.is_some() && order.is_empty() => {
                first |= sort.fetch == Some(1);
                if first {
                    order = sort.expr.clone();
                }
                plan = sort.input.clone();
            }
            _ => break,
        }
    }
    let e = value?;
    let below = plan;
    let first_of = first.then_some(order);
    let (predicate, input) = filtered(&below);
    if !predicate.contains_outer() || has_outer_reference(&input) {
        return None;
    }
    let (aggs, value) = match first_of {
        Some(order) => (vec![first_value(e, order)], Expr::Column(agg_column(0))),
        None => (
            vec![count(lit(1)), first_value(e, vec![])],
            single_row(Expr::Column(agg_column(0)), Expr::Column(agg_column(1))),
        ),
    };
    Some(Candidate {
        target: target.clone(),
        outer_refs: sq.outer_ref_columns.clone(),
        aggs,
        value,
        predicate,
        input,
    })
}

/// `[NOT] EXISTS (subquery)`: whether any row matched.
fn exists_candidate(target: &Expr, sq: &Subquery, negated: bool) -> Option<Candidate> {
    let below = match sq.subquery.as_ref() {
        LogicalPlan::Projection(p) => p.input.clone(),
        other => Arc::new(other.clone()),
    };
    let (predicate, input) = filtered(&below);
    if has_outer_reference(&input) {
        return None;
    }
    let matched = Expr::Column(agg_column(0));
    Some(Candidate {
        target: target.clone(),
        outer_refs: sq.outer_ref_columns.clone(),
        aggs: vec![count(lit(1))],
        value: if negated {
            matched.eq(lit(0i64))
        } else {
            matched.gt(lit(0i64))
        },
        predicate,
        input,
    })
}

/// `x [NOT] IN (subquery)` as a value: true if a row equals `x`, else NULL if a comparison
/// was unknown (a NULL on either side), else false.
fn in_candidate(target: &Expr, i: &InSubquery, outer: &DFSchemaRef) -> Option<Candidate> {
    let (column, below) = match i.subquery.subquery.as_ref() {
        LogicalPlan::Projection(p) => match p.expr.as_slice() {
            [e] => (e.clone().unalias(), p.input.clone()),
            _ => return None,
        },
        other if other.schema().fields().len() == 1 => {
            let (q, f) = other.schema().qualified_field(0);
            (
                Expr::Column(Column::new(q.cloned(), f.name())),
                Arc::new(other.clone()),
            )
        }
        _ => return None,
    };
    let (predicate, input) = filtered(&below);
    if has_outer_reference(&input) {
        return None;
    }
    let x = outer_references(&i.expr, outer)?;
    let equal = x.clone().eq(column);
    let mut outer_refs = i.subquery.outer_ref_columns.clone();
    x.apply(|e| {
        if matches!(e, Expr::OuterReferenceColumn(..)) && !outer_refs.contains(e) {
            outer_refs.push(e.clone());
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .ok()?;
    let count_if = |cond: Expr| {
        count(lit(1)).transform(|e| match e {
            Expr::AggregateFunction(mut f) => {
                f.params.filter = Some(Box::new(cond.clone()));
                Ok(Transformed::yes(Expr::AggregateFunction(f)))
            }
            other => Ok(Transformed::no(other)),
        })
    };
    let aggs = vec![
        count_if(equal.clone()).ok()?.data,
        count_if(equal.is_null()).ok()?.data,
    ];
    let found = when(Expr::Column(agg_column(0)).gt(lit(0i64)), lit(true))
        .when(
            Expr::Column(agg_column(1)).gt(lit(0i64)),
            lit(ScalarValue::Boolean(None)),
        )
        .otherwise(lit(false))
        .ok()?;
    Some(Candidate {
        target: target.clone(),
        outer_refs,
        aggs,
        value: if i.negated { !found } else { found },
        predicate,
        input,
    })
}

/// A filter's predicate and input, or `true` and the plan itself.
fn filtered(plan: &Arc<LogicalPlan>) -> (Expr, Arc<LogicalPlan>) {
    match plan.as_ref() {
        LogicalPlan::Filter(f) => (f.predicate.clone(), f.input.clone()),
        _ => (lit(true), plan.clone()),
    }
}

/// `e` with its columns (of the outer plan) as outer references.
fn outer_references(e: &Expr, outer: &DFSchemaRef) -> Option<Expr> {
    substitute(e.clone(), |c| {
        let (_, f) = outer.qualified_field_from_column(c).ok()?;
        Some(Expr::OuterReferenceColumn(f.clone(), c.clone()))
    })
}

/// The placeholder for the aggregate's `i`th output inside a candidate's value.
fn agg_column(i: usize) -> Column {
    Column::from_name(format!("{PREFIX}_agg{i}"))
}

/// Replaces every column of `e` by `f(column)`; None if one cannot be replaced.
fn substitute(e: Expr, f: impl Fn(&Column) -> Option<Expr>) -> Option<Expr> {
    let mut ok = true;
    let out = e
        .transform(|x| match &x {
            Expr::Column(c) => match f(c) {
                Some(r) => Ok(Transformed::yes(r)),
                None => {
                    ok = false;
                    Ok(Transformed::no(x))
                }
            },
            _ => Ok(Transformed::no(x)),
        })
        .ok()?
        .data;
    ok.then_some(out)
}

/// DataFusion's own test (`decorrelate.rs`, `can_pullup_over_aggregation`): an equality
/// of an inner column with an expression of outer columns only.
fn datafusion_pulls_up(e: &Expr) -> bool {
    let Expr::BinaryExpr(BinaryExpr {
        left,
        op: Operator::Eq,
        right,
    }) = e
    else {
        return false;
    };
    let is_col = |x: &Expr| match x {
        Expr::Column(_) => true,
        Expr::Cast(Cast { expr, .. }) => matches!(expr.deref(), Expr::Column(_)),
        _ => false,
    };
    (is_col(left) && !right.any_column_refs()) || (is_col(right) && !left.any_column_refs())
}

fn has_outer_reference(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|p| {
        if p.contains_outer_reference() {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// Joins `outer` with the candidate's input and aggregates per outer row; returns the new
/// input (outer's columns plus the value's column) and the expression replacing the
/// subquery. None if the shape cannot be built (names that clash).
fn decorrelate(
    outer: LogicalPlan,
    c: &Candidate,
    next: &mut usize,
) -> Result<Option<(LogicalPlan, Expr)>> {
    // A reference to a query further out (a subquery nested in a subquery) is not a
    // column of `outer`: left to DataFusion.
    let reaches_further = c.outer_refs.iter().any(|r| match r {
        Expr::OuterReferenceColumn(_, col) => outer.schema().index_of_column(col).is_err(),
        _ => false,
    });
    if reaches_further {
        return Ok(None);
    }
    *next += 1;
    let n = *next;
    let alias = format!("{PREFIX}{n}");
    let rn = format!("{PREFIX}{n}_row");
    let marker = format!("{PREFIX}{n}_matched");

    // The inner side under a name of its own, so that a table used inside and outside
    // (`FROM t1 ... (SELECT ... FROM t1 ...)`) does not clash.
    let inner_schema = c.input.schema().clone();
    // Each column under a name of its own: the input may be a join of two tables whose
    // columns share a name (`FROM u AS y, u AS z`).
    let inner_name = |i: usize| format!("{PREFIX}{n}_c{i}");
    let mut inner_cols: Vec<Expr> = inner_schema
        .columns()
        .into_iter()
        .enumerate()
        .map(|(i, c)| Expr::Column(c).alias(inner_name(i)))
        .collect();
    inner_cols.push(lit(true).alias(&marker));
    let inner = match LogicalPlanBuilder::from(c.input.as_ref().clone())
        .project(inner_cols)
        .and_then(|b| b.alias(alias.as_str()))
        .and_then(|b| b.build())
    {
        Ok(p) => p,
        Err(_) => return Ok(None),
    };
    // Inner columns → the aliased side; outer references → plain columns of `outer`.
    let requalify = |e: Expr| -> Result<Expr> {
        e.transform(|x| match &x {
            Expr::Column(col) => match inner_schema.index_of_column(col) {
                Ok(i) => Ok(Transformed::yes(Expr::Column(Column::new(
                    Some(alias.as_str()),
                    inner_name(i),
                )))),
                Err(_) => Ok(Transformed::no(x)),
            },
            Expr::OuterReferenceColumn(_, col) => Ok(Transformed::yes(Expr::Column(col.clone()))),
            _ => Ok(Transformed::no(x)),
        })
        .map(|t| t.data)
    };

    let numbered = LogicalPlanBuilder::from(outer)
        .window(vec![row_number().alias(&rn)])?
        .build()?;
    let group: Vec<Expr> = numbered
        .schema()
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect();
    let on = requalify(c.predicate.clone())?;
    let joined = match LogicalPlanBuilder::from(numbered)
        .join_on(inner, JoinType::Left, vec![on])
        .and_then(|b| b.build())
    {
        Ok(p) => p,
        Err(_) => return Ok(None),
    };
    let matched = Expr::Column(Column::new(Some(alias.as_str()), marker.clone())).is_not_null();
    let mut aggs = Vec::new();
    let mut names = HashMap::new();
    for (i, e) in c.aggs.iter().enumerate() {
        let e = requalify(e.clone())?;
        let filtered = e
            .transform(|x| match x {
                Expr::AggregateFunction(mut f) => {
                    f.params.filter = Some(Box::new(match f.params.filter.take() {
                        Some(old) => old.and(matched.clone()),
                        None => matched.clone(),
                    }));
                    Ok(Transformed::new(
                        Expr::AggregateFunction(AggregateFunction { ..f }),
                        true,
                        TreeNodeRecursion::Jump,
                    ))
                }
                other => Ok(Transformed::no(other)),
            })?
            .data;
        let name = format!("{PREFIX}{n}_v{i}");
        names.insert(agg_column(i), name.clone());
        aggs.push(filtered.alias(name));
    }
    let plan = match LogicalPlanBuilder::from(joined)
        .aggregate(group, aggs)
        .and_then(|b| b.build())
    {
        Ok(p) => p,
        Err(_) => return Ok(None),
    };
    // The subquery's value over the aggregate's row; outer references are outer columns.
    let value = c
        .value
        .clone()
        .transform(|x| match &x {
            Expr::Column(col) => match names.get(col) {
                Some(name) => Ok(Transformed::yes(col_named(name))),
                None => Ok(Transformed::no(x)),
            },
            Expr::OuterReferenceColumn(_, col) => Ok(Transformed::yes(Expr::Column(col.clone()))),
            _ => Ok(Transformed::no(x)),
        })?
        .data;
    // The row number served its purpose; drop it so it does not reach the answer.
    let keep: Vec<Expr> = plan
        .schema()
        .columns()
        .into_iter()
        .filter(|c| c.name != rn)
        .map(Expr::Column)
        .collect();
    let plan = LogicalPlanBuilder::from(plan).project(keep)?.build()?;
    Ok(Some((plan, value)))
}

fn col_named(name: &str) -> Expr {
    Expr::Column(Column::from_name(name))
}

#[cfg(test)]
mod tests {
    use super::PREFIX;
    use crate::sql::{QueryLimits, Snapshot};
    use datafusion::arrow::array::AsArray;

    async fn plan(sql: &str) -> String {
        let snap = Snapshot::empty_for_tests().await;
        let out = snap
            .query(&format!("EXPLAIN {sql}"), &QueryLimits::default())
            .await
            .expect("EXPLAIN answers");
        let mut text = String::new();
        for b in &out.batches {
            for col in b.columns() {
                for v in col.as_string::<i32>().iter().flatten() {
                    text.push_str(v);
                    text.push('\n');
                }
            }
        }
        text
    }

    const T: &str = "WITH t(a, b) AS (VALUES (1, 2), (3, 4))";

    #[tokio::test]
    async fn only_what_datafusion_cannot_run_is_rewritten() {
        // DataFusion's own: equality correlations, EXISTS / IN conjuncts of WHERE.
        for sql in [
            "SELECT a, (SELECT count(*) FROM t AS x WHERE x.a = t.a) FROM t",
            "SELECT a FROM t WHERE EXISTS (SELECT 1 FROM t AS x WHERE x.a > t.a)",
            "SELECT a FROM t WHERE b IN (SELECT x.b FROM t AS x WHERE x.a > t.a)",
        ] {
            let p = plan(&format!("{T} {sql}")).await;
            assert!(!p.contains(PREFIX), "{sql}:\n{p}");
        }
        // This rule's: correlations that are not equalities, EXISTS as a value.
        for sql in [
            "SELECT a, (SELECT count(*) FROM t AS x WHERE x.a > t.a) FROM t",
            "SELECT a, EXISTS (SELECT 1 FROM t AS x WHERE x.a > t.a) FROM t",
        ] {
            let p = plan(&format!("{T} {sql}")).await;
            assert!(p.contains(PREFIX), "{sql}:\n{p}");
            assert!(!p.contains("Subquery:"), "decorrelated: {sql}:\n{p}");
        }
    }
}

//! `x NOT IN (correlated subquery)` in a filter, with SQL's NULL semantics (see
//! `not_in_to_not_exists`); called by the `subquery` rule for every plan node.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchemaRef, Result};
use datafusion::logical_expr::expr::{Exists, InSubquery};
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, Subquery};

/// `x NOT IN (correlated subquery)` in a filter, as
/// `NOT EXISTS (subquery WHERE (x = column) IS NOT FALSE)`. DataFusion's null-aware anti
/// join drops a row whose `x` is NULL even when its correlated set is empty, where SQL
/// says `NULL NOT IN (empty)` is true. In a filter only true keeps a row, and
/// `x NOT IN s` is true exactly when no row of `s` makes `x = column` true or unknown.
pub(super) fn not_in_to_not_exists(node: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
    let LogicalPlan::Filter(f) = &node else {
        return Ok(Transformed::no(node));
    };
    let outer_schema = f.input.schema().clone();
    let mut changed = false;
    let mut conjuncts = Vec::new();
    for e in split_conjunction(&f.predicate) {
        match e {
            Expr::InSubquery(InSubquery {
                expr,
                subquery,
                negated: true,
            }) if !subquery.outer_ref_columns.is_empty() => {
                match not_exists(expr, subquery, &outer_schema)? {
                    Some(rewritten) => {
                        conjuncts.push(rewritten);
                        changed = true;
                    }
                    None => conjuncts.push(e.clone()),
                }
            }
            other => conjuncts.push(other.clone()),
        }
    }
    if !changed {
        return Ok(Transformed::no(node));
    }
    let Some(predicate) = conjunction(conjuncts) else {
        return Ok(Transformed::no(node));
    };
    let plan = LogicalPlanBuilder::from(f.input.as_ref().clone())
        .filter(predicate)?
        .build()?;
    Ok(Transformed::yes(plan))
}

fn not_exists(expr: &Expr, subquery: &Subquery, outer: &DFSchemaRef) -> Result<Option<Expr>> {
    let plan = subquery.subquery.as_ref();
    if plan.schema().fields().len() != 1 {
        return Ok(None);
    }
    let (qualifier, field) = plan.schema().qualified_field(0);
    let column = Expr::Column(Column::new(qualifier.cloned(), field.name()));
    // The compared expression's columns become references to the outer row.
    let mut refs = subquery.outer_ref_columns.clone();
    let mut ok = true;
    let outer_expr = expr
        .clone()
        .transform(|x| match &x {
            Expr::Column(c) => match outer.qualified_field_from_column(c) {
                Ok((_, f)) => {
                    let r = Expr::OuterReferenceColumn(f.clone(), c.clone());
                    if !refs.contains(&r) {
                        refs.push(r.clone());
                    }
                    Ok(Transformed::yes(r))
                }
                Err(_) => {
                    ok = false;
                    Ok(Transformed::no(x))
                }
            },
            _ => Ok(Transformed::no(x)),
        })?
        .data;
    if !ok {
        return Ok(None);
    }
    let matches = Expr::IsNotFalse(Box::new(outer_expr.eq(column)));
    let filtered = LogicalPlanBuilder::from(plan.clone())
        .filter(matches)?
        .build()?;
    Ok(Some(Expr::Exists(Exists {
        subquery: Subquery {
            subquery: Arc::new(filtered),
            outer_ref_columns: refs,
            spans: subquery.spans.clone(),
        },
        negated: true,
    })))
}

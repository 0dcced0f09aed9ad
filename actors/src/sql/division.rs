//! Division by zero yields NULL, as in DuckDB, SQLite and MySQL, instead of failing the
//! whole query.
//!
//! Why: alert queries run over the whole fleet. DataFusion evaluates expressions a batch
//! at a time, so the paper's guard `blocks > 0 AND (100*bavail)/blocks < 3` still divides
//! the rows with `blocks = 0` and the query fails for every machine because of one. With
//! `x / NULLIF(y, 0)` the guard works as written and an unguarded division gives NULL for
//! that row only. Integer division stays integer.

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{lit, BinaryExpr, Expr, LogicalPlan, Operator};
use datafusion::optimizer::AnalyzerRule;

#[derive(Debug, Default)]
pub struct NullOnDivideByZero;

impl AnalyzerRule for NullOnDivideByZero {
    fn name(&self) -> &str {
        "null_on_divide_by_zero"
    }

    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(guard_node)
            .map(|t| t.data)
    }
}

/// Rewrites the divisions of one plan node.
fn guard_node(node: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
    rewrite_node_expressions(node, rewrite)
}

/// Rewrites every expression of one plan node bottom up with `f`, shared by the project's
/// expression rules. Names are kept as they were (as DataFusion's own type coercion does):
/// a parent refers to `(x / 10) * 10` of a GROUP BY by that name. The node's schema is
/// recomputed when anything changed (a rewrite may change a type).
pub(super) fn rewrite_node_expressions(
    node: LogicalPlan,
    mut f: impl FnMut(Expr) -> Result<Transformed<Expr>>,
) -> Result<Transformed<LogicalPlan>> {
    let names = NamePreserver::new(&node);
    let rewritten = node.map_expressions(|e| {
        let name = names.save(&e);
        e.transform_up(&mut f)
            .map(|t| t.update_data(|e| name.restore(e)))
    })?;
    if rewritten.transformed {
        rewritten.map_data(|plan| plan.recompute_schema())
    } else {
        Ok(rewritten)
    }
}

fn rewrite(e: Expr) -> Result<Transformed<Expr>> {
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: op @ (Operator::Divide | Operator::Modulo),
            right,
        }) if !is_nullif_zero(&right) && !is_nonzero_literal(&right) => {
            // Runs before type coercion: NULLIF coerces the literal to the divisor's type.
            let guarded = datafusion::functions::core::nullif().call(vec![*right, lit(0_i64)]);
            Ok(Transformed::yes(Expr::BinaryExpr(BinaryExpr {
                left,
                op,
                right: Box::new(guarded),
            })))
        }
        other => Ok(Transformed::no(other)),
    }
}

/// `x / 10` cannot divide by zero: no guard, and the plan reads as written.
fn is_nonzero_literal(e: &Expr) -> bool {
    match e {
        Expr::Literal(v, _) => {
            !v.is_null() && ScalarValue::new_zero(&v.data_type()).is_ok_and(|zero| *v != zero)
        }
        _ => false,
    }
}

/// Already rewritten (views are planned, then used inside other plans).
fn is_nullif_zero(e: &Expr) -> bool {
    matches!(e, Expr::ScalarFunction(f) if f.func.name() == "nullif")
}

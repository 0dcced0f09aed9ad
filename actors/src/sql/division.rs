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
use datafusion::error::Result;
use datafusion::logical_expr::{lit, BinaryExpr, Expr, LogicalPlan, Operator};
use datafusion::optimizer::AnalyzerRule;

#[derive(Debug, Default)]
pub struct NullOnDivideByZero;

impl AnalyzerRule for NullOnDivideByZero {
    fn name(&self) -> &str {
        "null_on_divide_by_zero"
    }

    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| node.map_expressions(|e| e.transform_up(rewrite)))
            .map(|t| t.data)
    }
}

fn rewrite(e: Expr) -> Result<Transformed<Expr>> {
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: op @ (Operator::Divide | Operator::Modulo),
            right,
        }) if !is_nullif_zero(&right) => {
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

/// Already rewritten (views are planned, then used inside other plans).
fn is_nullif_zero(e: &Expr) -> bool {
    matches!(e, Expr::ScalarFunction(f) if f.func.name() == "nullif")
}

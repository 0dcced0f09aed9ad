//! A float cast to an integer rounds, as in Postgres (`CAST(2.7 AS INTEGER)` is 3, `-2.5`
//! gives -3), where DataFusion truncates (2, -2). An alert that buckets `load1` with
//! `CAST(load1 AS BIGINT)` gets the same buckets as on Postgres. Ties round away from
//! zero, as Postgres rounds its `numeric` literals (`2.5`); Postgres rounds a `float8`
//! tie to even (`2.5::float8::int` is 2), a difference ARCHITECTURE.md lists.

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::DFSchema;
use datafusion::error::Result;
use datafusion::logical_expr::expr::{Cast, TryCast};
use datafusion::logical_expr::{Expr, ExprSchemable, LogicalPlan};
use datafusion::optimizer::AnalyzerRule;

#[derive(Debug, Default)]
pub struct RoundFloatToInteger;

impl AnalyzerRule for RoundFloatToInteger {
    fn name(&self) -> &str {
        "round_float_to_integer"
    }

    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(round_node)
            .map(|t| t.data)
    }
}

fn round_node(node: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
    // Most nodes cast nothing to an integer: leave them without copying their schema.
    let casts_to_integer =
        node.expressions().iter().any(|e| {
            e.exists(|x| {
            Ok(matches!(x, Expr::Cast(Cast { field, .. }) | Expr::TryCast(TryCast { field, .. })
                if field.data_type().is_integer()))
        })
        .unwrap_or(true)
        });
    if !casts_to_integer {
        return Ok(Transformed::no(node));
    }
    // The schema the node's expressions read: its one input's (casts in joins' conditions
    // and in nodes without input are left as DataFusion makes them).
    let schema: DFSchema = match node.inputs().as_slice() {
        [input] => input.schema().as_ref().clone(),
        _ => return Ok(Transformed::no(node)),
    };
    super::division::rewrite_node_expressions(node, |x| round_cast(x, &schema))
}

fn round_cast(e: Expr, schema: &DFSchema) -> Result<Transformed<Expr>> {
    let (inner, to) = match &e {
        Expr::Cast(Cast { expr, field }) | Expr::TryCast(TryCast { expr, field }) => {
            (expr.as_ref(), field.data_type())
        }
        _ => return Ok(Transformed::no(e)),
    };
    if !to.is_integer() || is_round(inner) {
        return Ok(Transformed::no(e));
    }
    let Ok(from) = inner.get_type(schema) else {
        return Ok(Transformed::no(e));
    };
    if !from.is_floating() {
        return Ok(Transformed::no(e));
    }
    let rounded = |x: Box<Expr>| Box::new(datafusion::functions::math::round().call(vec![*x]));
    Ok(Transformed::yes(match e {
        Expr::Cast(Cast { expr, field }) => Expr::Cast(Cast {
            expr: rounded(expr),
            field,
        }),
        Expr::TryCast(TryCast { expr, field }) => Expr::TryCast(TryCast {
            expr: rounded(expr),
            field,
        }),
        other => other,
    }))
}

/// Already rounded (views are planned, then used inside other plans).
fn is_round(e: &Expr) -> bool {
    matches!(e, Expr::ScalarFunction(f) if f.func.name() == "round")
}

//! `date_trunc` on UTC timestamps at the speed of zone-less ones.
//!
//! Why: every timestamp column of Query is `Timestamp(ms, "UTC")` (schemas' `timestamp`,
//! history's `generation_time`). DataFusion 55's `date_trunc` truncates a zone-less
//! timestamp with integer arithmetic but sends every zoned value through chrono's time-zone
//! path, even for UTC: the history benchmark's fleet-wide hourly average over a day of
//! 14.4M rows spent 2.3 of its 2.5 CPU-seconds there (BENCHMARKS.md, `history`). For UTC
//! both give the same instant, so the value is cast to zone-less, truncated, and labelled
//! UTC again (through its integer, which costs nothing); names are kept.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::DFSchema;
use datafusion::error::Result;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{cast, Expr, ExprSchemable, LogicalPlan};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

#[derive(Debug, Default)]
pub struct UtcDateTrunc;

impl OptimizerRule for UtcDateTrunc {
    fn name(&self) -> &str {
        "utc_date_trunc"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        // Expressions of a one-input node are typed by that input; others are left alone.
        let schema = match plan.inputs().as_slice() {
            [input] => input.schema().clone(),
            _ => return Ok(Transformed::no(plan)),
        };
        let names = NamePreserver::new(&plan);
        let rewritten = plan.map_expressions(|e| {
            let name = names.save(&e);
            e.transform_up(|e| rewrite(e, &schema))
                .map(|t| t.update_data(|e| name.restore(e)))
        })?;
        if rewritten.transformed {
            rewritten.map_data(|p| p.recompute_schema())
        } else {
            Ok(rewritten)
        }
    }
}

fn is_utc(tz: &str) -> bool {
    matches!(tz, "UTC" | "utc" | "+00:00" | "Z" | "Etc/UTC")
}

fn rewrite(e: Expr, schema: &DFSchema) -> Result<Transformed<Expr>> {
    let Expr::ScalarFunction(f) = &e else {
        return Ok(Transformed::no(e));
    };
    if f.func.name() != "date_trunc" || f.args.len() != 2 {
        return Ok(Transformed::no(e));
    }
    let Ok(DataType::Timestamp(unit, Some(tz))) = f.args[1].get_type(schema) else {
        return Ok(Transformed::no(e));
    };
    if !is_utc(&tz) {
        return Ok(Transformed::no(e));
    }
    let Ok(out) = e.get_type(schema) else {
        return Ok(Transformed::no(e));
    };
    let naive = cast(f.args[1].clone(), DataType::Timestamp(unit, None));
    let call = Expr::ScalarFunction(ScalarFunction::new_udf(
        f.func.clone(),
        vec![f.args[0].clone(), naive],
    ));
    // Back to the zoned type by way of its integer (a relabelling): a cast from zone-less
    // to UTC would go through chrono again, value by value.
    let back = match (call.get_type(schema), &out) {
        (Ok(DataType::Timestamp(got, None)), DataType::Timestamp(want, Some(_)))
            if got == *want =>
        {
            cast(cast(call, DataType::Int64), out)
        }
        _ => cast(call, out),
    };
    Ok(Transformed::yes(back))
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::SessionContext;

    use datafusion::execution::context::SessionConfig;

    fn context() -> SessionContext {
        crate::sql::engine::new_context(SessionConfig::new())
    }

    async fn answer(ctx: &SessionContext, sql: &str) -> String {
        crate::sql::engine::tests::answer_text(ctx, sql)
            .await
            .expect("answer")
    }

    #[tokio::test]
    async fn utc_truncation_is_rewritten_and_answers_the_same() {
        let ctx = context();
        let sql = "SELECT date_trunc('hour', t) AS h, count(*) AS n FROM (VALUES \
                   (arrow_cast(1795890066440, 'Timestamp(Millisecond, Some(\"UTC\"))')), \
                   (arrow_cast(1795893666440, 'Timestamp(Millisecond, Some(\"UTC\"))')), \
                   (arrow_cast(1795893667440, 'Timestamp(Millisecond, Some(\"UTC\"))'))) AS v(t) \
                   GROUP BY 1 ORDER BY 1";
        let got = answer(&ctx, sql).await;
        assert!(
            got.contains("| 2026-11-28T18:00:00Z | 1 |")
                && got.contains("| 2026-11-28T19:00:00Z | 2 |"),
            "{got}"
        );
        let plan = answer(&ctx, &format!("EXPLAIN {sql}")).await;
        // Truncated zone-less, labelled UTC again through Int64: only the rewrite casts so.
        assert!(plan.contains("AS Int64)"), "{plan}");
        // The column keeps its name and its zone.
        let typed = answer(&ctx, &format!("SELECT arrow_typeof(h) FROM ({sql})")).await;
        assert!(typed.contains("UTC"), "{typed}");
    }
}

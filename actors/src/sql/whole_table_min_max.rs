//! `MIN` and `MAX` of a whole table's columns, known from when the snapshot spread the
//! table ([`ColumnBounds`], computed with each snapshot's copy of a table, static tables
//! included) and put into a statement's plan as literals ([`answer_from_bounds`], on each
//! snapshot, just before physical planning). A scalar subquery in a filter that became
//! such a literal is replaced by it, so it runs no pipeline of its own and the physical
//! plan can be kept (for those bounds, `kept_physical`).
//!
//! Why: alerts ask for what is newest in the fleet (`WHERE start_time > (SELECT
//! MAX(start_time) FROM processes) - INTERVAL '1 day'`). DataFusion runs such a subquery
//! as its own pipeline (a partial aggregate on every partition, a final one) and the
//! statement around it waits for it: at 70,000 machines `SELECT MAX(start_time) FROM
//! processes` took 1.67 ms of the whole statement's 4.4 (`BENCH_EXPLAIN`). Reading the
//! 840,000 values at planning instead took 0.75 ms on the planning thread, as much as the
//! pipeline saved: the cost is the pass over the column. A column store knows its columns'
//! bounds from ingest (DataFusion answers such aggregates from a source's exact statistics,
//! `AggregateStatistics`, but an in-memory table reports only row and null counts), and a
//! generation is immutable: its bounds hold for every statement on it.
//!
//! When: a table's bounds are computed where its batches are spread over the cores
//! (`spread::partitioned`): at a SQL node when the snapshot is built, so no statement pays
//! for them; at a node that coalesces on first scan (a TLA), with that copy, so the first
//! statement runs as planned and later ones read them. Only columns of times, dates and
//! durations get bounds, what "newest" and "oldest" ask for: with every number column too, a SQL node's
//! build of a 70,000-machine snapshot took 78-84 ms instead of 36-37 without bounds
//! (scratch builds of both, timed by the `sql` benchmark, five each, not kept), for
//! aggregates rarely asked of a whole table.
//!
//! What is replaced: an aggregate without `GROUP BY` whose every aggregate is `MIN` or
//! `MAX` of a plain column (`DISTINCT` or not, without `FILTER` or `ORDER BY`), directly
//! over a scan of a whole snapshot table (no filter, no limit pushed into it). It
//! becomes a projection of literals over one empty row, with the aggregate's own schema.
//! A `WHERE`, a join or anything else between the aggregate and the scan leaves the plan as
//! it is. The value is exact: MIN and MAX accumulators over every row (NULLs skipped; a
//! table without a value gives NULL).

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::default_table_source::source_as_provider;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{plan_err, DFSchema, Result, ScalarValue};
use datafusion::functions_aggregate::min_max::{MaxAccumulator, MinAccumulator};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{
    lit, Accumulator, Aggregate, EmptyRelation, Expr, Filter, LogicalPlan, Projection, TableScan,
};

use datafusion::optimizer::simplify_expressions::ExprSimplifier;

use super::coalesced::CoalescedTable;
use super::spread::SpreadTable;

/// The smallest and largest value of one column of a whole table (NULL if it has none).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ColumnBounds {
    pub min: ScalarValue,
    pub max: ScalarValue,
}

/// Each column's bounds over `batches` (None for a column that is not of a time, date or
/// duration type, or whose accumulators fail).
pub(super) fn bounds_of<'a>(
    schema: &Schema,
    batches: impl Iterator<Item = &'a RecordBatch> + Clone,
) -> Vec<Option<ColumnBounds>> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(c, field)| {
            let data_type = field.data_type();
            let temporal = data_type.is_temporal() && !matches!(data_type, DataType::Interval(_));
            if !temporal {
                return None;
            }
            column_bounds(data_type, batches.clone(), c).ok()
        })
        .collect()
}

fn column_bounds<'a>(
    data_type: &DataType,
    batches: impl Iterator<Item = &'a RecordBatch>,
    column: usize,
) -> Result<ColumnBounds> {
    let mut min = MinAccumulator::try_new(data_type)?;
    let mut max = MaxAccumulator::try_new(data_type)?;
    for batch in batches {
        let Some(values) = batch.columns().get(column) else {
            return plan_err!("a batch without column {column}");
        };
        let values = [values.clone()];
        min.update_batch(&values)?;
        max.update_batch(&values)?;
    }
    Ok(ColumnBounds {
        min: min.evaluate()?,
        max: max.evaluate()?,
    })
}

/// `plan` (subqueries included) with every aggregate this module answers replaced by its
/// literals, and every uncorrelated scalar subquery of a filter that became one of them by
/// its literal; with the values put in (none if nothing was answered).
///
/// The values tell one snapshot's plan from another's: for each aggregate of the plan in
/// turn, whether it was answered, then its literals. Two snapshots give the same values
/// only if they give the same plan, so a physical plan kept for a kept plan and its
/// parameters (`kept_physical`) may be kept for these values too.
pub(super) fn answer_from_bounds(plan: LogicalPlan) -> Result<(LogicalPlan, Vec<ScalarValue>)> {
    let mut values = Vec::new();
    let answered = plan.transform_up_with_subqueries(|node| {
        let LogicalPlan::Aggregate(aggregate) = &node else {
            return Ok(Transformed::no(node));
        };
        match literals(aggregate)? {
            Some((answered, put_in)) => {
                values.push(ScalarValue::Boolean(Some(true)));
                values.extend(put_in);
                Ok(Transformed::yes(answered))
            }
            None => {
                values.push(ScalarValue::Boolean(Some(false)));
                Ok(Transformed::no(node))
            }
        }
    })?;
    if !answered.transformed {
        return Ok((answered.data, Vec::new()));
    }
    let inlined = answered
        .data
        .transform_up_with_subqueries(inline_in_filter)?;
    Ok((inlined.data, values))
}

/// A filter whose uncorrelated scalar subqueries are one row of one literal, with the
/// literal in their place. DataFusion would run each as a pipeline of its own (a
/// `ScalarSubqueryExec`, whose result the filter reads from state no rebuild resets, so
/// the physical plan could not be kept) only to read that literal. Only in filters: a
/// predicate's value does not depend on its expressions' names, a projection's columns do.
fn inline_in_filter(node: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
    let LogicalPlan::Filter(filter) = node else {
        return Ok(Transformed::no(node));
    };
    let predicate = filter.predicate.clone().transform_up(|expr| {
        let Expr::ScalarSubquery(subquery) = &expr else {
            return Ok(Transformed::no(expr));
        };
        match one_literal(&subquery.subquery).filter(|_| subquery.outer_ref_columns.is_empty()) {
            Some(value) => Ok(Transformed::yes(Expr::Literal(value, None))),
            None => Ok(Transformed::no(expr)),
        }
    })?;
    if !predicate.transformed {
        return Ok(Transformed::no(LogicalPlan::Filter(filter)));
    }
    // The optimizer has run: fold what the literal made constant (`MAX(..) - INTERVAL '1
    // day'`), or the filter computes it again for every batch. No start time is given, so
    // nothing that reads the clock is folded (the optimizer folded `now()` already).
    let context = SimplifyContext::builder()
        .with_schema(filter.input.schema().clone())
        .build();
    let folded = ExprSimplifier::new(context).simplify(predicate.data)?;
    Ok(Transformed::yes(LogicalPlan::Filter(Filter::try_new(
        folded,
        filter.input,
    )?)))
}

/// The value of a plan that is one literal over one empty row (what `literals` makes of a
/// single `MIN` or `MAX`), if it is one.
fn one_literal(plan: &LogicalPlan) -> Option<ScalarValue> {
    let plan = match plan {
        LogicalPlan::SubqueryAlias(alias) => alias.input.as_ref(),
        plan => plan,
    };
    let LogicalPlan::Projection(projection) = plan else {
        return None;
    };
    let LogicalPlan::EmptyRelation(EmptyRelation {
        produce_one_row: true,
        ..
    }) = projection.input.as_ref()
    else {
        return None;
    };
    match projection.expr.as_slice() {
        [Expr::Alias(alias)] => match alias.expr.as_ref() {
            Expr::Literal(value, _) => Some(value.clone()),
            _ => None,
        },
        [Expr::Literal(value, _)] => Some(value.clone()),
        _ => None,
    }
}

/// `aggregate` as one row of literals, and the literals, if every aggregate of it is known.
fn literals(aggregate: &Aggregate) -> Result<Option<(LogicalPlan, Vec<ScalarValue>)>> {
    if !aggregate.group_expr.is_empty() {
        return Ok(None);
    }
    let LogicalPlan::TableScan(scan) = aggregate.input.as_ref() else {
        return Ok(None);
    };
    if !scan.filters.is_empty() || scan.fetch.is_some() {
        return Ok(None);
    }
    let fields = aggregate.schema.fields();
    let mut exprs = Vec::with_capacity(aggregate.aggr_expr.len());
    let mut values = Vec::with_capacity(aggregate.aggr_expr.len());
    for (expr, field) in aggregate.aggr_expr.iter().zip(fields.iter()) {
        let Some((is_max, column)) = min_max_of_column(expr, scan) else {
            return Ok(None);
        };
        let Some(bounds) = bounds_in_snapshot(scan, column) else {
            return Ok(None);
        };
        let value = if is_max { &bounds.max } else { &bounds.min };
        if &value.data_type() != field.data_type() {
            return Ok(None);
        }
        exprs.push(lit(value.clone()).alias(field.name()));
        values.push(value.clone());
    }
    let one_row = LogicalPlan::EmptyRelation(EmptyRelation {
        produce_one_row: true,
        schema: Arc::new(DFSchema::empty()),
    });
    let plan = LogicalPlan::Projection(Projection::try_new_with_schema(
        exprs,
        Arc::new(one_row),
        aggregate.schema.clone(),
    )?);
    Ok(Some((plan, values)))
}

/// The bounds of column `column` of the table `scan` reads, if it is a snapshot's spread
/// table (a lazily coalesced one once coalesced).
fn bounds_in_snapshot(scan: &TableScan, column: usize) -> Option<ColumnBounds> {
    let provider = source_as_provider(&scan.source).ok()?;
    if let Some(lazy) = provider.downcast_ref::<CoalescedTable>() {
        return lazy.coalesced()?.bounds(column).cloned();
    }
    provider
        .downcast_ref::<SpreadTable>()?
        .bounds(column)
        .cloned()
}

/// Whether `expr` is MAX (true) or MIN (false) of a plain column of `scan`, and the
/// table's index of that column; None for anything else.
fn min_max_of_column(expr: &Expr, scan: &TableScan) -> Option<(bool, usize)> {
    let Expr::AggregateFunction(AggregateFunction { func, params }) = expr else {
        return None;
    };
    let is_max = match func.name() {
        "max" => true,
        "min" => false,
        _ => return None,
    };
    if params.filter.is_some() || !params.order_by.is_empty() {
        return None;
    }
    let [Expr::Column(column)] = params.args.as_slice() else {
        return None;
    };
    let at = scan.projected_schema.index_of_column(column).ok()?;
    let column = match &scan.projection {
        Some(projection) => *projection.get(at)?,
        None => at,
    };
    Some((is_max, column))
}

#[cfg(test)]
mod tests;

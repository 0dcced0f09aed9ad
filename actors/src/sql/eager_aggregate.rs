//! Aggregates computed below joins with small tables ("eager aggregation": Yan and Larson,
//! VLDB 1995).
//!
//! Why: the papers' reports join a fleet-wide table to small static tables and group by
//! the static side (`SUM(l.hits) FROM load_info l, region_data r, continent_data c WHERE
//! l.georegion = r.id AND r.continent = c.continent GROUP BY c.continent_name`).
//! DataFusion probes both joins with every row of `load_info` (245,000 at 70,000 machines)
//! and then groups them by a string: 10.6 ms against DuckDB's 1.8 ms (BENCHMARKS.md, `sql`).
//! Summed by `georegion` first (an integer, a few dozen groups), the joins see a few dozen
//! rows.
//!
//! The rewrite, for an `Aggregate` whose aggregates are all SUM, COUNT, MIN or MAX (no
//! DISTINCT, FILTER or ORDER BY; COUNT only with a GROUP BY, since an empty input must
//! still count 0): going down from it through projections, filters and joins, each join
//! inner (or semi/anti, going down its kept side) with the other side small, the input
//! that holds every aggregate argument is replaced by a *partial* aggregate of it, grouped
//! by every column of it that anything above uses (join keys, join and `WHERE` filters,
//! computed projections, the `GROUP BY`). The aggregate above then combines the partial
//! results: SUM of sums, SUM of counts, MIN of minimums, MAX of maximums, under the
//! original names and types. This is exact whatever the join keys: all rows of a group
//! agree on every column the joins and filters look at, so a group's partial result meets
//! exactly the rows each of its rows met, as often.
//!
//! When it pays: the partial aggregate is one pass over the big input grouped by a few
//! columns; it saves every join above it a pass over that input and the final grouping
//! all but a few rows. It pays when the other sides are dimension tables, many times
//! smaller than the input ([`SMALLER_BY`]), so the join keys that matter take few values.
//! Between two fleet-wide tables (`processes` and `sys` on `machine_ip`) grouping first
//! costs as much as the join, so the rule does not go down such a join. Row counts come
//! from the snapshot (published and static tables); a view's are unknown, and a join
//! whose sides are not both known is left alone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, TableReference};
use datafusion::error::Result;
use datafusion::functions_aggregate::sum::sum_udaf;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{
    cast, Aggregate, Expr, Filter, Join, JoinType, LogicalPlan, Projection,
};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

/// A join's other side must be this many times smaller than the side the aggregate goes
/// down (both estimated as the larger of a join's inputs: the fleet's tables join on
/// `machine_ip`, a key of `sys`). `processes` is 12 times `sys`, `filesystem` 4 times:
/// grouping either by `machine_ip` first would cost what the join costs.
const SMALLER_BY: usize = 16;

/// The side the aggregate goes down must be at least this big: below it, the operators the
/// rewrite adds cost more than the rows they save (at 1,000 machines, `load_info`'s 3,500
/// rows: `paper_hits_per_continent` 0.98 → 1.04-1.11 ms, `report_disk_by_continent`
/// 1.82 → 2.12-2.37 ms; at 10,000 machines, 35,000 rows: 2.32 → 1.24 and 4.04 → 2.97 ms).
const PAYS_FROM_ROWS: usize = 10_000;

/// Prefix of the partial aggregates' columns.
const PARTIAL: &str = "__eager";

#[derive(Debug, Default)]
pub(crate) struct EagerAggregate {
    /// Rows of each table of the snapshot, by bare name.
    rows: Arc<HashMap<String, usize>>,
}

impl EagerAggregate {
    pub(crate) fn new(rows: HashMap<String, usize>) -> Self {
        EagerAggregate {
            rows: Arc::new(rows),
        }
    }
}

impl OptimizerRule for EagerAggregate {
    fn name(&self) -> &str {
        "eager_aggregate"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Aggregate(agg) = &plan else {
            return Ok(Transformed::no(plan));
        };
        match self.rewrite_aggregate(agg)? {
            Some(rewritten) => Ok(Transformed::yes(rewritten)),
            None => Ok(Transformed::no(plan)),
        }
    }
}

/// How an aggregate splits: computed below as `partial`, combined above by `combine`.
enum Split {
    /// SUM, MIN, MAX: the same function above.
    Same,
    /// COUNT: a SUM of the counts above.
    CountThenSum,
}

impl EagerAggregate {
    fn rewrite_aggregate(&self, agg: &Aggregate) -> Result<Option<LogicalPlan>> {
        // Most aggregates read one table: no join to go below, nothing more to look at.
        if agg.aggr_expr.is_empty()
            || !reaches_join(&agg.input)
            || agg
                .group_expr
                .iter()
                .any(|e| matches!(e, Expr::GroupingSet(_)))
        {
            return Ok(None);
        }
        let mut splits = Vec::with_capacity(agg.aggr_expr.len());
        let mut args = HashSet::new();
        for e in &agg.aggr_expr {
            let Expr::AggregateFunction(f) = e else {
                return Ok(None);
            };
            let p = &f.params;
            if p.distinct || p.filter.is_some() || !p.order_by.is_empty() {
                return Ok(None);
            }
            let split = match f.func.name() {
                "sum" | "min" | "max" => Split::Same,
                "count" if !agg.group_expr.is_empty() => Split::CountThenSum,
                _ => return Ok(None),
            };
            for a in &p.args {
                args.extend(a.column_refs().into_iter().cloned());
            }
            splits.push((f, split));
        }
        // The upper half of a split already: splitting it again would only stack partial
        // aggregates of partial aggregates.
        if args.iter().any(|c| c.name.starts_with(PARTIAL)) {
            return Ok(None);
        }
        let prefix = fresh_prefix(&agg.input)?;
        let mut partial = Vec::with_capacity(splits.len());
        let mut combine = Vec::with_capacity(splits.len());
        for (i, (f, split)) in splits.into_iter().enumerate() {
            let name = format!("{prefix}_{i}");
            partial.push(
                Expr::AggregateFunction(AggregateFunction::new_udf(
                    f.func.clone(),
                    f.params.args.clone(),
                    false,
                    None,
                    vec![],
                    f.params.null_treatment,
                ))
                .alias(name.clone()),
            );
            let outer = match split {
                Split::Same => f.func.clone(),
                Split::CountThenSum => sum_udaf(),
            };
            combine.push(Expr::AggregateFunction(AggregateFunction::new_udf(
                outer,
                vec![Expr::Column(Column::from_name(name))],
                false,
                None,
                vec![],
                None,
            )));
        }
        let used: HashSet<Column> = agg
            .group_expr
            .iter()
            .flat_map(|e| e.column_refs().into_iter().cloned())
            .collect();
        let push = Push {
            rows: &self.rows,
            args,
            partial,
        };
        let Some(input) = push.descend(&agg.input, &used, false)? else {
            return Ok(None);
        };
        let outer = Aggregate::try_new(Arc::new(input), agg.group_expr.clone(), combine)?;
        // The original names and types, so nothing above notices.
        let groups = agg.group_expr.len();
        let mut exprs = Vec::with_capacity(agg.schema.fields().len());
        for (idx, (q, field)) in agg.schema.iter().enumerate() {
            let (oq, ofield) = outer.schema.qualified_field(idx);
            let column = Expr::Column(Column::new(oq.cloned(), ofield.name()));
            if idx < groups {
                exprs.push(column);
                continue;
            }
            let typed = if ofield.data_type() == field.data_type() {
                column
            } else {
                cast(column, field.data_type().clone())
            };
            exprs.push(typed.alias_qualified(q.cloned(), field.name()));
        }
        let projection = Projection::try_new(exprs, Arc::new(LogicalPlan::Aggregate(outer)))?;
        Ok(Some(LogicalPlan::Projection(projection)))
    }
}

/// One aggregate being pushed down.
struct Push<'a> {
    rows: &'a HashMap<String, usize>,
    /// Columns the aggregates' arguments read.
    args: HashSet<Column>,
    /// The partial aggregates, aliased `__eager<n>_<i>`.
    partial: Vec<Expr>,
}

impl Push<'_> {
    /// `plan` rebuilt with the partial aggregate inside it, or `None` when it does not go
    /// below a join. `used`: columns that the nodes above `plan` read from it, other than
    /// through the aggregates' arguments; `crossed`: a join is above `plan` on the way.
    fn descend(
        &self,
        plan: &LogicalPlan,
        used: &HashSet<Column>,
        crossed: bool,
    ) -> Result<Option<LogicalPlan>> {
        if let Some(rebuilt) = self.through(plan, used, crossed)? {
            return Ok(Some(rebuilt));
        }
        // An aggregate already: grouping it again by its own keys would gain nothing.
        if !crossed || matches!(plan, LogicalPlan::Aggregate(_)) {
            return Ok(None);
        }
        let schema = plan.schema();
        let group: Vec<Expr> = schema
            .columns()
            .into_iter()
            .filter(|c| used.contains(c))
            .map(Expr::Column)
            .collect();
        // Without a group, an empty input still yields one row (COUNT 0, SUM NULL), which
        // the joins above would meet where the statement has no row at all.
        if group.is_empty() {
            return Ok(None);
        }
        let partial = Aggregate::try_new(Arc::new(plan.clone()), group, self.partial.clone())?;
        Ok(Some(LogicalPlan::Aggregate(partial)))
    }

    /// Goes down through a projection, a filter or a join; `None` when `plan` is none of
    /// these, or the partial aggregate cannot go below it.
    fn through(
        &self,
        plan: &LogicalPlan,
        used: &HashSet<Column>,
        crossed: bool,
    ) -> Result<Option<LogicalPlan>> {
        // Below a projection or filter that no join is under, grouping would only add
        // their columns to the groups: the partial aggregate goes above them.
        if !matches!(plan, LogicalPlan::Join(_)) && !reaches_join(plan) {
            return Ok(None);
        }
        match plan {
            LogicalPlan::Projection(p) => {
                // The arguments' columns must come through unchanged, to be read below.
                let passes = |c: &Column| {
                    p.expr
                        .iter()
                        .any(|e| matches!(e, Expr::Column(x) if x == c))
                };
                if !self.args.iter().all(passes) {
                    return Ok(None);
                }
                let mut used = used.clone();
                for e in &p.expr {
                    if !matches!(e, Expr::Column(_)) {
                        used.extend(e.column_refs().into_iter().cloned());
                    }
                }
                let Some(input) = self.descend(&p.input, &used, crossed)? else {
                    return Ok(None);
                };
                // Columns only the aggregates read are gone below; the partial results come up.
                let schema = input.schema().clone();
                let mut exprs: Vec<Expr> = p
                    .expr
                    .iter()
                    .filter(|e| e.column_refs().iter().all(|c| schema.has_column(c)))
                    .cloned()
                    .collect();
                exprs.extend(self.partial_columns());
                Ok(Some(LogicalPlan::Projection(Projection::try_new(
                    exprs,
                    Arc::new(input),
                )?)))
            }
            LogicalPlan::Filter(f) => {
                let mut used = used.clone();
                used.extend(f.predicate.column_refs().into_iter().cloned());
                let Some(input) = self.descend(&f.input, &used, crossed)? else {
                    return Ok(None);
                };
                Ok(Some(LogicalPlan::Filter(Filter::try_new(
                    f.predicate.clone(),
                    Arc::new(input),
                )?)))
            }
            LogicalPlan::Join(j) => self.through_join(j, used),
            _ => Ok(None),
        }
    }

    fn through_join(&self, j: &Join, used: &HashSet<Column>) -> Result<Option<LogicalPlan>> {
        let (left_ok, right_ok) = match j.join_type {
            JoinType::Inner => (true, true),
            JoinType::LeftSemi | JoinType::LeftAnti => (true, false),
            JoinType::RightSemi | JoinType::RightAnti => (false, true),
            _ => (false, false),
        };
        let holds = |side: &LogicalPlan| self.args.iter().all(|c| side.schema().has_column(c));
        let left_rows = estimate(&j.left, self.rows);
        let right_rows = estimate(&j.right, self.rows);
        let worth = |big: Option<usize>, small: Option<usize>| match (big, small) {
            (Some(big), Some(small)) => {
                big >= PAYS_FROM_ROWS && small.saturating_mul(SMALLER_BY) <= big
            }
            _ => false,
        };
        let go_left = left_ok && holds(&j.left) && worth(left_rows, right_rows);
        let go_right = right_ok && holds(&j.right) && worth(right_rows, left_rows);
        if !go_left && !go_right {
            return Ok(None);
        }
        let mut used = used.clone();
        for (l, r) in &j.on {
            used.extend(l.column_refs().into_iter().cloned());
            used.extend(r.column_refs().into_iter().cloned());
        }
        if let Some(f) = &j.filter {
            used.extend(f.column_refs().into_iter().cloned());
        }
        let (left, right) = if go_left {
            let Some(left) = self.descend(&j.left, &used, true)? else {
                return Ok(None);
            };
            (Arc::new(left), j.right.clone())
        } else {
            let Some(right) = self.descend(&j.right, &used, true)? else {
                return Ok(None);
            };
            (j.left.clone(), Arc::new(right))
        };
        Ok(Some(LogicalPlan::Join(Join::try_new(
            left,
            right,
            j.on.clone(),
            j.filter.clone(),
            j.join_type,
            j.join_constraint,
            j.null_equality,
            j.null_aware,
        )?)))
    }

    fn partial_columns(&self) -> impl Iterator<Item = Expr> + '_ {
        self.partial.iter().filter_map(|e| match e {
            Expr::Alias(a) => Some(Expr::Column(Column::from_name(a.name.clone()))),
            _ => None,
        })
    }
}

/// Whether a join is under `plan` and only projections and filters between.
fn reaches_join(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Join(_) => true,
        LogicalPlan::Projection(p) => reaches_join(&p.input),
        LogicalPlan::Filter(f) => reaches_join(&f.input),
        _ => false,
    }
}

/// Rows a plan yields at most, as far as the snapshot tells; a join is taken to yield as
/// many rows as its larger input (the fleet's joins are on keys of one side).
fn estimate(plan: &LogicalPlan, rows: &HashMap<String, usize>) -> Option<usize> {
    match plan {
        LogicalPlan::TableScan(scan) => {
            let n = match &scan.table_name {
                TableReference::Bare { table } => rows.get(table.as_ref()).copied()?,
                _ => return None,
            };
            Some(scan.fetch.map_or(n, |f| f.min(n)))
        }
        LogicalPlan::Projection(p) => estimate(&p.input, rows),
        LogicalPlan::Filter(f) => estimate(&f.input, rows),
        LogicalPlan::SubqueryAlias(s) => estimate(&s.input, rows),
        LogicalPlan::Sort(s) => {
            let n = estimate(&s.input, rows)?;
            Some(s.fetch.map_or(n, |f| f.min(n)))
        }
        LogicalPlan::Aggregate(a) if a.group_expr.is_empty() => Some(1),
        LogicalPlan::Aggregate(a) => estimate(&a.input, rows),
        LogicalPlan::Distinct(d) => estimate(d.input(), rows),
        LogicalPlan::Values(v) => Some(v.values.len()),
        LogicalPlan::EmptyRelation(e) => Some(usize::from(e.produce_one_row)),
        LogicalPlan::Join(j) => match j.join_type {
            JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => estimate(&j.left, rows),
            JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => {
                estimate(&j.right, rows)
            }
            _ => Some(estimate(&j.left, rows)?.max(estimate(&j.right, rows)?)),
        },
        _ => None,
    }
}

/// A prefix for the partial aggregates' columns that no column below already has: an
/// aggregate under this one may have been split already.
fn fresh_prefix(plan: &LogicalPlan) -> Result<String> {
    let mut taken = 0usize;
    plan.apply(|node| {
        for field in node.schema().fields() {
            if let Some(rest) = field.name().strip_prefix(PARTIAL) {
                let n = rest.split('_').next().and_then(|n| n.parse::<usize>().ok());
                taken = taken.max(n.map_or(0, |n| n + 1));
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(format!("{PARTIAL}{taken}"))
}

#[cfg(test)]
mod tests;

//! Joins on machine ids by direct lookup, where the probe side's columns pass through.
//!
//! A join on machine ids (`MachineKeyJoins`) typically probes a table of one row per
//! machine (`sys`, 70,000 rows) with a table of many (`processes`, 840,000), and nearly
//! every probe row matches once. DataFusion's hash join then still copies (`take`s) every
//! probe column of every output row, strings included, in the same order they came in: in
//! `report_top_rss_per_cluster` at 70,000 machines that copy of `machine_ip`, `procname`,
//! `pid` and `rss` was most of the join's time, to hand on columns that did not change.
//!
//! [`MachineIdJoinExec`] stands in for such a [`HashJoinExec`] (collected build side, one
//! equijoin key that is `__machine_id` on both sides, no limit, a join type whose output is
//! probe rows with or without build columns; a join filter only in an inner join). It
//! indexes the build side by id (an array over the dense ids, or a map where they are
//! sparse, with a chain through rows of equal ids), looks each probe row up, and makes the
//! output in parts of at most the session's batch size. Where the build ids are each on
//! one row and in an array, an inner join looks a part's rows up at once
//! (`Parts::unique_pairs`). Where a part's rows are probe rows each once and in order (in
//! an inner join: every row of a probe batch matching exactly one build row), it hands
//! their columns on as they are, taking only the build side's columns; otherwise it takes
//! by index as the hash join does. A join filter (`rss * 100 / memtotal > 75` in
//! `paper_dns_rss`) is evaluated on a part's pairs, reading the probe columns it needs as
//! they are where the rows run in order and taking the build side's; only the pairs it
//! keeps are made into rows. It keeps the hash join it replaced for its properties
//! (partitioning, order, equivalences, statistics), which its output shares: the same
//! rows, the probe's order kept.
//!
//! The hash join builds on its left side, which `JoinSelection` chose by estimated size.
//! Where that side repeats ids and the right side has each on one row (keyed so:
//! [`UNIQUE_IDS`]), the lookup join of an inner join builds on the right instead, when
//! both sides are one partition and no order is promised (`swaps`): then it is the left
//! side's columns that pass through.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, BooleanArray, RecordBatchOptions, UInt32Array,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::{concat_batches, filter, take};
use datafusion::arrow::datatypes::{SchemaRef, UInt32Type};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::utils::memory::RecordBatchMemoryCounter;
use datafusion::common::{
    internal_err, DataFusionError, JoinSide, JoinType, NullEquality, Result, Statistics,
};
use datafusion::config::ConfigOptions;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::utils::JoinFilter;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::limit::{GlobalLimitExec, LocalLimitExec};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, Time,
};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildStats, DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties,
    InputDistributionRequirements, PlanProperties, SendableRecordBatchStream, StatisticsArgs,
};
use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt, TryFutureExt, TryStreamExt};

use super::{MACHINE_ID, UNIQUE_IDS};
use crate::sql::physical_rules::replace_each;

/// The build side's one computation, awaited by every output partition.
type SharedBuild =
    Shared<BoxFuture<'static, std::result::Result<Arc<Build>, Arc<DataFusionError>>>>;

/// No row: the end of a chain, or an id no build row has.
const NONE: u32 = u32::MAX;

/// Ids are indexed in an array while it has at most this many slots per build row (plus a
/// floor for small build sides); sparser ids, such as a column of that name in a table of
/// a user's own, go to a map.
const DENSE_SLOTS_PER_ROW: usize = 4;
const DENSE_SLOTS_FLOOR: usize = 1 << 16;

/// Replaces each hash join that [`MachineIdJoinExec`] can stand for.
#[derive(Debug, Default)]
pub(crate) struct LookupJoinsOnMachineIds;

impl PhysicalOptimizerRule for LookupJoinsOnMachineIds {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        replace_each(plan, |join: &HashJoinExec| {
            Ok(MachineIdJoinExec::stand_in(join, None)?
                .map(|lookup| Arc::new(lookup) as Arc<dyn ExecutionPlan>))
        })
    }

    fn name(&self) -> &str {
        "LookupJoinsOnMachineIds"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A collected-build-side join on machine ids that hands unchanged probe columns on.
#[derive(Debug)]
pub struct MachineIdJoinExec {
    /// The hash join this stands for: its children, keys, projection and properties.
    join: Arc<HashJoinExec>,
    /// The side it builds on: the hash join's left, or its right where an inner join of
    /// two single partitions has ids each on one row there and not on the left (`swaps`).
    build_side: JoinSide,
    /// The key's column in the hash join's left and right inputs.
    left_key: usize,
    right_key: usize,
    /// Each output column: its side of the hash join and its index in that side's input.
    output: Vec<(JoinSide, usize)>,
    /// The build side, indexed once and shared by every output partition: the first
    /// partition to run starts it, every partition awaits the same result (an error too),
    /// and it goes on while any of them still waits.
    build: Arc<OnceLock<SharedBuild>>,
    metrics: ExecutionPlanMetricsSet,
}

impl MachineIdJoinExec {
    /// The lookup join that answers as `join` does, if it is of the kind this handles;
    /// built on the side `swaps` chooses, or on `kept`'s where it still may be (new
    /// children: wrapped for time slicing, which `unique_ids` does not read through).
    fn stand_in(join: &HashJoinExec, kept: Option<JoinSide>) -> Result<Option<MachineIdJoinExec>> {
        let handled = matches!(
            join.join_type(),
            JoinType::Inner | JoinType::Right | JoinType::RightSemi | JoinType::RightAnti
        );
        if !handled
            || *join.partition_mode() != PartitionMode::CollectLeft
            || join.left().output_partitioning().partition_count() != 1
            || !filter_handled(join)
            || join.fetch().is_some()
            || join.null_aware
            || join.null_equality() != NullEquality::NullEqualsNothing
            || join.on().len() != 1
        {
            return Ok(None);
        }
        let (left, right) = &join.on()[0];
        let (Some(left_key), Some(right_key)) = (
            id_column(left.as_ref(), &join.left().schema()),
            id_column(right.as_ref(), &join.right().schema()),
        ) else {
            return Ok(None);
        };
        let (left_width, right_width) = (
            join.left().schema().fields().len(),
            join.right().schema().fields().len(),
        );
        let mut joined: Vec<(JoinSide, usize)> = Vec::new();
        if matches!(join.join_type(), JoinType::Inner | JoinType::Right) {
            joined.extend((0..left_width).map(|i| (JoinSide::Left, i)));
        }
        joined.extend((0..right_width).map(|i| (JoinSide::Right, i)));
        let output = match &join.projection {
            None => joined,
            Some(projection) => {
                let mut output = Vec::with_capacity(projection.len());
                for &i in projection.iter() {
                    match joined.get(i) {
                        Some(&column) => output.push(column),
                        None => return Ok(None),
                    }
                }
                output
            }
        };
        if output.len() != join.schema().fields().len() {
            return Ok(None);
        }
        let on_the_right = may_swap(join)
            && match kept {
                Some(side) => side == JoinSide::Right,
                None => swaps(join, left_key, right_key),
            };
        let build_side = if on_the_right {
            JoinSide::Right
        } else {
            JoinSide::Left
        };
        let join = join.builder().build()?;
        Ok(Some(MachineIdJoinExec {
            join: Arc::new(join),
            build_side,
            left_key,
            right_key,
            output,
            build: Arc::new(OnceLock::new()),
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }
}

/// Whether the join's filter, if any, is one the lookup join evaluates: only in an inner
/// join (whose pairs the filter keeps or drops one by one; an outer, semi or anti join
/// would have to know whether any of a probe row's pairs passed, across parts), and on
/// columns of either side.
fn filter_handled(join: &HashJoinExec) -> bool {
    join.filter().is_none_or(|filter| {
        *join.join_type() == JoinType::Inner
            && filter
                .column_indices()
                .iter()
                .all(|c| matches!(c.side, JoinSide::Left | JoinSide::Right))
    })
}

/// Whether to build on the hash join's right side rather than its left: where the right
/// side's ids are each on one row and the left side's are not (two network interfaces
/// per machine against `sys`), the other way round every probe row matches once and its
/// columns pass through.
fn swaps(join: &HashJoinExec, left_key: usize, right_key: usize) -> bool {
    !unique_ids(join.left(), left_key) && unique_ids(join.right(), right_key)
}

/// Whether the same answer may come building on the right: only for an inner join (whose
/// output holds both sides' rows alike), only when both sides are one partition (the
/// build side is collected whole), and only when the hash join promises no order (the
/// output then comes in its left side's order).
fn may_swap(join: &HashJoinExec) -> bool {
    *join.join_type() == JoinType::Inner
        && join.right().output_partitioning().partition_count() == 1
        && join.properties().output_ordering().is_none()
}

/// Whether `plan`'s column `column` holds ids each on at most one row: a keyed copy's id
/// column marked so at keying ([`UNIQUE_IDS`]), read through operators that keep a subset
/// of rows (filters, limits) or move them (projections of the column, repartitions,
/// sorts), none of which repeats one.
fn unique_ids(plan: &Arc<dyn ExecutionPlan>, column: usize) -> bool {
    if let Some(projection) = plan.downcast_ref::<ProjectionExec>() {
        return projection
            .expr()
            .get(column)
            .and_then(|p| (p.expr.as_ref() as &dyn std::any::Any).downcast_ref::<Column>())
            .is_some_and(|c| unique_ids(projection.input(), c.index()));
    }
    if let Some(filter) = plan.downcast_ref::<FilterExec>() {
        let column = match filter.projection() {
            Some(projection) => match projection.get(column) {
                Some(&c) => c,
                None => return false,
            },
            None => column,
        };
        return unique_ids(filter.input(), column);
    }
    if plan.downcast_ref::<DataSourceExec>().is_some() {
        return plan.schema().fields().get(column).is_some_and(|f| {
            f.metadata().get(UNIQUE_IDS.0).map(String::as_str) == Some(UNIQUE_IDS.1)
        });
    }
    let same_rows_or_fewer = plan.downcast_ref::<CoalescePartitionsExec>().is_some()
        || plan.downcast_ref::<RepartitionExec>().is_some()
        || plan.downcast_ref::<CooperativeExec>().is_some()
        || plan.downcast_ref::<SortExec>().is_some()
        || plan.downcast_ref::<SortPreservingMergeExec>().is_some()
        || plan.downcast_ref::<GlobalLimitExec>().is_some()
        || plan.downcast_ref::<LocalLimitExec>().is_some();
    match plan.children().as_slice() {
        [input] if same_rows_or_fewer => unique_ids(input, column),
        _ => false,
    }
}

/// The index of `expr` in `schema` if it is a column named [`MACHINE_ID`] of `u32`s.
fn id_column(expr: &dyn PhysicalExpr, schema: &SchemaRef) -> Option<usize> {
    let column = (expr as &dyn std::any::Any).downcast_ref::<Column>()?;
    let field = schema.fields().get(column.index())?;
    (field.name() == MACHINE_ID
        && field.data_type() == &datafusion::arrow::datatypes::DataType::UInt32)
        .then_some(column.index())
}

impl DisplayAs for MachineIdJoinExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (left, right) = (self.join.left().schema(), self.join.right().schema());
        let names: Vec<String> = self
            .output
            .iter()
            .map(|&(side, i)| {
                let schema = if side == JoinSide::Left {
                    &left
                } else {
                    &right
                };
                format!("{}@{side}", schema.field(i).name())
            })
            .collect();
        write!(
            f,
            "MachineIdJoinExec: join_type={:?}, on=({MACHINE_ID}@{}, {MACHINE_ID}@{}), output=[{}]{}",
            self.join.join_type(),
            self.left_key,
            self.right_key,
            names.join(", "),
            match self.build_side {
                JoinSide::Right => ", build=right",
                _ => "",
            }
        )?;
        if let Some(filter) = self.join.filter() {
            write!(f, ", filter={}", filter.expression())?;
        }
        Ok(())
    }
}

impl ExecutionPlan for MachineIdJoinExec {
    fn name(&self) -> &str {
        "MachineIdJoinExec"
    }

    fn schema(&self) -> SchemaRef {
        self.join.schema()
    }

    /// The hash join's: the same rows, in the probe side's order.
    fn properties(&self) -> &Arc<PlanProperties> {
        self.join.properties()
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        self.join.input_distribution_requirements()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        match self.build_side {
            JoinSide::Right => vec![true, false],
            _ => self.join.maintains_input_order(),
        }
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![self.join.left(), self.join.right()]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.join.apply_expressions(f)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let join = self.join.builder().with_new_children(children)?.build()?;
        match MachineIdJoinExec::stand_in(&join, Some(self.build_side))? {
            Some(lookup) => Ok(Arc::new(lookup)),
            None => Ok(Arc::new(join)),
        }
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        self.join.child_stats_requests(partition)
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        self.join.statistics_from_inputs(input_stats, args)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let ((build_input, build_key), (probe_input, probe_key)) = match self.build_side {
            JoinSide::Right => (
                (self.join.right(), self.right_key),
                (self.join.left(), self.left_key),
            ),
            _ => (
                (self.join.left(), self.left_key),
                (self.join.right(), self.right_key),
            ),
        };
        let probe = probe_input.execute(partition, context.clone())?;
        let metrics = JoinMetrics {
            build_time: MetricBuilder::new(&self.metrics).subset_time("build_time", partition),
            build_rows: MetricBuilder::new(&self.metrics).counter("build_input_rows", partition),
            passed: MetricBuilder::new(&self.metrics).counter("probe_batches_passed", partition),
            baseline: BaselineMetrics::new(&self.metrics, partition),
        };
        let probing = Arc::new(Probing {
            probe_key,
            build_side: self.build_side,
            output: self.output.clone(),
            join_type: *self.join.join_type(),
            filter: self.join.filter().cloned(),
            schema: self.schema(),
            batch_size: context.session_config().batch_size().max(1),
        });
        let build = self
            .build
            .get_or_init(|| {
                Build::collect(build_input.clone(), build_key, context, metrics.clone())
                    .map_err(Arc::new)
                    .boxed()
                    .shared()
            })
            .clone();
        // The build side first (once for all partitions), then each probe batch in turn,
        // in parts of at most the session's batch size.
        let stream = futures::stream::once(async move {
            let build = build.await.map_err(DataFusionError::Shared)?;
            if !build.has_keys() && probing.join_type.empty_build_side_produces_empty_result() {
                // Nothing can match: the probe side is not read.
                return Ok(futures::stream::empty().boxed());
            }
            let joined = probe.map(move |batch| -> Result<_> {
                let parts = Parts {
                    build: build.clone(),
                    probe: batch?,
                    probing: probing.clone(),
                    metrics: metrics.clone(),
                    next_row: 0,
                    pending: NONE,
                };
                Ok(futures::stream::iter(parts))
            });
            Ok::<_, DataFusionError>(joined.try_flatten().boxed())
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            stream,
        )))
    }
}

#[derive(Clone)]
struct JoinMetrics {
    build_time: Time,
    build_rows: Count,
    /// Output batches whose probe columns went on as they came (not copied).
    passed: Count,
    baseline: BaselineMetrics,
}

/// The build side, concatenated and indexed by id.
struct Build {
    batch: RecordBatch,
    /// The first row of each id.
    first: First,
    /// Each row's next row of the same id, in input order; `None` where no id repeats.
    next: Option<Vec<u32>>,
    _reservation: MemoryReservation,
}

enum First {
    Dense(Vec<u32>),
    Sparse(HashMap<u32, u32>),
}

impl First {
    fn get(&self, id: u32) -> u32 {
        match self {
            First::Dense(rows) => rows.get(id as usize).copied().unwrap_or(NONE),
            First::Sparse(rows) => rows.get(&id).copied().unwrap_or(NONE),
        }
    }
}

impl Build {
    /// Whether any build row has an id (one that is not NULL).
    fn has_keys(&self) -> bool {
        match &self.first {
            First::Dense(slots) => !slots.is_empty(),
            First::Sparse(map) => !map.is_empty(),
        }
    }

    async fn collect(
        input: Arc<dyn ExecutionPlan>,
        key: usize,
        context: Arc<TaskContext>,
        metrics: JoinMetrics,
    ) -> Result<Arc<Build>> {
        let reservation =
            MemoryConsumer::new("MachineIdJoinExec[build]").register(context.memory_pool());
        let mut stream = input.execute(0, context)?;
        let mut batches = Vec::new();
        // Buffers shared by several batches (slices of one) counted once.
        let mut counter = RecordBatchMemoryCounter::new();
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            reservation.try_grow(counter.count_batch(&batch))?;
            batches.push(batch);
        }
        let _timer = metrics.build_time.timer();
        let batch = concat_batches(&input.schema(), &batches)?;
        reservation.try_grow(batch.get_array_memory_size())?;
        drop(batches);
        reservation.shrink(counter.memory_usage());
        metrics.build_rows.add(batch.num_rows());
        let rows = u32::try_from(batch.num_rows())
            .ok()
            .filter(|&n| n < NONE)
            .map_or_else(
                || internal_err!("MachineIdJoinExec: build side too large"),
                Ok,
            )?;
        let ids = batch.column(key).as_primitive::<UInt32Type>();
        let max = ids.iter().flatten().max();
        let dense = max.is_some_and(|m| {
            (m as usize) < (rows as usize * DENSE_SLOTS_PER_ROW).max(DENSE_SLOTS_FLOOR)
        });
        let mut first = if dense {
            let slots = max.map_or(0, |m| m as usize + 1);
            reservation.try_grow(slots * 4)?;
            First::Dense(vec![NONE; slots])
        } else {
            reservation.try_grow(rows as usize * 12)?;
            First::Sparse(HashMap::with_capacity(rows as usize))
        };
        let mut next: Option<Vec<u32>> = None;
        // Backwards, so each chain runs in input order.
        for row in (0..rows).rev() {
            if ids.is_null(row as usize) {
                continue;
            }
            let id = ids.value(row as usize);
            let slot = match &mut first {
                First::Dense(slots) => &mut slots[id as usize],
                First::Sparse(map) => map.entry(id).or_insert(NONE),
            };
            if *slot != NONE {
                let chain = match &mut next {
                    Some(chain) => chain,
                    None => {
                        reservation.try_grow(rows as usize * 4)?;
                        next.insert(vec![NONE; rows as usize])
                    }
                };
                chain[row as usize] = *slot;
            }
            *slot = row;
        }
        Ok(Arc::new(Build {
            batch,
            first,
            next,
            _reservation: reservation,
        }))
    }
}

/// What each probe batch is joined with, shared by a partition's batches.
struct Probing {
    probe_key: usize,
    /// The hash join's side `output` takes from the build side; the other is the probe.
    build_side: JoinSide,
    output: Vec<(JoinSide, usize)>,
    join_type: JoinType,
    /// An inner join's filter on its candidate pairs (`filter_handled`).
    filter: Option<JoinFilter>,
    schema: SchemaRef,
    batch_size: usize,
}

/// One probe batch's output, made a part at a time (at most the session's batch size of
/// rows), so that ids repeated on both sides never build more than a part at once.
struct Parts {
    build: Arc<Build>,
    probe: RecordBatch,
    probing: Arc<Probing>,
    metrics: JoinMetrics,
    /// The probe row the next part starts from.
    next_row: usize,
    /// The build row `next_row` goes on with when the last part ended within its
    /// matches; `NONE` when it starts afresh.
    pending: u32,
}

impl Iterator for Parts {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Result<RecordBatch>> {
        let elapsed = self.metrics.baseline.elapsed_compute().clone();
        let _timer = elapsed.timer();
        // A part is empty where none of its rows matched or the filter kept none of its
        // pairs: none is sent. Each part moves on by at least one probe row or one pair,
        // so this ends.
        while self.next_row < self.probe.num_rows() {
            match self.part() {
                Ok(batch) if batch.num_rows() == 0 => continue,
                Ok(batch) => {
                    self.metrics.baseline.record_output(batch.num_rows());
                    return Some(Ok(batch));
                }
                Err(e) => {
                    // Nothing after an error.
                    self.next_row = self.probe.num_rows();
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

impl Parts {
    /// The next part: its rows' build and probe rows, then their columns.
    fn part(&mut self) -> Result<RecordBatch> {
        let start = self.next_row;
        let (build_rows, matched, probe_rows) = match self.unique_pairs() {
            Some((build_rows, probe_rows)) => (build_rows, None, probe_rows),
            None => self.pairs(),
        };
        let mut build_rows = UInt32Array::new(build_rows.into(), matched.map(NullBuffer::from));
        let mut probe_rows = UInt32Array::from(probe_rows);
        let mut rows = Rows {
            start,
            whole: runs_in_order(&probe_rows, start),
            build: &build_rows,
            probe: &probe_rows,
        };
        if let (Some(filter), false) = (&self.probing.filter, probe_rows.is_empty()) {
            let kept = self.filter_pairs(filter, &rows)?;
            if kept.true_count() < probe_rows.len() {
                build_rows = filter_rows(&build_rows, &kept)?;
                probe_rows = filter_rows(&probe_rows, &kept)?;
                rows = Rows {
                    start,
                    whole: runs_in_order(&probe_rows, start),
                    build: &build_rows,
                    probe: &probe_rows,
                };
            }
        }
        if rows.whole && !rows.probe.is_empty() {
            self.metrics.passed.add(1);
        }
        let columns = self
            .probing
            .output
            .iter()
            .map(|&(side, i)| self.column(side, i, &rows))
            .collect::<Result<Vec<_>>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(rows.probe.len()));
        Ok(RecordBatch::try_new_with_options(
            self.probing.schema.clone(),
            columns,
            &options,
        )?)
    }

    /// A part's pairs the general way, a probe row at a time along the chains of
    /// repeated ids: their build rows (for a right join, which of them matched: a NULL
    /// build row where not) and their probe rows.
    fn pairs(&mut self) -> (Vec<u32>, Option<Vec<bool>>, Vec<u32>) {
        let (n, limit) = (self.probe.num_rows(), self.probing.batch_size);
        let join_type = self.probing.join_type;
        let ids = self
            .probe
            .column(self.probing.probe_key)
            .as_primitive::<UInt32Type>();
        let build = &self.build;
        let start = self.next_row;
        let mut build_rows: Vec<u32> = Vec::with_capacity(limit.min(n - start));
        // A right join's probe rows that match nothing get a NULL build row.
        let mut matched: Option<Vec<bool>> =
            (join_type == JoinType::Right).then(|| Vec::with_capacity(limit.min(n - start)));
        let mut probe_rows: Vec<u32> = Vec::with_capacity(limit.min(n - start));
        while self.next_row < n && probe_rows.len() < limit {
            let i = self.next_row;
            let fresh = self.pending == NONE;
            let mut row = if !fresh {
                std::mem::replace(&mut self.pending, NONE)
            } else if ids.is_null(i) {
                NONE
            } else {
                build.first.get(ids.value(i))
            };
            match join_type {
                JoinType::RightSemi | JoinType::RightAnti => {
                    if (row != NONE) == (join_type == JoinType::RightSemi) {
                        probe_rows.push(i as u32);
                    }
                }
                _ => {
                    if let (true, NONE, Some(matched)) = (fresh, row, &mut matched) {
                        build_rows.push(0);
                        matched.push(false);
                        probe_rows.push(i as u32);
                    }
                    while row != NONE {
                        if probe_rows.len() == limit {
                            // The rest of this row's matches start the next part.
                            self.pending = row;
                            break;
                        }
                        build_rows.push(row);
                        if let Some(matched) = &mut matched {
                            matched.push(true);
                        }
                        probe_rows.push(i as u32);
                        row = build.next.as_ref().map_or(NONE, |next| next[row as usize]);
                    }
                }
            }
            if self.pending == NONE {
                self.next_row += 1;
            }
        }
        (build_rows, matched, probe_rows)
    }

    /// A part's pairs at once, where an inner join's build ids are each on one row and
    /// indexed in an array: each probe row's build row is one load, and the rows that
    /// match none are dropped after (none, mostly). In `report_top_rss_per_cluster` at
    /// 70,000 machines the join's time fell from 12-15 to 6-8 ms, most of what is left
    /// being the take of `cluster` (BENCHMARKS.md, "Where we stand").
    fn unique_pairs(&mut self) -> Option<(Vec<u32>, Vec<u32>)> {
        let First::Dense(slots) = &self.build.first else {
            return None;
        };
        // `pending` is only ever set along a chain of repeated ids, which `next` would
        // hold; checked all the same, so that a part never skips a row's matches.
        if self.probing.join_type != JoinType::Inner
            || self.build.next.is_some()
            || self.pending != NONE
        {
            return None;
        }
        let ids = self
            .probe
            .column(self.probing.probe_key)
            .as_primitive::<UInt32Type>();
        let start = self.next_row;
        let end = (start + self.probing.batch_size).min(self.probe.num_rows());
        let row_of = |id: u32| slots.get(id as usize).copied().unwrap_or(NONE);
        let mut build_rows: Vec<u32> = ids.values()[start..end]
            .iter()
            .map(|&id| row_of(id))
            .collect();
        if let Some(nulls) = ids.nulls() {
            for (k, row) in build_rows.iter_mut().enumerate() {
                if nulls.is_null(start + k) {
                    *row = NONE;
                }
            }
        }
        self.next_row = end;
        let mut probe_rows: Vec<u32> = (start as u32..end as u32).collect();
        if build_rows.contains(&NONE) {
            let matched = |k: &usize| build_rows[*k] != NONE;
            probe_rows = (0..build_rows.len())
                .filter(matched)
                .map(|k| (start + k) as u32)
                .collect();
            build_rows.retain(|&row| row != NONE);
        }
        Some((build_rows, probe_rows))
    }

    /// Which of a part's pairs the join's filter keeps (a NULL keeps none). Its columns
    /// come as the output's do ([`Parts::column`]).
    fn filter_pairs(&self, filter: &JoinFilter, rows: &Rows<'_>) -> Result<BooleanArray> {
        let columns = filter
            .column_indices()
            .iter()
            .map(|c| self.column(c.side, c.index, rows))
            .collect::<Result<Vec<_>>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(rows.probe.len()));
        let pairs = RecordBatch::try_new_with_options(filter.schema().clone(), columns, &options)?;
        let kept = filter
            .expression()
            .evaluate(&pairs)?
            .into_array(pairs.num_rows())?;
        match kept.as_boolean_opt() {
            Some(kept) => Ok(kept.clone()),
            None => internal_err!(
                "MachineIdJoinExec: the join filter gave {}, not booleans",
                kept.data_type()
            ),
        }
    }

    /// Column `i` of the hash join's side `side` at a part's rows: the build side's taken
    /// by index (all NULL for a right join's empty build side); the probe side's as it is
    /// where the rows run in order, taken by index otherwise.
    fn column(&self, side: JoinSide, i: usize, rows: &Rows<'_>) -> Result<ArrayRef> {
        let (build, n) = (&self.build.batch, rows.probe.len());
        Ok(match side == self.probing.build_side {
            // Only a right join gets here: every build row NULL.
            true if build.num_rows() == 0 => new_null_array(build.schema().field(i).data_type(), n),
            true => take(build.column(i).as_ref(), rows.build, None)?,
            _ if rows.whole && rows.start == 0 && n == self.probe.num_rows() => {
                self.probe.column(i).clone()
            }
            _ if rows.whole => self.probe.column(i).slice(rows.start, n),
            _ => take(self.probe.column(i).as_ref(), rows.probe, None)?,
        })
    }
}

/// A part's pairs: the build row and the probe row of each.
struct Rows<'a> {
    /// The probe row the part started from.
    start: usize,
    /// The probe rows are each once and in order from `start`: their columns pass as they
    /// are.
    whole: bool,
    build: &'a UInt32Array,
    probe: &'a UInt32Array,
}

/// Whether `probe_rows` are the rows from `start` on, each once and in order (as many rows
/// as came in is not enough: in an inner join one row may match twice and another not).
fn runs_in_order(probe_rows: &UInt32Array, start: usize) -> bool {
    probe_rows
        .values()
        .iter()
        .enumerate()
        .all(|(k, &row)| row as usize == start + k)
}

/// The rows of `rows` that `kept` keeps.
fn filter_rows(rows: &UInt32Array, kept: &BooleanArray) -> Result<UInt32Array> {
    Ok(filter(rows, kept)?.as_primitive::<UInt32Type>().clone())
}

#[cfg(test)]
mod tests;

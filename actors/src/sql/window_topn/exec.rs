//! [`TopKPerPartitionExec`]: the k first rows of each window partition, in the window's
//! order, without sorting the whole input.
//!
//! Each batch's partition keys are interned to group indexes as a hash aggregate does
//! (vectorized, no hash map lookup per row), each run of equal keys once where they come
//! in runs. Each row's first order key alone is encoded (an integer key as a `u128` that
//! orders as it sorts, any other with arrow's row format) and compared with the k smallest
//! its group has seen: once a group is full, most rows sort after them and are turned
//! away there. Only the rows left
//! are encoded whole (partition keys, then order keys: bytes that compare as the rows
//! sort) and placed among their group's best k, kept sorted. At 70,000 machines
//! (`report_top_rss_per_cluster`: a top 3 of 840,000 rows in 1,400 groups) that took it
//! from 26 to 14 ms (its `elapsed_compute` under `BENCH_NARROW=1
//! BENCH_EXPLAIN=report_top_rss_per_cluster cargo bench --bench sql`). Rows live in their
//! input batches until the end; when few of the retained rows are still kept, the kept
//! ones are copied into one batch and the rest is freed. The output is the kept rows
//! sorted by their whole key, as the window above expects; a partial one's
//! ([`TopKMode::Partial`]) is unordered and, where it would keep most rows, partly
//! passed through as it came.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, UInt32Array};
use datafusion::arrow::compute::kernels::cast::cast;
use datafusion::arrow::compute::{interleave_record_batch, partition, take, SortOptions};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{internal_err, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{
    EquivalenceProperties, LexOrdering, PhysicalExpr, PhysicalSortExpr,
};
use datafusion::physical_plan::aggregates::group_values::{new_group_values, GroupValues};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use datafusion::physical_plan::execution_plan::{
    apply_expression_roots, Boundedness, EmissionType,
};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;

/// Below this many retained batches nothing is compacted: copying costs more than it frees.
const COMPACT_AFTER_BATCHES: usize = 16;

/// The mean run of equal partition keys from which a batch's runs are interned once each
/// (`Groups::intern`).
const MIN_RUN: usize = 4;

/// A batch smaller than this is interned row by row and says nothing of the runs to come
/// (a table's or a repartition's last few rows).
const MIN_JUDGED_ROWS: usize = 64;

/// A partial top-k keeps going while it keeps at most half the rows it has seen; it is
/// judged from this many rows on (before, most of its groups are still filling).
const PARTIAL_JUDGED_ROWS: usize = 16_384;

/// Where a [`TopKPerPartitionExec`] stands in the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopKMode {
    /// Each output partition holds whole window partitions: its rows are the answer,
    /// sorted by partition and order keys, as the window above expects.
    Final,
    /// Below the repartition that feeds a final one, on whatever partitioning comes in:
    /// any row of a window partition's k first overall is among the k first of that
    /// window partition's rows in its input partition, so only those need to cross the
    /// repartition. Unordered, and a pass-through where it would not keep fewer rows.
    Partial,
}

#[derive(Debug)]
pub struct TopKPerPartitionExec {
    input: Arc<dyn ExecutionPlan>,
    /// Partition keys, then order keys.
    expr: LexOrdering,
    partition_len: usize,
    k: usize,
    mode: TopKMode,
    properties: Arc<PlanProperties>,
    /// Output rows and compute time, for EXPLAIN ANALYZE.
    metrics: ExecutionPlanMetricsSet,
}

impl TopKPerPartitionExec {
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        expr: LexOrdering,
        partition_len: usize,
        k: usize,
        mode: TopKMode,
    ) -> Result<Self> {
        if k == 0 || partition_len == 0 || partition_len > expr.len() {
            return internal_err!("TopKPerPartitionExec needs k > 0 and partition keys");
        }
        let eq = match mode {
            TopKMode::Final => {
                let mut eq = input.equivalence_properties().clone();
                eq.reorder(expr.clone())?;
                eq
            }
            TopKMode::Partial => EquivalenceProperties::new(input.schema()),
        };
        let properties = PlanProperties::new(
            eq,
            input.output_partitioning().clone(),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(TopKPerPartitionExec {
            input,
            expr,
            partition_len,
            k,
            mode,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    pub fn mode(&self) -> TopKMode {
        self.mode
    }

    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }

    /// The same top-k, in `mode`, over `input`.
    pub fn over(&self, input: Arc<dyn ExecutionPlan>, mode: TopKMode) -> Result<Self> {
        Self::try_new(input, self.expr.clone(), self.partition_len, self.k, mode)
    }

    fn partition_exprs(&self) -> Vec<Arc<dyn PhysicalExpr>> {
        self.expr[..self.partition_len]
            .iter()
            .map(|e| e.expr.clone())
            .collect()
    }
}

impl DisplayAs for TopKPerPartitionExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |exprs: &[PhysicalSortExpr]| {
            exprs
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        write!(
            f,
            "TopKPerPartitionExec: {}k={}, partition=[{}], order=[{}]",
            match self.mode {
                TopKMode::Final => "",
                TopKMode::Partial => "mode=Partial, ",
            },
            self.k,
            show(&self.expr[..self.partition_len]),
            show(&self.expr[self.partition_len..]),
        )
    }
}

impl ExecutionPlan for TopKPerPartitionExec {
    fn name(&self) -> &str {
        "TopKPerPartitionExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![match self.mode {
            TopKMode::Final => Distribution::KeyPartitioned(self.partition_exprs()),
            TopKMode::Partial => Distribution::UnspecifiedDistribution,
        }]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        apply_expression_roots(self.expr.iter().map(|e| &e.expr), f)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = crate::sql::time_slice::only_child(children, "TopKPerPartitionExec")?;
        Ok(Arc::new(self.over(input, self.mode)?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context.clone())?;
        let schema = self.input.schema();
        let reservation = MemoryConsumer::new(format!("TopKPerPartitionExec[{partition}]"))
            .register(&context.runtime_env().memory_pool);
        let groups = Groups::try_new(&schema, &self.expr, self.partition_len, self.k, reservation)?;
        // Only a partial one passes rows through; EXPLAIN ANALYZE shows how many.
        let passed = (self.mode == TopKMode::Partial)
            .then(|| MetricBuilder::new(&self.metrics).counter("passed_rows", partition));
        let run = Run {
            input,
            groups: Some(groups),
            passed,
            out: VecDeque::new(),
            batch_size: context.session_config().batch_size().max(1),
            baseline: BaselineMetrics::new(&self.metrics, partition),
            ended: false,
        };
        let out = futures::stream::unfold(run, |mut run| async move {
            let next = run.next().await;
            next.map(|batch| (batch, run))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, out)))
    }
}

/// One output partition's execution: the input's batches into `groups`, then the kept
/// rows out; a partial one that stops reducing hands what it kept on and passes the
/// rest through.
struct Run {
    input: SendableRecordBatchStream,
    /// `None` once emitted.
    groups: Option<Groups>,
    /// Rows passed through, if partial.
    passed: Option<Count>,
    out: VecDeque<RecordBatch>,
    batch_size: usize,
    baseline: BaselineMetrics,
    /// After an error or the last batch: polled again, it gives nothing more (a failed
    /// partial one would otherwise pass the rest of its input through).
    ended: bool,
}

impl Run {
    async fn next(&mut self) -> Option<Result<RecordBatch>> {
        if self.ended {
            return None;
        }
        let next = self.step().await;
        self.ended = matches!(next, None | Some(Err(_)));
        next
    }

    async fn step(&mut self) -> Option<Result<RecordBatch>> {
        loop {
            if let Some(batch) = self.out.pop_front() {
                self.baseline.record_output(batch.num_rows());
                return Some(Ok(batch));
            }
            let batch = match self.input.next().await {
                Some(Ok(batch)) => batch,
                Some(Err(e)) => return Some(Err(e)),
                None => match self.emit() {
                    Ok(()) if self.out.is_empty() => return None,
                    Ok(()) => continue,
                    Err(e) => return Some(Err(e)),
                },
            };
            let Some(groups) = self.groups.as_mut() else {
                if let Some(passed) = &self.passed {
                    passed.add(batch.num_rows());
                }
                self.baseline.record_output(batch.num_rows());
                return Some(Ok(batch));
            };
            let timer = self.baseline.elapsed_compute().timer();
            let inserted = groups.insert(batch);
            let reduces = groups.reduces();
            timer.done();
            if let Err(e) = inserted {
                return Some(Err(e));
            }
            if self.passed.is_some() && !reduces {
                if let Err(e) = self.emit() {
                    return Some(Err(e));
                }
            }
        }
    }

    /// The kept rows into `out`, the groups and their memory dropped.
    fn emit(&mut self) -> Result<()> {
        if let Some(groups) = self.groups.take() {
            let _timer = self.baseline.elapsed_compute().timer();
            self.out.extend(groups.emit(self.batch_size)?);
        }
        Ok(())
    }
}

/// One kept row: its whole sort key and where it is.
struct Kept {
    key: Box<[u8]>,
    batch: usize,
    row: usize,
}

/// One window partition's best rows, ascending by key, at most k.
#[derive(Default)]
struct Group {
    kept: Vec<Kept>,
    /// The k smallest encodings of the first order key seen, ascending (repeats count):
    /// the k-th is the first order key of the k-th kept row. Row encodings, or integers
    /// where the key is one ([`FirstKeys::Integers`]): one of the two stays empty.
    firsts: Vec<Box<[u8]>>,
    integer_firsts: Vec<u128>,
}

impl Group {
    /// Whether a row whose first order key encodes as `first` can enter: no if the group
    /// has k rows whose first order key sorts before it (then so do their whole keys:
    /// arrow's row encodings compare as their values and none is a prefix of another).
    /// Counts it among the k smallest if it may, and says by how many bytes they grew.
    fn may_take(&mut self, k: usize, first: &[u8]) -> Option<isize> {
        enter(&mut self.firsts, k, first, |f| f.into(), |f| f.len())
    }

    /// [`Group::may_take`] for a first order key encoded as an integer.
    fn may_take_integer(&mut self, k: usize, first: u128) -> Option<isize> {
        enter(&mut self.integer_firsts, k, &first, |f| *f, |_| 16)
    }
}

/// `first` among the k smallest `firsts` (ascending, repeats counted), if it is one: the
/// bytes they grew by (`len` of each), or None when k of them sort before it.
fn enter<T: std::borrow::Borrow<B>, B: Ord + ?Sized>(
    firsts: &mut Vec<T>,
    k: usize,
    first: &B,
    owned: impl FnOnce(&B) -> T,
    len: impl Fn(&T) -> usize,
) -> Option<isize> {
    if firsts.len() == k && firsts.last().is_some_and(|last| first > last.borrow()) {
        return None;
    }
    let at = firsts.partition_point(|f| f.borrow() <= first);
    let first = owned(first);
    let grown = len(&first);
    firsts.insert(at, first);
    let mut freed = 0;
    if firsts.len() > k {
        freed = firsts.pop().map_or(0, |f| len(&f));
    }
    Some(grown as isize - freed as isize)
}

/// How each row's first order key is made comparable, to turn most rows away before
/// their whole key is encoded.
enum FirstKeys {
    /// An integer key (dates and timestamps too: any type arrow casts to `Int64` as it
    /// orders) as a `u128` that orders as the key sorts, NULLs and direction included:
    /// no row encoding, no allocation per row, one comparison. In a flat profile of
    /// `report_top_rss_per_cluster` (`rss`, 840,000 rows) the encoding and the byte
    /// comparisons were about a quarter of the statement's samples (ARCHITECTURE.md).
    Integers(SortOptions),
    /// Any other key in arrow's row format.
    Rows(RowConverter),
}

impl FirstKeys {
    fn new(data_type: &DataType, options: SortOptions) -> Result<Self> {
        let integer = matches!(
            data_type,
            DataType::Int8
                | DataType::Int16
                | DataType::Int32
                | DataType::Int64
                | DataType::UInt8
                | DataType::UInt16
                | DataType::UInt32
                | DataType::Date32
                | DataType::Date64
                | DataType::Timestamp(_, _)
        );
        Ok(if integer {
            FirstKeys::Integers(options)
        } else {
            FirstKeys::Rows(RowConverter::new(vec![SortField::new_with_options(
                data_type.clone(),
                options,
            )])?)
        })
    }
}

/// Each value of an integer column as a `u128` that orders as the column sorts under
/// `options`: NULLs all equal, before or after every value; values by their two's
/// complement with the sign bit flipped (so that unsigned order is signed order),
/// inverted when descending.
fn integer_keys(column: &ArrayRef, options: SortOptions) -> Result<Vec<u128>> {
    let values = cast(column, &DataType::Int64)?;
    let values = values.as_primitive::<Int64Type>();
    let (null, value_base): (u128, u128) = match options.nulls_first {
        true => (0, 1 << 64),
        false => (1 << 64, 0),
    };
    let key = |v: i64| {
        let ordered = (v as u64) ^ (1 << 63);
        let ordered = if options.descending {
            !ordered
        } else {
            ordered
        };
        value_base | ordered as u128
    };
    let mut keys: Vec<u128> = values.values().iter().map(|&v| key(v)).collect();
    if let Some(nulls) = values.nulls() {
        for (i, k) in keys.iter_mut().enumerate() {
            if nulls.is_null(i) {
                *k = null;
            }
        }
    }
    Ok(keys)
}

/// The best k rows of every partition seen so far, for one input partition.
struct Groups {
    /// Partition keys, then order keys.
    sort_exprs: Vec<Arc<dyn PhysicalExpr>>,
    partition_len: usize,
    /// Partition keys → group index, vectorized as in a hash aggregate.
    group_values: Box<dyn GroupValues>,
    /// The first order key alone, to turn most rows away before encoding their whole key.
    first_keys: Option<FirstKeys>,
    sort_rows: RowConverter,
    k: usize,
    /// By group index.
    groups: Vec<Group>,
    /// Scratch: each row's group index.
    group_of: Vec<usize>,
    /// Whether to intern runs of equal partition keys once (`intern`); off for the rest
    /// of the input once a batch's runs were too short to pay for finding them.
    runs: bool,
    batches: Vec<RecordBatch>,
    /// Rows inserted.
    seen_rows: usize,
    retained_rows: usize,
    /// Arrow memory of `batches`, kept as they come and go (not summed per batch).
    retained_bytes: usize,
    kept_rows: usize,
    key_bytes: usize,
    reservation: MemoryReservation,
}

impl Groups {
    fn try_new(
        schema: &SchemaRef,
        expr: &LexOrdering,
        partition_len: usize,
        k: usize,
        reservation: MemoryReservation,
    ) -> Result<Self> {
        let field = |e: &PhysicalSortExpr| -> Result<SortField> {
            Ok(SortField::new_with_options(
                e.expr.data_type(schema)?,
                e.options,
            ))
        };
        let partition_schema = Arc::new(Schema::new(
            expr[..partition_len]
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    Ok(Field::new(
                        format!("p{i}"),
                        e.expr.data_type(schema)?,
                        e.expr.nullable(schema)?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?,
        ));
        let first_keys = match expr.get(partition_len) {
            Some(e) => Some(FirstKeys::new(&e.expr.data_type(schema)?, e.options)?),
            None => None,
        };
        let sort_fields = expr.iter().map(field).collect::<Result<Vec<_>>>()?;
        Ok(Groups {
            sort_exprs: expr.iter().map(|e| e.expr.clone()).collect(),
            partition_len,
            group_values: new_group_values(partition_schema, &GroupOrdering::None)?,
            first_keys,
            sort_rows: RowConverter::new(sort_fields)?,
            k,
            groups: Vec::new(),
            group_of: Vec::new(),
            runs: true,
            batches: Vec::new(),
            seen_rows: 0,
            retained_rows: 0,
            retained_bytes: 0,
            kept_rows: 0,
            key_bytes: 0,
            reservation,
        })
    }

    fn insert(&mut self, batch: RecordBatch) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        self.seen_rows += n;
        // Evaluated once: the partition keys are the first `partition_len` of them.
        let sort_columns = self
            .sort_exprs
            .iter()
            .map(|e| e.evaluate(&batch).and_then(|v| v.into_array(n)))
            .collect::<Result<Vec<_>>>()?;
        let partition_len = self.partition_len;
        self.intern(&sort_columns[..partition_len], n)?;
        self.groups
            .resize_with(self.group_values.len(), Group::default);
        // Rows that may enter their group, judged by their first order key alone.
        // The first order key's column, where there is one (`first_keys` is `Some`).
        let first = || &sort_columns[partition_len..partition_len + 1];
        let mut candidates = Vec::new();
        let mut judge = |row: usize, grown: Option<isize>| {
            if let Some(grown) = grown {
                self.key_bytes = self.key_bytes.saturating_add_signed(grown);
                candidates.push(row as u32);
            }
        };
        match &self.first_keys {
            Some(FirstKeys::Integers(options)) => {
                let firsts = integer_keys(&first()[0], *options)?;
                for (row, &key) in firsts.iter().enumerate() {
                    let group = &mut self.groups[self.group_of[row]];
                    judge(row, group.may_take_integer(self.k, key));
                }
            }
            Some(FirstKeys::Rows(first_rows)) => {
                let firsts = first_rows.convert_columns(first())?;
                for row in 0..n {
                    let group = &mut self.groups[self.group_of[row]];
                    judge(row, group.may_take(self.k, firsts.row(row).as_ref()));
                }
            }
            None => candidates.extend(0..n as u32),
        }
        if candidates.is_empty() {
            return self.reservation.try_resize(self.size());
        }
        let indices = UInt32Array::from(candidates);
        let taken = sort_columns
            .iter()
            .map(|c| take(c.as_ref(), &indices, None))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let keys = self.sort_rows.convert_columns(&taken)?;
        let index = self.batches.len();
        let mut used = false;
        for (i, &row) in indices.values().iter().enumerate() {
            let row = row as usize;
            let key = keys.row(i);
            let key = key.as_ref();
            let group = &mut self.groups[self.group_of[row]];
            let full = group.kept.len() == self.k;
            if full && group.kept.last().is_some_and(|last| key >= &*last.key) {
                continue;
            }
            // After its equals: the first of equal rows stays first.
            let at = group.kept.partition_point(|kept| &*kept.key <= key);
            if full {
                if let Some(out) = group.kept.pop() {
                    self.key_bytes -= out.key.len();
                    self.kept_rows -= 1;
                }
            }
            self.key_bytes += key.len();
            self.kept_rows += 1;
            group.kept.insert(
                at,
                Kept {
                    key: key.into(),
                    batch: index,
                    row,
                },
            );
            used = true;
        }
        if used {
            self.retained_rows += n;
            self.retained_bytes += batch.get_array_memory_size();
            self.batches.push(batch);
        }
        if self.batches.len() > COMPACT_AFTER_BATCHES && self.retained_rows > 4 * self.kept_rows {
            self.compact()?;
        }
        self.reservation.try_resize(self.size())
    }

    /// Each row's group index into `group_of`, in the order a hash aggregate's interning
    /// gives them. Rows often come in runs of one partition key (a join's output in the
    /// order of its probe side: every process of a machine, the machines of a cluster
    /// together, carry the same `cluster`), so each run's first row alone is interned when
    /// runs average at least `MIN_RUN` rows: comparing neighbours costs less than hashing
    /// and looking up every row (at 70,000 machines, 840,000 rows in runs of about 600).
    fn intern(&mut self, keys: &[ArrayRef], n: usize) -> Result<()> {
        if self.runs && n >= MIN_JUDGED_ROWS {
            // A key type arrow cannot compare neighbours of is interned row by row.
            let runs = partition(keys)
                .ok()
                .filter(|runs| runs.len() * MIN_RUN <= n);
            if let Some(runs) = runs {
                let ranges = runs.ranges();
                let heads = UInt32Array::from_iter_values(ranges.iter().map(|r| r.start as u32));
                let head_keys = keys
                    .iter()
                    .map(|k| take(k.as_ref(), &heads, None))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                let mut head_groups = Vec::with_capacity(ranges.len());
                self.group_values.intern(&head_keys, &mut head_groups)?;
                self.group_of.clear();
                for (range, group) in ranges.iter().zip(head_groups) {
                    self.group_of
                        .extend(std::iter::repeat_n(group, range.len()));
                }
                return Ok(());
            }
            self.runs = false;
        }
        self.group_values.intern(keys, &mut self.group_of)
    }

    /// Whether it keeps few enough of the rows it has seen for a partial top-k to be worth
    /// its work (`PARTIAL_JUDGED_ROWS`).
    fn reduces(&self) -> bool {
        self.seen_rows < PARTIAL_JUDGED_ROWS || self.kept_rows * 2 <= self.seen_rows
    }

    /// Copies the kept rows into one batch and frees the rest.
    fn compact(&mut self) -> Result<()> {
        let mut kept: Vec<&mut Kept> = self.groups.iter_mut().flat_map(|g| &mut g.kept).collect();
        let at: Vec<(usize, usize)> = kept.iter().map(|k| (k.batch, k.row)).collect();
        let refs: Vec<&RecordBatch> = self.batches.iter().collect();
        let one = interleave_record_batch(&refs, &at)?;
        for (i, k) in kept.iter_mut().enumerate() {
            k.batch = 0;
            k.row = i;
        }
        self.retained_rows = one.num_rows();
        self.retained_bytes = one.get_array_memory_size();
        self.batches = vec![one];
        Ok(())
    }

    fn size(&self) -> usize {
        self.retained_bytes
            + self.key_bytes
            + self.kept_rows * std::mem::size_of::<Kept>()
            + self.groups.capacity() * std::mem::size_of::<Group>()
            + self.group_of.capacity() * std::mem::size_of::<usize>()
            + self.group_values.size()
    }

    /// The kept rows sorted by partition, then order, in batches of `batch_size`.
    fn emit(self, batch_size: usize) -> Result<Vec<RecordBatch>> {
        let mut kept: Vec<Kept> = self.groups.into_iter().flat_map(|g| g.kept).collect();
        kept.sort_by(|a, b| a.key.cmp(&b.key));
        let refs: Vec<&RecordBatch> = self.batches.iter().collect();
        let at: Vec<(usize, usize)> = kept.iter().map(|k| (k.batch, k.row)).collect();
        if at.is_empty() {
            return Ok(vec![]);
        }
        let out = at
            .chunks(batch_size)
            .map(|chunk| interleave_record_batch(&refs, chunk))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Int64Array, StringArray};
    use datafusion::arrow::compute::SortOptions;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryPool};
    use datafusion::physical_expr::expressions::col;

    /// Groups keeping the top 3 by `v` (an integer) descending, per `g` of type `key`,
    /// reserving from the pool returned.
    fn top_3(key: DataType) -> (SchemaRef, Arc<dyn MemoryPool>, Groups) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("g", key, true),
            Field::new("v", DataType::Int64, false),
        ]));
        let desc = SortOptions {
            descending: true,
            nulls_first: true,
        };
        let expr = LexOrdering::new(vec![
            PhysicalSortExpr::new_default(col("g", &schema).expect("g")),
            PhysicalSortExpr::new(col("v", &schema).expect("v"), desc),
        ])
        .expect("ordering");
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(1 << 30));
        let reservation = MemoryConsumer::new("test").register(&pool);
        let groups = Groups::try_new(&schema, &expr, 1, 3, reservation).expect("groups");
        (schema, pool, groups)
    }

    #[test]
    fn keeps_the_first_k_of_each_partition_and_frees_what_it_no_longer_keeps() {
        let (schema, pool, mut groups) = top_3(DataType::Int64);
        // v grows batch by batch: every batch replaces what the earlier ones kept.
        for b in 0..40i64 {
            let g = Int64Array::from_iter_values((0..100).map(|i| i % 10));
            let v = Int64Array::from_iter_values((0..100).map(|i| b * 100 + i));
            let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(g), Arc::new(v)])
                .expect("batch");
            groups.insert(batch).expect("insert");
            assert!(groups.batches.len() <= COMPACT_AFTER_BATCHES + 1);
        }
        assert!(pool.reserved() > 0);
        // Keys change every row: interned row by row.
        assert!(!groups.runs);
        let out = groups.emit(8).expect("emit");
        let col = |b: &RecordBatch, i: usize| {
            let a = b.column(i).as_any().downcast_ref::<Int64Array>().cloned();
            a.map(|a| a.values().to_vec()).unwrap_or_default()
        };
        let g: Vec<i64> = out.iter().flat_map(|b| col(b, 0)).collect();
        let v: Vec<i64> = out.iter().flat_map(|b| col(b, 1)).collect();
        let want_g: Vec<i64> = (0..10).flat_map(|g| [g, g, g]).collect();
        let want_v: Vec<i64> = (0..10)
            .flat_map(|g| [3990 + g, 3980 + g, 3970 + g])
            .collect();
        assert_eq!((g, v), (want_g, want_v));
        assert!(out.iter().all(|b| b.num_rows() <= 8));
    }

    /// An integer first order key's `u128`s compare as arrow's row encodings of it do, for
    /// either direction and NULLs either side, signed and unsigned, at the extremes;
    /// other types keep the row encoding.
    #[test]
    fn integer_first_keys_compare_as_their_row_encodings() {
        use datafusion::arrow::array::{
            Date32Array, Date64Array, Int32Array, Int8Array, TimestampMicrosecondArray,
            UInt16Array, UInt32Array,
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![
                Some(i64::MIN),
                Some(-5),
                None,
                Some(-1),
                Some(0),
                Some(1),
                Some(7),
                Some(i64::MAX),
                None,
                Some(-5),
            ])),
            Arc::new(Int8Array::from(vec![
                Some(i8::MIN),
                None,
                Some(i8::MAX),
                Some(-1),
            ])),
            Arc::new(UInt16Array::from(vec![
                Some(u16::MAX),
                Some(0),
                None,
                Some(9),
            ])),
            Arc::new(Date32Array::from(vec![
                Some(-719_162),
                None,
                Some(20_000),
                Some(0),
            ])),
            Arc::new(Date64Array::from(vec![
                Some(i64::MIN),
                None,
                Some(86_400_000),
                Some(-1),
            ])),
            Arc::new(Int32Array::from(vec![
                Some(i32::MIN),
                Some(3),
                None,
                Some(-3),
                Some(i32::MAX),
            ])),
            Arc::new(UInt32Array::from(vec![
                Some(u32::MAX),
                Some(0),
                None,
                Some(5),
            ])),
            Arc::new(TimestampMicrosecondArray::from(vec![
                Some(-1_000),
                None,
                Some(5),
                Some(0),
            ])),
        ];
        for column in &columns {
            for (descending, nulls_first) in
                [(false, false), (false, true), (true, false), (true, true)]
            {
                let options = SortOptions {
                    descending,
                    nulls_first,
                };
                assert!(matches!(
                    FirstKeys::new(column.data_type(), options),
                    Ok(FirstKeys::Integers(_))
                ));
                let keys = integer_keys(column, options).expect("keys");
                let rows = RowConverter::new(vec![SortField::new_with_options(
                    column.data_type().clone(),
                    options,
                )])
                .and_then(|c| c.convert_columns(std::slice::from_ref(column)))
                .expect("rows");
                for i in 0..column.len() {
                    for j in 0..column.len() {
                        assert_eq!(
                            keys[i].cmp(&keys[j]),
                            rows.row(i).cmp(&rows.row(j)),
                            "{:?} rows {i}, {j}, {options:?}",
                            column.data_type()
                        );
                    }
                }
            }
        }
        for other in [DataType::UInt64, DataType::Float64, DataType::Utf8] {
            assert!(matches!(
                FirstKeys::new(&other, SortOptions::default()),
                Ok(FirstKeys::Rows(_))
            ));
        }
    }

    #[tokio::test]
    async fn an_input_error_ends_the_output() {
        let (schema, _pool, groups) = top_3(DataType::Int64);
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(Int64Array::from(vec![5, 6])),
            ],
        )
        .expect("batch");
        let items = vec![
            Err(datafusion::error::DataFusionError::Execution(
                "broken".into(),
            )),
            Ok(batch),
        ];
        let input: SendableRecordBatchStream = Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::iter(items),
        ));
        let metrics = ExecutionPlanMetricsSet::new();
        // Partial: once failed, it neither passes rows through nor emits what it kept.
        let mut run = Run {
            input,
            groups: Some(groups),
            passed: Some(MetricBuilder::new(&metrics).counter("passed_rows", 0)),
            out: VecDeque::new(),
            batch_size: 8,
            baseline: BaselineMetrics::new(&metrics, 0),
            ended: false,
        };
        assert!(matches!(run.next().await, Some(Err(_))));
        assert!(run.next().await.is_none());
    }

    #[test]
    fn runs_of_one_key_are_interned_once_and_short_runs_row_by_row() {
        let (schema, _pool, mut groups) = top_3(DataType::Utf8);
        // Keys in runs of 25 rows across batch ends (a run of NULLs every fifth), a batch
        // too small to judge by, then keys changing every row; values all distinct, in no
        // order.
        let key = |r: i64, runs: bool| {
            let run = if runs { r / 25 } else { r };
            (run % 5 != 0).then(|| format!("c{}", run % 7))
        };
        let mut all: Vec<(Option<String>, i64)> = Vec::new();
        for b in 0..13i64 {
            let runs = b < 11;
            let len = if b == 5 { 3 } else { 100 };
            let rows: Vec<(Option<String>, i64)> = (0..len)
                .map(|i| {
                    let r = b * 100 + i;
                    (key(r, runs), r * 7919 % 100_003)
                })
                .collect();
            let g = StringArray::from_iter(rows.iter().map(|(g, _)| g.as_deref()));
            let v = Int64Array::from_iter_values(rows.iter().map(|(_, v)| *v));
            let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(g), Arc::new(v)])
                .expect("batch");
            groups.insert(batch).expect("insert");
            all.extend(rows);
            assert_eq!(groups.runs, runs, "after batch {b}");
        }
        let out = groups.emit(1000).expect("emit");
        let got: Vec<(Option<String>, i64)> = out
            .iter()
            .flat_map(|b| {
                let g = b.column(0).as_any().downcast_ref::<StringArray>().cloned();
                let v = b.column(1).as_any().downcast_ref::<Int64Array>().cloned();
                let (g, v) = (g.expect("strings"), v.expect("integers"));
                (0..b.num_rows())
                    .map(move |i| (g.is_valid(i).then(|| g.value(i).to_string()), v.value(i)))
            })
            .collect();
        // NULL first, then the keys ascending; in each, the 3 largest values, descending.
        all.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut want: Vec<(Option<String>, i64)> = Vec::new();
        for row in all {
            if want.iter().filter(|w| w.0 == row.0).count() < 3 {
                want.push(row);
            }
        }
        assert_eq!(got, want);
    }
}

//! A table held in batches of about `COALESCE_ROWS` rows dealt over the cores
//! ([`partitioned`]), scanned on every partition by a wide session and as one partition by
//! a one-partition session (`Snapshot`'s narrow state): a plan over a two-partition scan
//! with one target partition still merges, and hash-repartitions into one partition below
//! a window or an aggregate (about 10 ms for 840,000 rows), which a busy node must not
//! spend.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef};
use datafusion::arrow::compute::concat;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::catalog::{MemTable, Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use super::engine::SINGLE_PARTITION_ROWS;
use super::whole_table_min_max::{bounds_of, ColumnBounds};

/// The same batches two ways (the batches are shared, not copied), and the bounds of their
/// columns (`whole_table_min_max`).
#[derive(Debug)]
pub(crate) struct SpreadTable {
    wide: MemTable,
    /// Every batch in one partition; absent when `wide` is one partition already.
    narrow: Option<MemTable>,
    /// Per column of the schema.
    bounds: Vec<Option<ColumnBounds>>,
    /// The batches made by copying, each with the input batches it was made from (their
    /// positions), in order: what the next generation's copy may reuse ([`Before`]).
    copied: Vec<Copied>,
    /// What making those batches copied, and what they share with the copy before.
    pub(crate) copy_bytes: CopyBytes,
}

/// Bytes of a coalesced copy's columns: made anew, or shared with the copy before.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyBytes {
    pub copied: usize,
    pub shared: usize,
}

impl std::ops::AddAssign for CopyBytes {
    fn add_assign(&mut self, other: Self) {
        self.copied += other.copied;
        self.shared += other.shared;
    }
}

/// A batch of the copy made from the input batches at `from`.
#[derive(Debug)]
struct Copied {
    from: Range<usize>,
    batch: RecordBatch,
}

/// A table's copy in the snapshot served while the next is built, and the batches it was
/// made from. A column of the new copy whose input arrays are the very arrays the old
/// copy's batch was made from (the same allocations: a part unchanged, or a patch that left
/// the column alone, `link::diff::patch::apply`) is that batch's column, not a new copy:
/// between generations a fleet's names and addresses stay and its counters move, so most
/// of a copy's bytes are shared with the last rather than held twice while both serve.
/// The old inputs are alive as long as `batches` is borrowed (the old snapshot holds its
/// generation), so no new array can have an old one's address.
pub(crate) struct Before<'a> {
    pub table: &'a SpreadTable,
    pub batches: Vec<&'a RecordBatch>,
}

impl Before<'_> {
    /// The old batch made from exactly the inputs at `from`, with those inputs.
    fn copied(&self, from: &Range<usize>) -> Option<(&RecordBatch, &[&RecordBatch])> {
        let at = self
            .table
            .copied
            .binary_search_by_key(&from.start, |c| c.from.start)
            .ok()?;
        let old = &self.table.copied[at];
        let inputs = self.batches.get(from.clone())?;
        (old.from == *from).then_some((&old.batch, inputs))
    }
}

impl SpreadTable {
    /// `bounds`: per column of `schema`.
    fn new(
        schema: SchemaRef,
        parts: Vec<Vec<RecordBatch>>,
        bounds: Vec<Option<ColumnBounds>>,
    ) -> DfResult<Self> {
        let narrow = if parts.len() > 1 {
            let one: Vec<RecordBatch> = parts.iter().flatten().cloned().collect();
            Some(MemTable::try_new(schema.clone(), vec![one])?)
        } else {
            None
        };
        Ok(SpreadTable {
            wide: MemTable::try_new(schema, parts)?,
            narrow,
            bounds,
            copied: Vec::new(),
            copy_bytes: CopyBytes::default(),
        })
    }

    /// The smallest and largest value of column `column` over every row, if known.
    pub(super) fn bounds(&self, column: usize) -> Option<&ColumnBounds> {
        self.bounds.get(column)?.as_ref()
    }

    /// The same partitions, every batch through `f` (`machine_keys`' keyed copy, which
    /// appends columns and keeps the others, and so their bounds); None if `f` gives none
    /// for one.
    pub(super) fn map_batches(
        &self,
        schema: SchemaRef,
        mut f: impl FnMut(&RecordBatch) -> Option<RecordBatch>,
    ) -> Option<SpreadTable> {
        let parts = self
            .wide_partitions()?
            .iter()
            .map(|p| p.iter().map(&mut f).collect::<Option<Vec<_>>>())
            .collect::<Option<Vec<_>>>()?;
        debug_assert!(
            self.wide
                .schema()
                .fields()
                .iter()
                .zip(schema.fields())
                .all(|(a, b)| a.name() == b.name()),
            "a mapped table appends columns and keeps the others"
        );
        let mut bounds = self.bounds.clone();
        bounds.resize(schema.fields().len(), None);
        SpreadTable::new(schema, parts, bounds).ok()
    }

    /// The batches made by copying (tests of what a snapshot shares).
    #[cfg(test)]
    pub(crate) fn copied_batches(&self) -> Vec<RecordBatch> {
        self.copied.iter().map(|c| c.batch.clone()).collect()
    }

    /// The partitions a wide scan reads (shared batches); None if one is being written,
    /// which nothing does.
    fn wide_partitions(&self) -> Option<Vec<Vec<RecordBatch>>> {
        self.wide
            .batches
            .iter()
            .map(|p| p.try_read().ok().map(|b| b.clone()))
            .collect()
    }
}

#[async_trait]
impl TableProvider for SpreadTable {
    fn schema(&self) -> SchemaRef {
        self.wide.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let table = match &self.narrow {
            Some(narrow) if state.config().target_partitions() == 1 => narrow,
            _ => &self.wide,
        };
        table.scan(state, projection, filters, limit).await
    }
}

/// Spreads a table's batches over `partitions` so scans run on every core. A table made of
/// many small parts (one per machine at a proxy or TLA) is coalesced into batches of about
/// `COALESCE_ROWS`: executing thousands of tiny batches costs more than copying them once.
/// A batch larger than that (a table published or loaded whole: `queryd demo`, an edge, a
/// Parquet static table) is cut into zero-copy slices of `COALESCE_ROWS`, so it too is
/// spread rather than scanned on one partition and dealt round-robin by the plan.
/// A table of at most `SINGLE_PARTITION_ROWS` rows (`rows`) is one partition.
pub(super) fn partitioned<'a>(
    schema: SchemaRef,
    batches: impl Iterator<Item = &'a RecordBatch>,
    partitions: usize,
    rows: usize,
) -> DfResult<SpreadTable> {
    let batches: Vec<&RecordBatch> = batches.collect();
    partitioned_after(schema, &batches, partitions, rows, None)
}

/// [`partitioned`], reusing the columns of `before`'s copy that the same inputs made.
pub(super) fn partitioned_after(
    schema: SchemaRef,
    batches: &[&RecordBatch],
    partitions: usize,
    rows: usize,
    before: Option<&Before<'_>>,
) -> DfResult<SpreadTable> {
    let partitions = if rows <= SINGLE_PARTITION_ROWS {
        1
    } else {
        partitions
    };
    let before = before.filter(|b| *b.table.schema() == *schema);
    // Runs of consecutive inputs (their positions) to copy into one batch, or one slice.
    let mut groups: Vec<Group> = Vec::new();
    let mut open_rows = COALESCE_ROWS;
    for (i, b) in batches.iter().enumerate() {
        if b.num_rows() == 0 {
            continue;
        }
        if b.num_rows() >= COALESCE_ROWS {
            groups.extend(slices(b, COALESCE_ROWS).into_iter().map(Group::Slice));
            open_rows = COALESCE_ROWS;
            continue;
        }
        if open_rows >= COALESCE_ROWS {
            groups.push(Group::Run(i..i));
            open_rows = 0;
        }
        open_rows += b.num_rows();
        if let Some(Group::Run(run)) = groups.last_mut() {
            run.end = i + 1;
        }
    }
    let n = partitions.clamp(1, groups.len().max(1));
    let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); n];
    let mut copied = Vec::new();
    let mut copy_bytes = CopyBytes::default();
    // Each run is copied apart from the others: a whole fleet's table (70,000 parts) on
    // every core, not one (a SQL node's cold start waited 0.5 s here on one thread).
    let made = crate::threads::map_weighted(
        groups,
        |g| match g {
            Group::Run(run) => run.len(),
            Group::Slice(_) => 1,
        },
        |group| -> DfResult<(RecordBatch, Option<Range<usize>>, CopyBytes)> {
            let mut bytes = CopyBytes::default();
            Ok(match group {
                Group::Slice(slice) => (slice, None, bytes),
                Group::Run(run) => match &batches[run.clone()] {
                    [one] => ((*one).clone(), None, bytes),
                    many => {
                        let old = before.and_then(|b| b.copied(&run));
                        let batch = copy_run(&schema, many, old, &mut bytes)?;
                        (batch, Some(run), bytes)
                    }
                },
            })
        },
    );
    for (i, made) in made.into_iter().enumerate() {
        let (batch, from, bytes) = made?;
        copy_bytes += bytes;
        if let Some(from) = from {
            copied.push(Copied {
                from,
                batch: batch.clone(),
            });
        }
        parts[i % n].push(batch);
    }
    let bounds = bounds_of(&schema, parts.iter().flatten());
    let mut table = SpreadTable::new(schema, parts, bounds)?;
    table.copied = copied;
    table.copy_bytes = copy_bytes;
    Ok(table)
}

/// What `partitioned_after` makes one batch of.
enum Group {
    /// Inputs at these positions (empty ones among them skipped), copied into one batch.
    Run(Range<usize>),
    /// A zero-copy slice of one large input.
    Slice(RecordBatch),
}

/// One batch of `inputs`' rows: each column the old batch's (`old`: made from inputs at the
/// same positions) when every input's array of it is the one the old batch was made from,
/// otherwise the inputs' arrays concatenated. Counts the bytes of both kinds in `bytes`.
fn copy_run(
    schema: &SchemaRef,
    inputs: &[&RecordBatch],
    old: Option<(&RecordBatch, &[&RecordBatch])>,
    bytes: &mut CopyBytes,
) -> DfResult<RecordBatch> {
    let same = |a: &ArrayRef, b: &ArrayRef| std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b));
    let rows = inputs.iter().map(|b| b.num_rows()).sum();
    let columns = (0..schema.fields().len())
        .map(|c| {
            if let Some((batch, was)) = old {
                if inputs
                    .iter()
                    .zip(was)
                    .all(|(now, was)| same(now.column(c), was.column(c)))
                {
                    bytes.shared += batch.column(c).get_buffer_memory_size();
                    return Ok(batch.column(c).clone());
                }
            }
            let arrays: Vec<&dyn Array> = inputs.iter().map(|b| b.column(c).as_ref()).collect();
            let column = concat(&arrays)?;
            bytes.copied += column.get_buffer_memory_size();
            Ok(column)
        })
        .collect::<DfResult<Vec<ArrayRef>>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &options,
    )?)
}

/// Batches of about `COALESCE_ROWS` rows a table is cut into.
const COALESCE_ROWS: usize = 8192;

/// `batch` as zero-copy slices of at most `rows` rows.
fn slices(batch: &RecordBatch, rows: usize) -> Vec<RecordBatch> {
    (0..batch.num_rows())
        .step_by(rows.max(1))
        .map(|at| batch.slice(at, rows.min(batch.num_rows() - at)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::engine::tests::batch;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::compute::concat_batches;
    use datafusion::arrow::datatypes::DataType;
    use datafusion::prelude::{SessionConfig, SessionContext};

    #[test]
    fn small_tables_are_one_partition_and_large_ones_spread() {
        // One batch, as `queryd demo` or a Parquet static table gives it.
        let table = |rows: i64| {
            let b = batch(rows);
            partitioned(b.schema(), std::iter::once(&b), 2, b.num_rows()).expect("table")
        };
        assert_eq!(
            table(20_000).wide_partitions().expect("partitions").len(),
            1
        );
        assert_eq!(table(0).wide_partitions().expect("partitions").len(), 1);
        let big = table(SINGLE_PARTITION_ROWS as i64 + 1);
        assert_eq!(big.wide_partitions().expect("partitions").len(), 2);
        // Cut into slices of `COALESCE_ROWS`, every row kept, dealt to both partitions.
        let held: Vec<RecordBatch> = big
            .wide_partitions()
            .expect("partitions")
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(
            held.iter().map(|b| b.num_rows()).sum::<usize>(),
            SINGLE_PARTITION_ROWS + 1
        );
        assert!(held.iter().all(|b| b.num_rows() <= COALESCE_ROWS));
        assert!(big
            .wide_partitions()
            .expect("partitions")
            .iter()
            .all(|p| !p.is_empty()));
    }
    /// Two rows of `name` and `v` from the arrays given (so that tests choose which are
    /// shared).
    fn rows(name: &ArrayRef, v: &ArrayRef) -> RecordBatch {
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
            datafusion::arrow::datatypes::Field::new("name", DataType::Utf8, false),
            datafusion::arrow::datatypes::Field::new("v", DataType::Int64, false),
        ]));
        RecordBatch::try_new(schema, vec![name.clone(), v.clone()]).expect("batch")
    }

    fn names(n: &str) -> ArrayRef {
        Arc::new(StringArray::from(vec![format!("{n}-1"), format!("{n}-2")]))
    }

    fn values(v: i64) -> ArrayRef {
        Arc::new(Int64Array::from(vec![v, v + 1]))
    }

    /// The one batch a table of a few small inputs is coalesced into.
    fn only_batch(table: &SpreadTable) -> RecordBatch {
        let held: Vec<RecordBatch> = table
            .wide_partitions()
            .expect("partitions")
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(held.len(), 1, "{held:?}");
        held[0].clone()
    }

    fn same(a: &ArrayRef, b: &ArrayRef) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
    }

    #[test]
    fn a_fleet_of_parts_is_copied_on_several_threads_in_order_and_shared_after() {
        // More parts than `threads::PARALLEL_FROM_PARTS` (the runs are copied on every
        // core), of two rows each: more rows than one partition takes.
        let n = (crate::threads::PARALLEL_FROM_PARTS).max(SINGLE_PARTITION_ROWS / 2) + 1_000;
        let (shared_names, v) = (names("m"), values(0));
        let inputs: Vec<RecordBatch> = (0..n)
            .map(|i| {
                let v = if i % 2 == 0 {
                    v.clone()
                } else {
                    values(i as i64)
                };
                rows(&shared_names, &v)
            })
            .collect();
        let refs: Vec<&RecordBatch> = inputs.iter().collect();
        let schema = inputs[0].schema();
        let copy = partitioned_after(schema.clone(), &refs, 2, 2 * n, None).expect("copy");
        let dealt = copy.wide_partitions().expect("partitions");
        assert_eq!(dealt.len(), 2);
        // Dealt in turn: batch i of the copy is in partition i % 2; back in that order it
        // is exactly the inputs, in theirs.
        let mut in_order = Vec::new();
        for i in 0..dealt[0].len() + dealt[1].len() {
            in_order.push(dealt[i % 2][i / 2].clone());
        }
        assert!(in_order.iter().all(|b| b.num_rows() <= COALESCE_ROWS));
        let want = concat_batches(&schema, refs.iter().copied()).expect("concat");
        assert_eq!(
            concat_batches(&schema, in_order.iter()).expect("concat"),
            want
        );
        assert_eq!(copy.copied.len(), in_order.len(), "every run copied");
        assert_eq!(
            copy.copy_bytes.copied,
            in_order
                .iter()
                .flat_map(|b| b.columns())
                .map(|c| c.get_buffer_memory_size())
                .sum::<usize>()
        );
        // The same inputs again: every column of every run shared with the copy before.
        let before = Before {
            table: &copy,
            batches: refs.clone(),
        };
        let again =
            partitioned_after(schema.clone(), &refs, 2, 2 * n, Some(&before)).expect("again");
        assert_eq!(again.copy_bytes.copied, 0);
        assert_eq!(again.copy_bytes.shared, copy.copy_bytes.copied);
    }

    #[test]
    fn a_copy_shares_the_columns_whose_inputs_are_unchanged() {
        let (a, b, c) = (names("a"), names("b"), names("c"));
        let old_inputs = [
            rows(&a, &values(1)),
            rows(&b, &values(2)),
            rows(&c, &values(3)),
        ];
        let old_refs: Vec<&RecordBatch> = old_inputs.iter().collect();
        let schema = old_inputs[0].schema();
        let old = partitioned_after(schema.clone(), &old_refs, 2, 6, None).expect("old");
        let old_batch = only_batch(&old);

        // The second input's values move; every name stays the very same array, and the
        // first and third inputs are the old batches themselves.
        let moved = rows(&b, &values(20));
        let new_refs = vec![&old_inputs[0], &moved, &old_inputs[2]];
        let before = Before {
            table: &old,
            batches: old_refs.clone(),
        };
        let new = partitioned_after(schema.clone(), &new_refs, 2, 6, Some(&before)).expect("new");
        let new_batch = only_batch(&new);
        assert!(
            same(new_batch.column(0), old_batch.column(0)),
            "names shared"
        );
        assert!(
            !same(new_batch.column(1), old_batch.column(1)),
            "values copied anew"
        );
        let want = concat_batches(&schema, new_refs.iter().copied()).expect("concat");
        assert_eq!(new_batch, want);

        // Inputs that do not line up with the old copy's (one left out) share nothing,
        // and the copy is still exactly theirs.
        let fewer = vec![&old_inputs[0], &old_inputs[2]];
        let apart = partitioned_after(schema.clone(), &fewer, 2, 4, Some(&before)).expect("apart");
        let apart_batch = only_batch(&apart);
        assert!(!same(apart_batch.column(0), old_batch.column(0)));
        assert_eq!(
            apart_batch,
            concat_batches(&schema, fewer.iter().copied()).expect("concat")
        );

        // Another schema (a column renamed): nothing shared, even with the same arrays.
        let renamed = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
            datafusion::arrow::datatypes::Field::new("host", DataType::Utf8, false),
            datafusion::arrow::datatypes::Field::new("v", DataType::Int64, false),
        ]));
        let other: Vec<RecordBatch> = old_inputs
            .iter()
            .map(|b| RecordBatch::try_new(renamed.clone(), b.columns().to_vec()).expect("batch"))
            .collect();
        let other_refs: Vec<&RecordBatch> = other.iter().collect();
        let unlike = partitioned_after(renamed, &other_refs, 2, 6, Some(&before)).expect("unlike");
        assert!(!same(only_batch(&unlike).column(0), old_batch.column(0)));
    }

    #[tokio::test]
    async fn a_one_partition_session_scans_one_partition_with_every_row() {
        let b = batch(SINGLE_PARTITION_ROWS as i64 + 1);
        let table = partitioned(b.schema(), std::iter::once(&b), 2, b.num_rows()).expect("table");
        for (partitions, want) in [(2, 2), (1, 1)] {
            let ctx = SessionContext::new_with_config(
                SessionConfig::new().with_target_partitions(partitions),
            );
            let state = ctx.state();
            let scan = table.scan(&state, None, &[], None).await.expect("scan");
            assert_eq!(
                scan.properties().output_partitioning().partition_count(),
                want
            );
            let rows: usize = datafusion::physical_plan::collect(scan, ctx.task_ctx())
                .await
                .expect("rows")
                .iter()
                .map(|b| b.num_rows())
                .sum();
            assert_eq!(rows, SINGLE_PARTITION_ROWS + 1);
        }
    }
}

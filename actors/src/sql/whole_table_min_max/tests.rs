//! Every statement answers on a snapshot as on DataFusion's own context over the same
//! batches, and the aggregate is answered from the bounds exactly where it should be.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::SystemTime;

use datafusion::arrow::array::{
    ArrayRef, Date32Array, Float64Array, Int32Array, Int64Array, StringArray, TimestampSecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::catalog::MemTable;
use datafusion::prelude::SessionContext;

use crate::generation::{GenerationBuilder, Part};
use crate::sql::engine::tests::{answer_text, sql_node_snapshot_with};
use crate::sql::engine::{
    BuildOptions, Phases, QueryLimits, Snapshot, TableCopies, DEFAULT_MAX_RESULT_BYTES,
};
use crate::sql::plans::{PlanCache, DEFAULT_PLAN_CACHE_ENTRIES};
use crate::sql::views::ViewsFile;
use crate::static_tables::StaticCatalog;

/// Rows `from..to` of `t`: NULLs among `i` and `d`, NaN and -0.0 among `f`, `n` all NULL.
fn batch(from: i64, to: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("machine_ip", DataType::Utf8, false),
        Field::new("g", DataType::Int32, false),
        Field::new("i", DataType::Int64, true),
        Field::new("f", DataType::Float64, false),
        Field::new("s", DataType::Utf8, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Second, None), false),
        Field::new("n", DataType::Timestamp(TimeUnit::Second, None), true),
        Field::new("d", DataType::Date32, true),
    ]));
    let rows = from..to;
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(
                rows.clone().map(|r| format!("10.0.0.{}", r / 10)),
            )) as ArrayRef,
            Arc::new(Int32Array::from_iter_values(
                rows.clone().map(|r| (r % 3) as i32),
            )),
            Arc::new(Int64Array::from_iter(
                rows.clone()
                    .map(|r| (r % 7 != 0).then_some(r * 37 % 101 - 50)),
            )),
            Arc::new(Float64Array::from_iter_values(rows.clone().map(
                |r| match r {
                    13 => f64::NAN,
                    14 => -0.0,
                    r => (r % 11) as f64 * 0.25,
                },
            ))),
            Arc::new(StringArray::from_iter_values(
                rows.clone().map(|r| format!("s{}", r * 7 % 23)),
            )),
            Arc::new(TimestampSecondArray::from_iter_values(
                rows.clone()
                    .map(|r| 1_700_000_000 + r * 3_600 * 7 % 500_000),
            )),
            Arc::new(TimestampSecondArray::from(vec![None; rows.clone().count()])),
            Arc::new(Date32Array::from_iter(
                rows.map(|r| (r % 5 != 0).then_some(19_000 + (r * 13 % 71) as i32)),
            )),
        ],
    )
    .expect("batch")
}

/// `t`: one part per machine (10 rows each, 100 rows); `e`: no row.
fn parts() -> Vec<(&'static str, RecordBatch)> {
    let mut parts: Vec<_> = (0..10).map(|m| ("t", batch(m * 10, m * 10 + 10))).collect();
    parts.push(("e", batch(0, 0)));
    parts
}

fn builder() -> GenerationBuilder {
    builder_of(parts())
}

fn builder_of(parts: Vec<(&'static str, RecordBatch)>) -> GenerationBuilder {
    let mut builder = GenerationBuilder::default();
    for (i, (table, batch)) in parts.into_iter().enumerate() {
        let part = Part::new(format!("m{i}"), batch, vec![]);
        builder.add(table, part).expect("part");
    }
    builder
}

/// DataFusion's own context over the same batches.
fn theirs() -> SessionContext {
    let ctx = SessionContext::new();
    for table in ["t", "e"] {
        let batches: Vec<RecordBatch> = parts()
            .into_iter()
            .filter(|(name, _)| *name == table)
            .map(|(_, b)| b)
            .collect();
        let mem = MemTable::try_new(batches[0].schema(), vec![batches]).expect("table");
        ctx.register_table(table, Arc::new(mem)).expect("register");
    }
    ctx
}

async fn ours(snap: &Snapshot, sql: &str) -> String {
    answered(snap, sql).await.0
}

/// The answer as text, and how the statement was planned.
async fn answered(snap: &Snapshot, sql: &str) -> (String, Phases) {
    let out = snap
        .query(sql, &QueryLimits::default())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let text = pretty_format_batches(&out.batches)
        .expect("format")
        .to_string();
    (text, out.phases)
}

async fn expected(sql: &str) -> String {
    answer_text(&theirs(), sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The same answer as DataFusion's; whether the snapshot's plan still aggregates.
async fn check(snap: &Snapshot, sql: &str) -> bool {
    assert_eq!(ours(snap, sql).await, expected(sql).await, "{sql}");
    ours(snap, &format!("EXPLAIN {sql}"))
        .await
        .contains("AggregateExec")
}

const ANSWERED: [&str; 6] = [
    "SELECT MAX(ts), MIN(ts) FROM t",
    "SELECT MIN(d) AS oldest, MAX(d) AS newest, MAX(ts) FROM t",
    "SELECT MAX(n), MIN(n) FROM t",
    "SELECT MAX(ts), MIN(d) FROM e",
    "SELECT CAST(MAX(ts) AS BIGINT) + 1 AS next FROM t",
    "SELECT COUNT(*) FROM t WHERE ts >= (SELECT MAX(ts) FROM t) - INTERVAL '1 day'",
];

#[tokio::test]
async fn min_and_max_of_whole_tables_come_from_the_bounds() {
    let snap = sql_node_snapshot_with(builder(), BuildOptions::default()).await;
    for sql in &ANSWERED[..5] {
        assert!(!check(&snap, sql).await, "{sql} answered from the bounds");
    }
    // The alert's shape: the subquery is answered and its literal put in the filter (no
    // pipeline of its own); the statement around it still runs.
    let sql = ANSWERED[5];
    let plan = ours(&snap, &format!("EXPLAIN {sql}")).await;
    assert!(!plan.contains("ScalarSubquery"), "{plan}");
    assert!(!plan.contains("PlaceholderRowExec"), "{plan}");
    assert!(plan.contains("FilterExec: ts@0 >= 1700408400"), "{plan}");
    assert!(check(&snap, sql).await);
}

/// The alert's statement on snapshots of the same rows binds a kept physical plan; on
/// rows with another newest `ts` it is planned again, and answers for those rows.
#[tokio::test]
async fn a_physical_plan_is_kept_for_the_bounds_it_was_planned_with() {
    let plans = Arc::new(PlanCache::new(DEFAULT_PLAN_CACHE_ENTRIES));
    let options = BuildOptions {
        plans,
        ..BuildOptions::default()
    };
    let sql = ANSWERED[5];
    let want = expected(sql).await;
    let mut bound = Vec::new();
    for _ in 0..5 {
        let snap = sql_node_snapshot_with(builder(), options.clone()).await;
        let (text, phases) = answered(&snap, sql).await;
        assert_eq!(text, want);
        bound.push(phases.physical_reused);
    }
    // Met twice to keep the plan, twice more to keep its physical plan.
    assert_eq!(bound, [false, false, false, false, true]);
    // Rows 40 to 109 have the same newest `ts` (bound), rows 100 to 169 a later one
    // (planned again); each gives its own count.
    for (machines, reused) in [(4..11, true), (10..17, false)] {
        let rows = || {
            let mut parts: Vec<_> = machines
                .clone()
                .map(|m| ("t", batch(m * 10, m * 10 + 10)))
                .collect();
            parts.push(("e", batch(0, 0)));
            builder_of(parts)
        };
        let fresh = sql_node_snapshot_with(rows(), BuildOptions::default()).await;
        let want_here = ours(&fresh, sql).await;
        assert_ne!(want_here, want, "the rows give another answer");
        let next = sql_node_snapshot_with(rows(), options.clone()).await;
        let (text, phases) = answered(&next, sql).await;
        assert!(phases.plan_reused);
        assert_eq!(phases.physical_reused, reused, "{machines:?}");
        assert_eq!(text, want_here, "{machines:?}");
    }
}

/// A kept plan, bound to the next snapshot, reads that snapshot's bounds.
#[tokio::test]
async fn a_kept_plan_reads_each_snapshots_bounds() {
    let plans = Arc::new(PlanCache::new(DEFAULT_PLAN_CACHE_ENTRIES));
    let options = BuildOptions {
        plans,
        ..BuildOptions::default()
    };
    let sql = "SELECT CAST(MIN(ts) AS BIGINT) FROM t";
    let snap = sql_node_snapshot_with(builder(), options.clone()).await;
    let first = ours(&snap, sql).await;
    assert_eq!(first, ours(&snap, sql).await);
    assert!(first.contains("| 1700000000 "), "{first}");
    // Rows 40 to 109, as many parts in the same size class (a kept plan's catalog): the
    // oldest `ts` is 8,000 s later (row 0's is the oldest before).
    let mut later: Vec<_> = (4..11).map(|m| ("t", batch(m * 10, m * 10 + 10))).collect();
    later.push(("e", batch(0, 0)));
    let next = sql_node_snapshot_with(builder_of(later), options).await;
    let (text, phases) = answered(&next, sql).await;
    assert!(phases.plan_reused);
    assert!(text.contains("| 1700008000 "), "{text}");
}

#[tokio::test]
async fn other_aggregates_still_run() {
    let snap = sql_node_snapshot_with(builder(), BuildOptions::default()).await;
    for sql in [
        "SELECT MAX(i), MIN(i) FROM t",
        "SELECT MIN(f), MAX(f) FROM t",
        "SELECT MIN(s), MAX(s) FROM t",
        "SELECT MAX(ts), MAX(i) FROM t",
        "SELECT MAX(ts) FROM t WHERE i > 3",
        "SELECT MAX(ts + INTERVAL '1 hour') FROM t",
        "SELECT MAX(ts), COUNT(ts) FROM t",
        "SELECT MAX(ts) FILTER (WHERE g = 1) FROM t",
        "SELECT g, MAX(ts) FROM t GROUP BY g ORDER BY g",
        "SELECT MAX(ts) FROM (SELECT ts FROM t ORDER BY ts LIMIT 30)",
        "SELECT MAX(t.ts) FROM t JOIN t AS u ON t.g = u.g",
    ] {
        assert!(check(&snap, sql).await, "{sql} still aggregates");
    }
}

/// A node that coalesces on first scan (a TLA) knows the bounds once a scan coalesced.
#[tokio::test]
async fn a_lazily_coalesced_table_has_bounds_once_scanned() {
    let snap = Snapshot::build_with(
        builder().seal(1, 1, SystemTime::now()),
        Arc::new(StaticCatalog::default()),
        &ViewsFile::default(),
        2,
        DEFAULT_MAX_RESULT_BYTES,
        Arc::new(AtomicU64::new(0)),
        BuildOptions {
            copies: TableCopies::OnFirstScan,
            ..BuildOptions::default()
        },
    )
    .await;
    let sql = ANSWERED[0];
    let explain = format!("EXPLAIN {sql}");
    let plan = ours(&snap, &explain).await;
    assert!(plan.contains("AggregateExec"), "not coalesced yet: runs");
    assert_eq!(ours(&snap, sql).await, expected(sql).await);
    let plan = ours(&snap, &explain).await;
    assert!(!plan.contains("AggregateExec"), "coalesced: answered");
}

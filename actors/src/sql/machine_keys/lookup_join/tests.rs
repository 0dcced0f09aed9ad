//! The lookup join against DataFusion's hash join: answers, parts, pass-through, errors.

use super::*;
use datafusion::arrow::array::{Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::physical_expr::expressions::col;
use datafusion::physical_plan::joins::utils::ColumnIndex;
use datafusion::physical_plan::{collect, displayable};
use datafusion::prelude::SessionContext;

/// A table of `(__machine_id, name, v)` rows in batches of `per_batch` rows.
fn table(rows: &[(Option<u32>, &str, i64)], per_batch: usize) -> Arc<dyn ExecutionPlan> {
    table_of(
        rows,
        per_batch,
        Field::new(MACHINE_ID, DataType::UInt32, true),
    )
}

/// [`table`] whose ids are marked as each on one row, as keying marks `sys`'s.
fn unique_table(rows: &[(Option<u32>, &str, i64)], per_batch: usize) -> Arc<dyn ExecutionPlan> {
    let id = Field::new(MACHINE_ID, DataType::UInt32, true).with_metadata(HashMap::from([(
        UNIQUE_IDS.0.to_string(),
        UNIQUE_IDS.1.to_string(),
    )]));
    table_of(rows, per_batch, id)
}

fn table_of(
    rows: &[(Option<u32>, &str, i64)],
    per_batch: usize,
    id: Field,
) -> Arc<dyn ExecutionPlan> {
    let schema = Arc::new(Schema::new(vec![
        id,
        Field::new("name", DataType::Utf8, false),
        Field::new("v", DataType::Int64, false),
    ]));
    let batches: Vec<RecordBatch> = rows
        .chunks(per_batch.max(1))
        .map(|chunk| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(UInt32Array::from(
                        chunk.iter().map(|r| r.0).collect::<Vec<_>>(),
                    )),
                    Arc::new(StringArray::from(
                        chunk.iter().map(|r| r.1).collect::<Vec<_>>(),
                    )),
                    Arc::new(Int64Array::from(
                        chunk.iter().map(|r| r.2).collect::<Vec<_>>(),
                    )),
                ],
            )
            .expect("batch")
        })
        .collect();
    MemorySourceConfig::try_new_exec(&[batches], schema, None).expect("exec")
}

/// The answer's rows as sorted lines.
fn lines(batches: &[RecordBatch]) -> Vec<String> {
    let text = pretty_format_batches(batches).expect("format").to_string();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// The hash join of `left` and `right` on the id, and the lookup join standing for it.
fn joins(
    left: Arc<dyn ExecutionPlan>,
    right: Arc<dyn ExecutionPlan>,
    join_type: JoinType,
    projection: Option<Vec<usize>>,
) -> (HashJoinExec, MachineIdJoinExec) {
    let hash = hash_join(left, right, join_type, projection, None);
    let lookup = MachineIdJoinExec::stand_in(&hash, None)
        .expect("stand in")
        .expect("a join it handles");
    (hash, lookup)
}

/// The hash join of `left` and `right` on the id, with `filter` on its pairs.
fn hash_join(
    left: Arc<dyn ExecutionPlan>,
    right: Arc<dyn ExecutionPlan>,
    join_type: JoinType,
    projection: Option<Vec<usize>>,
    filter: Option<JoinFilter>,
) -> HashJoinExec {
    let on = vec![(
        col(MACHINE_ID, &left.schema()).expect("left key"),
        col(MACHINE_ID, &right.schema()).expect("right key"),
    )];
    HashJoinExec::try_new(
        left,
        right,
        on,
        filter,
        &join_type,
        projection,
        PartitionMode::CollectLeft,
        NullEquality::NullEqualsNothing,
        false,
    )
    .expect("hash join")
}

/// `build` joined with `probe` on the id by the hash join and by the lookup join:
/// both answers, and the number of output batches whose probe columns passed whole.
async fn both(
    build: &[(Option<u32>, &str, i64)],
    probe: &[(Option<u32>, &str, i64)],
    join_type: JoinType,
    projection: Option<Vec<usize>>,
) -> (Vec<String>, Vec<String>, usize) {
    both_in_batches_of(8192, build, probe, join_type, projection).await
}

/// [`both`] in a session whose batches have `batch_size` rows.
async fn both_in_batches_of(
    batch_size: usize,
    build: &[(Option<u32>, &str, i64)],
    probe: &[(Option<u32>, &str, i64)],
    join_type: JoinType,
    projection: Option<Vec<usize>>,
) -> (Vec<String>, Vec<String>, usize) {
    let (expected, got, passed, _) = answers(
        batch_size,
        table(build, 3),
        table(probe, 4),
        join_type,
        projection,
    )
    .await;
    (expected, got, passed)
}

/// The hash join's and the lookup join's answers over these inputs, the number of output
/// batches whose probe columns passed whole, and the lookup join's line of the plan.
async fn answers(
    batch_size: usize,
    left: Arc<dyn ExecutionPlan>,
    right: Arc<dyn ExecutionPlan>,
    join_type: JoinType,
    projection: Option<Vec<usize>>,
) -> (Vec<String>, Vec<String>, usize, String) {
    let (hash, lookup) = joins(left, right, join_type, projection);
    answers_of(batch_size, hash, lookup).await
}

/// [`answers`] of a hash join and the lookup join standing for it.
async fn answers_of(
    batch_size: usize,
    hash: HashJoinExec,
    lookup: MachineIdJoinExec,
) -> (Vec<String>, Vec<String>, usize, String) {
    let lookup = Arc::new(lookup);
    let ctx = SessionContext::new_with_config(
        datafusion::prelude::SessionConfig::new().with_batch_size(batch_size),
    )
    .task_ctx();
    let expected = collect(Arc::new(hash), ctx.clone())
        .await
        .expect("hash answer");
    let got = collect(lookup.clone(), ctx).await.expect("lookup answer");
    for b in &got {
        assert!(b.num_rows() <= batch_size && b.num_rows() > 0);
    }
    let passed = lookup
        .metrics()
        .and_then(|m| m.sum_by_name("probe_batches_passed"))
        .map_or(0, |v| v.as_usize());
    let shown = displayable(lookup.as_ref()).one_line().to_string();
    assert!(shown.contains("MachineIdJoinExec"), "{shown}");
    (lines(&expected), lines(&got), passed, shown)
}

/// One row per machine, ids 0-5 and a NULL.
fn machines() -> Vec<(Option<u32>, &'static str, i64)> {
    let mut rows: Vec<_> = (0..6).map(|i| (Some(i), "m", i as i64)).collect();
    rows.push((None, "none", -1));
    rows
}

/// [`machines`] twice: every id on two rows.
fn machines_twice() -> Vec<(Option<u32>, &'static str, i64)> {
    machines().into_iter().chain(machines()).collect()
}

/// The rows of [`processes`] whose machine is among [`machines`] (ids 1-5).
fn matched() -> Vec<(Option<u32>, &'static str, i64)> {
    processes()
        .into_iter()
        .filter(|r| r.0.is_some_and(|i| i < 6))
        .collect()
}

/// Several rows per machine (ids 1-7, 7 in no build row) and a NULL.
fn processes() -> Vec<(Option<u32>, &'static str, i64)> {
    let mut rows: Vec<_> = (1..8)
        .flat_map(|i| (0..3).map(move |k| (Some(i), "p", (i * 10 + k) as i64)))
        .collect();
    rows.insert(5, (None, "none", 99));
    rows
}

#[tokio::test]
async fn answers_as_the_hash_join_for_every_join_type_it_takes() {
    let dup_build = machines_twice();
    let sparse: Vec<_> = machines()
        .into_iter()
        .map(|(id, n, v)| (id.map(|i| i * 1_000_000), n, v))
        .chain([(Some(1), "low", 7)])
        .collect();
    for join_type in [
        JoinType::Inner,
        JoinType::Right,
        JoinType::RightSemi,
        JoinType::RightAnti,
    ] {
        for build in [&machines(), &dup_build, &sparse, &Vec::new()] {
            for projection in [None, Some(vec![0, 1])] {
                // Parts of 3 rows end within a row's matches (two per id in
                // `dup_build`) and within a batch.
                for batch_size in [3, 8192] {
                    let (expected, got, _) = both_in_batches_of(
                        batch_size,
                        build,
                        &processes(),
                        join_type,
                        projection.clone(),
                    )
                    .await;
                    assert_eq!(
                        got, expected,
                        "{join_type:?} {projection:?} {batch_size} {build:?}"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn probe_columns_pass_whole_only_where_each_row_matches_once() {
    // Every probe row of ids 1-5 matches one machine: each batch passes whole.
    let matched = matched();
    let (expected, got, passed) = both(&machines(), &matched, JoinType::Inner, None).await;
    assert_eq!(got, expected);
    assert_eq!(passed, matched.len().div_ceil(4));
    // Repeated build ids, or unmatched probe rows: taken by index, none passed.
    let twice = machines_twice();
    let (expected, got, passed) = both(&twice, &matched, JoinType::Inner, None).await;
    assert_eq!((got.len(), passed), (expected.len(), 0));
    assert_eq!(got, expected);
    let (_, _, passed) = both(&machines(), &processes(), JoinType::Inner, None).await;
    assert!(passed < processes().len().div_ceil(4));
    // As many rows out as in, but the first probe row twice and the second not at all.
    let (twice_one, one_unmatched) = (
        [(Some(1), "a", 1), (Some(1), "b", 2)],
        [(Some(1), "p", 1), (Some(9), "q", 2)],
    );
    let (expected, got, passed) = both(&twice_one, &one_unmatched, JoinType::Inner, None).await;
    assert_eq!((got.clone(), passed), (expected, 0));
    assert!(got.iter().all(|row| row.contains("| p ")), "{got:?}");
}

/// The build side fails (the query's memory runs out) under a probe side of two
/// partitions: both get the one error, and the build side, whose repartition can run
/// only once, is not run again for the second.
#[tokio::test]
async fn a_failed_build_is_one_error_for_every_partition() {
    use datafusion::execution::memory_pool::GreedyMemoryPool;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
    use datafusion::physical_plan::repartition::RepartitionExec;
    use datafusion::physical_plan::Partitioning;

    let spread = RepartitionExec::try_new(table(&machines(), 3), Partitioning::RoundRobinBatch(2))
        .expect("repartition");
    let left: Arc<dyn ExecutionPlan> = Arc::new(CoalescePartitionsExec::new(Arc::new(spread)));
    let probe = table(&processes(), 4);
    let right: Arc<dyn ExecutionPlan> =
        Arc::new(RepartitionExec::try_new(probe, Partitioning::RoundRobinBatch(2)).expect("split"));
    let (_, lookup) = joins(left, right, JoinType::Inner, None);
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(GreedyMemoryPool::new(64)))
        .build_arc()
        .expect("runtime");
    let ctx = Arc::new(TaskContext::default().with_runtime(runtime));
    let streams = (0..2)
        .map(|p| lookup.execute(p, ctx.clone()).expect("stream"))
        .map(|s| s.try_collect::<Vec<_>>());
    for answer in futures::future::join_all(streams).await {
        let err = answer
            .expect_err("no memory for the build side")
            .to_string();
        assert!(err.contains("Resources exhausted"), "{err}");
    }
}

#[tokio::test]
async fn large_fanouts_come_out_in_batches_of_the_session_size() {
    // 3 x 5,000 build rows of one id, 4 probe rows of it: 60,000 rows.
    let build: Vec<_> = (0..15_000).map(|i| (Some(1), "b", i)).collect();
    let probe: Vec<_> = (0..4).map(|i| (Some(1), "p", i)).collect();
    let (expected, got, _) = both(&build, &probe, JoinType::Inner, Some(vec![2, 5])).await;
    assert_eq!(got.len(), 60_000);
    assert_eq!(got, expected);
}

/// An inner join whose left side repeats ids (as `JoinSelection` may choose) and whose
/// right side has each on one row is built on the right: the left rows each match once
/// and pass whole. Every other join type, a right side not so marked or not one
/// partition, or a left side marked too, keeps building on the left.
#[tokio::test]
async fn an_inner_join_builds_on_the_side_whose_ids_are_each_on_one_row() {
    let matched = matched();
    let dup_build = machines_twice();
    for join_type in [
        JoinType::Inner,
        JoinType::Right,
        JoinType::RightSemi,
        JoinType::RightAnti,
    ] {
        for left in [&matched, &processes(), &dup_build, &Vec::new()] {
            // Semi and anti joins output the right side's three columns alone.
            let projections = match join_type {
                JoinType::Inner | JoinType::Right => vec![None, Some(vec![0, 4]), Some(vec![5, 1])],
                _ => vec![None],
            };
            for projection in projections {
                for batch_size in [3, 8192] {
                    let (expected, got, _, shown) = answers(
                        batch_size,
                        table(left, 3),
                        unique_table(&machines(), 4),
                        join_type,
                        projection.clone(),
                    )
                    .await;
                    let case = format!("{join_type:?} {projection:?} {batch_size} {left:?}");
                    assert_eq!(got, expected, "{case}");
                    assert_eq!(
                        shown.contains("build=right"),
                        join_type == JoinType::Inner,
                        "{case}: {shown}"
                    );
                }
            }
        }
    }
    // Built on the right, every left batch of rows that each match passes whole.
    let (expected, got, passed, _) = answers(
        8192,
        table(&matched, 3),
        unique_table(&machines(), 4),
        JoinType::Inner,
        None,
    )
    .await;
    assert_eq!((got, passed), (expected, matched.len().div_ceil(3)));
    // Given new children (every plan's are wrapped for time slicing, which the mark is
    // not read through), it builds on the same side.
    let (hash, lookup) = joins(
        table(&matched, 3),
        unique_table(&machines(), 4),
        JoinType::Inner,
        None,
    );
    let sliced = crate::sql::time_slice::time_sliced(Arc::new(lookup)).expect("sliced");
    let shown = displayable(sliced.as_ref()).indent(true).to_string();
    assert!(shown.contains("TimeSlicedExec"), "{shown}");
    assert!(shown.contains("build=right"), "{shown}");
    let ctx = SessionContext::new().task_ctx();
    let expected = collect(Arc::new(hash), ctx.clone()).await.expect("hash");
    let got = collect(sliced, ctx).await.expect("sliced lookup");
    assert_eq!(lines(&got), lines(&expected));
    // Through a filter and a projection the mark holds; kept on the left otherwise.
    use datafusion::logical_expr::Operator;
    use datafusion::physical_expr::expressions::{lit, BinaryExpr};
    use datafusion::physical_plan::filter::FilterExec;
    use datafusion::physical_plan::projection::ProjectionExec;
    let machines_plan = unique_table(&machines(), 4);
    let positive = Arc::new(BinaryExpr::new(
        col("v", &machines_plan.schema()).expect("v"),
        Operator::Gt,
        lit(0i64),
    ));
    let filtered: Arc<dyn ExecutionPlan> =
        Arc::new(FilterExec::try_new(positive, machines_plan.clone()).expect("filter"));
    let reordered: Arc<dyn ExecutionPlan> = Arc::new(
        ProjectionExec::try_new(
            vec![
                (col("v", &filtered.schema()).expect("v"), "v".to_string()),
                (
                    col("name", &filtered.schema()).expect("n"),
                    "name".to_string(),
                ),
                (
                    col(MACHINE_ID, &filtered.schema()).expect("id"),
                    MACHINE_ID.to_string(),
                ),
            ],
            filtered,
        )
        .expect("projection"),
    );
    // The same marked rows in two partitions: the build side would be one of them.
    let batches = collect(machines_plan.clone(), SessionContext::new().task_ctx())
        .await
        .expect("machines");
    let (first, rest) = batches.split_at(1);
    let spread = MemorySourceConfig::try_new_exec(
        &[first.to_vec(), rest.to_vec()],
        machines_plan.schema(),
        None,
    )
    .expect("two partitions");
    for (right, builds_right) in [
        (reordered, true),
        (table(&machines(), 4), false),
        (spread as Arc<dyn ExecutionPlan>, false),
    ] {
        let (expected, got, _, shown) =
            answers(8192, table(&matched, 3), right, JoinType::Inner, None).await;
        assert_eq!(got, expected);
        assert_eq!(shown.contains("build=right"), builds_right, "{shown}");
    }
    let (_, _, _, shown) = answers(
        8192,
        unique_table(&machines(), 3),
        unique_table(&machines(), 4),
        JoinType::Inner,
        None,
    )
    .await;
    assert!(!shown.contains("build=right"), "{shown}");
}

/// A filter on the pairs of a join of two [`table`]s, on both sides' `v`: `keep`, a SQL
/// expression over columns `l` and `r` (the left and right `v`).
fn v_filter(keep: &str) -> JoinFilter {
    use datafusion::common::DFSchema;

    let schema = Arc::new(Schema::new(vec![
        Field::new("l", DataType::Int64, false),
        Field::new("r", DataType::Int64, false),
    ]));
    let df_schema = DFSchema::try_from(schema.as_ref().clone()).expect("schema");
    let ctx = SessionContext::new();
    let expr = ctx.parse_sql_expr(keep, &df_schema).expect("filter");
    let physical = ctx
        .create_physical_expr(expr, &df_schema)
        .expect("physical filter");
    JoinFilter::new(
        physical,
        vec![
            ColumnIndex {
                index: 2,
                side: JoinSide::Left,
            },
            ColumnIndex {
                index: 2,
                side: JoinSide::Right,
            },
        ],
        schema,
    )
}

/// A join filter (`rss * 100 / memtotal > 75`) is evaluated by the lookup join in an inner
/// join, built on either side, with the answer of the hash join; its probe columns still
/// pass whole where every pair is kept, and a part whose pairs are all dropped sends no
/// batch. An outer, semi or anti join with a filter stays a hash join.
#[tokio::test]
async fn an_inner_join_filters_its_pairs_as_the_hash_join_does() {
    let sparse: Vec<_> = machines()
        .into_iter()
        .map(|(id, n, v)| (id.map(|i| i * 1_000_000), n, v))
        .chain([(Some(1), "low", 7)])
        .collect();
    let filtered = |left, right, keep: &str, projection: Option<Vec<usize>>| {
        let hash = hash_join(
            left,
            right,
            JoinType::Inner,
            projection,
            Some(v_filter(keep)),
        );
        let lookup = MachineIdJoinExec::stand_in(&hash, None)
            .expect("stand in")
            .expect("an inner join with a filter");
        (hash, lookup)
    };
    for keep in [
        "CASE WHEN l = 21 OR r = 21 THEN NULL ELSE (l * 7 + r) % 3 <> 0 END",
        "r > l * 11",
        "l + r < 0",
    ] {
        for build in [machines(), machines_twice(), sparse.clone()] {
            for probe in [processes(), matched()] {
                for projection in [None, Some(vec![1, 5]), Some(vec![4, 2, 0])] {
                    for batch_size in [3, 8192] {
                        let (hash, lookup) =
                            filtered(table(&build, 3), table(&probe, 4), keep, projection.clone());
                        let (expected, got, _, shown) = answers_of(batch_size, hash, lookup).await;
                        let case =
                            format!("{keep} {projection:?} {batch_size} {build:?} {probe:?}");
                        assert_eq!(got, expected, "{case}");
                        assert!(shown.contains("filter="), "{shown}");
                    }
                }
            }
        }
    }
    // Built on the right (ids each on one row there, the left side's `v` 10-99): the
    // same answers.
    for keep in [
        "CASE WHEN l = 21 OR r = 21 THEN NULL ELSE (l * 7 + r) % 3 <> 0 END",
        "l > r * 11",
    ] {
        for projection in [None, Some(vec![1, 5])] {
            for batch_size in [3, 8192] {
                let (hash, lookup) = filtered(
                    table(&processes(), 3),
                    unique_table(&machines(), 4),
                    keep,
                    projection.clone(),
                );
                let (expected, got, _, shown) = answers_of(batch_size, hash, lookup).await;
                let case = format!("{keep} {projection:?} {batch_size} built on the right");
                assert_eq!(got, expected, "{case}");
                assert!(!got.is_empty(), "{case}");
                assert!(shown.contains("build=right"), "{shown}");
            }
        }
    }
    // Some pairs kept, some not: the filter did drop rows.
    let (expected, _, _, _) = answers(
        8192,
        table(&machines(), 3),
        table(&matched(), 4),
        JoinType::Inner,
        None,
    )
    .await;
    let (hash, lookup) = filtered(
        table(&machines(), 3),
        table(&matched(), 4),
        "r > l * 11",
        None,
    );
    let (kept, got, _, _) = answers_of(8192, hash, lookup).await;
    assert_eq!(got, kept);
    assert!(!kept.is_empty() && kept.len() < expected.len(), "{kept:?}");
    // Every pair kept: the probe batches pass whole, as without a filter.
    let matched = matched();
    let (hash, lookup) = filtered(
        table(&machines(), 3),
        table(&matched, 4),
        "l + r > -1",
        None,
    );
    let (expected, got, passed, _) = answers_of(8192, hash, lookup).await;
    assert_eq!(
        (got.len(), passed),
        (matched.len(), matched.len().div_ceil(4))
    );
    assert_eq!(got, expected);
    // Nothing kept: no batch at all (`answers_of` checks none is empty).
    let (hash, lookup) = filtered(table(&machines(), 3), table(&matched, 4), "l + r < 0", None);
    let (_, got, _, _) = answers_of(3, hash, lookup).await;
    assert!(got.is_empty());
    for join_type in [JoinType::Right, JoinType::RightSemi, JoinType::RightAnti] {
        let hash = hash_join(
            table(&machines(), 3),
            table(&matched, 4),
            join_type,
            None,
            Some(v_filter("r > l")),
        );
        assert!(
            MachineIdJoinExec::stand_in(&hash, None)
                .expect("stand in")
                .is_none(),
            "{join_type:?}"
        );
    }
}

//! Every statement answers the same with the rule as without it (a context that knows no
//! table's rows never rewrites), and the rewrite happens where it should.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Decimal128Array, Float64Array, Int32Array, Int64Array, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::MemTable;
use datafusion::execution::context::SessionConfig;
use datafusion::prelude::SessionContext;

use crate::sql::engine::tests::answer_text;
use crate::sql::engine::{new_context, new_context_sized};

const FACT_ROWS: usize = 20_000;

/// `fact` (20,000 rows: keys into `dim`, NULLs among keys and values), `dim` (20 rows,
/// one key twice and one NULL: joins multiply rows), `top` (4 rows), `other` as big as `fact`.
fn tables() -> Vec<(&'static str, RecordBatch)> {
    let n = FACT_ROWS;
    let fact = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int32, true),
            Field::new("g", DataType::Int32, true),
            Field::new("v", DataType::Int64, true),
            Field::new("x", DataType::Float64, false),
            Field::new("d", DataType::Decimal128(10, 2), false),
            Field::new("s", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(Int32Array::from_iter(
                (0..n).map(|i| (i % 97 != 0).then_some((i % 23) as i32)),
            )) as ArrayRef,
            Arc::new(Int32Array::from_iter(
                (0..n).map(|i| (i % 89 != 0).then_some((i % 3) as i32)),
            )),
            Arc::new(Int64Array::from_iter(
                (0..n).map(|i| (i % 13 != 0).then_some((i * 7 % 101) as i64 - 20)),
            )),
            // Halves: sums stay exact in any order.
            Arc::new(Float64Array::from_iter_values(
                (0..n).map(|i| (i % 37) as f64 * 0.5),
            )),
            Arc::new(
                Decimal128Array::from_iter_values((0..n).map(|i| (i * 31 % 1000) as i128))
                    .with_precision_and_scale(10, 2)
                    .expect("decimal"),
            ),
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| format!("s{}", i % 5)),
            )),
        ],
    )
    .expect("fact");
    let ids: Vec<Option<i32>> = (0..18).map(Some).chain([Some(3), None]).collect();
    let dim = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, true),
            Field::new("name", DataType::Utf8, false),
            Field::new("cont", DataType::Int32, false),
        ])),
        vec![
            Arc::new(Int32Array::from(ids)) as ArrayRef,
            Arc::new(StringArray::from_iter_values(
                (0..20).map(|i| format!("n{}", i % 7)),
            )),
            Arc::new(Int32Array::from_iter_values((0..20).map(|i| i % 4))),
        ],
    )
    .expect("dim");
    let top = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("cont", DataType::Int32, false),
            Field::new("cname", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(Int32Array::from(vec![0, 1, 2, 3])) as ArrayRef,
            Arc::new(StringArray::from(vec!["a", "b", "a", "c"])),
        ],
    )
    .expect("top");
    let other = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int32, false),
            Field::new("w", DataType::Int64, false),
        ])),
        vec![
            Arc::new(Int32Array::from_iter_values(
                (0..n).map(|i| (i % 23) as i32),
            )) as ArrayRef,
            Arc::new(Int64Array::from_iter_values((0..n).map(|i| i as i64))),
        ],
    )
    .expect("other");
    vec![("fact", fact), ("dim", dim), ("top", top), ("other", other)]
}

fn context(knows_rows: bool) -> SessionContext {
    context_told(knows_rows.then(|| {
        tables()
            .iter()
            .map(|(n, b)| (n.to_string(), b.num_rows()))
            .collect()
    }))
}

/// A context told `rows` (none: it knows no table's rows).
fn context_told(rows: Option<HashMap<String, usize>>) -> SessionContext {
    let config = SessionConfig::new().with_target_partitions(2);
    let tables = tables();
    let ctx = match rows {
        Some(rows) => new_context_sized(config, rows, Default::default()),
        None => new_context(config),
    };
    for (name, batch) in tables {
        // Two partitions, as a snapshot spreads a table.
        let half = batch.num_rows() / 2;
        let parts = vec![
            vec![batch.slice(0, half)],
            vec![batch.slice(half, batch.num_rows() - half)],
        ];
        let table = MemTable::try_new(batch.schema(), parts).expect("table");
        ctx.register_table(name, Arc::new(table)).expect("register");
    }
    ctx
}

async fn answer(ctx: &SessionContext, sql: &str) -> String {
    answer_text(ctx, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Statements the rule rewrites.
const PUSHED: &[&str] = &[
    // The paper's shape: two joins with small tables, grouped by the smallest.
    "SELECT t.cname, SUM(f.v) AS v, COUNT(*) AS n, COUNT(f.v) AS nv, MIN(f.x), MAX(f.d), \
     SUM(f.d), SUM(f.x) FROM fact f, dim d, top t WHERE f.k = d.id AND d.cont = t.cont \
     GROUP BY t.cname ORDER BY t.cname",
    // HAVING and arithmetic over the aggregates, integer division.
    "SELECT d.name, SUM(f.v) AS v, (1000 * SUM(f.v)) / SUM(f.k) AS permille FROM fact f \
     JOIN dim d ON f.k = d.id GROUP BY d.name HAVING SUM(f.v) > 0 ORDER BY d.name",
    // A group key of the big side, and a string one.
    "SELECT f.g, f.s, d.cont, SUM(f.v), MAX(f.s) FROM fact f JOIN dim d ON f.k = d.id \
     GROUP BY f.g, f.s, d.cont ORDER BY 1, 2, 3",
    // An argument computed from two columns of the big side.
    "SELECT t.cname, SUM(f.v * f.k) AS vk, MIN(f.v + f.g) FROM fact f JOIN dim d ON f.k = d.id \
     JOIN top t ON d.cont = t.cont GROUP BY t.cname ORDER BY 1",
    // An argument from both sides of the first join: the partial aggregate goes on it.
    "SELECT t.cname, SUM(f.v * d.cont) FROM fact f JOIN dim d ON f.k = d.id \
     JOIN top t ON d.cont = t.cont GROUP BY t.cname ORDER BY 1",
    // No GROUP BY: SUM, MIN, MAX only.
    "SELECT SUM(f.v), MIN(f.x), MAX(f.v) FROM fact f JOIN dim d ON f.k = d.id",
    // A filter in the join that reads both sides.
    "SELECT d.name, SUM(f.v), COUNT(*) FROM fact f JOIN dim d ON f.k = d.id AND f.x > d.cont \
     GROUP BY d.name ORDER BY 1",
    // A filter over the join that reads both sides.
    "SELECT d.name, SUM(f.v) FROM fact f, dim d WHERE f.k = d.id AND (f.g = d.cont OR d.cont = 3) \
     GROUP BY d.name ORDER BY 1",
    // A grouping key computed from both sides.
    "SELECT d.cont + f.g AS c, COUNT(*), SUM(f.v) FROM fact f JOIN dim d ON f.k = d.id \
     GROUP BY d.cont + f.g ORDER BY 1",
    // No group matches: empty answer.
    "SELECT d.name, SUM(f.v), COUNT(*) FROM fact f JOIN dim d ON f.k = d.id WHERE d.cont > 10 \
     GROUP BY d.name ORDER BY 1",
];

/// Statements the rule leaves alone, checked all the same.
const LEFT_ALONE: &[&str] = &[
    // An argument from both sides of the only join.
    "SELECT d.name, SUM(f.v * d.cont) FROM fact f JOIN dim d ON f.k = d.id \
     GROUP BY d.name ORDER BY 1",
    // DISTINCT and AVG.
    "SELECT d.name, COUNT(DISTINCT f.g), AVG(f.v) FROM fact f JOIN dim d ON f.k = d.id \
     GROUP BY d.name ORDER BY 1",
    // COUNT without GROUP BY must count 0 on an empty join.
    "SELECT COUNT(*), SUM(f.v) FROM fact f JOIN dim d ON f.k = d.id WHERE d.cont > 10",
    // An outer join.
    "SELECT d.name, SUM(f.v), COUNT(*) FROM fact f LEFT JOIN dim d ON f.k = d.id \
     GROUP BY d.name ORDER BY 1",
    // Two tables of the same size.
    "SELECT f.g, SUM(o.w), COUNT(*) FROM fact f JOIN other o ON f.k = o.k AND f.g = o.w % 3 \
     GROUP BY f.g ORDER BY 1",
    // A cross join: the big side has no column the rest reads, so a partial aggregate
    // would group it into one row, which an empty input also gives (COUNT 0) and the
    // join would multiply into groups the statement does not have.
    "SELECT d.name, COUNT(*), SUM(f.v) FROM fact f, dim d WHERE f.k > 1000 \
     GROUP BY d.name ORDER BY 1",
    "SELECT d.name, COUNT(*), SUM(f.v) FROM fact f CROSS JOIN dim d GROUP BY d.name ORDER BY 1",
    // FILTER on an aggregate.
    "SELECT d.name, SUM(f.v) FILTER (WHERE f.g = 1) FROM fact f JOIN dim d ON f.k = d.id \
     GROUP BY d.name ORDER BY 1",
];

/// Semi and anti joins (`IN`, null-aware `NOT IN`, `NOT EXISTS`), gone down on their kept side.
const SEMI: &[&str] = &[
    "SELECT f.g, SUM(f.v), COUNT(*) FROM fact f WHERE f.k IN (SELECT id FROM dim WHERE cont = 1) \
     GROUP BY f.g ORDER BY 1",
    "SELECT f.g, SUM(f.v), COUNT(*) FROM fact f WHERE f.k NOT IN (SELECT id FROM dim) \
     GROUP BY f.g ORDER BY 1",
    "SELECT f.g, SUM(f.v) FROM fact f WHERE NOT EXISTS (SELECT 1 FROM dim d WHERE d.id = f.k) \
     GROUP BY f.g ORDER BY 1",
    "SELECT t.cname, SUM(f.v) FROM fact f JOIN dim d ON f.k = d.id JOIN top t ON t.cont = d.cont \
     WHERE f.k IN (SELECT id FROM dim WHERE cont < 3) GROUP BY t.cname ORDER BY 1",
];

async fn pushed(ctx: &SessionContext, sql: &str) -> bool {
    answer(ctx, &format!("EXPLAIN {sql}"))
        .await
        .contains("__eager")
}

#[tokio::test]
async fn rewritten_statements_answer_as_before() {
    let with = context(true);
    let without = context(false);
    for sql in PUSHED.iter().chain(LEFT_ALONE).chain(SEMI) {
        let want = answer(&without, sql).await;
        let got = answer(&with, sql).await;
        assert_eq!(got, want, "{sql}");
        assert!(!pushed(&without, sql).await, "{sql}");
    }
    for sql in PUSHED {
        assert!(pushed(&with, sql).await, "not rewritten: {sql}");
    }
    for sql in LEFT_ALONE {
        assert!(!pushed(&with, sql).await, "rewritten: {sql}");
    }
    for sql in SEMI {
        assert!(pushed(&with, sql).await, "not rewritten: {sql}");
    }
}

/// The paper's "hits per continent" over the test tables.
const PAPER: &str = "SELECT t.cname, SUM(f.v) FROM fact f, dim d, top t \
                     WHERE f.k = d.id AND d.cont = t.cont GROUP BY t.cname";

/// The logical plan of `sql`, as EXPLAIN prints it.
async fn logical_plan(ctx: &SessionContext, sql: &str) -> String {
    let text = answer(ctx, &format!("EXPLAIN {sql}")).await;
    let lines: Vec<&str> = text
        .lines()
        .take_while(|l| !l.contains("physical_plan"))
        .collect();
    lines.join("\n")
}

#[tokio::test]
async fn the_partial_aggregate_goes_below_both_joins_once() {
    let plan = logical_plan(&context(true), PAPER).await;
    // The partial aggregate, grouped by the join key alone, reads `fact`.
    let partial = plan
        .lines()
        .position(|l| l.contains("Aggregate: groupBy=[[f.k]], aggr=[[sum(f.v) AS __eager0_0]]"))
        .unwrap_or_else(|| panic!("{plan}"));
    let joins_above = plan
        .lines()
        .take(partial)
        .filter(|l| l.contains("Inner Join"))
        .count();
    assert_eq!(joins_above, 2, "{plan}");
    // One partial aggregate, one combining it: no partial aggregate of a partial one.
    assert!(!plan.contains("__eager1"), "{plan}");
    assert_eq!(plan.matches("Aggregate:").count(), 2, "{plan}");
}

#[tokio::test]
async fn a_join_of_two_big_tables_below_small_ones_is_not_gone_into() {
    // `fact JOIN other` is big on both sides: the partial aggregate sits on the join,
    // grouped by what the joins above read.
    let plan = logical_plan(
        &context(true),
        "SELECT t.cname, SUM(o.w) FROM fact f JOIN other o ON f.g = o.k \
         JOIN dim d ON f.k = d.id JOIN top t ON d.cont = t.cont GROUP BY t.cname",
    )
    .await;
    let partial = plan
        .lines()
        .position(|l| l.contains("AS __eager0_0"))
        .unwrap_or_else(|| panic!("{plan}"));
    let below = plan.lines().skip(partial);
    assert!(
        below
            .into_iter()
            .any(|l| l.contains("Inner Join: f.g = o.k")),
        "{plan}"
    );
}

#[tokio::test]
async fn a_small_input_is_left_alone() {
    let sql = PAPER;
    let rows = |fact: usize| {
        let mut rows: HashMap<String, usize> = [("dim", 20), ("top", 4), ("other", FACT_ROWS)]
            .map(|(n, r)| (n.to_string(), r))
            .into();
        rows.insert("fact".to_string(), fact);
        Some(rows)
    };
    let small = context_told(rows(super::PAYS_FROM_ROWS - 1));
    assert!(!pushed(&small, sql).await);
    let big = context_told(rows(super::PAYS_FROM_ROWS));
    assert!(pushed(&big, sql).await);
}

/// Statements made from every choice of join shape, filter and GROUP BY, with aggregates
/// taken in turn: whatever the rule does with them, the answers match.
#[tokio::test]
async fn generated_statements_answer_as_before() {
    let with = context(true);
    let without = context(false);
    let joins = [
        "fact f JOIN dim d ON f.k = d.id",
        "fact f JOIN dim d ON f.k = d.id JOIN top t ON d.cont = t.cont",
        "fact f, dim d, top t WHERE f.k = d.id AND d.cont = t.cont",
        "fact f JOIN dim d ON f.k = d.id AND f.g = d.cont % 3",
    ];
    let filters = [
        "",
        "f.g = 1",
        "d.cont < 2",
        "f.x > d.cont",
        "f.v IS NULL",
        "f.k IN (SELECT id FROM dim WHERE cont <> 2)",
        "f.k > 1000",
    ];
    let groups = [
        ("d.name", "d.name"),
        ("d.cont, f.g", "d.cont, f.g"),
        ("f.s", "f.s"),
        ("d.cont + f.g", "d.cont + f.g"),
        ("", ""),
    ];
    let aggregates = [
        "SUM(f.v), COUNT(*)",
        "COUNT(f.v), MIN(f.x), MAX(f.s)",
        "SUM(f.d), MAX(f.v)",
        "MIN(f.v), SUM(f.x), COUNT(*)",
    ];
    let (mut rewritten, mut all) = (0, 0);
    for (j, join) in joins.iter().enumerate() {
        for (i, filter) in filters.iter().enumerate() {
            for (g, (select, group)) in groups.iter().enumerate() {
                let aggs = aggregates[(i + j + g) % aggregates.len()];
                // `top` appears only in some shapes; keep to columns every shape has.
                let mut sql = format!(
                    "SELECT {select}{} {aggs} FROM {join}",
                    if select.is_empty() { "" } else { "," }
                );
                let glue = if join.contains(" WHERE ") {
                    " AND "
                } else {
                    " WHERE "
                };
                if !filter.is_empty() {
                    sql.push_str(glue);
                    sql.push_str(filter);
                }
                if !group.is_empty() {
                    sql.push_str(&format!(" GROUP BY {group}"));
                }
                // Rows in any order: the printed lines, sorted.
                let sorted = |text: String| {
                    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
                    lines.sort();
                    lines
                };
                let want = sorted(answer(&without, &sql).await);
                let got = sorted(answer(&with, &sql).await);
                assert_eq!(got, want, "{sql}");
                all += 1;
                rewritten += usize::from(pushed(&with, &sql).await);
            }
        }
    }
    // The rule did go to work on most of them.
    assert!(rewritten * 2 > all, "{rewritten} of {all} rewritten");
}

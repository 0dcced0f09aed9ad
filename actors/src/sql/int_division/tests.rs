//! Doubles give exactly the integer quotient where the rule divides in them, DataFusion's
//! kernel answers everywhere else, and statements answer as on DataFusion's own context.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::MemTable;
use datafusion::common::config::ConfigOptions;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::prelude::{SessionConfig, SessionContext};

use super::*;
use crate::sql::engine::new_context;
use crate::sql::engine::tests::answer_text;

fn array(values: &[Option<i64>]) -> ColumnarValue {
    ColumnarValue::Array(Arc::new(Int64Array::from(values.to_vec())))
}

fn quotients(left: &ColumnarValue, right: &ColumnarValue) -> Option<Vec<Option<i64>>> {
    let out = divided(left, right)?;
    let out = out.as_any().downcast_ref::<Int64Array>()?;
    Some(out.iter().collect())
}

/// Pairs near the edges of exactness: every quotient equals integer division.
#[test]
fn doubles_give_the_integer_quotient() {
    let big = EXACT_UP_TO as i64;
    let mut operands = vec![0, 1, -1, 2, -2, 3, 7, 10, 99, 100, 101, -101, 1_000_003];
    operands.extend([
        big,
        -big,
        big - 1,
        -(big - 1),
        big / 3,
        big / 7 + 1,
        4_503_599_627_370_495,
    ]);
    operands.extend((1..60).map(|k| big / k - k));
    operands.extend((1..40).map(|k| -(big / (k * k + 1))));
    let mut checked = 0;
    for &a in &operands {
        let divisors: Vec<i64> = operands.iter().copied().filter(|&b| b != 0).collect();
        let lefts = vec![Some(a); divisors.len()];
        let rights: Vec<Option<i64>> = divisors.iter().map(|&b| Some(b)).collect();
        let got = quotients(&array(&lefts), &array(&rights)).expect("exact");
        for (b, q) in divisors.iter().zip(got) {
            assert_eq!(q, Some(a / b), "{a} / {b}");
            checked += 1;
        }
    }
    assert!(checked > 5_000);
}

#[test]
fn nulls_scalars_and_what_doubles_cannot_divide() {
    let left = array(&[Some(7), None, Some(-9), Some(0)]);
    let right = array(&[Some(2), Some(3), None, Some(-5)]);
    assert_eq!(
        quotients(&left, &right),
        Some(vec![Some(3), None, None, Some(0)])
    );
    // A NULL divisor may hold a zero (`nullif(b, 0)`): it is not a zero divisor.
    let zeros_nulled = ColumnarValue::Array(Arc::new(Int64Array::new(
        vec![2, 0, 5, 0].into(),
        Some(NullBuffer::from(vec![true, false, true, false])),
    )));
    assert_eq!(
        quotients(&left, &zeros_nulled),
        Some(vec![Some(3), None, Some(-1), None])
    );
    let ten = ColumnarValue::Scalar(ScalarValue::Int64(Some(10)));
    assert_eq!(
        quotients(&left, &ten),
        Some(vec![Some(0), None, Some(0), Some(0)])
    );
    let hundred = ColumnarValue::Scalar(ScalarValue::Int64(Some(-100)));
    assert_eq!(
        quotients(&hundred, &right),
        Some(vec![Some(-50), Some(-33), None, Some(20)])
    );
    // Left to DataFusion: a valid zero divisor, a value beyond 2^52, a NULL scalar.
    assert!(quotients(&left, &array(&[Some(1), Some(0), Some(1), Some(1)])).is_none());
    let huge = array(&[Some(1), Some(1 << 53), Some(1), Some(1)]);
    assert!(quotients(&huge, &right).is_none());
    assert!(quotients(&left, &ColumnarValue::Scalar(ScalarValue::Int64(None))).is_none());
    assert!(quotients(&left, &ColumnarValue::Scalar(ScalarValue::Int64(Some(0))),).is_none());
}

fn context(ours: bool) -> SessionContext {
    let config = SessionConfig::new().with_target_partitions(2);
    let ctx = if ours {
        new_context(config)
    } else {
        SessionContext::new_with_config(config)
    };
    let n = 5_000i64;
    let schema = Arc::new(Schema::new(vec![
        Field::new("a", DataType::Int64, true),
        Field::new("b", DataType::Int64, true),
        Field::new("c", DataType::Int64, false),
        Field::new("h", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter(
                (0..n).map(|i| (i % 11 != 0).then_some(i * 7919 - 17_000_000)),
            )) as ArrayRef,
            Arc::new(Int64Array::from_iter(
                (0..n).map(|i| (i % 13 != 0).then_some(i % 37 - 18)),
            )),
            Arc::new(Int64Array::from_iter_values((0..n).map(|i| i * 3 + 1))),
            Arc::new(Int64Array::from_iter_values((0..n).map(|i| {
                if i == 4_999 {
                    i64::MIN
                } else {
                    i * 3 + 1
                }
            }))),
        ],
    )
    .expect("batch");
    let table = MemTable::try_new(schema, vec![vec![batch]]).expect("table");
    ctx.register_table("t", Arc::new(table)).expect("register");
    ctx
}

async fn answer(ctx: &SessionContext, sql: &str) -> String {
    answer_text(ctx, sql)
        .await
        .unwrap_or_else(|e| format!("error: {e}"))
}

/// Our context divides by zero to NULL (`division`): DataFusion's own is asked the same
/// with the zero divisors made NULL.
#[tokio::test]
async fn statements_answer_as_datafusion_does() {
    let ours = context(true);
    let theirs = context(false);
    for (sql, same) in [
        (
            "SELECT a / b AS q FROM t ORDER BY 1",
            "SELECT a / nullif(b, 0) AS q FROM t ORDER BY 1",
        ),
        (
            "SELECT (100 * a) / c AS q, a / 10 * 10 AS band FROM t ORDER BY 1, 2",
            "SELECT (100 * a) / c AS q, a / 10 * 10 AS band FROM t ORDER BY 1, 2",
        ),
        (
            "SELECT COUNT(*) AS n FROM t WHERE (100 * c) / 7 < 5000",
            "SELECT COUNT(*) AS n FROM t WHERE (100 * c) / 7 < 5000",
        ),
        // `h` holds one value beyond 2^52: its batch is divided by DataFusion's kernel.
        (
            "SELECT h / 3 AS q FROM t ORDER BY 1",
            "SELECT h / 3 AS q FROM t ORDER BY 1",
        ),
        (
            "SELECT COUNT(*) AS n FROM t WHERE h / 3 > 100",
            "SELECT COUNT(*) AS n FROM t WHERE h / 3 > 100",
        ),
        (
            "SELECT -9000 / c AS q FROM t ORDER BY 1 LIMIT 5",
            "SELECT -9000 / c AS q FROM t ORDER BY 1 LIMIT 5",
        ),
    ] {
        assert_eq!(
            answer(&ours, sql).await,
            answer(&theirs, same).await,
            "{sql}"
        );
    }
    // Overflow is DataFusion's error.
    let overflow = "SELECT h / -1 FROM t";
    let error = answer(&ours, overflow).await;
    assert!(error.starts_with("error"), "{error}");
    assert_eq!(error, answer(&theirs, overflow).await);
}

#[tokio::test]
async fn the_rule_divides_projections_and_filters_and_shows_them_as_before() {
    let ctx = context(false);
    let sql = "SELECT a / b AS q, a + b AS s FROM t WHERE (100 * c) / 7 < 5000";
    let plan = ctx
        .sql(sql)
        .await
        .expect("plan")
        .create_physical_plan()
        .await
        .expect("physical");
    let shown = datafusion::physical_plan::displayable(plan.as_ref())
        .indent(true)
        .to_string();
    let rewritten = FastIntDivision
        .optimize(plan, &ConfigOptions::default())
        .expect("rule");
    let shown_after = datafusion::physical_plan::displayable(rewritten.as_ref())
        .indent(true)
        .to_string();
    assert_eq!(shown, shown_after);
    let mut divisions = 0;
    rewritten
        .apply(|node| {
            if let Some(p) = node.downcast_ref::<ProjectionExec>() {
                divisions += p
                    .expr()
                    .iter()
                    .filter(|e| e.expr.downcast_ref::<FloatExactDivide>().is_some())
                    .count();
            }
            if let Some(f) = node.downcast_ref::<FilterExec>() {
                f.predicate().apply(|e| {
                    divisions += usize::from(e.downcast_ref::<FloatExactDivide>().is_some());
                    Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
                })?;
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })
        .expect("walk");
    assert_eq!(divisions, 2, "{shown_after}");
}

//! Answers kept for the snapshot they were computed on. A generation is immutable, so an
//! answer to the same statement on the same snapshot (same generation, statics and views)
//! under the same limits is the same answer: served again without planning or running.
//! Only answers that depend on nothing else are kept: no function whose result may change
//! between calls (`now()`, `random()`: not `Immutable`), and no table computed when read
//! (the node's own `query_*` tables, history). The cache belongs to one snapshot at a time:
//! the first lookup on a newer snapshot empties it. Bounded by bytes (`[sql]
//! answer_cache_mb`), oldest first out; an answer larger than an eighth of it is not kept.
//! An answer is kept the second time its statement is answered on the snapshot, as plans
//! are (`plans`): statements sent once (ad-hoc queries, clients varying their thresholds)
//! keep nothing. Under issue 17's varied mix (no text repeats) every answer was kept and
//! none read again: with the cache off, a SQL node of 70,000 machines peaked 55-80 MiB
//! lower under that mix (BENCHMARKS.md).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::sql::parser::Statement as DfStatement;

use super::engine::{QueryLimits, QueryOutput, Snapshot};
use super::met_once::MetOnce;

/// A statement as planned (its canonical text) under the limits that shape its answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AnswerKey {
    sql: String,
    max_rows: usize,
    max_result_bytes: usize,
}

impl AnswerKey {
    pub fn new(statement: &DfStatement, limits: &QueryLimits) -> AnswerKey {
        AnswerKey {
            sql: statement.to_string(),
            max_rows: limits.max_rows,
            max_result_bytes: limits.max_result_bytes,
        }
    }
}

pub struct AnswerCache {
    budget: usize,
    inner: Mutex<Inner>,
}

/// Statements answered once that `Inner::seen` remembers at most; then it starts again.
const SEEN_MAX: usize = 1 << 16;

#[derive(Default)]
struct Inner {
    snapshot: Weak<Snapshot>,
    answers: HashMap<AnswerKey, (Arc<QueryOutput>, usize)>,
    /// Insertion order, for eviction.
    order: VecDeque<AnswerKey>,
    bytes: usize,
    /// Statements answered once on this snapshot.
    seen: MetOnce,
}

impl AnswerCache {
    /// `budget` bytes of answers at most; 0 turns the cache off.
    pub fn new(budget: usize) -> AnswerCache {
        AnswerCache {
            budget,
            inner: Mutex::default(),
        }
    }

    fn lock(&self, snapshot: &Arc<Snapshot>) -> std::sync::MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent.
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !Weak::ptr_eq(&inner.snapshot, &Arc::downgrade(snapshot)) {
            *inner = Inner {
                snapshot: Arc::downgrade(snapshot),
                ..Inner::default()
            };
        }
        inner
    }

    /// Whether answers are kept at all (`answer_cache_mb` > 0): when not, no key is made.
    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    /// The answer kept for `key` on `snapshot`, if any.
    pub fn get(&self, snapshot: &Arc<Snapshot>, key: &AnswerKey) -> Option<QueryOutput> {
        if self.budget == 0 {
            return None;
        }
        let inner = self.lock(snapshot);
        inner.answers.get(key).map(|(o, _)| (**o).clone())
    }

    /// Keeps `output` for `key` on `snapshot` if it may be served again and `key` was
    /// answered on it before (see the module).
    pub fn put(&self, snapshot: &Arc<Snapshot>, key: AnswerKey, output: &QueryOutput) {
        if self.budget == 0 || !output.cacheable {
            return;
        }
        let mut inner = self.lock(snapshot);
        if !inner.seen.met_before(&key, false, SEEN_MAX) || inner.answers.contains_key(&key) {
            return;
        }
        let size: usize = output
            .batches
            .iter()
            .map(|b| b.get_array_memory_size())
            .sum::<usize>()
            + key.sql.len();
        if size > self.budget / 8 {
            return;
        }
        while inner.bytes + size > self.budget {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some((_, n)) = inner.answers.remove(&old) {
                inner.bytes -= n;
            }
        }
        inner.bytes += size;
        inner.order.push_back(key.clone());
        inner.answers.insert(key, (Arc::new(output.clone()), size));
    }
}

/// Whether every function `plan` calls (subqueries included) gives the same result for
/// the same arguments.
pub(crate) fn immutable(plan: &LogicalPlan) -> bool {
    let mut immutable = true;
    let _ = plan.apply_with_subqueries(|node| {
        let _ = node.apply_expressions(|e| {
            e.apply(|e| {
                let volatility = match e {
                    Expr::ScalarFunction(f) => Some(f.func.signature().volatility),
                    Expr::AggregateFunction(f) => Some(f.func.signature().volatility),
                    Expr::WindowFunction(w) => Some(w.fun.signature().volatility),
                    // Not looked into: taken as changing.
                    Expr::HigherOrderFunction(_) => Some(Volatility::Volatile),
                    _ => None,
                };
                if volatility.is_some_and(|v| v != Volatility::Immutable) {
                    immutable = false;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        });
        Ok(if immutable {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    immutable
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;

    async fn plan(sql: &str) -> LogicalPlan {
        let ctx = super::super::engine::new_context(Default::default());
        ctx.state().create_logical_plan(sql).await.expect("plans")
    }

    #[tokio::test]
    async fn functions_that_may_change_keep_an_answer_out() {
        for sql in [
            "SELECT 1 + 2",
            "SELECT upper('a'), abs(-3)",
            "SELECT count(*) FROM (VALUES (1), (2)) t(x)",
        ] {
            assert!(immutable(&plan(sql).await), "{sql}");
        }
        for sql in [
            "SELECT now()",
            "SELECT random()",
            "SELECT 1 WHERE EXISTS (SELECT 1 WHERE random() > 0.5)",
            "SELECT x FROM (VALUES (1)) t(x) WHERE x < extract(epoch FROM current_timestamp)",
        ] {
            assert!(!immutable(&plan(sql).await), "{sql}");
        }
    }

    fn output(rows: i64) -> QueryOutput {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from_iter_values(0..rows))],
        )
        .expect("batch");
        QueryOutput {
            schema,
            batches: vec![batch],
            truncated: false,
            tables: Vec::new(),
            cacheable: true,
            phases: Default::default(),
        }
    }

    fn key(sql: &str) -> AnswerKey {
        AnswerKey {
            sql: sql.into(),
            max_rows: 10,
            max_result_bytes: 1 << 20,
        }
    }

    #[tokio::test]
    async fn answers_last_for_their_snapshot_within_the_budget() {
        let cache = AnswerCache::new(64 << 10);
        let first = Arc::new(Snapshot::empty_for_tests().await);
        // Answered once: not kept; the second time: kept.
        cache.put(&first, key("a"), &output(100));
        assert!(cache.get(&first, &key("a")).is_none());
        cache.put(&first, key("a"), &output(100));
        let hit = cache.get(&first, &key("a")).expect("kept");
        assert_eq!(hit.rows(), 100);
        assert!(cache.get(&first, &key("b")).is_none());
        // Not cacheable, or too large for an eighth of the budget: not kept.
        let mut changing = output(1);
        changing.cacheable = false;
        for _ in 0..2 {
            cache.put(&first, key("c"), &changing);
            cache.put(&first, key("big"), &output(2_000));
        }
        assert!(cache.get(&first, &key("c")).is_none());
        assert!(cache.get(&first, &key("big")).is_none());
        // The oldest leaves when the budget is full.
        for i in 0..20 {
            cache.put(&first, key(&format!("k{i}")), &output(700));
            cache.put(&first, key(&format!("k{i}")), &output(700));
        }
        assert!(cache.get(&first, &key("a")).is_none(), "evicted");
        assert!(cache.get(&first, &key("k19")).is_some());
        // Another snapshot: nothing of the first is served.
        let second = Arc::new(Snapshot::empty_for_tests().await);
        assert!(cache.get(&second, &key("k19")).is_none());
        // ... and a statement answered on the first is met for the first time on it.
        cache.put(&second, key("k19"), &output(1));
        assert!(cache.get(&second, &key("k19")).is_none());
        // Off.
        let off = AnswerCache::new(0);
        off.put(&second, key("a"), &output(1));
        off.put(&second, key("a"), &output(1));
        assert!(off.get(&second, &key("a")).is_none());
    }
}

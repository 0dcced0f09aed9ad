use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};

use crate::sql::engine::QueryLimits;
use crate::sql::machine_keys::tests::{expected, rows, snapshot, STATEMENTS};
use crate::sql::plans::tests::{snapshot_of, two_numbers};
use crate::sql::plans::PlanCache;

/// Beyond the joins of `machine_keys`' tests: aggregates, a window's top rows, a union, a
/// cross join, a sort with a limit, a scalar subquery.
const MORE: &[&str] = &[
    "SELECT cluster, COUNT(*) AS n, SUM(cluster) AS s FROM sys GROUP BY cluster HAVING COUNT(*) > 1",
    "SELECT machine_ip, rss FROM (SELECT machine_ip, rss, ROW_NUMBER() OVER (PARTITION BY machine_ip ORDER BY rss DESC) AS rn FROM processes) t WHERE rn <= 2",
    "SELECT machine_ip FROM sys UNION ALL SELECT machine_ip FROM machinerole",
    "SELECT COUNT(*) AS n FROM sys, machinerole",
    "SELECT machine_ip, rss FROM processes ORDER BY rss DESC, machine_ip LIMIT 3",
    "SELECT machine_ip, rss FROM processes WHERE rss > (SELECT AVG(rss) FROM processes)",
];

/// Whether a statement's physical plan is kept: all but a sort with a limit (a top-k
/// keeps its threshold in a dynamic filter), a scalar subquery (its results are shared
/// with the expressions that read them) and a count the physical rules answer from the
/// tables' row counts, which are planned each time.
fn kept(sql: &str) -> bool {
    !sql.contains("LIMIT") && !sql.contains("(SELECT AVG") && !sql.contains("COUNT(*) AS n FROM")
}

fn statements() -> Vec<&'static str> {
    STATEMENTS
        .iter()
        .map(|s| s.0)
        .chain(MORE.iter().copied())
        .collect()
}

#[tokio::test]
async fn a_kept_physical_plan_answers_from_each_new_snapshots_rows() {
    let plans = Arc::new(PlanCache::new(64));
    let limits = QueryLimits::default();
    let first = snapshot(0, &plans).await;
    // Planned, planned and kept, its plan reused, its physical plan kept.
    for sql in statements() {
        for _ in 0..4 {
            let out = first.query(sql, &limits).await.expect("answer");
            assert!(!out.phases.physical_reused, "{sql}");
            assert_eq!(rows(&out.batches), expected(0, sql).await, "{sql}");
        }
    }
    // Each new snapshot binds it, and answers from its own rows: a hash join's build
    // side, a repartition's channels and an aggregate's groups are the new snapshot's.
    // An aggregate met again on the first snapshot was read from its kept result there
    // (`kept_aggregates`), so its physical plan is kept on the next two.
    for (i, shift) in [1, 2, 0, 3].into_iter().enumerate() {
        let next = snapshot(shift, &plans).await;
        for sql in statements() {
            let out = next.query(sql, &limits).await.expect("answer");
            assert_eq!(rows(&out.batches), expected(shift, sql).await, "{sql}");
            assert!(out.phases.plan_reused, "{sql}");
            if kept(sql) && i >= 2 {
                assert!(out.phases.physical_reused, "{sql}");
            }
            if !kept(sql) {
                assert!(!out.phases.physical_reused, "{sql}");
            }
        }
    }
    // A kept physical plan holds no data, and no operator of it keeps what a run left
    // (metrics, which every run would otherwise add to).
    let templates: Vec<_> = plans
        .all()
        .iter()
        .filter_map(|k| k.physical.template())
        .collect();
    assert_eq!(
        templates.len(),
        statements().into_iter().filter(|s| kept(s)).count()
    );
    for template in templates {
        template
            .plan
            .apply(|node| {
                assert_ne!(node.name(), "DataSourceExec", "{template:?}");
                assert!(
                    node.metrics().is_none_or(|m| m.iter().next().is_none()),
                    "{} keeps metrics",
                    node.name()
                );
                Ok(TreeNodeRecursion::Continue)
            })
            .expect("walk");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_one_kept_physical_plan_at_once_on_two_snapshots_keep_apart() {
    let plans = Arc::new(PlanCache::new(16));
    let limits = QueryLimits::default();
    let sql = STATEMENTS[0].0;
    let first = snapshot(0, &plans).await;
    for _ in 0..4 {
        first.query(sql, &limits).await.expect("answer");
    }
    let snaps = [
        Arc::new(snapshot(1, &plans).await),
        Arc::new(snapshot(2, &plans).await),
    ];
    let runs = (0..16).map(|i| {
        let snap = snaps[i % 2].clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let out = snap.query(sql, &limits).await.expect("answer");
            (i % 2, out.phases.physical_reused, rows(&out.batches))
        })
    });
    let wants = [expected(1, sql).await, expected(2, sql).await];
    for run in futures::future::join_all(runs).await {
        let (which, reused, got) = run.expect("run");
        assert!(reused);
        assert_eq!(got, wants[which]);
    }
}

#[tokio::test]
async fn values_that_change_from_run_to_run_keep_no_physical_plan() {
    let plans = Arc::new(PlanCache::new(16));
    let limits = QueryLimits::default();
    let snap = snapshot(0, &plans).await;
    let with = |v: i64| format!("SELECT machine_ip, rss FROM processes WHERE rss > {v}");
    for v in [10, 20, 30, 40, 50, 60] {
        let out = snap.query(&with(v), &limits).await.expect("answer");
        assert!(!out.phases.physical_reused);
        assert_eq!(rows(&out.batches), expected(0, &with(v)).await);
    }
    // The same values met again in a row: kept, then bound.
    let mut reused = Vec::new();
    for _ in 0..3 {
        let out = snap.query(&with(25), &limits).await.expect("answer");
        assert_eq!(rows(&out.batches), expected(0, &with(25)).await);
        reused.push(out.phases.physical_reused);
    }
    assert_eq!(reused, [false, false, true]);
    let out = snap.query(&with(45), &limits).await.expect("answer");
    assert!(!out.phases.physical_reused);
    assert_eq!(rows(&out.batches), expected(0, &with(45)).await);
}

#[tokio::test]
async fn a_views_physical_plan_is_kept_and_each_snapshot_computes_the_view_from_its_rows() {
    let plans = Arc::new(PlanCache::new(16));
    let limits = QueryLimits::default();
    // `v` is the even numbers of `t` (0 to rows - 1), computed once per snapshot.
    let sql = "SELECT COUNT(*) AS c, SUM(n) AS s FROM v";
    let even = |rows: i64| {
        let v: Vec<i64> = (0..rows).filter(|n| n % 2 == 0).collect();
        (v.len() as i64, v.iter().sum::<i64>())
    };
    let view_kept = || {
        plans
            .all()
            .iter()
            .filter(|k| k.physical.template().is_some())
            .count()
    };
    let mut kept = Vec::new();
    let mut reused = Vec::new();
    // Sizes of one class (`catalog_fingerprint`), the plans kept for one serve all.
    for rows in [10, 10, 12, 10, 14, 11, 12] {
        let (snap, generation) = snapshot_of(rows, &plans).await;
        let out = snap.query(sql, &limits).await.expect("answer");
        assert_eq!(two_numbers(&out), even(rows), "{rows} rows");
        kept.push(view_kept());
        reused.push(out.phases.physical_reused);
        drop((out, snap));
        // Kept plans hold no generation's data.
        assert!(
            generation.upgrade().is_none(),
            "a kept plan keeps a generation alive"
        );
    }
    // The view's plan and the statement's are kept on the second snapshot and bound on the
    // third, their physical plans met there and kept on the fourth, bound from the fifth.
    assert_eq!(kept, [0, 0, 0, 2, 2, 2, 2]);
    assert_eq!(reused, [false, false, false, false, true, true, true]);
}

/// Physical rules that answer from a scan's exact statistics (`COUNT(*)` from its row
/// count) or push a limit into it: each snapshot answers from its own rows.
#[tokio::test]
async fn counts_and_limits_answer_from_each_snapshots_rows() {
    let plans = Arc::new(PlanCache::new(16));
    let limits = QueryLimits::default();
    let limited = "SELECT COUNT(*) AS c, SUM(n) AS s FROM (SELECT n FROM t LIMIT 5) l";
    for sql in [
        "SELECT COUNT(*) AS c, COUNT(n) AS s FROM t",
        "SELECT COUNT(*) AS c, COUNT(*) AS s FROM t, v",
        limited,
    ] {
        let mut reused = Vec::new();
        for rows in [10, 12, 10, 14, 11, 12, 13] {
            let (snap, _) = snapshot_of(rows, &plans).await;
            let out = snap.query(sql, &limits).await.expect("answer");
            let evens = (rows + 1) / 2;
            let want = match sql {
                s if s == limited => (5, 10),
                s if s.contains(", v") => (rows * evens, rows * evens),
                _ => (rows, rows),
            };
            assert_eq!(two_numbers(&out), want, "{sql} on {rows} rows");
            reused.push(out.phases.physical_reused);
        }
        // The limit pushed into the scan binds; the counts are never kept.
        assert_eq!(
            reused.iter().any(|r| *r),
            sql == limited,
            "{sql}: {reused:?}"
        );
    }
}

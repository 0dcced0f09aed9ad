//! SQL over a simulated fleet: Query (DataFusion, in process) against DuckDB on identical
//! data. For each fleet size it seals one generation from `FleetSimulator`, builds a
//! `Snapshot` with the shipped static tables and views, times every query of
//! `bench/queries.sql`, exports the same tables to CSV for `bench/duckdb_sql.py`, compares
//! both engines' answers and writes the figures to BENCHMARKS.md. Each query is timed in
//! process, over HTTP and in DuckDB (kept running, asked per query) one after the other,
//! so that its ratios compare the same moments of the host's load.
//!
//! End to end: the same queries over HTTP (`POST /sql`, JSON answer, one keep-alive
//! connection) against a real `queryd edge` holding the same data: the generation's tables
//! written to Parquet and served as static tables (identical values and types, partitioned
//! alike; no publisher runs, its schema directory is empty), the answer and aggregate
//! caches off. Its views are computed once per generation, as in service. For the smallest
//! fleet it also breaks a statement's time down by phase (`Phases`) and times the JSON
//! encoding.
//!
//! `BENCH_SCALE` (default 1.0) scales the fleets: 1,000 and 10,000 machines, plus 70,000 at
//! 1.0. `BENCH_RUNS` (default 5) is the number of timed runs after one warm-up (two where a
//! plan is kept); the median is reported. `BENCH_PYTHON` overrides `<repo>/.bench-venv/bin/python` (`make bench-venv`).
//! `BENCH_EXPLAIN=<name>[,<name>...]` (or `all`, or `sql:<statement>`) prints `EXPLAIN
//! ANALYZE` of those queries on the largest fleet to standard error and writes nothing:
//! where a query's time goes, with the median of `BENCH_RUNS` runs (at least 3) and the
//! last run's phases; with `BENCH_NARROW=1` every statement runs on one partition,
//! as on a busy node.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::csv::WriterBuilder;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use query_actors::edge::LocalPublisher;
use query_actors::generation::{Generation, GenerationBuilder};
use query_actors::sql::{
    load_views, BuildOptions, MemoryBudget, Phases, PlanCache, QueryLimits, Snapshot, ViewsFile,
    DEFAULT_AGGREGATE_CACHE_MB, DEFAULT_MAX_RESULT_BYTES, DEFAULT_PLAN_CACHE_ENTRIES,
};
use query_actors::static_tables::{StaticCatalog, StaticLoader};
use query_integration::bench::{
    env_f64, parse_queries, simulator, write_bench_section, DuckDbServer,
};
use query_integration::{repo, Node};
use serde_json::{json, Value};

/// Relative tolerance when comparing floating-point answers.
const FLOAT_TOLERANCE: f64 = 1e-6;

fn fleet_generation(machines: usize) -> Arc<Generation> {
    let mut sim = simulator(machines, 50);
    let now = SystemTime::now();
    let mut builder = GenerationBuilder::default();
    for p in sim.collect(now).tables {
        builder.add(&p.table, p.part).expect("one batch per table");
    }
    builder.seal(1, 1, now)
}

/// A new snapshot, so that every run computes the views it uses (Query caches a view for
/// the rest of its generation; DuckDB's views are recomputed on every query).
async fn snapshot(
    gen: &Arc<Generation>,
    statics: &Arc<StaticCatalog>,
    views: &ViewsFile,
    plans: &Arc<PlanCache>,
) -> Snapshot {
    snapshot_keeping(gen, statics, views, plans, DEFAULT_AGGREGATE_CACHE_MB << 20).await
}

/// [`snapshot`] keeping `aggregate_cache_bytes` of aggregates' results (0: none, so a
/// statement run again on it runs again: what runs on one snapshot times the statement,
/// not the read of its kept result).
async fn snapshot_keeping(
    gen: &Arc<Generation>,
    statics: &Arc<StaticCatalog>,
    views: &ViewsFile,
    plans: &Arc<PlanCache>,
    aggregate_cache_bytes: usize,
) -> Snapshot {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let options = BuildOptions {
        plans: plans.clone(),
        aggregate_cache_bytes,
        ..BuildOptions::default()
    };
    let snap = Snapshot::build_with(
        gen.clone(),
        statics.clone(),
        views,
        cores,
        DEFAULT_MAX_RESULT_BYTES,
        Arc::new(AtomicU64::new(0)),
        options,
    )
    .await;
    assert!(snap.view_errors.is_empty(), "views: {:?}", snap.view_errors);
    snap
}

/// `count` new snapshots, all built before any is queried: a statement run once on each
/// meets a snapshot that has served nothing (no view computed, no aggregate's result kept),
/// as the first statement of a generation does, and the runs come back to back, as
/// DuckDB's do. A snapshot built just before a run, or a pause of 50 ms, made the
/// statement about twice as slow (the processor's state after idle, then evicted caches:
/// issue 17's notes), which no statement of a busy node pays. The snapshots share the
/// generation's batches; each holds its own keyed copies and views.
async fn fresh_snapshots(
    gen: &Arc<Generation>,
    statics: &Arc<StaticCatalog>,
    views: &ViewsFile,
    plans: &Arc<PlanCache>,
    count: usize,
) -> Vec<Snapshot> {
    let mut snaps = Vec::with_capacity(count);
    for _ in 0..count {
        snaps.push(snapshot(gen, statics, views, plans).await);
    }
    snaps
}

/// The median time (ms) of 5 builds of a snapshot of `gen`, as a SQL node builds one per
/// generation (no statement's time includes it).
async fn build_ms(gen: &Arc<Generation>, statics: &Arc<StaticCatalog>, views: &ViewsFile) -> f64 {
    let plans = Arc::new(PlanCache::new(DEFAULT_PLAN_CACHE_ENTRIES));
    let mut times = Vec::with_capacity(5);
    for _ in 0..5 {
        let start = Instant::now();
        let snap = snapshot(gen, statics, views, &plans).await;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        drop(snap);
    }
    median(times)
}

/// `sql` run `warmups` times on `snap`, then `runs` times: the times (ms) of those runs
/// that answered.
async fn times_on(
    snap: &Snapshot,
    sql: &str,
    limits: &QueryLimits,
    warmups: usize,
    runs: usize,
) -> Vec<f64> {
    let mut times = Vec::with_capacity(runs);
    for i in 0..warmups + runs {
        let start = Instant::now();
        if snap.query(sql, limits).await.is_ok() && i >= warmups {
            times.push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    times
}

/// One engine's result for one query.
#[derive(Default)]
struct Outcome {
    /// A statement met before: its optimized plan kept (`[sql] plan_cache_entries`), each
    /// run on its own new snapshot as in the next generation, the runs back to back
    /// (`fresh_snapshots`).
    median_ms: Option<f64>,
    /// The statement planned from its text in every run (no plan kept), as `median_ms`.
    planned_ms: Option<f64>,
    /// As `median_ms`, but each run on a snapshot built just before it: the build (or any
    /// wait) just before a statement slows it about twice (issue 17's notes).
    after_build_ms: Option<f64>,
    /// Its plan kept, every run on one snapshot that served it before (and no aggregate's
    /// result kept): as DuckDB runs, and as a SQL node runs a statement once its snapshot
    /// has served others.
    warm_ms: Option<f64>,
    /// For a query over views: the median on one snapshot whose views are already
    /// computed (what every query after the first pays in a generation).
    cached_ms: Option<f64>,
    rows: Vec<Vec<Value>>,
    error: Option<String>,
    /// Median ms of each phase (parse, plan, analyze, optimize, physical, execute) when
    /// planned from the text, the JSON encoding of the answer, and whether it ran on one
    /// partition.
    phases: Option<([f64; 6], f64, bool)>,
    /// Every timed run of `median_ms` bound a kept physical plan (`kept_physical`).
    physical_kept: bool,
}

/// Runs before the timed ones where plans are kept: two to keep the plan, two to keep its
/// physical plan.
const WARM_UPS_KEPT: usize = 4;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// No answer or memory limit: the comparison with DuckDB measures the engine alone.
fn unlimited(parallel: bool) -> QueryLimits {
    QueryLimits {
        max_rows: usize::MAX,
        max_result_bytes: usize::MAX,
        memory: MemoryBudget::new(usize::MAX / 2, usize::MAX / 2),
        parallel,
        ..Default::default()
    }
}

async fn run_query(
    gen: &Arc<Generation>,
    statics: &Arc<StaticCatalog>,
    views: &ViewsFile,
    sql: &str,
    runs: usize,
    uses_views: bool,
) -> Outcome {
    let limits = unlimited(true);
    let mut times = Vec::with_capacity(runs);
    let mut phases: Vec<Phases> = Vec::with_capacity(runs);
    let mut encode = Vec::with_capacity(runs);
    let mut last = None;
    // One warm-up run, then the timed ones, each on its own new snapshot, all built first
    // (`fresh_snapshots`). No plan kept.
    let planning = Arc::new(PlanCache::new(0));
    for (i, snap) in fresh_snapshots(gen, statics, views, &planning, runs + 1)
        .await
        .iter()
        .enumerate()
    {
        let start = Instant::now();
        match snap.query(sql, &limits).await {
            Ok(out) => {
                if i > 0 {
                    times.push(start.elapsed().as_secs_f64() * 1000.0);
                    phases.push(out.phases);
                    let start = Instant::now();
                    let mut bytes = 0;
                    for (i, b) in out.batches.iter().enumerate() {
                        bytes += query_http::encode::json_rows(b, i == 0).len();
                    }
                    std::hint::black_box(bytes);
                    encode.push(start.elapsed().as_secs_f64() * 1000.0);
                }
                last = Some(out);
            }
            Err(e) => {
                return Outcome {
                    error: Some(e.to_string()),
                    ..Default::default()
                }
            }
        }
    }
    // The same with its plans kept, as a statement sent every generation: two warm-ups
    // plan it (a plan is kept the second time its statement is met), two more bind it and
    // plan it physically (a physical plan is kept the second time it is met with the same
    // values, `kept_physical`); the timed runs (each on its own new snapshot, as in the
    // next generation) bind them to their snapshot.
    let plans = Arc::new(PlanCache::new(DEFAULT_PLAN_CACHE_ENTRIES));
    let mut reused = Vec::with_capacity(runs);
    let mut physical_kept = true;
    for (i, snap) in fresh_snapshots(gen, statics, views, &plans, runs + WARM_UPS_KEPT)
        .await
        .iter()
        .enumerate()
    {
        let start = Instant::now();
        match snap.query(sql, &limits).await {
            Ok(out) if i >= WARM_UPS_KEPT => {
                reused.push(start.elapsed().as_secs_f64() * 1000.0);
                assert!(out.phases.plan_reused, "a kept plan for {sql}");
                physical_kept &= out.phases.physical_reused;
            }
            Ok(_) => {}
            Err(e) => {
                return Outcome {
                    error: Some(e.to_string()),
                    ..Default::default()
                }
            }
        }
    }
    // The plan kept, each run on a snapshot built just before it (this column's protocol
    // until 2026-12-01).
    let mut after_build = Vec::with_capacity(runs);
    for _ in 0..runs {
        let snap = snapshot(gen, statics, views, &plans).await;
        after_build.extend(times_on(&snap, sql, &limits, 0, 1).await);
    }
    // One snapshot keeping no aggregate's result. Warm: two warm-ups, the timed runs; not
    // for a query over views, where it would time the view's cached rows, which DuckDB
    // recomputes. Those get `cached_ms` instead: the first run computes the views, the
    // timed ones find them cached.
    let one = snapshot_keeping(gen, statics, views, &plans, 0).await;
    let (warm, cached) = match uses_views {
        false => (times_on(&one, sql, &limits, 2, runs).await, Vec::new()),
        true => (Vec::new(), times_on(&one, sql, &limits, 1, runs).await),
    };
    drop(one);
    let cached_ms = (!cached.is_empty()).then(|| median(cached));
    let batches = last.map(|o| o.batches).unwrap_or_default();
    let phase = |f: fn(&Phases) -> std::time::Duration| {
        median(phases.iter().map(|p| f(p).as_secs_f64() * 1000.0).collect())
    };
    let phase_ms = [
        phase(|p| p.parse),
        phase(|p| p.plan),
        phase(|p| p.analyze),
        phase(|p| p.optimize),
        phase(|p| p.physical),
        phase(|p| p.execute),
    ];
    let single = phases.first().is_some_and(|p| p.single_partition);
    match json_rows(&batches) {
        Ok(rows) => Outcome {
            median_ms: Some(median(reused)),
            planned_ms: Some(median(times)),
            after_build_ms: (!after_build.is_empty()).then(|| median(after_build)),
            warm_ms: (!warm.is_empty()).then(|| median(warm)),
            cached_ms,
            rows,
            error: None,
            phases: Some((phase_ms, median(encode), single)),
            physical_kept,
        },
        Err(e) => Outcome {
            error: Some(e),
            ..Default::default()
        },
    }
}

/// Rows as JSON values comparable with what the Python side prints: integers, floats,
/// strings, booleans, timestamps as epoch milliseconds.
fn json_rows(batches: &[RecordBatch]) -> Result<Vec<Vec<Value>>, String> {
    let mut rows = Vec::new();
    for b in batches {
        let cols: Vec<Vec<Value>> = b
            .columns()
            .iter()
            .map(json_column)
            .collect::<Result<_, _>>()?;
        for r in 0..b.num_rows() {
            rows.push(cols.iter().map(|c| c[r].clone()).collect());
        }
    }
    Ok(rows)
}

fn json_column(col: &ArrayRef) -> Result<Vec<Value>, String> {
    let err = |e: datafusion::arrow::error::ArrowError| e.to_string();
    let values = |f: &dyn Fn(usize) -> Value, a: &dyn Array| -> Vec<Value> {
        (0..a.len())
            .map(|i| if a.is_null(i) { Value::Null } else { f(i) })
            .collect()
    };
    Ok(match col.data_type() {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => {
            let a = cast(col, &DataType::Int64).map_err(err)?;
            let a = a.as_any().downcast_ref::<Int64Array>().ok_or("int64")?;
            values(&|i| json!(a.value(i)), a)
        }
        DataType::Float16
        | DataType::Float32
        | DataType::Float64
        | DataType::Decimal128(..)
        | DataType::Decimal256(..) => {
            let a = cast(col, &DataType::Float64).map_err(err)?;
            let a = a.as_any().downcast_ref::<Float64Array>().ok_or("float64")?;
            values(&|i| json!(a.value(i)), a)
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let a = cast(col, &DataType::Utf8).map_err(err)?;
            let a = a.as_any().downcast_ref::<StringArray>().ok_or("utf8")?;
            values(&|i| json!(a.value(i)), a)
        }
        DataType::Boolean => {
            let a = col
                .as_any()
                .downcast_ref::<BooleanArray>()
                .ok_or("boolean")?;
            values(&|i| json!(a.value(i)), a)
        }
        DataType::Timestamp(..) => {
            let ms = cast(col, &DataType::Timestamp(TimeUnit::Millisecond, None)).map_err(err)?;
            let a = cast(&ms, &DataType::Int64).map_err(err)?;
            let a = a.as_any().downcast_ref::<Int64Array>().ok_or("timestamp")?;
            values(&|i| json!(a.value(i)), a)
        }
        _ => {
            let f =
                ArrayFormatter::try_new(col.as_ref(), &FormatOptions::default()).map_err(err)?;
            values(&|i| json!(f.value(i).to_string()), col.as_ref())
        }
    })
}

/// DuckDB's name for a column's type; the exported CSV is read back with exactly these.
fn duckdb_type(dt: &DataType) -> &'static str {
    match dt {
        DataType::Int64 => "BIGINT",
        DataType::Float64 => "DOUBLE",
        DataType::Boolean => "BOOLEAN",
        DataType::Timestamp(..) => "TIMESTAMP",
        _ => "VARCHAR",
    }
}

/// Writes every table of the snapshot as `<table>.csv`, `schema.json` (table ->
/// [[column, DuckDB type]]) and `views.json` (the shipped views, in file order).
fn export(dir: &Path, gen: &Generation, statics: &StaticCatalog, views: &ViewsFile) {
    let mut tables: Vec<(&str, SchemaRef, Vec<&RecordBatch>)> = gen
        .tables
        .iter()
        .map(|(n, t)| (n.as_str(), t.schema.clone(), t.batches().collect()))
        .collect();
    for (n, t) in &statics.tables {
        if !gen.tables.contains_key(n) {
            tables.push((n.as_str(), t.batch.schema(), vec![&t.batch]));
        }
    }
    let mut schema = serde_json::Map::new();
    for (name, table_schema, batches) in tables {
        let file = std::fs::File::create(dir.join(format!("{name}.csv"))).expect("create CSV");
        // Timestamps are UTC; written without an offset they load as DuckDB TIMESTAMPs.
        let mut w = WriterBuilder::new()
            .with_header(true)
            .with_timestamp_tz_format("%Y-%m-%d %H:%M:%S%.3f".to_string())
            .with_timestamp_format("%Y-%m-%d %H:%M:%S%.3f".to_string())
            .build(file);
        if batches.is_empty() {
            // Still write the header line of an empty table.
            w.write(&RecordBatch::new_empty(table_schema.clone()))
                .expect("write CSV");
        }
        for b in batches {
            w.write(b).expect("write CSV");
        }
        let cols: Vec<Value> = table_schema
            .fields()
            .iter()
            .map(|f| json!([f.name(), duckdb_type(f.data_type())]))
            .collect();
        schema.insert(name.to_string(), Value::Array(cols));
    }
    let views: Vec<Value> = views
        .view
        .iter()
        .map(|v| json!({"name": v.name, "sql": v.sql}))
        .collect();
    std::fs::write(dir.join("schema.json"), Value::Object(schema).to_string())
        .expect("write schema.json");
    std::fs::write(dir.join("views.json"), Value::Array(views).to_string())
        .expect("write views.json");
}

/// DuckDB on the tables `export` wrote to `dir`, kept running to time each query when asked
/// (`bench/duckdb_sql.py`); `Err` says why it could not start (no venv, a failure).
fn start_duckdb(python: &Path, dir: &Path, runs: usize) -> Result<DuckDbServer, String> {
    let queries_file = repo().join("bench/queries.sql");
    DuckDbServer::start(
        python,
        "duckdb_sql.py",
        &[
            "--data".as_ref(),
            dir.as_os_str(),
            "--queries".as_ref(),
            queries_file.as_os_str(),
            "--runs".as_ref(),
            runs.to_string().as_ref(),
        ],
    )
}

/// DuckDB's time and answer for the query `name`, or why there is none.
fn duck_outcome(duck: &mut DuckDbServer, name: &str) -> Outcome {
    match duck.time(name) {
        Ok(q) => Outcome {
            median_ms: q["median_ms"].as_f64(),
            rows: answer_rows(&q),
            error: q["error"].as_str().map(str::to_string),
            ..Default::default()
        },
        Err(e) => Outcome {
            error: Some(e),
            ..Default::default()
        },
    }
}

/// The rows of a JSON answer (`{"rows": [[...], ...]}`, DuckDB's side and the node's alike).
fn answer_rows(answer: &Value) -> Vec<Vec<Value>> {
    answer["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| r.as_array().cloned().unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

/// Orders values: NULL, booleans, numbers (by value), strings, anything else.
fn cmp_value(a: &Value, b: &Value) -> Ordering {
    let rank = |v: &Value| match v {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Number(_) => 2,
        Value::String(_) => 3,
        _ => 4,
    };
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .unwrap_or(f64::NAN)
            .total_cmp(&y.as_f64().unwrap_or(f64::NAN)),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        _ => rank(a)
            .cmp(&rank(b))
            .then_with(|| a.to_string().cmp(&b.to_string())),
    }
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y || (x - y).abs() <= FLOAT_TOLERANCE * x.abs().max(y.abs()),
        _ => a == b,
    }
}

/// None if the answers agree (as multisets of rows), else the first difference.
fn compare(ours: &[Vec<Value>], theirs: &[Vec<Value>]) -> Option<String> {
    let sorted = |rows: &[Vec<Value>]| {
        let mut r = rows.to_vec();
        r.sort_by(|a, b| {
            a.iter()
                .zip(b)
                .map(|(x, y)| cmp_value(x, y))
                .find(|o| o.is_ne())
                .unwrap_or_else(|| a.len().cmp(&b.len()))
        });
        r
    };
    if ours.len() != theirs.len() {
        return Some(format!("{} rows against {}", ours.len(), theirs.len()));
    }
    let (a, b) = (sorted(ours), sorted(theirs));
    a.iter().zip(&b).find_map(|(x, y)| {
        let same = x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_value(p, q));
        (!same).then(|| {
            format!(
                "row {} against {}",
                Value::from(x.clone()),
                Value::from(y.clone())
            )
        })
    })
}

/// The static table type of an Arrow type of a published table.
fn column_type(dt: &DataType) -> &'static str {
    match dt {
        DataType::Int64 => "int64",
        DataType::Float64 => "float64",
        DataType::Boolean => "bool",
        DataType::Timestamp(..) => "timestamp",
        _ => "string",
    }
}

/// A `queryd edge` serving `gen`'s tables as static tables (Parquet files: the same
/// values and types) beside the shipped ones and views, with the answer and aggregate
/// caches off.
fn start_node(gen: &Generation) -> (tempfile::TempDir, Node) {
    use datafusion::parquet::arrow::ArrowWriter;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let statics = root.join("static-tables");
    std::fs::create_dir_all(root.join("schemas")).expect("mkdir");
    std::fs::create_dir_all(&statics).expect("mkdir");
    let shipped = repo().join("static-tables");
    let mut index = Vec::new();
    for e in std::fs::read_dir(&shipped)
        .expect("static-tables")
        .flatten()
    {
        let name = e.file_name().to_string_lossy().to_string();
        if name != "index.toml" {
            std::fs::copy(e.path(), statics.join(&name)).expect("copy");
            index.push(name);
        }
    }
    for (name, table) in &gen.tables {
        let file = std::fs::File::create(statics.join(format!("{name}.parquet"))).expect("create");
        let mut w = ArrowWriter::try_new(file, table.schema.clone(), None).expect("parquet");
        for b in table.batches() {
            w.write(b).expect("write parquet");
        }
        w.close().expect("close parquet");
        let columns: Vec<String> = table
            .schema
            .fields()
            .iter()
            .map(|f| {
                format!(
                    "  {{ name = \"{}\", type = \"{}\", nullable = {} }},",
                    f.name(),
                    column_type(f.data_type()),
                    f.is_nullable()
                )
            })
            .collect();
        std::fs::write(
            statics.join(format!("{name}.toml")),
            format!(
                "name = \"{name}\"\ndata = \"{name}.parquet\"\ncolumns = [\n{}\n]\n",
                columns.join("\n")
            ),
        )
        .expect("write toml");
        index.push(format!("{name}.toml"));
    }
    let list: Vec<String> = index.iter().map(|n| format!("\"{n}\"")).collect();
    std::fs::write(
        statics.join("index.toml"),
        format!("tables = [{}]\n", list.join(", ")),
    )
    .expect("write index");
    std::fs::copy(repo().join("ops/views.toml"), root.join("views.toml")).expect("views");
    let config = root.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[paths]\nschemas = \"schemas\"\nstatic_tables = \"static-tables/index.toml\"\n\
             views = \"views.toml\"\n\n[generation]\ninterval = \"1h\"\n\n\
             [sql]\nanswer_cache_mb = 0\naggregate_cache_mb = 0\n\n[edge]\nsocket = \"{}\"\nprewarm = []\n\n\
             [link]\nlisten = \"127.0.0.1:0\"\n",
            root.join("publish.sock").display()
        ),
    )
    .expect("write config");
    let node = Node::start(&[
        "edge",
        "--config",
        config.to_str().expect("utf8 path"),
        "--listen",
        "127.0.0.1:0",
    ]);
    (dir, node)
}

/// A query over HTTP: two warm-ups (the node keeps a plan the second time it meets its
/// statement), then `runs` timed POSTs on the agent's keep-alive connection.
fn run_http(agent: &ureq::Agent, url: &str, sql: &str, runs: usize) -> Outcome {
    let post = |sql: &str| -> Result<Value, String> {
        let r = agent
            .post(url)
            .set("Content-Type", "text/plain")
            .send_string(sql)
            .map_err(|e| e.to_string())?;
        r.into_json::<Value>().map_err(|e| e.to_string())
    };
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for i in 0..=runs + 1 {
        let start = Instant::now();
        match post(sql) {
            Ok(v) => {
                if i > 1 {
                    times.push(start.elapsed().as_secs_f64() * 1000.0);
                }
                last = Some(v);
            }
            Err(e) => {
                return Outcome {
                    error: Some(e),
                    ..Default::default()
                }
            }
        }
    }
    Outcome {
        median_ms: Some(median(times)),
        rows: last.as_ref().map(answer_rows).unwrap_or_default(),
        ..Default::default()
    }
}

struct Figure {
    name: String,
    ours: Outcome,
    http: Option<Outcome>,
    duck: Option<Outcome>,
}

/// One column's ratios to DuckDB over a fleet's queries.
#[derive(Default)]
struct Ratios<'a> {
    logs: Vec<f64>,
    highest: Option<(f64, &'a str)>,
}

impl<'a> Ratios<'a> {
    /// `ours / duck`, counted when both are known and positive.
    fn add(&mut self, ours: Option<f64>, duck: Option<f64>, name: &'a str) -> Option<f64> {
        let r = ours.zip(duck).map(|(a, b)| a / b)?;
        if r.is_finite() && r > 0.0 {
            self.logs.push(r.ln());
            if self.highest.is_none_or(|(h, _)| r > h) {
                self.highest = Some((r, name));
            }
        }
        Some(r)
    }

    fn geometric_mean(&self) -> f64 {
        match self.logs.len() {
            0 => f64::NAN,
            n => (self.logs.iter().sum::<f64>() / n as f64).exp(),
        }
    }

    fn highest(&self) -> String {
        match self.highest {
            Some((r, name)) => format!("{r:.2} ({name})"),
            None => "—".into(),
        }
    }
}

/// A time (ms) or a ratio to two decimals, "—" if unknown.
fn two(v: Option<f64>) -> String {
    v.map(|m| format!("{m:.2}")).unwrap_or_else(|| "—".into())
}

/// `EXPLAIN ANALYZE` of the named queries (`all`: every one) on the largest fleet, to
/// standard error, after one warm-up run of each.
fn explain(
    rt: &tokio::runtime::Runtime,
    sizes: &[usize],
    queries: &[(String, String)],
    statics: &Arc<StaticCatalog>,
    views: &ViewsFile,
    which: &str,
    runs: usize,
) {
    let machines = sizes.iter().copied().max().unwrap_or(1_000);
    let gen = fleet_generation(machines);
    let given;
    let (queries, wanted): (&[(String, String)], Vec<&str>) = match which.strip_prefix("sql:") {
        Some(sql) => {
            given = [("given".to_string(), sql.to_string())];
            (&given, vec!["all"])
        }
        None => (queries, which.split(',').map(str::trim).collect()),
    };
    // `BENCH_NARROW=1`: as on a busy node, one partition (`QueryLimits::parallel`).
    let limits = unlimited(std::env::var_os("BENCH_NARROW").is_none());
    for (name, sql) in queries {
        if !wanted.contains(&"all") && !wanted.contains(&name.as_str()) {
            continue;
        }
        let text = rt.block_on(async {
            // Planned from the text every run: the phases show where planning goes. No
            // aggregate's result kept: the runs after the second would read it.
            let no_plans = Arc::new(PlanCache::new(0));
            let snap = snapshot_keeping(&gen, statics, views, &no_plans, 0).await;
            let mut times = Vec::new();
            let mut last = None;
            for _ in 0..=runs.max(3) {
                let start = Instant::now();
                match snap.query(sql, &limits).await {
                    Ok(out) => last = Some(out.phases),
                    Err(e) => return format!("error: {e}"),
                }
                times.push(start.elapsed().as_secs_f64() * 1000.0);
            }
            let ms = median(times[1..].to_vec());
            let phases = last.map(|p| {
                let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
                format!(
                    "\nlast run's phases (ms): parse {:.2}, plan {:.2}, analyze {:.2}, optimize {:.2}, physical {:.2}, execute {:.2}",
                    ms(p.parse), ms(p.plan), ms(p.analyze), ms(p.optimize), ms(p.physical), ms(p.execute)
                )
            });
            match snap.query(&format!("EXPLAIN ANALYZE {sql}"), &limits).await {
                Ok(out) => {
                    out.batches
                        .iter()
                        .filter_map(|b| {
                            let col = b.column(b.num_columns() - 1);
                            col.as_any()
                                .downcast_ref::<StringArray>()
                                .map(|a| a.iter().flatten().collect::<Vec<_>>().join("\n"))
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                        + &format!(
                            "\nmedian of {} runs after a warm-up: {ms:.2} ms",
                            times.len() - 1
                        )
                        + phases.as_deref().unwrap_or("")
                        + &format!(
                            "\neach run (ms, the warm-up first): {}",
                            times.iter().map(|t| format!("{t:.2}")).collect::<Vec<_>>().join(" ")
                        )
                }
                Err(e) => format!("error: {e}"),
            }
        });
        eprintln!("== {name} ({machines} machines)\n{text}\n");
    }
}

fn main() {
    // As `queryd` runs: without transparent huge pages.
    query_actors::heap::no_huge_pages();
    let scale = env_f64("BENCH_SCALE", 1.0).clamp(0.001, 1.0);
    let runs = (env_f64("BENCH_RUNS", 5.0) as usize).max(1);
    let python = std::env::var_os("BENCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".bench-venv/bin/python"));
    let mut sizes: Vec<usize> = [1_000.0, 10_000.0]
        .iter()
        .map(|m| ((m * scale).round() as usize).max(1))
        .collect();
    if scale >= 1.0 {
        sizes.push(70_000);
    }
    let queries_text =
        std::fs::read_to_string(repo().join("bench/queries.sql")).expect("bench/queries.sql");
    let queries = parse_queries(&queries_text);
    let statics = StaticLoader::new(repo().join("static-tables/index.toml"))
        .reload()
        .expect("shipped static tables load");
    assert!(
        statics.errors.is_empty(),
        "static tables: {:?}",
        statics.errors
    );
    let views = load_views(&repo().join("ops/views.toml")).expect("shipped views load");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    if let Ok(which) = std::env::var("BENCH_EXPLAIN") {
        explain(&rt, &sizes, &queries, &statics, &views, &which, runs);
        return;
    }
    let mut duck_version = None;
    let mut duck_problem = None;
    let mut per_size: Vec<(usize, String, Vec<Figure>)> = Vec::new();
    for &machines in &sizes {
        eprintln!("sql bench: {machines} machines");
        let gen = fleet_generation(machines);
        let shape = gen
            .tables
            .iter()
            .map(|(n, t)| format!("{n} {}", t.rows()))
            .collect::<Vec<_>>()
            .join(", ");
        let shape = format!(
            "{shape}; a snapshot of them built in {:.1} ms (median of 5: the tables spread over \
             the cores, keyed by machine, their columns' bounds, the views planned)",
            rt.block_on(build_ms(&gen, &statics, &views))
        );
        // DuckDB and a node serving the same data over HTTP start first, then each query
        // is timed in process, over HTTP and in DuckDB, one after another: the three
        // figures of a query come from the same second of the host's load.
        let dir = tempfile::tempdir().expect("tempdir");
        export(dir.path(), &gen, &statics, &views);
        let mut duck = match start_duckdb(&python, dir.path(), runs) {
            Ok(d) => {
                duck_version = Some(d.version().to_string());
                Some(d)
            }
            Err(e) => {
                eprintln!("sql bench: DuckDB not run: {e}");
                duck_problem = Some(e);
                None
            }
        };
        let (_node_dir, node) = start_node(&gen);
        let expected = gen.tables.get("processes").map(|t| t.rows()).unwrap_or(0);
        node.eventually(
            std::time::Duration::from_secs(120),
            "the static tables loaded",
            || {
                let (_, v) = node.sql("SELECT COUNT(*) FROM processes");
                (v["rows"][0][0].as_u64() == Some(expected as u64)).then_some(())
            },
        );
        let agent = ureq::AgentBuilder::new()
            .timeout(std::time::Duration::from_secs(120))
            .build();
        let url = node.url("/sql");
        let mut figures: Vec<Figure> = queries
            .iter()
            .map(|(name, sql)| Figure {
                name: name.clone(),
                ours: rt.block_on(run_query(
                    &gen,
                    &statics,
                    &views,
                    sql,
                    runs,
                    name.starts_with("view_"),
                )),
                http: Some(run_http(&agent, &url, sql, runs)),
                duck: duck.as_mut().map(|d| duck_outcome(d, name)),
            })
            .collect();
        drop(duck);
        if machines == sizes[0] {
            // The fixed cost of a statement, on the smallest fleet (DuckDB not asked).
            figures.push(Figure {
                name: "select_1".into(),
                ours: rt.block_on(run_query(&gen, &statics, &views, "SELECT 1", runs, false)),
                http: Some(run_http(&agent, &url, "SELECT 1", runs)),
                duck: None,
            });
        }
        per_size.push((machines, shape, figures));
    }

    let mut body = format!(
        "## SQL: Query against DuckDB on the same simulated fleet\n\n\
         Each fleet is one sealed generation of `FleetSimulator` (50 machines per cluster, one\n\
         batch per table as `queryd demo` serves it) with the shipped static tables and views.\n\
         Query runs in process (`Snapshot::query`: plan, execute, collect; partitions = cores, one for\n\
         statements over at most 100,000 rows). Query ms is a statement met before, as alerts,\n\
         reports and dashboards send theirs every generation: its optimized plan kept\n\
         (`[sql] plan_cache_entries`) and bound to the run's new snapshot, and so is its physical\n\
         plan where it can be kept (`kept_physical`; table \"Where a statement's time goes\"), else\n\
         planned again; then executed. Planned ms plans it from its text in every run (no plan kept):\n\
         a statement the node has not seen;\n\
         DuckDB loads the same tables from CSV with the same column types and runs from Python\n\
         (`execute().fetchall()`, which includes building Python rows), kept running: each query\n\
         is timed in process, then over HTTP, then in DuckDB, one right after the other, so that\n\
         its ratios compare runs of the same second (this host's faster and slower spells last\n\
         seconds; until 2026-12-04 DuckDB ran after all of Query's runs, and one statement's\n\
         ratio swung between 0.70 and 1.25 across runs of the same code). Median of {runs} runs\n\
         after one warm-up (four where plans are kept: two to keep the plan, two its physical plan). Queries: `bench/queries.sql`. Every Query run gets a new\n\
         snapshot, so views are computed in each run, as DuckDB's are (in service Query\n\
         computes a view once per generation and later uses cost almost nothing); the runs'\n\
         snapshots are all built first and the runs come back to back, as DuckDB's do. After\n\
         build is Query ms with each run on a snapshot built just before it (this column's\n\
         protocol until 2026-12-01): a build, or a pause of 50 ms, just before a statement made it\n\
         about twice as slow (the processor's state after idle, then evicted caches: issue 17's\n\
         notes), which a SQL node pays once per generation, not on the hundreds of statements\n\
         after it. Warm is the same statement, its plan kept, run again on one snapshot that\n\
         keeps no aggregate's result, as DuckDB runs (not for queries over views, which that\n\
         snapshot would read cached; table below). Ratio is Query / DuckDB (planned ratio:\n\
         planned / DuckDB, and so on): above 1 means Query is slower. DuckDB\n\
         plans every run (no prepared statements). Answers are compared as sorted rows,\n\
         floats to {FLOAT_TOLERANCE:e} relative. HTTP is the same query end to end as a client\n\
         sees it: `POST /sql` to a `queryd edge` holding the same tables (written to Parquet\n\
         and served as static tables: same values, types and partitions), JSON answer parsed,\n\
         one keep-alive connection, answer and aggregate caches off, plans kept as in service; its views are\n\
         computed once per generation as in service. HTTP ratio is HTTP / DuckDB; answers match means Query,\n\
         HTTP and DuckDB agree.\n\n\
         DataFusion {}, DuckDB {}.\n",
        datafusion::DATAFUSION_VERSION,
        duck_version.as_deref().unwrap_or("not run"),
    );
    if let Some(p) = &duck_problem {
        body.push_str(&format!("\nDuckDB was not run: {p}.\n"));
    }
    let mut differences = Vec::new();
    for (machines, shape, figures) in &per_size {
        body.push_str(&format!(
            "\n### {machines} machines\n\nRows: {shape}.\n\n\
             | query | rows | Query ms | planned ms | after build ms | warm ms | HTTP ms | DuckDB ms | ratio | planned ratio | after build ratio | warm ratio | HTTP ratio | answers match |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
        ));
        let mut ratios = Ratios::default();
        let mut planned_ratios = Ratios::default();
        let mut after_build_ratios = Ratios::default();
        let mut warm_ratios = Ratios::default();
        let mut http_ratios = Ratios::default();
        for f in figures.iter().filter(|f| f.name != "select_1") {
            let http_ms = f.http.as_ref().and_then(|h| h.median_ms);
            if let Some(h) = &f.http {
                let why = match &h.error {
                    Some(e) => Some(format!("HTTP failed: {e}")),
                    None => compare(&h.rows, &f.ours.rows),
                };
                if let Some(why) = why {
                    differences.push(format!(
                        "{} at {machines} machines, HTTP against in process: {}",
                        f.name,
                        why.replace('\n', " ")
                    ));
                }
            }
            let duck = f.duck.as_ref().and_then(|d| d.median_ms);
            let ratio = ratios.add(f.ours.median_ms, duck, &f.name);
            let planned_ratio = planned_ratios.add(f.ours.planned_ms, duck, &f.name);
            let after_build_ratio = after_build_ratios.add(f.ours.after_build_ms, duck, &f.name);
            let warm_ratio = warm_ratios.add(f.ours.warm_ms, duck, &f.name);
            let http_ratio = http_ratios.add(http_ms, duck, &f.name);
            let matches = match &f.duck {
                Some(d) => {
                    let verdict = match (&f.ours.error, &d.error) {
                        (Some(e), _) => Some(format!("Query failed: {e}")),
                        (_, Some(e)) => Some(format!("DuckDB failed: {e}")),
                        _ => compare(&f.ours.rows, &d.rows),
                    };
                    match verdict {
                        None => "yes".to_string(),
                        Some(why) => {
                            differences.push(format!(
                                "{} at {machines} machines: {}",
                                f.name,
                                why.replace('\n', " ")
                            ));
                            "**no**".to_string()
                        }
                    }
                }
                None => "not compared".into(),
            };
            let rows = match &f.ours.error {
                Some(_) => "error".to_string(),
                None => f.ours.rows.len().to_string(),
            };
            body.push_str(&format!(
                "| {} | {rows} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {matches} |\n",
                f.name,
                two(f.ours.median_ms),
                two(f.ours.planned_ms),
                two(f.ours.after_build_ms),
                two(f.ours.warm_ms),
                two(http_ms),
                two(duck),
                two(ratio),
                two(planned_ratio),
                two(after_build_ratio),
                two(warm_ratio),
                two(http_ratio),
            ));
        }
        if !ratios.logs.is_empty() {
            body.push_str(&format!(
                "\nGeometric mean of the ratios: {:.2} in process, {:.2} planned, {:.2} after a build, {:.2} warm (over {}), {:.2} over HTTP, over {} queries; highest in process {}, planned {}, after a build {}, warm {}, over HTTP {}",
                ratios.geometric_mean(),
                planned_ratios.geometric_mean(),
                after_build_ratios.geometric_mean(),
                warm_ratios.geometric_mean(),
                warm_ratios.logs.len(),
                http_ratios.geometric_mean(),
                ratios.logs.len(),
                ratios.highest(),
                planned_ratios.highest(),
                after_build_ratios.highest(),
                warm_ratios.highest(),
                http_ratios.highest(),
            ));
            body.push_str(".\n");
        }
    }

    if let Some((machines, _, figures)) = per_size.first() {
        body.push_str(&format!(
            "\n### Where a statement's time goes, {machines} machines (median ms)\n\n\
             In process and planned from the text, by phase (`Phases` in \
             `actors/src/sql/engine.rs`): parse and the front door; SQL to logical plan (with the read-only check and the tables scanned); \
             analyzer rules (DataFusion's and ours); logical optimizer; physical planning (with \
             time slicing and the query's memory pool); execution and collection; planned is \
             their sum, reused the statement on a kept plan (parse, binding the plan, physical \
             planning, execution). JSON is \
             encoding the answer's rows (`query_http::encode::json_rows`); HTTP rest is what the \
             HTTP column (plans kept) adds beyond the reused statement and the encoding (admission, the pool hops, \
             headers, the socket, the client parsing JSON). 1 part. says the statement ran on one \
             partition (inputs of at most {} rows); phys. kept that the reused runs bound a physical \
             plan kept from the runs before (`actors/src/sql/kept_physical.rs`; no for a plan \
             holding state a rebuild does not reset, such as a scalar subquery, or reading \
             the snapshot's bounds).\n\n\
             | query | parse | plan | analyze | optimize | physical | execute | JSON | HTTP rest | planned | reused | HTTP | 1 part. | phys. kept |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n",
            query_actors::sql::SINGLE_PARTITION_ROWS,
        ));
        for f in figures {
            let Some((p, enc, single)) = f.ours.phases else {
                continue;
            };
            let planned = f.ours.planned_ms.unwrap_or(f64::NAN);
            let reused = f.ours.median_ms.unwrap_or(f64::NAN);
            let http = f.http.as_ref().and_then(|h| h.median_ms);
            let rest = http.map(|h| h - reused - enc);
            body.push_str(&format!(
                "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {enc:.3} | {} | {planned:.3} | {reused:.3} | {} | {} | {} |\n",
                f.name,
                p[0],
                p[1],
                p[2],
                p[3],
                p[4],
                p[5],
                rest.map(|r| format!("{r:.3}")).unwrap_or_else(|| "—".into()),
                http.map(|h| format!("{h:.3}")).unwrap_or_else(|| "—".into()),
                if single { "yes" } else { "no" },
                if f.ours.physical_kept { "yes" } else { "no" },
            ));
        }
    }

    if per_size.len() > 1 {
        let sizes_label = per_size
            .iter()
            .map(|(m, _, _)| m.to_string())
            .collect::<Vec<_>>()
            .join(" → ");
        body.push_str(&format!(
            "\n### How it grows, {sizes_label} machines (median ms)\n\n| query | Query | planned | DuckDB |\n|---|---|---|---|\n"
        ));
        for (i, (name, _)) in queries.iter().enumerate() {
            let series = |pick: &dyn Fn(&Figure) -> Option<f64>| {
                per_size
                    .iter()
                    .map(|(_, _, figs)| two(figs.get(i).and_then(pick)))
                    .collect::<Vec<_>>()
                    .join(" → ")
            };
            body.push_str(&format!(
                "| {name} | {} | {} | {} |\n",
                series(&|f| f.ours.median_ms),
                series(&|f| f.ours.planned_ms),
                series(&|f| f.duck.as_ref().and_then(|d| d.median_ms)),
            ));
        }
    }
    body.push_str(
        "\n### View cache: a query over a view, the view recomputed vs cached (median ms)\n\n\
         In service a view is computed at most once per generation, on first use; later \
         queries in that generation read the cached result. Cached is the statement run \
         again on one snapshot that keeps no aggregate's result: it reads the view's rows \
         and computes the rest.\n\n| query | machines | view recomputed | view cached | speed-up |\n|---|---:|---:|---:|---:|\n",
    );
    for (machines, _, figures) in &per_size {
        for f in figures {
            if let (Some(fresh), Some(cached)) = (f.ours.median_ms, f.ours.cached_ms) {
                body.push_str(&format!(
                    "| {} | {machines} | {fresh:.2} | {cached:.2} | {:.1}x |\n",
                    f.name,
                    fresh / cached.max(1e-9)
                ));
            }
        }
    }
    if !differences.is_empty() {
        body.push_str("\n### Answers that differ\n\n");
        for d in &differences {
            body.push_str(&format!("- {d}\n"));
        }
    }

    println!("{body}");
    let command = format!("BENCH_SCALE={scale} BENCH_RUNS={runs} make bench");
    if let Err(e) = write_bench_section("sql", &command, &body) {
        eprintln!("cannot write BENCHMARKS.md: {e}");
        std::process::exit(1);
    }
}

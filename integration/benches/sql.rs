//! SQL over a simulated fleet: Query (DataFusion, in process) against DuckDB on identical
//! data. For each fleet size it seals one generation from `FleetSimulator`, builds a
//! `Snapshot` with the shipped static tables and views, times every query of
//! `bench/queries.sql`, exports the same tables to CSV for `bench/duckdb_sql.py`, compares
//! both engines' answers and writes the figures to BENCHMARKS.md.
//!
//! `BENCH_SCALE` (default 1.0) scales the fleets: 1,000 and 10,000 machines, plus 70,000 at
//! 1.0. `BENCH_RUNS` (default 5) is the number of timed runs after one warm-up; the median
//! is reported. `BENCH_PYTHON` overrides `<repo>/.bench-venv/bin/python` (`make bench-venv`).

use std::cmp::Ordering;
use std::collections::BTreeMap;
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
    load_views, MemoryBudget, QueryLimits, Snapshot, ViewsFile, DEFAULT_MAX_RESULT_BYTES,
};
use query_actors::static_tables::{StaticCatalog, StaticLoader};
use query_integration::bench::{
    env_f64, parse_queries, run_duckdb_script, simulator, write_bench_section,
};
use query_integration::repo;
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
) -> Snapshot {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let snap = Snapshot::build(
        gen.clone(),
        statics.clone(),
        views,
        cores,
        DEFAULT_MAX_RESULT_BYTES,
        Arc::new(AtomicU64::new(0)),
    )
    .await;
    assert!(snap.view_errors.is_empty(), "views: {:?}", snap.view_errors);
    snap
}

/// One engine's result for one query.
#[derive(Default)]
struct Outcome {
    median_ms: Option<f64>,
    /// For a query over views: the median on one snapshot whose views are already
    /// computed (what every query after the first pays in a generation).
    cached_ms: Option<f64>,
    rows: Vec<Vec<Value>>,
    error: Option<String>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
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
    // No answer or memory limit: the comparison with DuckDB measures the engine alone.
    let limits = QueryLimits {
        max_rows: usize::MAX,
        max_result_bytes: usize::MAX,
        memory: MemoryBudget::new(usize::MAX / 2, usize::MAX / 2),
        ..Default::default()
    };
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    // One warm-up run, then the timed ones; snapshot building is not timed.
    for i in 0..=runs {
        let snap = snapshot(gen, statics, views).await;
        let start = Instant::now();
        match snap.query(sql, &limits).await {
            Ok(out) => {
                if i > 0 {
                    times.push(start.elapsed().as_secs_f64() * 1000.0);
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
    let mut cached_ms = None;
    if uses_views {
        // One snapshot: the first query computes the views, the timed ones find them cached.
        let snap = snapshot(gen, statics, views).await;
        let mut cached = Vec::with_capacity(runs);
        for i in 0..=runs {
            let start = Instant::now();
            if snap.query(sql, &limits).await.is_ok() && i > 0 {
                cached.push(start.elapsed().as_secs_f64() * 1000.0);
            }
        }
        cached_ms = (!cached.is_empty()).then(|| median(cached));
    }
    let batches = last.map(|o| o.batches).unwrap_or_default();
    match json_rows(&batches) {
        Ok(rows) => Outcome {
            median_ms: Some(median(times)),
            cached_ms,
            rows,
            error: None,
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

/// Runs the DuckDB side; `Err` says why it could not (no venv, a failure).
fn run_duckdb(
    python: &Path,
    dir: &Path,
    runs: usize,
) -> Result<(String, BTreeMap<String, Outcome>), String> {
    let queries_file = repo().join("bench/queries.sql");
    let (version, queries) = run_duckdb_script(
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
    )?;
    let mut results = BTreeMap::new();
    for (name, q) in &queries {
        let rows = q["rows"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| r.as_array().cloned().unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default();
        results.insert(
            name.clone(),
            Outcome {
                median_ms: q["median_ms"].as_f64(),
                rows,
                error: q["error"].as_str().map(str::to_string),
                ..Default::default()
            },
        );
    }
    Ok((version, results))
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

struct Figure {
    name: String,
    ours: Outcome,
    duck: Option<Outcome>,
}

fn ms(v: Option<f64>) -> String {
    v.map(|m| format!("{m:.2}")).unwrap_or_else(|| "—".into())
}

fn main() {
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
                duck: None,
            })
            .collect();

        let dir = tempfile::tempdir().expect("tempdir");
        export(dir.path(), &gen, &statics, &views);
        match run_duckdb(&python, dir.path(), runs) {
            Ok((version, mut results)) => {
                duck_version = Some(version);
                for f in &mut figures {
                    f.duck = results.remove(&f.name);
                }
            }
            Err(e) => {
                eprintln!("sql bench: DuckDB not run: {e}");
                duck_problem = Some(e);
            }
        }
        per_size.push((machines, shape, figures));
    }

    let mut body = format!(
        "## SQL: Query against DuckDB on the same simulated fleet\n\n\
         Each fleet is one sealed generation of `FleetSimulator` (50 machines per cluster, one\n\
         batch per table as `queryd demo` serves it) with the shipped static tables and views.\n\
         Query runs in process (`Snapshot::query`: plan, execute, collect; partitions = cores);\n\
         DuckDB loads the same tables from CSV with the same column types and runs from Python\n\
         (`execute().fetchall()`, which includes building Python rows). Median of {runs} runs\n\
         after one warm-up. Queries: `bench/queries.sql`. Every Query run gets a fresh\n\
         snapshot, so views are computed in each run, as DuckDB's are (in service Query\n\
         computes a view once per generation and later uses cost almost nothing). Ratio is\n\
         Query / DuckDB: above 1 means Query is slower. Answers are compared as sorted rows,\n\
         floats to {FLOAT_TOLERANCE:e} relative.\n\n\
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
             | query | rows | Query ms | DuckDB ms | ratio | answers match |\n|---|---:|---:|---:|---:|---|\n"
        ));
        let mut log_ratios = Vec::new();
        for f in figures {
            let (duck_ms, ratio, matches) = match &f.duck {
                Some(d) => {
                    let ratio = f.ours.median_ms.zip(d.median_ms).map(|(a, b)| a / b);
                    if let Some(r) = ratio.filter(|r| r.is_finite() && *r > 0.0) {
                        log_ratios.push(r.ln());
                    }
                    let verdict = match (&f.ours.error, &d.error) {
                        (Some(e), _) => Some(format!("Query failed: {e}")),
                        (_, Some(e)) => Some(format!("DuckDB failed: {e}")),
                        _ => compare(&f.ours.rows, &d.rows),
                    };
                    let matches = match verdict {
                        None => "yes".to_string(),
                        Some(why) => {
                            differences.push(format!(
                                "{} at {machines} machines: {}",
                                f.name,
                                why.replace('\n', " ")
                            ));
                            "**no**".to_string()
                        }
                    };
                    (ms(d.median_ms), ratio.map(|r| format!("{r:.2}")), matches)
                }
                None => ("—".into(), None, "not compared".into()),
            };
            let rows = match &f.ours.error {
                Some(_) => "error".to_string(),
                None => f.ours.rows.len().to_string(),
            };
            body.push_str(&format!(
                "| {} | {rows} | {} | {duck_ms} | {} | {matches} |\n",
                f.name,
                ms(f.ours.median_ms),
                ratio.unwrap_or_else(|| "—".into()),
            ));
        }
        if !log_ratios.is_empty() {
            let geo = (log_ratios.iter().sum::<f64>() / log_ratios.len() as f64).exp();
            body.push_str(&format!(
                "\nGeometric mean of the ratios: {geo:.2} over {} queries.\n",
                log_ratios.len()
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
            "\n### How it grows, {sizes_label} machines (median ms)\n\n| query | Query | DuckDB |\n|---|---|---|\n"
        ));
        for (i, (name, _)) in queries.iter().enumerate() {
            let series = |pick: &dyn Fn(&Figure) -> Option<f64>| {
                per_size
                    .iter()
                    .map(|(_, _, figs)| ms(figs.get(i).and_then(pick)))
                    .collect::<Vec<_>>()
                    .join(" → ")
            };
            body.push_str(&format!(
                "| {name} | {} | {} |\n",
                series(&|f| f.ours.median_ms),
                series(&|f| f.duck.as_ref().and_then(|d| d.median_ms)),
            ));
        }
    }
    body.push_str(
        "\n### View cache: a query over a view, the view recomputed vs cached (median ms)\n\n\
         In service a view is computed at most once per generation, on first use; later \
         queries in that generation read the cached result.\n\n| query | machines | view recomputed | view cached | speed-up |\n|---|---:|---:|---:|---:|\n",
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

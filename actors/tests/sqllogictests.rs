//! The SQL regression suite: every `tests/slt/*.slt` file runs against one generation built
//! from `tests/slt/fixtures/*.toml` (published tables, checked against `schemas/`), the
//! shipped static tables and the shipped views. Expected results were worked out by hand
//! from the fixtures.
//!
//! `cargo test --test sqllogictests` runs all files; a file name filter may follow `--`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use datafusion::arrow::array::Array;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use query_actors::generation::{GenerationBuilder, Part, SourceStamp};
use query_actors::sql::{load_views, QueryLimits, QueryOutput, Snapshot, DEFAULT_MAX_RESULT_BYTES};
use query_actors::static_tables::StaticLoader;
use query_actors::table::{load_schema_dir, TableBuilder};
use query_actors::QueryError;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    table: String,
    columns: Vec<String>,
    rows: Vec<Vec<toml::Value>>,
}

async fn snapshot() -> Result<Snapshot, String> {
    let schemas = load_schema_dir(&repo().join("schemas")).map_err(|e| e.to_string())?;
    let mut builder = GenerationBuilder::default();
    let dir = repo().join("actors/tests/slt/fixtures");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    // All sources published 30 s before sealing.
    let published_at = SystemTime::now() - Duration::from_secs(30);
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        let fx: Fixture = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let def =
            schemas
                .get(&fx.table)
                .ok_or(format!("{}: no schema {}", path.display(), fx.table))?;
        let cols = def.full_columns(true);
        let names: Vec<_> = cols.iter().map(|c| c.name.clone()).collect();
        if names != fx.columns {
            return Err(format!("{}: columns must be {names:?}", path.display()));
        }
        let mut b = TableBuilder::new(def.arrow_schema(true), cols);
        let mut machines = std::collections::BTreeSet::new();
        for row in &fx.rows {
            b.push_toml_row(row)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            machines.insert(row[0].as_str().unwrap_or_default().to_string());
        }
        let sources: Vec<SourceStamp> = machines
            .into_iter()
            .map(|source| SourceStamp {
                source: source.into(),
                published_at,
            })
            .collect();
        let part = Part::new(format!("fixture:{}", fx.table), b.finish(), sources);
        builder.add(&fx.table, part)?;
    }
    let generation = builder.seal(1, 1, SystemTime::now());
    let statics = StaticLoader::new(repo().join("static-tables/index.toml"))
        .reload()
        .ok_or("no static tables")?;
    if !statics.errors.is_empty() {
        return Err(format!("static tables: {:?}", statics.errors));
    }
    let views = load_views(&repo().join("ops/views.toml")).map_err(|e| e.to_string())?;
    let snap = Snapshot::build(
        generation,
        statics,
        &views,
        2,
        DEFAULT_MAX_RESULT_BYTES,
        Arc::new(AtomicU64::new(0)),
    )
    .await;
    if !snap.view_errors.is_empty() {
        return Err(format!("views: {:?}", snap.view_errors));
    }
    Ok(snap)
}

struct QueryDb(Arc<Snapshot>);

/// Statements whose last run read a kept aggregate.
static READ_KEPT: AtomicUsize = AtomicUsize::new(0);

#[async_trait::async_trait]
impl AsyncDB for QueryDb {
    type Error = QueryError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, QueryError> {
        let limits = QueryLimits {
            max_rows: 10_000,
            ..Default::default()
        };
        // Three times on the one snapshot: planned, then kept (plan and aggregates), then
        // read from what was kept (`[sql] aggregate_cache_mb`); every run gives the same
        // rows, and the last is checked.
        let first = rows_of(&self.0.query(sql, &limits).await?)?;
        let second = rows_of(&self.0.query(sql, &limits).await?)?;
        let out = self.0.query(sql, &limits).await?;
        if out.phases.aggregates_read > 0 {
            READ_KEPT.fetch_add(1, Ordering::Relaxed);
        }
        let rows = rows_of(&out)?;
        let sorted = |mut r: Vec<Vec<String>>| {
            r.sort();
            r
        };
        if sorted(first.clone()) != sorted(second) || sorted(first) != sorted(rows.clone()) {
            return Err(QueryError::Internal(format!(
                "the same statement gave other rows when run again: {sql}"
            )));
        }
        let types = out
            .schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Int8
                | DataType::Int16
                | DataType::Int32
                | DataType::Int64
                | DataType::UInt64 => DefaultColumnType::Integer,
                DataType::Float32 | DataType::Float64 => DefaultColumnType::FloatingPoint,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                    DefaultColumnType::Text
                }
                _ => DefaultColumnType::Any,
            })
            .collect();
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "query"
    }
}

/// An answer's rows as the suite writes them.
fn rows_of(out: &QueryOutput) -> Result<Vec<Vec<String>>, QueryError> {
    let opts = FormatOptions::default();
    let mut rows = Vec::new();
    for b in &out.batches {
        let fmts: Vec<_> = b
            .columns()
            .iter()
            .map(|c| {
                ArrayFormatter::try_new(c.as_ref(), &opts)
                    .map_err(|e| QueryError::Internal(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        for r in 0..b.num_rows() {
            rows.push(
                b.columns()
                    .iter()
                    .zip(&fmts)
                    .map(|(c, f)| {
                        if c.is_null(r) {
                            "NULL".to_string()
                        } else {
                            let s = f.value(r).to_string();
                            if s.is_empty() {
                                "(empty)".to_string()
                            } else {
                                s
                            }
                        }
                    })
                    .collect(),
            );
        }
    }
    Ok(rows)
}

fn main() -> std::process::ExitCode {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let snap = match snapshot().await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                eprintln!("building the test generation failed: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let mut files: Vec<_> = std::fs::read_dir(repo().join("actors/tests/slt"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "slt"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        let (mut passed, mut failed) = (0, 0);
        for file in files {
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
                continue;
            }
            let snap = snap.clone();
            let mut runner = sqllogictest::Runner::new(move || {
                let snap = snap.clone();
                async move { Ok::<_, QueryError>(QueryDb(snap)) }
            });
            match runner.run_file_async(&file).await {
                Ok(()) => {
                    println!("slt {name} ... ok");
                    passed += 1;
                }
                Err(e) => {
                    println!("slt {name} ... FAILED\n{}", e.display(true));
                    failed += 1;
                }
            }
        }
        let read = READ_KEPT.load(Ordering::Relaxed);
        println!("sqllogictests: {passed} passed, {failed} failed; {read} statements read kept aggregates");
        // Run whole, the suite covers the statements that read them.
        if filter.is_none() && read == 0 {
            println!("no statement read a kept aggregate: that path is no longer tested");
            failed += 1;
        }
        if failed == 0 && passed > 0 {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        }
    })
}

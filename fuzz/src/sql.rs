//! Target `sql`: a client's SQL, as a SQL node runs it — `Snapshot::query` on the compute
//! pool (`SqlPool`), with a row limit and a per-query time limit, on a small snapshot (the
//! SQL suite's fixtures, a few rows per table, with the shipped static tables and views).
//!
//! Inputs are generated from a grammar over the snapshot's real tables and columns: select
//! lists, joins, WHERE with AND/OR chains, IN lists, BETWEEN, CASE, nested parentheses and
//! function calls, string concatenation, aggregates with GROUP BY/HAVING, scalar, EXISTS and
//! IN subqueries, CTEs, UNION, EXPLAIN, SHOW, statements that must be refused (DDL, DML,
//! COPY, SET); then a share are mutated bytewise with SQL tokens.
//!
//! **Limits on what is generated.** Until `Snapshot::query` checks expression size and
//! depth, a long flat chain (`1+1+...`, `a OR b OR ...`, `'a'||'a'||...`) or deep nesting
//! overflows a compute thread's stack and aborts the process (issue 11). So the generator
//! has knobs: [`GenLimits::max_depth`] (nesting) and [`GenLimits::max_terms`] (terms of one
//! chain or list), moderate by default. [`GenLimits::deep`] (`queryfuzz --deep`) turns on
//! what is expected to fail until the limits land: chains and IN lists of up to 100,000
//! terms (about 1 MiB of SQL), nesting 10,000 deep, and functions that allocate per their
//! arguments (`repeat`, `lpad`) with huge ones. Every such input must then give an error,
//! not an abort.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use datafusion::arrow::datatypes::DataType;
use query_actors::generation::{GenerationBuilder, Part, SourceStamp};
use query_actors::sql::{
    load_views, MemoryBudget, QueryLimits, Snapshot, SqlPool, DEFAULT_MAX_RESULT_BYTES,
};
use query_actors::static_tables::StaticLoader;
use query_actors::table::{load_schema_dir, TableBuilder};
use rand::rngs::SmallRng;
use rand::Rng;

use crate::mutate::mutate;
use crate::runner::{Outcome, Target};

/// Rows a query returns at most (the node's `max_result_rows`).
pub const MAX_ROWS: usize = 1000;

/// Tables joined in one FROM at most: the fixtures hold 4 to 9 rows, static tables up to
/// about 40, so three keep a cross join in the thousands of rows.
const MAX_FROM: usize = 3;

#[derive(Debug, Clone)]
pub struct GenLimits {
    /// Nesting depth of expressions and subqueries.
    pub max_depth: usize,
    /// Terms of one flat chain (`a OR b OR ...`, `1+2+...`, `'a'||...`) or IN list.
    pub max_terms: usize,
    /// Generate the inputs that need expression and memory limits in the engine.
    pub deep: bool,
}

impl GenLimits {
    /// What the engine handles without the limits of issue 11 (debug build included).
    pub fn moderate() -> Self {
        GenLimits {
            max_depth: 16,
            max_terms: 64,
            deep: false,
        }
    }

    /// For after the expression and memory limits land (`--deep`).
    pub fn deep() -> Self {
        GenLimits {
            max_depth: 10_000,
            max_terms: 100_000,
            deep: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Int,
    Float,
    Str,
    Bool,
    Ts,
    Other,
}

#[derive(Debug, Clone)]
struct TableInfo {
    name: String,
    columns: Vec<(String, Kind)>,
}

pub struct SqlTarget {
    snapshot: Arc<Snapshot>,
    tables: Vec<TableInfo>,
    pool: SqlPool,
    rt: tokio::runtime::Runtime,
    settings: crate::SqlSettings,
    /// `QUERYFUZZ_VERBOSE=1`: print why each query was refused (to tune the generator).
    verbose: bool,
}

impl SqlTarget {
    pub fn new(settings: crate::SqlSettings) -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| e.to_string())?;
        let pool = SqlPool::new(2).map_err(|e| e.to_string())?;
        let snapshot = Arc::new(rt.block_on(snapshot())?);
        let mut tables = Vec::new();
        for t in snapshot.tables() {
            let Some(schema) = rt.block_on(snapshot.columns(&t.name)) else {
                continue;
            };
            let columns = schema
                .fields()
                .iter()
                .map(|f| (f.name().clone(), kind(f.data_type())))
                .collect();
            tables.push(TableInfo {
                name: t.name,
                columns,
            });
        }
        if tables.len() < 3 {
            return Err(format!("the snapshot has only {} tables", tables.len()));
        }
        Ok(SqlTarget {
            snapshot,
            tables,
            pool,
            rt,
            settings,
            verbose: std::env::var_os("QUERYFUZZ_VERBOSE").is_some(),
        })
    }

    /// Runs one statement as the node would (on the pool, with a row limit and deadline).
    pub fn query(&self, sql: String) -> Outcome {
        if self.verbose {
            eprintln!("sql: {sql}");
        }
        let snap = self.snapshot.clone();
        let fut = self.pool.run(async move {
            // The node's limits, with memory sized for a fuzzing machine.
            let limits = QueryLimits {
                max_rows: MAX_ROWS,
                memory: MemoryBudget::new(1 << 30, 256 << 20),
                ..Default::default()
            };
            snap.query(&sql, &limits).await.map(|out| out.rows())
        });
        match self
            .rt
            .block_on(async { tokio::time::timeout(self.settings.timeout, fut).await })
        {
            Err(_) => Outcome::Timeout,
            Ok(Ok(Ok(rows))) if rows > MAX_ROWS => {
                Outcome::Violation(format!("{rows} rows returned, the limit is {MAX_ROWS}"))
            }
            Ok(Ok(Ok(_))) => Outcome::Accepted,
            Ok(Ok(Err(e))) => {
                if self.verbose {
                    eprintln!("refused: {e}");
                }
                Outcome::Refused
            }
            Ok(Err(_)) => Outcome::Refused,
        }
    }
}

impl Target for SqlTarget {
    fn name(&self) -> &'static str {
        "sql"
    }

    fn generate(&self, rng: &mut SmallRng) -> Vec<u8> {
        let mut g = Gen {
            rng,
            lim: &self.settings.gen,
            tables: &self.tables,
        };
        let mut sql = g.statement().into_bytes();
        if g.rng.random_bool(0.35) {
            mutate(g.rng, &mut sql, 6, SQL_TOKENS);
        }
        sql
    }

    fn run(&mut self, input: &[u8]) -> Outcome {
        // Bodies reach the engine as text; the HTTP layer refuses what is not UTF-8.
        match std::str::from_utf8(input) {
            Ok(sql) => self.query(sql.to_string()),
            Err(_) => Outcome::Refused,
        }
    }
}

fn kind(t: &DataType) -> Kind {
    match t {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => Kind::Int,
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => Kind::Int,
        DataType::Float32 | DataType::Float64 => Kind::Float,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Kind::Str,
        DataType::Boolean => Kind::Bool,
        DataType::Timestamp(..) => Kind::Ts,
        _ => Kind::Other,
    }
}

/// The snapshot the SQL suite uses (actors/tests/sqllogictests.rs): fixtures checked
/// against schemas/, the shipped static tables and views.
async fn snapshot() -> Result<Snapshot, String> {
    #[derive(serde::Deserialize)]
    struct Fixture {
        table: String,
        #[allow(dead_code)]
        columns: Vec<String>,
        rows: Vec<Vec<toml::Value>>,
    }
    let repo = crate::repo();
    let schemas = load_schema_dir(&repo.join("schemas")).map_err(|e| e.to_string())?;
    let mut builder = GenerationBuilder::default();
    let dir = repo.join("actors/tests/slt/fixtures");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let published_at = SystemTime::now() - Duration::from_secs(30);
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        let fx: Fixture = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let def = schemas
            .get(&fx.table)
            .ok_or(format!("no schema {}", fx.table))?;
        let mut b = TableBuilder::new(def.arrow_schema(true), def.full_columns(true));
        for row in &fx.rows {
            b.push_toml_row(row)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        builder.add(
            &fx.table,
            Part::new(
                format!("fixture:{}", fx.table),
                b.finish(),
                vec![SourceStamp {
                    source: "10.0.0.1".into(),
                    published_at,
                }],
            ),
        )?;
    }
    let generation = builder.seal(1, 1, SystemTime::now());
    let statics = StaticLoader::new(repo.join("static-tables/index.toml"))
        .reload()
        .ok_or("no static tables")?;
    let views = load_views(&repo.join("ops/views.toml")).map_err(|e| e.to_string())?;
    Ok(Snapshot::build(
        generation,
        statics,
        &views,
        2,
        DEFAULT_MAX_RESULT_BYTES,
        Arc::new(AtomicU64::new(0)),
    )
    .await)
}

const SQL_TOKENS: &[&[u8]] = &[
    b"(",
    b")",
    b",",
    b"'",
    b"\"",
    b";",
    b"--",
    b"/*",
    b"*/",
    b" OR ",
    b" AND ",
    b"||",
    b"+",
    b"*",
    b"/",
    b"%",
    b" SELECT ",
    b" FROM ",
    b" WHERE ",
    b" NOT ",
    b" NULL ",
    b" IN (",
    b" CASE WHEN ",
    b" END ",
    b" UNION ",
    b"::",
    b"$1",
    b"E'\\x",
    b"9223372036854775807",
];

const FUNCS_NUM: &[&str] = &[
    "abs", "round", "ceil", "floor", "sqrt", "ln", "exp", "signum",
];
const FUNCS_STR: &[&str] = &[
    "lower", "upper", "trim", "reverse", "ltrim", "btrim", "initcap",
];
const AGGS: &[&str] = &["count", "sum", "min", "max", "avg"];

struct Gen<'a, 'r> {
    rng: &'r mut SmallRng,
    lim: &'a GenLimits,
    tables: &'a [TableInfo],
}

/// Tables in scope: (alias, table).
type Scope<'a> = Vec<(String, &'a TableInfo)>;

impl<'a> Gen<'a, '_> {
    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.rng.random_range(0..v.len())]
    }

    fn statement(&mut self) -> String {
        if self.lim.deep && self.chance(0.5) {
            return self.deep_statement();
        }
        match self.rng.random_range(0..100) {
            0..78 => self.query(0),
            78..84 => {
                let inner = self.query(1);
                format!("WITH w AS ({inner}) SELECT * FROM w")
            }
            84..88 => format!("EXPLAIN {}", self.query(0)),
            88..92 => {
                let t = self.table().name.clone();
                match self.rng.random_range(0..4) {
                    0 => "SHOW TABLES".to_string(),
                    1 => format!("DESCRIBE {t}"),
                    2 => format!("SHOW COLUMNS FROM {t}"),
                    _ => {
                        format!("SELECT * FROM information_schema.columns WHERE table_name = '{t}'")
                    }
                }
            }
            92..96 => {
                let t = self.table().name.clone();
                let refused = [
                    format!("INSERT INTO {t} SELECT * FROM {t}"),
                    format!("DROP TABLE {t}"),
                    format!("CREATE TABLE x AS SELECT * FROM {t}"),
                    format!("COPY {t} TO '/tmp/x.csv'"),
                    "SET datafusion.execution.batch_size = 1".to_string(),
                    "CREATE EXTERNAL TABLE e STORED AS CSV LOCATION '/etc/passwd'".to_string(),
                    format!("DELETE FROM {t}"),
                    "SELECT 1; SELECT 2".to_string(),
                ];
                refused[self.rng.random_range(0..refused.len())].clone()
            }
            _ => self.query(0),
        }
    }

    fn table(&mut self) -> &'a TableInfo {
        &self.tables[self.rng.random_range(0..self.tables.len())]
    }

    fn query(&mut self, depth: usize) -> String {
        let n = self.rng.random_range(1..=MAX_FROM);
        let mut scope: Scope<'a> = Vec::new();
        let mut from = String::new();
        for i in 0..n {
            let t = self.table();
            let alias = format!("t{depth}_{i}");
            if i > 0 {
                if self.chance(0.5) {
                    from.push_str(", ");
                } else {
                    let kind = self.pick(&["JOIN", "LEFT JOIN", "INNER JOIN", "FULL JOIN"]);
                    let on_scope: Scope<'a> =
                        scope.iter().cloned().chain([(alias.clone(), t)]).collect();
                    let on = self.bool_expr(&on_scope, depth + 1);
                    from.push_str(&format!(" {kind} {} {alias} ON {on}", t.name));
                    scope.push((alias, t));
                    continue;
                }
            }
            if self.chance(0.1) && depth + 1 < self.lim.max_depth {
                let sub = self.query(depth + 1);
                from.push_str(&format!("({sub}) {alias}"));
                // The subquery's columns are unknown here: refer to it by `*` only.
            } else {
                from.push_str(&format!("{} {alias}", t.name));
                scope.push((alias, t));
            }
        }
        if scope.is_empty() {
            return format!("SELECT * FROM {from} LIMIT 5");
        }
        let grouped = self.chance(0.25);
        let mut sql = String::from("SELECT ");
        if self.chance(0.1) {
            sql.push_str("DISTINCT ");
        }
        let mut group_cols = Vec::new();
        if grouped {
            for _ in 0..self.rng.random_range(1..=2) {
                let c = self.column(&scope, None);
                group_cols.push(c);
            }
            let mut items = group_cols.clone();
            for _ in 0..self.rng.random_range(1..=3) {
                let agg = self.aggregate(&scope, depth);
                items.push(agg);
            }
            sql.push_str(&items.join(", "));
        } else if self.chance(0.15) {
            sql.push('*');
        } else {
            let items: Vec<String> = (0..self.rng.random_range(1..=4))
                .map(|i| {
                    let e = self.expr(&scope, depth + 1, None);
                    format!("{e} AS c{i}")
                })
                .collect();
            sql.push_str(&items.join(", "));
        }
        sql.push_str(" FROM ");
        sql.push_str(&from);
        if self.chance(0.6) {
            let w = self.bool_expr(&scope, depth + 1);
            sql.push_str(&format!(" WHERE {w}"));
        }
        if grouped {
            sql.push_str(&format!(" GROUP BY {}", group_cols.join(", ")));
            if self.chance(0.3) {
                let agg = self.aggregate(&scope, depth);
                sql.push_str(&format!(" HAVING {agg} > 0"));
            }
        }
        if self.chance(0.3) {
            let n = if grouped {
                1
            } else {
                self.rng.random_range(1..=2)
            };
            let cols: Vec<String> = (0..n)
                .map(|i| {
                    if grouped {
                        format!("{} DESC", group_cols[i % group_cols.len()])
                    } else {
                        self.expr(&scope, depth + 1, None)
                    }
                })
                .collect();
            sql.push_str(&format!(" ORDER BY {}", cols.join(", ")));
        }
        if self.chance(0.3) {
            let n = self.pick(&[0u64, 1, 10, 1_000_000, u64::MAX >> 1]);
            sql.push_str(&format!(" LIMIT {n}"));
        }
        if depth == 0 && !grouped && self.chance(0.05) {
            sql = format!("({sql}) UNION ALL ({sql})");
        }
        sql
    }

    fn column(&mut self, scope: &Scope<'a>, want: Option<Kind>) -> String {
        for _ in 0..4 {
            let (alias, t) = &scope[self.rng.random_range(0..scope.len())];
            let (name, k) = &t.columns[self.rng.random_range(0..t.columns.len())];
            if want.is_none_or(|w| w == *k) {
                return format!("{alias}.\"{name}\"");
            }
        }
        self.literal(want.unwrap_or(Kind::Int))
    }

    fn literal(&mut self, k: Kind) -> String {
        match k {
            Kind::Int => self
                .pick(&[
                    "0",
                    "1",
                    "-1",
                    "42",
                    "9223372036854775807",
                    "-9223372036854775808",
                    "NULL",
                ])
                .to_string(),
            Kind::Float => self
                .pick(&["0.5", "-1.5e300", "1e308", "'NaN'::double", "NULL"])
                .to_string(),
            Kind::Str => self
                .pick(&[
                    "''",
                    "'a'",
                    "'c1'",
                    "'10.0.0.1'",
                    "'ü日本'",
                    "'it''s'",
                    "NULL",
                    "'%'",
                ])
                .to_string(),
            Kind::Bool => self.pick(&["TRUE", "FALSE", "NULL"]).to_string(),
            Kind::Ts => self
                .pick(&[
                    "'2026-01-01T00:00:00Z'",
                    "now()",
                    "TIMESTAMP '1970-01-01 00:00:00'",
                ])
                .to_string(),
            Kind::Other => "NULL".to_string(),
        }
    }

    fn leaf(&mut self, scope: &Scope<'a>, want: Option<Kind>) -> String {
        if self.chance(0.6) {
            self.column(scope, want)
        } else {
            let k =
                want.unwrap_or_else(|| self.pick(&[Kind::Int, Kind::Float, Kind::Str, Kind::Bool]));
            self.literal(k)
        }
    }

    /// A chain of `n` terms joined by `op`, each term a leaf: flat, so its depth in the
    /// parse tree is `n` (what overflows the stack when `n` is large).
    fn chain(&mut self, scope: &Scope<'a>, op: &str, want: Kind, n: usize) -> String {
        let terms: Vec<String> = (0..n)
            .map(|_| match want {
                Kind::Bool => {
                    let k = self.pick(&[Kind::Int, Kind::Str, Kind::Float]);
                    let c = self.column(scope, Some(k));
                    let l = self.leaf(scope, Some(k));
                    format!("{c} = {l}")
                }
                k => self.leaf(scope, Some(k)),
            })
            .collect();
        terms.join(op)
    }

    fn terms(&mut self) -> usize {
        self.rng.random_range(2..=self.lim.max_terms.max(2))
    }

    fn bool_expr(&mut self, scope: &Scope<'a>, depth: usize) -> String {
        self.expr(scope, depth, Some(Kind::Bool))
    }

    fn aggregate(&mut self, scope: &Scope<'a>, depth: usize) -> String {
        let f = self.pick(AGGS);
        if f == "count" && self.chance(0.3) {
            return "COUNT(*)".into();
        }
        let d = if self.chance(0.2) { "DISTINCT " } else { "" };
        let e = self.expr(scope, depth + 1, Some(Kind::Int));
        format!("{f}({d}{e})")
    }

    fn expr(&mut self, scope: &Scope<'a>, depth: usize, want: Option<Kind>) -> String {
        if depth >= self.lim.max_depth || self.chance(0.3) {
            return self.leaf(scope, want);
        }
        let d = depth + 1;
        let want_bool = want == Some(Kind::Bool);
        match self.rng.random_range(0..22) {
            0 | 1 if want_bool || want.is_none() => {
                let op = self.pick(&[" AND ", " OR "]);
                let a = self.bool_expr(scope, d);
                let b = self.bool_expr(scope, d);
                format!("({a}{op}{b})")
            }
            2 if want_bool || want.is_none() => {
                let op = self.pick(&[" OR ", " AND "]);
                let n = self.terms();
                self.chain(scope, op, Kind::Bool, n)
            }
            3 | 4 if want_bool || want.is_none() => {
                let op = self.pick(&["=", "<>", "<", ">", "<=", ">=", "IS DISTINCT FROM"]);
                let k = self.pick(&[Kind::Int, Kind::Str, Kind::Float, Kind::Ts]);
                let a = self.expr(scope, d, Some(k));
                let b = self.expr(scope, d, Some(k));
                format!("{a} {op} {b}")
            }
            5 if want_bool || want.is_none() => {
                let k = self.pick(&[Kind::Int, Kind::Str]);
                let a = self.expr(scope, d, Some(k));
                let n = self.terms();
                let list: Vec<String> = (0..n).map(|_| self.literal(k)).collect();
                let not = if self.chance(0.3) { "NOT " } else { "" };
                format!("{a} {not}IN ({})", list.join(", "))
            }
            6 if want_bool || want.is_none() => {
                let a = self.expr(scope, d, Some(Kind::Int));
                let b = self.literal(Kind::Int);
                let c = self.literal(Kind::Int);
                format!("{a} BETWEEN {b} AND {c}")
            }
            7 if want_bool || want.is_none() => {
                let a = self.expr(scope, d, None);
                let not = if self.chance(0.5) { " NOT" } else { "" };
                format!("{a} IS{not} NULL")
            }
            8 if want_bool || want.is_none() => {
                let a = self.expr(scope, d, Some(Kind::Str));
                let p = self.pick(&["'%a%'", "'c_'", "'%'", "'\\%'", "'['"]);
                let op = self.pick(&["LIKE", "ILIKE", "NOT LIKE", "~", "SIMILAR TO"]);
                format!("{a} {op} {p}")
            }
            9 if want_bool || want.is_none() => {
                let a = self.bool_expr(scope, d);
                format!("NOT ({a})")
            }
            10 if want_bool || want.is_none() => {
                let t = self.table();
                let sub_scope: Scope<'a> = vec![(format!("s{depth}"), t)];
                let w = self.bool_expr(&sub_scope, d);
                let not = if self.chance(0.3) { "NOT " } else { "" };
                format!("{not}EXISTS (SELECT 1 FROM {} s{depth} WHERE {w})", t.name)
            }
            11 if want_bool || want.is_none() => {
                let t = self.table();
                let sub_scope: Scope<'a> = vec![(format!("s{depth}"), t)];
                let k = self.pick(&[Kind::Int, Kind::Str]);
                let c = self.column(&sub_scope, Some(k));
                let a = self.expr(scope, d, Some(k));
                format!("{a} IN (SELECT {c} FROM {} s{depth})", t.name)
            }
            12 | 13 if matches!(want, None | Some(Kind::Int | Kind::Float)) => {
                let op = self.pick(&[" + ", " - ", " * ", " / ", " % "]);
                let k = want.unwrap_or(Kind::Int);
                if self.chance(0.3) {
                    let n = self.terms();
                    self.chain(scope, op, k, n)
                } else {
                    let a = self.expr(scope, d, Some(k));
                    let b = self.expr(scope, d, Some(k));
                    format!("({a}{op}{b})")
                }
            }
            14 if matches!(want, None | Some(Kind::Str)) => {
                let n = self.terms().min(8);
                let parts: Vec<String> = if self.chance(0.3) {
                    let n = self.terms();
                    (0..n).map(|_| self.leaf(scope, Some(Kind::Str))).collect()
                } else {
                    (0..n)
                        .map(|_| self.expr(scope, d, Some(Kind::Str)))
                        .collect()
                };
                parts.join(" || ")
            }
            15 if matches!(want, None | Some(Kind::Int | Kind::Float)) => {
                let f = self.pick(FUNCS_NUM);
                let a = self.expr(scope, d, Some(Kind::Float));
                format!("{f}({a})")
            }
            16 if matches!(want, None | Some(Kind::Str)) => {
                let f = self.pick(FUNCS_STR);
                let a = self.expr(scope, d, Some(Kind::Str));
                match self.rng.random_range(0..5) {
                    0 => {
                        let b = self.literal(Kind::Int);
                        format!("substr({a}, {b}, 3)")
                    }
                    1 => format!("replace({a}, 'a', 'bb')"),
                    2 => format!("split_part({a}, '.', 2)"),
                    3 => format!("concat({a}, {}, NULL)", self.literal(Kind::Int)),
                    _ => format!("{f}({a})"),
                }
            }
            17 => {
                let when = self.bool_expr(scope, d);
                let k = want.unwrap_or(Kind::Int);
                let a = self.expr(scope, d, Some(k));
                let b = self.expr(scope, d, Some(k));
                format!("CASE WHEN {when} THEN {a} ELSE {b} END")
            }
            18 => {
                let k = want.unwrap_or(Kind::Int);
                let a = self.expr(scope, d, Some(k));
                let b = self.literal(k);
                let f = self.pick(&["coalesce", "nullif", "greatest", "least"]);
                format!("{f}({a}, {b})")
            }
            19 if want != Some(Kind::Bool) => {
                let t = self.table();
                let sub_scope: Scope<'a> = vec![(format!("s{depth}"), t)];
                let e = self.column(&sub_scope, want);
                let agg = self.pick(&["max", "min", "count"]);
                format!("(SELECT {agg}({e}) FROM {} s{depth})", t.name)
            }
            20 => {
                let a = self.expr(scope, d, None);
                let ty = match want {
                    Some(Kind::Int) => "BIGINT",
                    Some(Kind::Float) => "DOUBLE",
                    Some(Kind::Str) => "VARCHAR",
                    Some(Kind::Bool) => "BOOLEAN",
                    Some(Kind::Ts) => "TIMESTAMP",
                    _ => self.pick(&["BIGINT", "DOUBLE", "VARCHAR", "BOOLEAN", "TIMESTAMP", "INT"]),
                };
                format!("CAST({a} AS {ty})")
            }
            21 if matches!(want, None | Some(Kind::Ts | Kind::Int)) => {
                let ts = self.column(scope, Some(Kind::Ts));
                let unit = self.pick(&["'hour'", "'day'", "'year'"]);
                if want == Some(Kind::Ts) || self.chance(0.5) {
                    format!("date_trunc({unit}, {ts})")
                } else {
                    format!("date_part({unit}, {ts})")
                }
            }
            _ => {
                let e = self.expr(scope, d, want);
                format!("({e})")
            }
        }
    }

    /// What needs the engine's limits (issue 11): huge flat chains and IN lists, very deep
    /// nesting, allocation by argument.
    fn deep_statement(&mut self) -> String {
        let n = self.rng.random_range(1..=self.lim.max_terms);
        let depth = self.rng.random_range(1..=self.lim.max_depth);
        match self.rng.random_range(0..8) {
            0 => format!("SELECT {}", vec!["1"; n].join("+")),
            1 => format!(
                "SELECT * FROM sys WHERE {}",
                (0..n)
                    .map(|i| format!("machine_ip = '10.0.{}.{}'", i / 256, i % 256))
                    .collect::<Vec<_>>()
                    .join(" OR ")
            ),
            2 => format!("SELECT {}", vec!["'a'"; n].join(" || ")),
            3 => format!(
                "SELECT * FROM sys WHERE cpus IN ({})",
                (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
            ),
            4 => format!("SELECT {}1{}", "(".repeat(depth), ")".repeat(depth)),
            5 => format!("SELECT {}1{}", "abs(".repeat(depth), ")".repeat(depth)),
            6 => format!(
                "SELECT {}",
                self.pick(&[
                    "repeat('x', 1000000000)",
                    "lpad('x', 2000000000, 'y')",
                    "length(repeat('x', 200000000))",
                    "count(*) FROM generate_series(1, 10000000000)",
                    // TopK aggregation sizes its table by LIMIT (FUZZING.md).
                    "georegion, max(cpus) FROM sys GROUP BY georegion ORDER BY georegion DESC LIMIT 100000000",
                ])
            ),
            _ => {
                let mut q = "SELECT 1".to_string();
                for _ in 0..depth.min(2000) {
                    q = format!("SELECT * FROM ({q}) x");
                }
                q
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn generated_sql_mostly_runs() {
        let mut t = SqlTarget::new(crate::SqlSettings::default()).expect("snapshot");
        let mut accepted = 0;
        for i in 0..40 {
            let mut rng = SmallRng::seed_from_u64(i);
            let sql = Gen {
                rng: &mut rng,
                lim: &t.settings.gen,
                tables: &t.tables,
            }
            .query(0);
            if t.run(sql.as_bytes()) == Outcome::Accepted {
                accepted += 1;
            }
        }
        // The grammar is loosely typed, but most queries must get through the planner, or
        // the fuzzing only exercises error paths.
        assert!(accepted >= 10, "{accepted} of 40 accepted");
        assert_eq!(t.run(b"SELECT 1"), Outcome::Accepted);
        assert_eq!(t.run(b"DROP TABLE sys"), Outcome::Refused);
    }
}

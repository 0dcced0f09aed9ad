//! Joins on `machine_ip` run on integer machine ids: every published table of a generation
//! carries `machine_ip`, and most of the papers' queries join two of them on it. Probing a
//! hash table of 70,000 keys with 840,000 rows is the largest part of such a join, and it
//! costs as much on sparse integers as on the strings; on dense integers DataFusion looks
//! each key up in an array instead (its "perfect hash join").
//!
//! This module owns both halves:
//! - at snapshot build, [`Keying`] gives every distinct `machine_ip` of the snapshot's
//!   tables one dense `u32` id ([`MachineIds`], shared by all of them, so equal addresses get
//!   equal ids in every table) and registers, beside each table, a keyed copy of it: the same
//!   batches (shared, not copied) with a [`MACHINE_ID`] column appended;
//! - [`MachineKeyJoins`], a logical optimizer rule, rewrites an equijoin between two
//!   `machine_ip` columns that both come (through filters, projections, aliases and other
//!   joins) from this snapshot's own tables into an equijoin on their ids, reading the keyed
//!   copies, and projects the ids away above the join. Equal ids hold exactly equal addresses
//!   and a NULL address has a NULL id, so every join type answers as before. For the same
//!   reason it counts ids where an aggregate counts distinct such addresses
//!   (`COUNT(DISTINCT machine_ip)` beside other aggregates);
//! - [`LookupJoinsOnMachineIds`], a physical optimizer rule, runs such joins by looking
//!   ids up, handing the probe side's columns on uncopied (`lookup_join`).
//!
//! The keyed copies are found by name (`keyed_name`, `registered`) so that a kept plan
//! binds to the next snapshot's copies (`plans::bind`). Only a SQL node keys its tables
//! (`TableCopies::Eager`): a node that rarely answers does not pay for it.
//!
//! Not every join on addresses is rewritten: where `eager_aggregate` (which runs before)
//! has put a partial aggregate grouped by `machine_ip` below a join, that side's address no
//! longer comes from a table, and the join stays on strings.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{Array, StringArray, UInt32Array, UInt32Builder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::Transformed;
use datafusion::common::Column;
use datafusion::datasource::{provider_as_source, DefaultTableSource};
use datafusion::error::Result;
use datafusion::logical_expr::{
    Aggregate, Expr, Join, JoinType, LogicalPlan, Projection, SubqueryAlias, TableScan,
    TableScanBuilder, TableSource,
};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

use super::spread::SpreadTable;

mod lookup_join;
pub(crate) use lookup_join::LookupJoinsOnMachineIds;

/// The column a keyed copy appends: the row's machine id (NULL where `machine_ip` is).
pub(crate) const MACHINE_ID: &str = "__machine_id";

/// The column whose values are keyed.
const MACHINE_IP: &str = "machine_ip";

/// Field metadata on a keyed copy's id column whose ids are each on at most one row (a
/// table of one row per machine, such as `sys`): a lookup join builds on such a side so
/// that the other side's columns pass through (`lookup_join`). A fact about the copy's
/// rows, found when keying them; a kept plan binds only to a copy of the same schema, so
/// to one that has it too.
pub(crate) const UNIQUE_IDS: (&str, &str) = ("query.machine_ids", "unique");

/// The name a table's keyed copy is found by among a snapshot's sources: `#` cannot appear
/// in a table's name.
pub(crate) fn keyed_name(table: &str) -> String {
    format!("{table}#machine_ids")
}

/// The source among `sources` a scan of this name and columns reads: its table's keyed copy
/// if it ends with the id and the table has one (a table may have a column of that name
/// of its own, and is then not keyed), else its table.
pub(crate) fn registered<'a>(
    sources: &'a HashMap<String, Arc<dyn TableSource>>,
    scan: &TableScan,
) -> Option<&'a Arc<dyn TableSource>> {
    registered_entry(sources, scan).map(|(_, source)| source)
}

/// [`registered`], with the name it is registered by.
pub(crate) fn registered_entry<'a>(
    sources: &'a HashMap<String, Arc<dyn TableSource>>,
    scan: &TableScan,
) -> Option<(&'a String, &'a Arc<dyn TableSource>)> {
    let table = scan.table_name.table();
    let keyed = match scan.source.schema().fields().last() {
        Some(f) if f.name() == MACHINE_ID => sources.get_key_value(&keyed_name(table)),
        _ => None,
    };
    keyed.or_else(|| sources.get_key_value(table))
}

/// The provider behind a source registered from one, as an address to compare.
pub(crate) fn provider_of(source: &Arc<dyn TableSource>) -> Option<usize> {
    (source.as_ref() as &dyn std::any::Any)
        .downcast_ref::<DefaultTableSource>()
        .map(|s| Arc::as_ptr(&s.table_provider) as *const () as usize)
}

/// Dense ids for addresses, in order of first sight.
#[derive(Default)]
struct MachineIds {
    ids: HashMap<String, u32>,
}

impl MachineIds {
    /// The ids of `ips`; None past `u32::MAX` addresses. A machine's rows are contiguous in
    /// its table, so an address equal to the row before's costs a comparison, not a lookup.
    fn of(&mut self, ips: &StringArray) -> Option<UInt32Array> {
        let mut out = UInt32Builder::with_capacity(ips.len());
        let mut before: Option<(usize, u32)> = None;
        for row in 0..ips.len() {
            if ips.is_null(row) {
                out.append_null();
                continue;
            }
            let ip = ips.value(row);
            let id = match before {
                Some((at, id)) if ips.value(at) == ip => id,
                _ => match self.ids.get(ip) {
                    Some(&id) => id,
                    None => {
                        let id = u32::try_from(self.ids.len()).ok()?;
                        self.ids.insert(ip.to_owned(), id);
                        id
                    }
                },
            };
            before = Some((row, id));
            out.append_value(id);
        }
        Some(out.finish())
    }
}

/// A snapshot's tables and their keyed copies (under `keyed_name`), the sources its plans
/// bind to: set once its tables are registered and keyed, before any statement (a view's
/// included) is planned; left unset where no table is keyed.
pub(crate) type KeyedTables = Arc<OnceLock<HashMap<String, Arc<dyn TableSource>>>>;

/// Keys a snapshot's tables as they are registered, all with the same ids.
#[derive(Default)]
pub(crate) struct Keying {
    ids: MachineIds,
}

impl Keying {
    /// The keyed copy of `table` if it has a `machine_ip` string column (and none named
    /// like the id), to register under `keyed_name` of its name.
    pub(crate) fn add(&mut self, table: &SpreadTable) -> Option<Arc<dyn TableSource>> {
        let schema = table.schema();
        let (at, field) = schema.column_with_name(MACHINE_IP)?;
        if field.data_type() != &DataType::Utf8 || schema.column_with_name(MACHINE_ID).is_some() {
            return None;
        }
        let keyed_schema = |unique: bool| -> SchemaRef {
            let mut fields: Vec<Field> =
                schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            let id = Field::new(MACHINE_ID, DataType::UInt32, field.is_nullable());
            fields.push(match unique {
                true => id.with_metadata(HashMap::from([(
                    UNIQUE_IDS.0.to_string(),
                    UNIQUE_IDS.1.to_string(),
                )])),
                false => id,
            });
            Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
        };
        let plain = keyed_schema(false);
        let mut seen = SeenIds::default();
        let keyed = table.map_batches(plain.clone(), |batch| {
            let ips = batch.column(at).as_any().downcast_ref::<StringArray>()?;
            let mut columns = batch.columns().to_vec();
            let ids = self.ids.of(ips)?;
            seen.add(&ids);
            columns.push(Arc::new(ids));
            RecordBatch::try_new(plain.clone(), columns).ok()
        })?;
        let keyed = match seen.repeated {
            false => {
                let marked = keyed_schema(true);
                keyed.map_batches(marked.clone(), |b| {
                    b.clone().with_schema(marked.clone()).ok()
                })?
            }
            true => keyed,
        };
        Some(provider_as_source(Arc::new(keyed)))
    }
}

/// Whether any id came twice among a table's rows (NULLs aside: they match nothing).
#[derive(Default)]
struct SeenIds {
    /// A bit per id, until one repeats.
    bits: Vec<u64>,
    repeated: bool,
}

impl SeenIds {
    fn add(&mut self, ids: &UInt32Array) {
        for id in ids.iter().flatten() {
            if self.repeated {
                return;
            }
            let (word, bit) = (id as usize / 64, 1u64 << (id % 64));
            if word >= self.bits.len() {
                self.bits.resize(word + 1, 0);
            }
            self.repeated = self.bits[word] & bit != 0;
            self.bits[word] |= bit;
        }
    }
}

/// The optimizer rule (module doc).
pub(crate) struct MachineKeyJoins {
    tables: KeyedTables,
}

impl std::fmt::Debug for MachineKeyJoins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&String> = self
            .tables
            .get()
            .into_iter()
            .flat_map(|t| t.keys())
            .collect();
        f.debug_struct("MachineKeyJoins")
            .field("tables", &names)
            .finish()
    }
}

impl MachineKeyJoins {
    pub(crate) fn new(tables: KeyedTables) -> Self {
        MachineKeyJoins { tables }
    }
}

impl OptimizerRule for MachineKeyJoins {
    fn name(&self) -> &str {
        "machine_key_joins"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let Some(tables) = self.tables.get().filter(|t| !t.is_empty()) else {
            return Ok(Transformed::no(plan));
        };
        let rewritten = match &plan {
            LogicalPlan::Join(join) => rekey(tables, join),
            LogicalPlan::Aggregate(aggregate) => count_distinct_ids(tables, aggregate),
            _ => None,
        };
        match rewritten {
            Some(rewritten) => Ok(Transformed::yes(rewritten)),
            None => Ok(Transformed::no(plan)),
        }
    }
}

/// `aggregate` counting distinct machine ids wherever it counts distinct traceable
/// `machine_ip` columns (under their own names); None if it counts none.
///
/// Why: ids are counted in a set of integers rather than of strings, and a partial
/// aggregate hands the final one its distinct ids rather than its distinct addresses
/// (`report_role_memory` at 70,000 machines). Equal ids hold exactly equal addresses and
/// NULL has a NULL id, so the counts are the same. DataFusion answers a statement whose
/// only aggregates are one such count by grouping by the address first
/// (`SingleDistinctToGroupBy`), which is left as it is.
fn count_distinct_ids(
    tables: &HashMap<String, Arc<dyn TableSource>>,
    aggregate: &Aggregate,
) -> Option<LogicalPlan> {
    let mut input = aggregate.input.as_ref().clone();
    let mut changed = false;
    let mut aggr_expr = aggregate.aggr_expr.clone();
    for expr in aggr_expr.iter_mut() {
        let Expr::AggregateFunction(count) = &*expr else {
            continue;
        };
        let column = match count.params.args.as_slice() {
            [Expr::Column(column)] if count.params.distinct && count.func.name() == "count" => {
                column
            }
            _ => continue,
        };
        let Some((traced, id)) = trace(tables, &input, column) else {
            continue;
        };
        let mut on_ids = count.clone();
        on_ids.params.args = vec![Expr::Column(id)];
        // Under the name it had: the plan above refers to it by name.
        let name = expr.schema_name().to_string();
        *expr = Expr::AggregateFunction(on_ids).alias(name);
        input = traced;
        changed = true;
    }
    if !changed {
        return None;
    }
    let rewritten = Aggregate::try_new(Arc::new(input), aggregate.group_expr.clone(), aggr_expr);
    rewritten.ok().map(LogicalPlan::Aggregate)
}

/// `join` on machine ids wherever both sides of a key are traceable `machine_ip` columns,
/// under a projection back to its own columns; None if no key is.
fn rekey(tables: &HashMap<String, Arc<dyn TableSource>>, join: &Join) -> Option<LogicalPlan> {
    let (mut left, mut right) = (join.left.as_ref().clone(), join.right.as_ref().clone());
    let mut on = join.on.clone();
    let mut changed = false;
    for pair in on.iter_mut() {
        let (Expr::Column(l), Expr::Column(r)) = pair else {
            continue;
        };
        let Some((new_left, l_id)) = trace(tables, &left, l) else {
            continue;
        };
        let Some((new_right, r_id)) = trace(tables, &right, r) else {
            continue;
        };
        (left, right) = (new_left, new_right);
        *pair = (Expr::Column(l_id), Expr::Column(r_id));
        changed = true;
    }
    if !changed {
        return None;
    }
    // A join's expressions: its keys, left then right, then its filter.
    let exprs = on
        .into_iter()
        .flat_map(|(l, r)| [l, r])
        .chain(join.filter.clone())
        .collect();
    let rekeyed = LogicalPlan::Join(join.clone())
        .with_new_exprs(exprs, vec![left, right])
        .ok()?;
    let columns = join
        .schema
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect();
    let back = Projection::try_new(columns, Arc::new(rekeyed)).ok()?;
    Some(LogicalPlan::Projection(back))
}

/// `plan` made to output the machine id of its column `column` too, and that id's column;
/// None unless `column` is, unchanged, the `machine_ip` of one of this snapshot's keyed
/// tables.
fn trace(
    tables: &HashMap<String, Arc<dyn TableSource>>,
    plan: &LogicalPlan,
    column: &Column,
) -> Option<(LogicalPlan, Column)> {
    match plan {
        LogicalPlan::TableScan(scan) => key_scan(tables, scan, column),
        LogicalPlan::Filter(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::Repartition(_) => {
            let input = plan.inputs().into_iter().next()?;
            let (input, id) = trace(tables, input, column)?;
            let rebuilt = plan.with_new_exprs(plan.expressions(), vec![input]).ok()?;
            Some((rebuilt, id))
        }
        LogicalPlan::Projection(p) => {
            let at = p.schema.maybe_index_of_column(column)?;
            let inner = match &p.expr[at] {
                Expr::Column(c) => c,
                Expr::Alias(a) => match a.expr.as_ref() {
                    Expr::Column(c) => c,
                    _ => return None,
                },
                _ => return None,
            };
            let (input, id) = trace(tables, &p.input, inner)?;
            let mut expr = p.expr.clone();
            let id_expr = Expr::Column(id.clone());
            if !expr.contains(&id_expr) {
                expr.push(id_expr);
            }
            let rebuilt = Projection::try_new(expr, Arc::new(input)).ok()?;
            Some((LogicalPlan::Projection(rebuilt), id))
        }
        LogicalPlan::SubqueryAlias(s) => {
            // The alias renames every column; they keep their positions.
            let at = s.schema.maybe_index_of_column(column)?;
            let inner = Column::from(s.input.schema().qualified_field(at));
            let (input, id) = trace(tables, &s.input, &inner)?;
            let id_at = input.schema().maybe_index_of_column(&id)?;
            let rebuilt = SubqueryAlias::try_new(Arc::new(input), s.alias.clone()).ok()?;
            let id = Column::from(rebuilt.schema.qualified_field(id_at));
            Some((LogicalPlan::SubqueryAlias(rebuilt), id))
        }
        LogicalPlan::Join(j) => {
            let from_left = j.left.schema().has_column(column);
            let kept = match j.join_type {
                JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full => true,
                JoinType::LeftSemi | JoinType::LeftAnti => from_left,
                JoinType::RightSemi | JoinType::RightAnti => !from_left,
                JoinType::LeftMark | JoinType::RightMark => false,
            };
            if !kept {
                return None;
            }
            let side = if from_left { &j.left } else { &j.right };
            let (side, id) = trace(tables, side, column)?;
            let inputs = if from_left {
                vec![side, j.right.as_ref().clone()]
            } else {
                vec![j.left.as_ref().clone(), side]
            };
            let rebuilt = plan.with_new_exprs(plan.expressions(), inputs).ok()?;
            Some((rebuilt, id))
        }
        _ => None,
    }
}

/// `scan` reading its table's keyed copy, with the id column, if `column` is its
/// `machine_ip` and it reads this snapshot's table (or its copy already).
fn key_scan(
    tables: &HashMap<String, Arc<dyn TableSource>>,
    scan: &TableScan,
    column: &Column,
) -> Option<(LogicalPlan, Column)> {
    let at = scan.projected_schema.maybe_index_of_column(column)?;
    if scan.projected_schema.field(at).name() != MACHINE_IP || scan.table_name.schema().is_some() {
        return None;
    }
    let table = scan.table_name.table();
    let keyed = tables.get(&keyed_name(table))?;
    let reads = provider_of(&scan.source)?;
    let id = Column::new(Some(scan.table_name.clone()), MACHINE_ID);
    if Some(reads) == provider_of(keyed) {
        // Keyed by an earlier join of this plan: the id may be projected already.
        if scan.projected_schema.has_column(&id) {
            return Some((LogicalPlan::TableScan(scan.clone()), id));
        }
    } else if Some(reads) != tables.get(table).and_then(provider_of) {
        return None;
    }
    let width = keyed.schema().fields().len();
    let mut projection = scan
        .projection
        .clone()
        .unwrap_or_else(|| (0..width - 1).collect());
    projection.push(width - 1);
    let rescan = TableScanBuilder::new(scan.table_name.clone(), keyed.clone())
        .with_projection(Some(projection))
        .with_filters(scan.filters.clone())
        .with_fetch(scan.fetch)
        .with_statistics_requests(scan.statistics_requests.clone())
        .build()
        .ok()?;
    Some((LogicalPlan::TableScan(rescan), id))
}

#[cfg(test)]
pub(in crate::sql) mod tests {
    use super::*;
    use crate::generation::{GenerationBuilder, Part};
    use crate::sql::engine::tests::sql_node_snapshot;
    use crate::sql::engine::{new_context, QueryLimits, Snapshot};
    use crate::sql::plans::PlanCache;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    use datafusion::catalog::MemTable;

    /// A row: its address and one number.
    type Row<'a> = (Option<&'a str>, i64);

    /// A table of `(machine_ip, <column>)` rows, one part per machine as a proxy sends it.
    fn parts(column: &str, rows: &[Row]) -> Vec<Part> {
        let schema = Arc::new(Schema::new(vec![
            Field::new(MACHINE_IP, DataType::Utf8, true),
            Field::new(column, DataType::Int64, false),
        ]));
        let mut by_machine: Vec<(String, Vec<Row>)> = Vec::new();
        for &(ip, v) in rows {
            let key = ip.unwrap_or("none").to_string();
            match by_machine.iter_mut().find(|(k, _)| *k == key) {
                Some((_, r)) => r.push((ip, v)),
                None => by_machine.push((key, vec![(ip, v)])),
            }
        }
        by_machine
            .into_iter()
            .map(|(key, rows)| {
                let ips: Vec<Option<&str>> = rows.iter().map(|r| r.0).collect();
                let values: Vec<i64> = rows.iter().map(|r| r.1).collect();
                let columns: Vec<datafusion::arrow::array::ArrayRef> = vec![
                    Arc::new(StringArray::from(ips)),
                    Arc::new(Int64Array::from(values)),
                ];
                let batch = RecordBatch::try_new(schema.clone(), columns).expect("batch");
                Part::new(key, batch, vec![])
            })
            .collect()
    }

    /// `sys` (m0-m5 and a NULL address), `processes` (m1-m7, three each, and a NULL
    /// address: m6 and m7 are in no other table) and `machinerole` (m0, m2, m7); `shift`
    /// changes the values so that two generations answer differently.
    fn fleet(shift: i64) -> Vec<(&'static str, Vec<Part>)> {
        let ip = |i: i64| -> &'static str {
            ["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"][i as usize]
        };
        let mut sys: Vec<(Option<&str>, i64)> =
            (0..6).map(|i| (Some(ip(i)), i % 2 + shift)).collect();
        sys.push((None, 9));
        let mut processes: Vec<(Option<&str>, i64)> = (1..8)
            .flat_map(|i| (0..3).map(move |k| (Some(ip(i)), i * 10 + k + shift)))
            .collect();
        processes.push((None, 99));
        let roles = vec![(Some("m0"), 1), (Some("m2"), 2), (Some("m7"), 1)];
        vec![
            ("sys", parts("cluster", &sys)),
            ("processes", parts("rss", &processes)),
            ("machinerole", parts("role", &roles)),
            // A column of the id's name of its own: not keyed, and its plans still kept.
            (
                "odd",
                parts(MACHINE_ID, &[(Some("m1"), 1), (Some("m9"), 2)]),
            ),
        ]
    }

    pub(in crate::sql) async fn snapshot(shift: i64, plans: &Arc<PlanCache>) -> Snapshot {
        let mut builder = GenerationBuilder::default();
        for (table, parts) in fleet(shift) {
            for part in parts {
                builder.add(table, part).expect("part");
            }
        }
        sql_node_snapshot(builder, plans.clone()).await
    }

    /// The rows `sql` answers (`rows`) from the same tables in a context that joins on the
    /// addresses themselves.
    pub(in crate::sql) async fn expected(shift: i64, sql: &str) -> Vec<String> {
        let mut config = datafusion::prelude::SessionConfig::new();
        // The snapshot's dialect: the generic one reserves `cluster`.
        config.options_mut().sql_parser.dialect = datafusion::config::Dialect::PostgreSQL;
        let ctx = new_context(config);
        for (table, parts) in fleet(shift) {
            let schema = parts[0].batch.schema();
            let batches = parts.into_iter().map(|p| p.batch.clone()).collect();
            let mem = MemTable::try_new(schema, vec![batches]).expect("table");
            ctx.register_table(table, Arc::new(mem)).expect("register");
        }
        let answer = ctx.sql(sql).await.expect("plans").collect().await;
        rows(&answer.expect("answers"))
    }

    /// An answer's rows as sorted text.
    pub(in crate::sql) fn rows(batches: &[RecordBatch]) -> Vec<String> {
        let options = FormatOptions::default().with_null("NULL");
        let mut out = Vec::new();
        for b in batches {
            let formatters: Vec<_> = b
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).expect("formatter"))
                .collect();
            for row in 0..b.num_rows() {
                let cells: Vec<String> = formatters
                    .iter()
                    .map(|f| f.value(row).to_string())
                    .collect();
                out.push(cells.join("|"));
            }
        }
        out.sort();
        out
    }

    /// (statement, whether its join runs on machine ids, whether by lookup: the joins
    /// `lookup_join` takes have no join filter and keep no unmatched build row).
    pub(in crate::sql) const STATEMENTS: &[(&str, bool, bool)] = &[
        ("SELECT s.machine_ip, s.cluster, p.rss FROM sys s JOIN processes p ON s.machine_ip = p.machine_ip", true, true),
        ("SELECT s.machine_ip, p.machine_ip, p.rss FROM sys s LEFT JOIN processes p ON s.machine_ip = p.machine_ip", true, false),
        ("SELECT s.machine_ip, p.machine_ip, p.rss FROM sys s FULL JOIN processes p ON s.machine_ip = p.machine_ip", true, false),
        ("SELECT s.machine_ip, p.rss FROM sys s JOIN processes p ON s.machine_ip IS NOT DISTINCT FROM p.machine_ip", true, false),
        ("SELECT machine_ip, rss FROM processes WHERE machine_ip IN (SELECT machine_ip FROM sys WHERE cluster = 1)", true, true),
        ("SELECT machine_ip, rss FROM processes WHERE machine_ip NOT IN (SELECT machine_ip FROM sys)", true, false),
        ("SELECT machine_ip, rss FROM processes WHERE machine_ip NOT IN (SELECT machine_ip FROM sys WHERE machine_ip IS NOT NULL)", true, false),
        ("SELECT m.machine_ip FROM machinerole m WHERE NOT EXISTS (SELECT 1 FROM processes p WHERE p.machine_ip = m.machine_ip AND p.rss > 20)", true, true),
        // Two joins on the same address (the papers' first query's shape).
        ("SELECT s.machine_ip, p.rss FROM sys s, processes p WHERE s.machine_ip = p.machine_ip AND s.machine_ip IN (SELECT machine_ip FROM machinerole WHERE role = 2)", true, true),
        ("SELECT a.machine_ip, b.cluster FROM sys a JOIN sys b ON a.machine_ip = b.machine_ip", true, true),
        ("SELECT s.ip, p.rss FROM (SELECT machine_ip AS ip, cluster FROM sys WHERE cluster = 0) s JOIN processes p ON s.ip = p.machine_ip", true, true),
        ("SELECT s.cluster, COUNT(*) FROM sys s JOIN processes p ON s.machine_ip = p.machine_ip AND p.rss > s.cluster * 30 GROUP BY s.cluster", true, true),
        // Not the address itself on one side: joined on strings as before.
        ("SELECT s.machine_ip, p.rss FROM sys s JOIN processes p ON s.machine_ip = lower(p.machine_ip)", false, false),
        ("SELECT s.machine_ip, r.role FROM sys s JOIN (SELECT machine_ip, MAX(role) AS role FROM machinerole GROUP BY machine_ip) r ON s.machine_ip = r.machine_ip", false, false),
    ];

    /// `sql`'s answer from `snap` (generation 0), checked against the same statement on
    /// the addresses themselves, and the text of its plans.
    async fn answer_and_plans(snap: &Snapshot, sql: &str) -> (Vec<RecordBatch>, String) {
        let limits = QueryLimits::default();
        let got = snap.query(sql, &limits).await.expect("answer");
        assert_eq!(rows(&got.batches), expected(0, sql).await, "{sql}");
        let explain = snap
            .query(&format!("EXPLAIN {sql}"), &limits)
            .await
            .expect("explain");
        (got.batches, rows(&explain.batches).join("\n"))
    }

    #[tokio::test]
    async fn joins_on_machine_ids_answer_as_joins_on_addresses() {
        let snap = snapshot(0, &Arc::new(PlanCache::new(0))).await;
        for &(sql, keyed, looked_up) in STATEMENTS {
            let (got, text) = answer_and_plans(&snap, sql).await;
            assert!(
                !rows(&got).is_empty() || sql.contains("NOT IN (SELECT machine_ip FROM sys)"),
                "{sql}"
            );
            assert_eq!(text.contains(MACHINE_ID), keyed, "{sql}\n{text}");
            assert_eq!(
                text.contains("MachineIdJoinExec"),
                looked_up,
                "{sql}\n{text}"
            );
            // The ids never reach the answer.
            assert!(got
                .iter()
                .all(|b| b.schema().column_with_name(MACHINE_ID).is_none()));
        }
    }

    /// A keyed copy's ids are marked as each on one row where they are (`sys`, and here
    /// `machinerole`), NULLs aside; a join whose hash join would build on `processes`
    /// builds on `sys` instead.
    #[tokio::test]
    async fn keying_marks_ids_each_on_one_row_and_joins_build_on_them() {
        for (table, parts) in fleet(0) {
            let batches: Vec<RecordBatch> = parts.into_iter().map(|p| p.batch.clone()).collect();
            let rows = batches.iter().map(|b| b.num_rows()).sum();
            let spread =
                crate::sql::spread::partitioned(batches[0].schema(), batches.iter(), 2, rows)
                    .expect("table");
            let Some(keyed) = Keying::default().add(&spread) else {
                assert_eq!(table, "odd");
                continue;
            };
            let schema = keyed.schema();
            let marked = schema
                .field_with_name(MACHINE_ID)
                .expect("id")
                .metadata()
                .get(UNIQUE_IDS.0)
                .is_some_and(|v| v == UNIQUE_IDS.1);
            assert_eq!(marked, table != "processes", "{table}");
        }
        let snap = snapshot(0, &Arc::new(PlanCache::new(0))).await;
        // The shape of `report_network_per_cluster`: a filter whose selectivity DataFusion
        // cannot tell keeps `processes` on the hash join's build side.
        let sql = "SELECT s.cluster, p.rss FROM processes p JOIN sys s ON p.machine_ip = s.machine_ip WHERE p.rss <> 3";
        let (got, text) = answer_and_plans(&snap, sql).await;
        assert_eq!(rows(&got).len(), 15);
        assert!(text.contains("build=right"), "{text}");
    }

    /// (statement, whether its distinct count of addresses runs on machine ids).
    const COUNTS: &[(&str, bool)] = &[
        ("SELECT m.role, COUNT(DISTINCT s.machine_ip), COUNT(*), SUM(s.cluster) FROM machinerole m JOIN sys s ON m.machine_ip = s.machine_ip GROUP BY m.role", true),
        ("SELECT cluster, COUNT(DISTINCT machine_ip) AS machines, COUNT(*) FROM sys GROUP BY cluster", true),
        ("SELECT COUNT(DISTINCT machine_ip), COUNT(machine_ip), MAX(rss) FROM processes", true),
        ("SELECT COUNT(DISTINCT machine_ip) FILTER (WHERE rss > 30), COUNT(*) FROM processes", true),
        // Both sides of an outer join: the unmatched side's addresses are NULL.
        ("SELECT COUNT(DISTINCT s.machine_ip), COUNT(DISTINCT p.machine_ip), COUNT(*) FROM sys s LEFT JOIN processes p ON s.machine_ip = p.machine_ip", true),
        // Not the address itself, or the only aggregate (DataFusion groups by it first).
        ("SELECT COUNT(DISTINCT lower(machine_ip)), COUNT(*) FROM processes", false),
        ("SELECT cluster, COUNT(DISTINCT machine_ip) FROM sys GROUP BY cluster", false),
    ];

    #[tokio::test]
    async fn distinct_counts_of_addresses_count_machine_ids() {
        let snap = snapshot(0, &Arc::new(PlanCache::new(0))).await;
        for &(sql, on_ids) in COUNTS {
            let (got, text) = answer_and_plans(&snap, sql).await;
            assert!(!rows(&got).is_empty(), "{sql}");
            // `count(DISTINCT s.__machine_id)` somewhere in the plans.
            let counted = text.split("count(DISTINCT ").skip(1).any(|after| {
                after
                    .split(')')
                    .next()
                    .is_some_and(|arg| arg.ends_with(MACHINE_ID))
            });
            assert_eq!(counted, on_ids, "{sql}\n{text}");
        }
    }

    #[tokio::test]
    async fn a_kept_plan_joins_on_the_next_generations_ids() {
        let plans = Arc::new(PlanCache::new(16));
        let limits = QueryLimits::default();
        let odd = "SELECT o.machine_ip, o.__machine_id, s.cluster FROM odd o \
                   JOIN sys s ON o.machine_ip = s.machine_ip";
        for sql in [STATEMENTS[0].0, STATEMENTS[8].0, odd] {
            let first = snapshot(0, &plans).await;
            for _ in 0..2 {
                first.query(sql, &limits).await.expect("answer");
            }
            let next = snapshot(5, &plans).await;
            let got = next.query(sql, &limits).await.expect("answer");
            assert!(got.phases.plan_reused, "the plan is kept: {sql}");
            assert_eq!(rows(&got.batches), expected(5, sql).await, "{sql}");
            assert!(!got.batches.is_empty(), "{sql}");
        }
    }

    #[test]
    fn equal_addresses_get_equal_ids_across_tables_and_null_stays_null() {
        let mut ids = MachineIds::default();
        let a = ids
            .of(&StringArray::from(vec![
                Some("x"),
                Some("x"),
                None,
                Some("y"),
                Some("x"),
            ]))
            .expect("ids");
        let b = ids
            .of(&StringArray::from(vec![Some("y"), Some("z"), Some("x")]))
            .expect("ids");
        let values = |a: &UInt32Array| {
            (0..a.len())
                .map(|i| a.is_valid(i).then(|| a.value(i)))
                .collect::<Vec<_>>()
        };
        assert_eq!(values(&a), vec![Some(0), Some(0), None, Some(1), Some(0)]);
        assert_eq!(values(&b), vec![Some(1), Some(2), Some(0)]);
    }
}

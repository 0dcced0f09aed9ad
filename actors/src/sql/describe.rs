//! Self-describing tables: the descriptions operators write in `schemas/*.toml`, static
//! tables and `views.toml`, and those of the node's own tables, gathered per snapshot and
//! served as the table `query_columns` (one row per column of every table a query can
//! name), in `GET /tables` and the console.
//!
//! DataFusion's `information_schema.columns` and `.tables` have fixed columns and no
//! comment column, so they cannot carry descriptions: `query_columns` does.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::MemTable;

use super::engine::{Origin, Snapshot};
use super::references::referenced_tables;
use super::views::ViewsFile;
use crate::table::{ColumnDef, SchemaRegistry};

/// The table of every table's columns and descriptions.
pub const COLUMNS_TABLE: &str = "query_columns";

/// One column as a client sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct DescribedColumn {
    pub name: String,
    /// The table model's type names (`int64`, `string`, ...): [`type_label`].
    pub type_name: String,
    pub nullable: bool,
    pub description: String,
}

/// One table: where it comes from, what it is, its columns in order.
#[derive(Debug, Clone, PartialEq)]
pub struct DescribedTable {
    /// published, static, view, self, history or report.
    pub origin: &'static str,
    pub description: String,
    pub columns: Vec<DescribedColumn>,
}

/// Every table of a snapshot, described; the rows of `query_columns`.
#[derive(Debug, Default)]
pub struct Descriptions {
    pub tables: BTreeMap<String, DescribedTable>,
}

impl Descriptions {
    pub fn table(&self, name: &str) -> Option<&DescribedTable> {
        self.tables.get(name)
    }

    /// A column's description ("" when it has none or is unknown).
    fn column(&self, table: &str, column: &str) -> &str {
        self.tables
            .get(table)
            .and_then(|t| t.columns.iter().find(|c| c.name == column))
            .map_or("", |c| c.description.as_str())
    }

    /// `query_columns` as one batch.
    fn batch(&self) -> datafusion::error::Result<RecordBatch> {
        // Arrow's builders need iterators of known length.
        let all: Vec<_> = self
            .tables
            .iter()
            .flat_map(|(name, t)| {
                t.columns
                    .iter()
                    .enumerate()
                    .map(move |(i, c)| (name, t, i, c))
            })
            .collect();
        let rows = || all.iter().copied();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(rows().map(|r| &r.3.name))),
            Arc::new(Int64Array::from_iter_values(rows().map(|r| r.2 as i64 + 1))),
            Arc::new(StringArray::from_iter_values(
                rows().map(|r| &r.3.type_name),
            )),
            Arc::new(BooleanArray::from_iter(rows().map(|r| Some(r.3.nullable)))),
            Arc::new(StringArray::from_iter_values(
                rows().map(|r| &r.3.description),
            )),
            Arc::new(StringArray::from_iter_values(
                rows().map(|r| &r.1.description),
            )),
            Arc::new(StringArray::from_iter_values(rows().map(|r| r.1.origin))),
        ];
        Ok(RecordBatch::try_new(columns_schema(), cols)?)
    }
}

/// The type name shown to clients: the table model's names where they apply.
pub fn type_label(dt: &DataType) -> String {
    match dt {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => "int64".into(),
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => "uint64".into(),
        DataType::Float16 | DataType::Float32 | DataType::Float64 => "float64".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Boolean => "bool".into(),
        DataType::Timestamp(..) => "timestamp".into(),
        other => other.to_string().to_lowercase(),
    }
}

fn columns_schema() -> SchemaRef {
    let s = |name: &str| Field::new(name, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        s("table_name"),
        s("column_name"),
        Field::new("position", DataType::Int64, false),
        s("type"),
        Field::new("nullable", DataType::Boolean, false),
        s("description"),
        s("table_description"),
        s("origin"),
    ]))
}

/// A table of the node's own: name, description, (column, description) in order.
type SelfTable = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// Descriptions of the node's own tables (computed when read), column by column.
const SELF_TABLES: &[SelfTable] = &[
    (
        COLUMNS_TABLE,
        "Every column of every table a query can name here, with its type and description (one row per column)",
        &[
            ("table_name", "Table (history and report tables as history.<t>, report.<r>)"),
            ("column_name", "Column"),
            ("position", "Position of the column in the table, from 1"),
            ("type", "int64, float64, string, bool, timestamp (other Arrow types by name)"),
            ("nullable", "Whether the column may hold NULL"),
            ("description", "What the column holds (for a view's column: the description of the column of that name it reads, if any)"),
            ("table_description", "What the table holds"),
            ("origin", "published (schemas/), static (static-tables/), view (views.toml), self (about this node), history or report"),
        ],
    ),
    (
        "query_quarantine",
        "Queries refused for now because they hit a limit too often (runaway-query quarantine)",
        &[
            ("text", "The query, normalised (white space, case outside quotes, trailing ;)"),
            ("client", "Who sent it last: token name, or the peer's address"),
            ("limit_hit", "The limit it hit: time, memory, answer size or complexity"),
            ("count", "Times it hit a limit within the window"),
            ("until", "When it may run again (NULL: not quarantined yet, only counted)"),
        ],
    ),
    (
        "query_alerts",
        "Alert instances this node evaluates now, one row per alert and key",
        &[
            ("alert", "Alert name (ops/alerts.toml)"),
            ("key", "The instance's key columns' values, joined"),
            ("key_json", "The instance's key columns as a JSON object"),
            ("state", "pending, firing, resolved, unknown or error"),
            ("since", "When the instance entered its state"),
            ("changed", "When the instance last changed"),
            ("last_round", "Round of the generation last evaluated for it"),
            ("priority", "The alert's priority"),
            ("owner", "The alert's owner"),
            ("values_json", "The instance's row of the alert's answer, as a JSON object"),
            ("error", "Why the alert failed (state error)"),
        ],
    ),
    (
        "query_alert_events",
        "Alert state transitions, newest kept ([alerts] keep_events)",
        &[
            ("at", "When the transition happened"),
            ("alert", "Alert name"),
            ("key", "The instance's key"),
            ("from_state", "State before (NULL: new instance)"),
            ("to_state", "State after"),
            ("generation", "Generation evaluated"),
            ("notified", "Whether receivers were sent it"),
            ("detail", "What changed, in words"),
        ],
    ),
    (
        "query_history",
        "Tables kept by Query History and reports kept, one row each",
        &[
            ("name", "history.<table> or report.<name>"),
            ("kind", "history or report"),
            ("configured", "Still in ops/history.toml or ops/reports.toml"),
            ("files", "Parquet files kept"),
            ("rows", "Rows kept"),
            ("bytes", "Bytes on disk"),
            ("oldest", "Seal time of the oldest kept generation"),
            ("newest", "Seal time of the newest kept generation"),
            ("paused", "Whether history writing is paused"),
            ("reason", "Why it is paused"),
            ("last_run", "A report's last run"),
            ("error", "A report's last error"),
        ],
    ),
];

/// The columns every history and report table adds.
const KEPT_COLUMNS: &[(&str, &str)] = &[
    (
        "generation_time",
        "When the kept generation was sealed (UTC)",
    ),
    ("generation", "Id of the kept generation at this node"),
];

fn described(defs: &[ColumnDef], schema: &SchemaRef) -> Vec<DescribedColumn> {
    with_descriptions(schema, |name| {
        defs.iter()
            .find(|c| c.name == name)
            .map(|c| c.description.clone())
    })
}

fn with_descriptions(
    schema: &SchemaRef,
    describe: impl Fn(&str) -> Option<String>,
) -> Vec<DescribedColumn> {
    schema
        .fields()
        .iter()
        .map(|f| DescribedColumn {
            name: f.name().clone(),
            type_name: type_label(f.data_type()),
            nullable: f.is_nullable(),
            description: describe(f.name()).unwrap_or_default(),
        })
        .collect()
}

/// Describes every table of `snap` and installs `query_columns` in it. Published tables
/// are described by `schemas`, views by `views`; a view's column takes the description of
/// the column of that name in the tables it reads (marked "from table.column").
pub async fn install(snap: &mut Snapshot, schemas: &SchemaRegistry, views: &ViewsFile) {
    let mut out = Descriptions::default();
    let mut view_names = Vec::new();
    for t in snap.tables() {
        let Some(schema) = snap.columns(&t.name).await else {
            continue;
        };
        let table = match t.origin {
            Origin::Published => {
                let def = schemas.get(&t.name);
                DescribedTable {
                    origin: "published",
                    description: def.map(|d| d.description.clone()).unwrap_or_default(),
                    columns: match def {
                        Some(d) => described(&d.full_columns(true), &schema),
                        None => with_descriptions(&schema, |_| None),
                    },
                }
            }
            Origin::Static => {
                let def = snap.statics.tables.get(&t.name).map(|s| &s.def);
                DescribedTable {
                    origin: "static",
                    description: def.map(|d| d.description.clone()).unwrap_or_default(),
                    columns: match def {
                        Some(d) => described(&d.full_columns(false), &schema),
                        None => with_descriptions(&schema, |_| None),
                    },
                }
            }
            Origin::Node => {
                let known = SELF_TABLES.iter().find(|s| s.0 == t.name);
                DescribedTable {
                    origin: "self",
                    description: known.map(|s| s.1.to_string()).unwrap_or_default(),
                    columns: with_descriptions(&schema, |c| {
                        known
                            .and_then(|s| s.2.iter().find(|d| d.0 == c))
                            .map(|d| d.1.to_string())
                    }),
                }
            }
            Origin::View => {
                // Described after the tables they read.
                view_names.push((t.name.clone(), schema));
                continue;
            }
        };
        out.tables.insert(t.name.clone(), table);
    }
    let view_sql = snap.view_sql();
    for (name, schema) in view_names {
        let def = views.view.iter().find(|v| v.name == name);
        let behind: Vec<String> = def
            .map(|v| referenced_tables(&v.sql, &view_sql).into_iter().collect())
            .unwrap_or_default();
        let columns = with_descriptions(&schema, |c| {
            behind.iter().find_map(|t| {
                let d = out.column(t, c);
                (!d.is_empty()).then(|| format!("{d} (from {t}.{c})"))
            })
        });
        out.tables.insert(
            name,
            DescribedTable {
                origin: "view",
                description: def.map(|v| v.description.clone()).unwrap_or_default(),
                columns,
            },
        );
    }
    for kind in ["history", "report"] {
        for (name, schema) in snap.schema_tables(kind).await {
            let qualified = format!("{kind}.{name}");
            let live = (kind == "history")
                .then(|| out.table(&name).cloned())
                .flatten();
            let describe = |c: &str| {
                KEPT_COLUMNS
                    .iter()
                    .find(|k| k.0 == c)
                    .map(|k| k.1.to_string())
                    .or_else(|| {
                        live.as_ref()
                            .and_then(|l| l.columns.iter().find(|x| x.name == c))
                            .map(|x| x.description.clone())
                    })
            };
            let description = match (kind, &live) {
                ("history", Some(l)) if !l.description.is_empty() => {
                    format!("Kept generations of {name}: {}", l.description)
                }
                ("history", _) => format!("Kept generations of {name}"),
                _ => format!("Kept answers of report {name}"),
            };
            out.tables.insert(
                qualified,
                DescribedTable {
                    origin: if kind == "history" {
                        "history"
                    } else {
                        "report"
                    },
                    description,
                    columns: with_descriptions(&schema, describe),
                },
            );
        }
    }
    let own = SELF_TABLES[0];
    out.tables.insert(
        COLUMNS_TABLE.to_string(),
        DescribedTable {
            origin: "self",
            description: own.1.to_string(),
            columns: with_descriptions(&columns_schema(), |c| {
                own.2.iter().find(|d| d.0 == c).map(|d| d.1.to_string())
            }),
        },
    );
    match out
        .batch()
        .and_then(|b| MemTable::try_new(columns_schema(), vec![vec![b]]))
    {
        Ok(table) => snap.add_node_table(COLUMNS_TABLE, Arc::new(table)),
        Err(e) => tracing::error!(error = %e, "cannot build {COLUMNS_TABLE}"),
    }
    snap.descriptions = Arc::new(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_self_table_column_is_described() {
        for (table, description, columns) in SELF_TABLES {
            assert!(!description.is_empty(), "{table}");
            assert!(columns.iter().all(|c| !c.1.is_empty()), "{table}");
        }
        let schema = columns_schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let described: Vec<&str> = SELF_TABLES[0].2.iter().map(|c| c.0).collect();
        assert_eq!(names, described);
    }

    #[test]
    fn query_columns_has_a_row_per_column_numbered_from_one() {
        let mut d = Descriptions::default();
        let column = |name: &str, description: &str| DescribedColumn {
            name: name.into(),
            type_name: "int64".into(),
            nullable: false,
            description: description.into(),
        };
        d.tables.insert(
            "t".into(),
            DescribedTable {
                origin: "static",
                description: "a table".into(),
                columns: vec![column("a", "first"), column("b", "")],
            },
        );
        let b = d.batch().expect("batch");
        assert_eq!(b.num_rows(), 2);
        let pos = b
            .column(2)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("int");
        assert_eq!(pos.values().to_vec(), vec![1, 2]);
        assert_eq!(d.column("t", "a"), "first");
        assert_eq!(d.column("t", "nosuch"), "");
    }
}

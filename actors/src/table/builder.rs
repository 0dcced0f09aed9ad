//! Rows to Arrow: every path that turns rows into a record batch (static tables, the host
//! and simulated publishers, fixtures) goes through [`TableBuilder`], so type checks and
//! error messages (naming row and column) are the same everywhere.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use datafusion::arrow::compute::kernels::cast_utils::string_to_timestamp_nanos;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use super::schema::{ColumnDef, ColumnType};

/// A time as the table model stores timestamps: milliseconds since the Unix epoch.
pub fn unix_millis(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One value of a row, already of a column type.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    /// Milliseconds since the Unix epoch.
    Ts(i64),
}

impl From<i64> for Cell {
    fn from(v: i64) -> Self {
        Cell::Int(v)
    }
}
impl From<f64> for Cell {
    fn from(v: f64) -> Self {
        Cell::Float(v)
    }
}
impl From<bool> for Cell {
    fn from(v: bool) -> Self {
        Cell::Bool(v)
    }
}
impl From<&str> for Cell {
    fn from(v: &str) -> Self {
        Cell::Str(v.to_string())
    }
}
impl From<String> for Cell {
    fn from(v: String) -> Self {
        Cell::Str(v)
    }
}

impl Cell {
    /// Converts a JSON value to a cell of type `ty`. Integers are accepted for float columns;
    /// timestamps are integer milliseconds or RFC 3339 strings.
    pub fn from_json(v: &serde_json::Value, ty: ColumnType) -> Result<Cell, String> {
        use serde_json::Value as J;
        Ok(match (v, ty) {
            (J::Null, _) => Cell::Null,
            (J::Number(n), ColumnType::Int64) => Cell::Int(
                n.as_i64()
                    .ok_or_else(|| format!("{n} is not a 64-bit integer"))?,
            ),
            (J::Number(n), ColumnType::Float64) => {
                Cell::Float(n.as_f64().ok_or_else(|| format!("{n} is not a number"))?)
            }
            (J::Number(n), ColumnType::Timestamp) => Cell::Ts(
                n.as_i64()
                    .ok_or_else(|| format!("{n} is not integer milliseconds"))?,
            ),
            (J::String(s), ColumnType::Timestamp) => Cell::Ts(parse_timestamp(s)?),
            (J::String(s), ColumnType::String) => Cell::Str(s.clone()),
            (J::Bool(b), ColumnType::Bool) => Cell::Bool(*b),
            (other, ty) => return Err(format!("expected {}, got {}", ty.name(), json_kind(other))),
        })
    }

    /// Converts a TOML value (static tables) to a cell of type `ty`.
    pub fn from_toml(v: &toml::Value, ty: ColumnType) -> Result<Cell, String> {
        use toml::Value as T;
        Ok(match (v, ty) {
            (T::Integer(i), ColumnType::Int64) => Cell::Int(*i),
            (T::Integer(i), ColumnType::Float64) => Cell::Float(*i as f64),
            (T::Float(f), ColumnType::Float64) => Cell::Float(*f),
            (T::Integer(i), ColumnType::Timestamp) => Cell::Ts(*i),
            (T::String(s), ColumnType::Timestamp) => Cell::Ts(parse_timestamp(s)?),
            (T::Datetime(d), ColumnType::Timestamp) => Cell::Ts(parse_timestamp(&d.to_string())?),
            (T::String(s), ColumnType::String) => Cell::Str(s.clone()),
            (T::Boolean(b), ColumnType::Bool) => Cell::Bool(*b),
            (other, ty) => return Err(format!("expected {}, got {}", ty.name(), other.type_str())),
        })
    }
}

impl Cell {
    /// Converts a text field (CSV/TSV files) to a cell of type `ty`; an empty field is null.
    pub fn from_text(s: &str, ty: ColumnType) -> Result<Cell, String> {
        if s.is_empty() {
            return Ok(Cell::Null);
        }
        let bad = |what: &str| format!("'{s}' is not {what}");
        Ok(match ty {
            ColumnType::Int64 => Cell::Int(s.trim().parse().map_err(|_| bad("an integer"))?),
            ColumnType::Float64 => Cell::Float(s.trim().parse().map_err(|_| bad("a number"))?),
            ColumnType::String => Cell::Str(s.to_string()),
            ColumnType::Bool => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "t" | "1" | "yes" => Cell::Bool(true),
                "false" | "f" | "0" | "no" => Cell::Bool(false),
                _ => return Err(bad("a boolean")),
            },
            ColumnType::Timestamp => match s.trim().parse::<i64>() {
                Ok(ms) => Cell::Ts(ms),
                Err(_) => Cell::Ts(parse_timestamp(s.trim())?),
            },
        })
    }
}

fn parse_timestamp(s: &str) -> Result<i64, String> {
    string_to_timestamp_nanos(s)
        .map(|ns| ns.div_euclid(1_000_000))
        .map_err(|_| format!("'{s}' is not an RFC 3339 timestamp"))
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

enum ColBuilder {
    Int(Int64Builder),
    Float(Float64Builder),
    Str(StringBuilder),
    Bool(BooleanBuilder),
    Ts(TimestampMillisecondBuilder),
}

/// A row that does not fit the table: which row, which column, why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("row {row}, column '{column}': {message}")]
pub struct RowError {
    pub row: usize,
    pub column: String,
    pub message: String,
}

/// Builds one record batch from rows, checking each cell against the column definitions.
pub struct TableBuilder {
    schema: SchemaRef,
    columns: Vec<ColumnDef>,
    builders: Vec<ColBuilder>,
    rows: usize,
}

impl TableBuilder {
    /// `columns` must be in `schema` order (see `TableDef::full_columns`).
    pub fn new(schema: SchemaRef, columns: Vec<ColumnDef>) -> Self {
        let builders = columns
            .iter()
            .map(|c| match c.ty {
                ColumnType::Int64 => ColBuilder::Int(Int64Builder::new()),
                ColumnType::Float64 => ColBuilder::Float(Float64Builder::new()),
                ColumnType::String => ColBuilder::Str(StringBuilder::new()),
                ColumnType::Bool => ColBuilder::Bool(BooleanBuilder::new()),
                ColumnType::Timestamp => {
                    ColBuilder::Ts(TimestampMillisecondBuilder::new().with_timezone("UTC"))
                }
            })
            .collect();
        TableBuilder {
            schema,
            columns,
            builders,
            rows: 0,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Appends one row. On error nothing of the row is kept.
    pub fn push_row(&mut self, cells: Vec<Cell>) -> Result<(), RowError> {
        let row = self.rows;
        if cells.len() != self.columns.len() {
            return Err(self.width_error(row, cells.len()));
        }
        // Check the whole row before appending anything, so a bad row leaves no trace.
        for (cell, col) in cells.iter().zip(&self.columns) {
            let ok = matches!(
                (cell, col.ty),
                (Cell::Int(_), ColumnType::Int64)
                    | (Cell::Float(_), ColumnType::Float64)
                    | (Cell::Str(_), ColumnType::String)
                    | (Cell::Bool(_), ColumnType::Bool)
                    | (Cell::Ts(_), ColumnType::Timestamp)
            ) || (*cell == Cell::Null && col.nullable);
            if !ok {
                let message = if *cell == Cell::Null {
                    "null in a column that is not nullable".to_string()
                } else {
                    format!("expected {}, got {cell:?}", col.ty.name())
                };
                return Err(RowError {
                    row,
                    column: col.name.clone(),
                    message,
                });
            }
        }
        for (cell, b) in cells.into_iter().zip(&mut self.builders) {
            match (cell, b) {
                (Cell::Int(v), ColBuilder::Int(b)) => b.append_value(v),
                (Cell::Float(v), ColBuilder::Float(b)) => b.append_value(v),
                (Cell::Str(v), ColBuilder::Str(b)) => b.append_value(v),
                (Cell::Bool(v), ColBuilder::Bool(b)) => b.append_value(v),
                (Cell::Ts(v), ColBuilder::Ts(b)) => b.append_value(v),
                (_, ColBuilder::Int(b)) => b.append_null(),
                (_, ColBuilder::Float(b)) => b.append_null(),
                (_, ColBuilder::Str(b)) => b.append_null(),
                (_, ColBuilder::Bool(b)) => b.append_null(),
                (_, ColBuilder::Ts(b)) => b.append_null(),
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// Converts JSON or TOML-like rows given as arrays of values in column order.
    pub fn push_json_row(&mut self, values: &[serde_json::Value]) -> Result<(), RowError> {
        let row = self.rows;
        let cells = self.convert(values, Cell::from_json, row)?;
        self.push_row(cells)
    }

    pub fn push_toml_row(&mut self, values: &[toml::Value]) -> Result<(), RowError> {
        let row = self.rows;
        let cells = self.convert(values, Cell::from_toml, row)?;
        self.push_row(cells)
    }

    fn convert<V>(
        &self,
        values: &[V],
        f: impl Fn(&V, ColumnType) -> Result<Cell, String>,
        row: usize,
    ) -> Result<Vec<Cell>, RowError> {
        if values.len() != self.columns.len() {
            return Err(self.width_error(row, values.len()));
        }
        values
            .iter()
            .zip(&self.columns)
            .map(|(v, c)| {
                f(v, c.ty).map_err(|message| RowError {
                    row,
                    column: c.name.clone(),
                    message,
                })
            })
            .collect()
    }

    fn width_error(&self, row: usize, got: usize) -> RowError {
        RowError {
            row,
            column: String::new(),
            message: format!(
                "has {got} values, the table has {} columns",
                self.columns.len()
            ),
        }
    }

    pub fn finish(mut self) -> RecordBatch {
        let arrays: Vec<ArrayRef> = self
            .builders
            .iter_mut()
            .map(|b| -> ArrayRef {
                match b {
                    ColBuilder::Int(b) => Arc::new(b.finish()),
                    ColBuilder::Float(b) => Arc::new(b.finish()),
                    ColBuilder::Str(b) => Arc::new(b.finish()),
                    ColBuilder::Bool(b) => Arc::new(b.finish()),
                    ColBuilder::Ts(b) => Arc::new(b.finish()),
                }
            })
            .collect();
        // Types and lengths were checked row by row, so this cannot fail for our own builders.
        RecordBatch::try_new(self.schema.clone(), arrays)
            .unwrap_or_else(|e| unreachable!("builder produced an invalid batch: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::TableDef;

    fn builder() -> TableBuilder {
        let def: TableDef = toml::from_str(
            r#"name = "t"
columns = [
  { name = "a", type = "int64" },
  { name = "b", type = "string", nullable = true },
  { name = "c", type = "timestamp" },
]"#,
        )
        .expect("parses");
        TableBuilder::new(def.arrow_schema(false), def.full_columns(false))
    }

    #[test]
    fn builds_and_names_bad_cells() {
        let mut b = builder();
        b.push_row(vec![1.into(), Cell::Null, Cell::Ts(5)])
            .expect("good row");
        let err = b
            .push_json_row(&[
                serde_json::json!(2),
                serde_json::json!(3),
                serde_json::json!(1),
            ])
            .expect_err("b is a string");
        assert_eq!((err.row, err.column.as_str()), (1, "b"));
        let err = b
            .push_row(vec![Cell::Null, Cell::Null, Cell::Ts(1)])
            .expect_err("a not null");
        assert_eq!(err.column, "a");
        b.push_json_row(&[
            serde_json::json!(2),
            serde_json::json!("x"),
            serde_json::json!("2024-01-02T03:04:05Z"),
        ])
        .expect("good");
        let batch = b.finish();
        assert_eq!(batch.num_rows(), 2);
    }
}

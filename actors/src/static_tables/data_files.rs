//! Static tables' rows from a data file beside the TOML that declares the table
//! (`data = "machines.csv"`): CSV or TSV (a header line naming columns, an empty field is
//! NULL), JSON lines (one object per line, a missing or `null` key is NULL) or Parquet
//! (columns by name, of a type that converts to the declared one without loss). TOML rows
//! cannot hold NULL and are painful past a few hundred rows; these formats can.
//!
//! The file is read whole and checked against the declared columns (names, types, NULL in
//! a column not declared `nullable`); any fault refuses the whole file, so the loader keeps
//! the table's last good copy.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use datafusion::arrow::array::{new_null_array, ArrayRef};
use datafusion::arrow::compute::{cast_with_options, concat_batches, CastOptions};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::FormatOptions;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::table::{parse_text_table, ColumnType, TableDef};

/// The largest data file read (a static table is held in memory by every node serving it).
pub const MAX_DATA_BYTES: u64 = 1 << 30;

/// The formats of a data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    Csv,
    Tsv,
    Jsonl,
    Parquet,
}

impl DataFormat {
    /// `declared` (`format = "..."`), else the file's extension.
    pub fn of(path: &Path, declared: Option<&str>) -> Result<DataFormat, String> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let name = declared.unwrap_or(ext).to_ascii_lowercase();
        Ok(match name.as_str() {
            "csv" => DataFormat::Csv,
            "tsv" | "tab" => DataFormat::Tsv,
            "jsonl" | "ndjson" => DataFormat::Jsonl,
            "parquet" => DataFormat::Parquet,
            _ => {
                return Err(match declared {
                    Some(f) => format!("format '{f}' is not one of csv, tsv, jsonl, parquet"),
                    None => format!(
                        "cannot tell the format of {} from its extension: name it .csv, .tsv, .jsonl or .parquet, or set format = \"csv\" (tsv, jsonl, parquet)",
                        path.display()
                    ),
                })
            }
        })
    }
}

/// Reads the rows of `def` from `path`, whole or not at all.
pub fn read_data_file(
    def: &TableDef,
    path: &Path,
    format: DataFormat,
) -> Result<RecordBatch, String> {
    let shown = path.display();
    let file = File::open(path).map_err(|e| format!("data file {shown}: cannot open: {e}"))?;
    let len = file
        .metadata()
        .map_err(|e| format!("data file {shown}: {e}"))?
        .len();
    if len > MAX_DATA_BYTES {
        return Err(format!(
            "data file {shown}: {len} bytes, over the limit of {MAX_DATA_BYTES} for a static table"
        ));
    }
    match format {
        DataFormat::Parquet => {
            read_parquet(def, file).map_err(|e| format!("data file {shown}: {e}"))
        }
        text => {
            let mut bytes = Vec::with_capacity(len as usize);
            file.take(MAX_DATA_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| format!("data file {shown}: cannot read: {e}"))?;
            let ext = match text {
                DataFormat::Tsv => "tsv",
                DataFormat::Jsonl => "jsonl",
                _ => "csv",
            };
            parse_text_table(&bytes, def, ext, None).map_err(|e| format!("data file {shown}: {e}"))
        }
    }
}

/// Parquet: every column of the file must be declared; a declared column the file lacks is
/// NULL if nullable, an error otherwise.
fn read_parquet(def: &TableDef, file: File) -> Result<RecordBatch, String> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| format!("not a readable Parquet file: {e}"))?;
    let schema = builder.schema().clone();
    for f in schema.fields() {
        if !def.columns.iter().any(|c| &c.name == f.name()) {
            return Err(format!(
                "column '{}' is not a column of table {}",
                f.name(),
                def.name
            ));
        }
    }
    let reader = builder
        .build()
        .map_err(|e| format!("not a readable Parquet file: {e}"))?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("reading: {e}"))?;
    let all = concat_batches(&schema, &batches).map_err(|e| format!("reading: {e}"))?;
    let rows = all.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(def.columns.len());
    for c in &def.columns {
        let target = c.ty.arrow_type();
        let array = match all.column_by_name(&c.name) {
            None if c.nullable => new_null_array(&target, rows),
            None => {
                return Err(format!(
                    "column '{}' is missing, and it is not nullable",
                    c.name
                ))
            }
            Some(a) => {
                if !converts(a.data_type(), c.ty) {
                    return Err(format!(
                        "column '{}' is {} in the file; the table declares {}",
                        c.name,
                        a.data_type(),
                        c.ty.name()
                    ));
                }
                let options = CastOptions {
                    safe: false,
                    format_options: FormatOptions::default(),
                };
                cast_with_options(a, &target, &options)
                    .map_err(|e| format!("column '{}': {e}", c.name))?
            }
        };
        if !c.nullable && array.null_count() > 0 {
            let row = (0..rows).find(|i| array.is_null(*i)).unwrap_or(0);
            return Err(format!(
                "row {row}, column '{}': null in a column that is not nullable",
                c.name
            ));
        }
        columns.push(array);
    }
    RecordBatch::try_new(def.arrow_schema(false), columns).map_err(|e| e.to_string())
}

/// Whether a Parquet column of type `from` becomes a column of `to` without changing a
/// value: integers widen, numbers become floats, any timestamp or date becomes a UTC
/// timestamp; a float never silently becomes an integer.
fn converts(from: &DataType, to: ColumnType) -> bool {
    use DataType as D;
    match (from, to) {
        (D::Dictionary(_, v), to) => converts(v, to),
        (D::Null, _) => true,
        (
            D::Int8 | D::Int16 | D::Int32 | D::Int64 | D::UInt8 | D::UInt16 | D::UInt32,
            ColumnType::Int64,
        ) => true,
        // u64 is checked value by value (safe: false refuses what does not fit).
        (D::UInt64, ColumnType::Int64) => true,
        (d, ColumnType::Float64) => d.is_numeric(),
        (D::Utf8 | D::LargeUtf8 | D::Utf8View, ColumnType::String) => true,
        (D::Boolean, ColumnType::Bool) => true,
        (D::Timestamp(_, _) | D::Date32 | D::Date64, ColumnType::Timestamp) => true,
        _ => false,
    }
}

/// Writes `batch` as a Parquet file (tests, and operators converting a TOML table).
#[cfg(test)]
pub(crate) fn write_parquet(path: &Path, batch: &RecordBatch) {
    use datafusion::parquet::arrow::ArrowWriter;
    let file = File::create(path).expect("create");
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).expect("writer");
    w.write(batch).expect("write");
    w.close().expect("close");
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int32Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn def() -> TableDef {
        toml::from_str(
            r#"name = "hosts"
columns = [
  { name = "id", type = "int64" },
  { name = "name", type = "string", nullable = true },
]"#,
        )
        .expect("def")
    }

    #[test]
    fn parquet_columns_convert_by_name_and_floats_never_become_integers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("hosts.parquet");
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("id", DataType::Int32, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("a"), None])),
                Arc::new(Int32Array::from(vec![1, 2])),
            ],
        )
        .expect("batch");
        write_parquet(&p, &batch);
        let got = read_data_file(&def(), &p, DataFormat::Parquet).expect("reads");
        assert_eq!(got.num_rows(), 2);
        assert_eq!(got.schema().field(0).name(), "id");
        assert_eq!(got.column(1).null_count(), 1, "NULL kept");

        let schema = Arc::new(Schema::new(vec![Field::new(
            "id",
            DataType::Float64,
            false,
        )]));
        let floats = RecordBatch::try_new(schema, vec![Arc::new(Float64Array::from(vec![1.5]))])
            .expect("batch");
        write_parquet(&p, &floats);
        let e = read_data_file(&def(), &p, DataFormat::Parquet).expect_err("refused");
        assert!(e.contains("'id' is Float64") && e.contains("int64"), "{e}");

        std::fs::write(&p, b"not parquet").expect("write");
        let e = read_data_file(&def(), &p, DataFormat::Parquet).expect_err("refused");
        assert!(e.contains("not a readable Parquet file"), "{e}");
    }

    #[test]
    fn formats_come_from_the_extension_or_the_declaration() {
        assert_eq!(
            DataFormat::of(Path::new("a.tsv"), None),
            Ok(DataFormat::Tsv)
        );
        assert_eq!(
            DataFormat::of(Path::new("a.txt"), Some("jsonl")),
            Ok(DataFormat::Jsonl)
        );
        assert!(DataFormat::of(Path::new("a.txt"), None)
            .expect_err("unknown")
            .contains("extension"));
    }
}

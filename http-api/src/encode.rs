//! Query results as JSON (columns + rows of arrays), CSV or newline-delimited JSON, encoded
//! a batch at a time so an answer streams out instead of being built as one value.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::csv::WriterBuilder;
use datafusion::arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type,
    UInt32Type, UInt64Type, UInt8Type,
};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::{Map, Number, Value};

/// The type name shown to clients: the table model's names where they apply.
pub fn type_name(dt: &DataType) -> String {
    query_actors::sql::describe::type_label(dt)
}

/// Column `col` of `batch` as JSON values, one per row.
fn column_values(array: &dyn Array) -> Vec<Value> {
    macro_rules! ints {
        ($t:ty) => {
            array
                .as_primitive::<$t>()
                .iter()
                .map(|v| v.map(|v| Value::from(v)).unwrap_or(Value::Null))
                .collect()
        };
    }
    match array.data_type() {
        DataType::Int8 => ints!(Int8Type),
        DataType::Int16 => ints!(Int16Type),
        DataType::Int32 => ints!(Int32Type),
        DataType::Int64 => ints!(Int64Type),
        DataType::UInt8 => ints!(UInt8Type),
        DataType::UInt16 => ints!(UInt16Type),
        DataType::UInt32 => ints!(UInt32Type),
        DataType::UInt64 => ints!(UInt64Type),
        DataType::Float32 => array
            .as_primitive::<Float32Type>()
            .iter()
            .map(|v| {
                v.and_then(|v| Number::from_f64(v as f64))
                    .map(Value::Number)
                    .unwrap_or(Value::Null)
            })
            .collect(),
        DataType::Float64 => array
            .as_primitive::<Float64Type>()
            .iter()
            .map(|v| {
                v.and_then(Number::from_f64)
                    .map(Value::Number)
                    .unwrap_or(Value::Null)
            })
            .collect(),
        DataType::Boolean => array
            .as_boolean()
            .iter()
            .map(|v| v.map(Value::Bool).unwrap_or(Value::Null))
            .collect(),
        DataType::Utf8 => array
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(|s| Value::String(s.into())).unwrap_or(Value::Null))
            .collect(),
        DataType::LargeUtf8 => array
            .as_string::<i64>()
            .iter()
            .map(|v| v.map(|s| Value::String(s.into())).unwrap_or(Value::Null))
            .collect(),
        DataType::Utf8View => array
            .as_string_view()
            .iter()
            .map(|v| v.map(|s| Value::String(s.into())).unwrap_or(Value::Null))
            .collect(),
        _ => {
            // Timestamps (RFC 3339), dates, lists, ...: Arrow's own display.
            let opts = FormatOptions::default();
            match ArrayFormatter::try_new(array, &opts) {
                Ok(f) => (0..array.len())
                    .map(|i| {
                        if array.is_null(i) {
                            Value::Null
                        } else {
                            Value::String(f.value(i).to_string())
                        }
                    })
                    .collect(),
                Err(_) => vec![Value::Null; array.len()],
            }
        }
    }
}

/// The rows of a batch, each as values in column order.
fn batch_rows(b: &RecordBatch) -> impl Iterator<Item = Vec<Value>> {
    let cols: Vec<Vec<Value>> = b
        .columns()
        .iter()
        .map(|c| column_values(c.as_ref()))
        .collect();
    (0..b.num_rows()).map(move |r| cols.iter().map(|c| c[r].clone()).collect())
}

/// A batch's rows as JSON arrays, each preceded by a comma unless it is the answer's very
/// first row (`first`).
pub fn json_rows(b: &RecordBatch, mut first: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.num_rows() * 64);
    for row in batch_rows(b) {
        if !first {
            out.push(b',');
        }
        first = false;
        // Writing a Value to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &Value::Array(row));
    }
    out
}

/// One JSON object per line, keyed by column name.
pub fn ndjson(b: &RecordBatch) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.num_rows() * 96);
    let schema = b.schema();
    for row in batch_rows(b) {
        let obj: Map<String, Value> = schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .zip(row)
            .collect();
        let _ = serde_json::to_writer(&mut out, &Value::Object(obj));
        out.push(b'\n');
    }
    out
}

/// A batch as CSV lines, with the header line first when `header` (an empty batch with
/// the header gives the header alone).
pub fn csv(b: &RecordBatch, header: bool) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    {
        let mut w = WriterBuilder::new().with_header(header).build(&mut buf);
        w.write(b).map_err(|e| e.to_string())?;
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    #[test]
    fn encodes_types_and_nulls() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Float64, true),
            Field::new("c", DataType::Utf8, true),
        ]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None])),
                Arc::new(Float64Array::from(vec![Some(0.5), Some(f64::NAN)])),
                Arc::new(StringArray::from(vec![Some("x,y"), None])),
            ],
        )
        .expect("batch");
        let rows = format!(
            "[{}]",
            String::from_utf8(json_rows(&b, true)).expect("utf8")
        );
        let rows: serde_json::Value = serde_json::from_str(&rows).expect("JSON");
        assert_eq!(rows[0], serde_json::json!([1, 0.5, "x,y"]));
        assert_eq!(rows[1], serde_json::json!([null, null, null]));
        assert!(json_rows(&b, false).starts_with(b",["));
        let nd = String::from_utf8(ndjson(&b)).expect("utf8");
        assert_eq!(nd.lines().next(), Some(r#"{"a":1,"b":0.5,"c":"x,y"}"#));
        let csv = String::from_utf8(csv(&b, true).expect("csv")).expect("utf8");
        assert!(csv.starts_with("a,b,c\n1,0.5,\"x,y\"\n"), "{csv}");
        let empty = RecordBatch::new_empty(schema);
        assert_eq!(csv_header_only(&empty), "a,b,c\n");
    }

    fn csv_header_only(b: &RecordBatch) -> String {
        String::from_utf8(csv(b, true).expect("csv")).expect("utf8")
    }
}

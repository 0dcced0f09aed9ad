//! Query results as JSON (columns + rows of arrays), CSV or newline-delimited JSON.

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

/// Rows as arrays of values, in column order.
pub fn json_rows(batches: &[RecordBatch]) -> Vec<Value> {
    batches
        .iter()
        .flat_map(batch_rows)
        .map(Value::Array)
        .collect()
}

/// One JSON object per line, keyed by column name.
pub fn ndjson(batches: &[RecordBatch]) -> String {
    let mut out = String::new();
    for b in batches {
        let schema = b.schema();
        for row in batch_rows(b) {
            let obj: Map<String, Value> = schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .zip(row)
                .collect();
            out.push_str(&Value::Object(obj).to_string());
            out.push('\n');
        }
    }
    out
}

/// CSV with a header line (written even for an empty result).
pub fn csv(
    schema: &datafusion::arrow::datatypes::Schema,
    batches: &[RecordBatch],
) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    {
        let mut w = WriterBuilder::new().with_header(true).build(&mut buf);
        if batches.is_empty() {
            let empty = RecordBatch::new_empty(std::sync::Arc::new(schema.clone()));
            w.write(&empty).map_err(|e| e.to_string())?;
        }
        for b in batches {
            w.write(b).map_err(|e| e.to_string())?;
        }
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
        let rows = json_rows(std::slice::from_ref(&b));
        assert_eq!(rows[0], serde_json::json!([1, 0.5, "x,y"]));
        assert_eq!(rows[1], serde_json::json!([null, null, null]));
        assert_eq!(
            ndjson(std::slice::from_ref(&b)).lines().next(),
            Some(r#"{"a":1,"b":0.5,"c":"x,y"}"#)
        );
        let csv = String::from_utf8(csv(&schema, &[b]).expect("csv")).expect("utf8");
        assert!(csv.starts_with("a,b,c\n1,0.5,\"x,y\"\n"), "{csv}");
    }
}

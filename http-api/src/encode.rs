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
use serde_json::Number;

/// The type name shown to clients: the table model's names where they apply.
pub fn type_name(dt: &DataType) -> String {
    query_actors::sql::describe::type_label(dt)
}

/// Writes one cell of a column as JSON (`null` for NULL).
type CellWriter<'a> = Box<dyn Fn(&mut Vec<u8>, usize) + 'a>;

/// A writer of `array`'s cells straight into the answer buffer: no `serde_json::Value`
/// per cell (the answer of a small query used to cost more to encode than to compute).
/// Numbers are written as serde_json writes them; a float that is not finite is `null`.
fn cell_writer(array: &dyn Array) -> CellWriter<'_> {
    // Writing to a Vec cannot fail.
    fn put<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
        let _ = serde_json::to_writer(out, v);
    }
    macro_rules! primitive {
        ($t:ty, $conv:expr) => {{
            let a = array.as_primitive::<$t>();
            Box::new(move |out: &mut Vec<u8>, i: usize| {
                if a.is_null(i) {
                    out.extend_from_slice(b"null");
                } else {
                    put(out, &$conv(a.value(i)));
                }
            })
        }};
    }
    macro_rules! strings {
        ($a:expr) => {{
            let a = $a;
            Box::new(move |out: &mut Vec<u8>, i: usize| {
                if a.is_null(i) {
                    out.extend_from_slice(b"null");
                } else {
                    put(out, a.value(i));
                }
            })
        }};
    }
    match array.data_type() {
        DataType::Int8 => primitive!(Int8Type, |v| v),
        DataType::Int16 => primitive!(Int16Type, |v| v),
        DataType::Int32 => primitive!(Int32Type, |v| v),
        DataType::Int64 => primitive!(Int64Type, |v| v),
        DataType::UInt8 => primitive!(UInt8Type, |v| v),
        DataType::UInt16 => primitive!(UInt16Type, |v| v),
        DataType::UInt32 => primitive!(UInt32Type, |v| v),
        DataType::UInt64 => primitive!(UInt64Type, |v| v),
        DataType::Float32 => primitive!(Float32Type, |v: f32| Number::from_f64(v as f64)),
        DataType::Float64 => primitive!(Float64Type, Number::from_f64),
        DataType::Boolean => {
            let a = array.as_boolean();
            Box::new(move |out: &mut Vec<u8>, i: usize| {
                out.extend_from_slice(match a.is_null(i) {
                    true => b"null",
                    false if a.value(i) => b"true",
                    false => b"false",
                })
            })
        }
        DataType::Utf8 => strings!(array.as_string::<i32>()),
        DataType::LargeUtf8 => strings!(array.as_string::<i64>()),
        DataType::Utf8View => strings!(array.as_string_view()),
        _ => {
            // Timestamps (RFC 3339), dates, lists, ...: Arrow's own display.
            let opts = FormatOptions::default();
            match ArrayFormatter::try_new(array, &opts) {
                Ok(f) => Box::new(move |out: &mut Vec<u8>, i: usize| {
                    if array.is_null(i) {
                        out.extend_from_slice(b"null");
                    } else {
                        put(out, &f.value(i).to_string());
                    }
                }),
                Err(_) => Box::new(|out: &mut Vec<u8>, _| out.extend_from_slice(b"null")),
            }
        }
    }
}

/// A batch's rows as JSON arrays, each preceded by a comma unless it is the answer's very
/// first row (`first`).
pub fn json_rows(b: &RecordBatch, first: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.num_rows() * 16 * b.num_columns().max(1));
    json_rows_into(&mut out, b, first);
    out
}

/// `json_rows` appended to `out`.
pub fn json_rows_into(out: &mut Vec<u8>, b: &RecordBatch, mut first: bool) {
    let cells: Vec<CellWriter<'_>> = b.columns().iter().map(|c| cell_writer(c)).collect();
    for r in 0..b.num_rows() {
        if !first {
            out.push(b',');
        }
        first = false;
        out.push(b'[');
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            cell(out, r);
        }
        out.push(b']');
    }
}

/// One JSON object per line, keyed by column name.
pub fn ndjson(b: &RecordBatch) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.num_rows() * 96);
    let schema = b.schema();
    let keys: Vec<Vec<u8>> = schema
        .fields()
        .iter()
        .map(|f| {
            let mut k = serde_json::to_vec(f.name()).unwrap_or_default();
            k.push(b':');
            k
        })
        .collect();
    let cells: Vec<CellWriter<'_>> = b.columns().iter().map(|c| cell_writer(c)).collect();
    for r in 0..b.num_rows() {
        out.push(b'{');
        for (i, (key, cell)) in keys.iter().zip(&cells).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(key);
            cell(&mut out, r);
        }
        out.extend_from_slice(b"}\n");
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

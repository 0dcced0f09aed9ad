//! Arrow columns as Postgres values: the type (OID) of each column, and each value in
//! the text or binary format the client asked for.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Float16Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
    Int8Type, Schema, TimeUnit, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use pgwire::api::portal::Format;
use pgwire::api::results::{FieldFormat, FieldInfo};
use pgwire::api::Type;
use pgwire::messages::data::DataRow;

use super::error::PgError;

/// Microseconds from the Unix epoch to Postgres's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days from the Unix epoch to Postgres's.
const PG_EPOCH_DAYS: i32 = 10_957;

/// The Postgres type a column of `dt` is sent as. What has no Postgres counterpart of its
/// own (lists, structs, intervals) is sent as text, as Arrow displays it.
pub fn pg_type(dt: &DataType) -> Type {
    match dt {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 | DataType::UInt32 => Type::INT8,
        DataType::UInt64 | DataType::Decimal128(..) | DataType::Decimal256(..) => Type::NUMERIC,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Type::TEXT,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Date32 | DataType::Date64 => Type::DATE,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => Type::BYTEA,
        DataType::Null => Type::TEXT,
        _ => Type::TEXT,
    }
}

/// Whether values of Arrow type `dt` are sent in the binary format when asked (the others
/// go as text, and the row description says so).
fn binary_ok(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Boolean
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::Float16
            | DataType::Float32
            | DataType::Float64
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Timestamp(..)
            | DataType::Date32
            | DataType::Binary
    )
}

/// The format of result column `i`: what the client asked for in Bind, when possible. A
/// Bind with fewer codes than columns is the client's error; such columns go as text.
fn format_of(format: &Format, i: usize, dt: &DataType) -> FieldFormat {
    let asked = match format {
        Format::UnifiedText => FieldFormat::Text,
        Format::UnifiedBinary => FieldFormat::Binary,
        Format::Individual(codes) => FieldFormat::from(codes.get(i).copied().unwrap_or(0)),
    };
    if asked == FieldFormat::Binary && binary_ok(dt) {
        FieldFormat::Binary
    } else {
        FieldFormat::Text
    }
}

/// The row description of `schema`.
pub fn fields(schema: &Schema, format: &Format) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let t = pg_type(f.data_type());
            let fmt = format_of(format, i, f.data_type());
            FieldInfo::new(f.name().clone(), None, None, t, fmt)
        })
        .collect()
}

/// The rows of `batch` as DataRow messages, each column encoded as `fields` says.
pub fn rows(batch: &RecordBatch, fields: &[FieldInfo]) -> Result<Vec<DataRow>, PgError> {
    let n = batch.num_rows();
    let mut cells: Vec<Vec<Option<Vec<u8>>>> = Vec::with_capacity(batch.num_columns());
    for (col, field) in batch.columns().iter().zip(fields) {
        cells.push(column(col.as_ref(), field)?);
    }
    let mut out = Vec::with_capacity(n);
    for r in 0..n {
        let mut buf = BytesMut::new();
        for c in &cells {
            match c.get(r).and_then(|v| v.as_ref()) {
                None => buf.put_i32(-1),
                Some(v) => {
                    let len = i32::try_from(v.len())
                        .map_err(|_| PgError::Protocol("a value is larger than 2 GiB".into()))?;
                    buf.put_i32(len);
                    buf.put_slice(v);
                }
            }
        }
        out.push(DataRow::new(buf, cells.len() as i16));
    }
    Ok(out)
}

/// Every value of one column, encoded (None: NULL).
fn column(array: &dyn Array, field: &FieldInfo) -> Result<Vec<Option<Vec<u8>>>, PgError> {
    let binary = field.format() == FieldFormat::Binary;
    let t = field.datatype();
    macro_rules! prim {
        ($at:ty, $conv:expr) => {
            array
                .as_primitive::<$at>()
                .iter()
                .map(|v| v.map($conv))
                .collect()
        };
    }
    // Integers: binary in the width of their Postgres type.
    macro_rules! int {
        ($at:ty) => {{
            let width = if *t == Type::INT2 {
                2
            } else if *t == Type::INT4 {
                4
            } else {
                8
            };
            prim!($at, |v| {
                let v = v as i64;
                if binary {
                    v.to_be_bytes()[8 - width..].to_vec()
                } else {
                    v.to_string().into_bytes()
                }
            })
        }};
    }
    let values = match array.data_type() {
        DataType::Int8 => int!(Int8Type),
        DataType::Int16 => int!(Int16Type),
        DataType::Int32 => int!(Int32Type),
        DataType::Int64 => int!(Int64Type),
        DataType::UInt8 => int!(UInt8Type),
        DataType::UInt16 => int!(UInt16Type),
        DataType::UInt32 => int!(UInt32Type),
        DataType::UInt64 => prim!(UInt64Type, |v| v.to_string().into_bytes()),
        DataType::Float16 => prim!(Float16Type, |v| float4(v.to_f32(), binary)),
        DataType::Float32 => prim!(Float32Type, |v| float4(v, binary)),
        DataType::Float64 => prim!(Float64Type, |v| {
            if binary {
                v.to_be_bytes().to_vec()
            } else {
                float_text(v)
            }
        }),
        DataType::Boolean => array
            .as_boolean()
            .iter()
            .map(|v| {
                v.map(|b| match (binary, b) {
                    (true, b) => vec![u8::from(b)],
                    (false, true) => b"t".to_vec(),
                    (false, false) => b"f".to_vec(),
                })
            })
            .collect(),
        DataType::Utf8 => strings(array.as_string::<i32>().iter()),
        DataType::LargeUtf8 => strings(array.as_string::<i64>().iter()),
        DataType::Utf8View => strings(array.as_string_view().iter()),
        DataType::Timestamp(unit, tz) => {
            let micros = |v: i64| match unit {
                TimeUnit::Second => v.saturating_mul(1_000_000),
                TimeUnit::Millisecond => v.saturating_mul(1_000),
                TimeUnit::Microsecond => v,
                TimeUnit::Nanosecond => v.div_euclid(1_000),
            };
            let with_tz = tz.is_some();
            let raw = timestamp_values(array);
            raw.into_iter()
                .map(|v| {
                    v.map(|v| {
                        let us = micros(v);
                        if binary {
                            us.saturating_sub(PG_EPOCH_MICROS).to_be_bytes().to_vec()
                        } else {
                            timestamp_text(us, with_tz)
                        }
                    })
                })
                .collect()
        }
        DataType::Date32 if binary => {
            prim!(Date32Type, |d| (d - PG_EPOCH_DAYS).to_be_bytes().to_vec())
        }
        DataType::Binary => array
            .as_binary::<i32>()
            .iter()
            .map(|v| {
                v.map(|b| {
                    if binary {
                        b.to_vec()
                    } else {
                        // bytea's text form: \x and hex digits.
                        let mut s = String::with_capacity(2 + 2 * b.len());
                        s.push_str("\\x");
                        for byte in b {
                            s.push_str(&format!("{byte:02x}"));
                        }
                        s.into_bytes()
                    }
                })
            })
            .collect(),
        _ => displayed(array)?,
    };
    Ok(values)
}

fn strings<'a>(it: impl Iterator<Item = Option<&'a str>>) -> Vec<Option<Vec<u8>>> {
    // Text and binary formats of text are the same bytes.
    it.map(|v| v.map(|s| s.as_bytes().to_vec())).collect()
}

fn float4(v: f32, binary: bool) -> Vec<u8> {
    if binary {
        v.to_be_bytes().to_vec()
    } else {
        float_text(f64::from(v))
    }
}

/// Postgres's spelling of a float: shortest round-trip digits, `NaN`, `Infinity`.
fn float_text(v: f64) -> Vec<u8> {
    if v.is_nan() {
        b"NaN".to_vec()
    } else if v.is_infinite() {
        if v > 0.0 {
            b"Infinity".to_vec()
        } else {
            b"-Infinity".to_vec()
        }
    } else {
        v.to_string().into_bytes()
    }
}

/// `2026-11-28 21:06:20.123456` (and `+00` with a time zone: answers are in UTC).
fn timestamp_text(micros: i64, with_tz: bool) -> Vec<u8> {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let Some(dt) = datafusion::arrow::temporal_conversions::timestamp_s_to_datetime(secs) else {
        return micros.to_string().into_bytes();
    };
    let mut s = dt.format("%Y-%m-%d %H:%M:%S").to_string();
    if frac != 0 {
        let f = format!("{frac:06}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    if with_tz {
        s.push_str("+00");
    }
    s.into_bytes()
}

fn timestamp_values(array: &dyn Array) -> Vec<Option<i64>> {
    use datafusion::arrow::datatypes::{
        TimestampMicrosecondType as Us, TimestampMillisecondType as Ms,
        TimestampNanosecondType as Ns, TimestampSecondType as S,
    };
    match array.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => array.as_primitive::<S>().iter().collect(),
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            array.as_primitive::<Ms>().iter().collect()
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            array.as_primitive::<Us>().iter().collect()
        }
        _ => array.as_primitive::<Ns>().iter().collect(),
    }
}

/// Any other column, as Arrow displays its values.
fn displayed(array: &dyn Array) -> Result<Vec<Option<Vec<u8>>>, PgError> {
    let options = FormatOptions::default();
    let f = ArrayFormatter::try_new(array, &options)
        .map_err(|e| PgError::Protocol(format!("cannot encode a column: {e}")))?;
    Ok((0..array.len())
        .map(|i| {
            if array.is_null(i) {
                None
            } else {
                Some(f.value(i).to_string().into_bytes())
            }
        })
        .collect())
}

/// A text-only answer of our own making (session commands, catalog look-ups).
pub fn text_batch(columns: &[&str], rows: Vec<Vec<Option<String>>>) -> RecordBatch {
    use datafusion::arrow::array::StringArray;
    use datafusion::arrow::datatypes::Field;
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(*c, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let arrays = (0..columns.len())
        .map(|i| {
            Arc::new(StringArray::from(
                rows.iter()
                    .map(|r| r.get(i).cloned().flatten())
                    .collect::<Vec<_>>(),
            )) as Arc<dyn Array>
        })
        .collect();
    // Same number of columns and rows by construction.
    RecordBatch::try_new(schema.clone(), arrays).unwrap_or_else(|_| RecordBatch::new_empty(schema))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{
        BooleanArray, Float64Array, Int64Array, TimestampMicrosecondArray,
    };
    use datafusion::arrow::datatypes::Field;

    #[test]
    fn types_and_text_values_are_postgres_ones() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("i", DataType::Int64, true),
            Field::new("f", DataType::Float64, true),
            Field::new("b", DataType::Boolean, true),
            Field::new("t", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![Some(-5), None])),
                Arc::new(Float64Array::from(vec![Some(1.5), Some(f64::NAN)])),
                Arc::new(BooleanArray::from(vec![Some(true), Some(false)])),
                Arc::new(TimestampMicrosecondArray::from(vec![
                    Some(1_000_000_000_500_000),
                    None,
                ])),
            ],
        )
        .expect("batch");
        let f = fields(&schema, &Format::UnifiedText);
        let types: Vec<_> = f.iter().map(|f| f.datatype().clone()).collect();
        assert_eq!(
            types,
            [Type::INT8, Type::FLOAT8, Type::BOOL, Type::TIMESTAMP]
        );
        let rows = rows(&batch, &f).expect("rows");
        let text = String::from_utf8_lossy(&rows[0].data).to_string();
        assert!(
            text.contains("-5") && text.contains("1.5") && text.contains('t'),
            "{text}"
        );
        assert!(text.contains("2001-09-09 01:46:40.5"), "{text}");
        let second = &rows[1].data;
        assert_eq!(&second[..4], &(-1i32).to_be_bytes(), "NULL is length -1");
        // Binary: int8 in 8 bytes, big-endian.
        let f = fields(&schema, &Format::UnifiedBinary);
        let rows = super::rows(&batch, &f).expect("rows");
        assert_eq!(
            &rows[0].data[..12],
            &[0, 0, 0, 8, 255, 255, 255, 255, 255, 255, 255, 251]
        );
    }

    #[test]
    fn bytea_text_and_types_without_a_binary_encoder() {
        use datafusion::arrow::array::{BinaryArray, LargeBinaryArray};
        let schema = Arc::new(Schema::new(vec![
            Field::new("b", DataType::Binary, true),
            Field::new("l", DataType::LargeBinary, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(BinaryArray::from(vec![Some(&[10u8, 255][..])])),
                Arc::new(LargeBinaryArray::from(vec![Some(&[1u8][..])])),
            ],
        )
        .expect("batch");
        let f = fields(&schema, &Format::UnifiedText);
        let row = &rows(&batch, &f).expect("rows")[0];
        assert!(String::from_utf8_lossy(&row.data).contains("\\x0aff"));
        // Asked for binary: what has no binary encoder here says it is text.
        let f = fields(&schema, &Format::UnifiedBinary);
        assert_eq!(f[0].format(), FieldFormat::Binary);
        assert_eq!(f[1].format(), FieldFormat::Text);
    }
}

//! Functions whose output can be far larger than their input (`repeat('x', 1000000000)`,
//! `lpad('x', 2000000000)`), wrapped so that a call is refused before it allocates when
//! its output for the batch would exceed the node's cap on one answer's bytes. Such a call
//! is one uninterruptible computation: neither the memory pool (which does not see scalar
//! functions) nor the query deadline (which cancels between batches) could stop it.
//!
//! The estimate is an upper bound from the arguments' largest values: e.g. `repeat(s, n)`
//! builds at most `rows * max_len(s) * max(n)` bytes.

use std::hash::{Hash, Hasher};

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::{cast, max};
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{exec_err, Result as DfResult, ScalarValue};
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature,
};

/// How a function's output size is bounded from its arguments (bytes per row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Bound {
    /// repeat(s, n), array_repeat(x, n): len(s) * n.
    Repeat,
    /// lpad/rpad(s, n [, fill]): n characters of fill.
    Pad,
    /// replace(s, from, to), regexp_replace(s, p, to [, flags]): `to` at every position.
    Replace,
    /// concat(a, b, ...): the sum of the arguments.
    Concat,
    /// concat_ws(sep, a, b, ...): the arguments, and the separator between each two.
    ConcatWs,
    /// range/generate_series(start, stop [, step]) on integers: 8 bytes a value.
    Series,
}

const GUARDED: &[(&str, Bound)] = &[
    ("repeat", Bound::Repeat),
    ("array_repeat", Bound::Repeat),
    ("lpad", Bound::Pad),
    ("rpad", Bound::Pad),
    ("replace", Bound::Replace),
    ("regexp_replace", Bound::Replace),
    ("concat", Bound::Concat),
    ("concat_ws", Bound::ConcatWs),
    ("range", Bound::Series),
    ("generate_series", Bound::Series),
];

/// Replaces the context's amplifying functions by guarded ones (those of them the build
/// has: array functions are only there when DataFusion's nested functions are).
pub fn guard_functions(ctx: &SessionContext, cap: usize) {
    let state = ctx.state();
    for (name, bound) in GUARDED {
        if let Some(inner) = state.scalar_functions().get(*name) {
            ctx.register_udf(ScalarUDF::new_from_impl(Guarded {
                inner: inner.as_ref().clone(),
                bound: *bound,
                cap,
            }));
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Guarded {
    inner: ScalarUDF,
    bound: Bound,
    cap: usize,
}

impl Hash for Guarded {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
        self.bound.hash(state);
    }
}

/// The largest byte length of a string (or any value, by its Arrow size) argument.
fn max_len(v: &ColumnarValue) -> u128 {
    match v {
        ColumnarValue::Scalar(s) => match s {
            ScalarValue::Utf8(Some(x))
            | ScalarValue::LargeUtf8(Some(x))
            | ScalarValue::Utf8View(Some(x)) => x.len() as u128,
            ScalarValue::Binary(Some(x)) | ScalarValue::LargeBinary(Some(x)) => x.len() as u128,
            other => other.size() as u128,
        },
        ColumnarValue::Array(a) => array_max_len(a),
    }
}

fn array_max_len(a: &ArrayRef) -> u128 {
    let lens: Box<dyn Iterator<Item = usize>> = match a.data_type() {
        DataType::Utf8 => Box::new(a.as_string::<i32>().iter().map(|s| s.map_or(0, str::len))),
        DataType::LargeUtf8 => Box::new(a.as_string::<i64>().iter().map(|s| s.map_or(0, str::len))),
        DataType::Utf8View => Box::new(a.as_string_view().iter().map(|s| s.map_or(0, str::len))),
        _ => {
            let rows = a.len().max(1);
            return (a.get_array_memory_size() / rows).max(8) as u128;
        }
    };
    lens.max().unwrap_or(0) as u128
}

/// The largest absolute integer value of an argument (0 if it is not a number).
fn max_abs(v: &ColumnarValue) -> u128 {
    let array = match v {
        ColumnarValue::Scalar(s) => match s.to_array() {
            Ok(a) => a,
            Err(_) => return 0,
        },
        ColumnarValue::Array(a) => a.clone(),
    };
    if !array.data_type().is_integer() {
        return 0;
    }
    let Ok(ints) = cast(&array, &DataType::Int64) else {
        return 0;
    };
    let ints = ints.as_primitive::<Int64Type>();
    let hi = max(ints).unwrap_or(0);
    let lo = datafusion::arrow::compute::min(ints).unwrap_or(0);
    (hi.unsigned_abs() as u128).max(lo.unsigned_abs() as u128)
}

impl Guarded {
    /// Upper bound of the bytes this call builds for the whole batch.
    fn estimate(&self, args: &[ColumnarValue], rows: usize) -> u128 {
        let arg = |i: usize| args.get(i);
        let per_row = match self.bound {
            Bound::Repeat => match (arg(0), arg(1)) {
                (Some(s), Some(n)) => max_len(s).max(1) * max_abs(n),
                _ => 0,
            },
            Bound::Pad => match arg(1) {
                Some(n) => max_abs(n) * arg(2).map_or(1, |f| max_len(f).max(1)),
                None => 0,
            },
            Bound::Replace => match (arg(0), arg(2)) {
                (Some(s), Some(to)) => (max_len(s) + 1) * (max_len(to) + 1),
                _ => 0,
            },
            Bound::Concat => args.iter().map(max_len).sum::<u128>(),
            Bound::ConcatWs => match args.split_first() {
                Some((sep, rest)) => {
                    rest.iter().map(max_len).sum::<u128>() + max_len(sep) * rest.len() as u128
                }
                None => 0,
            },
            Bound::Series => {
                let span: u128 = args.iter().take(2).map(max_abs).sum();
                (span + 1) * 8
            }
        };
        per_row.saturating_mul(rows.max(1) as u128)
    }
}

impl ScalarUDFImpl for Guarded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        // Scalar arguments only: one row, whatever the batch size.
        let rows = if args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)))
        {
            1
        } else {
            args.number_rows
        };
        let estimate = self.estimate(&args.args, rows);
        if estimate > self.cap as u128 {
            return exec_err!(
                "{}() would build up to {} bytes, more than the {} bytes one answer may hold \
                 ([http] max_result_bytes)",
                self.name(),
                estimate,
                self.cap
            );
        }
        self.inner.invoke_with_args(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn run(ctx: &SessionContext, sql: &str) -> DfResult<usize> {
        let batches = ctx.sql(sql).await?.collect().await?;
        Ok(batches.iter().map(|b| b.get_array_memory_size()).sum())
    }

    #[tokio::test]
    async fn huge_outputs_are_refused_before_they_are_built() {
        let ctx = SessionContext::new();
        guard_functions(&ctx, 1 << 20);
        for sql in [
            "SELECT repeat('x', 1000000000)",
            "SELECT lpad('x', 2000000000, 'y')",
            "SELECT rpad('x', 2000000000)",
            "SELECT replace(repeat('a', 1000), 'a', repeat('b', 10000))",
            "SELECT length(repeat(s, 100000)) FROM (VALUES ('abcdefghij'), ('x')) t(s)",
            format!(
                "SELECT concat_ws(repeat('x', 100000){})",
                ", ''".repeat(100)
            )
            .as_str(),
        ] {
            let e = run(&ctx, sql).await.expect_err(sql).to_string();
            assert!(e.contains("max_result_bytes"), "{sql}: {e}");
        }
        // Ordinary uses are untouched.
        assert!(run(
            &ctx,
            "SELECT repeat('ab', 1000), lpad('7', 3, '0'), concat('a', 'b')"
        )
        .await
        .is_ok());
    }
}

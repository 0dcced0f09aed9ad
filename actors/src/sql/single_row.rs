//! `single_row(matches, value)`: the value of a scalar subquery decorrelated by
//! `subquery`, which must have found at most one row per outer row. More is the error
//! Postgres gives; the check runs with the query, as the rows are only known then.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::max;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// The error's text, as Postgres words it.
pub const TOO_MANY_ROWS: &str = "more than one row returned by a subquery used as an expression";

#[derive(Debug, PartialEq, Eq, Hash)]
struct SingleRow {
    signature: Signature,
}

static SINGLE_ROW: LazyLock<Arc<ScalarUDF>> = LazyLock::new(|| {
    Arc::new(ScalarUDF::new_from_impl(SingleRow {
        signature: Signature::any(2, Volatility::Immutable),
    }))
});

/// `value` where `matches` (a count) is at most 1; an error where it is more.
pub fn single_row(matches: Expr, value: Expr) -> Expr {
    Expr::ScalarFunction(ScalarFunction::new_udf(
        SINGLE_ROW.clone(),
        vec![matches, value],
    ))
}

impl ScalarUDFImpl for SingleRow {
    fn name(&self) -> &str {
        "single_row"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [_, value] => Ok(value.clone()),
            _ => exec_err!("single_row takes two arguments"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [matches, value] = args.args.as_slice() else {
            return exec_err!("single_row takes two arguments");
        };
        let most = match matches {
            ColumnarValue::Scalar(ScalarValue::Int64(n)) => n.unwrap_or(0),
            ColumnarValue::Array(a) if a.data_type() == &DataType::Int64 => {
                max(a.as_primitive::<Int64Type>()).unwrap_or(0)
            }
            other => return exec_err!("single_row: a count expected, got {}", other.data_type()),
        };
        if most > 1 {
            return exec_err!("{TOO_MANY_ROWS}");
        }
        Ok(value.clone())
    }
}

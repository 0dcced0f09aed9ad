//! Parameters of the extended protocol (`$1`, `$2`, ...), written into the statement as
//! SQL literals before it goes down the node's one query path: the front door, the
//! permission check and the quarantine see the statement that runs.

use pgwire::api::portal::Format;
use pgwire::api::Type;

use super::error::PgError;

/// The highest `$n` in `sql` outside string literals, quoted names and comments.
pub fn count(sql: &str) -> usize {
    let mut max = 0;
    scan(sql, |n, _, _| {
        max = max.max(n);
    });
    max
}

/// `sql` with each `$n` replaced by `values[n-1]`.
pub fn substitute(sql: &str, values: &[String]) -> Result<String, PgError> {
    let mut spans = Vec::new();
    scan(sql, |n, start, end| spans.push((n, start, end)));
    let mut out = String::with_capacity(sql.len());
    let mut at = 0;
    for (n, start, end) in spans {
        let v = values.get(n.wrapping_sub(1)).ok_or_else(|| {
            PgError::Protocol(format!(
                "the statement uses ${n} but {} parameters were bound",
                values.len()
            ))
        })?;
        out.push_str(&sql[at..start]);
        out.push_str(v);
        at = end;
    }
    out.push_str(&sql[at..]);
    Ok(out)
}

/// Calls `found(n, start, end)` for each placeholder `$n` at bytes `start..end`.
fn scan(sql: &str, mut found: impl FnMut(usize, usize, usize)) {
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => {
                let q = b[i];
                i += 1;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'$' if i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_') => {
                let start = i;
                i += 1;
                let digits = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                if i > digits && i - digits <= 5 {
                    if let Ok(n) = sql[digits..i].parse::<usize>() {
                        if n > 0 {
                            found(n, start, i);
                        }
                    }
                }
            }
            _ => i += 1,
        }
    }
}

/// One bound value as a SQL literal. `declared`: the type the client gave in Parse, if
/// any; `binary`: the value is in the binary format.
pub fn literal(
    value: Option<&[u8]>,
    declared: Option<&Type>,
    binary: bool,
) -> Result<String, PgError> {
    let Some(v) = value else {
        return Ok("NULL".into());
    };
    let t = declared.cloned().unwrap_or(Type::UNKNOWN);
    let bad = |what: &str| {
        PgError::BadParameter(format!(
            "a parameter of type {} is not a valid {what}",
            t.name()
        ))
    };
    if binary {
        let int = |n: usize| -> Result<i64, PgError> {
            let a: [u8; 8] = match n {
                2 => {
                    let x: [u8; 2] = v.try_into().map_err(|_| bad("int2"))?;
                    i64::from(i16::from_be_bytes(x)).to_be_bytes()
                }
                4 => {
                    let x: [u8; 4] = v.try_into().map_err(|_| bad("int4"))?;
                    i64::from(i32::from_be_bytes(x)).to_be_bytes()
                }
                _ => v.try_into().map_err(|_| bad("int8"))?,
            };
            Ok(i64::from_be_bytes(a))
        };
        return match t {
            Type::INT2 => Ok(number(&int(2)?.to_string())),
            Type::INT4 | Type::OID => Ok(number(&int(4)?.to_string())),
            Type::INT8 => Ok(number(&int(8)?.to_string())),
            Type::FLOAT4 => {
                let x: [u8; 4] = v.try_into().map_err(|_| bad("float4"))?;
                Ok(float(f64::from(f32::from_be_bytes(x))))
            }
            Type::FLOAT8 => {
                let x: [u8; 8] = v.try_into().map_err(|_| bad("float8"))?;
                Ok(float(f64::from_be_bytes(x)))
            }
            Type::BOOL => match v {
                [0] => Ok("FALSE".into()),
                [1] => Ok("TRUE".into()),
                _ => Err(bad("bool")),
            },
            Type::TIMESTAMP | Type::TIMESTAMPTZ => {
                let x: [u8; 8] = v.try_into().map_err(|_| bad("timestamp"))?;
                let us = i64::from_be_bytes(x).saturating_add(946_684_800_000_000);
                Ok(format!("to_timestamp_micros({us})"))
            }
            Type::TEXT | Type::VARCHAR | Type::UNKNOWN | Type::NAME | Type::BPCHAR => {
                let s = std::str::from_utf8(v).map_err(|_| bad("UTF-8 text"))?;
                Ok(quoted(s))
            }
            _ => Err(PgError::BadParameter(format!(
                "parameters of type {} are not accepted in the binary format; send them as text",
                t.name()
            ))),
        };
    }
    let s = std::str::from_utf8(v).map_err(|_| bad("UTF-8 text"))?;
    match t {
        Type::INT2 | Type::INT4 | Type::INT8 | Type::OID => s
            .trim()
            .parse::<i64>()
            .map(|n| number(&n.to_string()))
            .map_err(|_| bad("integer")),
        Type::FLOAT4 | Type::FLOAT8 | Type::NUMERIC => s
            .trim()
            .parse::<f64>()
            .map(float)
            .map_err(|_| bad("number")),
        Type::BOOL => match s.trim().to_ascii_lowercase().as_str() {
            "t" | "true" | "on" | "yes" | "1" => Ok("TRUE".into()),
            "f" | "false" | "off" | "no" | "0" => Ok("FALSE".into()),
            _ => Err(bad("bool")),
        },
        Type::TIMESTAMP | Type::TIMESTAMPTZ => Ok(format!("CAST({} AS TIMESTAMP)", quoted(s))),
        // Text, and values of unknown type: a string literal, which the planner coerces
        // where the statement compares it with a number or a time.
        _ => Ok(quoted(s)),
    }
}

/// Negative numbers in parentheses, so `x-$1` does not become a comment `x--1`.
fn number(s: &str) -> String {
    if s.starts_with('-') {
        format!("({s})")
    } else {
        s.to_string()
    }
}

fn float(v: f64) -> String {
    if v.is_finite() {
        // Debug keeps the decimal point, so the literal stays a float.
        number(&format!("{v:?}"))
    } else {
        let name = if v.is_nan() {
            "NaN"
        } else if v > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        };
        format!("CAST('{name}' AS DOUBLE)")
    }
}

fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Whether parameter `i` is in the binary format.
pub fn is_binary(format: &Format, i: usize) -> bool {
    match format {
        Format::UnifiedText => false,
        Format::UnifiedBinary => true,
        Format::Individual(codes) => codes.get(i).copied() == Some(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_outside_literals_are_replaced() {
        let sql = "SELECT '$1', \"$2\", $1 -- $3\n, $2 /* $4 */ FROM t WHERE a$1 = $10";
        assert_eq!(count(sql), 10);
        let values: Vec<String> = (1..=10).map(|i| format!("v{i}")).collect();
        assert_eq!(
            substitute(sql, &values).expect("bound"),
            "SELECT '$1', \"$2\", v1 -- $3\n, v2 /* $4 */ FROM t WHERE a$1 = v10"
        );
        assert!(substitute("SELECT $2", &["x".into()]).is_err());
    }

    #[test]
    fn values_become_literals_of_their_type() {
        assert_eq!(literal(None, None, false).expect("null"), "NULL");
        assert_eq!(literal(Some(b"o'k"), None, false).expect("text"), "'o''k'");
        assert_eq!(
            literal(Some(&(-7i64).to_be_bytes()), Some(&Type::INT8), true).expect("int8"),
            "(-7)"
        );
        assert_eq!(
            literal(Some(&300i16.to_be_bytes()), Some(&Type::INT2), true).expect("int2"),
            "300"
        );
        assert_eq!(
            literal(Some(&2.5f64.to_be_bytes()), Some(&Type::FLOAT8), true).expect("f8"),
            "2.5"
        );
        assert_eq!(
            literal(Some(b"1"), Some(&Type::INT4), false).expect("int"),
            "1"
        );
        assert!(literal(Some(b"1; DROP"), Some(&Type::INT4), false).is_err());
        assert!(literal(Some(&[1, 2, 3]), Some(&Type::INT8), true).is_err());
    }
}

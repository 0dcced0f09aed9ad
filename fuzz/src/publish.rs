//! Target `publish`: a line from a local publisher, as the edge agent handles it —
//! `query_client::protocol::decode_line`, then, for a publish of a table with a schema, the
//! row limit and validation against `schemas/<table>.toml` (`table::rows::json_rows_to_batch`).
//! A fraction of inputs are text rows (a dropped CSV/TSV file's header and fields) for
//! `table::rows::text_rows_to_batch`.
//!
//! Inputs: valid hello and publish lines for the real schemas (every column type, extremes
//! of each), then mutated; random JSON values; nesting up to 200,000 deep; huge and
//! malformed numbers; invalid UTF-8; random bytes. Oracle: a valid publish (unmutated,
//! values of the column's type) must be accepted with all its rows.
//!
//! An input's first byte says what the rest is (never mutated): [`LINE`], [`VALID_LINE`],
//! or [`TEXT`] followed by a table index.

use std::sync::Arc;

use query_actors::table::rows::{json_rows_to_batch, text_rows_to_batch};
use query_actors::table::{load_schema_dir, ColumnType, TableDef};
use query_client::protocol::{decode_line, FromPublisher};
use rand::rngs::SmallRng;
use rand::Rng;
use serde_json::{json, Map, Value};

use crate::mutate::mutate;
use crate::runner::{Outcome, Target};

/// Any line; any answer is fine as long as there is one.
const LINE: u8 = b'L';
/// A valid publish line: must be accepted whole.
const VALID_LINE: u8 = b'V';
/// Text rows: table index byte, then a header line and field lines, tab-separated.
const TEXT: u8 = b'T';

/// The agent's default rows-per-publish limit (`[edge] max_rows_per_publish`).
const MAX_ROWS_PER_PUBLISH: usize = 1_000_000;

const MACHINE: &str = "10.0.0.1";

const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"\"",
    b"\\",
    b"\\u",
    b"null",
    b"true",
    b"-",
    b"e",
    b".",
    b"{\"publish\":",
    b"{\"hello\":",
    b"\"rows\":",
    b"\"table\":",
    b"\"machine_ip\":",
    b"[[[[[[[[",
    b"{\"a\":{\"a\":",
    b"\n",
    b"\t",
];

pub struct PublishTarget {
    defs: Vec<Arc<TableDef>>,
}

impl PublishTarget {
    pub fn new() -> Result<Self, String> {
        let reg = load_schema_dir(&crate::repo().join("schemas")).map_err(|e| e.to_string())?;
        let defs: Vec<_> = reg.iter().cloned().collect();
        if defs.is_empty() {
            return Err("no schemas in schemas/".into());
        }
        Ok(PublishTarget { defs })
    }

    fn def(&self, rng: &mut SmallRng) -> &TableDef {
        &self.defs[rng.random_range(0..self.defs.len())]
    }

    fn validate_line(&self, line: &[u8]) -> Outcome {
        let p = match decode_line(line) {
            Ok(FromPublisher::Publish(p)) => p,
            Ok(FromPublisher::Hello(_)) => return Outcome::Accepted,
            Err(_) => return Outcome::Refused,
        };
        let Some(def) = self.defs.iter().find(|d| d.name == p.table) else {
            return Outcome::Refused;
        };
        if p.rows.len() > MAX_ROWS_PER_PUBLISH {
            return Outcome::Refused;
        }
        match json_rows_to_batch(def, Some(MACHINE), &p.rows) {
            Ok(b) if b.num_rows() == p.rows.len() => Outcome::Accepted,
            Ok(b) => Outcome::Violation(format!(
                "{} rows published, {} in the batch",
                p.rows.len(),
                b.num_rows()
            )),
            Err(_) => Outcome::Refused,
        }
    }

    fn text_rows(&self, table: u8, text: &[u8]) -> Outcome {
        let def = &self.defs[usize::from(table) % self.defs.len()];
        let text = String::from_utf8_lossy(text);
        let mut lines = text.split('\n');
        let header: Vec<String> = lines
            .next()
            .unwrap_or_default()
            .split('\t')
            .map(str::to_string)
            .collect();
        let rows: Vec<Vec<String>> = lines
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect();
        match text_rows_to_batch(def, Some(MACHINE), &header, &rows) {
            Ok(b) if b.num_rows() == rows.len() => Outcome::Accepted,
            Ok(b) => Outcome::Violation(format!(
                "{} text rows, {} in the batch",
                rows.len(),
                b.num_rows()
            )),
            Err(_) => Outcome::Refused,
        }
    }
}

impl Target for PublishTarget {
    fn name(&self) -> &'static str {
        "publish"
    }

    fn generate(&self, rng: &mut SmallRng) -> Vec<u8> {
        let def = self.def(rng);
        let (kind, body) = match rng.random_range(0..100) {
            0..10 => (VALID_LINE, valid_publish(rng, def)),
            10..14 => (LINE, json_line(&hello(rng))),
            14..50 => {
                let mut line = if rng.random_bool(0.8) {
                    valid_publish(rng, def)
                } else {
                    json_line(&hello(rng))
                };
                mutate(rng, &mut line, 8, TOKENS);
                (LINE, line)
            }
            50..60 => (LINE, wrong_publish(rng, def)),
            60..70 => {
                let depth = rng.random_range(0..12);
                let v = random_json(rng, depth);
                let wrapped = match rng.random_range(0..4) {
                    0 => v,
                    1 => json!({"publish": v}),
                    2 => json!({"hello": v}),
                    _ => json!({"publish": {"table": def.name, "rows": [v]}}),
                };
                (LINE, json_line(&wrapped))
            }
            70..78 => (LINE, deep_nesting(rng, &def.name)),
            78..86 => (LINE, huge_numbers(rng, def)),
            86..92 => {
                let len = rng.random_range(0..512);
                (LINE, (0..len).map(|_| rng.random()).collect())
            }
            92..93 => (LINE, big_publish(rng, def)),
            _ => {
                let table = rng.random_range(0..self.defs.len()) as u8;
                let def = &self.defs[usize::from(table)];
                let mut text = text_rows(rng, def);
                if rng.random_bool(0.7) {
                    mutate(rng, &mut text, 6, &[b"\t", b"\n", b"-", b"T", b":"]);
                }
                let mut out = vec![TEXT, table];
                out.extend(text);
                return out;
            }
        };
        let mut out = Vec::with_capacity(body.len() + 1);
        out.push(kind);
        out.extend(body);
        out
    }

    fn run(&mut self, input: &[u8]) -> Outcome {
        match input {
            [VALID_LINE, line @ ..] => match self.validate_line(line) {
                Outcome::Accepted => Outcome::Accepted,
                other => Outcome::Violation(format!("a valid publish was not accepted: {other:?}")),
            },
            [TEXT, table, text @ ..] => self.text_rows(*table, text),
            [_, line @ ..] => self.validate_line(line),
            [] => Outcome::Refused,
        }
    }
}

fn json_line(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn name(rng: &mut SmallRng) -> String {
    const NAMES: &[&str] = &[
        "nginx",
        "",
        "p",
        "load_info",
        "sys",
        "x y",
        "ü",
        "\u{0}",
        "a\"b",
        "日本",
    ];
    NAMES[rng.random_range(0..NAMES.len())].to_string()
}

fn hello(rng: &mut SmallRng) -> Value {
    let tables: Vec<String> = (0..rng.random_range(0..5)).map(|_| name(rng)).collect();
    json!({"hello": {"publisher": name(rng), "tables": tables}})
}

/// A value of `ty` (`valid`), or of some other JSON kind.
fn cell(rng: &mut SmallRng, ty: ColumnType) -> Value {
    match ty {
        ColumnType::Int64 => json!(match rng.random_range(0..5) {
            0 => i64::MIN,
            1 => i64::MAX,
            2 => 0,
            _ => rng.random_range(-1_000_000..1_000_000),
        }),
        ColumnType::Float64 => match rng.random_range(0..5) {
            0 => json!(f64::MAX),
            1 => json!(f64::MIN_POSITIVE),
            2 => json!(rng.random_range(-1000..1000)),
            _ => json!(rng.random_range(-1e9..1e9)),
        },
        ColumnType::String => json!(match rng.random_range(0..4) {
            0 => String::new(),
            1 => "ü日本\u{1F600}\"\\\n\t".to_string(),
            _ => format!("s{}", rng.random::<u32>()),
        }),
        ColumnType::Bool => json!(rng.random_bool(0.5)),
        ColumnType::Timestamp => match rng.random_range(0..4) {
            0 => json!(rng.random_range(-10_000_000_000_000i64..10_000_000_000_000)),
            1 => json!("2026-01-01T00:00:00Z"),
            2 => json!("1970-01-01T00:00:00.123+02:00"),
            _ => json!(i64::MAX),
        },
    }
}

fn valid_row(rng: &mut SmallRng, def: &TableDef) -> Map<String, Value> {
    let mut row = Map::new();
    for c in &def.columns {
        if c.nullable && rng.random_bool(0.2) {
            if rng.random_bool(0.5) {
                row.insert(c.name.clone(), Value::Null);
            }
            continue;
        }
        row.insert(c.name.clone(), cell(rng, c.ty));
    }
    row
}

fn valid_publish(rng: &mut SmallRng, def: &TableDef) -> Vec<u8> {
    let rows: Vec<Value> = (0..rng.random_range(0..5))
        .map(|_| Value::Object(valid_row(rng, def)))
        .collect();
    let mut line = json_line(&json!({"publish": {"table": def.name, "rows": rows}}));
    if rng.random_bool(0.3) {
        line.extend_from_slice(if rng.random_bool(0.5) { b"\n" } else { b"\r\n" });
    }
    line
}

/// A publish with one fault a structured generator makes well: a wrong type, an unknown
/// column, `machine_ip`, a missing column, an unknown table.
fn wrong_publish(rng: &mut SmallRng, def: &TableDef) -> Vec<u8> {
    let mut rows: Vec<Map<String, Value>> = (0..rng.random_range(1..4))
        .map(|_| valid_row(rng, def))
        .collect();
    let i = rng.random_range(0..rows.len());
    let col = &def.columns[rng.random_range(0..def.columns.len())];
    let mut table = def.name.clone();
    match rng.random_range(0..5) {
        0 => {
            rows[i].insert(col.name.clone(), random_json(rng, 2));
        }
        1 => {
            rows[i].insert(name(rng), json!(1));
        }
        2 => {
            rows[i].insert("machine_ip".into(), json!("1.2.3.4"));
        }
        3 => {
            rows[i].remove(&col.name);
        }
        _ => table = name(rng),
    }
    json_line(&json!({"publish": {"table": table, "rows": rows}}))
}

fn random_json(rng: &mut SmallRng, depth: u32) -> Value {
    let leaf = depth == 0 || rng.random_bool(0.4);
    if leaf {
        return match rng.random_range(0..6) {
            0 => Value::Null,
            1 => json!(rng.random_bool(0.5)),
            2 => json!(rng.random::<i64>()),
            3 => json!(rng.random::<f64>() * 1e300),
            4 => json!(rng.random::<u64>()),
            _ => json!(name(rng)),
        };
    }
    if rng.random_bool(0.5) {
        Value::Array(
            (0..rng.random_range(0..5))
                .map(|_| random_json(rng, depth - 1))
                .collect(),
        )
    } else {
        Value::Object(
            (0..rng.random_range(0..5))
                .map(|_| (name(rng), random_json(rng, depth - 1)))
                .collect(),
        )
    }
}

/// Nesting far past serde_json's recursion limit (128): `[[[[...`, `{"a":{"a":...`, inside a
/// row's cell, closed or not.
fn deep_nesting(rng: &mut SmallRng, table: &str) -> Vec<u8> {
    let depth = match rng.random_range(0..4) {
        0 => rng.random_range(100..200),
        1 => rng.random_range(200..5_000),
        2 => 100_000,
        _ => 200_000,
    };
    let (open, close): (&[u8], &[u8]) = match rng.random_range(0..3) {
        0 => (b"[", b"]"),
        1 => (b"{\"a\":", b"}"),
        _ => (b"[{\"a\":", b"}]"),
    };
    let mut line = Vec::with_capacity(depth * (open.len() + close.len()) + 80);
    let prefix = match rng.random_range(0..3) {
        0 => String::new(),
        1 => "{\"publish\":".to_string(),
        _ => format!("{{\"publish\":{{\"table\":\"{table}\",\"rows\":[{{\"x\":"),
    };
    line.extend_from_slice(prefix.as_bytes());
    for _ in 0..depth {
        line.extend_from_slice(open);
    }
    line.extend_from_slice(b"1");
    if rng.random_bool(0.5) {
        for _ in 0..depth {
            line.extend_from_slice(close);
        }
    }
    line
}

/// Numbers serde_json must refuse or bound: thousands of digits, exponents past f64,
/// integers past i64/u64, in cells of every type.
fn huge_numbers(rng: &mut SmallRng, def: &TableDef) -> Vec<u8> {
    let digits = rng.random_range(1..20_000);
    let mut n: String = (0..digits)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect();
    match rng.random_range(0..5) {
        0 => n.insert(0, '-'),
        1 => n.push_str(&format!("e{}", rng.random::<i64>())),
        2 => n = format!("0.{n}e-{}", rng.random::<u32>()),
        3 => n = format!("1e{}", rng.random::<u64>()),
        _ => {}
    }
    let col = &def.columns[rng.random_range(0..def.columns.len())];
    let mut row = String::from("{");
    for c in &def.columns {
        let v = if c.name == col.name {
            n.clone()
        } else {
            cell(rng, c.ty).to_string()
        };
        if row.len() > 1 {
            row.push(',');
        }
        row.push_str(&format!("{}:{v}", Value::String(c.name.clone())));
    }
    row.push('}');
    format!(
        "{{\"publish\":{{\"table\":{},\"rows\":[{row}]}}}}",
        Value::String(def.name.clone())
    )
    .into_bytes()
}

/// A large publish (thousands of rows, or one long string): bounded, since the agent reads
/// a line at most `max_line_bytes` long.
fn big_publish(rng: &mut SmallRng, def: &TableDef) -> Vec<u8> {
    if rng.random_bool(0.5) {
        let rows: Vec<Value> = (0..rng.random_range(1_000..5_000))
            .map(|_| Value::Object(valid_row(rng, def)))
            .collect();
        json_line(&json!({"publish": {"table": def.name, "rows": rows}}))
    } else {
        let s = "x".repeat(rng.random_range(100_000..1_000_000));
        json_line(&json!({"publish": {"table": def.name, "rows": [{"hostname": s}]}}))
    }
}

fn text_rows(rng: &mut SmallRng, def: &TableDef) -> Vec<u8> {
    let mut cols: Vec<_> = def.columns.iter().collect();
    if rng.random_bool(0.3) {
        cols.retain(|_| rng.random_bool(0.7));
    }
    let mut text = cols
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join("\t");
    for _ in 0..rng.random_range(0..4) {
        text.push('\n');
        let fields: Vec<String> = cols
            .iter()
            .map(|c| match cell(rng, c.ty) {
                Value::String(s) => s.replace(['\t', '\n'], " "),
                Value::Bool(b) => if b { "TRUE" } else { "no" }.to_string(),
                v => v.to_string(),
            })
            .collect();
        text.push_str(&fields.join("\t"));
    }
    text.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn valid_publishes_are_accepted() {
        let mut t = PublishTarget::new().expect("schemas");
        let mut rng = SmallRng::seed_from_u64(5);
        for _ in 0..200 {
            let def = t.def(&mut rng).clone();
            let mut input = vec![VALID_LINE];
            input.extend(valid_publish(&mut rng, &def));
            assert_eq!(
                t.run(&input),
                Outcome::Accepted,
                "{}",
                crate::runner::show_bytes(&input)
            );
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let mut t = PublishTarget::new().expect("schemas");
        let mut line = vec![LINE];
        line.extend(std::iter::repeat_n(b'[', 100_000));
        assert_eq!(t.run(&line), Outcome::Refused);
    }
}

//! Rows keyed by column name (JSON objects, or text fields under a header line) checked
//! against a table definition and turned into a batch: publishers' rows (`schemas/<table>.toml`,
//! stamped with `machine_ip`) and static tables' data files alike. Rows are accepted whole
//! or refused with the row and column at fault.

use datafusion::arrow::record_batch::RecordBatch;
use query_client::protocol::{PublishError, Row};

use super::{Cell, TableBuilder, TableDef, MACHINE_IP};

fn refuse(table: &str, row: usize, column: &str, message: impl Into<String>) -> PublishError {
    PublishError {
        table: Some(table.to_string()),
        row: Some(row),
        column: Some(column.to_string()),
        message: message.into(),
    }
}

/// JSON rows → batch. Unknown columns, missing non-nullable columns and wrong types are
/// refused. `machine_ip`: Some for a published table (the column the agent sets first,
/// which rows may not send); None for a static table.
pub fn json_rows_to_batch(
    def: &TableDef,
    machine_ip: Option<&str>,
    rows: &[Row],
) -> Result<RecordBatch, PublishError> {
    let published = machine_ip.is_some();
    let mut b = TableBuilder::new(def.arrow_schema(published), def.full_columns(published));
    for (i, row) in rows.iter().enumerate() {
        for key in row.keys() {
            if published && key == MACHINE_IP {
                return Err(refuse(
                    &def.name,
                    i,
                    key,
                    "machine_ip is set by the agent; do not send it",
                ));
            }
            if !def.columns.iter().any(|c| &c.name == key) {
                return Err(refuse(&def.name, i, key, "unknown column"));
            }
        }
        let mut cells = Vec::with_capacity(def.columns.len() + 1);
        cells.extend(machine_ip.map(|ip| Cell::Str(ip.to_string())));
        for col in &def.columns {
            let cell = match row.get(&col.name) {
                None if col.nullable => Cell::Null,
                None => return Err(refuse(&def.name, i, &col.name, "missing column")),
                Some(v) => {
                    Cell::from_json(v, col.ty).map_err(|m| refuse(&def.name, i, &col.name, m))?
                }
            };
            cells.push(cell);
        }
        b.push_row(cells)
            .map_err(|e| refuse(&def.name, i, &e.column, e.message))?;
    }
    Ok(b.finish())
}

/// Text rows (a header naming columns, then fields) → batch, with the same checks.
pub fn text_rows_to_batch(
    def: &TableDef,
    machine_ip: Option<&str>,
    header: &[String],
    rows: &[Vec<String>],
) -> Result<RecordBatch, PublishError> {
    let mut index = Vec::with_capacity(def.columns.len());
    for h in header {
        if !def.columns.iter().any(|c| &c.name == h) {
            return Err(refuse(&def.name, 0, h, "unknown column in the header"));
        }
    }
    for col in &def.columns {
        let pos = header.iter().position(|h| h == &col.name);
        if pos.is_none() && !col.nullable {
            return Err(refuse(
                &def.name,
                0,
                &col.name,
                "missing column in the header",
            ));
        }
        index.push(pos);
    }
    let published = machine_ip.is_some();
    let mut b = TableBuilder::new(def.arrow_schema(published), def.full_columns(published));
    for (i, fields) in rows.iter().enumerate() {
        if fields.len() != header.len() {
            return Err(refuse(
                &def.name,
                i,
                "",
                format!(
                    "has {} fields, the header has {}",
                    fields.len(),
                    header.len()
                ),
            ));
        }
        let mut cells = Vec::with_capacity(def.columns.len() + 1);
        cells.extend(machine_ip.map(|ip| Cell::Str(ip.to_string())));
        for (col, pos) in def.columns.iter().zip(&index) {
            let cell = match pos {
                None => Cell::Null,
                Some(p) => Cell::from_text(&fields[*p], col.ty)
                    .map_err(|m| refuse(&def.name, i, &col.name, m))?,
            };
            cells.push(cell);
        }
        b.push_row(cells)
            .map_err(|e| refuse(&def.name, i, &e.column, e.message))?;
    }
    Ok(b.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> TableDef {
        toml::from_str(
            r#"name = "t"
columns = [{ name = "a", type = "int64" }, { name = "b", type = "string", nullable = true }]"#,
        )
        .expect("parses")
    }

    fn row(json: &str) -> Row {
        serde_json::from_str(json).expect("object")
    }

    #[test]
    fn names_row_and_column_of_every_fault() {
        let d = def();
        let ok = json_rows_to_batch(
            &d,
            Some("10.0.0.1"),
            &[row(r#"{"a": 1}"#), row(r#"{"a": 2, "b": "x"}"#)],
        )
        .expect("ok");
        assert_eq!(ok.num_rows(), 2);
        for (rows, r, c) in [
            (vec![row(r#"{"a": 1}"#), row(r#"{"a": "x"}"#)], 1, "a"),
            (vec![row(r#"{"b": "x"}"#)], 0, "a"),
            (vec![row(r#"{"a": 1, "zz": 1}"#)], 0, "zz"),
            (
                vec![row(r#"{"a": 1, "machine_ip": "1.2.3.4"}"#)],
                0,
                "machine_ip",
            ),
        ] {
            let e = json_rows_to_batch(&d, Some("10.0.0.1"), &rows).expect_err("refused");
            assert_eq!((e.row, e.column.as_deref()), (Some(r), Some(c)), "{e}");
        }
    }

    #[test]
    fn text_rows() {
        let d = def();
        let header = vec!["b".to_string(), "a".to_string()];
        let b = text_rows_to_batch(
            &d,
            Some("ip"),
            &header,
            &[vec!["x".into(), "1".into()], vec!["".into(), "2".into()]],
        )
        .expect("ok");
        assert_eq!(b.num_rows(), 2);
        let e = text_rows_to_batch(&d, Some("ip"), &header, &[vec!["x".into(), "one".into()]])
            .expect_err("bad int");
        assert_eq!(e.column.as_deref(), Some("a"));
        assert!(
            text_rows_to_batch(&d, Some("ip"), &["b".to_string()], &[]).is_err(),
            "a is required"
        );
    }
}

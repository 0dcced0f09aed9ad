//! Text files of rows (CSV, TSV, JSON lines) → one batch, for the edge agent's dropped files
//! and static tables' data files: one parser, one set of error messages.

use datafusion::arrow::record_batch::RecordBatch;
use query_client::protocol::{PublishError, Row};

use super::rows::{json_rows_to_batch, text_rows_to_batch};
use super::{TableDef, MACHINE_IP};

/// Parses a whole text file of `def`'s rows into a batch: `ext` `jsonl` (one JSON object per
/// line), `tsv` (tab-separated, no quoting) or anything else as CSV (double quotes, `""`
/// inside quotes; a field does not span lines); a header line names the columns of
/// CSV/TSV, an empty field is NULL, blank lines are skipped. `machine_ip` as in
/// [`json_rows_to_batch`]. Errors name line and column, never the content.
pub fn parse_text_table(
    bytes: &[u8],
    def: &TableDef,
    ext: &str,
    machine_ip: Option<&str>,
) -> Result<RecordBatch, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        format!("line {line}: not UTF-8")
    })?;
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty());
    let mut numbers = Vec::new();
    if ext == "jsonl" {
        let mut rows: Vec<Row> = Vec::new();
        for (n, line) in lines {
            let row = serde_json::from_str(line)
                .map_err(|e| format!("line {n}, column {}: not a JSON object", e.column()))?;
            rows.push(row);
            numbers.push(n);
        }
        return json_rows_to_batch(def, machine_ip, &rows)
            .map_err(|e| scrub(&e, def, None, &numbers));
    }
    let sep = if ext == "tsv" { '\t' } else { ',' };
    let Some((header_line, h)) = lines.next() else {
        return Err("empty file: a header line is required".into());
    };
    let header: Vec<String> = split_fields(h, sep)
        .into_iter()
        .map(|f| f.trim().to_string())
        .collect();
    let mut rows = Vec::new();
    for (n, line) in lines {
        rows.push(split_fields(line, sep));
        numbers.push(n);
    }
    text_rows_to_batch(def, machine_ip, &header, &rows)
        .map_err(|e| scrub(&e, def, Some((header_line, &header)), &numbers))
}

/// A refusal of [`super::rows`] told without the file's content: the line, the schema's column
/// and what kind of fault, never a value or an unknown field's name (the file could be
/// anything, and errors are shown over HTTP).
fn scrub(
    e: &PublishError,
    def: &TableDef,
    header: Option<(usize, &[String])>,
    lines: &[usize],
) -> String {
    let m = e.message.as_str();
    let col = e.column.as_deref().unwrap_or_default();
    let known = def
        .columns
        .iter()
        .find(|c| c.name == col)
        .map(|c| (c.name.as_str(), c.ty.name()));
    if let Some((line, fields)) = header.filter(|_| m.ends_with("in the header")) {
        return match known {
            Some((name, _)) if m.starts_with("missing") => {
                format!("line {line}: the header lacks column '{name}', which is required")
            }
            _ => {
                let field = fields.iter().position(|f| f == col).map_or(0, |i| i + 1);
                format!(
                    "line {line}, field {field}: not a column of table {}",
                    def.name
                )
            }
        };
    }
    let at = match e.row.and_then(|r| lines.get(r)) {
        Some(l) => format!("line {l}"),
        None => "the file".to_string(),
    };
    let what = if m.starts_with("has ") && m.contains(" fields, the header has ") {
        // Counts only.
        m.to_string()
    } else if col == MACHINE_IP {
        "column 'machine_ip' is set by the agent; do not send it".to_string()
    } else {
        match known {
            Some((name, _)) if m.starts_with("missing") => {
                format!("column '{name}' is missing, and it is required")
            }
            Some((name, ty)) => format!("column '{name}': not a valid {ty}"),
            None => format!("a field that is not a column of table {}", def.name),
        }
    };
    format!("{at}: {what}")
}

/// Splits a CSV line (double quotes, `""` inside quotes) or a TSV line (no quoting).
fn split_fields(line: &str, sep: char) -> Vec<String> {
    if sep == '\t' {
        return line.split('\t').map(String::from).collect();
    }
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (c, false) if c == sep => fields.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes() {
        assert_eq!(
            split_fields(r#"a,"b,c","d""e",f"#, ','),
            ["a", "b,c", "d\"e", "f"]
        );
        assert_eq!(split_fields("a\tb\t", '\t'), ["a", "b", ""]);
    }
}

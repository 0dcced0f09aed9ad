//! An answer as an aligned text table: numbers right-aligned, NULL shown as `NULL`, a
//! footer with the row count and the generation's age.

use serde_json::Value;

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn numeric(ty: &str) -> bool {
    matches!(ty, "int64" | "float64") || ty.starts_with("int") || ty.starts_with("uint")
}

/// The answer `a` (the node's JSON) as lines of text.
pub fn table(a: &Value) -> String {
    let columns: Vec<(String, bool)> = a["columns"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    (
                        c["name"].as_str().unwrap_or("?").to_string(),
                        numeric(c["type"].as_str().unwrap_or("")),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = a["rows"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    r.as_array()
                        .map(|cells| cells.iter().map(cell).collect())
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    let mut widths: Vec<usize> = columns.iter().map(|(n, _)| n.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: &[String], header: bool| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let w = widths.get(i).copied().unwrap_or(0);
                let right = !header && columns.get(i).is_some_and(|(_, n)| *n);
                if right {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        parts.join(" | ").trim_end().to_string()
    };
    let names: Vec<String> = columns.iter().map(|(n, _)| n.clone()).collect();
    let mut out = vec![line(&names, true)];
    out.push(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-"),
    );
    out.extend(rows.iter().map(|r| line(r, false)));
    let n = a["row_count"].as_u64().unwrap_or(rows.len() as u64);
    let mut footer = format!("({n} row{})", if n == 1 { "" } else { "s" });
    if a["truncated"].as_bool() == Some(true) {
        footer.push_str(", truncated");
    }
    if let Some(age) = a["generation"]["age_ms"].as_u64() {
        footer.push_str(&format!(
            ", generation {} ({:.1} s old)",
            a["generation"]["id"],
            age as f64 / 1000.0
        ));
    }
    out.push(footer);
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn aligns_numbers_right_and_text_left() {
        let a = json!({
            "columns": [{"name": "ip", "type": "string"}, {"name": "rss", "type": "int64"}],
            "rows": [["10.0.0.1", 5], ["10.0.0.22", 12345], [null, null]],
            "row_count": 3,
            "generation": {"id": 7, "age_ms": 1500},
        });
        assert_eq!(
            table(&a),
            "ip        | rss\n\
             ----------+------\n\
             10.0.0.1  |     5\n\
             10.0.0.22 | 12345\n\
             NULL      |  NULL\n\
             (3 rows), generation 7 (1.5 s old)"
        );
    }
}

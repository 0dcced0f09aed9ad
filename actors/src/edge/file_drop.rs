//! The file-drop publisher: `T.csv`, `T.tsv` (a header line, then rows) or `T.jsonl` (one
//! JSON object per line) in a watched directory is published as table T every interval.
//! A file is read again only when it changes; a malformed file is reported and its last
//! good copy stays.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use datafusion::arrow::record_batch::RecordBatch;
use query_client::protocol::{PublishError, Row};

use super::rows::{json_rows_to_batch, text_rows_to_batch};
use super::{Collected, LocalPublisher, Published};
use crate::generation::SourceStamp;
use crate::table::SchemaRegistry;

struct Good {
    stamp: (SystemTime, u64),
    batch: RecordBatch,
}

pub struct FileDropPublisher {
    dir: PathBuf,
    machine_ip: String,
    schemas: SchemaRegistry,
    good: BTreeMap<PathBuf, Good>,
    /// The error of each file whose current content is refused, with the stamp it had.
    errors: BTreeMap<PathBuf, ((SystemTime, u64), String)>,
}

impl FileDropPublisher {
    pub fn new(dir: PathBuf, machine_ip: String, schemas: SchemaRegistry) -> Self {
        FileDropPublisher {
            dir,
            machine_ip,
            schemas,
            good: BTreeMap::new(),
            errors: BTreeMap::new(),
        }
    }

    fn parse(&self, path: &Path, table: &str, ext: &str) -> Result<RecordBatch, PublishError> {
        let def = self
            .schemas
            .get(table)
            .ok_or_else(|| PublishError::new("no schema for this table").table(table))?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| PublishError::new(format!("cannot read: {e}")).table(table))?;
        match ext {
            "jsonl" => {
                let mut rows: Vec<Row> = Vec::new();
                for (i, line) in text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                {
                    let row = serde_json::from_str(line).map_err(|e| PublishError {
                        table: Some(table.to_string()),
                        row: Some(i),
                        column: None,
                        message: format!("not a JSON object: {e}"),
                    })?;
                    rows.push(row);
                }
                json_rows_to_batch(def, &self.machine_ip, &rows)
            }
            _ => {
                let sep = if ext == "tsv" { '\t' } else { ',' };
                let mut lines = text.lines().filter(|l| !l.trim().is_empty());
                let header: Vec<String> = match lines.next() {
                    Some(h) => split_fields(h, sep)
                        .into_iter()
                        .map(|f| f.trim().to_string())
                        .collect(),
                    None => {
                        return Err(
                            PublishError::new("empty file: a header line is required").table(table)
                        )
                    }
                };
                let rows: Vec<Vec<String>> = lines.map(|l| split_fields(l, sep)).collect();
                text_rows_to_batch(def, &self.machine_ip, &header, &rows)
            }
        }
    }
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

impl LocalPublisher for FileDropPublisher {
    fn name(&self) -> &str {
        "file-drop"
    }

    fn collect(&mut self, _now: SystemTime) -> Collected {
        let mut seen = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                return Collected {
                    tables: Vec::new(),
                    errors: vec![(
                        self.dir.display().to_string(),
                        format!("cannot read the drop directory: {e}"),
                    )],
                }
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let (Some(stem), Some(ext)) = (
                path.file_stem().and_then(|s| s.to_str()).map(String::from),
                path.extension().and_then(|s| s.to_str()).map(String::from),
            ) else {
                continue;
            };
            if !matches!(ext.as_str(), "csv" | "tsv" | "jsonl") {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let stamp = (
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
            );
            seen.push(path.clone());
            let unchanged = self.good.get(&path).is_some_and(|g| g.stamp == stamp)
                || self.errors.get(&path).is_some_and(|(s, _)| *s == stamp);
            if unchanged {
                continue;
            }
            match self.parse(&path, &stem, &ext) {
                Ok(batch) => {
                    self.errors.remove(&path);
                    tracing::info!(file = %path.display(), rows = batch.num_rows(), "dropped file published");
                    self.good.insert(path, Good { stamp, batch });
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "dropped file refused; last good copy kept");
                    self.errors.insert(path, (stamp, e.to_string()));
                }
            }
        }
        // Removed files stop being published.
        self.good.retain(|p, _| seen.contains(p));
        self.errors.retain(|p, _| seen.contains(p));
        let tables = self
            .good
            .iter()
            .filter_map(|(path, g)| {
                let table = path.file_stem()?.to_str()?.to_string();
                let file = path.file_name()?.to_str()?.to_string();
                let source = format!("{}/file:{file}", self.machine_ip);
                Some(Published::new(
                    &table,
                    source.clone(),
                    g.batch.clone(),
                    vec![SourceStamp {
                        source,
                        published_at: g.stamp.0,
                    }],
                ))
            })
            .collect();
        let errors = self
            .errors
            .iter()
            .map(|(p, (_, e))| (p.display().to_string(), e.clone()))
            .collect();
        Collected { tables, errors }
    }
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

    #[test]
    fn publishes_drops_and_keeps_last_good() {
        let dir = tempfile::tempdir().expect("tempdir");
        let schemas = crate::table::load_schema_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas"),
        )
        .expect("schemas");
        let mut p = FileDropPublisher::new(dir.path().to_path_buf(), "10.0.0.9".into(), schemas);
        std::fs::write(
            dir.path().join("machinerole.csv"),
            "role\nweb\n\"cache,edge\"\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("load_info.jsonl"),
            "{\"georegion\":1,\"hits\":5,\"bytes\":9,\"errors\":0}\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("notes.txt"), "ignored").expect("write");
        let out = p.collect(SystemTime::now());
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let rows = |out: &Collected, t: &str| {
            out.tables
                .iter()
                .find(|x| x.table == t)
                .map(|x| x.part.batch.num_rows())
        };
        assert_eq!(rows(&out, "machinerole"), Some(2));
        assert_eq!(rows(&out, "load_info"), Some(1));

        // Broken: reported, last good copy kept.
        std::fs::write(
            dir.path().join("load_info.jsonl"),
            "{\"georegion\":\"x\"}\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("nosuch.tsv"), "a\n1\n").expect("write");
        let out = p.collect(SystemTime::now());
        assert_eq!(rows(&out, "load_info"), Some(1));
        assert_eq!(out.errors.len(), 2, "{:?}", out.errors);
        assert!(out
            .errors
            .iter()
            .any(|(f, e)| f.ends_with("load_info.jsonl") && e.contains("georegion")));

        std::fs::remove_file(dir.path().join("machinerole.csv")).expect("rm");
        let out = p.collect(SystemTime::now());
        assert_eq!(rows(&out, "machinerole"), None);
    }
}

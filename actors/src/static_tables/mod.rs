//! Static tables: TOML files listed by `static-tables/index.toml`, loaded by aggregators
//! beside the published tables and re-read when they change. A TOML file declares the
//! table (name, description, key, columns) and holds its rows (`rows = [...]`) or names a
//! data file beside it (`data = "machines.csv"`: CSV, TSV, JSON lines or Parquet, read by
//! [`data_files`]); an edit to either is a reload.
//!
//! A file that fails to load is reported and its last good copy stays: a node never serves
//! an empty or half-read table because somebody saved a typo.

pub mod data_files;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use datafusion::arrow::record_batch::RecordBatch;
use serde::Deserialize;

use crate::config::{file_stamp, read_toml, FileStamp};
use crate::error::{ConfigError, ConfigResult};
use crate::table::{TableBuilder, TableDef};
use data_files::{read_data_file, DataFormat};

/// `static-tables/index.toml`: which files this node loads (paths relative to the index).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexFile {
    #[serde(default)]
    tables: Vec<PathBuf>,
}

/// One static table file: a table definition plus its rows, in column order, or the data
/// file that holds them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticFile {
    #[serde(flatten)]
    def: TableDef,
    #[serde(default)]
    rows: Vec<Vec<toml::Value>>,
    /// A data file, relative to this file.
    data: Option<PathBuf>,
    /// The data file's format when its extension does not say.
    format: Option<String>,
}

const KEYS: &str = "name, description, key, columns, rows, data, format";

#[derive(Debug)]
pub struct StaticTable {
    pub def: TableDef,
    pub batch: RecordBatch,
    pub file: PathBuf,
    /// The data file the rows came from, if not the TOML file itself.
    pub data: Option<PathBuf>,
    pub loaded_at: SystemTime,
}

/// The static tables a node serves, and the files that currently fail to load.
#[derive(Debug, Default)]
pub struct StaticCatalog {
    pub tables: BTreeMap<String, Arc<StaticTable>>,
    /// File (or "index") → why its current content is not used.
    pub errors: BTreeMap<String, String>,
}

/// Parses one static table file (and its data file) completely, or not at all.
pub fn load_static_file(path: &Path) -> ConfigResult<StaticTable> {
    load(path).1
}

/// [`load_static_file`], also returning the data file the TOML names (even when loading
/// fails, so an edit to it is noticed) with its stamp from before it was read.
fn load(
    path: &Path,
) -> (
    Option<(PathBuf, Option<FileStamp>)>,
    ConfigResult<StaticTable>,
) {
    let file = match parse_static_toml(path) {
        Ok(f) => f,
        Err(e) => return (None, Err(e)),
    };
    let invalid = |message: String| ConfigError::Invalid {
        what: format!("{} (table '{}')", path.display(), file.def.name),
        message,
    };
    let Some(data) = &file.data else {
        if file.format.is_some() {
            return (
                None,
                Err(invalid(
                    "'format' is for a data file: set 'data' too".into(),
                )),
            );
        }
        let mut builder =
            TableBuilder::new(file.def.arrow_schema(false), file.def.full_columns(false));
        for row in &file.rows {
            if let Err(e) = builder.push_toml_row(row) {
                return (None, Err(invalid(e.to_string())));
            }
        }
        return (None, Ok(table(file.def, builder.finish(), path, None)));
    };
    let data = path.parent().unwrap_or(Path::new(".")).join(data);
    let stamp = file_stamp(&data);
    let watched = Some((data.clone(), stamp));
    if !file.rows.is_empty() {
        return (
            watched,
            Err(invalid("has both 'rows' and 'data': choose one".into())),
        );
    }
    let batch = DataFormat::of(&data, file.format.as_deref())
        .and_then(|format| read_data_file(&file.def, &data, format))
        .map_err(invalid);
    match batch {
        Ok(batch) => (watched, Ok(table(file.def, batch, path, Some(data)))),
        Err(e) => (watched, Err(e)),
    }
}

fn table(def: TableDef, batch: RecordBatch, file: &Path, data: Option<PathBuf>) -> StaticTable {
    StaticTable {
        def,
        batch,
        file: file.to_path_buf(),
        data,
        loaded_at: SystemTime::now(),
    }
}

/// The TOML of a static table, its definition checked.
fn parse_static_toml(path: &Path) -> ConfigResult<StaticFile> {
    // `flatten` and `deny_unknown_fields` do not combine in serde, so the known keys are
    // checked by hand before the typed parse.
    let raw: toml::Table = read_toml(path)?;
    for key in raw.keys() {
        if !KEYS.split(", ").any(|k| k == key) {
            return Err(ConfigError::Invalid {
                what: path.display().to_string(),
                message: format!("unknown key '{key}' (expected {KEYS})"),
            });
        }
    }
    let file: StaticFile = toml::Value::Table(raw)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
    file.def.validate(false)?;
    Ok(file)
}

/// Watches the index and its files; `reload` re-reads whatever changed.
pub struct StaticLoader {
    index: PathBuf,
    /// (modified time, length) of every file when last read, to notice edits cheaply.
    seen: BTreeMap<PathBuf, (SystemTime, u64)>,
    /// The data file each TOML file named when last read.
    data_of: BTreeMap<PathBuf, PathBuf>,
    current: Arc<StaticCatalog>,
}

impl StaticLoader {
    pub fn new(index: PathBuf) -> Self {
        StaticLoader {
            index,
            seen: BTreeMap::new(),
            data_of: BTreeMap::new(),
            current: Arc::new(StaticCatalog::default()),
        }
    }

    pub fn current(&self) -> Arc<StaticCatalog> {
        self.current.clone()
    }

    /// Re-reads changed files. Returns the new catalog if anything changed (tables or
    /// errors), `None` if all is as before.
    pub fn reload(&mut self) -> Option<Arc<StaticCatalog>> {
        let index_path = self.index.clone();
        let index_changed = self.stamp_changed(&index_path);
        let index: IndexFile = match read_toml(&index_path) {
            Ok(i) => i,
            // Keep every table as it was; report the index itself.
            Err(e) => return self.set_error_only("index", e.to_string()),
        };
        let dir = index_path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let files: Vec<PathBuf> = index.tables.iter().map(|f| dir.join(f)).collect();
        let changed: Vec<bool> = files
            .iter()
            .map(|f| {
                let toml = self.stamp_changed(f);
                let data = match self.data_of.get(f).cloned() {
                    Some(d) => self.stamp_changed(&d),
                    None => false,
                };
                toml || data
            })
            .collect();
        if !index_changed && !changed.contains(&true) {
            return None;
        }

        let mut next = StaticCatalog::default();
        for (f, changed) in files.iter().zip(changed) {
            let key = f.display().to_string();
            let previous = self.current.tables.values().find(|t| &t.file == f).cloned();
            let previous_error = self.current.errors.get(&key).cloned();
            let loaded = match (changed, &previous, previous_error) {
                // Unchanged since last read: keep what we had, good copy and error alike.
                (false, Some(p), err) => {
                    if let Some(err) = err {
                        next.errors.insert(key.clone(), err);
                    }
                    Ok(p.clone())
                }
                (false, None, Some(err)) => Err(err),
                _ => {
                    let (data, loaded) = load(f);
                    match data {
                        Some((data, stamp)) => {
                            // The stamp from before the read: an edit during it is seen next time.
                            match stamp {
                                Some(s) => self.seen.insert(data.clone(), s),
                                None => self.seen.remove(&data),
                            };
                            self.data_of.insert(f.clone(), data);
                        }
                        None => {
                            self.data_of.remove(f);
                        }
                    }
                    loaded.map(Arc::new).map_err(|e| e.to_string())
                }
            };
            match loaded {
                Ok(t) => {
                    if let Some(other) = next.tables.get(&t.def.name) {
                        let msg = format!(
                            "table '{}' is already defined by {}",
                            t.def.name,
                            other.file.display()
                        );
                        next.errors.insert(key, msg);
                    } else {
                        if changed {
                            tracing::info!(table = %t.def.name, file = %key, rows = t.batch.num_rows(), "static table loaded");
                        }
                        next.tables.insert(t.def.name.clone(), t);
                    }
                }
                Err(e) => {
                    if changed {
                        tracing::error!(file = %key, error = %e, kept_last_good = previous.is_some(), "static table file rejected");
                    }
                    if let Some(p) = previous {
                        next.tables.insert(p.def.name.clone(), p);
                    }
                    next.errors.insert(key, e);
                }
            }
        }
        let next = Arc::new(next);
        let same = next.errors == self.current.errors
            && next.tables.len() == self.current.tables.len()
            && next.tables.iter().all(|(n, t)| {
                self.current
                    .tables
                    .get(n)
                    .is_some_and(|o| Arc::ptr_eq(o, t))
            });
        self.current = next;
        (!same).then(|| self.current.clone())
    }

    fn set_error_only(&mut self, key: &str, message: String) -> Option<Arc<StaticCatalog>> {
        if self.current.errors.get(key) == Some(&message) {
            return None;
        }
        tracing::error!(file = %self.index.display(), error = %message, "static table index rejected; keeping the tables loaded before");
        let mut errors = self.current.errors.clone();
        errors.insert(key.to_string(), message);
        self.current = Arc::new(StaticCatalog {
            tables: self.current.tables.clone(),
            errors,
        });
        Some(self.current.clone())
    }

    /// Records the file's stamp; true if it differs from the last one seen.
    fn stamp_changed(&mut self, path: &Path) -> bool {
        let stamp = crate::config::file_stamp(path);
        match stamp {
            Some(s) => self.seen.insert(path.to_path_buf(), s) != Some(s),
            // A file that vanished is a change once; one never seen is loaded (and its error
            // recorded) because it has no previous copy.
            None => self.seen.remove(path).is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"name = "colors"
columns = [{ name = "id", type = "int64" }, { name = "name", type = "string" }]
rows = [[1, "red"], [2, "green"]]
"#;

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = dir.path().join("index.toml");
        std::fs::write(&index, "tables = [\"colors.toml\"]\n").expect("write");
        std::fs::write(dir.path().join("colors.toml"), GOOD).expect("write");
        (dir, index)
    }

    #[test]
    fn broken_file_keeps_last_good_copy() {
        let (dir, index) = setup();
        let mut loader = StaticLoader::new(index);
        let cat = loader.reload().expect("first load changes");
        assert_eq!(cat.tables["colors"].batch.num_rows(), 2);
        assert!(loader.reload().is_none(), "nothing changed");

        // A bad value in row 2: the whole file is refused, the old table stays.
        std::fs::write(
            dir.path().join("colors.toml"),
            GOOD.replace("[2, \"green\"]", "[2, \"green\"], [\"three\", \"blue\"]"),
        )
        .expect("write");
        let cat = loader.reload().expect("error is a change");
        assert_eq!(cat.tables["colors"].batch.num_rows(), 2);
        let err = cat.errors.values().next().expect("error reported");
        assert!(err.contains("row 2") && err.contains("'id'"), "{err}");

        // Fixed: the new content is served and the error is gone.
        std::fs::write(
            dir.path().join("colors.toml"),
            GOOD.replace("[2, \"green\"]", "[2, \"green\"], [3, \"blue\"]"),
        )
        .expect("write");
        let cat = loader.reload().expect("fixed");
        assert_eq!(cat.tables["colors"].batch.num_rows(), 3);
        assert!(cat.errors.is_empty());
    }

    #[test]
    fn broken_index_keeps_tables() {
        let (_dir, index) = setup();
        let mut loader = StaticLoader::new(index.clone());
        loader.reload();
        std::fs::write(&index, "tables = [\n").expect("write");
        let cat = loader.reload().expect("error is a change");
        assert!(cat.tables.contains_key("colors"));
        assert!(cat.errors.contains_key("index"));
    }

    #[test]
    fn unknown_keys_and_syntax_errors_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("t.toml");
        std::fs::write(&p, "name = \"t\"\ncolumns = []\nrowz = []\n").expect("write");
        assert!(load_static_file(&p)
            .expect_err("unknown key")
            .to_string()
            .contains("rowz"));
        std::fs::write(&p, "name = \"t\"\ncolumns = [\n").expect("write");
        assert!(load_static_file(&p).is_err());
    }

    #[test]
    fn data_files_hold_nulls_and_an_edit_to_them_is_a_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = dir.path().join("index.toml");
        std::fs::write(&index, "tables = [\"hosts.toml\", \"events.toml\"]\n").expect("write");
        std::fs::write(
            dir.path().join("hosts.toml"),
            r#"name = "hosts"
description = "Machines by rack"
key = ["ip"]
columns = [
  { name = "ip", type = "string" },
  { name = "rack", type = "int64", nullable = true, description = "NULL: not racked" },
]
data = "hosts.csv"
"#,
        )
        .expect("write");
        let csv = dir.path().join("hosts.csv");
        std::fs::write(&csv, "ip,rack\n10.0.0.1,4\n\n10.0.0.2,\n").expect("write");
        std::fs::write(
            dir.path().join("events.toml"),
            "name = \"events\"\ncolumns = [{ name = \"at\", type = \"timestamp\" }, { name = \"what\", type = \"string\", nullable = true }]\ndata = \"events.log\"\nformat = \"jsonl\"\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("events.log"),
            "{\"at\": \"2026-11-28T10:00:00Z\", \"what\": \"boot\"}\n{\"at\": 0, \"what\": null}\n",
        )
        .expect("write");
        let mut loader = StaticLoader::new(index);
        let cat = loader.reload().expect("first load");
        assert!(cat.errors.is_empty(), "{:?}", cat.errors);
        let hosts = &cat.tables["hosts"];
        assert_eq!(hosts.batch.num_rows(), 2);
        assert_eq!(
            hosts.batch.column(1).null_count(),
            1,
            "an empty field is NULL"
        );
        assert_eq!(hosts.data.as_deref(), Some(csv.as_path()));
        assert_eq!(cat.tables["events"].batch.column(1).null_count(), 1);
        assert!(loader.reload().is_none(), "nothing changed");

        // A bad value in the data file (not in the TOML): refused whole, last copy kept,
        // the error names the data file, line and column.
        std::fs::write(&csv, "ip,rack\n10.0.0.1,4\n10.0.0.2,four\n10.0.0.3,5\n").expect("write");
        let cat = loader.reload().expect("the data file's edit is seen");
        assert_eq!(cat.tables["hosts"].batch.num_rows(), 2);
        let err = cat.errors.values().next().expect("reported");
        assert!(
            err.contains("hosts.csv") && err.contains("line 3") && err.contains("'rack'"),
            "{err}"
        );

        // A NULL where the column is not nullable is refused too.
        std::fs::write(&csv, "ip,rack\n,4\n").expect("write");
        let cat = loader.reload().expect("seen");
        assert!(
            cat.errors.values().any(|e| e.contains("'ip'")),
            "{:?}",
            cat.errors
        );

        // Fixed: served, error gone.
        std::fs::write(&csv, "ip,rack\n10.0.0.1,4\n10.0.0.2,\n10.0.0.3,5\n").expect("write");
        let cat = loader.reload().expect("fixed");
        assert_eq!(cat.tables["hosts"].batch.num_rows(), 3);
        assert!(cat.errors.is_empty(), "{:?}", cat.errors);

        // Rows and data together, or a missing data file: refused, named.
        std::fs::remove_file(&csv).expect("rm");
        let cat = loader.reload().expect("a vanished data file is a change");
        assert_eq!(cat.tables["hosts"].batch.num_rows(), 3, "last good copy");
        assert!(
            cat.errors.values().any(|e| e.contains("cannot open")),
            "{:?}",
            cat.errors
        );
    }

    #[test]
    fn a_parquet_data_file_is_a_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let toml = dir.path().join("colors.toml");
        std::fs::write(
            &toml,
            GOOD.replace(
                "rows = [[1, \"red\"], [2, \"green\"]]",
                "data = \"colors.parquet\"",
            ),
        )
        .expect("write");
        let from_toml = {
            let t = dir.path().join("rows.toml");
            std::fs::write(&t, GOOD).expect("write");
            load_static_file(&t).expect("loads").batch
        };
        data_files::write_parquet(&dir.path().join("colors.parquet"), &from_toml);
        let t = load_static_file(&toml).expect("loads");
        assert_eq!(t.batch, from_toml);
        std::fs::write(
            &toml,
            GOOD.replace("]]\n", "]]\ndata = \"colors.parquet\"\n"),
        )
        .expect("write");
        let e = load_static_file(&toml).expect_err("both");
        assert!(e.to_string().contains("both 'rows' and 'data'"), "{e}");
    }

    #[test]
    fn shipped_static_tables_load() {
        let index = Path::new(env!("CARGO_MANIFEST_DIR")).join("../static-tables/index.toml");
        let mut loader = StaticLoader::new(index);
        let cat = loader.reload().expect("loads");
        assert!(cat.errors.is_empty(), "{:?}", cat.errors);
        assert_eq!(cat.tables["continent_data"].batch.num_rows(), 7);
        assert!(cat.tables["region_data"].batch.num_rows() >= 20);
    }
}

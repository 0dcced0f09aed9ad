//! Static tables: TOML files listed by `static-tables/index.toml`, loaded by aggregators
//! beside the published tables and re-read when they change.
//!
//! A file that fails to load is reported and its last good copy stays: a node never serves
//! an empty or half-read table because somebody saved a typo.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use datafusion::arrow::record_batch::RecordBatch;
use serde::Deserialize;

use crate::config::read_toml;
use crate::error::{ConfigError, ConfigResult};
use crate::table::{TableBuilder, TableDef};

/// `static-tables/index.toml`: which files this node loads (paths relative to the index).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexFile {
    #[serde(default)]
    tables: Vec<PathBuf>,
}

/// One static table file: a table definition plus its rows, in column order.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticFile {
    #[serde(flatten)]
    def: TableDef,
    #[serde(default)]
    rows: Vec<Vec<toml::Value>>,
}

#[derive(Debug)]
pub struct StaticTable {
    pub def: TableDef,
    pub batch: RecordBatch,
    pub file: PathBuf,
    pub loaded_at: SystemTime,
}

/// The static tables a node serves, and the files that currently fail to load.
#[derive(Debug, Default)]
pub struct StaticCatalog {
    pub tables: BTreeMap<String, Arc<StaticTable>>,
    /// File (or "index") → why its current content is not used.
    pub errors: BTreeMap<String, String>,
}

/// Parses one static table file completely, or not at all.
pub fn load_static_file(path: &Path) -> ConfigResult<StaticTable> {
    // `flatten` and `deny_unknown_fields` do not combine in serde, so the known keys are
    // checked by hand before the typed parse.
    let raw: toml::Table = read_toml(path)?;
    for key in raw.keys() {
        if !matches!(
            key.as_str(),
            "name" | "description" | "key" | "columns" | "rows"
        ) {
            return Err(ConfigError::Invalid {
                what: path.display().to_string(),
                message: format!(
                    "unknown key '{key}' (expected name, description, key, columns, rows)"
                ),
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
    let mut builder = TableBuilder::new(file.def.arrow_schema(false), file.def.full_columns(false));
    for row in &file.rows {
        builder
            .push_toml_row(row)
            .map_err(|e| ConfigError::Invalid {
                what: format!("{} (table '{}')", path.display(), file.def.name),
                message: e.to_string(),
            })?;
    }
    Ok(StaticTable {
        batch: builder.finish(),
        def: file.def,
        file: path.to_path_buf(),
        loaded_at: SystemTime::now(),
    })
}

/// Watches the index and its files; `reload` re-reads whatever changed.
pub struct StaticLoader {
    index: PathBuf,
    /// (modified time, length) of every file when last read, to notice edits cheaply.
    seen: BTreeMap<PathBuf, (SystemTime, u64)>,
    current: Arc<StaticCatalog>,
}

impl StaticLoader {
    pub fn new(index: PathBuf) -> Self {
        StaticLoader {
            index,
            seen: BTreeMap::new(),
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
        let changed: Vec<bool> = files.iter().map(|f| self.stamp_changed(f)).collect();
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
                _ => load_static_file(f).map(Arc::new).map_err(|e| e.to_string()),
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
    fn shipped_static_tables_load() {
        let index = Path::new(env!("CARGO_MANIFEST_DIR")).join("../static-tables/index.toml");
        let mut loader = StaticLoader::new(index);
        let cat = loader.reload().expect("loads");
        assert!(cat.errors.is_empty(), "{:?}", cat.errors);
        assert_eq!(cat.tables["continent_data"].batch.num_rows(), 7);
        assert!(cat.tables["region_data"].batch.num_rows() >= 20);
    }
}

//! The index of kept files: which files each kept table has, with their time ranges, rows
//! and bytes. The writer changes it after each write, compaction and deletion; queries read
//! it when they plan a scan, so a scan sees the files of that moment.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::RwLock;

use datafusion::arrow::datatypes::SchemaRef;

use super::files::{FileEntry, TableFiles};

#[derive(Debug, Default)]
pub struct HistoryIndex {
    tables: RwLock<BTreeMap<String, TableFiles>>,
}

impl HistoryIndex {
    pub fn new(tables: BTreeMap<String, TableFiles>) -> Self {
        HistoryIndex {
            tables: RwLock::new(tables),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, TableFiles>> {
        // A writer that panicked left whole entries (each change is one assignment).
        self.tables.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, TableFiles>> {
        self.tables.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The files of `table` (`history.sys`) now.
    pub fn get(&self, table: &str) -> Option<TableFiles> {
        self.read().get(table).cloned()
    }

    pub fn schema(&self, table: &str) -> Option<SchemaRef> {
        self.read().get(table).map(|t| t.schema.clone())
    }

    /// Every kept table, with its files.
    pub fn all(&self) -> BTreeMap<String, TableFiles> {
        self.read().clone()
    }

    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    pub fn bytes(&self) -> u64 {
        self.read().values().map(|t| t.bytes()).sum()
    }

    /// A new file of `table`; its schema becomes the table's.
    pub fn add(&self, table: &str, schema: SchemaRef, file: FileEntry) {
        let mut tables = self.write();
        let t = tables
            .entry(table.to_string())
            .or_insert_with(|| TableFiles {
                schema: schema.clone(),
                files: Vec::new(),
            });
        t.schema = schema;
        t.files.retain(|f| f.path != file.path);
        let at = t.files.partition_point(|f| f.from_ms < file.from_ms);
        t.files.insert(at, file);
    }

    /// `merged` replaces the files at `replaced` in one step: a scan sees either.
    pub fn replace(&self, table: &str, replaced: &[PathBuf], merged: FileEntry) {
        let mut tables = self.write();
        if let Some(t) = tables.get_mut(table) {
            t.files
                .retain(|f| !replaced.contains(&f.path) && f.path != merged.path);
            let at = t.files.partition_point(|f| f.from_ms < merged.from_ms);
            t.files.insert(at, merged);
        }
    }

    /// A kept table with no files yet: queries find it (empty) from the start.
    pub fn declare(&self, table: &str, schema: SchemaRef) {
        self.write()
            .entry(table.to_string())
            .or_insert_with(|| TableFiles {
                schema,
                files: Vec::new(),
            });
    }

    /// Forgets files (past retention); the table stays, maybe empty.
    pub fn remove(&self, table: &str, gone: &[PathBuf]) {
        if let Some(t) = self.write().get_mut(table) {
            t.files.retain(|f| !gone.contains(&f.path));
        }
    }
}

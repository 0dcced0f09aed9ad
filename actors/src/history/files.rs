//! History on disk: one folder per kept table (`<dir>/history.sys/`, `<dir>/report.hits/`),
//! Parquet files named by the generation times they cover (`<from ms>-<to ms>.parquet`),
//! rows sorted by machine, then time, so a query for one machine reads few row groups.
//!
//! Every file is written under a temporary name, synced and renamed: a crash leaves either
//! the whole file or a temporary one, which the next start deletes. Compaction writes the
//! merged file the same way before the files it replaces are deleted; a crash in between
//! leaves files whose time range lies inside another's, and the next start deletes them, so
//! no row is served twice.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, TimestampMillisecondArray};
use datafusion::arrow::compute::{
    concat_batches, lexsort_to_indices, take_record_batch, SortColumn,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatchReader;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};

/// The column every kept row gets: when its generation was sealed.
pub const GENERATION_TIME: &str = "generation_time";
/// The column every kept row gets: its generation's id.
pub const GENERATION: &str = "generation";
/// Rows are sorted by this column first where a table has it.
const MACHINE: &str = "machine_ip";
/// Rows per row group: small enough that one machine's rows of an hour are a few groups
/// of a compacted file, large enough that scans of the fleet stay sequential.
const ROW_GROUP_ROWS: usize = 65_536;
/// Rows per page, the unit the page index prunes inside a row group.
const PAGE_ROWS: usize = 8_192;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Data { path: String, message: String },
}

impl StoreError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.display().to_string(),
            source,
        }
    }
    fn data(path: &Path, e: impl std::fmt::Display) -> Self {
        StoreError::Data {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}

/// One Parquet file of a kept table.
#[derive(Debug, Clone, PartialEq)]
pub struct FileEntry {
    pub path: PathBuf,
    /// Generation times covered, in ms since the epoch (inclusive).
    pub from_ms: i64,
    pub to_ms: i64,
    pub rows: u64,
    pub bytes: u64,
}

/// The files of one kept table, oldest first, and the schema of the newest.
#[derive(Debug, Clone)]
pub struct TableFiles {
    pub schema: SchemaRef,
    pub files: Vec<FileEntry>,
}

impl TableFiles {
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
    pub fn range(&self) -> Option<(i64, i64)> {
        Some((self.files.first()?.from_ms, self.files.last()?.to_ms))
    }
}

fn file_name(from_ms: i64, to_ms: i64) -> String {
    format!("{from_ms:013}-{to_ms:013}.parquet")
}

fn parse_name(name: &str) -> Option<(i64, i64)> {
    let (from, to) = name.strip_suffix(".parquet")?.split_once('-')?;
    Some((from.parse().ok()?, to.parse().ok()?))
}

/// The schema of a kept table: the live table's columns, then the generation's time and id.
pub fn stamped_schema(schema: &Schema) -> Result<SchemaRef, String> {
    for name in [GENERATION_TIME, GENERATION] {
        if schema.column_with_name(name).is_some() {
            return Err(format!(
                "a column is named '{name}', which history adds itself: rename it"
            ));
        }
    }
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(
        GENERATION_TIME,
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        false,
    ));
    fields.push(Field::new(GENERATION, DataType::Int64, false));
    Ok(Arc::new(Schema::new(fields)))
}

/// The rows of one generation with its time and id added, as one batch.
pub fn stamp(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    at_ms: i64,
    generation: u64,
) -> Result<RecordBatch, String> {
    let stamped = stamped_schema(schema)?;
    let batch = concat_batches(schema, batches).map_err(|e| e.to_string())?;
    let n = batch.num_rows();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns.push(Arc::new(
        TimestampMillisecondArray::from(vec![at_ms; n]).with_timezone("UTC"),
    ));
    columns.push(Arc::new(Int64Array::from(vec![
        i64::try_from(generation)
            .unwrap_or(i64::MAX);
        n
    ])));
    RecordBatch::try_new(stamped, columns).map_err(|e| e.to_string())
}

/// Sorted by machine (where the table has one), then generation time.
fn sorted(batch: &RecordBatch) -> Result<RecordBatch, String> {
    let mut keys = Vec::new();
    for name in [MACHINE, GENERATION_TIME] {
        if let Some((i, _)) = batch.schema().column_with_name(name) {
            keys.push(SortColumn {
                values: batch.column(i).clone(),
                options: None,
            });
        }
    }
    if keys.is_empty() || batch.num_rows() < 2 {
        return Ok(batch.clone());
    }
    let indices = lexsort_to_indices(&keys, None).map_err(|e| e.to_string())?;
    take_record_batch(batch, &indices).map_err(|e| e.to_string())
}

fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_statistics_enabled(EnabledStatistics::Page)
        .build()
}

/// Writes `batch` (rows of generations `from_ms..=to_ms`) as one file of `table` under `dir`:
/// sorted, to a temporary name, synced, renamed.
pub fn write_file(
    dir: &Path,
    table: &str,
    batch: &RecordBatch,
    from_ms: i64,
    to_ms: i64,
) -> Result<FileEntry, StoreError> {
    let (path, bytes) = atomically(dir, table, from_ms, to_ms, |tmp| write_tmp(tmp, batch))?;
    Ok(FileEntry {
        path,
        from_ms,
        to_ms,
        rows: batch.num_rows() as u64,
        bytes,
    })
}

/// Runs `write` on a temporary file of `table`, then gives it its name (`from_ms-to_ms`):
/// synced, renamed, the folder synced. The temporary file is removed on failure.
fn atomically<T>(
    dir: &Path,
    table: &str,
    from_ms: i64,
    to_ms: i64,
    write: impl FnOnce(&Path) -> Result<T, StoreError>,
) -> Result<(PathBuf, T), StoreError> {
    let folder = dir.join(table);
    std::fs::create_dir_all(&folder).map_err(|e| StoreError::io(&folder, e))?;
    let name = file_name(from_ms, to_ms);
    let path = folder.join(&name);
    let tmp = folder.join(format!(".{name}.tmp"));
    let result = write(&tmp).and_then(|out| {
        std::fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e))?;
        // The rename itself is durable once the folder is synced.
        if let Ok(d) = File::open(&folder) {
            let _ = d.sync_all();
        }
        Ok(out)
    });
    match result {
        Ok(out) => Ok((path, out)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Closes `writer`, syncs the file and returns its size.
fn finish(tmp: &Path, writer: ArrowWriter<File>) -> Result<u64, StoreError> {
    let file = writer.into_inner().map_err(|e| parquet_error(tmp, e))?;
    file.sync_all().map_err(|e| StoreError::io(tmp, e))?;
    Ok(file.metadata().map_err(|e| StoreError::io(tmp, e))?.len())
}

fn write_tmp(tmp: &Path, batch: &RecordBatch) -> Result<u64, StoreError> {
    let batch = sorted(batch).map_err(|e| StoreError::data(tmp, e))?;
    let file = File::create(tmp).map_err(|e| StoreError::io(tmp, e))?;
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(writer_properties()))
        .map_err(|e| StoreError::data(tmp, e))?;
    writer.write(&batch).map_err(|e| parquet_error(tmp, e))?;
    finish(tmp, writer)
}

/// An I/O failure inside the Parquet writer (a full disk) stays an I/O error.
fn parquet_error(path: &Path, e: datafusion::parquet::errors::ParquetError) -> StoreError {
    match e {
        datafusion::parquet::errors::ParquetError::External(inner) => {
            match inner.downcast::<std::io::Error>() {
                Ok(io) => StoreError::io(path, *io),
                Err(other) => StoreError::data(path, other),
            }
        }
        other => StoreError::data(path, other),
    }
}

/// Every row of a file, as written.
pub fn read_file(path: &Path) -> Result<(SchemaRef, Vec<RecordBatch>), StoreError> {
    let file = File::open(path).map_err(|e| StoreError::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| StoreError::data(path, e))?
        .with_batch_size(ROW_GROUP_ROWS)
        .build()
        .map_err(|e| StoreError::data(path, e))?;
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::data(path, e))?;
    Ok((schema, batches))
}

/// A file's schema and rows, from its footer; an error if it is not a whole Parquet file.
fn inspect(path: &Path) -> Result<(SchemaRef, u64), StoreError> {
    let file = File::open(path).map_err(|e| StoreError::io(path, e))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| StoreError::data(path, e))?;
    let rows = builder.metadata().file_metadata().num_rows();
    Ok((builder.schema().clone(), u64::try_from(rows).unwrap_or(0)))
}

/// Windows of up to this many rows are merged sorted (by machine, then time), in memory;
/// larger ones are streamed file by file in time order, each generation's rows still
/// sorted by machine (page statistics keep pruning), so compaction's memory stays bounded.
const SORT_IN_MEMORY_ROWS: u64 = 2_000_000;

/// Merges `files` (of one table, one schema, oldest first) into one file covering their
/// whole range.
pub fn compact(dir: &Path, table: &str, files: &[FileEntry]) -> Result<FileEntry, StoreError> {
    let (Some(first), Some(last)) = (files.first(), files.last()) else {
        return Err(StoreError::data(dir, "nothing to compact"));
    };
    let from = files
        .iter()
        .map(|f| f.from_ms)
        .min()
        .unwrap_or(first.from_ms);
    let to = files.iter().map(|f| f.to_ms).max().unwrap_or(last.to_ms);
    let rows: u64 = files.iter().map(|f| f.rows).sum();
    if rows > SORT_IN_MEMORY_ROWS {
        return compact_streaming(dir, table, files, from, to);
    }
    let mut schema: Option<SchemaRef> = None;
    let mut batches = Vec::new();
    for f in files {
        let (s, b) = read_file(&f.path)?;
        same_schema(&mut schema, s, &f.path)?;
        batches.extend(b);
    }
    let schema = schema.ok_or_else(|| StoreError::data(dir, "nothing to compact"))?;
    let batch = concat_batches(&schema, &batches).map_err(|e| StoreError::data(dir, e))?;
    write_file(dir, table, &batch, from, to)
}

fn same_schema(
    have: &mut Option<SchemaRef>,
    next: SchemaRef,
    path: &Path,
) -> Result<(), StoreError> {
    match have {
        Some(s) if *s != next => Err(StoreError::data(
            path,
            "schema differs from the files before it",
        )),
        Some(_) => Ok(()),
        None => {
            *have = Some(next);
            Ok(())
        }
    }
}

/// [`compact`] for large windows: one source file in memory at a time.
fn compact_streaming(
    dir: &Path,
    table: &str,
    files: &[FileEntry],
    from_ms: i64,
    to_ms: i64,
) -> Result<FileEntry, StoreError> {
    let (path, (rows, bytes)) = atomically(dir, table, from_ms, to_ms, |tmp| {
        let mut schema: Option<SchemaRef> = None;
        let mut writer: Option<ArrowWriter<File>> = None;
        let mut rows = 0u64;
        for f in files {
            let (s, batches) = read_file(&f.path)?;
            same_schema(&mut schema, s.clone(), &f.path)?;
            if writer.is_none() {
                let file = File::create(tmp).map_err(|e| StoreError::io(tmp, e))?;
                writer = Some(
                    ArrowWriter::try_new(file, s, Some(writer_properties()))
                        .map_err(|e| StoreError::data(tmp, e))?,
                );
            }
            if let Some(w) = writer.as_mut() {
                for b in &batches {
                    rows += b.num_rows() as u64;
                    w.write(b).map_err(|e| parquet_error(tmp, e))?;
                }
            }
        }
        let w = writer.ok_or_else(|| StoreError::data(dir, "nothing to compact"))?;
        Ok((rows, finish(tmp, w)?))
    })?;
    Ok(FileEntry {
        path,
        from_ms,
        to_ms,
        rows,
        bytes,
    })
}

/// What [`open_dir`] found.
#[derive(Debug, Default)]
pub struct Opened {
    pub tables: BTreeMap<String, TableFiles>,
    /// Files that could not be read, moved to `<dir>/damaged/`, with the reason.
    pub damaged: Vec<(PathBuf, String)>,
    /// Temporary files of writes a crash interrupted (deleted).
    pub interrupted: usize,
    /// Files a finished compaction had replaced (deleted).
    pub superseded: usize,
}

/// Reads what `dir` holds at start: every whole file is indexed, temporary files and
/// compacted-away files deleted, unreadable files moved aside (never served, never fatal).
pub fn open_dir(dir: &Path) -> Result<Opened, StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
    let mut out = Opened::default();
    let entries = std::fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))?;
    for entry in entries.flatten() {
        let folder = entry.path();
        let Some(table) = folder
            .file_name()
            .and_then(|n| n.to_str())
            .map(String::from)
        else {
            continue;
        };
        if !folder.is_dir() || table == "damaged" || !table.contains('.') {
            continue;
        }
        let mut files: Vec<(FileEntry, SchemaRef)> = Vec::new();
        let listing = std::fs::read_dir(&folder).map_err(|e| StoreError::io(&folder, e))?;
        for f in listing.flatten() {
            let path = f.path();
            let name = f.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") {
                let _ = std::fs::remove_file(&path);
                out.interrupted += 1;
                continue;
            }
            let Some((from_ms, to_ms)) = parse_name(&name) else {
                continue;
            };
            match inspect(&path) {
                Ok((schema, rows)) => {
                    let bytes = f.metadata().map(|m| m.len()).unwrap_or(0);
                    files.push((
                        FileEntry {
                            path,
                            from_ms,
                            to_ms,
                            rows,
                            bytes,
                        },
                        schema,
                    ));
                }
                Err(e) => {
                    let aside = move_aside(dir, &table, &path);
                    tracing::error!(file = %path.display(), moved_to = %aside.display(), error = %e, "damaged history file moved aside; it is not served");
                    out.damaged.push((aside, e.to_string()));
                }
            }
        }
        // Widest first among equal starts, so a merged file precedes what it replaced.
        files.sort_by_key(|(f, _)| (f.from_ms, -f.to_ms));
        let mut kept: Vec<(FileEntry, SchemaRef)> = Vec::new();
        for (f, s) in files {
            let inside = kept
                .iter()
                .any(|(k, _)| k.from_ms <= f.from_ms && f.to_ms <= k.to_ms);
            if inside {
                let _ = std::fs::remove_file(&f.path);
                out.superseded += 1;
            } else {
                kept.push((f, s));
            }
        }
        if let Some((_, schema)) = kept.last() {
            let schema = schema.clone();
            let files = kept.into_iter().map(|(f, _)| f).collect();
            out.tables.insert(table, TableFiles { schema, files });
        }
    }
    Ok(out)
}

fn move_aside(dir: &Path, table: &str, path: &Path) -> PathBuf {
    let damaged = dir.join("damaged");
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let to = damaged.join(format!("{table}-{name}"));
    let moved = std::fs::create_dir_all(&damaged).and_then(|_| std::fs::rename(path, &to));
    match moved {
        Ok(()) => to,
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "cannot move a damaged history file aside; it stays, unserved");
            path.to_path_buf()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, StringArray};

    fn live(machines: &[&str], value: f64) -> (SchemaRef, RecordBatch) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("machine_ip", DataType::Utf8, false),
            Field::new("load1", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(machines.to_vec())),
                Arc::new(Float64Array::from(vec![value; machines.len()])),
            ],
        )
        .expect("batch");
        (schema, batch)
    }

    #[test]
    fn written_files_are_sorted_by_machine_and_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let (schema, b) = live(&["10.0.0.2", "10.0.0.1"], 1.0);
        let stamped = stamp(&schema, &[b], 60_000, 7).expect("stamp");
        let f = write_file(dir.path(), "history.sys", &stamped, 60_000, 60_000).expect("write");
        assert_eq!(f.rows, 2);
        let (_, batches) = read_file(&f.path).expect("read");
        let ips = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("strings");
        assert_eq!(ips.value(0), "10.0.0.1");
        let opened = open_dir(dir.path()).expect("open");
        let t = &opened.tables["history.sys"];
        assert_eq!(t.files, vec![f]);
        assert_eq!(t.schema.field(2).name(), GENERATION_TIME);
    }

    #[test]
    fn a_crash_mid_compaction_serves_nothing_twice_and_damaged_files_go_aside() {
        let dir = tempfile::tempdir().expect("tmp");
        let (schema, b) = live(&["10.0.0.1"], 1.0);
        let mut files = Vec::new();
        for i in 0..3 {
            let at = 60_000 * (i + 1);
            let stamped = stamp(&schema, std::slice::from_ref(&b), at, i as u64).expect("stamp");
            files.push(write_file(dir.path(), "history.sys", &stamped, at, at).expect("write"));
        }
        // Compacted, but the sources were not deleted yet (the crash).
        let merged = compact(dir.path(), "history.sys", &files).expect("compact");
        assert_eq!(
            (merged.from_ms, merged.to_ms, merged.rows),
            (60_000, 180_000, 3)
        );
        // An interrupted write and a damaged file.
        let folder = dir.path().join("history.sys");
        std::fs::write(
            folder.join(".0000000240000-0000000240000.parquet.tmp"),
            b"half",
        )
        .expect("tmp");
        std::fs::write(
            folder.join("0000000300000-0000000300000.parquet"),
            b"PAR1 not really",
        )
        .expect("bad");
        let opened = open_dir(dir.path()).expect("open");
        assert_eq!(opened.tables["history.sys"].files, vec![merged]);
        assert_eq!(opened.tables["history.sys"].rows(), 3);
        assert_eq!(
            (opened.superseded, opened.interrupted, opened.damaged.len()),
            (3, 1, 1)
        );
        assert!(dir
            .path()
            .join("damaged/history.sys-0000000300000-0000000300000.parquet")
            .exists());
    }

    #[test]
    fn large_windows_are_compacted_streaming_with_every_row() {
        let dir = tempfile::tempdir().expect("tmp");
        let (schema, b) = live(&["10.0.0.2", "10.0.0.1"], 1.0);
        let files: Vec<FileEntry> = (1..=3)
            .map(|i| {
                let stamped =
                    stamp(&schema, std::slice::from_ref(&b), i * 1000, i as u64).expect("stamp");
                write_file(dir.path(), "history.sys", &stamped, i * 1000, i * 1000).expect("write")
            })
            .collect();
        let merged =
            compact_streaming(dir.path(), "history.sys", &files, 1000, 3000).expect("compact");
        assert_eq!((merged.rows, merged.from_ms, merged.to_ms), (6, 1000, 3000));
        let (_, batches) = read_file(&merged.path).expect("read");
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 6);
        let opened = open_dir(dir.path()).expect("open");
        assert_eq!(opened.tables["history.sys"].files, vec![merged]);
        assert_eq!(opened.superseded, 3);
    }

    #[test]
    fn history_columns_may_not_be_published() {
        let schema = Schema::new(vec![Field::new(GENERATION_TIME, DataType::Utf8, true)]);
        assert!(stamped_schema(&schema)
            .err()
            .unwrap_or_default()
            .contains("rename"));
    }
}

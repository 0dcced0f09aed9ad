//! The history writer: one thread of its own that encodes and writes Parquet files,
//! compacts closed windows and deletes files past retention. It is fed through a bounded
//! queue that is never waited on: a generation that finds the queue full is not kept
//! (counted; history reports itself paused), so a slow or full disk never delays sealing,
//! serving or queries.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use super::files::{compact, stamp, write_file, FileEntry, StoreError};
use super::status::HistoryShared;

/// Work for the writer.
pub enum Job {
    /// Keep the rows of one generation (a published table, or a report's answer).
    Write {
        /// `history.sys`, `report.hits`.
        table: String,
        /// The rows' own schema (the kept table adds the generation's time and id).
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        at_ms: i64,
        generation: u64,
    },
    /// Retention and compaction: `retention` per kept table, `now_ms` the clock.
    Maintain {
        retention: BTreeMap<String, Duration>,
        now_ms: i64,
    },
}

#[derive(Clone)]
pub struct Writer {
    tx: SyncSender<Job>,
    shared: Arc<HistoryShared>,
}

impl Writer {
    pub fn start(shared: Arc<HistoryShared>) -> std::io::Result<Writer> {
        let (tx, rx) = sync_channel(shared.config.queue);
        let s = shared.clone();
        std::thread::Builder::new()
            .name("query-history".into())
            .spawn(move || run(rx, s))?;
        Ok(Writer { tx, shared })
    }

    /// Queues `job` without waiting; false (counted, history paused) if the writer is behind.
    pub fn submit(&self, job: Job) -> bool {
        let write = matches!(job, Job::Write { .. });
        match self.tx.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) if write => {
                self.shared.lock().skipped += 1;
                self.shared.pause(format!(
                    "the history writer is behind ({} writes queued, [history] queue): the disk is slow",
                    self.shared.config.queue
                ));
                false
            }
            Err(TrySendError::Full(_)) => false,
            Err(TrySendError::Disconnected(_)) => {
                self.shared.pause("the history writer stopped".into());
                false
            }
        }
    }
}

/// The writer's nice level: under load, queries and sealing get the cores first, and
/// history falls behind (and skips) rather than slowing them.
const NICE: i32 = 10;

fn run(rx: Receiver<Job>, shared: Arc<HistoryShared>) {
    crate::sql::lower_priority(NICE);
    let mut worker = Worker {
        shared,
        doomed: Vec::new(),
    };
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(Job::Write {
                table,
                schema,
                batches,
                at_ms,
                generation,
            }) => worker.write(&table, &schema, &batches, at_ms, generation),
            Ok(Job::Maintain { retention, now_ms }) => worker.maintain(&retention, now_ms),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        worker.delete_due();
    }
}

struct Worker {
    shared: Arc<HistoryShared>,
    /// Files replaced or expired, deleted once queries planned on them are over.
    doomed: Vec<(Instant, PathBuf)>,
}

impl Worker {
    fn write(
        &mut self,
        table: &str,
        schema: &SchemaRef,
        batches: &[RecordBatch],
        at_ms: i64,
        generation: u64,
    ) {
        let shared = &self.shared;
        if let Some(why) = self.disk_full() {
            shared.lock().skipped += 1;
            shared.pause(why);
            return;
        }
        let started = Instant::now();
        let result = stamp(schema, batches, at_ms, generation)
            .map_err(|e| StoreError::Data {
                path: table.to_string(),
                message: e,
            })
            .and_then(|batch| {
                let file = write_file(&shared.config.dir, table, &batch, at_ms, at_ms)?;
                Ok((batch.schema(), file))
            });
        let took = started.elapsed().as_secs_f64();
        match result {
            Ok((stamped, file)) => {
                tracing::debug!(
                    table,
                    rows = file.rows,
                    bytes = file.bytes,
                    took,
                    "history written"
                );
                shared.index.add(table, stamped, file);
                {
                    let mut s = shared.lock();
                    s.writes += 1;
                    s.write_seconds += took;
                    s.table_errors.remove(table);
                }
                shared.resume();
            }
            // The disk failed: nothing can be kept until it recovers.
            Err(e @ StoreError::Io { .. }) => {
                {
                    let mut s = shared.lock();
                    s.write_failures += 1;
                    s.skipped += 1;
                }
                shared.pause(format!("writing history failed: {e}"));
            }
            // These rows cannot be kept (a column history adds itself, a type Parquet
            // cannot hold): that table's problem, not history's.
            Err(e) => {
                let mut s = shared.lock();
                s.write_failures += 1;
                s.skipped += 1;
                if s.table_errors.get(table) != Some(&e.to_string()) {
                    tracing::warn!(table, error = %e, "rows not kept in history");
                }
                s.table_errors.insert(table.to_string(), e.to_string());
            }
        }
    }

    /// Why no file should be written now: the cap on history's bytes or the file system's
    /// free space.
    fn disk_full(&self) -> Option<String> {
        let c = &self.shared.config;
        let used = self.shared.index.bytes();
        if c.max_disk_bytes > 0 && used >= c.max_disk_bytes {
            return Some(format!(
                "history holds {used} bytes, at its cap ([history] max_disk_bytes = {})",
                c.max_disk_bytes
            ));
        }
        match rustix::fs::statvfs(&c.dir) {
            Ok(st) => {
                let free = st.f_bavail.saturating_mul(st.f_frsize);
                (free < c.min_free_bytes).then(|| {
                    format!(
                        "{} has {free} bytes free, under [history] min_free_bytes = {}",
                        c.dir.display(),
                        c.min_free_bytes
                    )
                })
            }
            Err(e) => Some(format!("{}: {e}", c.dir.display())),
        }
    }

    fn maintain(&mut self, retention: &BTreeMap<String, Duration>, now_ms: i64) {
        let grace = self.shared.config.delete_grace;
        let window =
            i64::try_from(self.shared.config.compact_window.as_millis()).unwrap_or(i64::MAX);
        for (table, files) in self.shared.index.all() {
            // Tables no longer configured keep their files (removing a line deletes nothing).
            if let Some(keep) = retention.get(&table) {
                let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
                let expired: Vec<PathBuf> = files
                    .files
                    .iter()
                    .filter(|f| f.to_ms < now_ms.saturating_sub(keep_ms))
                    .map(|f| f.path.clone())
                    .collect();
                if !expired.is_empty() {
                    tracing::info!(
                        table,
                        files = expired.len(),
                        "history past retention deleted"
                    );
                    self.shared.index.remove(&table, &expired);
                    self.shared.lock().deleted_files += expired.len() as u64;
                    let at = Instant::now() + grace;
                    self.doomed.extend(expired.into_iter().map(|p| (at, p)));
                }
            }
            if let Some(group) = closed_window(&files.files, window) {
                self.compact(&table, group);
            }
        }
    }

    fn compact(&mut self, table: &str, group: Vec<FileEntry>) {
        let started = Instant::now();
        match compact(&self.shared.config.dir, table, &group) {
            Ok(merged) => {
                tracing::info!(table, files = group.len(), rows = merged.rows, bytes = merged.bytes, took = ?started.elapsed(), "history compacted");
                let replaced: Vec<PathBuf> = group.into_iter().map(|f| f.path).collect();
                self.shared.index.replace(table, &replaced, merged);
                self.shared.lock().compactions += 1;
                let at = Instant::now() + self.shared.config.delete_grace;
                self.doomed.extend(replaced.into_iter().map(|p| (at, p)));
            }
            Err(e) => {
                tracing::warn!(table, error = %e, "history compaction failed; the files stay as they are")
            }
        }
    }

    fn delete_due(&mut self) {
        let now = Instant::now();
        self.doomed.retain(|(at, path)| {
            if *at > now {
                return true;
            }
            if let Err(e) = std::fs::remove_file(path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(file = %path.display(), error = %e, "cannot delete a history file");
                }
            }
            false
        });
    }
}

/// The oldest window (of `window` ms) that is over (a file starts after it) and has more
/// than one file, all of whose files lie inside it.
pub fn closed_window(files: &[FileEntry], window: i64) -> Option<Vec<FileEntry>> {
    let latest = files.iter().map(|f| f.from_ms).max()?;
    let mut by_window: BTreeMap<i64, Vec<FileEntry>> = BTreeMap::new();
    for f in files {
        let w = f.from_ms.div_euclid(window);
        if f.to_ms.div_euclid(window) == w && latest.div_euclid(window) > w {
            by_window.entry(w).or_default().push(f.clone());
        }
    }
    by_window.into_values().find(|g| g.len() > 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(from: i64, to: i64) -> FileEntry {
        FileEntry {
            path: PathBuf::from(format!("{from}-{to}")),
            from_ms: from,
            to_ms: to,
            rows: 1,
            bytes: 1,
        }
    }

    #[test]
    fn only_closed_windows_with_several_files_are_compacted() {
        // Window 0..100 closed with three files; 100..200 still open (latest file in it).
        let files = vec![f(10, 10), f(20, 20), f(90, 90), f(110, 110), f(120, 120)];
        let g = closed_window(&files, 100).expect("a window");
        assert_eq!(
            g.iter().map(|f| f.from_ms).collect::<Vec<_>>(),
            vec![10, 20, 90]
        );
        // Already compacted: one file per window.
        assert!(closed_window(&[f(10, 90), f(110, 110)], 100).is_none());
        assert!(closed_window(&[f(10, 10), f(20, 20)], 100).is_none());
    }
}

#[cfg(test)]
mod queue_tests {
    use super::*;
    use crate::history::{HistoryConfig, HistoryIndex};

    #[test]
    fn a_writer_behind_skips_generations_and_pauses_history_instead_of_waiting() {
        let config: HistoryConfig =
            toml::from_str("dir = \"/nonexistent\"\nqueue = 1\n").expect("config");
        let shared = HistoryShared::new(config, Arc::new(HistoryIndex::default()));
        // A writer that takes nothing from its queue: the disk hangs.
        let (tx, _rx) = sync_channel(1);
        let writer = Writer {
            tx,
            shared: shared.clone(),
        };
        let job = || Job::Write {
            table: "history.sys".into(),
            schema: Arc::new(datafusion::arrow::datatypes::Schema::empty()),
            batches: Vec::new(),
            at_ms: 0,
            generation: 1,
        };
        assert!(writer.submit(job()));
        assert!(!writer.submit(job()), "the second one finds the queue full");
        let s = shared.lock();
        assert_eq!(s.skipped, 1);
        assert!(
            s.paused.as_deref().unwrap_or("").contains("behind"),
            "{:?}",
            s.paused
        );
    }
}

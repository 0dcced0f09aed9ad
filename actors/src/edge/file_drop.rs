//! The file-drop publisher: `T.csv`, `T.tsv` (a header line, then rows) or `T.jsonl` (one
//! JSON object per line) in a watched directory is published as table T every interval.
//!
//! A scanner task looks at the directory every `file_drop_poll`, off the sealer: the sealer
//! only copies out what the scanner last made of each file, so no file can delay a seal.
//! A file is published only once it is complete: names starting with `.` or ending in
//! `.tmp` are ignored (write there, then rename), and a file is read only when its
//! modification time and size are the same at two looks in a row. It is opened without
//! following symlinks and without blocking (a FIFO never stalls), and read only if it is a
//! regular file owned by the agent's user, root or a listed owner, and not over the size
//! cap; reading and parsing run on blocking threads with a deadline. A refused file keeps
//! its last good copy, and its error names the file, line and column but never quotes the
//! file's content (errors are shown by `GET /tables`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use datafusion::arrow::record_batch::RecordBatch;
use tokio::task::JoinHandle;

use super::{Collected, LocalPublisher, Published};
use crate::generation::SourceStamp;
use crate::sql::SqlPool;
use crate::table::{parse_text_table, SchemaRegistry};

/// `[edge] file_drop*`.
#[derive(Debug, Clone)]
pub struct FileDropConfig {
    pub dir: PathBuf,
    pub poll: Duration,
    pub max_bytes: u64,
    pub read_timeout: Duration,
    /// Owners besides the agent's user and root.
    pub owners: Vec<u32>,
}

/// Modification time, size and inode: a file is "unchanged" while all three are.
type Stamp = (SystemTime, u64, u64);

struct Good {
    stamp: Stamp,
    batch: RecordBatch,
}

/// What the scanner last made of each file; the sealer copies it out.
#[derive(Default)]
struct Shelf {
    good: BTreeMap<PathBuf, Good>,
    errors: BTreeMap<PathBuf, String>,
}

type SharedShelf = Arc<Mutex<Shelf>>;

fn lock(shelf: &SharedShelf) -> std::sync::MutexGuard<'_, Shelf> {
    // Only whole entries are swapped in or out.
    shelf.lock().unwrap_or_else(|p| p.into_inner())
}

/// The sealer's side: never touches the filesystem.
pub struct FileDropPublisher {
    machine_ip: String,
    shelf: SharedShelf,
}

impl FileDropPublisher {
    /// Starts the directory's scanner on the pool, under the node's supervisor as
    /// `file_drop` (what it has seen survives a restart), and returns its publisher.
    pub fn start(
        cfg: FileDropConfig,
        machine_ip: String,
        schemas: SchemaRegistry,
        pool: &SqlPool,
        supervisor: &crate::node::supervisor::Supervisor,
    ) -> Self {
        let (publisher, scanner) = Self::new(cfg, machine_ip, schemas);
        let scanner = Arc::new(tokio::sync::Mutex::new(scanner));
        supervisor.spawn_task("file_drop", pool, move || {
            let scanner = scanner.clone();
            async move {
                let mut scanner = scanner.lock().await;
                loop {
                    scanner.scan().await;
                    tokio::time::sleep(scanner.cfg.poll).await;
                }
            }
        });
        publisher
    }

    /// The publisher and its scanner, not yet running.
    fn new(cfg: FileDropConfig, machine_ip: String, schemas: SchemaRegistry) -> (Self, Scanner) {
        let shelf = SharedShelf::default();
        let mut owners: BTreeSet<u32> = cfg.owners.iter().copied().collect();
        owners.insert(0);
        // The agent's own user: /proc/self belongs to the process's effective uid.
        if let Ok(me) = std::fs::metadata("/proc/self") {
            owners.insert(me.uid());
        }
        let scanner = Scanner {
            cfg,
            machine_ip: machine_ip.clone(),
            schemas,
            owners: Arc::new(owners),
            shelf: shelf.clone(),
            looks: BTreeMap::new(),
        };
        (FileDropPublisher { machine_ip, shelf }, scanner)
    }
}

/// What the scanner knows of one file between looks.
struct Look {
    stamp: Stamp,
    /// The stamp of the content last published or refused: not read again.
    done: Option<Stamp>,
    /// A read past its deadline, still running: the file is not read again until it ends.
    reading: Option<JoinHandle<Result<RecordBatch, String>>>,
}

/// A directory entry that names a table: what `lstat` said of it.
struct Entry {
    path: PathBuf,
    table: String,
    ext: String,
    meta: std::fs::Metadata,
}

struct Scanner {
    cfg: FileDropConfig,
    machine_ip: String,
    schemas: SchemaRegistry,
    owners: Arc<BTreeSet<u32>>,
    shelf: SharedShelf,
    looks: BTreeMap<PathBuf, Look>,
}

/// Lists the drop directory without following links or opening anything.
fn list(dir: &Path) -> std::io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // Files being written: rename them into place when complete.
        if name.starts_with('.') || name.ends_with(".tmp") {
            continue;
        }
        let Some((table, ext)) = name.rsplit_once('.') else {
            continue;
        };
        if !matches!(ext, "csv" | "tsv" | "jsonl") {
            continue;
        }
        let path = entry.path();
        // lstat: a symlink is seen as one, a FIFO is not opened.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        out.push(Entry {
            path,
            table: table.to_string(),
            ext: ext.to_string(),
            meta,
        });
    }
    Ok(out)
}

fn stamp(meta: &std::fs::Metadata) -> Stamp {
    (
        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        meta.len(),
        meta.ino(),
    )
}

/// Whether a file may be read, from its metadata (`lstat` before, `fstat` after opening).
fn admissible(meta: &std::fs::Metadata, owners: &BTreeSet<u32>, max: u64) -> Result<(), String> {
    let ty = meta.file_type();
    if ty.is_symlink() {
        return Err("a symbolic link: not followed (write the file here and rename it)".into());
    }
    if !ty.is_file() {
        return Err("not a regular file (a FIFO, socket, device or directory): not read".into());
    }
    if !owners.contains(&meta.uid()) {
        return Err(format!(
            "owned by uid {}, not the agent's user, root or one of [edge] file_drop_owners",
            meta.uid()
        ));
    }
    if meta.len() > max {
        return Err(format!(
            "{} bytes, over the limit of {max} ([edge] file_drop_max_bytes): not read",
            meta.len()
        ));
    }
    Ok(())
}

impl Scanner {
    /// One look at the directory: reads what changed and has settled.
    async fn scan(&mut self) {
        let dir = self.cfg.dir.clone();
        let deadline = self.cfg.read_timeout;
        let listed =
            tokio::time::timeout(deadline, tokio::task::spawn_blocking(move || list(&dir))).await;
        let dir_key = self.cfg.dir.clone();
        let entries = match listed {
            Ok(Ok(Ok(entries))) => {
                lock(&self.shelf).errors.remove(&dir_key);
                entries
            }
            Ok(Ok(Err(e))) => {
                let m = format!("cannot read the drop directory: {e}");
                lock(&self.shelf).errors.insert(dir_key, m);
                return;
            }
            Ok(Err(_)) | Err(_) => {
                let m = format!(
                    "listing the drop directory took longer than {deadline:?} \
                     ([edge] file_drop_read_timeout)"
                );
                lock(&self.shelf).errors.insert(dir_key, m);
                return;
            }
        };
        let mut seen = BTreeSet::new();
        for e in entries {
            seen.insert(e.path.clone());
            self.look_at(e).await;
        }
        // Removed files stop being published.
        self.looks.retain(|p, _| seen.contains(p));
        let mut shelf = lock(&self.shelf);
        shelf.good.retain(|p, _| seen.contains(p));
        let dir = &self.cfg.dir;
        shelf.errors.retain(|p, _| p == dir || seen.contains(p));
    }

    async fn look_at(&mut self, e: Entry) {
        let stamp = stamp(&e.meta);
        let look = match self.looks.get_mut(&e.path) {
            Some(l) if l.stamp == stamp => l,
            // New or changed since the last look: wait until it stays the same.
            _ => {
                let done = self.looks.get(&e.path).and_then(|l| l.done);
                let reading = self.looks.remove(&e.path).and_then(|l| l.reading);
                self.looks.insert(
                    e.path,
                    Look {
                        stamp,
                        done,
                        reading,
                    },
                );
                return;
            }
        };
        if look.done == Some(stamp) {
            return;
        }
        if look.reading.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        look.reading = None;
        let result = match admissible(&e.meta, &self.owners, self.cfg.max_bytes) {
            Err(m) => Err(m),
            Ok(()) => {
                let Some(def) = self.schemas.get(&e.table).cloned() else {
                    let m = format!("no schema for table '{}'", e.table);
                    look.done = Some(stamp);
                    lock(&self.shelf).errors.insert(e.path, m);
                    return;
                };
                let (path, ext, ip) = (e.path.clone(), e.ext.clone(), self.machine_ip.clone());
                let (owners, max) = (self.owners.clone(), self.cfg.max_bytes);
                let mut handle = tokio::task::spawn_blocking(move || {
                    read_file(&path, &owners, max)
                        .and_then(|bytes| parse_text_table(&bytes, &def, &ext, Some(&ip)))
                });
                match tokio::time::timeout(self.cfg.read_timeout, &mut handle).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(_)) => Err("reading the file failed (a panic); not published".into()),
                    Err(_) => {
                        // Tried again once this read ends and the file is still unchanged.
                        look.reading = Some(handle);
                        let t = self.cfg.read_timeout;
                        let m = format!(
                            "reading took longer than {t:?} ([edge] file_drop_read_timeout); \
                             the last good copy stays"
                        );
                        tracing::warn!(file = %e.path.display(), "{m}");
                        lock(&self.shelf).errors.insert(e.path, m);
                        return;
                    }
                }
            }
        };
        look.done = Some(stamp);
        let mut shelf = lock(&self.shelf);
        match result {
            Ok(batch) => {
                tracing::info!(file = %e.path.display(), rows = batch.num_rows(), "dropped file published");
                shelf.errors.remove(&e.path);
                shelf.good.insert(e.path, Good { stamp, batch });
            }
            Err(m) => {
                tracing::warn!(file = %e.path.display(), error = %m, "dropped file refused; last good copy kept");
                shelf.errors.insert(e.path, m);
            }
        }
    }
}

/// Opens without following a symlink and without blocking, checks what was opened, and
/// reads at most `max` bytes.
fn read_file(path: &Path, owners: &BTreeSet<u32>, max: u64) -> Result<Vec<u8>, String> {
    use rustix::fs::OFlags;
    let flags = (OFlags::NOFOLLOW | OFlags::NONBLOCK).bits();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags as i32)
        .open(path)
        .map_err(|e| format!("cannot open: {e}"))?;
    // What was opened, which may not be what was listed.
    let meta = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    admissible(&meta, owners, max)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(format!(
            "grew over the limit of {max} bytes ([edge] file_drop_max_bytes) while read"
        ));
    }
    Ok(bytes)
}

impl LocalPublisher for FileDropPublisher {
    fn name(&self) -> &str {
        "file-drop"
    }

    fn collect(&mut self, _now: SystemTime) -> Collected {
        let shelf = lock(&self.shelf);
        let tables = shelf
            .good
            .iter()
            .filter_map(|(path, g)| {
                let file = path.file_name()?.to_str()?.to_string();
                let (table, _) = file.rsplit_once('.')?;
                let source = format!("{}/file:{file}", self.machine_ip);
                Some(Published::new(
                    table,
                    source.clone(),
                    g.batch.clone(),
                    vec![SourceStamp {
                        source: source.into(),
                        published_at: g.stamp.0,
                    }],
                ))
            })
            .collect();
        let errors = shelf
            .errors
            .iter()
            .map(|(p, e)| (p.display().to_string(), e.clone()))
            .collect();
        Collected { tables, errors }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(max_bytes: u64) -> (tempfile::TempDir, FileDropPublisher, Scanner) {
        let dir = tempfile::tempdir().expect("tempdir");
        let schemas = crate::table::load_schema_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas"),
        )
        .expect("schemas");
        let cfg = FileDropConfig {
            dir: dir.path().to_path_buf(),
            poll: Duration::from_millis(10),
            max_bytes,
            read_timeout: Duration::from_secs(10),
            owners: Vec::new(),
        };
        let (p, s) = FileDropPublisher::new(cfg, "10.0.0.9".into(), schemas);
        (dir, p, s)
    }

    /// Two looks: the second sees every file unchanged and reads it.
    async fn settle(s: &mut Scanner) {
        s.scan().await;
        s.scan().await;
    }

    fn rows(out: &Collected, t: &str) -> Option<usize> {
        out.tables
            .iter()
            .find(|x| x.table == t)
            .map(|x| x.part.batch.num_rows())
    }

    fn error<'a>(out: &'a Collected, file: &str) -> Option<&'a str> {
        out.errors
            .iter()
            .find(|(f, _)| f.ends_with(file))
            .map(|(_, e)| e.as_str())
    }

    #[tokio::test]
    async fn publishes_drops_and_keeps_last_good() {
        let (dir, mut p, mut s) = setup(1 << 20);
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
        // First look: seen, not read yet (it may still be being written).
        s.scan().await;
        assert_eq!(rows(&p.collect(SystemTime::now()), "machinerole"), None);
        s.scan().await;
        let out = p.collect(SystemTime::now());
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(rows(&out, "machinerole"), Some(2));
        assert_eq!(rows(&out, "load_info"), Some(1));

        // Broken: reported by line and column without quoting; last good copy kept.
        std::fs::write(
            dir.path().join("load_info.jsonl"),
            "\n{\"georegion\":1,\"hits\":5,\"bytes\":9,\"errors\":0}\n{\"georegion\":\"SECRET\"}\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("nosuch.tsv"), "a\n1\n").expect("write");
        settle(&mut s).await;
        let out = p.collect(SystemTime::now());
        assert_eq!(rows(&out, "load_info"), Some(1));
        assert_eq!(out.errors.len(), 2, "{:?}", out.errors);
        let e = error(&out, "load_info.jsonl").expect("error");
        assert_eq!(e, "line 3: column 'georegion': not a valid int64");

        std::fs::remove_file(dir.path().join("machinerole.csv")).expect("rm");
        s.scan().await;
        let out = p.collect(SystemTime::now());
        assert_eq!(rows(&out, "machinerole"), None);
    }

    #[tokio::test]
    async fn errors_never_quote_the_file() {
        let (dir, mut p, mut s) = setup(1 << 20);
        for (file, text, expected) in [
            (
                "machinerole.csv",
                "SECRET-HEADER\nx\n",
                "line 1, field 1: not a column of table machinerole",
            ),
            (
                "load_info.csv",
                "georegion,hits,bytes,errors\n1,2,3,4\n\n1,SECRET,3,4\n",
                "line 4: column 'hits': not a valid int64",
            ),
            (
                "sys.jsonl",
                "{\"SECRET\": 1}\n",
                "line 1: a field that is not a column of table sys",
            ),
            (
                "processes.jsonl",
                "root:SECRET:0:0\n",
                "line 1, column 1: not a JSON object",
            ),
            ("filesystem.csv", "a,b\n\u{fffd}\n", ""),
        ] {
            std::fs::write(dir.path().join(file), text).expect("write");
            settle(&mut s).await;
            let out = p.collect(SystemTime::now());
            let e = error(&out, file).expect("refused");
            assert!(!e.contains("SECRET"), "{e}");
            if !expected.is_empty() {
                assert_eq!(e, expected);
            }
        }
        std::fs::write(dir.path().join("sys.jsonl"), b"{}\n\xff\n").expect("write");
        settle(&mut s).await;
        let out = p.collect(SystemTime::now());
        assert_eq!(error(&out, "sys.jsonl"), Some("line 2: not UTF-8"));
    }

    #[tokio::test]
    async fn symlinks_fifos_and_oversized_files_are_not_read() {
        let (dir, mut p, mut s) = setup(64);
        let d = dir.path();
        // A symlink to a private file.
        let secret = d.join("secret");
        std::fs::write(&secret, "role\nSECRET\n").expect("write");
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        std::os::unix::fs::symlink(&secret, d.join("machinerole.csv")).expect("symlink");
        // A FIFO nobody writes to: opening it for reading would block forever.
        let fifo = d.join("load_info.csv");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        // Over the 64-byte cap.
        std::fs::write(
            d.join("sys.csv"),
            format!("hostname\n{}\n", "h".repeat(100)),
        )
        .expect("write");
        tokio::time::timeout(Duration::from_secs(5), settle(&mut s))
            .await
            .expect("a FIFO never stalls the scanner");
        let out = p.collect(SystemTime::now());
        assert!(out.tables.is_empty());
        let text = format!("{:?}", out.errors);
        assert!(!text.contains("SECRET"), "{text}");
        assert!(
            error(&out, "machinerole.csv").is_some_and(|e| e.contains("symbolic link")),
            "{text}"
        );
        assert!(
            error(&out, "load_info.csv").is_some_and(|e| e.contains("not a regular file")),
            "{text}"
        );
        assert!(
            error(&out, "sys.csv").is_some_and(|e| e.contains("file_drop_max_bytes")),
            "{text}"
        );
        // Opened directly (as if swapped in after the look), a symlink is still refused.
        let e = read_file(&d.join("machinerole.csv"), &s.owners, 64).expect_err("refused");
        assert!(!e.contains("SECRET"), "{e}");
        let e = read_file(&fifo, &s.owners, 64).expect_err("refused");
        assert!(e.contains("not a regular file"), "{e}");
        // Foreign owners are refused.
        let meta = std::fs::metadata(&secret).expect("meta");
        let nobody = BTreeSet::from([meta.uid().wrapping_add(1)]);
        assert!(admissible(&meta, &nobody, 64).is_err_and(|e| e.contains("file_drop_owners")));
    }

    #[tokio::test]
    async fn only_complete_files_are_published() {
        let (dir, mut p, mut s) = setup(1 << 20);
        let d = dir.path();
        // Written under a dot-name or a .tmp suffix: ignored until renamed.
        std::fs::write(d.join(".machinerole.csv"), "role\nweb\n").expect("write");
        std::fs::write(d.join("machinerole.csv.tmp"), "role\nweb\n").expect("write");
        settle(&mut s).await;
        let out = p.collect(SystemTime::now());
        assert!(
            out.tables.is_empty() && out.errors.is_empty(),
            "{:?}",
            out.errors
        );
        std::fs::rename(d.join(".machinerole.csv"), d.join("machinerole.csv")).expect("mv");
        settle(&mut s).await;
        assert_eq!(rows(&p.collect(SystemTime::now()), "machinerole"), Some(1));

        // Written in place: read only once unchanged between two looks.
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(d.join("machinerole.csv"))
            .expect("open");
        for i in 0..5 {
            f.write_all(format!("half-{i}\n").as_bytes())
                .expect("write");
            f.flush().expect("flush");
            s.scan().await;
            assert_eq!(rows(&p.collect(SystemTime::now()), "machinerole"), Some(1));
            // Make sure the next write changes the modification time.
            std::thread::sleep(Duration::from_millis(5));
        }
        s.scan().await;
        assert_eq!(rows(&p.collect(SystemTime::now()), "machinerole"), Some(6));
    }

    #[tokio::test]
    async fn a_slow_read_keeps_the_last_good_copy() {
        let (dir, mut p, mut s) = setup(1 << 20);
        std::fs::write(dir.path().join("machinerole.csv"), "role\nweb\n").expect("write");
        settle(&mut s).await;
        let body: String = (0..20_000).map(|i| format!("r{i}\n")).collect();
        std::fs::write(dir.path().join("machinerole.csv"), format!("role\n{body}")).expect("write");
        s.cfg.read_timeout = Duration::from_nanos(1);
        // A look may itself time out listing the directory (a loaded machine): look again
        // until the read has been tried.
        for _ in 0..100 {
            s.scan().await;
            if error(&p.collect(SystemTime::now()), "machinerole.csv").is_some() {
                break;
            }
        }
        let out = p.collect(SystemTime::now());
        assert_eq!(rows(&out, "machinerole"), Some(1), "last good copy");
        assert!(
            error(&out, "machinerole.csv").is_some_and(|e| e.contains("file_drop_read_timeout")),
            "{:?}",
            out.errors
        );
        // Given time, the next look reads it.
        s.cfg.read_timeout = Duration::from_secs(10);
        for _ in 0..100 {
            s.scan().await;
            if rows(&p.collect(SystemTime::now()), "machinerole") == Some(20_000) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let out = p.collect(SystemTime::now());
        assert_eq!(rows(&out, "machinerole"), Some(20_000));
        assert!(out.errors.is_empty(), "{:?}", out.errors);
    }
}

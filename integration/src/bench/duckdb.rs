//! DuckDB, the benchmarks' reference engine, run from the bench venv's Python
//! (`make bench-venv`): a script run once for all its answers (`run_duckdb_script`), or one
//! kept running that times a query when asked (`DuckDbServer`), so that a benchmark can
//! time DuckDB right beside its own runs of the same query.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{Map, Value};

use crate::repo;

/// Runs the DuckDB side of a benchmark, `bench/<script>` with `args`, in the bench venv's
/// `python`, and returns DuckDB's version and its `queries` object (each query's
/// `median_ms`, `rows`, or `error`); `Err` says why it could not run.
pub fn run_duckdb_script(
    python: &Path,
    script: &str,
    args: &[&std::ffi::OsStr],
) -> Result<(String, Map<String, Value>), String> {
    let out = script_command(python, script, args)
        .output()
        .map_err(|e| cannot_run(python, e))?;
    if !out.status.success() {
        return Err(format!("{} exited with {}", python.display(), out.status));
    }
    let mut v: Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("its output: {e}"))?;
    let queries = match v["queries"].take() {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    Ok((version_of(&v), queries))
}

/// `bench/<script>` kept running: it loads its data, says its DuckDB version in one JSON
/// line, then answers each query name written to it with one JSON line (`median_ms` and
/// `rows`, or `error`). Killed when dropped.
pub struct DuckDbServer {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
    version: String,
}

impl DuckDbServer {
    /// Starts the script and waits until its data is loaded.
    pub fn start(
        python: &Path,
        script: &str,
        args: &[&std::ffi::OsStr],
    ) -> Result<DuckDbServer, String> {
        let mut child = script_command(python, script, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| cannot_run(python, e))?;
        let (Some(to), Some(from)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err("no pipes to the DuckDB script".into());
        };
        let mut server = DuckDbServer {
            child,
            to,
            from: BufReader::new(from),
            version: String::new(),
        };
        let hello = server.line()?;
        server.version = version_of(&hello);
        Ok(server)
    }

    /// DuckDB's version, as the script reported it.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Times the query named `name` (of the script's queries file): its answer line.
    pub fn time(&mut self, name: &str) -> Result<Value, String> {
        writeln!(self.to, "{name}")
            .and_then(|()| self.to.flush())
            .map_err(|e| format!("cannot ask the DuckDB script: {e}"))?;
        self.line()
    }

    fn line(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        match self.from.read_line(&mut line) {
            Ok(0) => Err(match self.child.try_wait() {
                Ok(Some(status)) => format!("the DuckDB script exited with {status}"),
                _ => "the DuckDB script closed its output".into(),
            }),
            Ok(_) => serde_json::from_str(&line).map_err(|e| format!("its output: {e}")),
            Err(e) => Err(format!("cannot read the DuckDB script: {e}")),
        }
    }
}

impl Drop for DuckDbServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `python bench/<script> <args>`, its errors to ours.
fn script_command(python: &Path, script: &str, args: &[&std::ffi::OsStr]) -> Command {
    let mut c = Command::new(python);
    c.arg(repo().join("bench").join(script))
        .args(args)
        .stderr(Stdio::inherit());
    c
}

fn version_of(v: &Value) -> String {
    v["duckdb_version"]
        .as_str()
        .unwrap_or("unknown")
        .to_string()
}

fn cannot_run(python: &Path, e: std::io::Error) -> String {
    format!(
        "cannot run {} ({e}); `make bench-venv` creates it",
        python.display()
    )
}

//! The pool SQL (and other CPU-heavy work: sealing, merging, decoding) runs on, so that
//! actor mailboxes and HTTP workers stay responsive while queries compute.

use std::future::Future;
use std::sync::Arc;

use tokio::runtime::{Builder, Runtime};
use tokio::task::JoinHandle;

use crate::error::QueryError;

#[derive(Clone)]
pub struct SqlPool {
    runtime: Arc<PoolRuntime>,
    threads: usize,
}

/// The runtime, shut down without waiting when the last handle goes: a node's handle may
/// be dropped inside another runtime (the demo drops its proxies' handles on the actix
/// system), where a blocking shutdown would panic.
struct PoolRuntime(Option<Runtime>);

impl PoolRuntime {
    fn get(&self) -> &Runtime {
        // Only `drop` takes the runtime out.
        self.0.as_ref().expect("the runtime lives until drop")
    }
}

impl Drop for PoolRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl SqlPool {
    /// `threads == 0` sizes the pool to the machine's cores.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        Self::named(threads, "query-compute")
    }

    /// A pool whose threads are called `name` (queries run on a pool of their own, so
    /// sealing and links never wait behind them). Threads get stacks sized for what the
    /// SQL front door admits (`sql::STACK_BYTES`): views are planned here too.
    pub fn named(threads: usize, name: &str) -> std::io::Result<Self> {
        Self::niced(threads, name, 0)
    }

    /// Like [`SqlPool::named`], with threads at nice level `nice` (0-19, Linux): the
    /// kernel gives them that much less of a busy core than threads at 0, preemptively.
    pub fn niced(threads: usize, name: &str, nice: i32) -> std::io::Result<Self> {
        let threads = if threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        } else {
            threads
        };
        let mut builder = Builder::new_multi_thread();
        builder
            .worker_threads(threads)
            .thread_name(name)
            .thread_stack_size(super::front_door::STACK_BYTES)
            .enable_all();
        if nice != 0 {
            builder.on_thread_start(move || lower_priority(nice));
        }
        let runtime = builder.build()?;
        Ok(SqlPool {
            runtime: Arc::new(PoolRuntime(Some(runtime))),
            threads,
        })
    }

    /// Worker threads: also how many partitions a query's scans are split into.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `fut` on the pool. Dropping the returned future cancels the work, so a client
    /// that hangs up does not leave its query running.
    pub async fn run<T, F>(&self, fut: F) -> Result<T, QueryError>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let mut guard = AbortOnDrop(self.runtime.get().spawn(fut));
        let result = (&mut guard.0).await;
        result.map_err(|e| {
            if e.is_panic() {
                QueryError::Internal("the computation panicked; it has been logged".into())
            } else {
                QueryError::Internal("the computation was cancelled".into())
            }
        })
    }

    pub fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.get().spawn(fut)
    }
}

/// Lowers the calling thread's priority to nice level `nice`. Best effort: a thread that
/// keeps its priority still works, only without the preference. One of the workspace's two
/// `unsafe` calls (the other is `heap::trim`): the safe wrappers (rustix's `process` feature) would rebuild DataFusion.
#[allow(unsafe_code)]
pub(crate) fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority only reads its integer arguments; on Linux, PRIO_PROCESS
        // with who = 0 sets the calling thread's nice value (it is per thread).
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
        if rc != 0 {
            tracing::warn!(
                nice,
                error = %std::io::Error::last_os_error(),
                "cannot lower a thread's priority"
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// A task that is aborted when its handle is dropped: work that must not outlive its owner.
pub(crate) struct AbortOnDrop<T>(pub(crate) JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nice level of the calling thread, from /proc (field 19 of its stat line).
    #[cfg(target_os = "linux")]
    fn own_nice() -> Option<i32> {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
        // The command name, in parentheses, may hold spaces: count fields after it.
        let rest = &stat[stat.rfind(')')? + 2..];
        rest.split_whitespace().nth(16)?.parse().ok()
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_niced_pools_threads_run_at_its_nice_level() {
        let plain = SqlPool::named(1, "test-plain").expect("pool");
        let niced = SqlPool::niced(1, "test-niced", 7).expect("pool");
        let base = plain.run(async { own_nice() }).await.expect("ran");
        let lowered = niced.run(async { own_nice() }).await.expect("ran");
        // Relative to the test's own level (a CI runner may itself run niced).
        let base = base.expect("own nice level");
        assert_eq!(lowered, Some((base + 7).min(19)));
    }
}

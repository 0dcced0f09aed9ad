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
        let threads = if threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        } else {
            threads
        };
        let runtime = Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(name)
            .thread_stack_size(super::front_door::STACK_BYTES)
            .enable_all()
            .build()?;
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

/// A task that is aborted when its handle is dropped: work that must not outlive its owner.
pub(crate) struct AbortOnDrop<T>(pub(crate) JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

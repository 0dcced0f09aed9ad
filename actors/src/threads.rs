//! One large piece of work shared among threads, one per core: a link frame's tables
//! encoded or applied, a table's coalesced copies made for SQL.
//!
//! A frame's tables are independent of one another once the link's source times are set,
//! so a frame holding a whole fleet (a SQL node's first complete generation from its TLA:
//! 420,000 parts at 70,000 machines) need not wait for one thread to go through them all;
//! nor need that generation's copies for SQL (a batch per 8,192 rows, from 70,000 parts
//! per table). Small work (a cluster's frame, of which a TLA decodes a thousand at once on
//! its pool) stays on the calling thread: there the callers themselves keep every core busy.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Below this much weight in all (parts, or part-equivalents where a weight counts bytes
/// too), the items are done one after another on the calling thread (starting threads
/// would cost more than it saves).
pub(crate) const PARALLEL_FROM_PARTS: usize = 20_000;

/// The name of the threads that share the items with the calling one.
const THREAD_NAME: &str = "query-split";

/// Threads started by [`map_weighted`] now running, across the process: at most one fewer
/// than the cores. Several large pieces of work at once (a TLA sending full copies to two
/// SQL nodes, a frame applied while a snapshot's copies are made) would otherwise start a
/// thread per core each, more threads than cores, each piece slower and none sooner.
static HELPERS: AtomicUsize = AtomicUsize::new(0);

/// `f` of every item, in the items' order. With `weight` (parts) of all items at least
/// `PARALLEL_FROM_PARTS`, the items are shared among up to as many threads as there are
/// cores (largest first, each to the thread with the least work so far), the calling thread
/// being one of them, as far as other calls have not taken the other cores' threads
/// ([`HELPERS`]).
pub(crate) fn map_weighted<T, R>(
    items: Vec<T>,
    weight: impl Fn(&T) -> usize,
    f: impl Fn(T) -> R + Sync,
) -> Vec<R>
where
    T: Send,
    R: Send,
{
    map_weighted_in(&HELPERS, items, weight, f)
}

/// Up to `wanted` helpers out of `budget` (threads running, at most one fewer than the
/// cores), given back when dropped.
struct Helpers<'a> {
    budget: &'a AtomicUsize,
    taken: usize,
}

impl<'a> Helpers<'a> {
    fn take(budget: &'a AtomicUsize, wanted: usize, cores: usize) -> Self {
        let limit = cores.saturating_sub(1);
        let mut taken = 0;
        let _ = budget.fetch_update(Ordering::AcqRel, Ordering::Acquire, |running| {
            taken = wanted.min(limit.saturating_sub(running));
            Some(running + taken)
        });
        Helpers { budget, taken }
    }
}

impl Drop for Helpers<'_> {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.taken, Ordering::AcqRel);
    }
}

fn map_weighted_in<T, R>(
    budget: &AtomicUsize,
    items: Vec<T>,
    weight: impl Fn(&T) -> usize,
    f: impl Fn(T) -> R + Sync,
) -> Vec<R>
where
    T: Send,
    R: Send,
{
    let total: usize = items.iter().map(&weight).sum();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if total < PARALLEL_FROM_PARTS {
        return items.into_iter().map(f).collect();
    }
    // One item, one core, or every helper taken by other calls: this thread alone.
    let helpers = Helpers::take(budget, cores.min(items.len()).saturating_sub(1), cores);
    if helpers.taken == 0 {
        return items.into_iter().map(f).collect();
    }
    let threads = 1 + helpers.taken;
    // Longest processing time first: each item, heaviest first, to the least loaded thread.
    let mut order: Vec<(usize, usize)> = items.iter().map(&weight).enumerate().collect();
    order.sort_by_key(|&(_, w)| std::cmp::Reverse(w));
    let mut load = vec![0usize; threads];
    let mut thread_of = vec![0usize; items.len()];
    for (i, w) in order {
        let t = (0..threads).min_by_key(|&t| load[t]).unwrap_or(0);
        load[t] += w;
        thread_of[i] = t;
    }
    let mut bins: Vec<Vec<(usize, T)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        bins[thread_of[i]].push((i, item));
    }
    let f = &f;
    let run = move |bin: Vec<(usize, T)>| -> Vec<(usize, R)> {
        bin.into_iter().map(|(i, item)| (i, f(item))).collect()
    };
    let mut done: Vec<(usize, R)> = std::thread::scope(|s| {
        let mut bins = bins.into_iter();
        let mut here = bins.next().unwrap_or_default();
        let mut others = Vec::new();
        for bin in bins {
            // The thread gets its tables once it runs: one that cannot be started (a
            // process at its thread limit) leaves them to this one, slower but no error.
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(usize, T)>>(1);
            // Stacks as the compute pool's, whose thread would otherwise do this work.
            let started = std::thread::Builder::new()
                .name(THREAD_NAME.into())
                .stack_size(crate::sql::STACK_BYTES)
                .spawn_scoped(s, move || run(rx.recv().unwrap_or_default()));
            match started {
                Ok(h) => {
                    if let Err(std::sync::mpsc::SendError(bin)) = tx.send(bin) {
                        here.extend(bin);
                    }
                    others.push(h);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "no thread for a frame's tables; this one does them");
                    here.extend(bin);
                }
            }
        }
        let mut done = run(here);
        for h in others {
            // A panic on another thread is this call's panic, as if it had run here.
            match h.join() {
                Ok(mut r) => done.append(&mut r),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        done
    });
    drop(helpers);
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `map_weighted_in` of `weights` (each item its own weight, given back): the results,
    /// and how many threads ran items.
    fn on_threads(budget: &AtomicUsize, weights: Vec<usize>) -> (Vec<usize>, usize) {
        let threads = std::sync::Mutex::new(std::collections::HashSet::new());
        let out = map_weighted_in(
            budget,
            weights,
            |w| *w,
            |w| {
                threads
                    .lock()
                    .map(|mut t| t.insert(std::thread::current().id()))
                    .ok();
                w
            },
        );
        let used = threads.lock().map(|t| t.len()).unwrap_or(0);
        (out, used)
    }

    #[test]
    fn results_keep_the_items_order_on_one_thread_or_several() {
        let few: Vec<usize> = (0..7).collect();
        assert_eq!(
            map_weighted(few.clone(), |_| 1, |i| i * 10),
            (0..7).map(|i| i * 10).collect::<Vec<_>>()
        );
        // Heavy enough to be shared: unequal weights, more items than threads.
        let weights = [50_000, 10, 30_000, 7, 20_000, 1, 90_000];
        // A budget of its own: other tests' calls take the process's.
        let budget = AtomicUsize::new(0);
        let (out, used) = on_threads(&budget, weights.to_vec());
        assert_eq!(out, weights);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(used, cores.min(weights.len()), "one thread per core");
        assert_eq!(budget.load(Ordering::Acquire), 0, "helpers given back");
    }

    /// Calls at once share the cores: with every helper taken, a call runs on its caller's
    /// thread alone, and helpers come back when a call ends (or unwinds).
    #[test]
    fn helpers_are_shared_across_calls() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let budget = AtomicUsize::new(cores.saturating_sub(1));
        let (out, used) = on_threads(&budget, vec![30_000, 30_000, 30_000]);
        assert_eq!(out, [30_000, 30_000, 30_000]);
        assert_eq!(used, 1, "no helper left: the caller alone");
        assert_eq!(budget.load(Ordering::Acquire), cores.saturating_sub(1));

        let budget = AtomicUsize::new(0);
        let r = std::panic::catch_unwind(|| {
            map_weighted_in(
                &budget,
                vec![30_000usize, 30_000],
                |w| *w,
                |_| -> usize { panic!("here or on a helper") },
            )
        });
        assert!(r.is_err());
        assert_eq!(budget.load(Ordering::Acquire), 0, "given back on unwind");
    }

    #[test]
    fn a_panic_on_another_thread_reaches_the_caller() {
        let budget = AtomicUsize::new(0);
        let r = std::panic::catch_unwind(|| {
            map_weighted_in(
                &budget,
                vec![30_000usize, 30_000, 30_000],
                |w| *w,
                |w| {
                    if std::thread::current().name() == Some(THREAD_NAME) {
                        panic!("on a thread of its own");
                    }
                    w
                },
            )
        });
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(r.is_err(), cores > 1);
    }
}

//! The process heap as the system sees it: handing freed memory back, and the resident
//! size `/metrics` reports beside the Arrow size of the generation held.

/// Returns the freed pages of every glibc malloc arena to the system. Rust's allocations go
/// through mimalloc (`actors/src/lib.rs`), which returns freed pages itself; what still
/// uses glibc's malloc is C code (zstd's contexts, SQLite), whose arenas would otherwise
/// stay at their peak. Called after each generation is installed, on the compute pool.
/// `unsafe` as in `sql::pool::lower_priority`: a plain libc call.
#[allow(unsafe_code)]
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How long mimalloc keeps memory freed before handing it back to the system once a node
/// has sealed a complete generation ([`purge_promptly`]).
#[cfg(not(feature = "system-alloc"))]
const PURGE_DELAY_MS: std::ffi::c_long = 10;

/// mimalloc's `mi_option_purge_delay`: its place in `mi_option_e` (mimalloc 3's
/// `include/mimalloc.h`). libmimalloc-sys names no constant for it; a test reads the
/// option back.
#[cfg(not(feature = "system-alloc"))]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// From now on mimalloc hands freed memory back after [`PURGE_DELAY_MS`] rather than its
/// default of a second. The sealer calls it on each complete generation; only the first
/// call acts. Only nodes with children (proxies, TLAs, SQL nodes) seal complete
/// generations: an edge agent's small heap keeps mimalloc's default. Each round frees a generation's turnover (the replaced parts, the decoders'
/// scratch), which otherwise stayed resident for up to a second after each swap. In a
/// 7-minute `fleet` run at 70,000 machines the SQL node's highest RSS came down by 124 MiB
/// (the TLA's did not; BENCHMARKS.md, "Where we stand"), and a steady generation of
/// `tla-merge` cost no more. Not from the start: there the full copy's decoding hands back
/// and faults in again what it frees (`tla-merge`'s full copy took 7% longer with 10 ms
/// from the start), so a node fills at mimalloc's pace first. An operator's
/// `MIMALLOC_PURGE_DELAY` stands. Nothing with `system-alloc`.
#[allow(unsafe_code)]
pub fn purge_promptly() {
    #[cfg(not(feature = "system-alloc"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
                return;
            }
            // SAFETY: the index is mimalloc's purge delay (checked by a test) and the
            // call stores one `long` of mimalloc's option table. mimalloc reads it each
            // time it schedules a purge, so a purge scheduled meanwhile on another
            // thread takes the old delay or the new one.
            unsafe {
                libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
            }
            tracing::debug!(
                ms = PURGE_DELAY_MS,
                "freed memory is handed back promptly from now on"
            );
        });
    }
}

/// Turns transparent huge pages off for this process (and the processes it starts), as
/// `MIMALLOC_ALLOW_THP=0` would: mimalloc hands memory back a second after it is freed,
/// and each 2 MiB page touched again is faulted in and zeroed whole (30% of the samples
/// of a perf profile of `tla-merge` at 70,000 machines, a process that also makes the
/// clusters' frames). There the TLA's full copy took 9.7 s with huge pages and 3.9-5.7 s
/// without, a steady generation 1.94 and 1.72 s (the same binary, then with
/// `MIMALLOC_ALLOW_THP=0`). mimalloc is also built not to ask for them (`no_thp`,
/// Cargo.toml), which alone left the full copy at 8.4 s: other mappings were still backed
/// by huge pages. Called first thing by `queryd` and the in-process
/// benchmarks. A failure (an old kernel) changes nothing but speed, so it is only logged.
#[allow(unsafe_code)]
pub fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments and only sets a flag of this
        // process's memory map.
        let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if r != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "transparent huge pages stay on");
        }
    }
}

/// Resident set size of this process in bytes, if the system tells (Linux `/proc`).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn resident_size_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            let rss = super::resident_bytes().expect("/proc/self/status");
            assert!(rss > 1 << 20, "a test process holds more than 1 MiB: {rss}");
        }
        super::trim();
    }

    #[test]
    #[cfg(not(feature = "system-alloc"))]
    #[allow(unsafe_code)]
    fn freed_memory_is_handed_back_promptly() {
        // SAFETY: reads one integer of mimalloc's option table.
        let get = || unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        let before = get();
        super::purge_promptly();
        super::purge_promptly();
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // mimalloc 3's default is a second; another test of this process may have set
            // it already. Any other value: the option's place in mimalloc's list moved.
            assert!(
                before == 1000 || before == super::PURGE_DELAY_MS,
                "{before}"
            );
            assert_eq!(get(), super::PURGE_DELAY_MS);
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    fn huge_pages_are_turned_off() {
        super::no_huge_pages();
        // SAFETY: PR_GET_THP_DISABLE only reads the flag (Linux 3.15 and later).
        let disabled = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(disabled, 1, "{}", std::io::Error::last_os_error());
        // Kernels since 6.x also say so in /proc.
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        if status.contains("THP_enabled:") {
            assert!(status.contains("THP_enabled:\t0"), "{status}");
        }
    }
}

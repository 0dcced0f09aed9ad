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

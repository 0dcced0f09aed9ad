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
}

//! Process-wide settings that make candle's CPU backend fast; call once at startup, before
//! any thread is spawned.
//!
//! Measured on the SD1.5 training-step benchmark (BENCHMARKS.md): ~25% of the step went to page
//! faults and `munmap`, because glibc serves every allocation above its (dynamic) mmap
//! threshold with a fresh mapping and unmaps it on free, so each activation tensor is faulted in
//! page by page, every step. And candle asks for the thread count on every op, which without
//! `RAYON_NUM_THREADS` re-reads `/proc/cpuinfo` each time.

/// Applies the settings: a fixed rayon thread count (unless the user set one) and, on glibc,
/// heap reuse for allocations of every size with no trimming (freed activation memory is kept
/// for the next step, as PyTorch's caching allocator does).
pub fn init_cpu_runtime() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Single-threaded at this point (documented precondition), so setting the variable
        // cannot race with a reader.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; it is called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        // 32 MiB is glibc's largest mmap threshold, and bigger buffers (im2col, attention
        // chunks) were still mapped and zero-filled anew on every op: serve them from the heap
        // too (SD1.5 UNet step 31.4 → 29.4 s, peak RSS slightly lower).
        libc::mallopt(libc::M_MMAP_MAX, 0);
    }
}

/// Hands freed heap memory back to the system (glibc `malloc_trim`), so that the resident size
/// measured right after shows live memory rather than the heap's high-water mark. For
/// measurements; training keeps the memory for the next step on purpose.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused pages of the heap to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

#if canImport(Glibc)
private import CMalloc
#endif

/// Process-wide allocator settings for service executables.
public enum MemoryTuning {
    /// Keeps freed memory in the process instead of returning it to the kernel at once.
    ///
    /// Services handle messages of up to a few MiB; with glibc's defaults each such buffer is mapped
    /// fresh (or the heap top trimmed and grown again), and the kernel zeroes the pages on every fault:
    /// perf showed ~20 % of ingestion's CPU in `clear_page_erms`. Raising the mmap and trim thresholds
    /// lets those buffers be reused. Call once at startup; does nothing on other C libraries.
    public static func keepFreedMemoryForReuse() {
        #if canImport(Glibc)
        // Allocations below 16 MiB (messages are at most a few MiB) come from the heap; keep up to 64 MiB
        // of free heap top before giving it back.
        _ = mallopt(M_MMAP_THRESHOLD, 16 << 20)
        _ = mallopt(M_TRIM_THRESHOLD, 64 << 20)
        #endif
    }
}

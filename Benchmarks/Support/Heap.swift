import CMalloc

/// The process's heap, as glibc's allocator counts it.
public enum Heap {
    /// Bytes in use on the heap: glibc's `mallinfo2()`, small blocks and mapped ones (large arrays).
    /// Unlike resident memory, it drops when memory is freed and excludes pages the allocator keeps.
    public static func bytesInUse() -> Int {
        let info = mallinfo2()
        return Int(info.uordblks) + Int(info.hblkhd)
    }
}

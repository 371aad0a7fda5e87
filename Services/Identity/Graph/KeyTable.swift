/// Strings held as bytes in one buffer, each with a small tag (an identity's namespace), numbered in
/// the order they were added and found by content through an open-addressing table of those numbers.
///
/// The identity graph holds every identity value and record key of its entity type: millions of short
/// strings (emails, source keys). As Swift strings in dictionaries each cost a heap allocation and an
/// entry of 40 bytes at a load of at most three quarters, about 140 bytes beside its own; here an entry
/// costs its bytes, 17 bytes of bookkeeping and a 4-byte slot at a load of at most 0.6.
///
/// A removed entry keeps its number (callers index their own arrays by it) and its bytes; it is no
/// longer found. Strings of any length are held (one of 16 MiB or more with its length beside its
/// bytes). Not thread-safe (a value type, used by one owner).
struct KeyTable {
    /// Where each entry's bytes are: offset in `bytes` (high 40 bits) and length (low 24 bits). A
    /// string of ``longLength`` bytes or more has ``longLength`` there, and its length in the 8 bytes
    /// before its own.
    private var spans: [UInt64] = []
    private var tags: [UInt8] = []
    /// The low 32 bits of each entry's hash, compared before the bytes and kept for growing the table.
    private var hashes: [UInt32] = []
    private var bytes: [UInt8] = []
    /// Entry numbers by hash; `empty` or `removed` where none is.
    private var slots: [Int32] = []
    /// Entries present (not removed).
    private(set) var count = 0
    /// Slots of removed entries: they still lengthen searches, so they count towards growing.
    private var removedSlots = 0

    private static let empty: Int32 = -1
    private static let removed: Int32 = -2
    /// The span length that stands for a long string (its length is stored with its bytes): the
    /// largest that 24 bits hold, or less (tests).
    let longLength: Int

    /// An empty table; `longLength` below the largest that 24 bits hold only to test long strings.
    init(longLength: Int = (1 << 24) - 1) {
        precondition(longLength > 0 && longLength < 1 << 24)
        self.longLength = longLength
    }

    /// A per-process seed: crafted values cannot collide on purpose.
    private static let seed = UInt64.random(in: 1...UInt64.max)

    /// Entries ever added, removed ones included: the next entry's number.
    var endIndex: Int { spans.count }

    /// Makes room for `count` entries without growing.
    mutating func reserveCapacity(_ count: Int) {
        spans.reserveCapacity(count)
        tags.reserveCapacity(count)
        hashes.reserveCapacity(count)
        if Self.capacity(for: count) > slots.count { rehash(capacity: Self.capacity(for: count)) }
    }

    /// The number of the entry with `tag` and `value`, if one is present.
    func find(_ tag: UInt8, _ value: String) -> Int? {
        guard !slots.isEmpty else { return nil }
        var value = value
        return value.withUTF8 { utf8 in
            let hash = Self.hash(utf8, tag: tag)
            return lookUp(tag, utf8, hash).entry
        }
    }

    /// The number of the entry with `tag` and `value`, added (as the next number) if none is present.
    mutating func insert(_ tag: UInt8, _ value: String) -> (entry: Int, inserted: Bool) {
        if Self.capacity(for: count + removedSlots + 1) > slots.count {
            rehash(capacity: Self.capacity(for: 2 * (count + 1)))
        }
        var value = value
        return value.withUTF8 { utf8 in
            let hash = Self.hash(utf8, tag: tag)
            let found = lookUp(tag, utf8, hash)
            if let entry = found.entry { return (entry, false) }
            let entry = spans.count
            if utf8.count >= longLength {
                withUnsafeBytes(of: UInt64(utf8.count).littleEndian) { bytes.append(contentsOf: $0) }
                spans.append(UInt64(bytes.count) << 24 | UInt64(longLength))
            } else {
                spans.append(UInt64(bytes.count) << 24 | UInt64(utf8.count))
            }
            bytes.append(contentsOf: utf8)
            tags.append(tag)
            hashes.append(UInt32(truncatingIfNeeded: hash))
            if slots[found.slot] == Self.removed { removedSlots -= 1 }
            slots[found.slot] = Int32(entry)
            count += 1
            return (entry, true)
        }
    }

    /// Removes entry `entry` (found by content no longer); its number, tag and bytes stay.
    mutating func remove(_ entry: Int) {
        guard isPresent(entry) else { return }
        let mask = slots.count - 1
        var slot = Int(hashes[entry]) & mask
        while slots[slot] != Int32(entry) { slot = (slot + 1) & mask }
        slots[slot] = Self.removed
        removedSlots += 1
        count -= 1
        // The sign bit of the span marks the entry removed (offsets stay far below 2^39).
        spans[entry] |= 1 << 63
    }

    /// Whether entry `entry` is present (not removed).
    func isPresent(_ entry: Int) -> Bool { spans[entry] >> 63 == 0 }

    /// The tag of entry `entry`.
    func tag(_ entry: Int) -> UInt8 { tags[entry] }

    /// The string of entry `entry` (also of a removed one).
    func string(_ entry: Int) -> String {
        let (start, length) = range(entry)
        return bytes.withUnsafeBufferPointer { String(decoding: $0[start..<(start + length)], as: UTF8.self) }
    }

    // MARK: - Internals

    /// The slot count for `count` entries: a power of two, filled to at most 0.6.
    private static func capacity(for count: Int) -> Int {
        var capacity = 16
        while count * 5 > capacity * 3 { capacity *= 2 }
        return capacity
    }

    /// The entry with these contents, or the slot where it would go (the first removed slot on its
    /// path, else the empty one that ends it).
    private func lookUp(_ tag: UInt8, _ utf8: UnsafeBufferPointer<UInt8>, _ hash: UInt64) -> (entry: Int?, slot: Int) {
        let mask = slots.count - 1
        let short = UInt32(truncatingIfNeeded: hash)
        var slot = Int(short) & mask
        var firstRemoved: Int? = nil
        while true {
            let entry = slots[slot]
            if entry == Self.empty { return (nil, firstRemoved ?? slot) }
            if entry == Self.removed {
                if firstRemoved == nil { firstRemoved = slot }
            } else if hashes[Int(entry)] == short, tags[Int(entry)] == tag, equals(Int(entry), utf8) {
                return (Int(entry), slot)
            }
            slot = (slot + 1) & mask
        }
    }

    /// Where entry `entry`'s bytes are in ``bytes``.
    private func range(_ entry: Int) -> (start: Int, length: Int) {
        let span = spans[entry] & ~(1 << 63)
        let start = Int(span >> 24)
        let length = Int(span & 0xFF_FFFF)
        guard length == longLength else { return (start, length) }
        let stored = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: start - 8, as: UInt64.self) }
        return (start, Int(UInt64(littleEndian: stored)))
    }

    private func equals(_ entry: Int, _ utf8: UnsafeBufferPointer<UInt8>) -> Bool {
        let (start, length) = range(entry)
        guard length == utf8.count else { return false }
        return bytes.withUnsafeBufferPointer { buffer in
            UnsafeBufferPointer(rebasing: buffer[start..<(start + length)]).elementsEqual(utf8)
        }
    }

    private mutating func rehash(capacity: Int) {
        slots = Array(repeating: Self.empty, count: capacity)
        removedSlots = 0
        let mask = capacity - 1
        for entry in 0..<spans.count where isPresent(entry) {
            var slot = Int(hashes[entry]) & mask
            while slots[slot] != Self.empty { slot = (slot + 1) & mask }
            slots[slot] = Int32(entry)
        }
    }

    /// A multiply-xorshift hash over 8-byte words, seeded per process and by tag.
    static func hash(_ bytes: UnsafeBufferPointer<UInt8>, tag: UInt8) -> UInt64 {
        let multiplier: UInt64 = 0x9E37_79B9_7F4A_7C15
        var hash = (seed ^ UInt64(tag)) ^ (UInt64(bytes.count) &* multiplier)
        let raw = UnsafeRawBufferPointer(bytes)
        var offset = 0
        while offset + 8 <= raw.count {
            let word = raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
            hash = (hash ^ word) &* multiplier
            hash ^= hash >> 29
            offset += 8
        }
        if offset < raw.count {
            var tail: UInt64 = 0
            for index in offset..<raw.count { tail = (tail << 8) | UInt64(raw[index]) }
            hash = (hash ^ tail) &* multiplier
            hash ^= hash >> 29
        }
        hash = (hash ^ (hash >> 32)) &* 0xD6E8_FEB8_6659_FD93
        return hash ^ (hash >> 32)
    }
}

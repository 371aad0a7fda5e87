/// A change to the graph's state, in the order the graph made it: what a store writes so that a graph
/// restored from it (``IdentityGraph/init(configuration:restoring:)``) equals the one that made the
/// changes. Identities are named by their sequence numbers.
public enum GraphChange: Hashable, Sendable {
    /// A new identity, with the sequence number it keeps for good.
    case identityAdded(sequence: UInt64, identity: Identity)
    /// A record now links exactly these identities (the first is its primary one). Replaces what the
    /// record linked before.
    case recordLinked(key: String, version: UInt64, identities: [UInt64])
    /// A record no longer links anything.
    case recordUnlinked(key: String)
    /// An identity left the graph (a privacy request).
    case identityRemoved(sequence: UInt64)
}

/// A graph's persistent state: enough to rebuild it exactly.
public struct GraphState: Sendable {
    /// Every identity still in the graph, with its sequence number.
    public var identities: [(sequence: UInt64, identity: Identity)]
    /// Every linked record: its key, version and the identities it links, primary first.
    public var records: [(key: String, version: UInt64, identities: [UInt64])]
    /// The sequence number the next new identity gets (removed identities' numbers are not reused).
    public var nextSequence: UInt64

    /// Creates a state.
    public init(
        identities: [(sequence: UInt64, identity: Identity)],
        records: [(key: String, version: UInt64, identities: [UInt64])],
        nextSequence: UInt64
    ) {
        self.identities = identities
        self.records = records
        self.nextSequence = nextSequence
    }
}

/// A string with its hash computed once: dictionary lookups, growth and equality checks then cost a
/// word, not a pass over the string. The hash is seeded per process, so crafted values cannot
/// collide on purpose.
struct HashedKey: Hashable {
    let hash: UInt64
    let tag: UInt8
    let value: String

    private static let seed = UInt64.random(in: 1...UInt64.max)

    init(tag: UInt8, value: String) {
        self.tag = tag
        self.value = value
        var copy = value
        self.hash = copy.withUTF8 { Self.hash($0, seed: Self.seed ^ UInt64(tag)) }
    }

    func hash(into hasher: inout Hasher) { hasher.combine(hash) }

    // Dictionaries hash through this requirement; the stored hash is already well mixed and seeded, so
    // it skips building a SipHash state per lookup (a tenth of the linking time when measured). The
    // table's own seed is mixed in, as Hasher would.
    func _rawHashValue(seed: Int) -> Int {
        Int(truncatingIfNeeded: hash ^ UInt64(UInt(bitPattern: seed)))
    }

    static func == (lhs: HashedKey, rhs: HashedKey) -> Bool {
        lhs.hash == rhs.hash && lhs.tag == rhs.tag && lhs.value == rhs.value
    }

    /// A multiply-xorshift hash over 8-byte words.
    private static func hash(_ bytes: UnsafeBufferPointer<UInt8>, seed: UInt64) -> UInt64 {
        let multiplier: UInt64 = 0x9E37_79B9_7F4A_7C15
        var hash = seed ^ (UInt64(bytes.count) &* multiplier)
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

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

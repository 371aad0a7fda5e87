import CDPProto
import Foundation
import IdentityGraph
import IdentityRules

/// Identity's storage: the records taken (for idempotency), each graph's identities and links, the
/// conflicts the guardrails reported, and the ordered outbox of updates for profile.
///
/// The service talks to storage only through this protocol, so a PostgreSQL implementation can be added
/// beside ``SQLiteIdentityStore``. Every method is one transaction; ``commit(_:)`` writes everything
/// one intake call changed at once, so a crash leaves either all of it or none.
public protocol IdentityStore: Sendable {
    /// Every graph's persisted state, to rebuild the in-memory graphs at start.
    func loadGraphs() throws -> [EntityGraph: GraphState]
    /// The version last taken of each of these records (by key and entity type), where there is one.
    func currentVersions(of records: [RecordSlot]) throws -> [RecordSlot: TakenVersion]
    /// Writes one intake call's (or one removal's) effects.
    func commit(_ commit: IdentityCommit) throws
    /// The stored links of these records in `graph`, by record key.
    func links(in graph: EntityGraph, keys: [String]) throws -> [String: StoredLink]
    /// Conflicts, newest first, older than the conflict `before` (all if nil); of one graph or all.
    func conflicts(in graph: EntityGraph?, before: Int64?, limit: Int) throws -> [StoredConflict]
    /// The sequence number the next outbox update gets (they are never reused).
    func nextUpdateSequence() throws -> UInt64

    /// The next updates to forward, oldest first: at most `limit` and, beyond the first, at most
    /// `maxBytes`; nil when nothing is pending. From the outbox's head, or after `after` (a chunk
    /// being delivered, not yet acknowledged).
    func nextOutboxChunk(limit: Int, maxBytes: Int, after: UpdateChunk?) throws -> UpdateChunk?
    /// Records that the receiver acknowledged `chunk`.
    func acknowledge(_ chunk: UpdateChunk) throws
    /// How much is pending.
    func outboxStatus() throws -> (pending: UInt64, oldestPending: Date?, forwarded: UInt64)
    /// Deletes the versions taken and the conflicts of the records `keys` (a privacy request); returns
    /// how many rows went.
    func forget(keys: [String]) throws -> Int
    /// Clears the write-ahead log of deleted data; false if it could not yet.
    func clearLog() -> Bool
}

/// A record's place: its key and entity type (a person and an account of one source may share a key).
public struct RecordSlot: Hashable, Sendable {
    /// The record's key.
    public var key: String
    /// The record's entity type.
    public var entity: Cdp_Model_V1_EntityType

    /// Creates a record slot.
    public init(key: String, entity: Cdp_Model_V1_EntityType) {
        self.key = key
        self.entity = entity
    }
}

/// The version of a record last taken: the hash ingestion gave its content and ingestion's sequence
/// number for it (the order records arrived in).
public struct TakenVersion: Hashable, Sendable {
    /// The content hash.
    public var version: UInt64
    /// Ingestion's sequence number.
    public var sequence: UInt64

    /// Creates a taken version.
    public init(version: UInt64, sequence: UInt64) {
        self.version = version
        self.sequence = sequence
    }

    /// Whether `stored` changes nothing after this version: it is this version again (a re-delivery,
    /// or the same content re-sent), or an older one that arrived at ingestion before this one (a
    /// re-delivered chunk, or a batch that completed after a later stream). A value changed back
    /// (A, B, A) arrives later than B and is taken.
    public func supersedes(_ stored: Cdp_Identity_V1_StoredRecord) -> Bool {
        stored.version == version || stored.sequence < sequence
    }
}

/// Where a record's links came from.
public struct LinkProvenance: Sendable, Equatable {
    /// The record's source.
    public var source: Cdp_Model_V1_Source
    /// The ingestion batch (`stream:…` for streamed records).
    public var batchID: String
    /// When ingestion stored the record.
    public var ingestedAt: Date

    /// Creates a provenance.
    public init(source: Cdp_Model_V1_Source, batchID: String, ingestedAt: Date) {
        self.source = source
        self.batchID = batchID
        self.ingestedAt = ingestedAt
    }
}

/// A record's links as stored.
public struct StoredLink: Sendable, Equatable {
    /// The record's version.
    public var version: UInt64
    /// The sequence numbers of the identities it links, primary first.
    public var identities: [UInt64]
    /// Where it came from.
    public var provenance: LinkProvenance
}

/// A refused link as stored.
public struct StoredConflict: Sendable, Equatable {
    /// The store's id (increasing).
    public var id: Int64
    /// The graph.
    public var graph: EntityGraph
    /// The refusal.
    public var conflict: Conflict
    /// When it was detected.
    public var detectedAt: Date

    /// Creates a stored conflict (`id` is assigned by the store when committed).
    public init(id: Int64 = 0, graph: EntityGraph, conflict: Conflict, detectedAt: Date) {
        self.id = id
        self.graph = graph
        self.conflict = conflict
        self.detectedAt = detectedAt
    }
}

/// Everything one intake call (or one identity removal) changed.
public struct IdentityCommit: Sendable {
    /// The versions taken, each now its record's current one, so that a re-delivery is recognised.
    public var accepted: [(slot: RecordSlot, version: TakenVersion)] = []
    /// Each graph's journal, in order.
    public var graphChanges: [(graph: EntityGraph, changes: [GraphChange])] = []
    /// Where the records linked in this commit came from, by graph and record key (a person and an
    /// account of one source may share a key).
    public var provenance: [EntityGraph: [String: LinkProvenance]] = [:]
    /// Links the guardrails refused (a conflict stored before, same record, identity and kind, is not
    /// stored again).
    public var conflicts: [StoredConflict] = []
    /// Identities removed by a privacy request: stored conflicts naming them are deleted.
    public var redactions: [(graph: EntityGraph, identity: Identity)] = []
    /// Serialized `cdp.profile.v1.IdentityUpdate`s for the outbox, with their sequence numbers (which
    /// must continue ``IdentityStore/nextUpdateSequence()``).
    public var updates: [(sequence: UInt64, payload: Data)] = []
    /// When the commit was made.
    public var committedAt: Date

    /// Creates an empty commit.
    public init(committedAt: Date = Date()) {
        self.committedAt = committedAt
    }

    /// Whether the commit writes nothing.
    public var isEmpty: Bool {
        accepted.isEmpty && graphChanges.allSatisfy { $0.changes.isEmpty } && conflicts.isEmpty && updates.isEmpty
            && redactions.isEmpty
    }
}

/// Updates taken from the outbox for one forwarding attempt.
extension IdentityStore {
    /// The next updates to forward from the outbox's head (see
    /// ``nextOutboxChunk(limit:maxBytes:after:)``).
    public func nextOutboxChunk(limit: Int, maxBytes: Int) throws -> UpdateChunk? {
        try nextOutboxChunk(limit: limit, maxBytes: maxBytes, after: nil)
    }
}

public struct UpdateChunk: Sendable {
    /// The serialized `cdp.profile.v1.IdentityUpdate`s, in sequence order.
    public var updates: [Data]
    /// The first and last sequence numbers.
    public var firstSequence: UInt64
    /// The last sequence number.
    public var lastSequence: UInt64

    /// Creates a chunk (for store implementations).
    public init(updates: [Data], firstSequence: UInt64, lastSequence: UInt64) {
        self.updates = updates
        self.firstSequence = firstSequence
        self.lastSequence = lastSequence
    }
}

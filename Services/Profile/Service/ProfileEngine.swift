import CDPProto
import Foundation
import NIOCore
import ProfileStore

/// Profile's store on two threads of its own: every store call blocks, and must not hold a thread of
/// the shared concurrency pool. The engine's thread applies identity's ordered stream (one actor
/// serializes it) and takes changed views; a second thread, the ``ProfileReader``, builds views and
/// answers lookups and scans on its own SQLite connection (WAL lets it read while the stream is
/// applied), so a scan or a lookup does not wait behind a batch of updates.
public actor ProfileEngine {
    private let executor: any SerialExecutor
    private let store: any ProfileStore
    private let reader: ProfileReader

    /// The dedicated event loop the actor runs on.
    public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    /// An engine over `store`: writes run on `loop`, reads on `readLoop` (loops no other work shares;
    /// without `readLoop`, reads share `loop`).
    public init(store: any ProfileStore, loop: any EventLoop, readLoop: (any EventLoop)? = nil) {
        self.executor = loop.executor
        self.store = store
        self.reader = ProfileReader(store: store, loop: readLoop ?? loop)
    }

    /// Applies identity's updates (see ``ProfileStore/apply(_:)``).
    public func apply(_ updates: [ReceivedUpdate]) throws -> (applied: Int, duplicates: Int) {
        try store.apply(updates)
    }

    /// The sequence of the last identity update applied.
    public func appliedSequence() throws -> UInt64 { try store.appliedSequence() }

    /// The cluster of the `entity` an identity names.
    public nonisolated func cluster(
        of entity: Cdp_Model_V1_EntityType,
        named identity: Cdp_Identity_V1_IdentityValue
    ) async throws
        -> UInt64?
    {
        try await reader.run { try $0.cluster(of: entity, named: identity) }
    }

    /// A person view.
    public nonisolated func personView(cluster: UInt64, asOf: Date) async throws -> Cdp_Profile_V1_PersonView? {
        try await reader.run { try $0.personView(cluster: cluster, asOf: asOf) }
    }

    /// An account view.
    public nonisolated func accountView(cluster: UInt64) async throws -> Cdp_Profile_V1_AccountView? {
        try await reader.run { try $0.accountView(cluster: cluster) }
    }

    /// Views of several persons and accounts from one snapshot (see ``ProfileStore/views(of:asOf:)``).
    public nonisolated func views(of keys: [ViewKey], asOf: Date) async throws -> [ProfileView?] {
        try await reader.run { try $0.views(of: keys, asOf: asOf) }
    }

    /// One page of a partition's clusters.
    public nonisolated func clusters(
        of entity: Cdp_Model_V1_EntityType,
        partition: Int,
        partitions: Int,
        after: UInt64,
        limit: Int
    ) async throws -> [UInt64] {
        try await reader.run {
            try $0.clusters(of: entity, partition: partition, partitions: partitions, after: after, limit: limit)
        }
    }

    /// A person's events.
    public nonisolated func events(
        person cluster: UInt64,
        from: Date,
        to: Date,
        limit: Int
    ) async throws -> [Cdp_Profile_V1_Event] {
        try await reader.run { try $0.events(person: cluster, from: from, to: to, limit: limit) }
    }

    /// What a privacy delete of the person removes.
    public func personData(cluster: UInt64) throws -> PersonData { try store.personData(cluster: cluster) }

    /// Deletes what `personData` listed.
    public func delete(_ data: PersonData) throws -> (fragments: Int, events: Int) { try store.delete(data) }

    // MARK: - Privacy requests

    /// The store, for the privacy coordinator's bookkeeping (small writes on the engine's thread).
    func privacy<Result: Sendable>(_ body: (any ProfileStore) throws -> Result) throws -> Result { try body(store) }

    /// Clears the write-ahead log of deleted data; false if it could not yet.
    public func clearLog() -> Bool { store.clearLog() }

    // MARK: - Outbox to segmentation

    /// The next changed state items with their values, taken on the engine's thread in one transaction
    /// (see ``ProfileStore/takeStateChanges(limit:after:)``), from the head of the logs or after
    /// `after`. An item changed again meanwhile has a later mark, so it is sent again
    /// (``ProfileStore/markSent(_:)``).
    public func nextStateChunk(limit: Int, after: StateChunk? = nil) throws -> StateChunk? {
        let chunk = try store.takeStateChanges(limit: limit, after: after)
        return chunk.isEmpty ? nil : chunk
    }

    /// Marks a delivered chunk sent.
    public func acknowledge(_ chunk: StateChunk) throws { try store.markSent(chunk) }

    /// How much is pending.
    public func outboxStatus() throws -> (pending: UInt64, oldestPending: Date?, sent: UInt64) {
        try store.outboxStatus()
    }
}

/// The reads of profile's store on a thread of their own (see ``ProfileEngine``).
actor ProfileReader {
    private let executor: any SerialExecutor
    private let store: any ProfileStore

    nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    init(store: any ProfileStore, loop: any EventLoop) {
        self.executor = loop.executor
        self.store = store
    }

    /// Runs one read of the store on the reader's thread.
    func run<Result: Sendable>(_ read: @Sendable (any ProfileStore) throws -> Result) throws -> Result {
        try read(store)
    }
}

import CDPProto
import Foundation
import NIOCore
import ProfileStore

/// Profile's store on a thread of its own: every store call blocks, and must not hold a thread of
/// the shared concurrency pool. One actor also serializes the application of identity's ordered
/// stream.
public actor ProfileEngine {
    private let executor: any SerialExecutor
    private let store: any ProfileStore

    /// The dedicated event loop the actor runs on.
    public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    /// An engine over `store`, running on `loop` (one no other work shares).
    public init(store: any ProfileStore, loop: any EventLoop) {
        self.executor = loop.executor
        self.store = store
    }

    /// Applies identity's updates (see ``ProfileStore/apply(_:)``).
    public func apply(_ updates: [Cdp_Profile_V1_IdentityUpdate]) throws -> (applied: Int, duplicates: Int) {
        try store.apply(updates)
    }

    /// The sequence of the last identity update applied.
    public func appliedSequence() throws -> UInt64 { try store.appliedSequence() }

    /// The cluster of the `entity` an identity names.
    public func cluster(
        of entity: Cdp_Model_V1_EntityType,
        named identity: Cdp_Identity_V1_IdentityValue
    ) throws
        -> UInt64?
    {
        try store.cluster(of: entity, named: identity)
    }

    /// A person view.
    public func personView(cluster: UInt64, asOf: Date) throws -> Cdp_Profile_V1_PersonView? {
        try store.personView(cluster: cluster, asOf: asOf)
    }

    /// An account view.
    public func accountView(cluster: UInt64) throws -> Cdp_Profile_V1_AccountView? {
        try store.accountView(cluster: cluster)
    }

    /// Views of several persons and accounts from one snapshot (see ``ProfileStore/views(of:asOf:)``).
    public func views(of keys: [ViewKey], asOf: Date) throws -> [ProfileView?] {
        try store.views(of: keys, asOf: asOf)
    }

    /// One page of a partition's clusters.
    public func clusters(
        of entity: Cdp_Model_V1_EntityType,
        partition: Int,
        partitions: Int,
        after: UInt64,
        limit: Int
    ) throws -> [UInt64] {
        try store.clusters(of: entity, partition: partition, partitions: partitions, after: after, limit: limit)
    }

    /// A person's events.
    public func events(person cluster: UInt64, from: Date, to: Date, limit: Int) throws -> [Cdp_Profile_V1_Event] {
        try store.events(person: cluster, from: from, to: to, limit: limit)
    }

    /// What a privacy delete of the person removes.
    public func personData(cluster: UInt64) throws -> PersonData { try store.personData(cluster: cluster) }

    /// Deletes what `personData` listed.
    public func delete(_ data: PersonData) throws -> (fragments: Int, events: Int) { try store.delete(data) }

    // MARK: - Outbox to segmentation

    /// The next changed views, built now (a person or account with nothing left is sent as removed).
    public func nextViewChunk(limit: Int, asOf: Date = Date()) throws -> ViewChunk? {
        let changed = try store.nextChangedViews(limit: limit)
        guard !changed.isEmpty else { return nil }
        let built = try store.views(of: changed.map { ViewKey(entity: $0.entity, cluster: $0.cluster) }, asOf: asOf)
        let changes = zip(changed, built).map { view, built in
            var change = Cdp_Segmentation_V1_ViewChange()
            change.version = view.version
            switch built {
            case .person(let person)?: change.person = person
            case .account(let account)?: change.account = account
            case nil:
                change.removed.entityType = view.entity
                change.removed.clusterID = view.cluster
            }
            return change
        }
        return ViewChunk(views: changed, changes: changes)
    }

    /// Marks a delivered chunk sent.
    public func acknowledge(_ chunk: ViewChunk) throws { try store.markSent(chunk.views) }

    /// How much is pending.
    public func outboxStatus() throws -> (pending: UInt64, oldestPending: Date?, sent: UInt64) {
        try store.outboxStatus()
    }
}

/// Changed views built for one delivery to segmentation.
public struct ViewChunk: Sendable {
    /// What was taken from the store.
    public var views: [ChangedView]
    /// The views, as sent.
    public var changes: [Cdp_Segmentation_V1_ViewChange]
}

import CDPProto
import Foundation
import IdentityGraph
import IdentityRules
import IdentityStore
import NIOCore
import RPCCore
import SwiftProtobuf

/// The identity graphs and their store, on a thread of their own.
///
/// One actor owns every graph and every store call, so records are linked strictly one after another
/// and each intake call commits everything it changed (records taken, identities and links,
/// conflicts, outbox updates) in one store transaction before it is acknowledged. The actor runs on a
/// dedicated event loop: its store calls block, and they must not hold a thread of the shared
/// concurrency pool.
///
/// If a commit fails, the in-memory graphs are ahead of the store: they are rebuilt from the store,
/// so the call's effects vanish everywhere and the sender's retry starts from a consistent state. If
/// even that fails, every later call tries the rebuild first and fails while it cannot.
public actor IdentityEngine {
    /// The guardrails of each clustered graph.
    public struct Configuration: Sendable {
        /// Per graph; graphs not named get ``IdentityGraph/Configuration/init()``.
        public var graphs: [EntityGraph: IdentityGraph.Configuration]

        /// Creates a configuration.
        public init(graphs: [EntityGraph: IdentityGraph.Configuration] = Configuration.defaultGraphs) {
            self.graphs = graphs
        }

        /// The defaults: a person or account cluster holds at most one MDM master id (two master ids
        /// mean the MDM system says "two entities"). CRM ids are not unique by default: a person
        /// commonly holds several (a contact and the lead it was converted from; one per CRM when
        /// each line of business has its own).
        public static let defaultGraphs: [EntityGraph: IdentityGraph.Configuration] = [
            .person: .init(uniqueNamespaces: [Namespace.mdm]),
            .account: .init(uniqueNamespaces: [Namespace.mdm]),
        ]

        /// The configuration of `graph`.
        public func configuration(of graph: EntityGraph) -> IdentityGraph.Configuration {
            graphs[graph] ?? IdentityGraph.Configuration()
        }
    }

    /// What an intake call did.
    public struct IntakeResult: Sendable, Equatable {
        /// Records taken: each is now its record's current version.
        public var accepted: Int
        /// Records skipped: the current version again, or a version older than the current one.
        public var duplicates: Int

        /// Creates a result.
        public init(accepted: Int, duplicates: Int) {
            self.accepted = accepted
            self.duplicates = duplicates
        }
    }

    /// A cluster with its identities and the records that link it.
    public struct ClusterView: Sendable {
        /// The cluster's id.
        public var id: ClusterID
        /// Its identities, oldest first.
        public var identities: [Identity]
        /// The records that link it, by record key, with their stored links.
        public var links: [(key: String, link: StoredLink, identities: [Identity])]
    }

    /// The actor's executor, held strongly: `unownedExecutor` must not outlive it.
    private let executor: any SerialExecutor
    private let store: any IdentityStore
    private let configuration: Configuration
    private let now: @Sendable () -> Date
    private var graphs: [EntityGraph: IdentityGraph] = [:]
    private var nextUpdateSequence: UInt64 = 1
    /// Set when a failed commit could not be rolled back (the store could not be read): memory may be
    /// ahead of the store.
    private var needsReload = false

    /// The dedicated event loop the actor runs on.
    public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    /// Loads the graphs from `store` and runs on `loop`, which should be one no other work shares.
    public init(
        store: any IdentityStore,
        configuration: Configuration = Configuration(),
        loop: any EventLoop,
        now: @escaping @Sendable () -> Date = Date.init
    ) throws {
        self.executor = loop.executor
        self.store = store
        self.configuration = configuration
        self.now = now
        let (graphs, next) = try Self.load(from: store, configuration: configuration)
        self.graphs = graphs
        self.nextUpdateSequence = next
    }

    private static func load(
        from store: any IdentityStore,
        configuration: Configuration
    ) throws -> ([EntityGraph: IdentityGraph], UInt64) {
        let states = try store.loadGraphs()
        var graphs: [EntityGraph: IdentityGraph] = [:]
        for graph in EntityGraph.clustered {
            let graphConfiguration = configuration.configuration(of: graph)
            graphs[graph] =
                states[graph].map { IdentityGraph(configuration: graphConfiguration, restoring: $0) }
                ?? IdentityGraph(configuration: graphConfiguration)
        }
        return (graphs, try store.nextUpdateSequence())
    }

    /// The number of identities and linked records in each clustered graph.
    public func counts() -> [EntityGraph: (identities: Int, records: Int)] {
        graphs.mapValues { ($0.identityCount, $0.recordCount) }
    }

    // MARK: - Intake

    /// A record as it came: decoded, and serialized as the sender wrote it (profile gets those bytes as
    /// they are: see `IdentityUpdateRecordBytes` in profile.proto).
    public typealias ReceivedRecord = KeptMessage<Cdp_Identity_V1_StoredRecord>

    /// Links `records` in order and commits the results, as the `accept` of received records does.
    public func accept(_ records: [Cdp_Identity_V1_StoredRecord]) throws -> IntakeResult {
        try accept(records.map(ReceivedRecord.init))
    }

    /// Links `records` in order and commits the results; a record that its current version supersedes
    /// (see ``TakenVersion/supersedes(_:)``) is skipped.
    ///
    /// - Throws: The store's error if the commit failed; nothing of the call is kept then.
    public func accept(_ records: [ReceivedRecord]) throws -> IntakeResult {
        try reloadIfNeeded()
        let slots = records.map { RecordSlot(key: $0.message.record.key, entity: $0.message.record.entityType) }
        var current = try store.currentVersions(of: slots)
        var commit = IdentityCommit(committedAt: now())
        var updates: [OutgoingUpdate] = []
        var duplicates = 0
        for (slot, received) in zip(slots, records) {
            if let taken = current[slot], taken.supersedes(received.message) {
                duplicates += 1
                continue
            }
            let taken = TakenVersion(version: received.message.version, sequence: received.message.sequence)
            current[slot] = taken
            commit.accepted.append((slot, taken))
            updates += link(received, into: &commit)
        }
        try save(updates, in: &commit)
        return IntakeResult(accepted: commit.accepted.count, duplicates: duplicates)
    }

    /// An update for profile before it is numbered: a record's goes out with the record's bytes as
    /// they came.
    private enum OutgoingUpdate {
        case message(Cdp_Profile_V1_IdentityUpdate)
        case record(Cdp_Profile_V1_AnnotatedRecordBytes)

        /// The update numbered `sequence`, serialized as profile parses an `IdentityUpdate`.
        func serialized(sequence: UInt64) throws -> Data {
            switch self {
            case .message(var update):
                update.sequence = sequence
                return try update.serializedBytes()
            case .record(let annotated):
                var update = Cdp_Profile_V1_IdentityUpdateRecordBytes()
                update.sequence = sequence
                update.record = annotated
                return try update.serializedBytes()
            }
        }
    }

    /// Links one record; returns its updates for profile (cluster changes first, then the record).
    private func link(_ received: ReceivedRecord, into commit: inout IdentityCommit) -> [OutgoingUpdate] {
        let stored = received.message
        var updates: [OutgoingUpdate] = []
        var annotated = Cdp_Profile_V1_AnnotatedRecordBytes()
        annotated.stored = received.bytes
        if let plan = IdentityRules.plan(for: stored.record) {
            if plan.graph.isClustered, var graph = graphs.removeValue(forKey: plan.graph) {
                annotated.entityType = plan.graph.entityType
                if plan.isDeletion {
                    let events = graph.remove(record: plan.recordKey)
                    updates += events.map { .message(Self.update(for: $0, in: plan.graph)) }
                    // The cluster the record's primary identity is in now (its source key; for a crosswalk
                    // row, the linked record's).
                    annotated.clusterID = plan.identities.first.flatMap { graph.cluster(of: $0) }?.rawValue ?? 0
                } else {
                    let outcome = graph.upsert(
                        record: plan.recordKey,
                        version: stored.version,
                        identities: plan.identities
                    )
                    updates += outcome.events.map { .message(Self.update(for: $0, in: plan.graph)) }
                    annotated.clusterID = outcome.cluster?.rawValue ?? 0
                    commit.provenance[plan.graph, default: [:]][plan.recordKey] = LinkProvenance(
                        source: stored.record.source,
                        batchID: stored.batchID,
                        ingestedAt: stored.ingestedAt.date
                    )
                    commit.conflicts += outcome.conflicts.map {
                        StoredConflict(graph: plan.graph, conflict: $0, detectedAt: commit.committedAt)
                    }
                }
                graphs[plan.graph] = graph
            }
            for reference in plan.references {
                var resolved = Cdp_Profile_V1_ResolvedReference()
                resolved.role = reference.role
                resolved.entityType = reference.graph.entityType
                // A tombstone's references are looked up but create nothing.
                if let (cluster, identity) = resolve(reference, creating: !plan.isDeletion) {
                    resolved.clusterID = cluster.rawValue
                    resolved.identity = IdentityService.message(identity)
                }
                annotated.references.append(resolved)
            }
        }
        updates.append(.record(annotated))
        return updates
    }

    /// The cluster a reference names and the identity it names it through: the first of its identities
    /// the graph already holds, or else (when `creating`) a new node for its first usable identity,
    /// which the entity joins when its own record arrives.
    private func resolve(_ reference: Reference, creating: Bool) -> (ClusterID, Identity)? {
        guard reference.graph.isClustered, var graph = graphs.removeValue(forKey: reference.graph) else { return nil }
        defer { graphs[reference.graph] = graph }
        for identity in reference.identities {
            if !graph.isBlocked(identity), let cluster = graph.cluster(of: identity) { return (cluster, identity) }
        }
        guard creating else { return nil }
        for identity in reference.identities {
            if let cluster = graph.resolveOrCreate(identity) { return (cluster, identity) }
        }
        return nil
    }

    private static func update(for event: GraphEvent, in graph: EntityGraph) -> Cdp_Profile_V1_IdentityUpdate {
        var update = Cdp_Profile_V1_IdentityUpdate()
        update.clusterChange = clusterChange(event, in: graph)
        return update
    }

    /// A graph event as the API describes it.
    public static func clusterChange(_ event: GraphEvent, in graph: EntityGraph) -> Cdp_Identity_V1_ClusterChange {
        var change = Cdp_Identity_V1_ClusterChange()
        change.entityType = graph.entityType
        switch event {
        case .merged(let into, let from):
            change.kind = .merged
            change.from = from.map(\.rawValue)
            change.into = [into.rawValue]
        case .split(let from, let into):
            change.kind = .split
            change.from = [from.rawValue]
            change.into = into.map(\.id.rawValue)
            change.parts = into.map { part in
                var message = Cdp_Identity_V1_ClusterPart()
                message.clusterID = part.id.rawValue
                message.identities = part.identities.map(IdentityService.message)
                message.recordKeys = part.recordKeys
                return message
            }
        }
        return change
    }

    /// Numbers `updates`, adds them and the graphs' journals to `commit` and writes it; on failure,
    /// rebuilds the graphs from the store.
    private func save(_ updates: [OutgoingUpdate], in commit: inout IdentityCommit) throws {
        var sequence = nextUpdateSequence
        do {
            for update in updates {
                commit.updates.append((sequence, try update.serialized(sequence: sequence)))
                sequence += 1
            }
            for graph in EntityGraph.clustered {
                guard let changes = graphs[graph]?.takeChanges(), !changes.isEmpty else { continue }
                commit.graphChanges.append((graph, changes))
            }
            try store.commit(commit)
        } catch {
            try rollBack()
            throw error
        }
        nextUpdateSequence = sequence
    }

    /// Forgets uncommitted changes: rebuilds the graphs from the store.
    private func rollBack() throws {
        needsReload = true
        try reloadIfNeeded()
    }

    private func reloadIfNeeded() throws {
        guard needsReload else { return }
        let (graphs, next) = try Self.load(from: store, configuration: configuration)
        self.graphs = graphs
        self.nextUpdateSequence = next
        needsReload = false
    }

    // MARK: - Lookups

    /// The cluster of `identity` in `graph` and all its identities; nil if the graph does not hold it.
    public func resolve(
        _ identity: Identity,
        in graph: EntityGraph
    ) throws -> (cluster: ClusterID, identities: [Identity])? {
        try reloadIfNeeded()
        guard var held = graphs.removeValue(forKey: graph) else { return nil }
        defer { graphs[graph] = held }
        guard let cluster = held.cluster(of: identity) else { return nil }
        return (cluster, held.members(of: identity))
    }

    /// The cluster whose id is `id` now; nil if no cluster has that id (any more: a merged-away id is
    /// gone, as the merge event told profile).
    public func cluster(withID id: ClusterID, in graph: EntityGraph) throws -> ClusterView? {
        try reloadIfNeeded()
        guard let identity = graphs[graph]?.identity(withSequence: id.rawValue),
            graphs[graph]?.cluster(of: identity) == id
        else { return nil }
        return try cluster(of: identity, in: graph)
    }

    /// The cluster holding `identity`, with its records' links (by record key); nil if the graph does not
    /// hold it.
    public func cluster(of identity: Identity, in graph: EntityGraph) throws -> ClusterView? {
        try reloadIfNeeded()
        guard var held = graphs.removeValue(forKey: graph) else { return nil }
        defer { graphs[graph] = held }
        guard let id = held.cluster(of: identity) else { return nil }
        let keys = held.recordKeys(inClusterOf: identity).sorted()
        let stored = try store.links(in: graph, keys: keys)
        let links = keys.compactMap { key -> (String, StoredLink, [Identity])? in
            guard let link = stored[key] else { return nil }
            return (key, link, link.identities.compactMap { held.identity(withSequence: $0) })
        }
        return ClusterView(id: id, identities: held.members(of: identity), links: links)
    }

    /// Conflicts, newest first, older than the conflict `before`; of one graph or all.
    public func conflicts(in graph: EntityGraph?, before: Int64?, limit: Int) throws -> [StoredConflict] {
        try store.conflicts(in: graph, before: before, limit: limit)
    }

    // MARK: - Outbox

    /// The next updates for profile (see ``IdentityStore/nextOutboxChunk(limit:maxBytes:)``).
    public func nextOutboxChunk(
        limit: Int,
        maxBytes: Int = 3 << 20,
        after: UpdateChunk? = nil
    ) throws -> UpdateChunk? {
        try store.nextOutboxChunk(limit: limit, maxBytes: maxBytes, after: after)
    }

    /// Marks a chunk profile acknowledged.
    public func acknowledge(_ chunk: UpdateChunk) throws {
        try store.acknowledge(chunk)
    }

    /// How much is pending for profile.
    public func outboxStatus() throws -> (pending: UInt64, oldestPending: Date?, forwarded: UInt64) {
        try store.outboxStatus()
    }

    // MARK: - Privacy

    /// Removes `identity` from `graph` and commits it: the cluster changes it caused, then an
    /// `IdentityRemoved` update, go to profile; stored conflicts naming the value are deleted. Returns
    /// the graph events and the sequence of the last update sent, or nil if the graph did not hold it.
    public func remove(
        _ identity: Identity,
        from graph: EntityGraph
    ) throws -> (events: [GraphEvent], updateSequence: UInt64)? {
        try reloadIfNeeded()
        guard var held = graphs.removeValue(forKey: graph) else { return nil }
        let present = held.cluster(of: identity) != nil
        let events = held.remove(identity: identity)
        graphs[graph] = held
        guard present else { return nil }
        var commit = IdentityCommit(committedAt: now())
        commit.redactions = [(graph, identity)]
        var updates = events.map { OutgoingUpdate.message(Self.update(for: $0, in: graph)) }
        var removed = Cdp_Profile_V1_IdentityUpdate()
        removed.identityRemoved.entityType = graph.entityType
        removed.identityRemoved.identity = IdentityService.message(identity)
        updates.append(.message(removed))
        try save(updates, in: &commit)
        return (events, nextUpdateSequence - 1)
    }

    /// A privacy request's part here besides removing identities: forgets the versions taken and the
    /// conflicts of the person's records (their keys name the person's source ids).
    public func forget(keys: [String]) throws -> Int { try store.forget(keys: keys) }

    /// Clears the write-ahead log of deleted data; false if it could not yet.
    public func clearLog() -> Bool { store.clearLog() }
}

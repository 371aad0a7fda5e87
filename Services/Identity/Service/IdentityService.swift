import CDPProto
import Foundation
import IdentityGraph
import IdentityRules
import IdentityStore
import Logging
import RPCCore
import SwiftProtobuf

/// `cdp.identity.v1.Identity`: record intake from ingestion, lookups, conflicts, privacy removals and
/// the outbox status.
public final class IdentityService: Cdp_Identity_V1_Identity.ServiceProtocol {
    private let engine: IdentityEngine
    private let logger: Logger
    private let committed: @Sendable () -> Void
    private let forwardingError: @Sendable () -> String?

    /// Creates the service.
    ///
    /// - Parameters:
    ///   - committed: Called after updates were queued for profile (wakes the outbox relay).
    ///   - forwardingError: The relay's last error, for `GetOutboxStatus`.
    public init(
        engine: IdentityEngine,
        logger: Logger,
        committed: @escaping @Sendable () -> Void = {},
        forwardingError: @escaping @Sendable () -> String? = { nil }
    ) {
        self.engine = engine
        self.logger = logger
        self.committed = committed
        self.forwardingError = forwardingError
    }

    // MARK: - Intake

    /// `AcceptRecords` for a caller in this process; the server serves ``acceptRecordsKeepingBytes``.
    public func acceptRecords(
        request: Cdp_Identity_V1_AcceptRecordsRequest,
        context: ServerContext
    ) async throws
        -> Cdp_Identity_V1_AcceptRecordsResponse
    {
        try await accept(try request.records.map(IdentityEngine.ReceivedRecord.init))
    }

    /// `AcceptRecords` as the server serves it: each record is decoded from the call and also kept as
    /// it came, so that its update for profile carries those bytes instead of an encoding made again
    /// (see `AcceptRecordsRequestRecordBytes` in identity.proto).
    public var acceptRecordsKeepingBytes: ServerMethod {
        .unary(Cdp_Identity_V1_Identity.Method.acceptRecordsRecordBytes) { [self] request, _ in
            try await accept(try IdentityEngine.ReceivedRecord.decode(request.records, field: "records"))
        }
    }

    private func accept(
        _ records: [IdentityEngine.ReceivedRecord]
    ) async throws -> Cdp_Identity_V1_AcceptRecordsResponse {
        for (index, received) in records.enumerated() {
            let stored = received.message
            guard stored.hasRecord, !stored.record.key.isEmpty else {
                throw RPCError(
                    code: .invalidArgument,
                    message: "records[\(index)] has no record, or its record has no key; nothing of this call was taken"
                )
            }
            guard stored.record.entity != nil else {
                throw RPCError(
                    code: .invalidArgument,
                    message: "records[\(index)] (\(stored.record.key)) has no entity; nothing of this call was taken"
                )
            }
        }
        let result: IdentityEngine.IntakeResult
        do {
            result = try await engine.accept(records)
        } catch {
            logger.error("identity store failed; the call was rolled back", metadata: ["error": "\(error)"])
            throw RPCError(
                code: .unavailable,
                message: "identity could not store the records (\(error)); nothing was taken, retry"
            )
        }
        if result.accepted > 0 { committed() }
        var response = Cdp_Identity_V1_AcceptRecordsResponse()
        response.accepted = UInt32(result.accepted)
        response.duplicates = UInt32(result.duplicates)
        return response
    }

    // MARK: - Lookups

    public func resolve(
        request: Cdp_Identity_V1_ResolveRequest,
        context: ServerContext
    ) async throws
        -> Cdp_Identity_V1_ResolveResponse
    {
        let graph = try Self.clusteredGraph(request.entityType)
        let identity = try Self.identity(request.identity, field: "identity")
        guard let (cluster, identities) = try await engine.resolve(identity, in: graph) else {
            throw RPCError(code: .notFound, message: "no \(graph.rawValue) has the identity \(identity)")
        }
        var response = Cdp_Identity_V1_ResolveResponse()
        response.clusterID = cluster.rawValue
        response.identities = identities.map(Self.message)
        return response
    }

    public func getCluster(
        request: Cdp_Identity_V1_GetClusterRequest,
        context: ServerContext
    ) async throws
        -> Cdp_Identity_V1_Cluster
    {
        let graph = try Self.clusteredGraph(request.entityType)
        let view: IdentityEngine.ClusterView?
        let asked: String
        switch request.cluster {
        case .id(let id)?:
            asked = "id \(id)"
            view = try await engine.cluster(withID: ClusterID(id), in: graph)
        case .identity(let value)?:
            let identity = try Self.identity(value, field: "identity")
            asked = "identity \(identity)"
            view = try await engine.cluster(of: identity, in: graph)
        case nil:
            throw RPCError(code: .invalidArgument, message: "name the cluster: set id or identity")
        }
        guard let view else {
            throw RPCError(
                code: .notFound,
                message: "no \(graph.rawValue) cluster has \(asked) (a cluster id merged into another is gone: "
                    + "Resolve one of its identities)"
            )
        }
        var cluster = Cdp_Identity_V1_Cluster()
        cluster.entityType = graph.entityType
        cluster.id = view.id.rawValue
        cluster.identities = view.identities.map(Self.message)
        cluster.links = view.links.map { key, stored, identities in
            var link = Cdp_Identity_V1_Link()
            link.recordKey = key
            link.version = stored.version
            link.source = stored.provenance.source
            link.batchID = stored.provenance.batchID
            link.ingestedAt = Google_Protobuf_Timestamp(date: stored.provenance.ingestedAt)
            link.identities = identities.map(Self.message)
            return link
        }
        return cluster
    }

    public func listConflicts(
        request: Cdp_Identity_V1_ListConflictsRequest,
        context: ServerContext
    ) async throws
        -> Cdp_Identity_V1_ListConflictsResponse
    {
        let graph: EntityGraph? = request.entityType == .unspecified ? nil : try Self.clusteredGraph(request.entityType)
        let pageSize = request.pageSize == 0 ? 100 : Int(min(request.pageSize, 1000))
        var before: Int64?
        if !request.pageToken.isEmpty {
            guard let id = Int64(request.pageToken), id > 0 else {
                throw RPCError(
                    code: .invalidArgument,
                    message: "page_token \"\(request.pageToken)\" is not one this service returned"
                )
            }
            before = id
        }
        let conflicts = try await engine.conflicts(in: graph, before: before, limit: pageSize + 1)
        var response = Cdp_Identity_V1_ListConflictsResponse()
        response.conflicts = conflicts.prefix(pageSize).map(Self.message)
        if conflicts.count > pageSize, let last = conflicts.prefix(pageSize).last {
            response.nextPageToken = String(last.id)
        }
        return response
    }

    // MARK: - Privacy

    public func removeIdentity(
        request: Cdp_Identity_V1_RemoveIdentityRequest,
        context: ServerContext
    ) async throws
        -> Cdp_Identity_V1_RemoveIdentityResponse
    {
        let graph = try Self.clusteredGraph(request.entityType)
        let identity = try Self.identity(request.identity, field: "identity")
        let removal: (events: [GraphEvent], updateSequence: UInt64)?
        do {
            removal = try await engine.remove(identity, from: graph)
        } catch {
            throw RPCError(code: .unavailable, message: "identity could not store the removal (\(error)); retry")
        }
        var response = Cdp_Identity_V1_RemoveIdentityResponse()
        response.removed = removal != nil
        response.changes = (removal?.events ?? []).map { IdentityEngine.clusterChange($0, in: graph) }
        response.updateSequence = removal?.updateSequence ?? 0
        if removal != nil {
            logger.notice(
                "identity removed",
                metadata: ["graph": "\(graph.rawValue)", "namespace": "\(identity.namespace)"]
            )
            committed()
        }
        return response
    }

    // MARK: - Status

    public func getOutboxStatus(
        request: Cdp_Identity_V1_GetOutboxStatusRequest,
        context: ServerContext
    ) async throws
        -> Cdp_Identity_V1_OutboxStatus
    {
        let status = try await engine.outboxStatus()
        var response = Cdp_Identity_V1_OutboxStatus()
        response.pendingUpdates = status.pending
        response.forwardedUpdates = status.forwarded
        if let oldest = status.oldestPending { response.oldestPending = Google_Protobuf_Timestamp(date: oldest) }
        response.lastError = forwardingError() ?? ""
        return response
    }

    // MARK: - Helpers

    private static func clusteredGraph(_ entityType: Cdp_Model_V1_EntityType) throws -> EntityGraph {
        guard let graph = EntityGraph(entityType), graph.isClustered else {
            let names = EntityGraph.clustered.map { protoName($0.entityType) }.joined(separator: ", ")
            throw RPCError(
                code: .invalidArgument,
                message: "entity_type \(protoName(entityType)) has no identity graph; use one of \(names)"
            )
        }
        return graph
    }

    /// The identity a request names; emails are compared as ingestion stores them, trimmed and lowercased.
    private static func identity(_ value: Cdp_Identity_V1_IdentityValue, field: String) throws -> Identity {
        guard !value.namespace.isEmpty, !value.value.isEmpty else {
            throw RPCError(
                code: .invalidArgument,
                message: "\(field) needs a namespace and a value, e.g. email and p2@townsend.com"
            )
        }
        return Identity(value.namespace, Namespace.normalized(value.value, in: value.namespace))
    }

    /// An entity type as the .proto file spells it, e.g. `ENTITY_TYPE_MARKETING_LIST`.
    static func protoName(_ entityType: Cdp_Model_V1_EntityType) -> String {
        let name = EntityGraph(entityType)?.rawValue ?? (entityType == .identityLink ? "identityLink" : "unspecified")
        var snake = ""
        for character in name {
            if character.isUppercase { snake += "_" }
            snake += character.uppercased()
        }
        return "ENTITY_TYPE_" + snake
    }

    static func message(_ identity: Identity) -> Cdp_Identity_V1_IdentityValue {
        var message = Cdp_Identity_V1_IdentityValue()
        message.namespace = identity.namespace
        message.value = identity.value
        return message
    }

    static func message(_ stored: StoredConflict) -> Cdp_Identity_V1_Conflict {
        var message = Cdp_Identity_V1_Conflict()
        message.id = UInt64(stored.id)
        message.entityType = stored.graph.entityType
        message.recordKey = stored.conflict.recordKey
        message.identity = Self.message(stored.conflict.identity)
        message.clusters = stored.conflict.clusters.map(\.rawValue)
        message.detectedAt = Google_Protobuf_Timestamp(date: stored.detectedAt)
        let clusters = stored.conflict.clusters.map(\.description).joined(separator: " and ")
        switch stored.conflict.kind {
        case .uniqueNamespace(let namespace):
            message.kind = .uniqueNamespace
            message.namespace = namespace
            message.reason =
                "\(clusters) each hold a different \(namespace), and a \(stored.graph.rawValue) may hold only one: "
                + "\(stored.conflict.recordKey) was not linked through \(stored.conflict.identity)"
        case .clusterCap(let cap):
            message.kind = .clusterCap
            message.cap = UInt32(cap)
            message.reason =
                "joining \(clusters) would exceed \(cap) identities per \(stored.graph.rawValue): "
                + "\(stored.conflict.recordKey) was not linked through \(stored.conflict.identity)"
        }
        return message
    }
}

/// Forwarding to profile: what the outbox relay calls.
public enum ProfileForwarding {
    /// Sends one outbox chunk to profile, each update as stored; returns once profile acknowledged it.
    public static func deliver(
        _ chunk: UpdateChunk,
        via client: RPCClient,
        timeout: Duration = .seconds(30)
    ) async throws {
        var request = Cdp_Profile_V1_AcceptIdentityUpdatesRequestBytes()
        request.sender = "identity"
        request.updates = chunk.updates
        _ = try await client.unary(
            Cdp_Profile_V1_Profile.Method.acceptIdentityUpdatesBytes,
            request,
            options: CallOptions(timeout: timeout)
        )
    }
}

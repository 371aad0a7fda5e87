import CDPProto
import Foundation
import IdentityRules
import Logging
import ProfileStore
import RPCCore
import SwiftProtobuf

/// `cdp.profile.v1.Profile`: identity's stream in, unified person and account views out.
public final class ProfileService: Cdp_Profile_V1_Profile.ServiceProtocol {
    private let engine: ProfileEngine
    private let logger: Logger
    private let privacy: PrivacyCoordinator
    private let changed: @Sendable () -> Void
    private let forwardingError: @Sendable () -> String?

    /// Creates the service.
    ///
    /// - Parameters:
    ///   - privacy: Drives privacy requests (`DeletePerson`) through the services.
    ///   - changed: Called after views changed (wakes the outbox relay).
    ///   - forwardingError: The relay's last error, for `GetOutboxStatus`.
    public init(
        engine: ProfileEngine,
        logger: Logger,
        privacy: PrivacyCoordinator,
        changed: @escaping @Sendable () -> Void = {},
        forwardingError: @escaping @Sendable () -> String? = { nil }
    ) {
        self.engine = engine
        self.logger = logger
        self.privacy = privacy
        self.changed = changed
        self.forwardingError = forwardingError
    }

    public func acceptIdentityUpdates(
        request: Cdp_Profile_V1_AcceptIdentityUpdatesRequest,
        context: ServerContext
    ) async throws -> Cdp_Profile_V1_AcceptIdentityUpdatesResponse {
        try await accept(try request.updates.map(ReceivedUpdate.init))
    }

    /// `AcceptIdentityUpdates` as the server serves it: each record's `cdp.model.v1.Record` is kept as
    /// it came, for the store, and of an event only what the store indexes is decoded (see
    /// `AcceptIdentityUpdatesRequestStoredBytes` in profile.proto).
    public var acceptIdentityUpdatesKeepingBytes: ServerMethod {
        .unary(Cdp_Profile_V1_Profile.Method.acceptIdentityUpdatesStoredBytes) { [self] request, _ in
            let updates = try RPCError.readingEach(
                request.updates,
                of: "updates",
                failing: "holds a record that is not a valid \(Cdp_Model_V1_Record.protoMessageName)",
                ReceivedUpdate.init
            )
            return try await accept(updates)
        }
    }

    private func accept(_ updates: [ReceivedUpdate]) async throws -> Cdp_Profile_V1_AcceptIdentityUpdatesResponse {
        let result: (applied: Int, duplicates: Int)
        do {
            result = try await engine.apply(updates)
        } catch {
            logger.error("profile store failed; the call was rolled back", metadata: ["error": "\(error)"])
            throw RPCError(code: .unavailable, message: "profile could not store the updates (\(error)); retry")
        }
        if result.applied > 0 { changed() }
        var response = Cdp_Profile_V1_AcceptIdentityUpdatesResponse()
        response.applied = UInt32(result.applied)
        response.duplicates = UInt32(result.duplicates)
        return response
    }

    public func getPerson(
        request: Cdp_Profile_V1_GetEntityRequest,
        context: ServerContext
    ) async throws -> Cdp_Profile_V1_PersonView {
        let cluster = try await cluster(of: .person, request.identity)
        let asOf = request.hasAsOf ? request.asOf.date : Date()
        guard let view = try await engine.personView(cluster: cluster, asOf: asOf) else {
            throw RPCError(code: .notFound, message: "no person has \(Self.describe(request.identity))")
        }
        return view
    }

    public func getAccount(
        request: Cdp_Profile_V1_GetEntityRequest,
        context: ServerContext
    ) async throws -> Cdp_Profile_V1_AccountView {
        let cluster = try await cluster(of: .account, request.identity)
        guard let view = try await engine.accountView(cluster: cluster) else {
            throw RPCError(code: .notFound, message: "no account has \(Self.describe(request.identity))")
        }
        return view
    }

    public func scanPersonViews(
        request: Cdp_Profile_V1_ScanRequest,
        responses: RPCWriter<Cdp_Profile_V1_PersonView>,
        context: ServerContext
    ) async throws {
        let asOf = request.hasAsOf ? request.asOf.date : Date()
        try await scan(.person, request, asOf: asOf) { view in
            if case .person(let person) = view { try await responses.write(person) }
        }
    }

    public func scanAccountViews(
        request: Cdp_Profile_V1_ScanRequest,
        responses: RPCWriter<Cdp_Profile_V1_AccountView>,
        context: ServerContext
    ) async throws {
        try await scan(.account, request, asOf: Date()) { view in
            if case .account(let account) = view { try await responses.write(account) }
        }
    }

    /// Every view of a partition, built a page at a time from one snapshot per page (persons of one
    /// account share its unified records), written one by one.
    private func scan(
        _ entity: Cdp_Model_V1_EntityType,
        _ request: Cdp_Profile_V1_ScanRequest,
        asOf: Date,
        each: (ProfileView) async throws -> Void
    ) async throws {
        let partitions = Int(max(request.partitions, 1))
        guard Int(request.partition) < partitions else {
            throw RPCError(
                code: .invalidArgument,
                message:
                    "partition \(request.partition) is not below partitions \(partitions) (partitions count from 0)"
            )
        }
        var after: UInt64 = 0
        while true {
            try Task.checkCancellation()
            let page = try await engine.clusters(
                of: entity,
                partition: Int(request.partition),
                partitions: partitions,
                after: after,
                limit: 200
            )
            guard let last = page.last else { return }
            let views = try await engine.views(of: page.map { ViewKey(entity: entity, cluster: $0) }, asOf: asOf)
            for case let view? in views { try await each(view) }
            after = last
        }
    }

    public func getEvents(
        request: Cdp_Profile_V1_GetEventsRequest,
        context: ServerContext
    ) async throws -> Cdp_Profile_V1_GetEventsResponse {
        let cluster = try await cluster(of: .person, request.identity)
        let to = request.hasTo ? request.to.date : Date()
        let from = request.hasFrom ? request.from.date : Date(timeIntervalSince1970: 0)
        guard from <= to else {
            throw RPCError(code: .invalidArgument, message: "from (\(from)) is after to (\(to))")
        }
        let limit = request.limit == 0 ? 1000 : Int(min(request.limit, 5000))
        var response = Cdp_Profile_V1_GetEventsResponse()
        response.events = try await engine.events(person: cluster, from: from, to: to, limit: limit)
        return response
    }

    public func deletePerson(
        request: Cdp_Profile_V1_GetEntityRequest,
        context: ServerContext
    ) async throws -> Cdp_Profile_V1_DeletePersonResponse {
        let cluster: UInt64?
        do {
            cluster = try await self.cluster(of: .person, request.identity)
        } catch let error as RPCError where error.code == .notFound {
            // Erased before? The request that did it answers (DeletePerson is idempotent).
            cluster = nil
        }
        let outcome = try await privacy.delete(cluster: cluster, asked: request.identity)
        var response = Cdp_Profile_V1_DeletePersonResponse()
        response.fragmentsDeleted = UInt32(outcome.fragments)
        response.eventsDeleted = UInt32(outcome.events)
        response.identities = outcome.identities
        response.request = outcome.request
        response.alreadyErased = outcome.alreadyErased
        return response
    }

    public func getPrivacyRequest(
        request: Cdp_Privacy_V1_GetPrivacyRequestRequest,
        context: ServerContext
    ) async throws -> Cdp_Privacy_V1_PrivacyRequest {
        try await privacy.request(request.id)
    }

    public func listPrivacyRequests(
        request: Cdp_Privacy_V1_ListPrivacyRequestsRequest,
        context: ServerContext
    ) async throws -> Cdp_Privacy_V1_ListPrivacyRequestsResponse {
        var response = Cdp_Privacy_V1_ListPrivacyRequestsResponse()
        response.requests = try await privacy.requests()
        return response
    }

    public func getOutboxStatus(
        request: Cdp_Profile_V1_GetOutboxStatusRequest,
        context: ServerContext
    ) async throws -> Cdp_Profile_V1_OutboxStatus {
        let status = try await engine.outboxStatus()
        var response = Cdp_Profile_V1_OutboxStatus()
        response.pendingChanges = status.pending
        response.sentChanges = status.sent
        if let oldest = status.oldestPending { response.oldestPending = Google_Protobuf_Timestamp(date: oldest) }
        response.lastError = forwardingError() ?? ""
        response.appliedIdentitySequence = try await engine.appliedSequence()
        return response
    }

    // MARK: - Helpers

    private func cluster(
        of entity: Cdp_Model_V1_EntityType,
        _ identity: Cdp_Identity_V1_IdentityValue
    ) async throws
        -> UInt64
    {
        guard !identity.namespace.isEmpty, !identity.value.isEmpty else {
            throw RPCError(
                code: .invalidArgument,
                message: "identity needs a namespace and a value, e.g. email and p2@townsend.com"
            )
        }
        var normalized = identity
        normalized.value = Namespace.normalized(identity.value, in: identity.namespace)
        guard let cluster = try await engine.cluster(of: entity, named: normalized) else {
            let name = entity == .person ? "person" : "account"
            throw RPCError(code: .notFound, message: "no \(name) has \(Self.describe(normalized))")
        }
        return cluster
    }

    private static func describe(_ identity: Cdp_Identity_V1_IdentityValue) -> String {
        "the identity \(identity.namespace):\(identity.value)"
    }
}

/// Sending state changes to segmentation: what the outbox relay calls.
public enum SegmentationForwarding {
    /// Sends one chunk, its changes as serialized when taken; returns once segmentation acknowledged it.
    public static func deliver(
        _ chunk: StateChunk,
        via client: RPCClient,
        timeout: Duration = .seconds(30)
    ) async throws {
        var request = Cdp_Segmentation_V1_AcceptStateChangesRequestChangeBytes()
        request.sender = "profile"
        request.changes = chunk.serialized
        _ = try await client.unary(
            Cdp_Segmentation_V1_Segmentation.Method.acceptStateChangesChangeBytes,
            request,
            options: CallOptions(timeout: timeout)
        )
    }
}

import CDPProto
import Foundation
import IdentityGraph
import IdentityRules
import IdentityService
import IdentityStore
import Logging
import NIOPosix
import RPCCore
import RPCHTTP2
import ServiceSupport
import Synchronization
import TestSupport
import Testing

/// A stand-in for the profile service: applies updates in sequence order, skips those it applied
/// before, and can be made to fail.
final class RecordingProfile: Cdp_Profile_V1_Profile.ServiceProtocol {
    private struct State {
        var updates: [Cdp_Profile_V1_IdentityUpdate] = []
        /// Every update received, as it came.
        var received: [Data] = []
        var failing = false
        var duplicates = 0
    }

    private let state = Mutex(State())

    var updates: [Cdp_Profile_V1_IdentityUpdate] { state.withLock { $0.updates } }
    var received: [Data] { state.withLock { $0.received } }

    /// `AcceptIdentityUpdates` keeping each update as it came in ``received`` before it is applied.
    var keepingBytes: ServerMethod {
        .unary(Cdp_Profile_V1_Profile.Method.acceptIdentityUpdatesBytes) { [self] request, context in
            state.withLock { $0.received += request.updates }
            var decoded = Cdp_Profile_V1_AcceptIdentityUpdatesRequest()
            decoded.sender = request.sender
            decoded.updates = try request.updates.map { try Cdp_Profile_V1_IdentityUpdate(serializedBytes: $0) }
            return try await acceptIdentityUpdates(request: decoded, context: context)
        }
    }
    var duplicates: Int { state.withLock { $0.duplicates } }

    var failing: Bool {
        get { state.withLock { $0.failing } }
        set { state.withLock { $0.failing = newValue } }
    }

    func acceptIdentityUpdates(
        request: Cdp_Profile_V1_AcceptIdentityUpdatesRequest,
        context: ServerContext
    ) async throws -> Cdp_Profile_V1_AcceptIdentityUpdatesResponse {
        try state.withLock { state in
            if state.failing { throw RPCError(code: .unavailable, message: "profile is down") }
            var response = Cdp_Profile_V1_AcceptIdentityUpdatesResponse()
            for update in request.updates {
                if let last = state.updates.last, update.sequence <= last.sequence {
                    state.duplicates += 1
                    response.duplicates += 1
                } else {
                    state.updates.append(update)
                    response.applied += 1
                }
            }
            return response
        }
    }
}

extension RecordingProfile {
    // The rest of profile's API plays no part in identity's forwarding.
    private static var unimplemented: RPCError { RPCError(code: .unimplemented, message: "not part of the stand-in") }

    func getPerson(
        request: Cdp_Profile_V1_GetEntityRequest,
        context: ServerContext
    ) async throws
        -> Cdp_Profile_V1_PersonView
    { throw Self.unimplemented }

    func getAccount(
        request: Cdp_Profile_V1_GetEntityRequest,
        context: ServerContext
    ) async throws
        -> Cdp_Profile_V1_AccountView
    { throw Self.unimplemented }

    func scanPersonViews(
        request: Cdp_Profile_V1_ScanRequest,
        responses: RPCWriter<Cdp_Profile_V1_PersonView>,
        context: ServerContext
    ) async throws { throw Self.unimplemented }

    func scanAccountViews(
        request: Cdp_Profile_V1_ScanRequest,
        responses: RPCWriter<Cdp_Profile_V1_AccountView>,
        context: ServerContext
    ) async throws { throw Self.unimplemented }

    func getEvents(
        request: Cdp_Profile_V1_GetEventsRequest,
        context: ServerContext
    ) async throws
        -> Cdp_Profile_V1_GetEventsResponse
    { throw Self.unimplemented }

    func deletePerson(
        request: Cdp_Profile_V1_GetEntityRequest,
        context: ServerContext
    ) async throws
        -> Cdp_Profile_V1_DeletePersonResponse
    { throw Self.unimplemented }

    func getPrivacyRequest(
        request: Cdp_Privacy_V1_GetPrivacyRequestRequest,
        context: ServerContext
    ) async throws -> Cdp_Privacy_V1_PrivacyRequest { throw Self.unimplemented }

    func listPrivacyRequests(
        request: Cdp_Privacy_V1_ListPrivacyRequestsRequest,
        context: ServerContext
    ) async throws -> Cdp_Privacy_V1_ListPrivacyRequestsResponse { throw Self.unimplemented }

    func getOutboxStatus(
        request: Cdp_Profile_V1_GetOutboxStatusRequest,
        context: ServerContext
    ) async throws
        -> Cdp_Profile_V1_OutboxStatus
    { throw Self.unimplemented }
}

/// An identity service on loopback (in-memory store) forwarding to a recording profile, and a client.
struct IdentityHarness {
    let client: Cdp_Identity_V1_Identity.Client
    let profile: RecordingProfile

    func accept(_ records: [Cdp_Identity_V1_StoredRecord]) async throws -> Cdp_Identity_V1_AcceptRecordsResponse {
        var request = Cdp_Identity_V1_AcceptRecordsRequest()
        request.sender = "test"
        request.records = records
        return try await client.acceptRecords(request)
    }

    func resolve(
        _ namespace: String,
        _ value: String,
        _ entity: Cdp_Model_V1_EntityType = .person
    ) async throws
        -> Cdp_Identity_V1_ResolveResponse
    {
        var request = Cdp_Identity_V1_ResolveRequest()
        request.entityType = entity
        request.identity = .with {
            $0.namespace = namespace
            $0.value = value
        }
        return try await client.resolve(request)
    }

    func outboxStatus() async throws -> Cdp_Identity_V1_OutboxStatus {
        try await client.getOutboxStatus(Cdp_Identity_V1_GetOutboxStatusRequest())
    }
}

func withIdentityHarness(
    configuration: IdentityEngine.Configuration = .init(),
    _ body: (IdentityHarness) async throws -> Void
) async throws {
    let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
    let profile = RecordingProfile()
    let profileServer = RPCServer(
        configuration: .init(),
        services: [profile.serving(profile.keepingBytes)],
        logger: logger
    )
    let profilePort = try await profileServer.start().port!
    let profileTransport = HTTP2ClientTransport(
        configuration: .init(host: "127.0.0.1", port: profilePort, initialBackoff: .milliseconds(20))
    )
    let profileClient = RPCClient(transport: profileTransport)

    let store = try SQLiteIdentityStore()
    let engine = try IdentityEngine(
        store: store,
        configuration: configuration,
        loop: MultiThreadedEventLoopGroup.singleton.next()
    )
    let relay = OutboxRelay<UpdateChunk>(
        name: "test",
        configuration: .init(chunkSize: 3, backoff: Backoff(initial: .milliseconds(20), maximum: .milliseconds(100))),
        logger: logger,
        fetch: { try await engine.nextOutboxChunk(limit: $0, after: $1) },
        deliver: { try await ProfileForwarding.deliver($0, via: profileClient) },
        acknowledge: { try await engine.acknowledge($0) }
    )
    let service = IdentityService(
        engine: engine,
        logger: logger,
        committed: { relay.wake() },
        forwardingError: { relay.status.lastError }
    )
    // Served as the identity command serves it.
    let server = RPCServer(
        configuration: .init(runsHandlersOnEventLoop: false),
        services: [service.serving(service.acceptRecordsKeepingBytes)],
        logger: logger
    )
    let port = try await server.start().port!
    let transport = HTTP2ClientTransport(configuration: .init(host: "127.0.0.1", port: port))
    let harness = IdentityHarness(
        client: Cdp_Identity_V1_Identity.Client(RPCClient(transport: transport)),
        profile: profile
    )
    func close() async {
        await transport.close()
        await server.shutdown()
        await profileTransport.close()
        await profileServer.shutdown()
    }
    do {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await relay.run() }
            try await body(harness)
            group.cancelAll()
        }
    } catch {
        await close()
        throw error
    }
    await close()
}

@Suite("Identity service")
struct IdentityServiceTests {
    /// Records in, annotated records and merges out to profile, in order, each exactly once although
    /// profile was down for a while.
    @Test func forwardsAnOrderedStreamToProfileThroughAnOutage() async throws {
        try await withIdentityHarness { harness in
            harness.profile.failing = true
            #expect(try await harness.accept(Bodea.persons).accepted == 4)
            try await eventually { try await !harness.outboxStatus().lastError.isEmpty }
            // 2102 joined 102's cluster, but its own new cluster was never handed out: no merge to tell.
            #expect(try await harness.outboxStatus().pendingUpdates == 4, "the 4 records wait")
            harness.profile.failing = false
            try await eventually { harness.profile.updates.count == 4 }
            _ = try await harness.accept(Bodea.accounts + Bodea.crosswalks)
            try await eventually { try await harness.outboxStatus().pendingUpdates == 0 }

            let updates = harness.profile.updates
            #expect(updates.map(\.sequence) == Array(1...UInt64(updates.count)))
            let records = updates.compactMap { update -> String? in
                if case .record(let annotated)? = update.update { return annotated.stored.record.key }
                return nil
            }
            let sent = (Bodea.persons + Bodea.accounts + Bodea.crosswalks).map(\.record.key)
            #expect(records == sent)
            // The persons named A1 and A2 before the accounts arrived, so both ids were handed out: their
            // merge by the second crosswalk row comes right before that row.
            let merges = updates.filter { $0.clusterChange.kind == .merged }
            #expect(merges.count == 1 && merges.first?.clusterChange.entityType == .account)
            let merge = try #require(updates.firstIndex { $0.clusterChange.kind == .merged })
            #expect(updates[merge + 1].record.stored.record.key == Bodea.crosswalks[1].record.key)
            let status = try await harness.outboxStatus()
            #expect(status.forwardedUpdates == UInt64(updates.count) && status.lastError.isEmpty)
        }
    }

    @Test func resolveAndGetClusterShowTheIdentitiesAndWhereTheirLinksCameFrom() async throws {
        try await withIdentityHarness { harness in
            _ = try await harness.accept(Bodea.persons)
            let p2 = try await harness.resolve("email", " P2@Townsend.com ")
            #expect(
                Set(p2.identities.map(\.value)) == ["p2@townsend.com", "102@mkto-1.Marketo", "2102@mkto-2.Marketo"]
            )

            var request = Cdp_Identity_V1_GetClusterRequest()
            request.entityType = .person
            request.id = p2.clusterID
            let cluster = try await harness.client.getCluster(request)
            #expect(cluster.id == p2.clusterID)
            #expect(cluster.links.map(\.recordKey) == ["102@mkto-1.Marketo", "2102@mkto-2.Marketo"])
            #expect(cluster.links.map(\.source.instance) == ["mkto-1", "mkto-2"])
            #expect(cluster.links.allSatisfy { $0.batchID == "b-test" && $0.identities.count == 2 })

            // Only a cluster's current id names it: not the sequence of a younger member (p2's email), nor an
            // unknown one.
            for id in [p2.clusterID + 1, 999] {
                request.id = id
                let missing = await #expect(throws: RPCError.self) { _ = try await harness.client.getCluster(request) }
                #expect(missing?.code == .notFound, "id \(id)")
            }
            request.identity = .with {
                $0.namespace = "sourceKey"
                $0.value = "2102@mkto-2.Marketo"
            }
            #expect(try await harness.client.getCluster(request).id == p2.clusterID)
        }
    }

    @Test func conflictsAreListedNewestFirstInPages() async throws {
        let crmIDs = IdentityGraph.Configuration(uniqueNamespaces: ["crmId"])
        try await withIdentityHarness(configuration: .init(graphs: [.person: crmIDs])) { harness in
            var records: [Cdp_Identity_V1_StoredRecord] = []
            for index in 0..<5 {
                records.append(
                    Bodea.person("\(index)", "mkto-1", email: "info@townsend.com", account: nil, crmID: "003-\(index)")
                )
            }
            _ = try await harness.accept(records)
            var request = Cdp_Identity_V1_ListConflictsRequest()
            request.entityType = .person
            request.pageSize = 3
            let first = try await harness.client.listConflicts(request)
            #expect(first.conflicts.count == 3 && !first.nextPageToken.isEmpty)
            #expect(first.conflicts.map(\.recordKey) == ["4@mkto-1.Marketo", "3@mkto-1.Marketo", "2@mkto-1.Marketo"])
            #expect(first.conflicts.allSatisfy { $0.kind == .uniqueNamespace && $0.namespace == "crmId" })
            #expect(first.conflicts[0].reason.contains("may hold only one"))
            request.pageToken = first.nextPageToken
            let second = try await harness.client.listConflicts(request)
            #expect(second.conflicts.map(\.recordKey) == ["1@mkto-1.Marketo"] && second.nextPageToken.isEmpty)

            request.pageToken = "x"
            let error = await #expect(throws: RPCError.self) { _ = try await harness.client.listConflicts(request) }
            #expect(error?.code == .invalidArgument)
        }
    }

    /// The cluster cap: a link that would make a cluster too big is refused and listed.
    @Test func theClusterCapIsEnforcedThroughTheService() async throws {
        let capped = IdentityGraph.Configuration(maxIdentitiesPerCluster: 4)
        try await withIdentityHarness(configuration: .init(graphs: [.person: capped])) { harness in
            var records: [Cdp_Identity_V1_StoredRecord] = []
            for index in 0..<4 {
                records.append(Bodea.person("\(index)", "mkto-1", email: "team@townsend.com", account: nil))
            }
            _ = try await harness.accept(records)
            let team = try await harness.resolve("email", "team@townsend.com")
            #expect(team.identities.count == 4, "the email, then three source keys: the fourth would exceed the cap")
            var request = Cdp_Identity_V1_ListConflictsRequest()
            request.entityType = .person
            let conflicts = try await harness.client.listConflicts(request).conflicts
            #expect(conflicts.map(\.kind) == [.clusterCap] && conflicts.first?.cap == 4)
            #expect(conflicts.first?.recordKey == "3@mkto-1.Marketo")
        }
    }

    @Test func removeIdentityIsForwardedAndIdempotent() async throws {
        try await withIdentityHarness { harness in
            _ = try await harness.accept(Bodea.persons)
            var request = Cdp_Identity_V1_RemoveIdentityRequest()
            request.entityType = .person
            request.identity = .with {
                $0.namespace = "email"
                $0.value = "p2@townsend.com"
            }
            let removed = try await harness.client.removeIdentity(request)
            #expect(removed.removed && removed.changes.map(\.kind) == [.split])
            try await eventually { harness.profile.updates.last?.identityRemoved.identity.value == "p2@townsend.com" }
            #expect(harness.profile.updates.dropLast().last?.clusterChange == removed.changes.first)
            let again = try await harness.client.removeIdentity(request)
            #expect(!again.removed && again.changes.isEmpty)
            let gone = await #expect(throws: RPCError.self) {
                _ = try await harness.resolve("email", "p2@townsend.com")
            }
            #expect(gone?.code == .notFound)
        }
    }

    /// Each record reaches profile as the sender serialized it, byte for byte (a field identity does not
    /// know passes through too), and a record that does not decode is refused by its index.
    @Test func recordsPassOnToProfileAsTheyCame() async throws {
        let acceptRecords = Cdp_Identity_V1_Identity.Method.acceptRecordsRecordBytes
        // Field 15, varint 7: no field of StoredRecord. First, where an encoder would never put it: a record
        // decoded and encoded again would have it last.
        let unknownField: [UInt8] = [0x78, 0x07]
        let sent = try Bodea.persons.prefix(2).map { Data(unknownField + (try $0.serializedBytes() as [UInt8])) }
        try await withIdentityHarness { harness in
            var refused = Cdp_Identity_V1_AcceptRecordsRequestRecordBytes()
            refused.records = [sent[0], Data([0x0a, 0xff])]
            let error = await #expect(throws: RPCError.self) {
                _ = try await harness.client.rpc.unary(acceptRecords, refused)
            }
            #expect(error?.code == .invalidArgument && error?.message.contains("records[1] is not a valid") == true)
            #expect(try await harness.outboxStatus().pendingUpdates == 0, "nothing of the refused call was taken")

            var request = Cdp_Identity_V1_AcceptRecordsRequestRecordBytes()
            request.sender = "test"
            request.records = sent
            #expect(try await harness.client.rpc.unary(acceptRecords, request).message.accepted == 2)
            try await eventually { harness.profile.updates.count == 2 }
            let stored = harness.profile.updates.map(\.record.stored)
            #expect(stored.map(\.record.key) == Bodea.persons.prefix(2).map(\.record.key))
            #expect(stored.map { Data($0.unknownFields.data) } == [Data(unknownField), Data(unknownField)])
            // The updates as profile received them: the records' bytes are the bytes sent.
            let forwarded = try harness.profile.received.map {
                try Cdp_Profile_V1_IdentityUpdateRecordBytes(serializedBytes: $0).record.stored
            }
            #expect(forwarded == sent)
        }
    }

    @Test func badRequestsAreRefusedWithWhatAndWhere() async throws {
        try await withIdentityHarness { harness in
            var keyless = Bodea.persons[1]
            keyless.record.key = ""
            let error = await #expect(throws: RPCError.self) {
                _ = try await harness.accept([Bodea.persons[0], keyless])
            }
            #expect(error?.code == .invalidArgument && error?.message.contains("records[1]") == true)
            let nothing = await #expect(throws: RPCError.self) {
                _ = try await harness.resolve("email", "p1@townsend.com")
            }
            #expect(nothing?.code == .notFound, "nothing of the refused call was taken")

            let events = await #expect(throws: RPCError.self) { _ = try await harness.resolve("email", "x", .event) }
            #expect(events?.code == .invalidArgument && events?.message.contains("ENTITY_TYPE_PERSON") == true)
            let empty = await #expect(throws: RPCError.self) { _ = try await harness.resolve("", "x") }
            #expect(empty?.code == .invalidArgument)
        }
    }
}

import CDPProto
import Foundation
import IdentityGraph
import IdentityService
import Logging
import NIOPosix
import PipelineSupport
import ProfileService
import ProfileStore
import RPCCore
import RPCHTTP2
import SegmentationState
import ServiceSupport
import SwiftProtobuf
import Synchronization
import TestSupport
import Testing

/// A stand-in for the segmentation service: keeps the state profile's changes describe (segmentation's
/// own ``EntityState``), and can be made to fail.
final class RecordingSegmentation: Cdp_Segmentation_V1_Segmentation.ServiceProtocol {
    private struct State {
        var state = EntityState()
        var received = 0
        var failing = false
    }

    private let state = Mutex(State())

    var received: Int { state.withLock { $0.received } }
    var failing: Bool {
        get { state.withLock { $0.failing } }
        set { state.withLock { $0.failing = newValue } }
    }

    /// The person view the state builds.
    func person(_ cluster: UInt64, asOf: Date) -> Cdp_Profile_V1_PersonView? {
        state.withLock { $0.state.personView(cluster, asOf: asOf) }
    }

    /// The account view the state builds.
    func account(_ cluster: UInt64) -> Cdp_Profile_V1_AccountView? {
        state.withLock { $0.state.accountView(cluster) }
    }

    func acceptStateChanges(
        request: Cdp_Segmentation_V1_AcceptStateChangesRequest,
        context: ServerContext
    ) async throws -> Cdp_Segmentation_V1_AcceptStateChangesResponse {
        try state.withLock { held in
            if held.failing { throw RPCError(code: .unavailable, message: "segmentation is down") }
            var response = Cdp_Segmentation_V1_AcceptStateChangesResponse()
            var touched: Set<EntityState.EntityKey> = []
            for change in request.changes {
                held.received += 1
                switch try held.state.apply(change, touched: &touched) {
                case .applied: response.accepted += 1
                case .stale: response.stale += 1
                }
            }
            response.evaluated = UInt32(touched.count)
            return response
        }
    }
}

/// Profile only calls AcceptStateChanges; the rest of the API is not the stand-in's business.
extension RecordingSegmentation {
    static var unimplemented: RPCError { RPCError(code: .unimplemented, message: "not part of the stand-in") }

    func createSegment(
        request: Cdp_Segmentation_V1_CreateSegmentRequest,
        context: ServerContext
    ) async throws -> Cdp_Segmentation_V1_Segment { throw Self.unimplemented }

    func getSegment(
        request: Cdp_Segmentation_V1_GetSegmentRequest,
        context: ServerContext
    ) async throws -> Cdp_Segmentation_V1_Segment { throw Self.unimplemented }

    func listSegments(
        request: Cdp_Segmentation_V1_ListSegmentsRequest,
        context: ServerContext
    ) async throws -> Cdp_Segmentation_V1_ListSegmentsResponse { throw Self.unimplemented }

    func updateSegment(
        request: Cdp_Segmentation_V1_UpdateSegmentRequest,
        context: ServerContext
    ) async throws -> Cdp_Segmentation_V1_Segment { throw Self.unimplemented }

    func deleteSegment(
        request: Cdp_Segmentation_V1_DeleteSegmentRequest,
        context: ServerContext
    ) async throws -> Cdp_Segmentation_V1_DeleteSegmentResponse { throw Self.unimplemented }

    func estimate(
        request: Cdp_Segmentation_V1_EstimateRequest,
        context: ServerContext
    ) async throws -> Cdp_Segmentation_V1_EstimateResponse { throw Self.unimplemented }

    func evaluate(
        request: Cdp_Segmentation_V1_EvaluateRequest,
        context: ServerContext
    ) async throws -> Cdp_Segmentation_V1_EvaluationJob { throw Self.unimplemented }

    func getEvaluation(
        request: Cdp_Segmentation_V1_GetEvaluationRequest,
        context: ServerContext
    ) async throws -> Cdp_Segmentation_V1_EvaluationJob { throw Self.unimplemented }

    func getMembers(
        request: Cdp_Segmentation_V1_GetMembersRequest,
        context: ServerContext
    ) async throws -> Cdp_Segmentation_V1_GetMembersResponse { throw Self.unimplemented }

    func explain(
        request: Cdp_Segmentation_V1_ExplainRequest,
        context: ServerContext
    ) async throws -> Cdp_Segmentation_V1_Explanation { throw Self.unimplemented }

    func getOutboxStatus(
        request: Cdp_Segmentation_V1_GetOutboxStatusRequest,
        context: ServerContext
    ) async throws -> Cdp_Segmentation_V1_OutboxStatus { throw Self.unimplemented }
}

/// A stand-in for ingestion's, segmentation's and destination's `Erasure`: records each call.
final class RecordingErasure: Cdp_Privacy_V1_Erasure.ServiceProtocol {
    private let calls = Mutex<[Cdp_Privacy_V1_EraseRequest]>([])
    var all: [Cdp_Privacy_V1_EraseRequest] { calls.withLock { $0 } }

    func erase(
        request: Cdp_Privacy_V1_EraseRequest,
        context: ServerContext
    ) async throws -> Cdp_Privacy_V1_EraseReport {
        calls.withLock { $0.append(request) }
        var report = Cdp_Privacy_V1_EraseReport()
        report.removed["calls"] = 1
        return report
    }
}

/// A profile service on loopback fed by an in-process identity (whose service, on its own loopback
/// server, removes identities; its updates are forwarded to profile as identity's relay would),
/// sending views to a recording segmentation, with the other services' erasure recorded.
struct ProfileHarness: Sendable {
    let client: Cdp_Profile_V1_Profile.Client
    /// The same connection, for calls made as identity's relay makes them.
    let rpc: RPCClient
    let pipeline: ProfilePipeline
    let segmentation: RecordingSegmentation
    let erasure: RecordingErasure

    /// Sends identity's pending updates to profile, as identity's relay does.
    func forward() async throws {
        // Only what was sent is acknowledged (a test's ingest and the background relay both forward;
        // profile skips what it applied before).
        guard let chunk = try pipeline.identityStore.nextOutboxChunk(limit: 1_000_000, maxBytes: .max) else { return }
        try await ProfileForwarding.deliver(chunk, via: rpc)
        try pipeline.identityStore.acknowledge(chunk)
    }

    func ingest(_ records: [Cdp_Identity_V1_StoredRecord]) async throws {
        _ = try await pipeline.identity.accept(records)
        try await forward()
    }

    func request(_ namespace: String, _ value: String) -> Cdp_Profile_V1_GetEntityRequest {
        var request = Cdp_Profile_V1_GetEntityRequest()
        request.identity = identity(namespace, value)
        request.asOf = Google_Protobuf_Timestamp(date: ProfileStoreTests.asOf)
        return request
    }
}

func withProfileHarness(identityAvailable: Bool = true, _ body: (ProfileHarness) async throws -> Void) async throws {
    let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
    let segmentation = RecordingSegmentation()
    let segmentationServer = RPCServer(configuration: .init(), services: [segmentation], logger: logger)
    let segmentationPort = try await segmentationServer.start().port!
    let segmentationTransport = HTTP2ClientTransport(
        configuration: .init(host: "127.0.0.1", port: segmentationPort, initialBackoff: .milliseconds(20))
    )
    let segmentationClient = RPCClient(transport: segmentationTransport)

    let store = try SQLiteProfileStore()
    let engine = ProfileEngine(store: store, loop: MultiThreadedEventLoopGroup.singleton.next())
    let relay = OutboxRelay<StateChunk>(
        name: "test",
        configuration: .init(chunkSize: 4, backoff: Backoff(initial: .milliseconds(20), maximum: .milliseconds(100))),
        logger: logger,
        fetch: { try await engine.nextStateChunk(limit: $0, after: $1) },
        deliver: { try await SegmentationForwarding.deliver($0, via: segmentationClient) },
        acknowledge: { try await engine.acknowledge($0) }
    )
    let pipeline = try ProfilePipeline(profile: store)
    // Identity's service and the other services' erasure on one loopback server.
    let erasure = RecordingErasure()
    let peersServer = RPCServer(
        configuration: .init(runsHandlersOnEventLoop: false),
        services: [IdentityService(engine: pipeline.identity, logger: logger), erasure],
        logger: logger
    )
    let peersPort = try await peersServer.start().port!
    let peersTransport = HTTP2ClientTransport(configuration: .init(host: "127.0.0.1", port: peersPort))
    let peers = RPCClient(transport: peersTransport)
    let privacy = PrivacyCoordinator(
        engine: engine,
        peers: .init(
            ingestion: Cdp_Privacy_V1_Erasure.Client(peers),
            identity: identityAvailable ? Cdp_Identity_V1_Identity.Client(peers) : nil,
            identityErasure: identityAvailable ? Cdp_Privacy_V1_Erasure.Client(peers) : nil,
            segmentation: Cdp_Privacy_V1_Erasure.Client(peers)
        ),
        logger: logger,
        pollInterval: .milliseconds(50)
    ) { relay.wake() }
    let service = ProfileService(
        engine: engine,
        logger: logger,
        privacy: privacy,
        changed: { relay.wake() },
        forwardingError: { relay.status.lastError }
    )
    // Served as the service's executable serves it.
    let server = RPCServer(
        configuration: .init(runsHandlersOnEventLoop: false),
        services: [service.serving(service.acceptIdentityUpdatesKeepingBytes)],
        logger: logger
    )
    let port = try await server.start().port!
    let transport = HTTP2ClientTransport(configuration: .init(host: "127.0.0.1", port: port))
    let rpc = RPCClient(transport: transport)
    let harness = ProfileHarness(
        client: Cdp_Profile_V1_Profile.Client(rpc),
        rpc: rpc,
        pipeline: pipeline,
        segmentation: segmentation,
        erasure: erasure
    )
    func close() async {
        await transport.close()
        await server.shutdown()
        await peersTransport.close()
        await peersServer.shutdown()
        await segmentationTransport.close()
        await segmentationServer.shutdown()
    }
    do {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await relay.run() }
            group.addTask { try await privacy.run() }
            // Identity's relay: its updates reach profile while a privacy request waits for them.
            group.addTask {
                while !Task.isCancelled {
                    try await harness.forward()
                    try await Task.sleep(for: .milliseconds(20))
                }
            }
            try await body(harness)
            group.cancelAll()
        }
    } catch {
        await close()
        throw error
    }
    await close()
}

@Suite("Profile service")
struct ProfileServiceTests {
    @Test func viewsOverRPCAndToSegmentationThroughAnOutage() async throws {
        try await withProfileHarness { harness in
            harness.segmentation.failing = true
            for group in ProfileStoreTests.story { try await harness.ingest(group) }
            let account = try await harness.client.getAccount(harness.request("sourceKey", "A2@mkto-2.Marketo"))
            #expect(account.totals.wonAmount == 1_100_000 && account.totals.persons == 3)
            let p2 = try await harness.client.getPerson(harness.request("email", " P2@Townsend.com "))
            #expect(p2.accounts.map(\.clusterID) == [account.account.clusterID])
            #expect(p2.events.count == 1)
            var events = Cdp_Profile_V1_GetEventsRequest()
            events.identity = identity("sourceKey", "2102@mkto-2.Marketo")
            #expect(try await harness.client.getEvents(events).events.map(\.key) == ["v1@mkto-1.Marketo"])

            try await eventually { try await !harness.client.getOutboxStatus(.init()).lastError.isEmpty }
            harness.segmentation.failing = false
            try await eventually { try await harness.client.getOutboxStatus(.init()).pendingChanges == 0 }
            // What segmentation holds builds the very views profile serves.
            #expect(harness.segmentation.person(p2.person.clusterID, asOf: ProfileStoreTests.asOf) == p2)
            #expect(harness.segmentation.account(account.account.clusterID) == account)
        }
    }

    @Test func scansCoverEveryPersonOncePerPartitioning() async throws {
        try await withProfileHarness { harness in
            for group in ProfileStoreTests.story { try await harness.ingest(group) }
            func scan(_ partition: UInt32, of partitions: UInt32) async throws -> [UInt64] {
                var request = Cdp_Profile_V1_ScanRequest()
                request.partition = partition
                request.partitions = partitions
                return try await harness.client.scanPersonViews(request) { call in
                    var clusters: [UInt64] = []
                    for try await view in call.responses { clusters.append(view.person.clusterID) }
                    return clusters
                }
            }
            let all = try await scan(0, of: 1)
            #expect(all.count == 3)
            let halves = try await scan(0, of: 2) + scan(1, of: 2)
            #expect(halves.sorted() == all.sorted())
            let error = await #expect(throws: RPCError.self) { _ = try await scan(2, of: 2) }
            #expect(error?.code == .invalidArgument)
        }
    }

    @Test func aPrivacyRequestReachesEveryServiceAndIsIdempotent() async throws {
        try await withProfileHarness { harness in
            for group in ProfileStoreTests.story { try await harness.ingest(group) }
            let p3 = try await harness.client.getPerson(harness.request("email", "p3@townsend.com"))
            let deleted = try await harness.client.deletePerson(harness.request("email", "p3@townsend.com"))
            #expect(deleted.fragmentsDeleted == 1 && !deleted.alreadyErased)
            #expect(
                deleted.identities.map { "\($0.namespace):\($0.value)" } == [
                    "email:p3@townsend.com", "sourceKey:2103@mkto-2.Marketo",
                ]
            )
            #expect(deleted.request.id == "pr-1")
            // Identity no longer knows the person.
            #expect(
                try await harness.pipeline.identity.resolve(Identity("email", "p3@townsend.com"), in: .person) == nil
            )
            let gone = await #expect(throws: RPCError.self) {
                _ = try await harness.client.getPerson(harness.request("email", "p3@townsend.com"))
            }
            #expect(gone?.code == .notFound)
            // Segmentation is told the person is gone (its state no longer holds them).
            try await eventually {
                harness.segmentation.person(p3.person.clusterID, asOf: ProfileStoreTests.asOf) == nil
            }
            // Ingestion got the hashes (never the identities) and the keys; segmentation and destination
            // the cluster; then the request settles and every service clears its log.
            let first = try #require(harness.erasure.all.first)
            #expect(first.identityHashes.count == 2 && first.identityHashes.allSatisfy { $0.count == 32 })
            #expect(first.recordKeys.contains("2103@mkto-2.Marketo"))
            #expect(harness.erasure.all.contains { $0.personClusters.contains(p3.person.clusterID) })
            try await eventually {
                try await harness.client.getPrivacyRequest(.with { $0.id = "pr-1" }).state == .done
            }
            #expect(harness.erasure.all.contains { $0.final })
            let done = try await harness.client.getPrivacyRequest(.with { $0.id = "pr-1" })
            #expect(
                done.services.map(\.service) == ["ingestion", "identity", "profile", "segmentation", "destination"]
            )
            #expect(done.services.allSatisfy(\.done) && done.hasFinishedAt)

            // A second delete answers the first request; nothing more is deleted.
            let again = try await harness.client.deletePerson(harness.request("email", " P3@Townsend.com "))
            #expect(again.alreadyErased && again.request.id == "pr-1" && again.fragmentsDeleted == 0)
            #expect(try await harness.client.listPrivacyRequests(.init()).requests.map(\.id) == ["pr-1"])
            let unknown = await #expect(throws: RPCError.self) {
                _ = try await harness.client.deletePerson(harness.request("email", "nobody@townsend.com"))
            }
            #expect(unknown?.code == .notFound)
        }
    }

    /// A call with a record that does not parse is refused whole, naming the update; the records
    /// before it in the call are not taken either.
    @Test func aRecordThatDoesNotParseRefusesTheWholeCall() async throws {
        try await withProfileHarness { harness in
            let before = try harness.pipeline.profile.appliedSequence()
            var request = Cdp_Profile_V1_AcceptIdentityUpdatesRequestStoredBytes()
            request.sender = "test"
            for (offset, record) in [
                try Bodea.pageVisit(at: ProfileStoreTests.asOf).record.serializedBytes(), Data([0x0a, 0x7f]),
            ].enumerated() {
                var update = Cdp_Profile_V1_IdentityUpdateStoredBytes()
                update.sequence = 1_000_000 + UInt64(offset)
                update.record.stored.record = record
                request.updates.append(update)
            }
            let refused = await #expect(throws: RPCError.self) {
                _ = try await harness.rpc.unary(Cdp_Profile_V1_Profile.Method.acceptIdentityUpdatesStoredBytes, request)
            }
            #expect(refused?.code == .invalidArgument)
            #expect(
                refused?.message.contains("updates[1] holds a record that is not a valid cdp.model.v1.Record") == true,
                "\(String(describing: refused))"
            )
            #expect(try harness.pipeline.profile.appliedSequence() == before)
        }
    }

    @Test func badRequestsAndAMissingIdentityService() async throws {
        try await withProfileHarness(identityAvailable: false) { harness in
            for group in ProfileStoreTests.story { try await harness.ingest(group) }
            let empty = await #expect(throws: RPCError.self) {
                _ = try await harness.client.getPerson(harness.request("", ""))
            }
            #expect(empty?.code == .invalidArgument)
            let unknown = await #expect(throws: RPCError.self) {
                _ = try await harness.client.getPerson(harness.request("email", "nobody@x.io"))
            }
            #expect(unknown?.code == .notFound)
            var events = Cdp_Profile_V1_GetEventsRequest()
            events.identity = identity("email", "p2@townsend.com")
            events.from = Google_Protobuf_Timestamp(date: Date(timeIntervalSince1970: 2_000_000_000))
            events.to = Google_Protobuf_Timestamp(date: Date(timeIntervalSince1970: 1_000_000_000))
            let backwards = await #expect(throws: RPCError.self) { _ = try await harness.client.getEvents(events) }
            #expect(backwards?.code == .invalidArgument)
            let refused = await #expect(throws: RPCError.self) {
                _ = try await harness.client.deletePerson(harness.request("email", "p2@townsend.com"))
            }
            #expect(refused?.code == .failedPrecondition)
        }
    }
}

import CDPProto
import Foundation
import IngestionService
import IngestionStore
import Logging
import RPCCore
import RPCHTTP2
import ServiceSupport
import Synchronization
import TestSupport
import Testing

/// The ingestion service end to end over loopback: uploads, record errors, the threshold, idempotency,
/// streams, and forwarding to a recording identity receiver.
@Suite("Ingestion service")
struct ServiceTests {
    @Test func aBatchIsStoredWithRecordErrorsAndForwarded() async throws {
        try await withHarness { harness in
            let csv = """
                personId,email,firstName,score,lastUpdated,favouriteColour
                P1, P1@Townsend.com ,Ann,10,2026-05-01T10:00:00Z,blue
                P2,not-an-email,Bob,11,2026-05-01T10:00:00Z,
                P3,p3@townsend.com,Cy,twelve,2026-05-01T10:00:00Z,red
                ,p4@townsend.com,Di,13,2026-05-01T10:00:00Z,
                P5,p5@townsend.com,Ed,14,2026-05-01T10:00:00Z,

                """
            let batch = try await harness.upload(csv, entity: "person", threshold: 0.9)
            #expect(batch.state == .completed)
            #expect(batch.counts.records == 5 && batch.counts.accepted == 2 && batch.counts.rejected == 3)
            #expect(
                batch.errors.map { "\($0.line):\($0.field)" } == ["3:email", "4:score", "5:personId"],
                "errors name the line and the field"
            )
            #expect(batch.errors[0].reason.contains("expected an email address"))

            try await harness.waitUntilForwarded(2)
            let received = harness.identity.records
            #expect(Set(received.map(\.record.key)) == ["P1@mkto-1.Marketo", "P5@mkto-1.Marketo"])
            let p1 = try #require(received.first { $0.record.key == "P1@mkto-1.Marketo" })
            #expect(p1.record.person.email == "p1@townsend.com", "emails are trimmed and lowercased")
            #expect(p1.record.customAttributes["favouriteColour"]?.stringValue == "blue")
            #expect(p1.batchID == batch.batchID)
        }
    }

    @Test func aBatchOverTheErrorThresholdKeepsNothing() async throws {
        try await withHarness { harness in
            var lines = ["accountId,name,annualRevenue"]
            for index in 1...18 { lines.append("A\(index),Account \(index),1000") }
            lines.append("A19,Bad,lots")
            lines.append("A20,Bad,many")
            let csv = lines.joined(separator: "\n")
            let failed = try await harness.upload(csv, entity: "account", key: "accounts-1")
            #expect(failed.state == .failed)
            #expect(
                failed.failure
                    == "2 of 20 records (10%) were rejected, more than the threshold of 5%; nothing of the batch was kept"
            )
            #expect(failed.counts.accepted == 0)
            // The same file under a higher threshold is accepted: nothing of the failed attempt blocks it.
            let accepted = try await harness.upload(csv, entity: "account", key: "accounts-2", threshold: 0.1)
            #expect(accepted.state == .completed && accepted.counts.accepted == 18 && accepted.counts.duplicates == 0)
            try await harness.waitUntilForwarded(18)
        }
    }

    @Test func reSendingABatchStoresNothingTwice() async throws {
        try await withHarness { harness in
            let csv = "opportunityId,accountId,amount,isClosed,isWon\nO1,A1,200000,true,true\nO2,A1,5,false,false\n"
            let first = try await harness.upload(csv, entity: "opportunity", key: "opps")
            let again = try await harness.upload(csv, entity: "opportunity", key: "opps", pieceSize: 3)
            #expect(!first.replayed && again.replayed)
            #expect(again.batchID == first.batchID && again.counts == first.counts)
            // The same records under a new key: a new batch whose records are all duplicates.
            let copy = try await harness.upload(csv, entity: "opportunity", key: "opps-copy")
            #expect(copy.batchID != first.batchID)
            #expect(copy.counts.accepted == 0 && copy.counts.duplicates == 2)
            try await harness.waitUntilForwarded(2)
            try await Task.sleep(for: .milliseconds(200))
            #expect(harness.identity.records.count == 2)
            let opportunity = try #require(harness.identity.records.first { $0.record.key == "O1@mkto-1.Marketo" })
            #expect(opportunity.record.opportunity.accountKey == "A1@mkto-1.Marketo")
            #expect(opportunity.record.opportunity.amount == 200_000)
        }
    }

    @Test func anUnreadableFileFailsTheBatchWithAClearMessage() async throws {
        try await withHarness { harness in
            let wrongHeader = try await harness.upload("id,email\n1,a@b.co\n", entity: "person")
            #expect(wrongHeader.state == .failed)
            #expect(wrongHeader.failure.contains("the header has no column for personId"))
            let unclosed = try await harness.upload("personId,email\nP1,\"a@b.co\n", entity: "person")
            #expect(unclosed.state == .failed)
            #expect(unclosed.failure.contains("a quoted field opened on line 2 is never closed"))
            let badEntity = await #expect(throws: RPCError.self) {
                _ = try await harness.upload("x\n", entity: "persons")
            }
            #expect(badEntity?.code == .invalidArgument)
            #expect(badEntity?.message.contains("unknown entity \"persons\"") == true)
        }
    }

    @Test func anUnknownSourceIsRefused() async throws {
        try await withHarness { harness in
            var source = Cdp_Model_V1_Source()
            source.type = "Salesforce"
            source.instance = "sf-9"
            let error = await #expect(throws: RPCError.self) {
                _ = try await harness.upload("personId\nP1\n", entity: "person", source: source)
            }
            #expect(error?.code == .failedPrecondition)
            #expect(error?.message.contains("source Salesforce:sf-9 is not registered") == true)
        }
    }

    @Test func streamedRecordsAreAcknowledgedAfterCommitAndForwarded() async throws {
        try await withHarness { harness in
            func event(_ id: String, email: String) -> Cdp_Model_V1_Record {
                var event = Cdp_Model_V1_ExperienceEvent()
                event.eventID = id
                event.email = email
                event.eventType = "web.webpagedetails.pageViews"
                event.timestamp = .init(seconds: 1_777_629_600)
                event.url = "https://bodea.example/new-product"
                var record = Cdp_Model_V1_Record()
                record.entity = .event(event)
                return record
            }
            var web = Cdp_Model_V1_Source()
            web.type = "Web"
            web.instance = "web-1"
            try await harness.createSource(web)
            let acks = try await harness.client.streamRecords { call in
                var acks: [Cdp_Ingestion_V1_StreamRecordsResponse] = []
                for records in [
                    [event("e1", email: " P2@Townsend.com"), event("e2", email: "p1@townsend.com")],
                    [event("e1", email: " P2@Townsend.com"), event("e3", email: "broken")],
                ] {
                    var request = Cdp_Ingestion_V1_StreamRecordsRequest()
                    request.source = web
                    request.records = records
                    try await call.send(request)
                    acks.append(try #require(try await call.receive()))
                }
                try await call.closeSend()
                return acks
            }
            #expect(acks.map(\.requestNumber) == [1, 2])
            #expect(acks[0].accepted == 2 && acks[0].duplicates == 0 && acks[0].errors.isEmpty)
            #expect(acks[1].accepted == 0 && acks[1].duplicates == 1)
            #expect(acks[1].errors.map { "\($0.recordNumber):\($0.field)" } == ["2:email"])
            try await harness.waitUntilForwarded(2)
            let e1 = try #require(harness.identity.records.first { $0.record.key == "e1@web-1.Web" })
            #expect(e1.record.event.email == "p2@townsend.com")
        }
    }

    @Test func forwardingRetriesUntilIdentityAcceptsAndReportsItsBacklog() async throws {
        try await withHarness { harness in
            harness.identity.failing = true
            let batch = try await harness.upload(
                "personId,email\nP1,p1@townsend.com\nP2,p2@townsend.com\n",
                entity: "person"
            )
            #expect(batch.state == .completed)
            try await eventually {
                let status = try await harness.client.getOutboxStatus(.init())
                return status.pendingRecords == 2 && status.lastError.contains("identity is down")
                    && status.hasOldestPending
            }
            harness.identity.failing = false
            try await harness.waitUntilForwarded(2)
            try await eventually { try await harness.client.getOutboxStatus(.init()).pendingRecords == 0 }
            let status = try await harness.client.getOutboxStatus(.init())
            #expect(status.forwardedRecords == 2 && status.lastError.isEmpty && !status.hasOldestPending)
        }
    }

    @Test func batchesCanBeListedAndFetched() async throws {
        try await withHarness { harness in
            let first = try await harness.upload("listId,name\nL1,Newsletter\n", entity: "marketingList")
            let second = try await harness.upload("listId,personId\nL1,P1\n", entity: "marketingListMember")
            let listed = try await harness.client.listBatches(.init())
            #expect(listed.batches.map(\.batchID) == [second.batchID, first.batchID])
            var request = Cdp_Ingestion_V1_GetBatchRequest()
            request.batchID = first.batchID
            #expect(try await harness.client.getBatch(request).entity == "marketingList")
            request.batchID = "b-missing"
            let error = await #expect(throws: RPCError.self) { _ = try await harness.client.getBatch(request) }
            #expect(error?.code == .notFound)
        }
    }
}

/// A stand-in for the identity service that records what it is sent, and can be made to fail.
final class RecordingIdentity: Cdp_Identity_V1_Identity.ServiceProtocol {
    private struct State {
        var records: [Cdp_Identity_V1_StoredRecord] = []
        var seen = Set<String>()
        var failing = false
    }

    private let state = Mutex(State())

    /// Distinct records received (by key and version).
    var records: [Cdp_Identity_V1_StoredRecord] { state.withLock { $0.records } }

    var failing: Bool {
        get { state.withLock { $0.failing } }
        set { state.withLock { $0.failing = newValue } }
    }

    func acceptRecords(
        request: Cdp_Identity_V1_AcceptRecordsRequest,
        context: ServerContext
    ) async throws
        -> Cdp_Identity_V1_AcceptRecordsResponse
    {
        try state.withLock { state in
            if state.failing { throw RPCError(code: .unavailable, message: "identity is down") }
            var response = Cdp_Identity_V1_AcceptRecordsResponse()
            for record in request.records {
                if state.seen.insert("\(record.record.key)#\(record.version)").inserted {
                    state.records.append(record)
                    response.accepted += 1
                } else {
                    response.duplicates += 1
                }
            }
            return response
        }
    }
}

extension RecordingIdentity {
    // The rest of identity's API plays no part in forwarding.
    private static var unimplemented: RPCError { RPCError(code: .unimplemented, message: "not part of the stand-in") }

    func resolve(
        request: Cdp_Identity_V1_ResolveRequest,
        context: ServerContext
    ) async throws
        -> Cdp_Identity_V1_ResolveResponse
    { throw Self.unimplemented }

    func getCluster(
        request: Cdp_Identity_V1_GetClusterRequest,
        context: ServerContext
    ) async throws
        -> Cdp_Identity_V1_Cluster
    { throw Self.unimplemented }

    func listConflicts(
        request: Cdp_Identity_V1_ListConflictsRequest,
        context: ServerContext
    ) async throws
        -> Cdp_Identity_V1_ListConflictsResponse
    { throw Self.unimplemented }

    func removeIdentity(
        request: Cdp_Identity_V1_RemoveIdentityRequest,
        context: ServerContext
    ) async throws
        -> Cdp_Identity_V1_RemoveIdentityResponse
    { throw Self.unimplemented }

    func getOutboxStatus(
        request: Cdp_Identity_V1_GetOutboxStatusRequest,
        context: ServerContext
    ) async throws
        -> Cdp_Identity_V1_OutboxStatus
    { throw Self.unimplemented }
}

/// A running ingestion service with a recording identity behind it, and a client.
struct Harness {
    let client: Cdp_Ingestion_V1_Ingestion.Client
    let identity: RecordingIdentity
    let source: Cdp_Model_V1_Source

    func createSource(_ source: Cdp_Model_V1_Source) async throws {
        var request = Cdp_Ingestion_V1_CreateSourceRequest()
        request.source = source
        _ = try await client.createSource(request)
    }

    /// Uploads `text` as a canonical CSV batch, split into pieces of `pieceSize` bytes.
    func upload(
        _ text: String,
        entity: String,
        key: String = "",
        threshold: Double? = nil,
        pieceSize: Int = 1 << 20,
        source: Cdp_Model_V1_Source? = nil
    ) async throws -> Cdp_Ingestion_V1_Batch {
        var header = Cdp_Ingestion_V1_BatchHeader()
        header.source = source ?? self.source
        header.entity = entity
        header.format = .canonicalCsv
        header.idempotencyKey = key
        if let threshold { header.errorThreshold = threshold }
        var requests = [Cdp_Ingestion_V1_IngestBatchRequest.with { $0.header = header }]
        let bytes = Data(text.utf8)
        var start = 0
        while start < bytes.count {
            let end = min(bytes.count, start + pieceSize)
            requests.append(.with { $0.data = bytes.subdata(in: start..<end) })
            start = end
        }
        return try await client.ingestBatch(requests)
    }

    func waitUntilForwarded(_ count: Int) async throws {
        try await eventually { identity.records.count >= count }
    }
}

/// Runs `body` against an ingestion service on loopback (in-memory store, small chunks) that forwards to a
/// recording identity service, with the source Marketo:mkto-1 registered.
func withHarness(_ body: (Harness) async throws -> Void) async throws {
    let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
    let identity = RecordingIdentity()
    let identityServer = RPCServer(configuration: .init(), services: [identity], logger: logger)
    let identityPort = try await identityServer.start().port!
    let identityTransport = HTTP2ClientTransport(
        configuration: .init(host: "127.0.0.1", port: identityPort, initialBackoff: .milliseconds(20))
    )
    let identityClient = RPCClient(transport: identityTransport)

    let store = try SQLiteIngestionStore()
    let relay = OutboxRelay<OutboxChunk>(
        name: "test",
        configuration: .init(
            chunkSize: 3,
            backoff: Backoff(initial: .milliseconds(20), maximum: .milliseconds(100)),
            readsAhead: false
        ),
        logger: logger,
        fetch: { limit, _ in try await store.nextOutboxChunk(limit: limit) },
        deliver: { try await IdentityForwarding.deliver($0, via: identityClient) },
        acknowledge: { try await store.acknowledge($0) }
    )
    let service = IngestionService(
        store: store,
        configuration: .init(chunkRecords: 2),
        logger: logger,
        committed: { relay.wake() },
        forwardingError: { relay.status.lastError }
    )
    let server = RPCServer(configuration: .init(runsHandlersOnEventLoop: false), services: [service], logger: logger)
    let port = try await server.start().port!
    let transport = HTTP2ClientTransport(configuration: .init(host: "127.0.0.1", port: port))
    let client = Cdp_Ingestion_V1_Ingestion.Client(RPCClient(transport: transport))

    var source = Cdp_Model_V1_Source()
    source.type = "Marketo"
    source.instance = "mkto-1"
    let harness = Harness(client: client, identity: identity, source: source)
    do {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await relay.run() }
            try await harness.createSource(source)
            try await body(harness)
            group.cancelAll()
        }
    } catch {
        await transport.close()
        await server.shutdown()
        await identityTransport.close()
        await identityServer.shutdown()
        throw error
    }
    await transport.close()
    await server.shutdown()
    await identityTransport.close()
    await identityServer.shutdown()
}

import CDPProto
import Foundation
import Logging
import PipelineSupport
import RPCCore
import RPCHTTP2
import SegmentationService
import SwiftProtobuf
import TestSupport
import Testing

@testable import SegmentationStore

/// `cdp.segmentation.v1.Segmentation` over RPC on loopback, with profile's views read in process.
@Suite("Segmentation service")
struct ServiceTests {
    /// Runs `body` with a client of a segmentation service over the harness's engine.
    static func withService(
        _ harness: SegmentationHarness,
        _ body: (Cdp_Segmentation_V1_Segmentation.Client) async throws -> Void
    ) async throws {
        let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
        let source = StoreViewSource(store: harness.profileStore)
        let jobs = EvaluationJobs(engine: harness.engine, logger: logger)
        let service = SegmentationService(engine: harness.engine, source: source, jobs: jobs, logger: logger)
        // Served as the segmentation command serves it.
        let server = RPCServer(
            configuration: .init(runsHandlersOnEventLoop: false),
            services: [service.serving(service.acceptStateChangesKeepingBytes)],
            logger: logger
        )
        let port = try await server.start().port!
        let transport = HTTP2ClientTransport(configuration: .init(host: "127.0.0.1", port: port))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await jobs.run() }
            defer { group.cancelAll() }
            do {
                try await body(Cdp_Segmentation_V1_Segmentation.Client(RPCClient(transport: transport)))
            } catch {
                await transport.close()
                await server.shutdown()
                throw error
            }
            await transport.close()
            await server.shutdown()
        }
    }

    static func create(
        _ pql: String,
        name: String = "s",
        mode: Cdp_Segmentation_V1_EvaluationMode = .streaming
    )
        -> Cdp_Segmentation_V1_CreateSegmentRequest
    {
        var request = Cdp_Segmentation_V1_CreateSegmentRequest()
        request.name = name
        request.pql = pql
        request.entityType = .person
        request.mode = mode
        return request
    }

    /// The state log keeps each change as profile serialized it, byte for byte (a field segmentation does
    /// not know included), and a change that does not decode is refused by its index.
    @Test func stateChangesAreLoggedAsTheyCame() async throws {
        let acceptStateChanges = Cdp_Segmentation_V1_Segmentation.Method.acceptStateChangesChangeBytes
        // Field 15, varint 7: no field of StateChange. First, where an encoder would never put it: a change
        // decoded and encoded again would have it last.
        let unknownField: [UInt8] = [0x78, 0x07]
        let sent = try ["e1", "e2"].enumerated().map { index, key in
            var change = Cdp_Profile_V1_StateChange()
            change.version = UInt64(index + 1)
            change.event.key = key
            change.event.personClusterID = 7
            change.event.event.eventType = "web.webpagedetails.pageViews"
            return Data(unknownField + (try change.serializedBytes() as [UInt8]))
        }
        let harness = try SegmentationHarness(start: Story.visit)
        try await Self.withService(harness) { client in
            var refused = Cdp_Segmentation_V1_AcceptStateChangesRequestChangeBytes()
            refused.changes = [sent[0], Data([0x0a, 0xff])]
            let error = await #expect(throws: RPCError.self) {
                _ = try await client.rpc.unary(acceptStateChanges, refused)
            }
            #expect(error?.code == .invalidArgument && error?.message.contains("changes[1] is not a valid") == true)

            var request = Cdp_Segmentation_V1_AcceptStateChangesRequestChangeBytes()
            request.sender = "test"
            request.changes = sent
            let response = try await client.rpc.unary(acceptStateChanges, request).message
            #expect(response.accepted == 2)
        }
        var logged: [Data] = []
        try harness.store.forEachLoggedChange { logged.append($0) }
        #expect(logged == sent, "the refused call logged nothing; the accepted one, its bytes as sent")
    }

    @Test func badDefinitionsAreRefusedWithTheirPosition() async throws {
        let harness = try SegmentationHarness(start: Story.visit)
        try await Self.withService(harness) { client in
            do {
                _ = try await client.createSegment(Self.create("person.score >\n  and person.country = \"US\""))
                Issue.record("a bad definition was accepted")
            } catch let error as RPCError {
                #expect(error.code == .invalidArgument)
                #expect(
                    error.message
                        == "invalid definition: line 2, column 3: expected a value: a name, a number, a string, "
                        + "true, false, null or '(', found 'and'"
                )
            }
            do {
                var request = Cdp_Segmentation_V1_GetSegmentRequest()
                request.id = "s99"
                _ = try await client.getSegment(request)
                Issue.record("an unknown segment was found")
            } catch let error as RPCError {
                #expect(error.code == .notFound)
            }
            do {
                var request = Cdp_Segmentation_V1_GetMembersRequest()
                request.segmentID = "s1"
                _ = try await client.createSegment(Self.create("person.score > 1"))
                request.pageToken = "next please"
                _ = try await client.getMembers(request)
                Issue.record("a made-up page token was taken")
            } catch let error as RPCError {
                #expect(error.code == .invalidArgument)
            }
        }
    }

    @Test func membersExplanationEstimateAndABatchJobOverRPC() async throws {
        let harness = try SegmentationHarness(start: Story.visit.addingTimeInterval(3600))
        try await Self.withService(harness) { client in
            let all = try await client.createSegment(Self.create("person.email.endsWith(\"@townsend.com\")"))
            let buyers = try await client.createSegment(Self.create(Story.bodea, name: "buyers"))
            #expect(buyers.id == "s2" && buyers.dependsOnTime)
            try await harness.ingest(Story.withoutVisit + [Bodea.pageVisit(at: Story.visit)])

            // Paged members: one per page, in cluster order, then an empty token.
            var emails: [String] = []
            var request = Cdp_Segmentation_V1_GetMembersRequest()
            request.segmentID = all.id
            request.pageSize = 1
            request.status = .realized
            repeat {
                let page = try await client.getMembers(request)
                #expect(page.members.count <= 1)
                emails += page.members.map(\.record.record.person.email)
                request.pageToken = page.nextPageToken
            } while !request.pageToken.isEmpty
            #expect(emails.sorted() == ["p1@townsend.com", "p2@townsend.com", "p3@townsend.com"])

            var explain = Cdp_Segmentation_V1_ExplainRequest()
            explain.segmentID = buyers.id
            explain.identity = identity("email", "p2@townsend.com")
            explain.asOf = Google_Protobuf_Timestamp(date: harness.clock.now)
            let explanation = try await client.explain(explain)
            #expect(explanation.matched)
            let keys = Set(explanation.steps.flatMap { $0.entities.map(\.key) })
            #expect(keys == ["O1@mkto-1.Marketo", "O2@mkto-2.Marketo", "v1@mkto-1.Marketo"])
            explain.identity = identity("email", "nobody@example.com")
            await #expect(throws: RPCError.self) { _ = try await client.explain(explain) }

            var estimate = Cdp_Segmentation_V1_EstimateRequest()
            estimate.pql = Story.bodea.replacingOccurrences(of: "1000000", with: "2000000")
            estimate.asOf = Google_Protobuf_Timestamp(date: harness.clock.now)
            let estimated = try await client.estimate(estimate)
            #expect(estimated.matched == 0 && estimated.evaluated == 3)

            var evaluate = Cdp_Segmentation_V1_EvaluateRequest()
            evaluate.asOf = Google_Protobuf_Timestamp(date: harness.clock.now)
            var job = try await client.evaluate(evaluate)
            #expect(job.segmentIds == [all.id, buyers.id])
            var get = Cdp_Segmentation_V1_GetEvaluationRequest()
            get.id = job.id
            for _ in 0..<200 where job.state == .running {
                try await Task.sleep(for: .milliseconds(10))
                job = try await client.getEvaluation(get)
            }
            #expect(job.state == .succeeded)
            // Streaming had already decided everything: the job confirms it without transitions.
            #expect(job.evaluated == 3 && job.realized == 0 && job.exited == 0)

            let status = try await client.getOutboxStatus(Cdp_Segmentation_V1_GetOutboxStatusRequest())
            #expect(status.pendingChanges == 4)
            #expect(status.scheduledRechecks == 1)

            var delete = Cdp_Segmentation_V1_DeleteSegmentRequest()
            delete.id = all.id
            #expect(try await client.deleteSegment(delete).exited == 3)
            let listed = try await client.listSegments(Cdp_Segmentation_V1_ListSegmentsRequest())
            #expect(listed.segments.map(\.id) == [buyers.id])
            #expect(listed.segments.first?.realized == 1)
        }
    }
}

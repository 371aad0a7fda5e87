import CDPProto
import Foundation
import Logging
import NIOPosix
import PipelineSupport
import RPCCore
import SegmentationEvaluation
import SegmentationService
import SegmentationStore
import TestSupport
import Testing

/// The segmentation engine fed by identity and profile in process: streaming transitions, time
/// re-checks, staleness, removals, batch jobs over the state, inSegment, restarts.
@Suite("Segmentation engine")
struct EngineTests {
    static let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    @Test func anEventRealizesP2InTheSameFlowAndThePassingWindowExitsP2() async throws {
        let harness = try SegmentationHarness(start: Story.visit.addingTimeInterval(3600))
        let segment = try await harness.engine.createSegment(
            name: "Townsend buyers",
            pql: Story.bodea,
            entityType: .person,
            mode: .streaming
        )
        #expect(try await harness.ingest(Story.withoutVisit) == Transitions())
        #expect(try await harness.members(segment.id) == [])

        // The visit arrives: p2's view changes and p2 is realized while it is accepted.
        let arrival = try await harness.ingest([Bodea.pageVisit(at: Story.visit)])
        #expect(arrival.realized == 1 && arrival.exited == 0)
        #expect(try await harness.members(segment.id) == ["p2@townsend.com"])
        let realized = try await harness.drainOutbox()
        #expect(realized.count == 1)
        #expect(realized.first?.realized == true)
        #expect(realized.first?.segmentID == segment.id)
        #expect(realized.first?.record.record.person.email == "p2@townsend.com")
        #expect(realized.first?.version == 1)

        // Nothing is due before the window passes.
        harness.clock.set(Story.visit.addingTimeInterval(20 * 86_400))
        #expect(try await harness.engine.runDueRechecks().checked == 0)
        // A month later the visit leaves the window: p2 exits without any new view.
        harness.clock.set(Story.visit.addingTimeInterval(32 * 86_400))
        let recheck = try await harness.engine.runDueRechecks()
        #expect(recheck.checked == 1)
        #expect(recheck.transitions.exited == 1)
        #expect(try await harness.members(segment.id) == [])
        #expect(try await harness.members(segment.id, realized: false) == ["p2@townsend.com"])
        let exited = try await harness.drainOutbox()
        #expect(exited.map(\.realized) == [false])
        #expect(exited.first?.version == 2)
        #expect(exited.first!.sequence > realized.first!.sequence)
        let member = try #require(
            try await harness.engine.members(of: segment.id, realized: false, after: 0, limit: 10).first
        )
        #expect(member.since == harness.clock.now)
        // Nothing left to re-check.
        #expect(try await harness.engine.status().rechecks == 0)
    }

    @Test func staleAndRepeatedChangesChangeNothing() async throws {
        let harness = try SegmentationHarness(start: Story.visit.addingTimeInterval(3600))
        _ = try await harness.engine.createSegment(name: "all", pql: Story.bodea, entityType: .person, mode: .streaming)
        try await harness.pipeline.ingest(Story.withoutVisit + [Bodea.pageVisit(at: Story.visit)])
        let chunk = try #require(try await harness.profile.nextStateChunk(limit: 1000))
        let changes = try chunk.changes
        let first = try await harness.engine.acceptStateChanges(changes)
        #expect(first.stale == 0 && first.transitions.realized == 1)
        // Re-delivery of the same chunk (the relay retried): every change is stale, no new transition.
        let again = try await harness.engine.acceptStateChanges(changes)
        #expect(again.stale == changes.count && again.accepted == 0 && again.evaluated == 0)
        #expect(again.transitions == Transitions())
        // An older version of p2's record after a newer one: stale.
        let p2 = try #require(changes.first { $0.entity.unified.record.person.email == "p2@townsend.com" })
        var older = p2
        older.version -= 1
        older.entity.unified.record.person.email = "someone@else.org"
        #expect(try await harness.engine.acceptStateChanges([older]).stale == 1)
        #expect(try await harness.drainOutbox().count == 1)
        #expect(try await harness.members("s1") == ["p2@townsend.com"])
    }

    @Test func changesThatNameNothingOrTheWrongTypeAreRefusedWhole() async throws {
        let harness = try SegmentationHarness(start: Story.visit)
        _ = try await harness.engine.createSegment(
            name: "all",
            pql: "person.email.endsWith(\"@example.com\")",
            entityType: .person,
            mode: .streaming
        )
        var good = Cdp_Profile_V1_StateChange()
        good.version = 1
        good.entity.entityType = .person
        good.entity.clusterID = 7
        good.entity.unified = Views.unified(7, key: "7@crm.Salesforce") { $0.person.email = "ann@example.com" }
        var empty = Cdp_Profile_V1_StateChange()
        empty.version = 2
        var event = Cdp_Profile_V1_StateChange()
        event.version = 3
        event.link.entityType = .event
        event.link.key = "E1"
        for (bad, message) in [
            (empty, "a state change carries no entity, link or event"),
            (event, "a link change is for a PERSON, OPPORTUNITY"),
        ] {
            do {
                _ = try await harness.engine.acceptStateChanges([good, bad])
                Issue.record("\(bad) was accepted")
            } catch let error as RPCError {
                #expect(error.code == .invalidArgument)
                #expect(error.message.hasPrefix(message))
            }
        }
        // Nothing of the refused calls was taken.
        #expect(try await harness.members("s1") == [])
        #expect(await harness.engine.stateCounts().persons == 0)
        #expect(try await harness.engine.acceptStateChanges([good]).transitions.realized == 1)
    }

    @Test func aRemovedPersonExitsEverySegment() async throws {
        let harness = try SegmentationHarness(start: Story.visit.addingTimeInterval(3600))
        let segment = try await harness.engine.createSegment(
            name: "townsend",
            pql: "person.email.endsWith(\"@townsend.com\")",
            entityType: .person,
            mode: .streaming
        )
        try await harness.ingest(Story.withoutVisit)
        #expect(try await harness.members(segment.id).count == 3)
        var removal = Cdp_Profile_V1_StateChange()
        removal.version = 1_000_000
        removal.entity.entityType = .person
        let p3 = try #require(
            try await harness.engine.members(of: segment.id, realized: true, after: 0, limit: 10).first {
                $0.record.record.person.email == "p3@townsend.com"
            }
        )
        removal.entity.clusterID = p3.cluster
        let result = try await harness.engine.acceptStateChanges([removal])
        #expect(result.transitions.exited == 1)
        #expect(try await harness.members(segment.id) == ["p1@townsend.com", "p2@townsend.com"])
        let changes = try await harness.drainOutbox()
        // The exit carries the record last known, so destinations know whom to remove.
        #expect(changes.last?.realized == false)
        #expect(changes.last?.record.record.person.email == "p3@townsend.com")
    }

    @Test func aMemberWhoseRecordChangesIsAnnouncedAgainAndOnlyThen() async throws {
        let harness = try SegmentationHarness(start: Story.visit)
        let segment = try await harness.engine.createSegment(
            name: "example.com",
            pql: "person.email.endsWith(\"@example.com\")",
            entityType: .person,
            mode: .streaming
        )
        var version: UInt64 = 0
        func accept(_ fill: (inout Cdp_Model_V1_Record) -> Void) async throws -> Transitions {
            version += 1
            var change = Cdp_Profile_V1_StateChange()
            change.version = version
            change.entity.entityType = .person
            change.entity.clusterID = 7
            change.entity.unified = Views.unified(7, key: "7@crm.Salesforce") { record in
                record.person.personID = "7"
                record.person.email = "ann@example.com"
                record.person.jobTitle = "CFO"
                fill(&record)
            }
            return try await harness.engine.acceptStateChanges([change]).transitions
        }
        #expect(try await accept { _ in }.realized == 1)
        #expect(try await harness.drainOutbox().map(\.version) == [1])

        // Merge bookkeeping only (another fragment won, a newer source time): nothing to announce.
        let quiet = try await accept { record in
            record.key = "7@mkto.Marketo"
            record.lastUpdated = .init(seconds: 1_800_000_000)
        }
        #expect(quiet == Transitions())
        #expect(try await harness.drainOutbox().isEmpty)

        // A new email, still a member: announced again with the new record and the next version.
        let moved = try await accept { $0.person.email = "ann.lee@example.com" }
        #expect(moved.updated == 1 && moved.realized == 0 && moved.exited == 0)
        let update = try await harness.drainOutbox()
        #expect(update.map(\.realized) == [true] && update.map(\.version) == [2])
        #expect(update.first?.record.record.person.email == "ann.lee@example.com")

        // A new job title (what an attribute mapping sends): announced too.
        let promoted = try await accept { record in
            record.person.email = "ann.lee@example.com"
            record.person.jobTitle = "CEO"
        }
        #expect(promoted.updated == 1)
        #expect(try await harness.drainOutbox().map(\.record.record.person.jobTitle) == ["CEO"])

        // A batch job over the state announces nothing new.
        let batch = try await harness.engine.evaluateBatch(
            .person,
            segments: [segment.id],
            asOf: harness.clock.now,
            partition: 0,
            partitions: 1,
            after: 0,
            limit: 10
        )
        #expect(batch.clusters == [7] && batch.transitions == Transitions())
        #expect(try await harness.members(segment.id) == ["ann.lee@example.com"])
        #expect(try await harness.drainOutbox().isEmpty)

        // Leaving the segment is an exit, not an update as well.
        let left = try await accept { $0.person.email = "ann@elsewhere.org" }
        #expect(left.exited == 1 && left.updated == 0)
        let exit = try await harness.drainOutbox()
        #expect(exit.map(\.realized) == [false] && exit.map(\.version) == [4])
    }

    @Test func inSegmentFollowsDependenciesAndRejectsCycles() async throws {
        let harness = try SegmentationHarness(start: Story.visit.addingTimeInterval(3600))
        // Created in an order where the dependent segment has the lower id.
        let base = try await harness.engine.createSegment(
            name: "at townsend",
            pql: "person.email.endsWith(\"@townsend.com\")",
            entityType: .person,
            mode: .streaming
        )
        let buyers = try await harness.engine.createSegment(
            name: "townsend buyers",
            pql: "inSegment(\"\(base.id)\") and " + Story.bodea,
            entityType: .person,
            mode: .streaming
        )
        #expect(buyers.dependsOn == [base.id])
        let notBuyers = try await harness.engine.createSegment(
            name: "townsend, not buyers",
            pql: "inSegment(\"\(base.id)\") and not inSegment(\"\(buyers.id)\")",
            entityType: .person,
            mode: .streaming
        )
        try await harness.ingest(Story.withoutVisit + [Bodea.pageVisit(at: Story.visit)])
        #expect(try await harness.members(buyers.id) == ["p2@townsend.com"])
        #expect(try await harness.members(notBuyers.id) == ["p1@townsend.com", "p3@townsend.com"])

        await #expect(throws: RPCError.self) {
            _ = try await harness.engine.updateSegment(
                id: base.id,
                name: nil,
                pql: "inSegment(\"\(notBuyers.id)\")",
                mode: nil
            )
        }
        do {
            _ = try await harness.engine.updateSegment(
                id: base.id,
                name: nil,
                pql: "inSegment(\"\(base.id)\")",
                mode: nil
            )
            Issue.record("a segment naming itself was accepted")
        } catch let error as RPCError {
            #expect(error.message == "inSegment would make a cycle: \(base.id) → \(base.id)")
        }
        do {
            _ = try await harness.engine.deleteSegment(id: base.id)
            Issue.record("a segment others name was deleted")
        } catch let error as RPCError {
            #expect(error.code == .failedPrecondition)
            #expect(error.message.contains("\(buyers.id), \(notBuyers.id)"))
        }
        // Deleting a leaf exits its members.
        #expect(try await harness.engine.deleteSegment(id: notBuyers.id) == 2)
    }

    @Test func aBatchJobFillsASegmentAndLaterExitsWhoIsGone() async throws {
        let harness = try SegmentationHarness(start: Story.visit.addingTimeInterval(3600))
        let segment = try await harness.engine.createSegment(
            name: "batch buyers",
            pql: Story.bodea,
            entityType: .person,
            mode: .batch
        )
        // Batch segments ignore streaming changes.
        try await harness.ingest(Story.withoutVisit + [Bodea.pageVisit(at: Story.visit)])
        #expect(try await harness.members(segment.id) == [])

        let jobs = EvaluationJobs(
            engine: harness.engine,
            logger: Self.logger
        )
        let job = try await harness.engine.newJob(
            segments: [segment.id],
            asOf: harness.clock.now,
            partition: 0,
            partitions: 1
        )
        await jobs.execute(job)
        let done = try await harness.engine.job(job.id)
        #expect(done.state == .succeeded)
        #expect(done.evaluated == 3)
        #expect(done.realized == 1)
        #expect(try await harness.members(segment.id) == ["p2@townsend.com"])

        // As of two months later the visit is out of the window: the next run exits p2.
        let later = try await harness.engine.newJob(
            segments: [segment.id],
            asOf: Story.visit.addingTimeInterval(60 * 86_400),
            partition: 0,
            partitions: 1
        )
        await jobs.execute(later)
        #expect(try await harness.engine.job(later.id).exited == 1)
        #expect(try await harness.members(segment.id) == [])
    }

    /// A shutdown (the job's task cancelled) stops a job between two chunks, and the job says why.
    @Test func aJobStopsWhenTheServiceShutsDown() async throws {
        let harness = try SegmentationHarness(start: Story.visit.addingTimeInterval(3600))
        let segment = try await harness.engine.createSegment(
            name: "batch buyers",
            pql: Story.bodea,
            entityType: .person,
            mode: .batch
        )
        try await harness.ingest(Story.withoutVisit + [Bodea.pageVisit(at: Story.visit)])
        let job = try await harness.engine.newJob(
            segments: [segment.id],
            asOf: harness.clock.now,
            partition: 0,
            partitions: 1
        )
        let jobs = EvaluationJobs(engine: harness.engine, chunkSize: 1, logger: Self.logger)
        let task = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            await jobs.execute(job)
        }
        await task.value
        let stopped = try await harness.engine.job(job.id)
        #expect(stopped.state == .failed && stopped.evaluated < 3)
        #expect(stopped.error.contains("the service stopped before the job finished"))
    }

    /// A job's chunk is committed by its next chunk (on another core), or first by a streaming change
    /// that comes in between: commits keep the order of the evaluations, so a person the stream
    /// removed after the job evaluated them does not come back as a member.
    @Test func aChunkWaitingToBeCommittedGoesBeforeTheStreamingChangesAfterIt() async throws {
        let harness = try SegmentationHarness(start: Story.visit.addingTimeInterval(3600))
        let segment = try await harness.engine.createSegment(
            name: "townsend",
            pql: "person.email.endsWith(\"@townsend.com\")",
            entityType: .person,
            mode: .batch
        )
        try await harness.ingest(Story.withoutVisit)
        func chunk(after: UInt64) async throws -> (clusters: [UInt64], transitions: Transitions) {
            try await harness.engine.evaluateBatch(
                .person,
                segments: [segment.id],
                asOf: nil,
                partition: 0,
                partitions: 1,
                after: after,
                limit: 10
            )
        }
        let first = try await chunk(after: 0)
        #expect(first.clusters.count == 3 && first.transitions == Transitions())
        // Evaluated, not yet committed.
        #expect(try await harness.members(segment.id) == [])

        var removal = Cdp_Profile_V1_StateChange()
        removal.version = 1_000_000
        removal.entity.entityType = .person
        removal.entity.clusterID = first.clusters[2]
        let removed = try await harness.engine.acceptStateChanges([removal])
        #expect(removed.transitions.exited == 1)
        #expect(try await harness.members(segment.id).count == 2)

        // The job's next call reports what the streaming call committed for it.
        let last = try await chunk(after: first.clusters[2])
        #expect(last.clusters.isEmpty && last.transitions.realized == 3)
        #expect(try await harness.members(segment.id).count == 2)
        #expect(try await harness.drainOutbox().map(\.realized) == [true, true, true, false])
    }

    /// While streaming changes arrive, a chunk of a job or an estimate ends when its time is spent, so
    /// they wait behind little work: with no time at all, each chunk takes one entity, and the job and
    /// the estimate still cover everyone. Without streaming changes, a chunk takes its whole limit.
    @Test func whileChangesStreamAChunkEndsWhenItsTimeIsSpent() async throws {
        let harness = try SegmentationHarness(start: Story.visit.addingTimeInterval(3600), chunkTime: .zero)
        let segment = try await harness.engine.createSegment(
            name: "townsend",
            pql: "person.email.endsWith(\"@townsend.com\")",
            entityType: .person,
            mode: .batch
        )
        try await harness.ingest(Story.withoutVisit)
        var after: UInt64 = 0
        var chunks: [[UInt64]] = []
        var realized = 0
        while true {
            _ = try await harness.engine.acceptStateChanges([ReceivedStateChange]())
            let chunk = try await harness.engine.evaluateBatch(
                .person,
                segments: [segment.id],
                asOf: nil,
                partition: 0,
                partitions: 1,
                after: after,
                limit: 10
            )
            realized += chunk.transitions.realized
            guard let last = chunk.clusters.last else { break }
            chunks.append(chunk.clusters)
            after = last
        }
        #expect(chunks.map(\.count) == [1, 1, 1])
        #expect(realized == 3)
        #expect(try await harness.members(segment.id).count == 3)

        let compiled = try await harness.engine.compile("person.email.endsWith(\"@townsend.com\")", .person)
        var (matched, evaluated, steps) = (0, 0, 0)
        after = 0
        while true {
            _ = try await harness.engine.acceptStateChanges([ReceivedStateChange]())
            let chunk = try await harness.engine.estimate(
                compiled,
                entityType: .person,
                asOf: harness.clock.now,
                partition: 0,
                partitions: 1,
                after: after,
                limit: 10
            )
            guard let last = chunk.clusters.last else { break }
            (matched, evaluated, steps) = (matched + chunk.matched, evaluated + chunk.evaluated, steps + 1)
            after = last
        }
        #expect(matched == 3 && evaluated == 3 && steps == 3)

        // No streaming change for longer than the engine waits for the next one: one chunk of all three.
        try await Task.sleep(for: SegmentationEngine.streamingQuiet + .milliseconds(100))
        let quiet = try await harness.engine.estimate(
            compiled,
            entityType: .person,
            asOf: harness.clock.now,
            partition: 0,
            partitions: 1,
            after: 0,
            limit: 10
        )
        #expect(quiet.clusters.count == 3 && quiet.matched == 3)
    }

    /// A job as of now that runs after a streaming change realized a member judges as of when it runs:
    /// the event that came after the job started counts, and the member does not exit.
    @Test func aJobAsOfNowDoesNotUndoWhatTheStreamDecidedSinceItStarted() async throws {
        let harness = try SegmentationHarness(start: Story.visit.addingTimeInterval(-60))
        try await harness.ingest(Story.withoutVisit)
        let segment = try await harness.engine.createSegment(
            name: "buyers",
            pql: Story.bodea,
            entityType: .person,
            mode: .streaming
        )
        let job = try await harness.engine.newJob(
            segments: [segment.id],
            asOf: harness.clock.now,
            partition: 0,
            partitions: 1
        )
        // The visit happens after the job started, and the stream realizes p2 before the job runs.
        harness.clock.set(Story.visit.addingTimeInterval(1))
        #expect(try await harness.ingest([Bodea.pageVisit(at: Story.visit)]).realized == 1)
        await EvaluationJobs(engine: harness.engine, logger: Self.logger).execute(job)
        let done = try await harness.engine.job(job.id)
        #expect(done.state == .succeeded && done.exited == 0)
        #expect(try await harness.members(segment.id) == ["p2@townsend.com"])
        #expect(try await harness.drainOutbox().map(\.realized) == [true])
    }

    @Test func aJobAsOfThePastEvaluatesBatchSegmentsOnly() async throws {
        let harness = try SegmentationHarness(start: Story.visit.addingTimeInterval(90 * 86_400))
        let streaming = try await harness.engine.createSegment(
            name: "buyers",
            pql: Story.bodea,
            entityType: .person,
            mode: .streaming
        )
        let batch = try await harness.engine.createSegment(
            name: "buyers, as of a day",
            pql: Story.bodea,
            entityType: .person,
            mode: .batch
        )
        try await harness.ingest(Story.withoutVisit + [Bodea.pageVisit(at: Story.visit)])
        let past = Story.visit.addingTimeInterval(86_400)
        do {
            _ = try await harness.engine.jobSegments([streaming.id, batch.id], asOf: past)
            Issue.record("a streaming segment was evaluated as of the past")
        } catch let error as RPCError {
            #expect(error.code == .failedPrecondition)
            #expect(
                error.message.hasPrefix("\(streaming.id) is a streaming segment, whose members are always as of now")
            )
        }
        // "All" as of the past means the batch segments; as of now, every segment.
        #expect(try await harness.engine.jobSegments([], asOf: past) == [batch.id])
        #expect(try await harness.engine.jobSegments([], asOf: harness.clock.now) == [streaming.id, batch.id])

        let jobs = EvaluationJobs(
            engine: harness.engine,
            logger: Self.logger
        )
        let job = try await harness.engine.newJob(segments: [batch.id], asOf: past, partition: 0, partitions: 1)
        await jobs.execute(job)
        #expect(try await harness.members(batch.id) == ["p2@townsend.com"])
        #expect(try await harness.members(streaming.id) == [])
        // Batch segments are not re-checked: only Evaluate changes them.
        #expect(try await harness.engine.runDueRechecks().checked == 0)
        #expect(try await harness.members(batch.id) == ["p2@townsend.com"])
    }

    @Test func aJobAsOfNowSchedulesTheRechecksOfStreamingSegments() async throws {
        let harness = try SegmentationHarness(start: Story.visit.addingTimeInterval(3600))
        // The data first: no segment sees the views as they arrive.
        try await harness.ingest(Story.withoutVisit + [Bodea.pageVisit(at: Story.visit)])
        let streaming = try await harness.engine.createSegment(
            name: "buyers",
            pql: Story.bodea,
            entityType: .person,
            mode: .streaming
        )
        #expect(try await harness.members(streaming.id) == [])
        let jobs = EvaluationJobs(
            engine: harness.engine,
            logger: Self.logger
        )
        let job = try await harness.engine.newJob(
            segments: [streaming.id],
            asOf: harness.clock.now,
            partition: 0,
            partitions: 1
        )
        await jobs.execute(job)
        #expect(try await harness.members(streaming.id) == ["p2@townsend.com"])
        #expect(try await harness.engine.status().rechecks == 1)
        harness.clock.set(Story.visit.addingTimeInterval(32 * 86_400))
        #expect(try await harness.engine.runDueRechecks().transitions.exited == 1)
        #expect(try await harness.members(streaming.id) == [])
    }

    @Test func aRestartKeepsSegmentsMembershipsAndVersions() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("segmentation-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("segmentation.sqlite").path
        let harness = try SegmentationHarness(start: Story.visit.addingTimeInterval(3600), segmentationPath: path)
        let segment = try await harness.engine.createSegment(
            name: "buyers",
            pql: Story.bodea,
            entityType: .person,
            mode: .streaming
        )
        try await harness.pipeline.ingest(Story.withoutVisit + [Bodea.pageVisit(at: Story.visit)])
        let chunk = try #require(try await harness.profile.nextStateChunk(limit: 1000))
        let changes = try chunk.changes
        #expect(try await harness.engine.acceptStateChanges(changes).transitions.realized == 1)

        // A new process over the same file.
        let clock = harness.clock
        let restarted = try SegmentationEngine(
            store: try SQLiteSegmentationStore(path: path),
            loop: MultiThreadedEventLoopGroup.singleton.next()
        ) { clock.now }
        #expect(try await restarted.segment(segment.id).pql == Story.bodea)
        #expect(try await restarted.members(of: segment.id, realized: true, after: 0, limit: 10).count == 1)
        // The state came back from the store: the same views, without profile.
        let restartedCounts = await restarted.stateCounts()
        #expect(await restartedCounts == harness.engine.stateCounts())
        // The relay re-delivers the chunk it could not mark sent: nothing changes twice.
        let again = try await restarted.acceptStateChanges(changes)
        #expect(again.stale == changes.count)
        #expect(again.transitions == Transitions())
        // The re-check scheduled before the restart is still there.
        clock.set(Story.visit.addingTimeInterval(40 * 86_400))
        #expect(try await restarted.runDueRechecks().transitions.exited == 1)
        // The next segment id is not reused.
        let next = try await restarted.createSegment(
            name: "x",
            pql: "person.score > 1",
            entityType: .person,
            mode: .streaming
        )
        #expect(next.id != segment.id)
    }

    @Test func accountSegmentsEvaluateAccountViews() async throws {
        let harness = try SegmentationHarness(start: Story.visit.addingTimeInterval(3600))
        let segment = try await harness.engine.createSegment(
            name: "big accounts",
            pql: "(sum O.amount over O from account.opportunities where O.isWon = true) > 1000000",
            entityType: .account,
            mode: .streaming
        )
        try await harness.ingest(Story.withoutVisit)
        let members = try await harness.engine.members(of: segment.id, realized: true, after: 0, limit: 10)
        #expect(members.count == 1)
        #expect(members.first?.entityType == .account)
        #expect(Set(members.first?.record.fragmentKeys ?? []) == ["A1@mkto-1.Marketo", "A2@mkto-2.Marketo"])
    }
}

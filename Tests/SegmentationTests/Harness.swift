import CDPProto
import Foundation
import NIOPosix
import PipelineSupport
import ProfileService
import ProfileStore
import SegmentationEvaluation
import SegmentationService
import SegmentationStore
import Synchronization
import TestSupport

/// A clock tests move by hand.
final class TestClock: Sendable {
    private let time: Mutex<Date>

    init(_ start: Date) { time = Mutex(start) }

    var now: Date { time.withLock { $0 } }

    func set(_ date: Date) { time.withLock { $0 = date } }
}

/// Views read straight from a profile store, for explanations in process.
struct StoreViewSource: ViewSource {
    let store: SQLiteProfileStore

    var isAvailable: Bool { true }

    func view(
        _ entityType: Cdp_Model_V1_EntityType,
        identity: Cdp_Identity_V1_IdentityValue,
        asOf: Date
    ) async throws -> EntityView? {
        guard let cluster = try store.cluster(of: entityType, named: identity) else { return nil }
        if entityType == .account { return try store.accountView(cluster: cluster).map(EntityView.account) }
        return try store.personView(cluster: cluster, asOf: asOf).map(EntityView.person)
    }
}

/// Identity, profile and segmentation in process: records go through identity into the profile store,
/// profile's state changes (as its relay takes them) into the segmentation engine.
struct SegmentationHarness {
    let pipeline: ProfilePipeline
    let profileStore: SQLiteProfileStore
    let profile: ProfileEngine
    let store: SQLiteSegmentationStore
    let engine: SegmentationEngine
    let clock: TestClock

    /// `chunkTime`: how long a batch job's chunk may take; long by default, so that a chunk holds
    /// every entity up to its limit however slow the machine. `streamingQuiet` and `evaluationThreads`:
    /// as the engine takes them (two threads, so that chunks are sliced on any machine).
    init(
        start: Date,
        segmentationPath: String? = nil,
        chunkTime: Duration = .seconds(60),
        streamingQuiet: Duration = SegmentationEngine.streamingQuiet,
        evaluationThreads: Int = 2
    ) throws {
        clock = TestClock(start)
        profileStore = try SQLiteProfileStore()
        pipeline = try ProfilePipeline(profile: profileStore)
        profile = ProfileEngine(store: profileStore, loop: MultiThreadedEventLoopGroup.singleton.next())
        store = try segmentationPath.map { try SQLiteSegmentationStore(path: $0) } ?? SQLiteSegmentationStore()
        let clock = self.clock
        engine = try SegmentationEngine(
            store: store,
            loop: MultiThreadedEventLoopGroup.singleton.next(),
            chunkTime: chunkTime,
            streamingQuiet: streamingQuiet,
            evaluationThreads: evaluationThreads
        ) { clock.now }
    }

    /// Sends records through identity and profile, then profile's state changes to segmentation, as
    /// the relays would. Returns segmentation's transitions.
    @discardableResult
    func ingest(_ records: [Cdp_Identity_V1_StoredRecord]) async throws -> Transitions {
        try await pipeline.ingest(records)
        return try await forwardChanges()
    }

    /// Sends profile's pending state changes to segmentation.
    @discardableResult
    func forwardChanges() async throws -> Transitions {
        var total = Transitions()
        while let chunk = try await profile.nextStateChunk(limit: 100) {
            let result = try await engine.acceptStateChanges(chunk.changes)
            total = total.adding(result.transitions)
            try await profile.acknowledge(chunk)
        }
        return total
    }

    /// Every membership change in segmentation's outbox, delivered and acknowledged.
    func drainOutbox() async throws -> [Cdp_Destination_V1_MembershipChange] {
        var changes: [Cdp_Destination_V1_MembershipChange] = []
        while let chunk = try await engine.nextChangeChunk(limit: 1000) {
            changes += try chunk.changes
            try await engine.acknowledge(chunk)
        }
        return changes
    }

    /// The emails of a segment's members with the given status.
    func members(_ segment: String, realized: Bool = true) async throws -> [String] {
        try await engine.members(of: segment, realized: realized, after: 0, limit: 1000).map {
            $0.record.record.person.email
        }.sorted()
    }
}

/// The running example's records, without the visit.
enum Story {
    static let visit = Date(timeIntervalSince1970: 1_793_000_000)

    static var withoutVisit: [Cdp_Identity_V1_StoredRecord] {
        Bodea.persons + Array(Bodea.accounts.prefix(2)) + Bodea.wonOpportunities + Bodea.crosswalks
    }

    static let bodea = """
        (sum O.amount over O from person.accounts.opportunities where (O.isClosed = true and O.isWon = true)) > 1000000
        and exists E from xEvent where (E.eventType = "web.webpagedetails.pageViews"
            and E.url = "https://bodea.example/new-product" and E.timestamp occurs <= 1 months before now)
        """
}

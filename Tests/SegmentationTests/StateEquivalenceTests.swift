import CDPProto
import Foundation
import NIOPosix
import PipelineSupport
import ProfileService
import ProfileStore
import SegmentationEvaluation
import SegmentationLanguage
import SwiftProtobuf
import TestSupport
import Testing

@testable import SegmentationState

/// Random B2B worlds in rounds: persons in two Marketo instances whose emails collide (identity merges
/// them, and splits them again when an email changes or a record is deleted), accounts tied by MDM
/// crosswalks, opportunities, roles, relations, campaigns, lists, members, and events early, late,
/// out of order, in the future and beyond the retention window; deletions of every kind.
struct RandomWorld {
    var random: SeededRandom
    let base = Date(timeIntervalSince1970: 1_790_000_000)
    private var round = 0

    init(seed: UInt64) { random = SeededRandom(state: seed) }

    private mutating func pick(_ count: Int) -> Int { Int.random(in: 0..<count, using: &random) }

    private mutating func chance(_ percent: Int) -> Bool { pick(100) < percent }

    private var instances: [String] { ["mkto-1", "mkto-2"] }

    static let urls = [
        "https://bodea.example/new-product", "https://bodea.example/pricing", "https://bodea.example/demo",
        "https://bodea.example/",
    ]

    /// The records of the next round: about `size` of them.
    mutating func nextRound(size: Int) -> [Cdp_Identity_V1_StoredRecord] {
        round += 1
        var records: [Cdp_Identity_V1_StoredRecord] = []
        for _ in 0..<size {
            let instance = instances[pick(2)]
            let person = "P\(pick(40))"
            let account = "A\(pick(12))"
            let opportunity = "O\(pick(20))"
            let deleted = chance(6)
            var record: Cdp_Identity_V1_StoredRecord
            switch pick(12) {
            case 0, 1:
                // Emails from a small pool: persons of both instances merge, and change email (splits).
                record = Bodea.person(
                    person,
                    instance,
                    email: "u\(pick(25))@example.com",
                    account: chance(80) ? account : nil
                )
                record.record.person.jobTitle = ["CFO", "Engineer", "VP Marketing", "Director of IT"][pick(4)]
                record.record.person.score = Double(pick(100))
                record.record.person.country = ["US", "DE", "FR"][pick(3)]
                record.record.person.personType = chance(50) ? .contact : .lead
                if chance(70) { record.record.person.emailOptOut = chance(20) }
            case 2:
                record = Bodea.account(account, instance, name: "Company \(account)")
                record.record.account.industry = ["Retail", "Software", "Energy"][pick(3)]
                record.record.account.employees = Int64(pick(10_000))
                record.record.account.annualRevenue = Double(pick(50)) * 1_000_000
            case 3:
                record = Bodea.crosswalk(master: "M\(pick(5))", linked: "\(account)@\(instance).Marketo")
            case 4:
                record = Bodea.opportunity(opportunity, instance, account: account, amount: Double(pick(10)) * 100_000)
                record.record.opportunity.isClosed = chance(50)
                record.record.opportunity.isWon = record.record.opportunity.isClosed && chance(60)
                record.record.opportunity.closeDate = Google_Protobuf_Timestamp(
                    date: base.addingTimeInterval(Double(pick(400) - 300) * 86_400)
                )
            case 5:
                record = Bodea.relation("OPR\(pick(15))", instance) { relation in
                    relation.opportunityPersonRelation.opportunityKey = "\(opportunity)@\(instance).Marketo"
                    relation.opportunityPersonRelation.personKey = "\(person)@\(instance).Marketo"
                    relation.opportunityPersonRelation.role = ["Decision Maker", "Influencer"][pick(2)]
                    relation.opportunityPersonRelation.isPrimary = chance(50)
                }
            case 6:
                record = Bodea.relation("APR\(pick(15))", instance) { relation in
                    relation.accountPersonRelation.accountKey = "\(account)@\(instance).Marketo"
                    relation.accountPersonRelation.personKey = "\(person)@\(instance).Marketo"
                }
            case 7:
                let campaign = "C\(pick(4))"
                record =
                    chance(30)
                    ? Bodea.relation(campaign, instance) { record in
                        record.campaign.campaignID = campaign
                        record.campaign.name = campaign
                        record.campaign.type = ["Webinar", "Email"][campaign.count % 2]
                    }
                    : Bodea.relation("CM\(pick(20))", instance) { member in
                        member.campaignMember.campaignKey = "\(campaign)@\(instance).Marketo"
                        member.campaignMember.personKey = "\(person)@\(instance).Marketo"
                        member.campaignMember.status = ["Sent", "Attended"][pick(2)]
                        member.campaignMember.hasResponded_p = chance(50)
                    }
            case 8:
                let list = "L\(pick(3))"
                record =
                    chance(30)
                    ? Bodea.relation(list, instance) {
                        $0.marketingList.listID = list
                        $0.marketingList.name = list
                    }
                    : Bodea.relation("LM\(pick(20))", instance) { member in
                        member.marketingListMember.listKey = "\(list)@\(instance).Marketo"
                        member.marketingListMember.personKey = "\(person)@\(instance).Marketo"
                    }
            default:
                // Events: a few keys re-sent (late corrections), times around the base, some beyond
                // the 400-day window and some in the future; some at the same instant as others (the
                // key orders them), some with nanoseconds, an id that is not the key's, no url, an
                // empty name, an email or an ecid.
                let key = chance(15) ? "E\(pick(30))" : "E\(round)-\(pick(1_000_000))"
                record = Bodea.relation(key, instance) { event in
                    event.event.eventID = chance(10) ? "id-\(key)" : key
                    event.event.personKey = "\(person)@\(instance).Marketo"
                    event.event.eventType = ["web.webpagedetails.pageViews", "form.filled"][pick(2)]
                    if !chance(10) { event.event.url = Self.urls[pick(Self.urls.count)] }
                    if chance(10) { event.event.name = "" }
                    if chance(5) { event.event.email = "\(person)@example.com" }
                    if chance(5) { event.event.ecid = "ecid-\(person)" }
                    let tied = chance(10)
                    let days = tied ? Double(pick(3)) - 5 : Double(pick(600)) - 500 + (chance(20) ? 520 : 0)
                    let seconds = days * 86_400 + (tied ? 0 : Double(pick(86_400)))
                    event.event.timestamp = Google_Protobuf_Timestamp(
                        seconds: Int64(base.addingTimeInterval(seconds).timeIntervalSince1970),
                        nanos: chance(4) ? Int32(pick(1_000_000_000)) : 0
                    )
                }
            }
            records.append(deleted ? Bodea.deleted(record) : record)
        }
        return records
    }
}

/// The state segmentation keeps, fed by profile's changes, builds the same views profile builds from
/// its tables: for every person and account, after every round of a random world, at several times.
@Suite("Segmentation state")
struct StateEquivalenceTests {
    static let times: [Double] = [0, 30, 200, 450]

    @Test(arguments: [1, 2, 3, 4] as [UInt64])
    func theStateBuildsProfilesViews(seed: UInt64) async throws {
        let store = try SQLiteProfileStore()
        let pipeline = try ProfilePipeline(profile: store)
        let profile = ProfileEngine(store: store, loop: MultiThreadedEventLoopGroup.singleton.next())
        let state = EntityState()
        // With even seeds, event names share 8 hashes: the index's path for names whose hash another
        // held name has is taken all the time.
        if seed.isMultiple(of: 2) { state.eventHashMask = 0x7 }
        var world = RandomWorld(seed: seed)
        for round in 1...8 {
            try await pipeline.ingest(world.nextRound(size: 120))
            // Profile's outbox, as its relay delivers it, in small chunks; now and then a chunk is
            // delivered twice (a lost acknowledgement).
            while let chunk = try await profile.nextStateChunk(limit: 37) {
                var touched: Set<EntityState.EntityKey> = []
                for change in try chunk.changes { try state.apply(change, touched: &touched) }
                if round % 3 == 0 { for change in try chunk.changes { try state.apply(change, touched: &touched) } }
                try await profile.acknowledge(chunk)
            }
            for days in Self.times {
                let asOf = world.base.addingTimeInterval(days * 86_400)
                try Self.expectSameViews(store, state, asOf: asOf, "seed \(seed), round \(round), \(days) days")
            }
        }
    }

    static func expectSameViews(
        _ store: SQLiteProfileStore,
        _ state: EntityState,
        asOf: Date,
        _ context: String
    ) throws {
        for entity in [Cdp_Model_V1_EntityType.person, .account] {
            let clusters = try store.clusters(of: entity, partition: 0, partitions: 1, after: 0, limit: 100_000)
            #expect(
                state.clusters(of: entity, partition: 0, partitions: 1, after: 0, limit: 100_000) == clusters,
                "\(context): the \(entity) clusters"
            )
            for cluster in clusters {
                if entity == .person {
                    let expected = try store.personView(cluster: cluster, asOf: asOf)
                    let built = state.personView(cluster, asOf: asOf)
                    #expect(built == expected, "\(context): person \(cluster)")
                } else {
                    let expected = try store.accountView(cluster: cluster)
                    #expect(state.accountView(cluster) == expected, "\(context): account \(cluster)")
                }
            }
        }
    }

    /// The twenty segments of the pipeline benchmark (Benchmarks/b2b_segments.py), over the values the
    /// random world writes.
    static let segments: [(name: String, audience: Audience, pql: String)] = [
        (
            "bodea-won-and-visited", .person,
            "(sum O.amount over O from person.accounts.opportunities where (O.isClosed = true and O.isWon = true))"
                + " > 1000000 and exists E from xEvent where (E.eventType = \"web.webpagedetails.pageViews\""
                + " and E.url = \"https://bodea.example/new-product\" and E.timestamp occurs <= 1 months before now)"
        ),
        ("engaged-and-reachable", .person, "person.score >= 50 and not person.emailOptOut"),
        ("two-countries", .person, "person.country in [\"US\", \"DE\"]"),
        (
            "senior-titles", .person,
            "person.jobTitle.contains(\"vp\", false) or person.jobTitle.contains(\"director\", false)"
                + " or person.jobTitle.contains(\"chief\", false)"
        ),
        ("industry-accounts", .person, "person.accounts[industry = \"Software\"].count() >= 1"),
        (
            "decision-makers-of-won", .person,
            "exists R from person.opportunityRoles where (R.role = \"Decision Maker\" and R.opportunity.isWon = true)"
        ),
        (
            "active-readers", .person,
            "xEvent[eventType = \"web.webpagedetails.pageViews\" and timestamp occurs <= 30 days before now]"
                + ".count() >= 3"
        ),
        (
            "pricing-last-week", .person,
            "exists E from xEvent where (E.url = \"https://bodea.example/pricing\" and E.timestamp occurs <= 7 days before now)"
        ),
        (
            "big-open-pipeline", .person,
            "exists O from person.opportunities where (O.isClosed = false and O.amount > 100000)"
        ),
        (
            "campaign-responders", .person,
            "exists C from person.campaigns where (C.hasResponded = true and C.campaign.type = \"Webinar\")"
        ),
        ("on-two-lists", .person, "person.lists.count() >= 2"),
        ("contacts-with-email", .person, "person.personType = \"Contact\" and person.email.endsWith(\".com\")"),
        (
            "demo-requesters-q1", .person,
            "exists E from xEvent where (E.url = \"https://bodea.example/demo\" and E.timestamp occurs between "
                + "date(2026, 1, 1) and date(2026, 4, 1))"
        ),
        ("large-enterprise-people", .person, "person.accounts[employees > 5000].count() >= 1"),
        (
            "closing-this-quarter", .person,
            "exists O from person.opportunities where (O.closeDate >= date(2026, 4, 1) and O.isClosed = false)"
        ),
        ("engaged-senior", .person, "inSegment(\"s4\") and inSegment(\"s2\")"),
        ("accounts-two-wins", .account, "account.opportunities[isWon = true].count() >= 2"),
        (
            "accounts-big-wins", .account,
            "(sum O.amount over O from account.opportunities where O.isWon = true) > 500000"
        ),
        ("accounts-many-people", .account, "account.persons.count() >= 3"),
        (
            "accounts-in-two-industries", .account,
            "account.industry in [\"Software\", \"Retail\"] and account.annualRevenue > 10000000"
        ),
    ]

    /// The memberships segmentation maintains change by change (streaming evaluation of what each
    /// change touches, time re-checks) equal an evaluation of every segment from scratch over profile's
    /// views, after every round of a random world and as time passes (windows close, events dated in
    /// the future come due). With streaming segments of one audience only (the other's are batch, and
    /// changes touch no root of it but one whose own record changes), those still do.
    @Test(arguments: zip([21, 22, 23, 24, 25] as [UInt64], ["both", "both", "both", "person", "account"]))
    func incrementalMembershipsEqualAFromScratchEvaluation(seed: UInt64, streaming: String) async throws {
        var world = RandomWorld(seed: seed)
        let harness = try SegmentationHarness(start: world.base)
        let audiences = Dictionary(uniqueKeysWithValues: Self.segments.enumerated().map { ("s\($0 + 1)", $1.audience) })
        var compiled: [(id: String, segment: CompiledSegment)] = []
        for (index, segment) in Self.segments.enumerated() {
            let created = try await harness.engine.createSegment(
                name: segment.name,
                pql: segment.pql,
                entityType: segment.audience == .account ? .account : .person,
                mode: streaming == "both" || segment.audience.rawValue == streaming ? .streaming : .batch
            )
            #expect(created.id == "s\(index + 1)")
            compiled.append(
                (created.id, try CompiledSegment(segment.pql, audience: segment.audience) { audiences[$0] })
            )
        }
        func isStreaming(_ id: String) -> Bool { streaming == "both" || audiences[id]?.rawValue == streaming }
        var realizedSomewhere = Set<String>()
        for round in 1...6 {
            try await harness.ingest(world.nextRound(size: 150))
            for step in 0..<2 {
                if step == 1 {
                    // Time passes: windows close, events dated later come due.
                    harness.clock.set(harness.clock.now.addingTimeInterval(Double(3 + round * 2) * 86_400))
                    while try await harness.engine.runDueRechecks().checked > 0 {}
                }
                let context = "seed \(seed), round \(round), \(step == 0 ? "after the changes" : "later")"
                for (audience, entity) in [(Audience.person, Cdp_Model_V1_EntityType.person), (.account, .account)] {
                    let expected = try Self.fromScratch(compiled, audience, entity, harness)
                    for (id, _) in compiled where audiences[id] == audience && isStreaming(id) {
                        let held = Set(
                            try await harness.engine.members(of: id, realized: true, after: 0, limit: 100_000).map(
                                \.cluster
                            )
                        )
                        #expect(held == expected[id, default: []], "\(context): \(id)")
                        if !held.isEmpty { realizedSomewhere.insert(id) }
                    }
                }
            }
        }
        // The world is rich enough to put members in most segments.
        let streamingCount = compiled.filter { isStreaming($0.id) }.count
        #expect(
            realizedSomewhere.count >= streamingCount * 14 / 20,
            "segments with members at some point: \(realizedSomewhere.sorted())"
        )
    }

    /// A batch job's memberships and an estimate's counts equal an evaluation of every segment from
    /// scratch over profile's views, with the job's chunks evaluated on one thread and sliced over
    /// three threads at once (no streaming change waits: `streamingQuiet` is zero).
    @Test(arguments: [1, 3])
    func jobsAndEstimatesOnSeveralThreadsEqualAFromScratchEvaluation(threads: Int) async throws {
        var world = RandomWorld(seed: 31)
        let harness = try SegmentationHarness(start: world.base, streamingQuiet: .zero, evaluationThreads: threads)
        let audiences = Dictionary(uniqueKeysWithValues: Self.segments.enumerated().map { ("s\($0 + 1)", $1.audience) })
        var compiled: [(id: String, segment: CompiledSegment)] = []
        for segment in Self.segments {
            let created = try await harness.engine.createSegment(
                name: segment.name,
                pql: segment.pql,
                entityType: segment.audience == .account ? .account : .person,
                mode: .batch
            )
            compiled.append(
                (created.id, try CompiledSegment(segment.pql, audience: segment.audience) { audiences[$0] })
            )
        }
        for _ in 1...3 { try await harness.ingest(world.nextRound(size: 150)) }
        for (audience, entity) in [(Audience.person, Cdp_Model_V1_EntityType.person), (.account, .account)] {
            let ids = compiled.filter { audiences[$0.id] == audience }.map(\.id)
            var evaluated = 0
            let chunks = try await Self.inChunks { after in
                let chunk = try await harness.engine.evaluateBatch(
                    entity,
                    segments: ids,
                    asOf: harness.clock.now,
                    partition: 0,
                    partitions: 1,
                    after: after,
                    limit: 7
                )
                evaluated += chunk.clusters.count
                return chunk.clusters
            }
            _ = try await harness.engine.endBatch()
            let expected = try Self.fromScratch(compiled, audience, entity, harness)
            #expect(
                evaluated
                    == (try harness.profileStore.clusters(
                        of: entity,
                        partition: 0,
                        partitions: 1,
                        after: 0,
                        limit: 100_000
                    ).count)
            )
            #expect(chunks > 1, "\(entity): \(evaluated) entities in \(chunks) chunks")
            for id in ids {
                let held = try await harness.engine.members(of: id, realized: true, after: 0, limit: 100_000)
                #expect(Set(held.map(\.cluster)) == expected[id, default: []], "\(threads) threads: \(id)")
                // inSegment reads memberships the job stored; the other segments are counted from scratch.
                guard let segment = compiled.first(where: { $0.id == id })?.segment else { continue }
                var matched = 0
                _ = try await Self.inChunks { after in
                    let chunk = try await harness.engine.estimate(
                        segment,
                        entityType: entity,
                        asOf: harness.clock.now,
                        partition: 0,
                        partitions: 1,
                        after: after,
                        limit: 7
                    )
                    matched += chunk.matched
                    return chunk.clusters
                }
                #expect(matched == expected[id, default: []].count, "\(threads) threads: the estimate of \(id)")
            }
        }
    }

    /// Calls `take` with the cluster each chunk starts after (0 first, then the last the chunk before
    /// took) until a chunk takes none; returns how many took some.
    static func inChunks(_ take: (UInt64) async throws -> [UInt64]) async throws -> Int {
        var (after, chunks): (UInt64, Int) = (0, 0)
        while let last = try await take(after).last { (after, chunks) = (last, chunks + 1) }
        return chunks
    }

    /// Each segment's members from profile's views as of the harness's clock, segments in order (each
    /// `inSegment` names an earlier one).
    static func fromScratch(
        _ compiled: [(id: String, segment: CompiledSegment)],
        _ audience: Audience,
        _ entity: Cdp_Model_V1_EntityType,
        _ harness: SegmentationHarness
    ) throws -> [String: Set<UInt64>] {
        let frame = Frame()
        let asOf = harness.clock.now
        var members: [String: Set<UInt64>] = [:]
        let store = harness.profileStore
        for cluster in try store.clusters(of: entity, partition: 0, partitions: 1, after: 0, limit: 100_000) {
            let view: EntityView? =
                entity == .person
                ? try store.personView(cluster: cluster, asOf: asOf).map(EntityView.person)
                : try store.accountView(cluster: cluster).map(EntityView.account)
            guard let view else { continue }
            frame.load(view, asOf: asOf.timeIntervalSince1970)
            for (id, segment) in compiled where segment.definition.audience == audience {
                if segment.evaluate(in: frame).matched {
                    frame.memberships.insert(id)
                    members[id, default: []].insert(cluster)
                }
            }
        }
        return members
    }
}

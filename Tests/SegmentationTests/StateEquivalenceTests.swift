import CDPProto
import Foundation
import NIOPosix
import PipelineSupport
import ProfileService
import ProfileStore
import SegmentationEvaluation
import SegmentationLanguage
import SegmentationState
import SwiftProtobuf
import TestSupport
import Testing

/// A seeded generator (SplitMix64), so a failing world can be replayed.
struct SeededRandom: RandomNumberGenerator {
    var state: UInt64

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

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
                record.record.person.jobTitle = ["CFO", "Engineer", "VP Marketing"][pick(3)]
            case 2:
                record = Bodea.account(account, instance, name: "Company \(account)")
                record.record.account.industry = ["Retail", "Software", "Energy"][pick(3)]
            case 3:
                record = Bodea.crosswalk(master: "M\(pick(5))", linked: "\(account)@\(instance).Marketo")
            case 4:
                record = Bodea.opportunity(opportunity, instance, account: account, amount: Double(pick(10)) * 100_000)
                record.record.opportunity.isClosed = chance(50)
                record.record.opportunity.isWon = record.record.opportunity.isClosed && chance(60)
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
                    ? Bodea.relation(campaign, instance) { $0.campaign.campaignID = campaign; $0.campaign.name = campaign }
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
                    ? Bodea.relation(list, instance) { $0.marketingList.listID = list; $0.marketingList.name = list }
                    : Bodea.relation("LM\(pick(20))", instance) { member in
                        member.marketingListMember.listKey = "\(list)@\(instance).Marketo"
                        member.marketingListMember.personKey = "\(person)@\(instance).Marketo"
                    }
            default:
                // Events: a few keys re-sent (late corrections), times around the base, some beyond
                // the 400-day window and some in the future.
                let key = chance(15) ? "E\(pick(30))" : "E\(round)-\(pick(1_000_000))"
                record = Bodea.relation(key, instance) { event in
                    event.event.eventID = key
                    event.event.personKey = "\(person)@\(instance).Marketo"
                    event.event.eventType = ["web.webpagedetails.pageViews", "form.filled"][pick(2)]
                    event.event.url = ["https://bodea.example/pricing", "https://bodea.example/"][pick(2)]
                    let days = Double(pick(600)) - 500
                    event.event.timestamp = Google_Protobuf_Timestamp(
                        date: base.addingTimeInterval(days * 86_400 + Double(pick(86_400)))
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
        var world = RandomWorld(seed: seed)
        for round in 1...8 {
            try await pipeline.ingest(world.nextRound(size: 120))
            // Profile's outbox, as its relay delivers it, in small chunks; now and then a chunk is
            // delivered twice (a lost acknowledgement).
            while let chunk = try await profile.nextStateChunk(limit: 37) {
                var touched: Set<EntityState.EntityKey> = []
                for change in chunk.changes { try state.apply(change, touched: &touched) }
                if round % 3 == 0 { for change in chunk.changes { try state.apply(change, touched: &touched) } }
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
}

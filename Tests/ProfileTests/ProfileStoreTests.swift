import CDPProto
import Foundation
import GRDB
import PipelineSupport
import ProfileModel
import RPCCore
import SegmentationState
import SwiftProtobuf
import TestSupport
import Testing

@testable import ProfileStore

/// The profile store fed by identity: the running example, arrival orders, fan-out, splits, privacy,
/// restarts and re-delivery.
@Suite("Profile store")
struct ProfileStoreTests {
    static let visit = Date(timeIntervalSince1970: 1_793_000_000)
    static let asOf = visit.addingTimeInterval(7 * 86_400)

    /// Everything of the running example: persons, accounts, opportunities, the crosswalk, the visit.
    static var story: [[Cdp_Identity_V1_StoredRecord]] {
        [
            Bodea.persons, Array(Bodea.accounts.prefix(2)), Bodea.wonOpportunities, Bodea.crosswalks,
            [Bodea.pageVisit(at: visit)],
        ]
    }

    static func townsend(_ store: any ProfileStore) throws -> Cdp_Profile_V1_AccountView? {
        guard let cluster = try store.cluster(of: .account, named: identity("sourceKey", "A1@mkto-1.Marketo")) else {
            return nil
        }
        return try store.accountView(cluster: cluster)
    }

    static func person(_ email: String, _ store: any ProfileStore) throws -> Cdp_Profile_V1_PersonView? {
        guard let cluster = try store.cluster(of: .person, named: identity("email", email)) else { return nil }
        return try store.personView(cluster: cluster, asOf: asOf)
    }

    static func emails(_ records: [Cdp_Profile_V1_UnifiedRecord]) -> [String] {
        records.map(\.record.person.email).sorted()
    }

    /// The running example in the natural order and in reverse: the same views.
    @Test(arguments: [false, true])
    func theTownsendAccountAndP2sViewInAnyOrder(reversed: Bool) async throws {
        let store = try SQLiteProfileStore()
        let pipeline = try ProfilePipeline(profile: store)
        for group in reversed ? Self.story.reversed() : Self.story { try await pipeline.ingest(group) }

        let townsend = try #require(try Self.townsend(store))
        #expect(townsend.account.fragmentKeys == ["A1@mkto-1.Marketo", "A2@mkto-2.Marketo"])
        #expect(townsend.opportunities.map(\.record.opportunity.opportunityID).sorted() == ["O1", "O2"])
        #expect(townsend.totals.wonAmount == 1_100_000, "Opportunity 1 and 2, each counted once")
        #expect(townsend.totals.wonOpportunities == 2)
        #expect(Self.emails(townsend.persons) == ["p1@townsend.com", "p2@townsend.com", "p3@townsend.com"])

        let p2 = try #require(try Self.person("p2@townsend.com", store))
        #expect(p2.person.fragmentKeys == ["102@mkto-1.Marketo", "2102@mkto-2.Marketo"])
        #expect(p2.accounts.count == 1, "Account 1 and Account 2 are one account")
        #expect(p2.accounts.first?.clusterID == townsend.account.clusterID)
        #expect(p2.opportunities.map(\.record.opportunity.amount).reduce(0, +) == 1_100_000)
        #expect(p2.events.map(\.event.url) == ["https://bodea.example/new-product"])
        let p1 = try #require(try Self.person("p1@townsend.com", store))
        #expect(p1.events.isEmpty && p1.accounts.map(\.clusterID) == [townsend.account.clusterID])
    }

    /// Changing Opportunity 2's amount changes its unified record (and re-sends the link it makes); segmentation's
    /// state shows it in the views of p1, p2 and p3 (through the merged account) and of the account.
    @Test func anOpportunityChangeIsTheOpportunitysAloneAndReachesEveryPersonOfTheMergedAccount() async throws {
        let store = try SQLiteProfileStore()
        let pipeline = try ProfilePipeline(profile: store)
        for group in Self.story { try await pipeline.ingest(group) }
        let state = EntityState()
        var touched: Set<EntityState.EntityKey> = []
        let all = try store.takeStateChanges(limit: 1_000_000)
        for change in try all.changes { try state.apply(change, touched: &touched) }
        try store.markSent(all)
        try await pipeline.ingest([Bodea.wonOpportunity("O2", "mkto-2", account: "A2", amount: 950_000)])
        let changed = try store.takeStateChanges(limit: 100)
        #expect(
            changed.items.map(\.kind) == [.entity, .link] && changed.items.allSatisfy { $0.entity == .opportunity }
        )
        touched = []
        for change in try changed.changes { try state.apply(change, touched: &touched) }
        var persons: [String] = []
        for key in touched where key.entity == .person {
            let person = try #require(state.personView(key.cluster, asOf: Self.asOf))
            #expect(person == (try store.personView(cluster: key.cluster, asOf: Self.asOf)))
            persons.append(person.person.record.person.email)
        }
        #expect(persons.sorted() == ["p1@townsend.com", "p2@townsend.com", "p3@townsend.com"])
        #expect(touched.filter { $0.entity == .account }.count == 1)
        #expect(try Self.townsend(store)?.totals.wonAmount == 1_150_000)
    }

    /// The outbox's pending count follows the mark log and the event log: a mark per item per apply
    /// that changed it, taken from the head a whole apply at a time (one change per item), and an item
    /// changed again after it was taken is sent again.
    @Test func thePendingCountFollowsMarksAndSends() async throws {
        let store = try SQLiteProfileStore()
        let pipeline = try ProfilePipeline(profile: store)
        for group in Self.story { try await pipeline.ingest(group) }
        let all = try store.takeStateChanges(limit: 1_000_000)
        #expect(!all.items.isEmpty && all.eventCount > 0)
        #expect(try store.outboxStatus().pending == UInt64(all.markCount + all.eventCount))
        // A chunk not yet sent stays pending; sending it twice counts it once.
        try store.markSent(all)
        try store.markSent(all)
        let sent = try store.outboxStatus()
        #expect(sent.pending == 0 && sent.sent == UInt64(all.serialized.count))
        #expect(try store.takeStateChanges(limit: 100).isEmpty)
        // Marked by two applies: two marks, one change per item.
        try await pipeline.ingest([Bodea.wonOpportunity("O2", "mkto-2", account: "A2", amount: 950_000)])
        try await pipeline.ingest([Bodea.wonOpportunity("O2", "mkto-2", account: "A2", amount: 960_000)])
        #expect(try store.outboxStatus().pending == 4)
        let taken = try store.takeStateChanges(limit: 100)
        #expect(taken.items.count == 2 && taken.markCount == 4 && taken.serialized.count == 2)
        // Changed again after it was taken: sending what was taken leaves the new marks pending.
        try await pipeline.ingest([Bodea.wonOpportunity("O2", "mkto-2", account: "A2", amount: 970_000)])
        try store.markSent(taken)
        #expect(try store.outboxStatus().pending == 2)
        let again = try store.takeStateChanges(limit: 100)
        #expect(again.items.map(\.kind) == taken.items.map(\.kind) && again.markCount == 2)
        try store.markSent(again)
        #expect(try store.outboxStatus().pending == 0)
    }

    /// An event sent again (changed) replaces its row and goes to the end of the event log: the view
    /// holds it once, as it is now, and segmentation is sent it again; a deleted one is sent as gone.
    @Test func anEventSentAgainReplacesItsRowAndIsSentAgain() async throws {
        let store = try SQLiteProfileStore()
        let pipeline = try ProfilePipeline(profile: store)
        for group in Self.story { try await pipeline.ingest(group) }
        try store.markSent(try store.takeStateChanges(limit: 1_000_000))

        var moved = Bodea.pageVisit(at: Self.visit.addingTimeInterval(60))
        moved.record.event.url = "https://bodea.example/pricing"
        try await pipeline.ingest([moved])
        let p2 = try #require(try Self.person("p2@townsend.com", store))
        #expect(p2.events.map(\.event.url) == ["https://bodea.example/pricing"])
        let again = try store.takeStateChanges(limit: 100)
        #expect(try again.eventCount == 1 && again.changes.map(\.event.event.url) == ["https://bodea.example/pricing"])
        try store.markSent(again)

        var deleted = Bodea.pageVisit(at: Self.visit)
        deleted.record.isDeleted = true
        try await pipeline.ingest([deleted])
        #expect(try Self.person("p2@townsend.com", store)?.events.isEmpty == true)
        let gone = try store.takeStateChanges(limit: 100)
        #expect(try gone.changes.count == 1 && gone.changes.first?.event.hasEvent == false)
    }

    /// The relay takes the next chunk while one is sent: the chunk after one holds the marks and events
    /// that follow it, and taking it leaves the logs as they were until the first is marked sent.
    @Test func theChunkAfterOneBeingSentFollowsIt() async throws {
        let store = try SQLiteProfileStore()
        let pipeline = try ProfilePipeline(profile: store)
        for group in Self.story.dropLast() { try await pipeline.ingest(group) }
        let first = try store.takeStateChanges(limit: 2)
        try await pipeline.ingest([Bodea.pageVisit(at: Self.visit)])
        let rest = try store.takeStateChanges(limit: 1_000_000, after: first)
        #expect(first.markCount > 0 && rest.markCount > 0 && rest.eventCount == 1)
        let pending = try store.outboxStatus().pending
        #expect(pending == UInt64(first.markCount + rest.markCount + rest.eventCount))
        // Nothing after the last: still nothing marked sent.
        #expect(try store.takeStateChanges(limit: 10, after: rest).isEmpty)
        #expect(try store.outboxStatus().pending == pending)
        try store.markSent(first)
        let head = try store.takeStateChanges(limit: 1_000_000)
        #expect(head.items.map(\.key) == rest.items.map(\.key) && head.markCount == rest.markCount)
        #expect(head.eventCount == 1)
        try store.markSent(rest)
        #expect(try store.outboxStatus().pending == 0)
    }

    /// An item marked by two applies is sent with the later one: its value is read when it is taken,
    /// as the later apply left it, so it must travel with the rest of that apply. Here Opportunity 2
    /// arrives on account A2, then the crosswalk merges A2 into A1: the chunk that says O2 belongs to
    /// the merged account also holds the merged account's record (segmentation would otherwise see the
    /// account with both opportunities and the record of A1 alone, and realize it with that record).
    /// (`reopened`: the same after a restart between the applies and the taking.)
    @Test(arguments: [false, true])
    func anItemMarkedByTwoAppliesTravelsWithTheLater(reopened: Bool) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("marks-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("profile.sqlite").path
        let clock = LockedBox(Date(timeIntervalSince1970: 1_800_000_000))
        // Every apply a millisecond of its own, so that each is a group of its own in the mark log.
        let ticking: @Sendable () -> Date = {
            clock.withLock { now in
                now += 0.001
                return now
            }
        }
        var store = try SQLiteProfileStore(path: path, now: ticking)
        let pipeline = try ProfilePipeline(profile: store)
        try await pipeline.ingest(Bodea.persons)
        try await pipeline.ingest(Array(Bodea.accounts.prefix(2)))
        try store.markSent(try store.takeStateChanges(limit: 1_000_000))
        try await pipeline.ingest(Bodea.wonOpportunities)
        try await pipeline.ingest(Bodea.crosswalks)
        if reopened { store = try SQLiteProfileStore(path: path, now: ticking) }
        let townsend = try #require(try Self.townsend(store)).account.clusterID

        var chunks: [StateChunk] = []
        while true {
            let chunk = try store.takeStateChanges(limit: 1, after: chunks.last)
            if chunk.isEmpty { break }
            chunks.append(chunk)
        }
        let withO2 = try chunks.filter { chunk in
            try chunk.changes.contains { $0.link.key == "O2@mkto-2.Marketo" }
        }
        #expect(withO2.count == 1)
        let merged = try withO2.first?.changes.first {
            $0.entity.entityType == .account && $0.entity.clusterID == townsend
        }
        #expect(merged?.entity.unified.fragmentKeys == ["A1@mkto-1.Marketo", "A2@mkto-2.Marketo"])
        #expect(try withO2.first?.changes.first { $0.link.key == "O2@mkto-2.Marketo" }?.link.toClusterID == townsend)
        // Every mark is sent once: the superseded ones count as sent with their chunk.
        for chunk in chunks { try store.markSent(chunk) }
        #expect(try store.outboxStatus().pending == 0)
    }

    /// Marks superseded by later ones add no item to a chunk, and do not count toward its limit: a chunk
    /// whose first marks are all superseded goes on to the apply that superseded them (with a limit of
    /// marks it held nothing, looked like an empty outbox, and the relay stopped for good).
    @Test func supersededMarksDoNotCountTowardTheLimit() async throws {
        let clock = LockedBox(Date(timeIntervalSince1970: 1_800_000_000))
        let store = try SQLiteProfileStore(now: {
            clock.withLock { now in
                now += 0.001
                return now
            }
        })
        let pipeline = try ProfilePipeline(profile: store)
        try await pipeline.ingest([Bodea.wonOpportunity("O2", "mkto-2", account: "A2", amount: 950_000)])
        try await pipeline.ingest([Bodea.wonOpportunity("O2", "mkto-2", account: "A2", amount: 960_000)])
        let chunk = try store.takeStateChanges(limit: 1)
        #expect(!chunk.isEmpty && chunk.markCount == 4 && chunk.items.count == 2)
        try store.markSent(chunk)
        #expect(try store.outboxStatus().pending == 0)
    }

    /// The last marks kept in memory: a later mark supersedes an earlier one of the same item; entries
    /// of sent marks are dropped once there are many, and dropping them changes no answer for a mark
    /// still waiting.
    @Test func lastMarksSupersedeEarlierOnesAndForgetSentOnes() {
        let marks = LastMarks()
        func item(_ cluster: UInt64) -> PendingItem {
            PendingItem(kind: .entity, entity: .account, cluster: cluster, key: "", version: 0)
        }
        marks.note([item(1): 5, item(2): 6])
        marks.note([item(1): 9])
        #expect(marks.isSuperseded(item(1), at: 5) && !marks.isSuperseded(item(1), at: 9))
        #expect(!marks.isSuperseded(item(2), at: 6) && !marks.isSuperseded(item(3), at: 7))
        // Many sent marks: forgotten, and the waiting ones keep their answers.
        marks.note(Dictionary(uniqueKeysWithValues: (10..<20_010).map { (item(UInt64($0)), Int64($0)) }))
        marks.note([item(20_000): 30_000])
        marks.forget(through: 20_009)
        #expect(marks.count == 1)
        #expect(marks.isSuperseded(item(20_000), at: 20_000) && !marks.isSuperseded(item(20_000), at: 30_000))
        #expect(!marks.isSuperseded(item(1), at: 9))
    }

    /// A store of version 5 keeps what waited in `pending`: it becomes the head of the mark log, oldest
    /// first.
    @Test func thePendingItemsOfAnOlderStoreBecomeTheMarkLog() throws {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("mark-log-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/profile.sqlite"
        let queue = try DatabaseQueue(path: path)
        try SQLiteProfileStore.migrator.migrate(queue, upTo: "v5: the event log")
        try queue.write { db in
            for (cluster, since) in [(5, 2_000), (3, 1_000)] {
                try db.execute(
                    sql:
                        "INSERT INTO pending (kind, entity, cluster, key, generation, since) VALUES (1, ?, ?, '', 1, ?)",
                    arguments: [Cdp_Model_V1_EntityType.account.rawValue, cluster, since]
                )
            }
        }
        try queue.close()
        let store = try SQLiteProfileStore(path: path)
        #expect(try store.outboxStatus().pending == 2)
        let chunk = try store.takeStateChanges(limit: 10)
        #expect(chunk.items.map(\.cluster) == [3, 5] && chunk.markCount == 2)
        try store.markSent(chunk)
        #expect(try store.outboxStatus().pending == 0)
    }

    /// A store from before v9 (names with each fragment's own source key, indexed by fragment) drops
    /// both at open, and still finds every fragment by each of its identities, and forgets the names of
    /// a fragment replaced.
    @Test func namesLoseTheirCopiesOfTheKeysAndTheirIndexByFragment() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("names-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("profile.sqlite").path
        let pipeline = try ProfilePipeline(profile: try SQLiteProfileStore(path: path))
        for group in Self.story { try await pipeline.ingest(group) }
        // As v8 left it.
        let queue = try DatabaseQueue(path: path)
        try await queue.write { db in
            try db.execute(
                sql: """
                    INSERT INTO names (entity, namespace, value, key)
                        SELECT entity, 'sourceKey', key, key FROM fragments WHERE entity IN (1, 2, 3, 6, 8);
                    CREATE INDEX names_by_fragment ON names (entity, key);
                    DELETE FROM grdb_migrations WHERE identifier LIKE 'v9:%';
                    """
            )
        }
        try queue.close()
        let reopened = try SQLiteProfileStore(path: path)
        let sourceKeyNames = try await DatabaseQueue(path: path).read { db in
            (
                try Int.fetchOne(db, sql: "SELECT count(*) FROM names WHERE namespace = 'sourceKey'"),
                try Int.fetchOne(db, sql: "SELECT count(*) FROM sqlite_master WHERE name = 'names_by_fragment'")
            )
        }
        #expect(sourceKeyNames.0 == 0 && sourceKeyNames.1 == 0)
        let p2 = try #require(try reopened.cluster(of: .person, named: identity("email", "p2@townsend.com")))
        for key in ["102@mkto-1.Marketo", "2102@mkto-2.Marketo"] {
            #expect(try reopened.cluster(of: .person, named: identity("sourceKey", key)) == p2)
        }
        #expect(try Self.townsend(reopened) != nil)
        // p2's Marketo 1 record with another address: the old one no longer finds it.
        let moved = Bodea.person("102", "mkto-1", email: "p2@bodea.example", account: "A1")
        try await pipeline.feeding(reopened).ingest([moved])
        let new = try #require(try reopened.cluster(of: .person, named: identity("email", "p2@bodea.example")))
        let old = try reopened.cluster(of: .person, named: identity("email", "p2@townsend.com"))
        #expect(old == (try reopened.cluster(of: .person, named: identity("sourceKey", "2102@mkto-2.Marketo"))))
        let byKey = try reopened.cluster(of: .person, named: identity("sourceKey", "102@mkto-1.Marketo"))
        #expect(old != new && byKey == new)
        #expect(
            try reopened.personData(cluster: try #require(old)).identities.map { "\($0.namespace):\($0.value)" }
                == ["email:p2@townsend.com", "sourceKey:2102@mkto-2.Marketo"]
        )
    }

    /// A chunk holds whole applies: with a limit below one apply's marks, the chunk still takes all of
    /// them.
    @Test func aChunkTakesTheWholeApplyOfItsLastMark() async throws {
        let store = try SQLiteProfileStore()
        let pipeline = try ProfilePipeline(profile: store)
        try await pipeline.ingest([Bodea.wonOpportunity("O2", "mkto-2", account: "A2", amount: 950_000)])
        try await pipeline.ingest([Bodea.wonOpportunity("O3", "mkto-2", account: "A2", amount: 10)])
        let first = try store.takeStateChanges(limit: 1)
        #expect(first.markCount == 2 && first.items.allSatisfy { $0.entity == .opportunity })
        try store.markSent(first)
        #expect(try store.takeStateChanges(limit: 1).markCount == 2)
    }

    /// Views built together from one snapshot (sharing the account and its opportunities) are the views
    /// built one by one, in the order asked, with nil for a cluster that holds nothing.
    @Test func viewsBuiltTogetherEqualViewsBuiltAlone() async throws {
        let store = try SQLiteProfileStore()
        let pipeline = try ProfilePipeline(profile: store)
        for group in Self.story { try await pipeline.ingest(group) }
        let townsend = try #require(try Self.townsend(store))
        var keys = try ["p3@townsend.com", "p1@townsend.com", "p2@townsend.com"].map { email in
            ViewKey(
                entity: .person,
                cluster: try #require(try store.cluster(of: .person, named: identity("email", email)))
            )
        }
        keys.insert(ViewKey(entity: .account, cluster: townsend.account.clusterID), at: 1)
        keys.append(ViewKey(entity: .person, cluster: 999_999))
        let together = try store.views(of: keys, asOf: Self.asOf)
        #expect(together.count == keys.count)
        for (key, view) in zip(keys, together) {
            switch view {
            case .person(let person)?:
                let alone = try store.personView(cluster: key.cluster, asOf: Self.asOf)
                #expect(key.entity == .person && person == alone)
                #expect(person.opportunities.map(\.record.opportunity.amount).reduce(0, +) == 1_100_000)
            case .account(let account)?:
                #expect(key.entity == .account && account == townsend)
            case nil:
                #expect(key.cluster == 999_999)
            }
        }
        #expect(together.compactMap { $0 }.count == 4)
    }

    /// Accounts and opportunities kept from one view build to the next never outlive a change: an
    /// amount changed, then the account split, each shows in the next view at once.
    @Test func keptAccountsAndOpportunitiesFollowEveryChange() async throws {
        let store = try SQLiteProfileStore()
        let pipeline = try ProfilePipeline(profile: store)
        for group in Self.story { try await pipeline.ingest(group) }
        func wonByP2() throws -> Double {
            try #require(try Self.person("p2@townsend.com", store)).opportunities.map(\.record.opportunity.amount)
                .reduce(0, +)
        }
        #expect(try wonByP2() == 1_100_000)
        #expect(try wonByP2() == 1_100_000, "built again from what was kept")
        try await pipeline.ingest([Bodea.wonOpportunity("O2", "mkto-2", account: "A2", amount: 950_000)])
        #expect(try wonByP2() == 1_150_000)
        try await pipeline.ingest([Bodea.deleted(Bodea.crosswalks[1])])
        let p2 = try #require(try Self.person("p2@townsend.com", store))
        #expect(p2.accounts.count == 2, "the split account is two accounts again")
        let p1 = try #require(try Self.person("p1@townsend.com", store))
        #expect(p1.opportunities.map(\.record.opportunity.amount) == [200_000], "p1 keeps only Account 1's")
    }

    /// The links a chunk sends are what the tables say when it is taken, whether the marks carried them
    /// from the apply (a fragment stored) or they were read back (a merge, a split, a fragment replaced
    /// or deleted), also when one apply stores fragments and merges their clusters: every record of the
    /// example at once, forward and reversed, then changed, deleted and split apart.
    @Test(arguments: [false, true])
    func sentLinksAreTheLinksAsStored(reversed: Bool) async throws {
        let store = try SQLiteProfileStore()
        let pipeline = try ProfilePipeline(profile: store)
        let relations = [
            Bodea.p3DecidesOnO1, Bodea.p3InMarketo1, Bodea.globex, Bodea.p1AtGlobex, Bodea.webinar,
            Bodea.p2AtWebinar, Bodea.newsletter, Bodea.p2OnNewsletter,
        ]
        let everything = Self.story.flatMap { $0 } + relations
        // Each step's records made when it comes: a record made later is a later arrival.
        let steps: [() -> [Cdp_Identity_V1_StoredRecord]] = [
            { reversed ? everything.reversed() : everything },
            {
                let registered = Bodea.relation("CM1", "mkto-1") { record in
                    record.campaignMember.campaignKey = "C1@mkto-1.Marketo"
                    record.campaignMember.personKey = "2102@mkto-2.Marketo"
                    record.campaignMember.status = "Registered"
                }
                return [registered, Bodea.deleted(Bodea.p3DecidesOnO1)]
            },
            { [Bodea.deleted(Bodea.crosswalks[1])] },
            {
                let influencer = Bodea.relation("OPR1", "mkto-1") { record in
                    record.opportunityPersonRelation.opportunityKey = "O1@mkto-1.Marketo"
                    record.opportunityPersonRelation.personKey = "P3@mkto-1.Marketo"
                    record.opportunityPersonRelation.role = "Influencer"
                }
                return [influencer, Bodea.crosswalk(master: "M-TOWNSEND", linked: "A2@mkto-2.Marketo")]
            },
        ]
        var sent: [Cdp_Profile_V1_LinkState] = []
        for step in steps {
            try await pipeline.ingest(step())
            let chunk = try store.takeStateChanges(limit: 1_000_000)
            for change in try chunk.changes where change.link.entityType != .unspecified {
                #expect(change.link == (try store.storedLink(change.link.entityType, key: change.link.key)))
                sent.append(change.link)
            }
            try store.markSent(chunk)
        }
        let roles = sent.filter { $0.key == "OPR1@mkto-1.Marketo" }
        #expect(roles.map(\.present) == [true, false, true])
        #expect(roles.map(\.role) == ["Decision Maker", "", "Influencer"])
        let memberships = sent.filter { $0.key == "CM1@mkto-1.Marketo" }
        #expect(memberships.map(\.status) == ["Attended", "Registered"] && memberships.allSatisfy(\.present))
        #expect(sent.filter { $0.present }.map(\.entityType).count > 8)
    }

    /// The crosswalk row of Account 2 deleted: the account splits, and each person follows their own.
    @Test func aSplitRehomesFragmentsAndReferences() async throws {
        let store = try SQLiteProfileStore()
        let pipeline = try ProfilePipeline(profile: store)
        for group in Self.story { try await pipeline.ingest(group) }
        try await pipeline.ingest([Bodea.deleted(Bodea.crosswalks[1])])
        let first = try #require(try Self.townsend(store))
        #expect(first.account.fragmentKeys == ["A1@mkto-1.Marketo"])
        #expect(first.totals.wonAmount == 200_000)
        #expect(Self.emails(first.persons) == ["p1@townsend.com", "p2@townsend.com"])
        let secondCluster = try #require(
            try store.cluster(of: .account, named: identity("sourceKey", "A2@mkto-2.Marketo"))
        )
        let second = try #require(try store.accountView(cluster: secondCluster))
        #expect(second.totals.wonAmount == 900_000)
        #expect(Self.emails(second.persons) == ["p2@townsend.com", "p3@townsend.com"])
        let p2 = try #require(try Self.person("p2@townsend.com", store))
        #expect(p2.accounts.count == 2)
    }

    /// A privacy delete removes the person's fragments and events; the account no longer lists them.
    @Test func deletingAPersonRemovesFragmentsAndEvents() async throws {
        let store = try SQLiteProfileStore()
        let pipeline = try ProfilePipeline(profile: store)
        for group in Self.story { try await pipeline.ingest(group) }
        let cluster = try #require(try store.cluster(of: .person, named: identity("email", "p2@townsend.com")))
        let data = try store.personData(cluster: cluster)
        let identities = data.identities.map { "\($0.namespace):\($0.value)" }
        #expect(
            identities == ["email:p2@townsend.com", "sourceKey:102@mkto-1.Marketo", "sourceKey:2102@mkto-2.Marketo"]
        )
        // Identity splits the person before the deletion runs (as removing its identities would): the
        // fragments are deleted wherever they went.
        try await pipeline.ingest([Bodea.deleted(Bodea.persons[1])])
        // A source key finds its live fragment's cluster, and nothing once the fragment is a tombstone.
        #expect(try store.cluster(of: .person, named: identity("sourceKey", "102@mkto-1.Marketo")) == nil)
        #expect(try store.cluster(of: .person, named: identity("sourceKey", "2102@mkto-2.Marketo")) != nil)
        #expect(try store.cluster(of: .account, named: identity("sourceKey", "2102@mkto-2.Marketo")) == nil)
        let deleted = try store.delete(data)
        #expect(deleted.fragments == 2 && deleted.events == 1)
        #expect(try store.personView(cluster: cluster, asOf: Self.asOf) == nil)
        for key in ["102@mkto-1.Marketo", "2102@mkto-2.Marketo"] {
            #expect(try store.cluster(of: .person, named: identity("sourceKey", key)) == nil, "\(key) is gone")
        }
        #expect(try store.events(person: cluster, from: .distantPast, to: .distantFuture, limit: 10).isEmpty)
        #expect(Self.emails(try #require(try Self.townsend(store)).persons) == ["p1@townsend.com", "p3@townsend.com"])
        let removed = try store.takeStateChanges(limit: 100).changes.contains {
            $0.entity.entityType == .person && $0.entity.clusterID == cluster && !$0.entity.hasUnified
        }
        #expect(removed, "the deleted person is sent as gone")
    }

    /// Re-delivered updates change nothing; a store reopened after a restart gives the same views.
    @Test func reDeliveryAndRestart() async throws {
        let directory = NSTemporaryDirectory() + "profile-test-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/profile.sqlite"
        let before: Cdp_Profile_V1_PersonView
        do {
            let store = try SQLiteProfileStore(path: path)
            let pipeline = try ProfilePipeline(profile: store)
            for group in Self.story { _ = try await pipeline.identity.accept(group) }
            let updates = try pipeline.pendingUpdates()
            #expect(try store.apply(updates).applied == updates.count)
            #expect(try store.apply(updates) == (0, updates.count))
            #expect(try store.apply(Array(updates.suffix(3))) == (0, 3))
            before = try #require(try Self.person("p2@townsend.com", store))
        }
        let reopened = try SQLiteProfileStore(path: path)
        #expect(try Self.person("p2@townsend.com", reopened) == before)
        #expect(try reopened.appliedSequence() > 0)
    }
}

/// The merge policies.
@Suite("Merge policies")
struct MergePolicyTests {
    static func fragment(
        _ key: String,
        _ source: String,
        lastUpdated: Int64?,
        ingestedAt: Int64,
        title: String?,
        score: Double?
    )
        throws -> Fragment
    {
        var record = Cdp_Model_V1_Record()
        record.key = key
        record.person.personID = key
        if let title { record.person.jobTitle = title }
        if let score { record.person.score = score }
        return Fragment(
            key: key,
            source: source,
            lastUpdated: lastUpdated,
            ingestedAt: ingestedAt,
            record: try record.serializedBytes()
        )
    }

    @Test func timestampOrderTakesEachFieldFromTheNewestFragmentThatHasIt() throws {
        let fragments = [
            try Self.fragment("a", "Marketo:mkto-1", lastUpdated: 300, ingestedAt: 1, title: "CTO", score: nil),
            try Self.fragment("b", "Salesforce:sf-1", lastUpdated: 100, ingestedAt: 2, title: "VP", score: 40),
            try Self.fragment("c", "Marketo:mkto-2", lastUpdated: nil, ingestedAt: 9, title: "Intern", score: 10),
        ]
        let unified = try #require(try Unifier.unify(fragments, policy: .timestampOrdered))
        #expect(unified.person.jobTitle == "CTO", "newest lastUpdated")
        #expect(unified.person.score == 40, "the newest fragment with a score")
        #expect(unified.key == "a")
        // Equal lastUpdated: ingestion time decides.
        let tied = [
            try Self.fragment("x", "Marketo:mkto-1", lastUpdated: 5, ingestedAt: 2, title: "Later", score: nil),
            try Self.fragment("y", "Marketo:mkto-2", lastUpdated: 5, ingestedAt: 1, title: "Earlier", score: nil),
        ]
        #expect(try Unifier.unify(tied, policy: .timestampOrdered)?.person.jobTitle == "Later")
    }

    @Test func sourcePrecedenceTakesEachFieldFromTheFirstListedSourceThatHasIt() throws {
        let fragments = [
            try Self.fragment("a", "Marketo:mkto-1", lastUpdated: 300, ingestedAt: 1, title: "CTO", score: 70),
            try Self.fragment("b", "Salesforce:sf-1", lastUpdated: 100, ingestedAt: 2, title: "VP", score: nil),
        ]
        let policy = try #require(MergePolicy("precedence:Salesforce:sf-1,Marketo:mkto-1"))
        let unified = try #require(try Unifier.unify(fragments, policy: policy))
        #expect(unified.person.jobTitle == "VP", "Salesforce first, though older")
        #expect(unified.person.score == 70, "Salesforce has no score: the next source's")
        #expect(MergePolicy("precedence:") == nil && MergePolicy("newest") == nil)
    }
}

/// The relations' paths: account-person relations, opportunity roles, campaigns and lists, in any
/// order relative to the entities they name.
@Suite("Profile relations")
struct ProfileRelationTests {
    static let relations = [
        Bodea.p3DecidesOnO1, Bodea.p1AtGlobex, Bodea.p2AtWebinar, Bodea.p2OnNewsletter,
    ]
    static let entities = [Bodea.p3InMarketo1, Bodea.globex, Bodea.webinar, Bodea.newsletter]

    @Test(arguments: [false, true])
    func relationsBeforeOrAfterWhatTheyName(relationsFirst: Bool) async throws {
        let store = try SQLiteProfileStore()
        let pipeline = try ProfilePipeline(profile: store)
        var groups = ProfileStoreTests.story + [Self.entities]
        if relationsFirst { groups.insert(Self.relations, at: 0) } else { groups.append(Self.relations) }
        for group in groups { try await pipeline.ingest(group) }

        // p1: Townsend through the person record, Globex through the relation.
        let p1 = try #require(try ProfileStoreTests.person("p1@townsend.com", store))
        let townsend = try #require(try ProfileStoreTests.townsend(store))
        #expect(p1.accounts.map(\.clusterID).contains(townsend.account.clusterID))
        #expect(p1.accounts.count == 2 && p1.accounts.contains { $0.record.account.name == "Globex" })
        // p3: the decision maker on Opportunity 1, which counts once although Account 1 (merged) has it too.
        let p3 = try #require(try ProfileStoreTests.person("p3@townsend.com", store))
        #expect(p3.person.fragmentKeys == ["2103@mkto-2.Marketo", "P3@mkto-1.Marketo"])
        #expect(p3.opportunityRoles.map(\.role) == ["Decision Maker"] && p3.opportunityRoles.first?.isPrimary == true)
        #expect(p3.opportunities.count == 2, "O1 and O2, each once")
        // p2: the webinar and the newsletter, through either of its source keys.
        let p2 = try #require(try ProfileStoreTests.person("p2@townsend.com", store))
        #expect(p2.campaigns.map(\.campaign.record.campaign.name) == ["Webinar"])
        #expect(p2.campaigns.first?.status == "Attended" && p2.campaigns.first?.hasResponded_p == true)
        #expect(p2.lists.map(\.list.record.marketingList.name) == ["Newsletter"])
        // Globex lists p1, through the relation.
        let globex = try #require(try store.cluster(of: .account, named: identity("sourceKey", "A3@mkto-1.Marketo")))
        #expect(
            ProfileStoreTests.emails(try #require(try store.accountView(cluster: globex)).persons) == [
                "p1@townsend.com"
            ]
        )
    }
}

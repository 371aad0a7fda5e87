import CDPProto
import Foundation
import PipelineSupport
import ProfileStore
import SegmentationEvaluation
import SegmentationLanguage
import TestSupport
import Testing

/// The Bodea segment of ARCHITECTURE.md §5 on views that identity and profile built from the running example.
@Suite("The running example's segment")
struct RunningExampleTests {
    static let visit = Date(timeIntervalSince1970: 1_793_000_000)
    /// Within a month of the visit.
    static let asOf = visit.addingTimeInterval(20 * 86_400)

    static func bodea(threshold: Int = 1_000_000) -> String {
        """
        (sum O.amount over O from person.accounts.opportunities where (O.isClosed = true and O.isWon = true)) > \(threshold)
        and exists E from xEvent where (E.eventType = "web.webpagedetails.pageViews"
            and E.url = "https://bodea.example/new-product" and E.timestamp occurs <= 1 months before now)
        """
    }

    /// The visit, by p1 instead of p2.
    static var p1Visit: Cdp_Identity_V1_StoredRecord {
        var record = Bodea.pageVisit(at: visit).record
        record.event.personKey = "101@mkto-1.Marketo"
        return Bodea.stored(record)
    }

    /// A profile store fed with the running example through identity.
    static func profile(
        crosswalk: Bool = true,
        visit: Cdp_Identity_V1_StoredRecord = Bodea.pageVisit(at: visit)
    )
        async throws -> SQLiteProfileStore
    {
        let store = try SQLiteProfileStore()
        let pipeline = try ProfilePipeline(profile: store)
        for records in [
            Bodea.persons, Array(Bodea.accounts.prefix(2)), Bodea.wonOpportunities, crosswalk ? Bodea.crosswalks : [],
            [visit],
        ] where !records.isEmpty {
            try await pipeline.ingest(records)
        }
        return store
    }

    /// Every person view of the store as of `asOf`.
    static func personViews(_ store: SQLiteProfileStore, asOf: Date = asOf) throws -> [Cdp_Profile_V1_PersonView] {
        try store.clusters(of: .person, partition: 0, partitions: 1, after: 0, limit: 1000).compactMap {
            try store.personView(cluster: $0, asOf: asOf)
        }
    }

    /// The emails of the persons the segment holds.
    static func audience(_ pql: String, _ store: SQLiteProfileStore, asOf: Date = asOf) throws -> [String] {
        let segment = try CompiledSegment(pql, audience: .person)
        let frame = Frame()
        return try personViews(store, asOf: asOf).filter { view in
            frame.load(person: view, asOf: asOf.timeIntervalSince1970)
            return segment.evaluate(in: frame).matched
        }.map(\.person.record.person.email).sorted()
    }

    @Test func theAudienceIsExactlyP2() async throws {
        let store = try await Self.profile()
        #expect(try Self.audience(Self.bodea(), store) == ["p2@townsend.com"])
    }

    @Test func aTwoMillionThresholdHoldsNobodyBecauseEachOpportunityCountsOnce() async throws {
        let store = try await Self.profile()
        #expect(try Self.audience(Self.bodea(threshold: 2_000_000), store) == [])
        // $1.1M exactly: the total, not twice it.
        #expect(try Self.audience(Self.bodea(threshold: 1_099_999), store) == ["p2@townsend.com"])
        #expect(try Self.audience(Self.bodea(threshold: 1_100_000), store) == [])
    }

    @Test func withoutTheMDMLinkP1AsTheVisitorQualifiesNobody() async throws {
        let store = try await Self.profile(crosswalk: false, visit: Self.p1Visit)
        #expect(try Self.audience(Self.bodea(), store) == [])
    }

    @Test func withTheMDMLinkP1AsTheVisitorQualifiesP1Only() async throws {
        let store = try await Self.profile(visit: Self.p1Visit)
        #expect(try Self.audience(Self.bodea(), store) == ["p1@townsend.com"])
    }

    @Test func theVisitLeavesTheWindowAfterAMonth() async throws {
        let store = try await Self.profile()
        let p2 = try #require(try Self.personViews(store).first { $0.person.record.person.email == "p2@townsend.com" })
        let segment = try CompiledSegment(Self.bodea(), audience: .person)
        let frame = Frame()
        frame.load(person: p2, asOf: Self.asOf.timeIntervalSince1970)
        let outcome = segment.evaluate(in: frame)
        #expect(outcome.matched)
        let validUntil = try #require(outcome.validUntil)
        // A month after the visit (the visit of 2026-10-26 leaves the window on 2026-11-26).
        #expect(validUntil > Self.visit.addingTimeInterval(28 * 86_400).timeIntervalSince1970)
        #expect(validUntil <= Self.visit.addingTimeInterval(32 * 86_400).timeIntervalSince1970)
        frame.load(person: p2, asOf: validUntil)
        #expect(!segment.evaluate(in: frame).matched)
        frame.load(person: p2, asOf: validUntil - 1)
        #expect(segment.evaluate(in: frame).matched)
    }

    @Test func theExplanationForP2NamesBothOpportunitiesAndTheVisit() async throws {
        let store = try await Self.profile()
        let p2 = try #require(try Self.personViews(store).first { $0.person.record.person.email == "p2@townsend.com" })
        let segment = try CompiledSegment(Self.bodea(), audience: .person)
        let frame = Frame()
        frame.load(person: p2, asOf: Self.asOf.timeIntervalSince1970)
        let (outcome, steps) = segment.explain(in: frame)
        #expect(outcome.matched)
        let sum = try #require(steps.first { $0.text.hasPrefix("sum O.amount") && !$0.text.hasSuffix("> 1000000") })
        #expect(sum.result == "1100000")
        #expect(sum.entities.map(\.key).sorted() == ["O1@mkto-1.Marketo", "O2@mkto-2.Marketo"])
        #expect(sum.entities.compactMap(\.value).sorted() == ["200000", "900000"])
        let exists = try #require(steps.first { $0.text.hasPrefix("exists E from xEvent") })
        #expect(exists.result == "true")
        #expect(exists.entities.map(\.key) == ["v1@mkto-1.Marketo"])
        #expect(exists.entities.first?.label.contains("https://bodea.example/new-product") == true)
        let comparison = try #require(steps.first { $0.text.hasSuffix("> 1000000") })
        #expect(comparison.result == "true (1100000 > 1000000)")
        // Outer parts come first.
        #expect(steps.first?.text == comparison.text)
    }
}

import IdentityGraph
import Testing

/// The identity graph: the running example in several arrival orders, transitive merges, guardrails,
/// splits and idempotent re-delivery.
@Suite("Identity graph")
struct IdentityGraphTests {
    static func key(_ id: String, _ instance: String) -> Identity { Identity("sourceKey", "\(id)@\(instance).Marketo") }
    static func email(_ value: String) -> Identity { Identity("email", value) }
    static func mdm(_ value: String) -> Identity { Identity("mdm", value) }

    /// The Bodea persons: p2@townsend.com is lead 102 in Marketo 1 and lead 2102 in Marketo 2.
    static let personRecords: [(key: String, identities: [Identity])] = [
        ("101@mkto-1.Marketo", [key("101", "mkto-1"), email("p1@townsend.com")]),
        ("102@mkto-1.Marketo", [key("102", "mkto-1"), email("p2@townsend.com")]),
        ("2102@mkto-2.Marketo", [key("2102", "mkto-2"), email("p2@townsend.com")]),
        ("2103@mkto-2.Marketo", [key("2103", "mkto-2"), email("p3@townsend.com")]),
    ]

    @Test(arguments: [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]])
    func theSamePersonInTwoMarketoInstancesIsOneCluster(order: [Int]) {
        var graph = IdentityGraph()
        for index in order {
            let record = Self.personRecords[index]
            _ = graph.upsert(record: record.key, version: 1, identities: record.identities)
        }
        let p2 = graph.cluster(of: Self.email("p2@townsend.com"))
        #expect(p2 != nil)
        #expect(graph.cluster(of: Self.key("102", "mkto-1")) == p2)
        #expect(graph.cluster(of: Self.key("2102", "mkto-2")) == p2)
        #expect(graph.cluster(of: Self.key("101", "mkto-1")) != p2)
        #expect(graph.cluster(of: Self.key("2103", "mkto-2")) != p2)
        #expect(
            Set(graph.members(of: Self.email("p2@townsend.com"))) == [
                Self.key("102", "mkto-1"), Self.key("2102", "mkto-2"), Self.email("p2@townsend.com"),
            ]
        )
    }

    /// Account 1 (Marketo 1) and Account 2 (Marketo 2) are one company through the MDM crosswalk,
    /// whether the crosswalk comes first or last, and a person's reference to an account not yet seen
    /// gets the id the account then joins.
    @Test(arguments: [true, false])
    func accountsJoinThroughTheCrosswalkInAnyOrder(crosswalkFirst: Bool) {
        var graph = IdentityGraph()
        let referenced = graph.resolveOrCreate(Self.key("A1", "mkto-1"))
        func crosswalk() {
            _ = graph.upsert(record: "M-T/A1", version: 1, identities: [Self.key("A1", "mkto-1"), Self.mdm("M-T")])
            _ = graph.upsert(record: "M-T/A2", version: 1, identities: [Self.key("A2", "mkto-2"), Self.mdm("M-T")])
        }
        if crosswalkFirst { crosswalk() }
        _ = graph.upsert(record: "A1@mkto-1.Marketo", version: 1, identities: [Self.key("A1", "mkto-1")])
        _ = graph.upsert(record: "A2@mkto-2.Marketo", version: 1, identities: [Self.key("A2", "mkto-2")])
        if !crosswalkFirst { crosswalk() }
        let account = graph.cluster(of: Self.key("A1", "mkto-1"))
        #expect(account == referenced, "the reference made before the account arrived keeps its id")
        #expect(graph.cluster(of: Self.key("A2", "mkto-2")) == account)
        #expect(graph.cluster(of: Self.mdm("M-T")) == account)
    }

    @Test func mergesAreTransitiveAndTheOldestClusterSurvives() {
        var graph = IdentityGraph()
        let a = graph.upsert(record: "r1", version: 1, identities: [Self.key("1", "m"), Self.email("a@x.io")])
        let b = graph.upsert(record: "r2", version: 1, identities: [Self.key("2", "m"), Self.email("b@x.io")])
        let joined = graph.upsert(
            record: "r3",
            version: 1,
            identities: [Self.key("3", "m"), Self.email("a@x.io"), Self.email("b@x.io")]
        )
        guard let oldest = a.cluster, let younger = b.cluster else {
            Issue.record("both records must have a cluster")
            return
        }
        #expect(joined.cluster == oldest)
        #expect(graph.cluster(of: Self.key("2", "m")) == oldest)
        // r3's own new node joined r1's cluster, then r2's cluster joined it: two merges into the oldest.
        #expect(joined.events.count == 2)
        #expect(joined.events.last == .merged(into: oldest, from: [younger]))
    }

    @Test func blockedValuesAreNotLinked() {
        var graph = IdentityGraph()
        _ = graph.upsert(record: "r1", version: 1, identities: [Self.key("1", "m"), Self.email("unknown")])
        let second = graph.upsert(record: "r2", version: 1, identities: [Self.key("2", "m"), Self.email("UNKNOWN")])
        #expect(second.blocked == [Self.email("UNKNOWN")])
        #expect(graph.cluster(of: Self.key("1", "m")) != graph.cluster(of: Self.key("2", "m")))
        #expect(graph.resolveOrCreate(Identity("crmId", "n/a")) == nil)
    }

    @Test func aValueLinkingTooManyRecordsStopsLinking() {
        var graph = IdentityGraph(configuration: .init(maxRecordsPerIdentity: 2))
        for id in 1...3 {
            _ = graph.upsert(
                record: "r\(id)",
                version: 1,
                identities: [Self.key("\(id)", "m"), Self.email("info@x.io")]
            )
        }
        #expect(graph.cluster(of: Self.key("1", "m")) == graph.cluster(of: Self.key("2", "m")))
        #expect(graph.cluster(of: Self.key("3", "m")) != graph.cluster(of: Self.key("1", "m")))
    }

    @Test func theClusterCapRefusesTheLinkAndRecordsAConflict() {
        var graph = IdentityGraph(configuration: .init(maxIdentitiesPerCluster: 3))
        _ = graph.upsert(
            record: "r1",
            version: 1,
            identities: [Self.key("1", "m"), Self.email("a@x.io"), Identity("ecid", "e1")]
        )
        let refused = graph.upsert(record: "r2", version: 1, identities: [Self.key("2", "m"), Self.email("a@x.io")])
        #expect(refused.conflicts.map(\.kind) == [.clusterCap(3)])
        #expect(refused.conflicts.first?.identity == Self.email("a@x.io"))
        #expect(graph.cluster(of: Self.key("2", "m")) != graph.cluster(of: Self.key("1", "m")))
        #expect(graph.members(of: Self.key("1", "m")).count == 3)
    }

    @Test func aUniqueNamespaceKeepsTwoCrmIdsApart() {
        var graph = IdentityGraph(configuration: .init(uniqueNamespaces: ["crmId"]))
        _ = graph.upsert(record: "r1", version: 1, identities: [Self.key("1", "m"), Identity("crmId", "003A")])
        _ = graph.upsert(record: "r2", version: 1, identities: [Self.key("2", "m"), Identity("crmId", "003B")])
        let bridge = graph.upsert(
            record: "r3",
            version: 1,
            identities: [Self.key("3", "m"), Identity("crmId", "003A"), Self.email("shared@x.io")]
        )
        let conflicting = graph.upsert(
            record: "r4",
            version: 1,
            identities: [Self.key("2", "m"), Self.email("shared@x.io")]
        )
        #expect(bridge.conflicts.isEmpty)
        #expect(conflicting.conflicts.map(\.kind) == [.uniqueNamespace("crmId")])
        #expect(graph.cluster(of: Identity("crmId", "003A")) != graph.cluster(of: Identity("crmId", "003B")))
    }

    @Test func removingTheOnlyLinkSplitsTheCluster() {
        var graph = IdentityGraph()
        let first = graph.upsert(record: "r1", version: 1, identities: [Self.key("1", "m"), Self.email("a@x.io")])
        _ = graph.upsert(record: "r2", version: 1, identities: [Self.key("2", "m"), Self.email("a@x.io")])
        let events = graph.remove(record: "r2")
        #expect(events.count == 1)
        guard case .split(let from, let into)? = events.first else {
            Issue.record("expected a split, got \(events)")
            return
        }
        #expect(from == first.cluster)
        #expect(into.count == 2 && into.contains(first.cluster!))
        #expect(graph.cluster(of: Self.key("2", "m")) != graph.cluster(of: Self.key("1", "m")))
        #expect(graph.cluster(of: Self.email("a@x.io")) == first.cluster)
    }

    @Test func removingAnIdentitySplitsWhatItHeldTogether() {
        var graph = IdentityGraph()
        _ = graph.upsert(record: "r1", version: 1, identities: [Self.key("1", "m"), Self.email("a@x.io")])
        _ = graph.upsert(record: "r2", version: 1, identities: [Self.key("2", "m"), Self.email("a@x.io")])
        let events = graph.remove(identity: Self.email("a@x.io"))
        #expect(events.count == 1)
        #expect(graph.cluster(of: Self.email("a@x.io")) == nil)
        #expect(graph.cluster(of: Self.key("2", "m")) != graph.cluster(of: Self.key("1", "m")))
    }

    @Test func reDeliveryChangesNothingAndANewVersionReplacesTheLinks() {
        var graph = IdentityGraph()
        _ = graph.upsert(record: "r1", version: 1, identities: [Self.key("1", "m"), Self.email("a@x.io")])
        _ = graph.upsert(record: "r2", version: 1, identities: [Self.key("2", "m"), Self.email("a@x.io")])
        let again = graph.upsert(record: "r2", version: 1, identities: [Self.key("2", "m"), Self.email("a@x.io")])
        #expect(again.unchanged && again.events.isEmpty)
        #expect(graph.identityCount == 3 && graph.recordCount == 2)
        // Version 2 of r2 has another email: r2 leaves r1's cluster.
        let changed = graph.upsert(record: "r2", version: 2, identities: [Self.key("2", "m"), Self.email("b@x.io")])
        #expect(!changed.unchanged)
        #expect(changed.events.contains { if case .split = $0 { return true } else { return false } })
        #expect(graph.cluster(of: Self.key("2", "m")) != graph.cluster(of: Self.key("1", "m")))
    }
}

import IdentityGraph
import TestSupport
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

    /// The state a store holds after writing down `journal`, change by change.
    static func state(replaying journal: [GraphChange]) -> GraphState {
        var identities: [UInt64: Identity] = [:]
        var records: [String: (UInt64, [UInt64])] = [:]
        var next: UInt64 = 1
        for change in journal {
            switch change {
            case .identityAdded(let sequence, let identity):
                identities[sequence] = identity
                next = sequence + 1
            case .recordLinked(let key, let version, let linked): records[key] = (version, linked)
            case .recordUnlinked(let key): records[key] = nil
            case .identityRemoved(let sequence): identities[sequence] = nil
            }
        }
        return GraphState(
            identities: identities.map { ($0.key, $0.value) },
            records: records.map { ($0.key, $0.value.0, $0.value.1) },
            nextSequence: next
        )
    }

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
        // r3's own new node joined r1's cluster (no news: nobody knew its id), then r2's cluster joined it.
        #expect(joined.events == [.merged(into: oldest, from: [younger])])
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

    @Test func removingTheOnlyLinkSplitsTheCluster() throws {
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
        // Each part says what it holds, so that data kept under the old id can be moved.
        let secondCluster = graph.cluster(of: Self.key("2", "m"))
        let second = try #require(secondCluster)
        #expect(
            into == [
                ClusterPart(
                    id: first.cluster!,
                    identities: [Self.key("1", "m"), Self.email("a@x.io")],
                    recordKeys: ["r1"]
                ),
                ClusterPart(id: second, identities: [Self.key("2", "m")], recordKeys: []),
            ]
        )
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

    @Test func blockedPatternsStopMatchingValuesInTheirNamespace() throws {
        let testAddresses = try BlockedPattern(namespace: "email", pattern: #".*@example\.com"#)
        var graph = IdentityGraph(configuration: .init(blockedPatterns: [testAddresses]))
        _ = graph.upsert(record: "r1", version: 1, identities: [Self.key("1", "m"), Self.email("qa@EXAMPLE.com")])
        let second = graph.upsert(
            record: "r2",
            version: 1,
            identities: [Self.key("2", "m"), Self.email("qa@example.com")]
        )
        #expect(second.blocked == [Self.email("qa@example.com")])
        #expect(graph.cluster(of: Self.key("1", "m")) != graph.cluster(of: Self.key("2", "m")))
        // Only in its namespace, and only a complete match.
        #expect(!graph.isBlocked(Identity("crmId", "x@example.com")))
        #expect(!graph.isBlocked(Self.email("x@example.com.au")))
        #expect(throws: (any Error).self) { try BlockedPattern(namespace: nil, pattern: "([") }
    }

    /// Removing the identity that gave a cluster its id renames the cluster: a split into one.
    @Test func losingTheOldestIdentityRenamesTheCluster() {
        var graph = IdentityGraph()
        let first = graph.upsert(
            record: "r1",
            version: 1,
            identities: [Self.email("a@x.io"), Self.key("1", "m"), Identity("ecid", "e1")]
        )
        let events = graph.remove(identity: Self.email("a@x.io"))
        let renamed = graph.cluster(of: Self.key("1", "m"))
        #expect(renamed != nil && renamed != first.cluster)
        #expect(graph.cluster(of: Identity("ecid", "e1")) == renamed)
        #expect(
            events == [
                .split(
                    from: first.cluster!,
                    into: [
                        ClusterPart(
                            id: renamed!,
                            identities: [Self.key("1", "m"), Identity("ecid", "e1")],
                            recordKeys: ["r1"]
                        )
                    ]
                )
            ]
        )
        // The last identity of a cluster removed: a split into nothing.
        let lone = graph.resolveOrCreate(Identity("ecid", "lone"))!
        #expect(graph.remove(identity: Identity("ecid", "lone")) == [.split(from: lone, into: [])])
    }

    /// A new version naming the same identities changes no link and reports nothing; one naming other
    /// identities re-links.
    @Test func aNewVersionWithTheSameIdentitiesKeepsItsLinksQuietly() {
        var graph = IdentityGraph(configuration: .init(maxIdentitiesPerCluster: 3))
        _ = graph.upsert(record: "r1", version: 1, identities: [Self.key("1", "m"), Self.email("a@x.io")])
        _ = graph.upsert(record: "r2", version: 1, identities: [Self.key("2", "m"), Self.email("a@x.io")])
        _ = graph.takeChanges()
        let edited = graph.upsert(record: "r2", version: 2, identities: [Self.key("2", "m"), Self.email("a@x.io")])
        #expect(edited.events.isEmpty && edited.conflicts.isEmpty && !edited.unchanged)
        #expect(graph.version(ofRecord: "r2") == 2)
        #expect(graph.takeChanges() == [.recordLinked(key: "r2", version: 2, identities: [3, 2])])
        // Over the cap: the refused link is not counted as "the same links", and is refused again.
        let capped = graph.upsert(record: "r3", version: 1, identities: [Self.key("3", "m"), Self.email("a@x.io")])
        #expect(capped.conflicts.count == 1)
        let again = graph.upsert(record: "r3", version: 2, identities: [Self.key("3", "m"), Self.email("a@x.io")])
        #expect(again.conflicts.count == 1)
        #expect(graph.cluster(of: Self.key("3", "m")) != graph.cluster(of: Self.key("1", "m")))
    }

    /// A graph rebuilt from its journal equals the one that wrote it, removals and re-versions included,
    /// and keeps numbering new identities where the original left off.
    @Test func aGraphRestoredFromItsJournalEqualsTheOriginal() {
        var graph = IdentityGraph(configuration: .init(uniqueNamespaces: ["crmId"]))
        var journal: [GraphChange] = []
        _ = graph.resolveOrCreate(Self.key("9", "m"))
        _ = graph.upsert(record: "r1", version: 1, identities: [Self.key("1", "m"), Self.email("a@x.io")])
        _ = graph.upsert(record: "r2", version: 1, identities: [Self.key("2", "m"), Self.email("a@x.io")])
        journal += graph.takeChanges()
        _ = graph.upsert(record: "r3", version: 1, identities: [Self.key("3", "m"), Self.email("b@x.io")])
        _ = graph.upsert(record: "r2", version: 2, identities: [Self.key("2", "m"), Self.email("b@x.io")])
        _ = graph.upsert(record: "r4", version: 1, identities: [Self.key("4", "m"), Self.email("c@x.io")])
        _ = graph.remove(identity: Self.email("c@x.io"))
        _ = graph.remove(record: "r3")
        journal += graph.takeChanges()
        #expect(graph.takeChanges().isEmpty)

        let state = Self.state(replaying: journal)
        let identities = state.identities.map(\.identity)
        var restored = IdentityGraph(configuration: graph.configuration, restoring: state)
        #expect(restored.identityCount == graph.identityCount)
        #expect(restored.recordCount == graph.recordCount)
        for identity in identities {
            #expect(restored.cluster(of: identity) == graph.cluster(of: identity), "\(identity)")
            #expect(restored.members(of: identity) == graph.members(of: identity), "\(identity)")
        }
        #expect(restored.version(ofRecord: "r2") == 2)
        #expect(restored.version(ofRecord: "r3") == nil)
        let newInOriginal = graph.resolveOrCreate(Self.email("new@x.io"))
        let newInRestored = restored.resolveOrCreate(Self.email("new@x.io"))
        #expect(newInOriginal == newInRestored)
    }
    /// Random upserts, new versions, record and identity removals over a small pool of values (so that
    /// clusters merge and split), checked against connected components computed from scratch, and a
    /// graph restored from the journal checked against the graph that wrote it.
    @Test(arguments: [1, 2, 3] as [UInt64])
    func randomChangesLeaveTheComponentsOfTheRecordsLinks(seed: UInt64) {
        var random = SeededRandom(state: seed)
        func pick(_ count: Int) -> Int { Int.random(in: 0..<count, using: &random) }
        var graph = IdentityGraph(configuration: .init(maxIdentitiesPerCluster: 1_000_000, blockedValues: []))
        var journal: [GraphChange] = []
        var records: [String: (version: UInt64, identities: [Identity])] = [:]
        func value(_ namespace: String, _ count: Int) -> Identity {
            Identity(namespace, "\(namespace)-value-number-\(pick(count))@example.org")
        }
        for step in 0..<4000 {
            let key = "r\(pick(400))@mkto-1.Marketo"
            switch pick(10) {
            case 0..<6:
                var identities = [Identity("sourceKey", key)]
                for _ in 0..<pick(3) { identities.append(value("email", 300)) }
                if pick(4) == 0 { identities.append(value("ecid", 200)) }
                let version = UInt64(step + 1)
                _ = graph.upsert(record: key, version: version, identities: identities)
                var distinct: [Identity] = []
                for identity in identities where !distinct.contains(identity) { distinct.append(identity) }
                records[key] = (version, distinct)
            case 6..<8:
                _ = graph.remove(record: key)
                records[key] = nil
            default:
                let identity = value("email", 300)
                _ = graph.remove(identity: identity)
                for (key, record) in records where record.identities.contains(identity) {
                    let rest = record.identities.filter { $0 != identity }
                    records[key] = rest.isEmpty ? nil : (record.version, rest)
                }
            }
            if step % 500 == 0 { journal += graph.takeChanges() }
        }
        journal += graph.takeChanges()

        // The components of the links, from scratch.
        var parent: [Identity: Identity] = [:]
        func root(_ identity: Identity) -> Identity {
            var root = identity
            while let next = parent[root], next != root { root = next }
            return root
        }
        for record in records.values {
            for identity in record.identities where parent[identity] == nil { parent[identity] = identity }
            for identity in record.identities.dropFirst() {
                let (a, b) = (root(record.identities[0]), root(identity))
                if a != b { parent[a] = b }
            }
        }
        var clusterOfComponent: [Identity: ClusterID] = [:]
        var componentOfCluster: [ClusterID: Identity] = [:]
        var mismatches: [String] = []
        for identity in parent.keys {
            guard let cluster = graph.cluster(of: identity) else {
                mismatches.append("\(identity) has no cluster")
                continue
            }
            let component = root(identity)
            if clusterOfComponent[component, default: cluster] != cluster
                || componentOfCluster[cluster, default: component] != component
            {
                mismatches.append("\(identity) is in \(cluster)")
            }
            clusterOfComponent[component] = cluster
            componentOfCluster[cluster] = component
        }
        #expect(mismatches.isEmpty, "\(mismatches.prefix(5))")
        #expect(graph.recordCount == records.count)
        for number in 0..<400 {
            let key = "r\(number)@mkto-1.Marketo"
            #expect(graph.version(ofRecord: key) == records[key]?.version, "\(key)")
        }

        let state = Self.state(replaying: journal)
        var restored = IdentityGraph(configuration: graph.configuration, restoring: state)
        #expect(restored.identityCount == graph.identityCount)
        #expect(restored.recordCount == graph.recordCount)
        var differences = 0
        for (_, identity) in state.identities {
            if restored.cluster(of: identity) != graph.cluster(of: identity) { differences += 1 }
            if restored.members(of: identity) != graph.members(of: identity) { differences += 1 }
            if restored.recordKeys(inClusterOf: identity).sorted() != graph.recordKeys(inClusterOf: identity).sorted() {
                differences += 1
            }
        }
        #expect(differences == 0)
    }
}

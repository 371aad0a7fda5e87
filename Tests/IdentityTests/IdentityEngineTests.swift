import CDPProto
import Foundation
import IdentityGraph
import IdentityRules
import IdentityService
import IdentityStore
import NIOPosix
import SwiftProtobuf
import TestSupport
import Testing

/// A store whose commits can be made to fail, to check that the engine then keeps nothing.
final class FailingStore: IdentityStore, @unchecked Sendable {
    let inner: any IdentityStore
    private let lock = NSLock()
    private var failingCommits = false
    private var failingLoads = false

    init(_ inner: any IdentityStore) { self.inner = inner }

    func failCommits(_ failing: Bool) { lock.withLock { failingCommits = failing } }
    func failLoads(_ failing: Bool) { lock.withLock { failingLoads = failing } }

    func loadGraphs() throws -> [EntityGraph: GraphState] {
        if lock.withLock({ failingLoads }) { throw CocoaError(.fileReadUnknown) }
        return try inner.loadGraphs()
    }
    func currentVersions(of records: [RecordSlot]) throws -> [RecordSlot: TakenVersion] {
        try inner.currentVersions(of: records)
    }
    func commit(_ commit: IdentityCommit) throws {
        if lock.withLock({ failingCommits }) { throw CocoaError(.fileWriteOutOfSpace) }
        try inner.commit(commit)
    }
    func links(in graph: EntityGraph, keys: [String]) throws -> [String: StoredLink] {
        try inner.links(in: graph, keys: keys)
    }
    func conflicts(in graph: EntityGraph?, before: Int64?, limit: Int) throws -> [StoredConflict] {
        try inner.conflicts(in: graph, before: before, limit: limit)
    }
    func nextUpdateSequence() throws -> UInt64 { try inner.nextUpdateSequence() }
    func nextOutboxChunk(limit: Int, maxBytes: Int, after: UpdateChunk?) throws -> UpdateChunk? {
        try inner.nextOutboxChunk(limit: limit, maxBytes: maxBytes, after: after)
    }
    func acknowledge(_ chunk: UpdateChunk) throws { try inner.acknowledge(chunk) }
    func outboxStatus() throws -> (pending: UInt64, oldestPending: Date?, forwarded: UInt64) {
        try inner.outboxStatus()
    }
    func forget(keys: [String]) throws -> Int { try inner.forget(keys: keys) }
    func clearLog() -> Bool { inner.clearLog() }
}

/// A temporary directory removed at the end of the test.
struct TemporaryDirectory: ~Copyable {
    let path: String
    init() throws {
        path = NSTemporaryDirectory() + "identity-test-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// Reads a store's whole outbox as updates, in order.
func outbox(of store: any IdentityStore) throws -> [Cdp_Profile_V1_IdentityUpdate] {
    guard let chunk = try store.nextOutboxChunk(limit: 1_000_000, maxBytes: .max) else { return [] }
    return try chunk.updates.map { try Cdp_Profile_V1_IdentityUpdate(serializedBytes: $0) }
}

/// What profile would do with the stream, reduced to following ids: the cluster each record and each
/// reference is in once every merge after it is applied. Cluster ids are per graph.
struct ProfileModel {
    struct Cluster: Hashable {
        var entity: Cdp_Model_V1_EntityType
        var id: UInt64
    }

    var recordCluster: [String: Cluster] = [:]
    var references: [String: [String: Cluster]] = [:]

    init(_ updates: [Cdp_Profile_V1_IdentityUpdate]) {
        for update in updates {
            switch update.update {
            case .record(let annotated)?:
                recordCluster[annotated.stored.record.key] = Cluster(
                    entity: annotated.entityType,
                    id: annotated.clusterID
                )
                var byRole: [String: Cluster] = [:]
                for reference in annotated.references {
                    byRole[reference.role] = Cluster(entity: reference.entityType, id: reference.clusterID)
                }
                references[annotated.stored.record.key] = byRole
            case .clusterChange(let change)? where change.kind == .merged:
                let from = Set(change.from.map { Cluster(entity: change.entityType, id: $0) })
                let into = Cluster(entity: change.entityType, id: change.into[0])
                for (key, cluster) in recordCluster where from.contains(cluster) { recordCluster[key] = into }
                for (key, roles) in references {
                    for (role, cluster) in roles where from.contains(cluster) { references[key]![role] = into }
                }
            default: break
            }
        }
    }

    func cluster(of key: String) -> UInt64? { recordCluster[key]?.id }
    func reference(_ role: String, of key: String) -> UInt64? { references[key]?[role]?.id }
}

@Suite("Identity engine")
struct IdentityEngineTests {
    static let loop = MultiThreadedEventLoopGroup.singleton.next()

    static func email(_ value: String) -> Identity { Identity(Namespace.email, value) }
    static func key(_ value: String) -> Identity { Identity(Namespace.sourceKey, value) }

    /// The running example, each group in its own call, in several orders: persons before their accounts,
    /// the crosswalk first or last. The result is always the same, and a reference made before its
    /// account arrived follows the merges to the account's final cluster.
    @Test(arguments: [[0, 1, 2], [2, 1, 0], [0, 2, 1], [1, 2, 0]])
    func theRunningExampleInSeveralArrivalOrders(order: [Int]) async throws {
        let store = try SQLiteIdentityStore()
        let engine = try IdentityEngine(store: store, loop: Self.loop)
        let groups = [Bodea.persons, Bodea.accounts, Bodea.crosswalks]
        for index in order { _ = try await engine.accept(groups[index]) }

        let p2 = try #require(try await engine.resolve(Self.email("p2@townsend.com"), in: .person))
        #expect(
            Set(p2.identities) == [
                Self.email("p2@townsend.com"), Self.key("102@mkto-1.Marketo"), Self.key("2102@mkto-2.Marketo"),
            ]
        )
        let p1 = try #require(try await engine.resolve(Self.email("p1@townsend.com"), in: .person))
        #expect(p1.cluster != p2.cluster)
        let townsend = try #require(try await engine.resolve(Self.key("A1@mkto-1.Marketo"), in: .account))
        #expect(try await engine.resolve(Self.key("A2@mkto-2.Marketo"), in: .account)?.cluster == townsend.cluster)
        #expect(townsend.identities.contains(Identity(Namespace.mdm, "M-TOWNSEND")))

        let profile = ProfileModel(try outbox(of: store))
        for person in Bodea.persons {
            #expect(
                profile.reference("account", of: person.record.key) == townsend.cluster.rawValue,
                "\(person.record.key)"
            )
        }
        #expect(profile.reference("account", of: "O1@mkto-1.Marketo") == townsend.cluster.rawValue)
        #expect(profile.reference("account", of: "O2@mkto-2.Marketo") == townsend.cluster.rawValue)
        #expect(profile.cluster(of: "102@mkto-1.Marketo") == p2.cluster.rawValue)
        #expect(profile.cluster(of: "2102@mkto-2.Marketo") == p2.cluster.rawValue)
        #expect(profile.cluster(of: "A2@mkto-2.Marketo") == townsend.cluster.rawValue)
    }

    /// The relay reads the next chunk while one is delivered: the chunk after one is the next a read
    /// from the head gives once that one is acknowledged.
    @Test func theChunkAfterOneBeingDeliveredIsTheNextFromTheHead() async throws {
        let store = try SQLiteIdentityStore()
        let engine = try IdentityEngine(store: store, loop: Self.loop)
        _ = try await engine.accept(Bodea.persons)
        let first = try #require(try store.nextOutboxChunk(limit: 2, maxBytes: .max))
        let second = try #require(try store.nextOutboxChunk(limit: 2, maxBytes: .max, after: first))
        #expect(second.firstSequence == first.lastSequence + 1)
        #expect(try store.nextOutboxChunk(limit: 2, maxBytes: .max)?.firstSequence == first.firstSequence)
        try store.acknowledge(first)
        let head = try #require(try store.nextOutboxChunk(limit: 2, maxBytes: .max))
        #expect(head.firstSequence == second.firstSequence && head.updates == second.updates)
    }

    @Test func reDeliveredRecordsChangeNothing() async throws {
        let store = try SQLiteIdentityStore()
        let engine = try IdentityEngine(store: store, loop: Self.loop)
        let first = try await engine.accept(Bodea.persons)
        let updates = try outbox(of: store).count
        let again = try await engine.accept(Bodea.persons + [Bodea.persons[0]])
        #expect(first == .init(accepted: 4, duplicates: 0))
        #expect(again == .init(accepted: 0, duplicates: 5))
        #expect(try outbox(of: store).count == updates)
        // Twice in one call: taken once.
        let account = Bodea.accounts[0]
        #expect(try await engine.accept([account, account]) == .init(accepted: 1, duplicates: 1))
    }

    /// Only the current version of a record makes a duplicate: a value changed back (A, B, A) is taken
    /// and forwarded; an older version that arrives after a newer one (a re-delivered chunk, a batch that
    /// completed after a later stream) is not; a person and an account sharing a key are apart.
    @Test func onlyTheCurrentVersionIsADuplicate() async throws {
        let store = try SQLiteIdentityStore()
        let engine = try IdentityEngine(store: store, loop: Self.loop)
        let optedIn = Bodea.person("P9", "mkto-1", email: "p9@townsend.com", account: nil)
        var record = optedIn.record
        record.person.emailOptOut = true
        let optedOut = Bodea.stored(record)
        let optedInAgain = Bodea.stored(optedIn.record)
        #expect(try await engine.accept([optedIn, optedOut]) == .init(accepted: 2, duplicates: 0))
        #expect(try await engine.accept([optedInAgain]) == .init(accepted: 1, duplicates: 0), "changed back")
        #expect(try await engine.accept([optedIn, optedOut, optedInAgain]) == .init(accepted: 0, duplicates: 3))
        let forwarded = try outbox(of: store).compactMap { update -> Bool? in
            guard case .record(let annotated)? = update.update, annotated.stored.record.key == record.key else {
                return nil
            }
            return annotated.stored.record.person.emailOptOut
        }
        #expect(forwarded == [false, true, false])
        // An account with the person's key is another record.
        let account = Bodea.account("P9", "mkto-1", name: "Nine")
        #expect(try await engine.accept([account]) == .init(accepted: 1, duplicates: 0))
        #expect(try await engine.accept([optedInAgain, account]) == .init(accepted: 0, duplicates: 2))
    }

    /// The state after a restart equals the state before it, and the outbox's numbering continues.
    @Test func aRestartRestoresTheGraphsAndContinuesTheOutbox() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/identity.sqlite"
        var before: [Identity: ClusterID] = [:]
        let probes = [
            Self.email("p1@townsend.com"), Self.email("p2@townsend.com"), Self.email("p3@townsend.com"),
            Self.key("2102@mkto-2.Marketo"), Self.key("2103@mkto-2.Marketo"), Self.key("101@mkto-1.Marketo"),
        ]
        do {
            let store = try SQLiteIdentityStore(path: path)
            let engine = try IdentityEngine(store: store, loop: Self.loop)
            _ = try await engine.accept(Bodea.persons)
            _ = try await engine.accept([Bodea.deleted(Bodea.persons[2])])
            _ = try await engine.accept(Bodea.accounts + Bodea.crosswalks)
            // A new version with the same identities, and a privacy removal, before the restart.
            var renamed = Bodea.persons[0].record
            renamed.person.firstName = "Pat"
            _ = try await engine.accept([Bodea.stored(renamed)])
            _ = try await engine.remove(Self.email("p3@townsend.com"), from: .person)
            for probe in probes { before[probe] = try await engine.resolve(probe, in: .person)?.cluster }
            before[Self.key("A2@mkto-2.Marketo")] = try await engine.resolve(
                Self.key("A2@mkto-2.Marketo"),
                in: .account
            )?
            .cluster
        }
        let store = try SQLiteIdentityStore(path: path)
        let lastSequence = try outbox(of: store).last?.sequence ?? 0
        let engine = try IdentityEngine(store: store, loop: Self.loop)
        for probe in probes {
            #expect(try await engine.resolve(probe, in: .person)?.cluster == before[probe], "\(probe)")
        }
        #expect(
            try await engine.resolve(Self.key("A2@mkto-2.Marketo"), in: .account)?.cluster
                == before[Self.key("A2@mkto-2.Marketo")]
        )
        // Re-delivered after the restart: still duplicates.
        // (The first version of the tombstoned record too: it was taken before the tombstone.)
        #expect(try await engine.accept(Bodea.persons) == .init(accepted: 0, duplicates: 4))
        // A new record after the restart joins p1: its updates continue the numbering.
        _ = try await engine.accept([Bodea.person("2101", "mkto-2", email: "p1@townsend.com", account: "A2")])
        #expect(
            try await engine.resolve(Self.key("2101@mkto-2.Marketo"), in: .person)?.cluster
                == before[Self.email("p1@townsend.com")]
        )
        let sequences = try outbox(of: store).map(\.sequence)
        #expect(sequences == Array(1...UInt64(sequences.count)))
        #expect(sequences.last! > lastSequence)
    }

    /// A deleted record's links go, and the cluster they held together splits.
    @Test func aTombstoneSplitsTheCluster() async throws {
        let store = try SQLiteIdentityStore()
        let engine = try IdentityEngine(store: store, loop: Self.loop)
        _ = try await engine.accept(Bodea.persons)
        let merged = try #require(try await engine.resolve(Self.email("p2@townsend.com"), in: .person))
        _ = try await engine.accept([Bodea.deleted(Bodea.persons[2])])
        let after = try #require(try await engine.resolve(Self.key("2102@mkto-2.Marketo"), in: .person))
        #expect(after.cluster != merged.cluster)
        #expect(after.identities == [Self.key("2102@mkto-2.Marketo")])
        let last = try outbox(of: store).suffix(2).map(\.update)
        guard case .clusterChange(let change)? = last.first else {
            Issue.record("expected a split before the tombstone, got \(last)")
            return
        }
        #expect(change.kind == .split && change.from == [merged.cluster.rawValue])
        #expect(Set(change.into) == [merged.cluster.rawValue, after.cluster.rawValue])
        guard case .record(let tombstone)? = last.last else {
            Issue.record("expected the tombstone")
            return
        }
        #expect(tombstone.stored.record.isDeleted && tombstone.clusterID == after.cluster.rawValue)
    }

    /// A failed commit keeps nothing, in memory either: the retry is taken as new.
    @Test func aFailedCommitIsRolledBack() async throws {
        let store = FailingStore(try SQLiteIdentityStore())
        let engine = try IdentityEngine(store: store, loop: Self.loop)
        _ = try await engine.accept(Array(Bodea.persons.prefix(2)))
        store.failCommits(true)
        await #expect(throws: CocoaError.self) { _ = try await engine.accept(Array(Bodea.persons.suffix(2))) }
        #expect(try await engine.resolve(Self.key("2102@mkto-2.Marketo"), in: .person) == nil)
        #expect(try await engine.resolve(Self.email("p2@townsend.com"), in: .person)?.identities.count == 2)
        store.failCommits(false)
        #expect(try await engine.accept(Array(Bodea.persons.suffix(2))).accepted == 2)
        #expect(try await engine.resolve(Self.email("p2@townsend.com"), in: .person)?.identities.count == 3)
        let sequences = try outbox(of: store).map(\.sequence)
        #expect(sequences == Array(1...UInt64(sequences.count)), "no gap where the failed call was")
    }

    /// A failed commit whose rollback cannot read the store either: the engine refuses calls until it
    /// can, then serves the stored state, not what it had in memory.
    @Test func anEngineThatCannotRollBackRefusesCallsUntilItCan() async throws {
        let store = FailingStore(try SQLiteIdentityStore())
        let engine = try IdentityEngine(store: store, loop: Self.loop)
        _ = try await engine.accept(Array(Bodea.persons.prefix(2)))
        store.failCommits(true)
        store.failLoads(true)
        await #expect(throws: CocoaError.self) { _ = try await engine.accept(Array(Bodea.persons.suffix(2))) }
        await #expect(throws: CocoaError.self) {
            _ = try await engine.resolve(Self.email("p2@townsend.com"), in: .person)
        }
        store.failCommits(false)
        store.failLoads(false)
        #expect(try await engine.resolve(Self.key("2102@mkto-2.Marketo"), in: .person) == nil)
        #expect(try await engine.accept(Array(Bodea.persons.suffix(2))).accepted == 2)
        #expect(try await engine.resolve(Self.email("p2@townsend.com"), in: .person)?.identities.count == 3)
    }

    /// Two person records with different CRM ids and a shared email stay apart: the second record keeps
    /// its own CRM id and is refused the email's cluster. The conflict is stored.
    @Test func aUniqueNamespaceConflictIsStored() async throws {
        let store = try SQLiteIdentityStore()
        let crmIDs = IdentityGraph.Configuration(uniqueNamespaces: [Namespace.crmID])
        let engine = try IdentityEngine(store: store, configuration: .init(graphs: [.person: crmIDs]), loop: Self.loop)
        _ = try await engine.accept([
            Bodea.person("1", "mkto-1", email: "info@townsend.com", account: nil, crmID: "003A"),
            Bodea.person("2", "mkto-2", email: "info@townsend.com", account: nil, crmID: "003B"),
        ])
        let first = try await engine.resolve(Self.key("1@mkto-1.Marketo"), in: .person)?.cluster
        let second = try await engine.resolve(Self.key("2@mkto-2.Marketo"), in: .person)?.cluster
        #expect(first != nil && first != second)
        #expect(try await engine.resolve(Identity(Namespace.crmID, "003B"), in: .person)?.cluster == second)
        #expect(try await engine.resolve(Self.email("info@townsend.com"), in: .person)?.cluster == first)
        let conflicts = try store.conflicts(in: .person, before: nil, limit: 10)
        #expect(conflicts.count == 1)
        #expect(conflicts.first?.conflict.identity == Self.email("info@townsend.com"))
        // A privacy removal of the email takes the conflicts naming it along.
        _ = try await engine.remove(Self.email("info@townsend.com"), from: .person)
        #expect(try store.conflicts(in: nil, before: nil, limit: 10).isEmpty)
        #expect(conflicts.first?.conflict.kind == .uniqueNamespace(Namespace.crmID))
        #expect(conflicts.first?.conflict.recordKey == "2@mkto-2.Marketo")
    }

    /// A privacy removal splits what the identity held together and tells profile.
    @Test func removingAnIdentitySplitsAndIsForwarded() async throws {
        let store = try SQLiteIdentityStore()
        let engine = try IdentityEngine(store: store, loop: Self.loop)
        _ = try await engine.accept(Bodea.persons)
        let removal = try #require(try await engine.remove(Self.email("p2@townsend.com"), from: .person))
        #expect(removal.events.count == 1)
        #expect(try await engine.resolve(Self.email("p2@townsend.com"), in: .person) == nil)
        #expect(
            try await engine.resolve(Self.key("102@mkto-1.Marketo"), in: .person)?.cluster
                != engine.resolve(Self.key("2102@mkto-2.Marketo"), in: .person)?.cluster
        )
        let last = try outbox(of: store).suffix(2).map(\.update)
        #expect(removal.updateSequence == (try outbox(of: store).last?.sequence))
        guard case .clusterChange(let change)? = last.first, case .identityRemoved(let removed)? = last.last else {
            Issue.record("expected the split, then the removal, in the outbox: \(last)")
            return
        }
        #expect(change.kind == .split && change.into.count == 2 && change.parts.count == 2)
        #expect(change.parts.allSatisfy { !$0.identities.contains { $0.value == "p2@townsend.com" } })
        #expect(removed.entityType == .person && removed.identity.value == "p2@townsend.com")
        #expect(try await engine.remove(Self.email("p2@townsend.com"), from: .person) == nil)
    }

    /// A Marketo lead and a Marketo company may share an id, hence a key: they live in different graphs.
    @Test func aPersonAndAnAccountMayShareAKey() async throws {
        let store = try SQLiteIdentityStore()
        let engine = try IdentityEngine(store: store, loop: Self.loop)
        var lead = Bodea.person("7", "mkto-1", email: "p7@townsend.com", account: nil)
        lead.batchID = "b-leads"
        var company = Bodea.account("7", "mkto-1", name: "Seven")
        company.batchID = "b-companies"
        #expect(try await engine.accept([lead, company]).accepted == 2)
        let person = try #require(try await engine.cluster(of: Self.key("7@mkto-1.Marketo"), in: .person))
        let account = try #require(try await engine.cluster(of: Self.key("7@mkto-1.Marketo"), in: .account))
        #expect(person.identities.count == 2 && account.identities.count == 1)
        #expect(person.links.map(\.link.provenance.batchID) == ["b-leads"])
        #expect(account.links.map(\.link.provenance.batchID) == ["b-companies"])
    }
}

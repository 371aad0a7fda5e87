import CDPProto
import Foundation
import GRDB
import SwiftProtobuf
import Testing

@testable import SegmentationStore

/// Segmentation's state log: appended changes replay to the last of each item, superseded rows are
/// compacted away, an erasure deletes every row of its items, and a v4 store's `state` table becomes
/// the log. And the outbox's status, read from its ends.
@Suite("Segmentation state log")
struct StateLogTests {
    static let now = Date(timeIntervalSince1970: 1_780_000_000)

    static func event(_ key: String, person: UInt64, version: UInt64) -> Cdp_Profile_V1_StateChange {
        var event = Cdp_Profile_V1_EventState()
        event.key = key
        event.personClusterID = person
        var change = Cdp_Profile_V1_StateChange()
        change.version = version
        change.event = event
        return change
    }

    static func replayed(_ store: SQLiteSegmentationStore) throws -> [String: UInt64] {
        var latest: [String: UInt64] = [:]
        try store.forEachStateChange { change in
            // In the order applied: a later row of an item is its newer state.
            if let held = latest[change.event.key] { #expect(held < change.version) }
            latest[change.event.key] = change.version
        }
        return latest
    }

    @Test func supersededRowsAreCompactedOnceTheyOutnumberTheLiveOnes() throws {
        let store = try SQLiteSegmentationStore(minimumCompaction: 4)
        let keys = ["e1", "e2", "e3", "e4", "e5"]
        _ = try store.commit(
            [],
            state: keys.enumerated().map { Self.event($1, person: 7, version: UInt64($0 + 1)) },
            at: Self.now
        )
        #expect(try store.stateLogCounts() == (5, 0))
        // Each item again: 5 superseded of 10 rows, not more than the live ones: kept.
        _ = try store.commit(
            [],
            state: keys.enumerated().map { Self.event($1, person: 7, version: UInt64($0 + 6)) },
            superseding: 5,
            at: Self.now
        )
        #expect(try store.stateLogCounts() == (10, 5))
        #expect(try Self.replayed(store) == ["e1": 6, "e2": 7, "e3": 8, "e4": 9, "e5": 10])
        // Three more: 8 superseded of 13, more than the 5 live ones: only the last row of each stays.
        _ = try store.commit(
            [],
            state: ["e1", "e2", "e3"].enumerated().map { Self.event($1, person: 7, version: UInt64($0 + 11)) },
            superseding: 3,
            at: Self.now
        )
        #expect(try store.stateLogCounts() == (5, 0))
        #expect(try Self.replayed(store) == ["e1": 11, "e2": 12, "e3": 13, "e4": 9, "e5": 10])
    }

    @Test func anErasureDeletesEveryRowOfItsItems() throws {
        let store = try SQLiteSegmentationStore(minimumCompaction: 1_000)
        _ = try store.commit([], state: [Self.event("e1", person: 7, version: 1)], at: Self.now)
        _ = try store.commit([], state: [Self.event("e1", person: 7, version: 2)], superseding: 1, at: Self.now)
        _ = try store.commit([], state: [Self.event("e2", person: 8, version: 3)], at: Self.now)
        var items = StateItems()
        items.events = ["e1"]
        _ = try store.commit([], forgetting: items, at: Self.now)
        #expect(try Self.replayed(store) == ["e2": 3])
        // Both rows of e1 went: nothing superseded is left to count.
        #expect(try store.stateLogCounts() == (1, 0))
    }

    /// The outbox's pending count and oldest time come from its two ends; they follow realized
    /// members and acknowledged chunks.
    @Test func theOutboxStatusFollowsChangesAndAcknowledgements() throws {
        let store = try SQLiteSegmentationStore()
        #expect(try store.outboxStatus().pending == 0 && store.outboxStatus().oldest == nil)
        let segment = try store.createSegment(
            name: "all",
            pql: "true",
            entityType: .person,
            mode: .batch,
            dependsOn: [],
            dependsOnTime: false,
            at: Self.now
        )
        let evaluations = (1...5).map { cluster in
            EntityEvaluation(
                entityType: .person,
                cluster: UInt64(cluster),
                version: nil,
                record: Cdp_Profile_V1_UnifiedRecord.with { $0.record.key = "P\(cluster)@sfdc-1.Salesforce" },
                results: [segment.id: true],
                recheck: .keep
            )
        }
        #expect(try store.commit(evaluations, at: Self.now).realized == 5)
        #expect(try store.outboxStatus().pending == 5 && store.outboxStatus().oldest == Self.now)
        let chunk = try #require(try store.nextChangeChunk(limit: 2))
        // Read ahead while the first is delivered: the rest, and the head is unchanged.
        let following = try #require(try store.nextChangeChunk(limit: 10, after: chunk))
        // Sent as stored with the sequence appended: every field of the change is there, decoded.
        #expect(try following.changes.map(\.sequence) == [3, 4, 5])
        for (offset, change) in try following.changes.enumerated() {
            #expect(change.segmentID == segment.id && change.entityType == .person && change.realized)
            #expect(change.clusterID == UInt64(offset + 3))
            #expect(change.record.record.key == "P\(offset + 3)@sfdc-1.Salesforce")
            #expect(change.at == Google_Protobuf_Timestamp(date: Self.now) && change.version >= 1)
        }
        #expect(try store.nextChangeChunk(limit: 2)?.last == chunk.last)
        try store.acknowledge(chunk)
        let status = try store.outboxStatus()
        #expect(status.pending == 3 && status.sent == 2)
        #expect(try store.nextChangeChunk(limit: 10)?.changes.map(\.sequence) == [3, 4, 5])
        try store.acknowledge(try #require(try store.nextChangeChunk(limit: 10)))
        #expect(try store.outboxStatus().pending == 0 && store.outboxStatus().oldest == nil)
    }

    /// An entity in no segment has no record kept; the commit that realizes it keeps it, even when the
    /// caller says the record is unchanged since its last commit (nothing was saved then).
    @Test func recordsAreKeptForEntitiesWithMembershipsOnly() throws {
        let store = try SQLiteSegmentationStore()
        let segment = try store.createSegment(
            name: "all",
            pql: "true",
            entityType: .person,
            mode: .batch,
            dependsOn: [],
            dependsOnTime: false,
            at: Self.now
        )
        var record = Cdp_Profile_V1_UnifiedRecord()
        record.clusterID = 7
        record.record.person.email = "p7@townsend.com"
        func evaluation(_ cluster: UInt64, matched: Bool, saved: Bool) -> EntityEvaluation {
            var evaluation = EntityEvaluation(
                entityType: .person,
                cluster: cluster,
                version: nil,
                record: record,
                results: [segment.id: matched],
                recheck: .keep
            )
            evaluation.recordSaved = saved
            return evaluation
        }
        _ = try store.commit(
            [evaluation(7, matched: false, saved: false), evaluation(8, matched: false, saved: false)],
            at: Self.now
        )
        #expect(try store.members(of: segment.id, realized: nil, after: 0, limit: 10).isEmpty)
        #expect(try store.commit([evaluation(7, matched: true, saved: true)], at: Self.now).realized == 1)
        let members = try store.members(of: segment.id, realized: true, after: 0, limit: 10)
        #expect(members.map(\.record) == [record])
        // Erasing the person in no segment deletes no record: none was kept.
        #expect(try store.erase(clusters: [8], at: Self.now).records == 0)
        #expect(try store.erase(clusters: [7], at: Self.now) == (exited: 1, records: 1))
    }

    @Test func aStoreOfTheStateTableBecomesTheLogInVersionOrder() throws {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("state-log-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/segmentation.sqlite"
        // A store as version 4 left it: one row per item, in key order, not version order.
        let queue = try DatabaseQueue(path: path)
        try SQLiteSegmentationStore.migrator.migrate(queue, upTo: "v4: the state segments are evaluated on")
        try queue.write { db in
            for (key, version) in [("a", 9), ("b", 3), ("c", 5)] {
                try db.execute(
                    sql: "INSERT INTO state (kind, entity, cluster, key, version, change) VALUES (3, 0, 0, ?, ?, ?)",
                    arguments: [
                        key, version,
                        try Self.event(key, person: 7, version: UInt64(version)).serializedBytes() as Data,
                    ]
                )
            }
        }
        try queue.close()
        let store = try SQLiteSegmentationStore(path: path)
        var order: [UInt64] = []
        try store.forEachStateChange { order.append($0.version) }
        #expect(order == [3, 5, 9])
        #expect(try store.stateLogCounts() == (3, 0))
    }

    /// A saved state opened to be read: its changes come back, and nothing can be written; a path
    /// with no file or a database of another kind is refused, and neither is created nor changed.
    @Test func aSavedStateIsReadWithoutBeingChanged() throws {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("saved-state-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/segmentation.sqlite"
        do {
            let store = try SQLiteSegmentationStore(path: path)
            _ = try store.commit([], state: [Self.event("e1", person: 7, version: 1)], at: Self.now)
        }
        let saved = try SQLiteSegmentationStore(readingSavedStateAt: path)
        #expect(try Self.replayed(saved) == ["e1": 1])
        #expect(throws: (any Error).self) {
            _ = try saved.commit([], state: [Self.event("e2", person: 7, version: 2)], at: Self.now)
        }
        #expect(try Self.replayed(saved) == ["e1": 1])

        let missing = directory + "/nothing.sqlite"
        let error = #expect(throws: SavedStateError.self) { try SQLiteSegmentationStore(readingSavedStateAt: missing) }
        #expect(error?.description == "\(missing): no such file")
        #expect(!FileManager.default.fileExists(atPath: missing))

        let other = directory + "/profile.sqlite"
        let queue = try DatabaseQueue(path: other)
        try queue.write { try $0.execute(sql: "CREATE TABLE fragments (key TEXT)") }
        try queue.close()
        let refused = #expect(throws: SavedStateError.self) { try SQLiteSegmentationStore(readingSavedStateAt: other) }
        #expect(refused?.description.contains("is not a segmentation database") == true)
        let tables = try DatabaseQueue(path: other).read {
            try String.fetchAll($0, sql: "SELECT name FROM sqlite_master")
        }
        #expect(tables == ["fragments"])
    }
}

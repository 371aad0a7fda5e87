import CDPProto
import Foundation
import GRDB
import SwiftProtobuf
import Testing

@testable import IngestionStore

/// The SQLite store: idempotent appends, batch visibility, cleanup of failed and interrupted batches, and
/// the outbox.
@Suite("SQLite ingestion store")
struct StoreTests {
    static func source() -> Cdp_Model_V1_Source {
        var source = Cdp_Model_V1_Source()
        source.type = "Marketo"
        source.instance = "mkto-1"
        return source
    }

    static func header(key: String = "") -> Cdp_Ingestion_V1_BatchHeader {
        var header = Cdp_Ingestion_V1_BatchHeader()
        header.source = source()
        header.entity = "person"
        header.format = .canonicalCsv
        header.idempotencyKey = key
        return header
    }

    static func records(_ ids: ClosedRange<Int>, version: UInt64 = 1) -> [PreparedRecord] {
        ids.map { id in
            var record = Cdp_Model_V1_Record()
            record.key = "P\(id)@mkto-1.Marketo"
            record.person.personID = "P\(id)"
            let payload: Data = try! record.serializedBytes()
            return PreparedRecord(key: record.key, version: version, entity: .person, payload: payload)
        }
    }

    static func completed(records: UInt64) -> BatchOutcome {
        var counts = Cdp_Ingestion_V1_BatchCounts()
        counts.records = records
        return BatchOutcome(state: .completed, counts: counts, errors: [], failure: "")
    }

    /// A temporary database file, removed after `body`.
    static func withDatabase<R>(_ body: (String) async throws -> R) async throws -> R {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ingestion-store-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        return try await body(directory.appendingPathComponent("ingestion.sqlite").path)
    }

    /// The key of a forwarded record (its record is still serialized).
    static func key(_ stored: Cdp_Identity_V1_StoredRecordBytes) -> String {
        (try? Cdp_Model_V1_Record(serializedBytes: stored.record).key) ?? "undecodable"
    }

    static func startedID(_ start: BatchStart) throws -> String {
        guard case .started(let id) = start else { throw StoreTestFailure("expected a started batch, got \(start)") }
        return id
    }

    @Test func appendsAreIdempotentByKeyAndVersion() async throws {
        let store = try SQLiteIngestionStore()
        let first = try await store.appendStreamRecords(Self.records(1...3), streamID: "s1")
        #expect(first == AppendResult(accepted: 3, duplicates: 0))
        let again = try await store.appendStreamRecords(Self.records(2...4), streamID: "s1")
        #expect(again == AppendResult(accepted: 1, duplicates: 2))
        let newVersion = try await store.appendStreamRecords(Self.records(1...1, version: 2), streamID: "s1")
        #expect(newVersion == AppendResult(accepted: 1, duplicates: 0))
        #expect(try await store.outboxStatus().pending == 5)
    }

    /// Only the current version of a key makes a duplicate: a value changed back (A, B, A) is a third
    /// version, stored and forwarded after the second, in the order it arrived.
    @Test func aValueChangedBackIsANewVersion() async throws {
        let store = try SQLiteIngestionStore()
        for version: UInt64 in [1, 2, 1] {
            #expect(
                try await store.appendStreamRecords(Self.records(1...1, version: version), streamID: "s1").accepted == 1
            )
        }
        #expect(try await store.appendStreamRecords(Self.records(1...1, version: 1), streamID: "s1").duplicates == 1)
        // In a batch too, and twice in one chunk: the second copy equals the first, now current.
        let id = try Self.startedID(try await store.beginBatch(Self.header(), errorThreshold: 0.05))
        let chunk = Self.records(1...1, version: 2) + Self.records(1...1, version: 2) + Self.records(1...1, version: 1)
        #expect(try await store.appendBatchRecords(chunk, batchID: id) == AppendResult(accepted: 2, duplicates: 1))
        _ = try await store.finishBatch(id, outcome: Self.completed(records: 3))
        var versions: [UInt64] = []
        while let chunk = try await store.nextOutboxChunk(limit: 10) {
            versions += chunk.records.map(\.version)
            try await store.acknowledge(chunk)
        }
        #expect(versions == [1, 2, 1, 2, 1])
    }

    /// A database written by the previous schema (unique key and version) opens, keeps its records and
    /// their sequence numbers, and takes a value changed back.
    @Test func theV2DatabaseMigratesWithItsRecords() async throws {
        try await Self.withDatabase { path in
            do {
                var migrator = SQLiteIngestionStore.migrator
                // The schema as the previous release left it.
                let queue = try DatabaseQueue(path: path)
                migrator.eraseDatabaseOnSchemaChange = false
                try migrator.migrate(queue, upTo: "v2: index of receiving batches")
                try await queue.write { db in
                    for (seq, version) in [(1, 1), (2, 2), (7, 3)] {
                        try db.execute(
                            sql: """
                                INSERT INTO records (seq, key, version, batch_id, entity, ingested_at, payload)
                                VALUES (?, 'P1@mkto-1.Marketo', ?, 'stream:s', 1, 0, x'00')
                                """,
                            arguments: [seq, version]
                        )
                    }
                    // A record deleted since (a failed batch): its seq must not come back.
                    try db.execute(sql: "DELETE FROM records WHERE seq = 7")
                }
            }
            let store = try SQLiteIngestionStore(path: path)
            let appended = try await store.appendStreamRecords(Self.records(1...1, version: 1), streamID: "s2")
            #expect(appended == AppendResult(accepted: 1, duplicates: 0), "version 1 is not the current one (2 is)")
            let chunk = try #require(try await store.nextOutboxChunk(limit: 10))
            #expect(chunk.records.map(\.sequence) == [8], "sequence numbers are never reused")
        }
    }

    @Test func aBatchIsForwardedOnlyOnceCompleted() async throws {
        let store = try SQLiteIngestionStore()
        let id = try Self.startedID(try await store.beginBatch(Self.header(), errorThreshold: 0.05))
        _ = try await store.appendBatchRecords(Self.records(1...3), batchID: id)
        _ = try await store.appendBatchRecords(Self.records(4...5), batchID: id)
        #expect(try await store.nextOutboxChunk(limit: 10) == nil, "a receiving batch is not visible to forwarding")
        let batch = try await store.finishBatch(id, outcome: Self.completed(records: 5))
        #expect(batch.state == .completed)

        var forwarded: [UInt64] = []
        while let chunk = try await store.nextOutboxChunk(limit: 2) {
            forwarded += chunk.records.map(\.sequence)
            #expect(chunk.records.allSatisfy { $0.batchID == id })
            try await store.acknowledge(chunk)
        }
        #expect(forwarded == [1, 2, 3, 4, 5])
        let status = try await store.outboxStatus()
        #expect(status.pending == 0 && status.forwarded == 5 && status.oldestPending == nil)
    }

    @Test func outboxChunksStayWithinTheirByteBudget() async throws {
        let store = try SQLiteIngestionStore()
        _ = try await store.appendStreamRecords(Self.records(1...5), streamID: "stream:s")
        let size = try #require(try await store.nextOutboxChunk(limit: 1)?.records.first?.record.count)
        var sizes: [Int] = []
        while let chunk = try await store.nextOutboxChunk(limit: 10, maxBytes: 2 * size + 1) {
            sizes.append(chunk.records.count)
            try await store.acknowledge(chunk)
        }
        #expect(sizes == [2, 2, 1])
        // A record larger than the budget still goes, alone.
        _ = try await store.appendStreamRecords(Self.records(6...7), streamID: "stream:s")
        #expect(try await store.nextOutboxChunk(limit: 10, maxBytes: 1)?.records.count == 1)
    }

    /// A stream commits one outbox entry per request; a chunk takes several entries (oldest first, up to
    /// the limit), and its acknowledgement removes exactly what it took.
    @Test func oneChunkTakesTheRecordsOfManySmallCommits() async throws {
        let store = try SQLiteIngestionStore()
        for n in 1...5 { _ = try await store.appendStreamRecords(Self.records(n...n), streamID: "stream:s") }
        let first = try #require(try await store.nextOutboxChunk(limit: 3))
        #expect(first.records.map(Self.key) == ["P1@mkto-1.Marketo", "P2@mkto-1.Marketo", "P3@mkto-1.Marketo"])
        #expect(first.parts.count == 3)
        try await store.acknowledge(first)
        #expect(try await store.outboxStatus().pending == 2)
        let rest = try #require(try await store.nextOutboxChunk(limit: 10))
        #expect(rest.records.map(Self.key) == ["P4@mkto-1.Marketo", "P5@mkto-1.Marketo"])
        try await store.acknowledge(rest)
        #expect(try await store.nextOutboxChunk(limit: 10) == nil)
        #expect(try await store.outboxStatus().forwarded == 5)
    }

    @Test func aFailedBatchKeepsNothingSoACorrectedResendIsStored() async throws {
        let store = try SQLiteIngestionStore()
        let id = try Self.startedID(try await store.beginBatch(Self.header(), errorThreshold: 0.05))
        _ = try await store.appendBatchRecords(Self.records(1...3), batchID: id)
        var outcome = Self.completed(records: 3)
        outcome.state = .failed
        outcome.failure = "too many errors"
        let failed = try await store.finishBatch(id, outcome: outcome)
        #expect(failed.state == .failed && failed.failure == "too many errors")
        #expect(try await store.nextOutboxChunk(limit: 10) == nil)

        let retry = try Self.startedID(try await store.beginBatch(Self.header(), errorThreshold: 0.05))
        let appended = try await store.appendBatchRecords(Self.records(1...3), batchID: retry)
        #expect(appended == AppendResult(accepted: 3, duplicates: 0), "the failed batch's records were deleted")
    }

    @Test func aDuplicateOfAFailedBatchsRecordIsKeptForItsClaimer() async throws {
        let store = try SQLiteIngestionStore()
        let holder = try Self.startedID(try await store.beginBatch(Self.header(), errorThreshold: 0.05))
        _ = try await store.appendBatchRecords(Self.records(1...3), batchID: holder)
        // A stream and another batch send copies of records the receiving batch holds.
        #expect(try await store.appendStreamRecords(Self.records(1...1), streamID: "stream:s").duplicates == 1)
        let claimer = try Self.startedID(try await store.beginBatch(Self.header(), errorThreshold: 0.05))
        #expect(try await store.appendBatchRecords(Self.records(2...2), batchID: claimer).duplicates == 1)

        var failed = Self.completed(records: 3)
        failed.state = .failed
        _ = try await store.finishBatch(holder, outcome: failed)
        // The streamed copy was acknowledged: it is forwarded at once, as the stream's.
        let streamed = try #require(try await store.nextOutboxChunk(limit: 10))
        #expect(streamed.records.map(Self.key) == ["P1@mkto-1.Marketo"])
        #expect(streamed.records.map(\.batchID) == ["stream:s"])
        try await store.acknowledge(streamed)
        #expect(try await store.nextOutboxChunk(limit: 10) == nil, "the claiming batch is still receiving")

        _ = try await store.finishBatch(claimer, outcome: Self.completed(records: 1))
        let inherited = try #require(try await store.nextOutboxChunk(limit: 10))
        #expect(inherited.records.map(Self.key) == ["P2@mkto-1.Marketo"])
        #expect(inherited.records.map(\.batchID) == [claimer])
        try await store.acknowledge(inherited)
        // P3, claimed by nobody, went with its batch: a new copy is stored afresh.
        #expect(try await store.appendStreamRecords(Self.records(3...3), streamID: "stream:t").accepted == 1)
    }

    @Test func theSameIdempotencyKeyReturnsTheFinishedBatch() async throws {
        let store = try SQLiteIngestionStore()
        let id = try Self.startedID(try await store.beginBatch(Self.header(key: "k1"), errorThreshold: 0.05))
        guard case .inProgress(let running) = try await store.beginBatch(Self.header(key: "k1"), errorThreshold: 0.05)
        else {
            Issue.record("a second begin while receiving must report the batch in progress")
            return
        }
        #expect(running == id)
        _ = try await store.finishBatch(id, outcome: Self.completed(records: 0))
        guard case .finished(let batch) = try await store.beginBatch(Self.header(key: "k1"), errorThreshold: 0.05)
        else {
            Issue.record("a finished batch's key must return it")
            return
        }
        #expect(batch.batchID == id && batch.state == .completed)
        // Another source may use the same key.
        var other = Self.header(key: "k1")
        other.source.instance = "mkto-2"
        #expect(try Self.startedID(try await store.beginBatch(other, errorThreshold: 0.05)) != id)
    }

    @Test func reopeningInterruptsReceivingBatchesAndDeletesTheirRecords() async throws {
        try await Self.withDatabase { path in
            let id: String
            do {
                let store = try SQLiteIngestionStore(path: path)
                id = try Self.startedID(try await store.beginBatch(Self.header(key: "k"), errorThreshold: 0.05))
                _ = try await store.appendBatchRecords(Self.records(1...4), batchID: id)
                _ = try await store.appendStreamRecords(Self.records(10...11), streamID: "s")
            }
            let reopened = try SQLiteIngestionStore(path: path)
            let batch = try #require(try await reopened.batch(id: id))
            #expect(batch.state == .interrupted)
            #expect(batch.failure.contains("send it again"))
            // Streamed records were acknowledged: they stay and are pending.
            #expect(try await reopened.outboxStatus().pending == 2)
            // A retry under the same key runs again under the same id and stores the records afresh.
            let retry = try Self.startedID(try await reopened.beginBatch(Self.header(key: "k"), errorThreshold: 0.05))
            #expect(retry == id)
            #expect(try await reopened.appendBatchRecords(Self.records(1...4), batchID: id).accepted == 4)
        }
    }

    @Test func batchesArePagedNewestFirst() async throws {
        let store = try SQLiteIngestionStore()
        var ids: [String] = []
        for index in 0..<5 {
            ids.append(try Self.startedID(try await store.beginBatch(Self.header(key: "k\(index)"), errorThreshold: 0)))
        }
        let first = try await store.listBatches(pageSize: 2, pageToken: "")
        #expect(first.batches.map(\.batchID) == [ids[4], ids[3]])
        let second = try await store.listBatches(pageSize: 2, pageToken: first.nextPageToken)
        #expect(second.batches.map(\.batchID) == [ids[2], ids[1]])
        let last = try await store.listBatches(pageSize: 2, pageToken: second.nextPageToken)
        #expect(last.batches.map(\.batchID) == [ids[0]] && last.nextPageToken.isEmpty)
    }
}

struct StoreTestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

import CDPProto
import Foundation
import GRDB
import GRDBSQLite
import SQLiteSupport
import SwiftProtobuf

/// The embedded ``IngestionStore``: one SQLite database in WAL mode through GRDB.
///
/// `synchronous = NORMAL`: a commit survives a crash of the process (kill -9), which is what an
/// acknowledgement promises; it may not survive a power loss of the machine.
public final class SQLiteIngestionStore: IngestionStore {
    private let writer: any DatabaseWriter

    /// Opens (creating if needed) the database at `path`, migrates it, and marks batches that were
    /// receiving when the last process stopped as interrupted, deleting their records.
    public init(path: String) throws {
        let pool = try ServiceDatabase.open(path: path, migrator: Self.migrator)
        writer = pool
        try pool.write { db in try Self.interruptReceivingBatches(db) }
    }

    /// A store in memory, for tests: the same schema through the same migrator.
    public init() throws {
        writer = try ServiceDatabase.inMemory(migrator: Self.migrator)
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1: sources, batches, records, outbox") { db in
            try db.execute(
                sql: """
                    CREATE TABLE sources (
                        type TEXT NOT NULL,
                        instance TEXT NOT NULL,
                        description TEXT NOT NULL,
                        created_at INTEGER NOT NULL,
                        PRIMARY KEY (type, instance)
                    );
                    CREATE TABLE batches (
                        id TEXT PRIMARY KEY,
                        source_type TEXT NOT NULL,
                        source_instance TEXT NOT NULL,
                        entity TEXT NOT NULL,
                        format INTEGER NOT NULL,
                        idempotency_key TEXT,
                        file_name TEXT NOT NULL,
                        state TEXT NOT NULL,
                        records INTEGER NOT NULL DEFAULT 0,
                        accepted INTEGER NOT NULL DEFAULT 0,
                        duplicates INTEGER NOT NULL DEFAULT 0,
                        rejected INTEGER NOT NULL DEFAULT 0,
                        bytes INTEGER NOT NULL DEFAULT 0,
                        failure TEXT NOT NULL DEFAULT '',
                        error_threshold REAL NOT NULL,
                        created_at INTEGER NOT NULL,
                        finished_at INTEGER
                    );
                    CREATE UNIQUE INDEX batches_by_idempotency_key
                        ON batches (source_type, source_instance, idempotency_key)
                        WHERE idempotency_key IS NOT NULL;
                    CREATE TABLE batch_errors (
                        batch_id TEXT NOT NULL REFERENCES batches(id) ON DELETE CASCADE,
                        ordinal INTEGER NOT NULL,
                        line INTEGER NOT NULL,
                        record_number INTEGER NOT NULL,
                        field TEXT NOT NULL,
                        reason TEXT NOT NULL,
                        PRIMARY KEY (batch_id, ordinal)
                    );
                    -- The raw record log. seq orders it; (key, version) makes appends idempotent. (An index
                    -- over a hash of the key was tried: random insert order cost far more I/O than the
                    -- text index, whose keys mostly arrive in order.)
                    CREATE TABLE records (
                        seq INTEGER PRIMARY KEY AUTOINCREMENT,
                        key TEXT NOT NULL,
                        version INTEGER NOT NULL,
                        batch_id TEXT NOT NULL,
                        entity INTEGER NOT NULL,
                        ingested_at INTEGER NOT NULL,
                        payload BLOB NOT NULL,
                        UNIQUE (key, version)
                    );
                    -- The seq ranges each receiving batch appended (one per chunk transaction, so each
                    -- range holds only that batch's records).
                    CREATE TABLE batch_chunks (
                        batch_id TEXT NOT NULL,
                        first_seq INTEGER NOT NULL,
                        last_seq INTEGER NOT NULL,
                        count INTEGER NOT NULL
                    );
                    CREATE INDEX batch_chunks_by_batch ON batch_chunks (batch_id);
                    -- Seq ranges to forward, in order; next_seq is how far forwarding has come.
                    CREATE TABLE outbox (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        first_seq INTEGER NOT NULL,
                        last_seq INTEGER NOT NULL,
                        next_seq INTEGER NOT NULL,
                        remaining INTEGER NOT NULL,
                        created_at INTEGER NOT NULL
                    );
                    -- A duplicate of a record that a still-receiving batch holds: if that batch fails or
                    -- is interrupted, the record passes to its first claimer instead of being deleted, so
                    -- an acknowledged duplicate is never lost with someone else's batch.
                    CREATE TABLE claims (
                        seq INTEGER NOT NULL,
                        claimer TEXT NOT NULL,
                        PRIMARY KEY (seq, claimer)
                    ) WITHOUT ROWID;
                    CREATE INDEX claims_by_claimer ON claims (claimer);
                    CREATE TABLE counters (
                        name TEXT PRIMARY KEY,
                        value INTEGER NOT NULL
                    );
                    INSERT INTO counters (name, value) VALUES ('forwarded', 0);
                    """
            )
        }
        migrator.registerMigration("v2: index of receiving batches") { db in
            // Every append asks whether another batch is receiving (see `append`).
            try db.execute(sql: "CREATE INDEX batches_receiving ON batches (id) WHERE state = 'receiving'")
        }
        migrator.registerMigration("v3: versions in arrival order") { db in
            // A record is a duplicate only when it equals the current (latest) version of its key, so
            // a value changed back (A, B, A) is a third version, not a duplicate of the first. Same
            // key and content may now be stored more than once: the unique (key, version) index
            // goes, and an index on (key, entity) finds the current version (a person and an account
            // of one source may share a key; index rows end with seq, so the latest is the last). SQLite cannot drop a constraint: the table is rebuilt, and
            // AUTOINCREMENT's high-water mark is carried over so that no seq is ever reused.
            try db.execute(
                sql: """
                    CREATE TABLE records_v3 (
                        seq INTEGER PRIMARY KEY AUTOINCREMENT,
                        key TEXT NOT NULL,
                        version INTEGER NOT NULL,
                        batch_id TEXT NOT NULL,
                        entity INTEGER NOT NULL,
                        ingested_at INTEGER NOT NULL,
                        payload BLOB NOT NULL
                    );
                    INSERT INTO records_v3 (seq, key, version, batch_id, entity, ingested_at, payload)
                        SELECT seq, key, version, batch_id, entity, ingested_at, payload FROM records ORDER BY seq;
                    INSERT INTO sqlite_sequence (name, seq)
                        SELECT 'records_v3', 0 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'records_v3');
                    UPDATE sqlite_sequence
                        SET seq = (SELECT max(seq) FROM sqlite_sequence WHERE name IN ('records', 'records_v3'))
                        WHERE name = 'records_v3';
                    DROP TABLE records;
                    ALTER TABLE records_v3 RENAME TO records;
                    CREATE INDEX records_by_key ON records (key, entity);
                    """
            )
        }
        migrator.registerMigration("v4: privacy suppressions") { db in
            // The hashed identities of persons erased by privacy requests: their records are refused
            // until the request is lifted. Batches count those refused apart from invalid ones.
            try db.execute(
                sql: """
                    CREATE TABLE suppressions (
                        hash BLOB NOT NULL,
                        request TEXT NOT NULL,
                        created_at INTEGER NOT NULL,
                        PRIMARY KEY (hash, request)
                    ) WITHOUT ROWID;
                    CREATE INDEX suppressions_by_request ON suppressions (request);
                    ALTER TABLE batches ADD COLUMN suppressed INTEGER NOT NULL DEFAULT 0;
                    """
            )
        }
        return migrator
    }

    // MARK: - Sources

    public func createSource(
        _ source: Cdp_Model_V1_Source,
        description: String
    ) async throws
        -> Cdp_Ingestion_V1_SourceInfo
    {
        try await writer.write { db in
            try db.execute(
                sql:
                    "INSERT INTO sources (type, instance, description, created_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                arguments: [source.type, source.instance, description, Self.now()]
            )
            return try Self.source(source, in: db)!
        }
    }

    public func source(_ source: Cdp_Model_V1_Source) async throws -> Cdp_Ingestion_V1_SourceInfo? {
        try await writer.read { db in try Self.source(source, in: db) }
    }

    public func listSources() async throws -> [Cdp_Ingestion_V1_SourceInfo] {
        try await writer.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM sources ORDER BY type, instance").map(Self.sourceInfo)
        }
    }

    private static func source(_ source: Cdp_Model_V1_Source, in db: Database) throws -> Cdp_Ingestion_V1_SourceInfo? {
        try Row.fetchOne(
            db,
            sql: "SELECT * FROM sources WHERE type = ? AND instance = ?",
            arguments: [source.type, source.instance]
        ).map(sourceInfo)
    }

    private static func sourceInfo(_ row: Row) -> Cdp_Ingestion_V1_SourceInfo {
        var info = Cdp_Ingestion_V1_SourceInfo()
        info.source.type = row["type"]
        info.source.instance = row["instance"]
        info.description_p = row["description"]
        info.createdAt = timestamp(row["created_at"])
        return info
    }

    // MARK: - Batches

    public func beginBatch(_ header: Cdp_Ingestion_V1_BatchHeader, errorThreshold: Double) async throws -> BatchStart {
        try await writer.write { db in
            let key: String? = header.idempotencyKey.isEmpty ? nil : header.idempotencyKey
            if let key,
                let row = try Row.fetchOne(
                    db,
                    sql:
                        "SELECT id, state FROM batches WHERE source_type = ? AND source_instance = ? AND idempotency_key = ?",
                    arguments: [header.source.type, header.source.instance, key]
                )
            {
                let id: String = row["id"]
                switch BatchStateName(rawValue: row["state"]) {
                case .receiving:
                    return .inProgress(batchID: id)
                case .completed, .failed:
                    return .finished(try Self.batch(id: id, in: db, withErrors: true)!)
                case .interrupted, nil:
                    // A retry of a batch the service lost while receiving it: receive it again, same id.
                    try db.execute(
                        sql: """
                            UPDATE batches SET state = 'receiving', records = 0, accepted = 0, duplicates = 0,
                                rejected = 0, bytes = 0, failure = '', entity = ?, format = ?, file_name = ?,
                                error_threshold = ?, created_at = ?, finished_at = NULL
                            WHERE id = ?
                            """,
                        arguments: [
                            header.entity, header.format.rawValue, header.fileName, errorThreshold, Self.now(), id,
                        ]
                    )
                    try db.execute(sql: "DELETE FROM batch_errors WHERE batch_id = ?", arguments: [id])
                    return .started(batchID: id)
                }
            }
            let id = Self.newBatchID()
            try db.execute(
                sql: """
                    INSERT INTO batches (id, source_type, source_instance, entity, format, idempotency_key,
                        file_name, state, error_threshold, created_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, 'receiving', ?, ?)
                    """,
                arguments: [
                    id, header.source.type, header.source.instance, header.entity, header.format.rawValue, key,
                    header.fileName, errorThreshold, Self.now(),
                ]
            )
            return .started(batchID: id)
        }
    }

    public func appendBatchRecords(_ records: [PreparedRecord], batchID: String) async throws -> AppendResult {
        try await writer.write { db in
            let (result, range) = try Self.append(records, batchID: batchID, in: db)
            if let range {
                try db.execute(
                    sql: "INSERT INTO batch_chunks (batch_id, first_seq, last_seq, count) VALUES (?, ?, ?, ?)",
                    arguments: [batchID, range.lowerBound, range.upperBound, result.accepted]
                )
            }
            return result
        }
    }

    public func finishBatch(_ batchID: String, outcome: BatchOutcome) async throws -> Cdp_Ingestion_V1_Batch {
        try await writer.write { db in
            let now = Self.now()
            let completed = outcome.state == .completed
            if completed {
                try db.execute(
                    sql: """
                        INSERT INTO outbox (first_seq, last_seq, next_seq, remaining, created_at)
                        SELECT first_seq, last_seq, first_seq, count, ? FROM batch_chunks
                        WHERE batch_id = ? ORDER BY first_seq
                        """,
                    arguments: [now, batchID]
                )
                // Its records are safe now: claims on them are moot.
                try db.execute(
                    sql: """
                        DELETE FROM claims WHERE seq IN (
                            SELECT claims.seq FROM batch_chunks JOIN claims
                                ON claims.seq BETWEEN batch_chunks.first_seq AND batch_chunks.last_seq
                            WHERE batch_chunks.batch_id = ?)
                        """,
                    arguments: [batchID]
                )
            } else {
                try Self.releaseRecords(ofBatch: batchID, in: db)
            }
            try db.execute(sql: "DELETE FROM batch_chunks WHERE batch_id = ?", arguments: [batchID])
            let counts = outcome.counts
            try db.execute(
                sql: """
                    UPDATE batches SET state = ?, records = ?, accepted = ?, duplicates = ?, rejected = ?, bytes = ?,
                        failure = ?, finished_at = ?, suppressed = ?
                    WHERE id = ?
                    """,
                arguments: [
                    BatchStateName(outcome.state).rawValue,
                    Int64(counts.records), Int64(counts.accepted), Int64(counts.duplicates), Int64(counts.rejected),
                    Int64(counts.bytes), outcome.failure, now, Int64(counts.suppressed), batchID,
                ]
            )
            let insertError = try db.cachedStatement(
                sql: """
                    INSERT INTO batch_errors (batch_id, ordinal, line, record_number, field, reason)
                    VALUES (?, ?, ?, ?, ?, ?)
                    """
            )
            for (ordinal, error) in outcome.errors.prefix(maxStoredErrors).enumerated() {
                try insertError.execute(arguments: [
                    batchID, ordinal, Int64(error.line), Int64(error.recordNumber), error.field, error.reason,
                ])
            }
            guard let batch = try Self.batch(id: batchID, in: db, withErrors: true) else {
                throw StoreError("batch \(batchID) does not exist")
            }
            return batch
        }
    }

    public func batch(id: String) async throws -> Cdp_Ingestion_V1_Batch? {
        try await writer.read { db in try Self.batch(id: id, in: db, withErrors: true) }
    }

    public func listBatches(
        pageSize: Int,
        pageToken: String
    ) async throws
        -> (batches: [Cdp_Ingestion_V1_Batch], nextPageToken: String)
    {
        let before = Int64(pageToken) ?? Int64.max
        return try await writer.read { db in
            let rows = try Row.fetchAll(
                db,
                sql: "SELECT rowid AS position, * FROM batches WHERE rowid < ? ORDER BY rowid DESC LIMIT ?",
                arguments: [before, pageSize + 1]
            )
            let page = rows.prefix(pageSize)
            let next = rows.count > pageSize ? String(page.last.map { $0["position"] as Int64 } ?? 0) : ""
            return (page.map(Self.batch(from:)), next)
        }
    }

    private static func batch(id: String, in db: Database, withErrors: Bool) throws -> Cdp_Ingestion_V1_Batch? {
        guard let row = try Row.fetchOne(db, sql: "SELECT * FROM batches WHERE id = ?", arguments: [id]) else {
            return nil
        }
        var batch = batch(from: row)
        if withErrors {
            batch.errors = try Row.fetchAll(
                db,
                sql: "SELECT * FROM batch_errors WHERE batch_id = ? ORDER BY ordinal",
                arguments: [id]
            ).map { row in
                var error = Cdp_Ingestion_V1_RecordError()
                error.line = UInt64(row["line"] as Int64)
                error.recordNumber = UInt64(row["record_number"] as Int64)
                error.field = row["field"]
                error.reason = row["reason"]
                return error
            }
        }
        return batch
    }

    private static func batch(from row: Row) -> Cdp_Ingestion_V1_Batch {
        var batch = Cdp_Ingestion_V1_Batch()
        batch.batchID = row["id"]
        batch.source.type = row["source_type"]
        batch.source.instance = row["source_instance"]
        batch.entity = row["entity"]
        batch.format = Cdp_Ingestion_V1_Format(rawValue: row["format"]) ?? .unspecified
        batch.idempotencyKey = row["idempotency_key"] ?? ""
        batch.fileName = row["file_name"]
        batch.state = BatchStateName(rawValue: row["state"])?.protoState ?? .unspecified
        batch.counts.records = UInt64(row["records"] as Int64)
        batch.counts.accepted = UInt64(row["accepted"] as Int64)
        batch.counts.duplicates = UInt64(row["duplicates"] as Int64)
        batch.counts.rejected = UInt64(row["rejected"] as Int64)
        batch.counts.suppressed = UInt64(row["suppressed"] as Int64)
        batch.counts.bytes = UInt64(row["bytes"] as Int64)
        batch.failure = row["failure"]
        batch.errorThreshold = row["error_threshold"]
        batch.createdAt = timestamp(row["created_at"])
        if let finished: Int64 = row["finished_at"] { batch.finishedAt = timestamp(finished) }
        return batch
    }

    private static func interruptReceivingBatches(_ db: Database) throws {
        let receiving = try String.fetchAll(db, sql: "SELECT id FROM batches WHERE state = 'receiving'")
        // All of them first, so that none inherits another's records through a claim.
        try db.execute(
            sql: """
                UPDATE batches SET state = 'interrupted', finished_at = ?,
                    failure = 'the service stopped while receiving this batch; nothing of it was kept: send it again'
                WHERE state = 'receiving'
                """,
            arguments: [now()]
        )
        for id in receiving {
            try releaseRecords(ofBatch: id, in: db)
            try db.execute(sql: "DELETE FROM batch_chunks WHERE batch_id = ?", arguments: [id])
        }
    }

    /// Deletes a failed or interrupted batch's records, except those another batch or stream claimed as
    /// duplicates: each of those passes to its first live claimer (queued for forwarding at once if the
    /// claimer is finished or a stream, or added to the claimer's chunks if it is still receiving).
    private static func releaseRecords(ofBatch batchID: String, in db: Database) throws {
        // Each chunk's range holds only this batch's records (one transaction each).
        let claims = try Row.fetchAll(
            db,
            sql: """
                SELECT claims.seq, claims.claimer, batches.state FROM batch_chunks
                JOIN claims ON claims.seq BETWEEN batch_chunks.first_seq AND batch_chunks.last_seq
                LEFT JOIN batches ON batches.id = claims.claimer
                WHERE batch_chunks.batch_id = ? AND claims.claimer != ?
                ORDER BY claims.seq
                """,
            arguments: [batchID, batchID]
        )
        var transferred = Set<Int64>()
        let now = now()
        for claim in claims {
            let seq: Int64 = claim["seq"]
            let claimer: String = claim["claimer"]
            let state: String? = claim["state"]
            guard !transferred.contains(seq), state != "failed", state != "interrupted" else { continue }
            try db.execute(sql: "UPDATE records SET batch_id = ? WHERE seq = ?", arguments: [claimer, seq])
            if state == "receiving" {
                try db.execute(
                    sql: "INSERT INTO batch_chunks (batch_id, first_seq, last_seq, count) VALUES (?, ?, ?, 1)",
                    arguments: [claimer, seq, seq]
                )
            } else {
                // A completed batch, or a stream (streams have no batch row): forward it now. The record
                // is safe for good, so the other claims on it are moot.
                try db.execute(
                    sql:
                        "INSERT INTO outbox (first_seq, last_seq, next_seq, remaining, created_at) VALUES (?, ?, ?, 1, ?)",
                    arguments: [seq, seq, seq, now]
                )
                try db.execute(sql: "DELETE FROM claims WHERE seq = ?", arguments: [seq])
            }
            transferred.insert(seq)
        }
        try db.execute(
            sql: """
                DELETE FROM records WHERE seq IN (
                    SELECT records.seq FROM batch_chunks JOIN records
                        ON records.seq BETWEEN batch_chunks.first_seq AND batch_chunks.last_seq
                    WHERE batch_chunks.batch_id = ? AND records.batch_id = ?)
                """,
            arguments: [batchID, batchID]
        )
        try db.execute(sql: "DELETE FROM claims WHERE claimer = ?", arguments: [batchID])
    }

    // MARK: - Streams

    public func appendStreamRecords(_ records: [PreparedRecord], streamID: String) async throws -> AppendResult {
        try await writer.write { db in
            let (result, range) = try Self.append(records, batchID: streamID, in: db)
            if let range {
                try db.execute(
                    sql:
                        "INSERT INTO outbox (first_seq, last_seq, next_seq, remaining, created_at) VALUES (?, ?, ?, ?, ?)",
                    arguments: [range.lowerBound, range.upperBound, range.lowerBound, result.accepted, Self.now()]
                )
            }
            return result
        }
    }

    /// Inserts records, skipping each one equal to the current (latest stored) version of its key and
    /// entity; returns the counts and the seq range used.
    ///
    /// The hot path of ingestion: the statement is bound and stepped through SQLite's C API directly,
    /// since GRDB's `StatementArguments` box every value (measured: a few µs per record).
    private static func append(
        _ records: [PreparedRecord],
        batchID: String,
        in db: Database
    ) throws
        -> (AppendResult, ClosedRange<Int64>?)
    {
        // The current version is looked up apart from the insert: an `INSERT … SELECT` that reads the
        // table it writes fills a temporary table first, which cost a third of each insert (perf).
        let currentVersion = try RawStatement(
            db,
            "SELECT version FROM records WHERE key = ?1 AND entity = ?2 ORDER BY seq DESC LIMIT 1"
        )
        defer { currentVersion.finalize() }
        let insert = try RawStatement(
            db,
            "INSERT INTO records (key, version, batch_id, entity, ingested_at, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
        )
        defer { insert.finalize() }
        try insert.bind(3, batchID)
        try insert.bind(5, now())
        var result = AppendResult(accepted: 0, duplicates: 0)
        var holderStates: [String: Bool] = [:]
        // Claims matter only while another batch is receiving; without one, a duplicate needs no lookup
        // (re-sent exports are mostly duplicates).
        let othersReceiving =
            try Int.fetchOne(
                db,
                sql: "SELECT COUNT(*) FROM batches WHERE state = 'receiving' AND id != ?",
                arguments: [batchID]
            ) ?? 0 > 0
        var first: Int64?
        var last: Int64 = 0
        for record in records {
            let version = Int64(bitPattern: record.version)
            let entity = Int64(record.entity.rawValue)
            try currentVersion.bind(1, record.key)
            try currentVersion.bind(2, entity)
            if try currentVersion.integer() != version {
                try insert.bind(1, record.key)
                try insert.bind(2, version)
                try insert.bind(4, entity)
                try insert.bind(6, record.payload)
                try insert.run()
                result.accepted += 1
                last = insert.lastInsertedRowID
                if first == nil { first = last }
            } else {
                result.duplicates += 1
                if othersReceiving {
                    try claimIfHeldByReceivingBatch(record, claimer: batchID, states: &holderStates, in: db)
                }
            }
        }
        return (result, first.map { $0...last })
    }

    /// Records a claim on the stored copy of a duplicate (its key's current version) when a batch that
    /// is still receiving holds it (see the `claims` table).
    private static func claimIfHeldByReceivingBatch(
        _ record: PreparedRecord,
        claimer: String,
        states: inout [String: Bool],
        in db: Database
    ) throws {
        guard
            let holder = try Row.fetchOne(
                db,
                sql: "SELECT seq, batch_id FROM records WHERE key = ? AND entity = ? ORDER BY seq DESC LIMIT 1",
                arguments: [record.key, Int64(record.entity.rawValue)]
            )
        else { return }
        let holderID: String = holder["batch_id"]
        guard holderID != claimer else { return }
        let receiving: Bool
        if let known = states[holderID] {
            receiving = known
        } else {
            receiving =
                try String.fetchOne(db, sql: "SELECT state FROM batches WHERE id = ?", arguments: [holderID])
                == "receiving"
            states[holderID] = receiving
        }
        guard receiving else { return }
        try db.execute(
            sql: "INSERT INTO claims (seq, claimer) VALUES (?, ?) ON CONFLICT DO NOTHING",
            arguments: [holder["seq"] as Int64, claimer]
        )
    }

    // MARK: - Outbox

    public func nextOutboxChunk(limit: Int, maxBytes: Int) async throws -> OutboxChunk? {
        try await writer.read { db in
            // Invariant: records an outbox entry covers are never deleted (only receiving, failed and
            // interrupted batches lose records, and none of them has outbox entries).
            // Entries are taken oldest first until the chunk is full: a stream commits one entry per
            // request, and one record per round trip to identity would cap streaming at the round trip.
            let entries = try Row.fetchAll(
                try db.cachedStatement(sql: "SELECT id, next_seq, last_seq FROM outbox ORDER BY id LIMIT ?"),
                arguments: [limit]
            )
            var parts: [OutboxChunk.Part] = []
            var records: [Cdp_Identity_V1_StoredRecordBytes] = []
            var bytes = 0
            entries: for entry in entries {
                let wanted = limit - records.count
                // Read from a cursor by column index: copying every row into a `Row` and finding its
                // columns by name was a tenth of ingestion's CPU (perf, ingestion-benchmark).
                let rows = try Row.fetchCursor(
                    try db.cachedStatement(
                        sql: """
                            SELECT seq, version, batch_id, ingested_at, payload FROM records
                            WHERE seq BETWEEN ? AND ? ORDER BY seq LIMIT ?
                            """
                    ),
                    arguments: [entry[1] as Int64, entry[2] as Int64, wanted]
                )
                var part = OutboxChunk.Part(entryID: entry[0], lastSequence: entry[2], count: 0)
                var taken = 0
                var full = false
                while let row = try rows.next() {
                    taken += 1
                    let payload: Data = row[4]
                    // At least one record, however large (records are at most 100 KB), then up to maxBytes.
                    if !records.isEmpty, bytes + payload.count > maxBytes {
                        full = true
                        break
                    }
                    bytes += payload.count
                    let sequence: Int64 = row[0]
                    var stored = Cdp_Identity_V1_StoredRecordBytes()
                    stored.sequence = UInt64(sequence)
                    stored.batchID = row[2]
                    stored.version = UInt64(bitPattern: row[1] as Int64)
                    stored.ingestedAt = Self.timestamp(row[3])
                    stored.record = payload
                    records.append(stored)
                    part.lastSequence = sequence
                    part.count += 1
                }
                if taken >= wanted { full = true }
                // An entry without records (none should exist) goes too, so that its acknowledgement deletes it.
                if part.count > 0 || taken == 0 { parts.append(part) }
                if full { break entries }
            }
            return parts.isEmpty ? nil : OutboxChunk(parts: parts, records: records)
        }
    }

    public func acknowledge(_ chunk: OutboxChunk) async throws {
        try await writer.write { db in
            for part in chunk.parts {
                guard
                    let lastSeq = try Int64.fetchOne(
                        try db.cachedStatement(sql: "SELECT last_seq FROM outbox WHERE id = ?"),
                        arguments: [part.entryID]
                    )
                else { continue }
                if part.lastSequence >= lastSeq {
                    try db.cachedStatement(sql: "DELETE FROM outbox WHERE id = ?").execute(arguments: [part.entryID])
                } else {
                    try db.cachedStatement(
                        sql: "UPDATE outbox SET next_seq = ?, remaining = max(remaining - ?, 0) WHERE id = ?"
                    ).execute(arguments: [part.lastSequence + 1, part.count, part.entryID])
                }
            }
            try db.execute(
                sql: "UPDATE counters SET value = value + ? WHERE name = 'forwarded'",
                arguments: [chunk.records.count]
            )
        }
    }

    public func outboxStatus() async throws -> (pending: UInt64, oldestPending: Date?, forwarded: UInt64) {
        try await writer.read { db in
            let row = try Row.fetchOne(
                db,
                sql: "SELECT COALESCE(SUM(remaining), 0) AS pending, MIN(created_at) AS oldest FROM outbox"
            )
            let forwarded = try Int64.fetchOne(db, sql: "SELECT value FROM counters WHERE name = 'forwarded'") ?? 0
            let oldest: Int64? = row?["oldest"]
            return (
                UInt64(row?["pending"] as Int64? ?? 0),
                oldest.map { Date(timeIntervalSince1970: Double($0) / 1000) },
                UInt64(forwarded)
            )
        }
    }

    // MARK: - Privacy

    public func suppressions() async throws -> [Data: String] {
        try await writer.read { db in
            var found: [Data: String] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT hash, request FROM suppressions") {
                found[row[0]] = row[1]
            }
            return found
        }
    }

    public func erase(
        request: String,
        hashes: [Data],
        keys: [String],
        refuses: @Sendable (Data) -> Bool
    ) async throws -> (suppressed: Int, records: Int) {
        try await writer.write { db in
            var suppressed = 0
            for hash in hashes {
                try db.execute(
                    sql: "INSERT INTO suppressions (hash, request, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    arguments: [hash, request, Self.now()]
                )
                suppressed += db.changesCount
            }
            var doomed: [Int64] = []
            let byKey = try db.cachedStatement(sql: "SELECT seq FROM records WHERE key = ?")
            for key in Set(keys) { doomed += try Int64.fetchAll(byKey, arguments: [key]) }
            // Records not forwarded yet (pending in the outbox or in a batch still being received) may
            // name the person without being among the keys profile knows: they are looked at one by one.
            let pendingFrom = try Int64.fetchOne(
                db,
                sql: """
                    SELECT min(seq) FROM (
                        SELECT min(next_seq) AS seq FROM outbox
                        UNION ALL SELECT min(c.first_seq) FROM batch_chunks c
                            JOIN batches b ON b.id = c.batch_id WHERE b.state = 'receiving')
                    """
            )
            if let pendingFrom {
                for row in try Row.fetchAll(
                    db,
                    sql: "SELECT seq, payload FROM records WHERE seq >= ?",
                    arguments: [pendingFrom]
                ) where refuses(row[1]) {
                    doomed.append(row[0])
                }
            }
            var records = 0
            for seq in Set(doomed) {
                try db.execute(sql: "DELETE FROM records WHERE seq = ?", arguments: [seq])
                records += db.changesCount
                try db.execute(sql: "DELETE FROM claims WHERE seq = ?", arguments: [seq])
            }
            return (suppressed, records)
        }
    }

    public func allow(hashes: [Data]) async throws -> [String] {
        try await writer.write { db in
            var requests = Set<String>()
            for hash in hashes {
                requests.formUnion(
                    try String.fetchAll(db, sql: "SELECT request FROM suppressions WHERE hash = ?", arguments: [hash])
                )
            }
            for request in requests {
                try db.execute(sql: "DELETE FROM suppressions WHERE request = ?", arguments: [request])
            }
            return requests.sorted()
        }
    }

    public func clearLog() async -> Bool { ServiceDatabase.clearLog(writer) }

    // MARK: - Helpers

    private static func now() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    private static func timestamp(_ milliseconds: Int64) -> Google_Protobuf_Timestamp {
        Google_Protobuf_Timestamp(seconds: milliseconds / 1000, nanos: Int32(milliseconds % 1000) * 1_000_000)
    }

    private static func newBatchID() -> String {
        let random = UInt64.random(in: 0...UInt64.max)
        let hex = String(random, radix: 16)
        return "b-" + String(repeating: "0", count: 16 - hex.count) + hex
    }
}

/// Batch states as stored.
private enum BatchStateName: String {
    case receiving, completed, failed, interrupted

    /// The stored name of a batch's final state (completed, failed or interrupted).
    init(_ state: Cdp_Ingestion_V1_BatchState) {
        switch state {
        case .completed: self = .completed
        case .interrupted: self = .interrupted
        default: self = .failed
        }
    }

    var protoState: Cdp_Ingestion_V1_BatchState {
        switch self {
        case .receiving: return .receiving
        case .completed: return .completed
        case .failed: return .failed
        case .interrupted: return .interrupted
        }
    }
}

/// A store invariant that did not hold.
public struct StoreError: Error, CustomStringConvertible {
    /// What failed, for logs (never shown to callers: the service reports store failures generically).
    public var description: String
    init(_ description: String) { self.description = description }
}

import CDPProto
import Foundation
import GRDB
import SQLiteSupport
import SwiftProtobuf

/// Segmentation's store in SQLite: segment definitions, the state segments are evaluated on (the log
/// of profile's changes as they were applied), the record last evaluated of each entity, memberships,
/// scheduled time re-checks, batch jobs, and the outbox of membership changes.
///
/// Every call is one transaction: the state changes an AcceptStateChanges call applies (whose
/// versions make re-delivery harmless), the memberships they change and the outbox rows that
/// announce them commit together.
public final class SQLiteSegmentationStore: Sendable {
    private let writer: any DatabaseWriter
    /// How many superseded rows the state log gathers at least before it is compacted.
    private let minimumCompaction: Int64

    /// Opens (creating if needed) the database at `path` and migrates it. The state log is compacted
    /// once its superseded rows outnumber the live ones and are at least `minimumCompaction`.
    public init(path: String, minimumCompaction: Int64 = 100_000) throws {
        writer = try ServiceDatabase.open(path: path, migrator: Self.migrator, pragmas: ["cache_size = -65536"])
        self.minimumCompaction = minimumCompaction
    }

    /// Opens a segmentation database to read it only (its saved state, for `segmentation-benchmark
    /// load`): nothing is created, migrated or written, so that a wrong path cannot make or change a
    /// file. Writing through it fails.
    ///
    /// - Throws: ``SavedStateError`` if there is no file at `path` or it is not a segmentation
    ///   database; SQLite's error if it is not a database.
    public init(readingSavedStateAt path: String) throws {
        guard FileManager.default.fileExists(atPath: path) else {
            throw SavedStateError(description: "\(path): no such file")
        }
        var configuration = Configuration()
        configuration.readonly = true
        let queue = try DatabaseQueue(path: path, configuration: configuration)
        guard try queue.read({ try $0.tableExists("state_log") }) else {
            throw SavedStateError(
                description: "\(path) is not a segmentation database (it has no state_log table): give the "
                    + "segmentation.sqlite of a segmentation service's data directory"
            )
        }
        writer = queue
        minimumCompaction = .max
    }

    /// A store in memory, for tests and benchmarks: the same schema through the same migrator.
    public init(minimumCompaction: Int64 = 100_000) throws {
        writer = try ServiceDatabase.inMemory(migrator: Self.migrator)
        self.minimumCompaction = minimumCompaction
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1: segments, entities, memberships, rechecks, jobs, outbox") { db in
            try db.execute(
                sql: """
                    CREATE TABLE segments (
                        id TEXT PRIMARY KEY,
                        number INTEGER NOT NULL,
                        name TEXT NOT NULL,
                        pql TEXT NOT NULL,
                        entity INTEGER NOT NULL,
                        mode INTEGER NOT NULL,
                        created REAL NOT NULL,
                        updated REAL NOT NULL,
                        depends_on TEXT NOT NULL,
                        depends_on_time INTEGER NOT NULL
                    );
                    -- Per entity evaluated: the version it was last evaluated at (historic: 0 before
                    -- the first streaming view) and its unified record as last seen (kept after a removal,
                    -- so an exit can still say whom it is about).
                    CREATE TABLE entities (
                        entity INTEGER NOT NULL,
                        cluster INTEGER NOT NULL,
                        version INTEGER NOT NULL,
                        record BLOB NOT NULL,
                        PRIMARY KEY (entity, cluster)
                    ) WITHOUT ROWID;
                    -- One row per segment and entity that was ever realized; version counts status changes.
                    CREATE TABLE memberships (
                        segment TEXT NOT NULL,
                        entity INTEGER NOT NULL,
                        cluster INTEGER NOT NULL,
                        realized INTEGER NOT NULL,
                        since REAL NOT NULL,
                        version INTEGER NOT NULL,
                        PRIMARY KEY (segment, entity, cluster)
                    ) WITHOUT ROWID;
                    CREATE INDEX memberships_by_entity ON memberships (entity, cluster);
                    -- Views whose memberships can change with time alone, re-evaluated when due.
                    CREATE TABLE rechecks (
                        entity INTEGER NOT NULL,
                        cluster INTEGER NOT NULL,
                        due REAL NOT NULL,
                        view BLOB NOT NULL,
                        PRIMARY KEY (entity, cluster)
                    ) WITHOUT ROWID;
                    CREATE INDEX rechecks_by_due ON rechecks (due);
                    CREATE TABLE jobs (
                        id TEXT PRIMARY KEY,
                        job BLOB NOT NULL
                    );
                    -- Membership changes for destination; AUTOINCREMENT never reuses a sequence.
                    CREATE TABLE outbox (
                        sequence INTEGER PRIMARY KEY AUTOINCREMENT,
                        created REAL NOT NULL,
                        change BLOB NOT NULL
                    );
                    CREATE TABLE counters (
                        name TEXT PRIMARY KEY,
                        value INTEGER NOT NULL
                    );
                    """
            )
        }
        migrator.registerMigration("v2: entities erased by privacy requests") { db in
            // Clusters a privacy request erased: their ids are never given to anyone else (identity
            // numbers clusters by identities it never reuses), so a view of one arriving late is dropped.
            try db.execute(
                sql: """
                    CREATE TABLE forgotten (
                        entity INTEGER NOT NULL,
                        cluster INTEGER NOT NULL,
                        PRIMARY KEY (entity, cluster)
                    ) WITHOUT ROWID;
                    """
            )
        }
        migrator.registerMigration("v3: when an entity's streaming view was taken") { db in
            // A batch job's scan may read a view older than a streaming view taken while the job runs;
            // the job's results for streaming segments then yield to the streaming ones.
            try db.execute(sql: "ALTER TABLE entities ADD COLUMN streamed REAL NOT NULL DEFAULT 0")
        }
        migrator.registerMigration("v4: the state segments are evaluated on") { db in
            // Every item of profile's change stream as last applied (kind 1: a unified record by entity
            // and cluster, 2: a link by fragment type and key, 3: an event by key), absent items too:
            // the version of each is what makes a re-sent or older change stale. Loaded into memory at
            // start. Re-checks no longer keep a view: the state builds it when due.
            try db.execute(
                sql: """
                    CREATE TABLE state (
                        kind INTEGER NOT NULL,
                        entity INTEGER NOT NULL,
                        cluster INTEGER NOT NULL,
                        key TEXT NOT NULL,
                        version INTEGER NOT NULL,
                        change BLOB NOT NULL,
                        PRIMARY KEY (kind, entity, cluster, key)
                    ) WITHOUT ROWID;
                    UPDATE rechecks SET view = x'';
                    """
            )
        }
        migrator.registerMigration("v5: the state as a log") { db in
            // The state's changes are appended in the order they were applied (a change of an item held
            // before supersedes the earlier row: the last row of an item is its state), instead of being
            // upserted by item key: keys are random, and at a million persons the upserts wrote a page of
            // a large B-tree per change. Superseded rows are dropped by compaction once they outnumber the
            // live ones (`state_log_garbage` counts them).
            try db.execute(
                sql: """
                    CREATE TABLE state_log (
                        position INTEGER PRIMARY KEY,
                        kind INTEGER NOT NULL,
                        entity INTEGER NOT NULL,
                        cluster INTEGER NOT NULL,
                        key TEXT NOT NULL,
                        change BLOB NOT NULL
                    );
                    INSERT INTO state_log (kind, entity, cluster, key, change)
                        SELECT kind, entity, cluster, key, change FROM state ORDER BY version;
                    DROP TABLE state;
                    INSERT OR REPLACE INTO counters (name, value)
                        SELECT 'state_log_rows', count(*) FROM state_log;
                    INSERT OR REPLACE INTO counters (name, value) VALUES ('state_log_garbage', 0);
                    """
            )
        }
        return migrator
    }

    // MARK: - Segments

    /// Saves a new segment under the next id (`s1`, `s2`, …; never reused).
    public func createSegment(
        name: String,
        pql: String,
        entityType: Cdp_Model_V1_EntityType,
        mode: Cdp_Segmentation_V1_EvaluationMode,
        dependsOn: [String],
        dependsOnTime: Bool,
        at now: Date
    ) throws -> SegmentRecord {
        try writer.write { db in
            let number = try Counters.value("segment_number", db) + 1
            try Counters.set("segment_number", number, db)
            let segment = SegmentRecord(
                id: "s\(number)",
                name: name,
                pql: pql,
                entityType: entityType,
                mode: mode,
                createdAt: now,
                updatedAt: now,
                dependsOn: dependsOn,
                dependsOnTime: dependsOnTime
            )
            try db.execute(
                sql: """
                    INSERT INTO segments (id, number, name, pql, entity, mode, created, updated, depends_on,
                        depends_on_time)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    segment.id, number, name, pql, entityType.rawValue, mode.rawValue, now.timeIntervalSince1970,
                    now.timeIntervalSince1970, dependsOn.joined(separator: ","), dependsOnTime,
                ]
            )
            return segment
        }
    }

    /// Replaces a segment's name, definition and mode.
    public func updateSegment(_ segment: SegmentRecord) throws {
        try writer.write { db in
            try db.execute(
                sql: """
                    UPDATE segments SET name = ?, pql = ?, mode = ?, updated = ?, depends_on = ?, depends_on_time = ?
                    WHERE id = ?
                    """,
                arguments: [
                    segment.name, segment.pql, segment.mode.rawValue, segment.updatedAt.timeIntervalSince1970,
                    segment.dependsOn.joined(separator: ","), segment.dependsOnTime, segment.id,
                ]
            )
        }
    }

    /// Every segment, oldest first.
    public func segments() throws -> [SegmentRecord] {
        try writer.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT id, name, pql, entity, mode, created, updated, depends_on, depends_on_time
                    FROM segments ORDER BY number
                    """
            ).map { row in
                let dependsOn: String = row[7]
                return SegmentRecord(
                    id: row[0],
                    name: row[1],
                    pql: row[2],
                    entityType: Cdp_Model_V1_EntityType(rawValue: row[3]) ?? .person,
                    mode: Cdp_Segmentation_V1_EvaluationMode(rawValue: row[4]) ?? .streaming,
                    createdAt: Date(timeIntervalSince1970: row[5]),
                    updatedAt: Date(timeIntervalSince1970: row[6]),
                    dependsOn: dependsOn.isEmpty ? [] : dependsOn.split(separator: ",").map(String.init),
                    dependsOnTime: row[8]
                )
            }
        }
    }

    /// Deletes a segment; its realized members exit (announced to destination). Returns how many.
    public func deleteSegment(_ id: String, at now: Date) throws -> Int {
        try writer.write { db in
            let realized = try Row.fetchAll(
                db,
                sql: """
                    SELECT m.entity, m.cluster, m.version, e.record FROM memberships m
                    JOIN entities e ON e.entity = m.entity AND e.cluster = m.cluster
                    WHERE m.segment = ? AND m.realized = 1
                    """,
                arguments: [id]
            )
            for row in realized {
                let change = Self.change(
                    id,
                    Cdp_Model_V1_EntityType(rawValue: row[0]) ?? .person,
                    UInt64(row[1] as Int64),
                    realized: false,
                    version: row[2] as Int64 + 1,
                    row[3] as Data
                )
                try Self.enqueue(change, at: now, db)
            }
            try db.execute(sql: "DELETE FROM memberships WHERE segment = ?", arguments: [id])
            try db.execute(sql: "DELETE FROM segments WHERE id = ?", arguments: [id])
            return realized.count
        }
    }

    /// How many members each segment has realized.
    public func realizedCounts() throws -> [String: UInt64] {
        try writer.read { db in
            var counts: [String: UInt64] = [:]
            for row in try Row.fetchAll(
                db,
                sql: "SELECT segment, COUNT(*) FROM memberships WHERE realized = 1 GROUP BY segment"
            ) {
                counts[row[0]] = UInt64(row[1] as Int64)
            }
            return counts
        }
    }

    /// How many members one segment has realized.
    public func realizedCount(of segment: String) throws -> UInt64 {
        try writer.read { db in
            UInt64(
                try Int64.fetchOne(
                    db,
                    sql: "SELECT COUNT(*) FROM memberships WHERE segment = ? AND realized = 1",
                    arguments: [segment]
                ) ?? 0
            )
        }
    }

    // MARK: - Memberships

    /// The segments an entity is realized in.
    public func realizedSegments(_ entityType: Cdp_Model_V1_EntityType, _ cluster: UInt64) throws -> Set<String> {
        try writer.read { db in
            Set(
                try String.fetchAll(
                    try db.cachedStatement(
                        sql: "SELECT segment FROM memberships WHERE entity = ? AND cluster = ? AND realized = 1"
                    ),
                    arguments: [entityType.rawValue, Int64(cluster)]
                )
            )
        }
    }

    /// Commits evaluations: memberships whose status changed get a new version and an outbox row;
    /// view versions and re-checks are updated. The state changes the evaluations were made on are
    /// appended to the state log with them (`superseded` of them replaced an item the state held
    /// before), and the state items of `forgetting` deleted. One transaction.
    public func commit(
        _ evaluations: [EntityEvaluation],
        state changes: [ReceivedStateChange] = [],
        superseding superseded: Int = 0,
        forgetting: StateItems = StateItems(),
        at now: Date
    ) throws -> Transitions {
        try writer.write { db in
            try append(changes, superseded: superseded, db)
            try Self.delete(forgetting, db)
            var transitions = Transitions()
            for evaluation in evaluations {
                try commit(evaluation, at: now, &transitions, db)
            }
            return transitions
        }
    }

    /// ``commit(_:state:superseding:forgetting:at:)`` with changes serialized here.
    public func commit(
        _ evaluations: [EntityEvaluation],
        state changes: [Cdp_Profile_V1_StateChange],
        superseding superseded: Int = 0,
        forgetting: StateItems = StateItems(),
        at now: Date
    ) throws -> Transitions {
        try commit(
            evaluations,
            state: try changes.map(ReceivedStateChange.init),
            superseding: superseded,
            forgetting: forgetting,
            at: now
        )
    }

    /// Saves the entity's record as last evaluated (or, for a removal, its version, keeping the record
    /// last seen), unless it is `unchanged` (the caller knows it is the one saved) or the same bytes.
    /// Returns the record it replaced when it changed.
    private func keepRecord(
        of evaluation: EntityEvaluation,
        bytes recordBytes: () throws -> Data,
        unchanged: Bool,
        at now: Date,
        _ db: Database
    ) throws -> Cdp_Profile_V1_UnifiedRecord? {
        let entity = evaluation.entityType.rawValue
        let cluster = Int64(evaluation.cluster)
        // When this entity was last evaluated on a streaming change (batch runs and re-checks leave it).
        let streamed = evaluation.version == nil ? 0 : now.timeIntervalSince1970
        guard evaluation.record != nil else {
            guard let version = evaluation.version else { return nil }
            // A removal: keep the record last seen, remember the version (an empty record if none was seen).
            try db.cachedStatement(
                sql: """
                    INSERT INTO entities (entity, cluster, version, record, streamed) VALUES (?, ?, ?, x'', ?)
                    ON CONFLICT (entity, cluster) DO UPDATE SET version = max(version, excluded.version),
                        streamed = max(streamed, excluded.streamed)
                    """
            ).execute(arguments: [entity, cluster, Int64(version), streamed])
            return nil
        }
        if unchanged { return nil }
        let held = try Data.fetchOne(
            try db.cachedStatement(sql: "SELECT record FROM entities WHERE entity = ? AND cluster = ?"),
            arguments: [entity, cluster]
        )
        let recordBytes = try recordBytes()
        // Unchanged (another part of the entity's view changed, or a batch run over a quiet entity): no
        // write.
        if held == recordBytes { return nil }
        // The version moves only with streaming views; batch runs and re-checks keep it.
        try db.cachedStatement(
            sql: """
                INSERT INTO entities (entity, cluster, version, record, streamed) VALUES (?, ?, ?, ?, ?)
                ON CONFLICT (entity, cluster) DO UPDATE SET record = excluded.record,
                    version = max(version, excluded.version), streamed = max(streamed, excluded.streamed)
                """
        ).execute(arguments: [entity, cluster, Int64(evaluation.version ?? 0), recordBytes, streamed])
        guard let held, !held.isEmpty else { return nil }
        return try Cdp_Profile_V1_UnifiedRecord(serializedBytes: held)
    }

    private func commit(
        _ evaluation: EntityEvaluation,
        at now: Date,
        _ transitions: inout Transitions,
        _ db: Database
    ) throws {
        let entity = evaluation.entityType.rawValue
        let cluster = Int64(evaluation.cluster)
        let record = evaluation.record
        // The record encoded once, for the entity's row and every outbox row of this evaluation; for a
        // removal, the bytes of the one last seen, as saved.
        var encodedRecord: Data?
        func recordBytes() throws -> Data {
            if let encodedRecord { return encodedRecord }
            let bytes =
                try record.map { try $0.serializedBytes() as Data }
                ?? Data.fetchOne(
                    try db.cachedStatement(sql: "SELECT record FROM entities WHERE entity = ? AND cluster = ?"),
                    arguments: [entity, cluster]
                ) ?? Data()
            encodedRecord = bytes
            return bytes
        }
        var stored: [String: (realized: Bool, version: Int64)] = [:]
        for row in try Row.fetchAll(
            try db.cachedStatement(
                sql: "SELECT segment, realized, version FROM memberships WHERE entity = ? AND cluster = ?"
            ),
            arguments: [entity, cluster]
        ) {
            stored[row[0]] = (row[1], row[2])
        }
        // A removed entity exits everything it is realized in.
        let results =
            record == nil
            ? stored.filter { $0.value.realized }.mapValues { _ in false } : evaluation.results
        // The record is kept for entities with memberships only: members are listed and announced with
        // it, and exits carry the one last seen; an entity in no segment needs none (most of a first
        // job's entities: writing theirs was a kilobyte each).
        let previousRecord: Cdp_Profile_V1_UnifiedRecord? =
            stored.isEmpty && !results.values.contains(true)
            ? nil
            // The caller's word that the record is the one saved holds only where one was saved: an entity
            // with memberships had its record written by the commit that made the first of them.
            : try keepRecord(
                of: evaluation,
                bytes: recordBytes,
                unchanged: evaluation.recordSaved && !stored.isEmpty,
                at: now,
                db
            )
        // A member that stays realized while what destinations are told about it changed (an email, a
        // name, consent, a custom attribute; not merge bookkeeping such as keys and source times) is
        // announced again with its new record: destinations update or re-key it.
        let contentChanged = previousRecord.map { !Self.sameContent($0, record!) } ?? false
        for (segment, matched) in results.sorted(by: { $0.key < $1.key }) {
            let previous = stored[segment]
            if previous == nil && !matched { continue }
            if let previous, previous.realized == matched {
                guard matched, contentChanged else { continue }
                try db.cachedStatement(
                    sql: "UPDATE memberships SET version = ? WHERE segment = ? AND entity = ? AND cluster = ?"
                ).execute(arguments: [previous.version + 1, segment, entity, cluster])
                try Self.enqueue(
                    Self.change(
                        segment,
                        evaluation.entityType,
                        evaluation.cluster,
                        realized: true,
                        version: previous.version + 1,
                        try recordBytes()
                    ),
                    at: now,
                    db
                )
                transitions.updated += 1
                continue
            }
            let version = (previous?.version ?? 0) + 1
            try db.cachedStatement(
                sql: """
                    INSERT OR REPLACE INTO memberships (segment, entity, cluster, realized, since, version)
                    VALUES (?, ?, ?, ?, ?, ?)
                    """
            ).execute(arguments: [segment, entity, cluster, matched, now.timeIntervalSince1970, version])
            // For a removal, the record last seen.
            try Self.enqueue(
                Self.change(
                    segment,
                    evaluation.entityType,
                    evaluation.cluster,
                    realized: matched,
                    version: version,
                    try recordBytes()
                ),
                at: now,
                db
            )
            if matched { transitions.realized += 1 } else { transitions.exited += 1 }
        }
        switch evaluation.recheck {
        case .keep: break
        case .clear:
            try db.cachedStatement(sql: "DELETE FROM rechecks WHERE entity = ? AND cluster = ?")
                .execute(arguments: [entity, cluster])
        case .schedule(let due):
            try db.cachedStatement(
                sql: "INSERT OR REPLACE INTO rechecks (entity, cluster, due, view) VALUES (?, ?, ?, x'')"
            ).execute(arguments: [entity, cluster, due.timeIntervalSince1970])
        case .scheduleUnlessEarlier(let due):
            let scheduled = try Double.fetchOne(
                try db.cachedStatement(sql: "SELECT due FROM rechecks WHERE entity = ? AND cluster = ?"),
                arguments: [entity, cluster]
            )
            if let scheduled, scheduled <= due.timeIntervalSince1970 { break }
            try db.cachedStatement(
                sql: """
                    INSERT INTO rechecks (entity, cluster, due, view) VALUES (?, ?, ?, x'')
                    ON CONFLICT (entity, cluster) DO UPDATE SET due = min(due, excluded.due)
                    """
            ).execute(arguments: [entity, cluster, due.timeIntervalSince1970])
        }
    }

    /// Entities realized in `segments` whose cluster falls in the partition: after a batch job, those
    /// it did not see are those the state no longer has.
    public func realizedClusters(
        in segments: [String],
        partition: Int,
        partitions: Int
    ) throws -> [(entityType: Cdp_Model_V1_EntityType, cluster: UInt64)] {
        try writer.read { db in
            var found: [(Cdp_Model_V1_EntityType, UInt64)] = []
            for segment in segments {
                for row in try Row.fetchAll(
                    db,
                    sql: """
                        SELECT DISTINCT entity, cluster FROM memberships
                        WHERE segment = ? AND realized = 1 AND cluster % ? = ?
                        """,
                    arguments: [segment, max(partitions, 1), partitions > 1 ? partition : 0]
                ) {
                    found.append((Cdp_Model_V1_EntityType(rawValue: row[0]) ?? .person, UInt64(row[1] as Int64)))
                }
            }
            return found
        }
    }

    /// One page of a segment's members in cluster order, after `after`.
    public func members(
        of segment: String,
        realized: Bool?,
        after: UInt64,
        limit: Int
    ) throws -> [MembershipRecord] {
        try writer.read { db in
            let filter = realized.map { " AND m.realized = \($0 ? 1 : 0)" } ?? ""
            return try Row.fetchAll(
                db,
                sql: """
                    SELECT m.entity, m.cluster, m.realized, m.since, m.version, e.record FROM memberships m
                    JOIN entities e ON e.entity = m.entity AND e.cluster = m.cluster
                    WHERE m.segment = ? AND m.cluster > ?\(filter) ORDER BY m.entity, m.cluster LIMIT ?
                    """,
                arguments: [segment, Int64(after), limit]
            ).map { row in
                MembershipRecord(
                    segmentID: segment,
                    entityType: Cdp_Model_V1_EntityType(rawValue: row[0]) ?? .person,
                    cluster: UInt64(row[1] as Int64),
                    realized: row[2],
                    since: Date(timeIntervalSince1970: row[3]),
                    version: UInt64(row[4] as Int64),
                    record: try Cdp_Profile_V1_UnifiedRecord(serializedBytes: row[5] as Data)
                )
            }
        }
    }

    // MARK: - Privacy

    /// The clusters privacy requests erased.
    public func forgotten() throws -> Set<UInt64> {
        try writer.read { db in
            Set(
                try Int64.fetchAll(
                    db,
                    sql: "SELECT cluster FROM forgotten WHERE entity = ?",
                    arguments: [Cdp_Model_V1_EntityType.person.rawValue]
                ).map { UInt64($0) }
            )
        }
    }

    /// Erases persons (a privacy request): each realized membership exits (an exit change naming only
    /// the cluster: destinations remove members by the identity they sent), and the entity's record,
    /// memberships and re-check are deleted. The clusters are remembered as forgotten. One
    /// transaction. Changes already in the outbox keep their record (a change is re-sent exactly as
    /// first sent); they leave once destination took them (``unsentChanges(of:)`` counts them).
    public func erase(clusters: [UInt64], at now: Date) throws -> (exited: Int, records: Int) {
        try writer.write { db in
            let person = Cdp_Model_V1_EntityType.person.rawValue
            let wanted = Set(clusters)
            var exited = 0
            var records = 0
            for cluster in wanted {
                let id = Int64(clamping: cluster)
                for row in try Row.fetchAll(
                    db,
                    sql: "SELECT segment, version FROM memberships WHERE entity = ? AND cluster = ? AND realized = 1",
                    arguments: [person, id]
                ) {
                    try Self.enqueue(
                        Self.change(
                            row[0],
                            .person,
                            cluster,
                            realized: false,
                            version: row[1] as Int64 + 1,
                            try Self.redacted(cluster).serializedBytes()
                        ),
                        at: now,
                        db
                    )
                    exited += 1
                }
                try db.execute(
                    sql: "DELETE FROM memberships WHERE entity = ? AND cluster = ?",
                    arguments: [person, id]
                )
                try db.execute(sql: "DELETE FROM entities WHERE entity = ? AND cluster = ?", arguments: [person, id])
                records += db.changesCount
                try db.execute(sql: "DELETE FROM rechecks WHERE entity = ? AND cluster = ?", arguments: [person, id])
                try db.execute(
                    sql: "INSERT OR IGNORE INTO forgotten (entity, cluster) VALUES (?, ?)",
                    arguments: [person, id]
                )
            }
            return (exited, records)
        }
    }

    /// How many changes about `clusters` with a record (made before they were erased) wait in the outbox.
    public func unsentChanges(of clusters: [UInt64]) throws -> Int {
        try writer.read { db in
            let wanted = Set(clusters)
            var count = 0
            for data in try Data.fetchAll(db, sql: "SELECT change FROM outbox") {
                let change = try Cdp_Destination_V1_MembershipChange(serializedBytes: data)
                if change.entityType == .person, wanted.contains(change.clusterID),
                    change.record != Self.redacted(change.clusterID)
                {
                    count += 1
                }
            }
            return count
        }
    }

    /// A record that names only its cluster.
    static func redacted(_ cluster: UInt64) -> Cdp_Profile_V1_UnifiedRecord {
        var record = Cdp_Profile_V1_UnifiedRecord()
        record.clusterID = cluster
        return record
    }

    /// Clears the write-ahead log of deleted data; false if it could not yet.
    public func clearLog() -> Bool { ServiceDatabase.clearLog(writer) }

    // MARK: - State

    /// Hands the saved state changes to `body` in the order they were applied, decoding one at a time:
    /// applying them in this order, each over the ones before, gives the state as last committed (a
    /// superseded change not yet compacted away is followed by the one that superseded it).
    public func forEachStateChange(_ body: (Cdp_Profile_V1_StateChange) throws -> Void) throws {
        try forEachLoggedChange { try body(try Cdp_Profile_V1_StateChange(serializedBytes: $0)) }
    }

    /// Hands the state log's changes to `body` as saved, in order.
    func forEachLoggedChange(_ body: (Data) throws -> Void) throws {
        try writer.read { db in
            let cursor = try Data.fetchCursor(db, sql: "SELECT change FROM state_log ORDER BY position")
            while let data = try cursor.next() { try body(data) }
        }
    }

    /// How many rows the state log has, and how many of them a later row superseded.
    public func stateLogCounts() throws -> (rows: Int64, superseded: Int64) {
        try writer.read { db in
            (try Counters.value("state_log_rows", db), try Counters.value("state_log_garbage", db))
        }
    }

    /// The row key of a state item.
    private static func item(
        _ change: Cdp_Profile_V1_StateChange
    ) -> (kind: Int, entity: Int, cluster: Int64, key: String)? {
        switch change.item {
        case .entity(let entity)?: (1, entity.entityType.rawValue, Int64(clamping: entity.clusterID), "")
        case .link(let link)?: (2, link.entityType.rawValue, 0, link.key)
        case .event(let event)?: (3, 0, 0, event.key)
        case nil: nil
        }
    }

    /// Appends applied changes to the state log; `superseded` of them replaced an item held before.
    /// Compacts the log when its superseded rows outnumber the live ones (and there are enough of them
    /// for the scan to be worth it), so that it stays within about twice the state's size.
    private func append(
        _ changes: [ReceivedStateChange],
        superseded: Int,
        _ db: Database
    ) throws {
        var appended: Int64 = 0
        for received in changes {
            guard let item = Self.item(received.message) else { continue }
            try db.cachedStatement(
                sql: "INSERT INTO state_log (kind, entity, cluster, key, change) VALUES (?, ?, ?, ?, ?)"
            ).execute(arguments: [item.kind, item.entity, item.cluster, item.key, received.bytes])
            appended += 1
        }
        guard appended > 0 else { return }
        let rows = try Counters.value("state_log_rows", db) + appended
        let garbage = try Counters.value("state_log_garbage", db) + Int64(superseded)
        try Counters.set("state_log_rows", rows, db)
        try Counters.set("state_log_garbage", garbage, db)
        if garbage >= minimumCompaction, garbage > rows - garbage { try Self.compactStateLog(db) }
    }

    /// Drops every row of the state log but the last of each item.
    static func compactStateLog(_ db: Database) throws {
        try db.execute(
            sql: """
                DELETE FROM state_log WHERE position NOT IN (
                    SELECT max(position) FROM state_log GROUP BY kind, entity, cluster, key
                )
                """
        )
        try Counters.set("state_log_rows", try Counters.value("state_log_rows", db) - Int64(db.changesCount), db)
        try Counters.set("state_log_garbage", 0, db)
    }

    /// Deletes every row of the given items (an erased person's): one scan of the log.
    private static func delete(_ items: StateItems, _ db: Database) throws {
        guard !items.persons.isEmpty || !items.links.isEmpty || !items.events.isEmpty else { return }
        try db.execute(
            sql: """
                CREATE TEMP TABLE IF NOT EXISTS forgotten_items (
                    kind INTEGER NOT NULL, entity INTEGER NOT NULL, cluster INTEGER NOT NULL, key TEXT NOT NULL
                );
                DELETE FROM forgotten_items;
                """
        )
        let insert = try db.cachedStatement(
            sql: "INSERT INTO forgotten_items (kind, entity, cluster, key) VALUES (?, ?, ?, ?)"
        )
        for cluster in items.persons {
            try insert.execute(arguments: [1, Cdp_Model_V1_EntityType.person.rawValue, Int64(clamping: cluster), ""])
        }
        for (entity, key) in items.links { try insert.execute(arguments: [2, entity.rawValue, 0, key]) }
        for key in items.events { try insert.execute(arguments: [3, 0, 0, key]) }
        // One scan finds the rows; each is then deleted by position.
        let rows = try Row.fetchAll(
            db,
            sql: """
                SELECT position, kind, entity, cluster, key FROM state_log WHERE (kind, entity, cluster, key) IN (
                    SELECT kind, entity, cluster, key FROM forgotten_items
                )
                """
        )
        var items: Set<String> = []
        for row in rows {
            try db.cachedStatement(sql: "DELETE FROM state_log WHERE position = ?").execute(arguments: [row[0]])
            items.insert("\(row[1] as Int64)/\(row[2] as Int64)/\(row[3] as Int64)/\(row[4] as String)")
        }
        // Each item's last row was live; the others were superseded.
        try Counters.set("state_log_rows", try Counters.value("state_log_rows", db) - Int64(rows.count), db)
        let superseded = Int64(rows.count - items.count)
        try Counters.set("state_log_garbage", max(0, try Counters.value("state_log_garbage", db) - superseded), db)
        try db.execute(sql: "DELETE FROM forgotten_items")
    }

    // MARK: - Re-checks

    /// Entities whose re-check is due at `now`, earliest first.
    public func dueRechecks(at now: Date, limit: Int) throws -> [DueRecheck] {
        try writer.read { db in
            try Row.fetchAll(
                try db.cachedStatement(
                    sql: "SELECT entity, cluster FROM rechecks WHERE due <= ? ORDER BY due LIMIT ?"
                ),
                arguments: [now.timeIntervalSince1970, limit]
            ).map { row in
                DueRecheck(
                    entityType: Cdp_Model_V1_EntityType(rawValue: row[0]) ?? .person,
                    cluster: UInt64(row[1] as Int64)
                )
            }
        }
    }

    /// Drops re-checks without evaluating (of entities the state no longer holds).
    public func clearRechecks(_ rechecks: [DueRecheck]) throws {
        try writer.write { db in
            for recheck in rechecks {
                try db.cachedStatement(sql: "DELETE FROM rechecks WHERE entity = ? AND cluster = ?")
                    .execute(arguments: [recheck.entityType.rawValue, Int64(clamping: recheck.cluster)])
            }
        }
    }

    /// How many re-checks are scheduled, and the next one.
    public func rechecks() throws -> (count: Int, next: Date?) {
        try writer.read { db in
            let count = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM rechecks") ?? 0
            let next = try Double.fetchOne(db, sql: "SELECT MIN(due) FROM rechecks")
            return (count, next.map { Date(timeIntervalSince1970: $0) })
        }
    }

    // MARK: - Jobs

    /// Saves a batch job's state.
    public func save(_ job: Cdp_Segmentation_V1_EvaluationJob) throws {
        try writer.write { db in
            try db.execute(
                sql: "INSERT OR REPLACE INTO jobs (id, job) VALUES (?, ?)",
                arguments: [job.id, try job.serializedBytes() as Data]
            )
        }
    }

    /// A batch job by id.
    public func job(_ id: String) throws -> Cdp_Segmentation_V1_EvaluationJob? {
        try writer.read { db in
            try Data.fetchOne(db, sql: "SELECT job FROM jobs WHERE id = ?", arguments: [id]).map {
                try Cdp_Segmentation_V1_EvaluationJob(serializedBytes: $0)
            }
        }
    }

    /// The next job number.
    public func nextJobNumber() throws -> Int64 {
        try writer.write { db in
            let number = try Counters.value("job_number", db) + 1
            try Counters.set("job_number", number, db)
            return number
        }
    }

    /// The error of a job the service stopped before it finished.
    public static let interruptedJobError = "the service stopped before the job finished; run Evaluate again"

    /// Jobs left running by a process that stopped: they failed.
    public func failInterruptedJobs(at now: Date) throws {
        try writer.write { db in
            for data in try Data.fetchAll(db, sql: "SELECT job FROM jobs") {
                var job = try Cdp_Segmentation_V1_EvaluationJob(serializedBytes: data)
                guard job.state == .running else { continue }
                job.state = .failed
                job.error = Self.interruptedJobError
                job.finishedAt = Google_Protobuf_Timestamp(date: now)
                try db.execute(
                    sql: "UPDATE jobs SET job = ? WHERE id = ?",
                    arguments: [try job.serializedBytes() as Data, job.id]
                )
            }
        }
    }

    // MARK: - Outbox

    /// Whether two records of one entity tell destinations the same: the entity's fields and custom
    /// attributes (keys, sources and source times are merge bookkeeping).
    static func sameContent(_ one: Cdp_Profile_V1_UnifiedRecord, _ other: Cdp_Profile_V1_UnifiedRecord) -> Bool {
        one.record.entity == other.record.entity && one.record.customAttributes == other.record.customAttributes
            && one.record.isDeleted == other.record.isDeleted
    }

    private static func change(
        _ segment: String,
        _ entityType: Cdp_Model_V1_EntityType,
        _ cluster: UInt64,
        realized: Bool,
        version: Int64,
        _ record: Data
    ) -> Cdp_Destination_V1_MembershipChangeRecordBytes {
        var change = Cdp_Destination_V1_MembershipChangeRecordBytes()
        change.segmentID = segment
        change.entityType = entityType
        change.clusterID = cluster
        change.realized = realized
        change.version = UInt64(version)
        change.record = record
        return change
    }

    /// Appends a change to the outbox, its record as encoded by the caller (the bytes of a
    /// `MembershipChange`).
    private static func enqueue(
        _ change: Cdp_Destination_V1_MembershipChangeRecordBytes,
        at now: Date,
        _ db: Database
    ) throws {
        var change = change
        change.at = Google_Protobuf_Timestamp(date: now)
        try db.cachedStatement(sql: "INSERT INTO outbox (created, change) VALUES (?, ?)")
            .execute(arguments: [now.timeIntervalSince1970, try change.serializedBytes() as Data])
    }

    /// The oldest changes not yet acknowledged, each with its sequence set.
    ///
    /// Each change goes out as the outbox stored it, with its sequence appended as a message of that
    /// field alone: bytes of a message followed by bytes of another decode as the two merged, so the
    /// change is not decoded and encoded again here (a job that realizes a million members sends a
    /// million records; doing so took most of this service's time after the job).
    public func nextChangeChunk(limit: Int, after: ChangeChunk? = nil) throws -> ChangeChunk? {
        try writer.read { db in
            let rows = try Row.fetchAll(
                try db.cachedStatement(
                    sql: "SELECT sequence, change FROM outbox WHERE sequence > ? ORDER BY sequence LIMIT ?"
                ),
                arguments: [after?.last ?? 0, limit]
            )
            guard let last = rows.last else { return nil }
            let serialized = try rows.map { row in
                var sequence = Cdp_Destination_V1_MembershipChange()
                sequence.sequence = UInt64(row[0] as Int64)
                var change = row[1] as Data
                change.append(try sequence.serializedBytes() as Data)
                return change
            }
            return ChangeChunk(serialized: serialized, last: last[0])
        }
    }

    /// Removes a delivered chunk.
    public func acknowledge(_ chunk: ChangeChunk) throws {
        try writer.write { db in
            try db.execute(sql: "DELETE FROM outbox WHERE sequence <= ?", arguments: [chunk.last])
            try Counters.set(
                "sent_changes",
                try Counters.value("sent_changes", db) + Int64(chunk.serialized.count),
                db
            )
        }
    }

    /// Pending changes, the oldest one's time, and how many were sent.
    public func outboxStatus() throws -> (pending: Int, oldest: Date?, sent: Int64) {
        try writer.read { db in
            // From the two ends of the outbox, not by counting it: a job that realizes a million members
            // leaves a million rows (each with its record) that count(*) would read page by page. The
            // sequences are contiguous: rows are only added at the end and deleted from the head.
            let head = try Row.fetchOne(
                try db.cachedStatement(sql: "SELECT sequence, created FROM outbox ORDER BY sequence LIMIT 1")
            )
            let last = try Int64.fetchOne(try db.cachedStatement(sql: "SELECT max(sequence) FROM outbox"))
            let pending = head.map { Int((last ?? 0) - ($0[0] as Int64) + 1) } ?? 0
            let oldest = head.map { Date(timeIntervalSince1970: $0[1] as Double) }
            return (pending, oldest, try Counters.value("sent_changes", db))
        }
    }
}

/// A saved state that cannot be read (``SQLiteSegmentationStore/init(readingSavedStateAt:)``).
public struct SavedStateError: Error, CustomStringConvertible, Sendable {
    public var description: String
}

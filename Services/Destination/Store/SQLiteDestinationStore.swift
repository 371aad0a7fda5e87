import CDPProto
import Foundation
import GRDB
import SQLiteSupport
import SwiftProtobuf

/// Destination's state in SQLite: destinations and their credentials, activations, the members of
/// every segment as segmentation reported them, the queue of members whose delivered state must
/// change (per activation), what each activation delivered, and the log of delivery runs.
///
/// Segmentation sends every membership change of every segment, so the members table is the full
/// picture and an activation's backfill is read from it in the same transaction that creates it.
public final class SQLiteDestinationStore: Sendable {
    private let writer: any DatabaseWriter

    /// Opens (creating if needed) the database at `path` and migrates it.
    public init(path: String) throws {
        writer = try ServiceDatabase.open(path: path, migrator: Self.migrator)
    }

    /// A store in memory, for tests.
    public init() throws {
        writer = try ServiceDatabase.inMemory(migrator: Self.migrator)
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1: destinations, activations, members, queue, delivered, runs") { db in
            try db.execute(
                sql: """
                    CREATE TABLE destinations (
                        id TEXT PRIMARY KEY,
                        number INTEGER NOT NULL,
                        type INTEGER NOT NULL,
                        name TEXT NOT NULL,
                        settings TEXT NOT NULL,
                        credentials TEXT NOT NULL,
                        created REAL NOT NULL
                    );
                    CREATE TABLE activations (
                        id TEXT PRIMARY KEY,
                        number INTEGER NOT NULL,
                        segment TEXT NOT NULL,
                        destination TEXT NOT NULL,
                        identity INTEGER NOT NULL,
                        attributes TEXT NOT NULL,
                        active INTEGER NOT NULL,
                        created REAL NOT NULL
                    );
                    -- The last sequence taken from each sender: anything at or below it is a re-delivery.
                    CREATE TABLE senders (
                        sender TEXT PRIMARY KEY,
                        last_sequence INTEGER NOT NULL
                    );
                    -- Every segment's members as segmentation last reported them.
                    CREATE TABLE members (
                        segment TEXT NOT NULL,
                        entity INTEGER NOT NULL,
                        cluster INTEGER NOT NULL,
                        realized INTEGER NOT NULL,
                        version INTEGER NOT NULL,
                        record BLOB NOT NULL,
                        PRIMARY KEY (segment, entity, cluster)
                    ) WITHOUT ROWID;
                    -- Members whose delivered state may have to change, per activation: the latest state.
                    CREATE TABLE queue (
                        activation TEXT NOT NULL,
                        segment TEXT NOT NULL,
                        entity INTEGER NOT NULL,
                        cluster INTEGER NOT NULL,
                        realized INTEGER NOT NULL,
                        version INTEGER NOT NULL,
                        since REAL NOT NULL,
                        PRIMARY KEY (activation, entity, cluster)
                    ) WITHOUT ROWID;
                    CREATE INDEX queue_by_age ON queue (activation, since);
                    -- What each activation last told its destination about each member.
                    CREATE TABLE delivered (
                        activation TEXT NOT NULL,
                        entity INTEGER NOT NULL,
                        cluster INTEGER NOT NULL,
                        realized INTEGER NOT NULL,
                        version INTEGER NOT NULL,
                        -- The identity the destination knows the member by: a removal uses it, even after
                        -- the person's email changed.
                        identity TEXT,
                        PRIMARY KEY (activation, entity, cluster)
                    ) WITHOUT ROWID;
                    CREATE TABLE runs (
                        number INTEGER PRIMARY KEY AUTOINCREMENT,
                        activation TEXT NOT NULL,
                        destination TEXT NOT NULL,
                        started REAL NOT NULL,
                        finished REAL NOT NULL,
                        added INTEGER NOT NULL,
                        removed INTEGER NOT NULL,
                        suppressed INTEGER NOT NULL,
                        failed INTEGER NOT NULL,
                        retries INTEGER NOT NULL,
                        errors BLOB NOT NULL
                    );
                    CREATE INDEX runs_by_destination ON runs (destination, number);
                    CREATE TABLE counters (
                        name TEXT PRIMARY KEY,
                        value INTEGER NOT NULL
                    );
                    """
            )
        }
        migrator.registerMigration("v2: planned deliveries, connector state") { db in
            try db.execute(
                sql: """
                    -- A delivery planned and possibly under way, per destination (a worker has one at a time):
                    -- after a crash the same plan is delivered again before anything new.
                    CREATE TABLE planned (
                        destination TEXT PRIMARY KEY,
                        activation TEXT NOT NULL,
                        plan BLOB NOT NULL
                    );
                    -- What a connector keeps per activation (e.g. the LinkedIn DMP segment it created).
                    CREATE TABLE connector_state (
                        activation TEXT NOT NULL,
                        key TEXT NOT NULL,
                        value TEXT NOT NULL,
                        PRIMARY KEY (activation, key)
                    ) WITHOUT ROWID;
                    """
            )
        }
        migrator.registerMigration("v3: the queue in delivery order") { db in
            // A batch is an activation's oldest entries in (since, cluster) order: with the index in that
            // order a batch reads its rows instead of sorting the whole queue (a backfill has one `since`).
            try db.execute(
                sql: """
                    DROP INDEX queue_by_age;
                    CREATE INDEX queue_in_order ON queue (activation, since, cluster);
                    """
            )
        }
        migrator.registerMigration("v4: the content last delivered, updates per run") { db in
            // Members that stay in a segment while their attributes change are sent again as updates:
            // `content` (a digest of the attributes and domain last sent) tells whether one is due. Rows
            // from before have none, so their next change is sent.
            try db.execute(
                sql: """
                    ALTER TABLE delivered ADD COLUMN content TEXT;
                    ALTER TABLE runs ADD COLUMN updated INTEGER NOT NULL DEFAULT 0;
                    """
            )
        }
        migrator.registerMigration("v5: members erased by privacy requests") { db in
            // Persons a privacy request erased: their records are kept redacted (the cluster only), and
            // once a destination has removed one, nothing about it is kept for that activation.
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
        return migrator
    }

    // MARK: - Destinations and activations

    /// Saves a destination under the next id (`d1`, `d2`, …).
    public func createDestination(
        type: Cdp_Destination_V1_DestinationType,
        name: String,
        settings: [String: String],
        credentials: [String: String],
        at now: Date
    ) throws -> DestinationRecord {
        try writer.write { db in
            let number = try Self.next("destination_number", db)
            let record = DestinationRecord(
                id: "d\(number)",
                type: type,
                name: name,
                settings: settings,
                credentials: credentials,
                createdAt: now
            )
            try db.execute(
                sql: """
                    INSERT INTO destinations (id, number, type, name, settings, credentials, created)
                    VALUES (?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    record.id, number, type.rawValue, name, try Self.json(settings), try Self.json(credentials),
                    now.timeIntervalSince1970,
                ]
            )
            return record
        }
    }

    /// Replaces a destination's name, settings and credentials.
    public func updateDestination(_ record: DestinationRecord) throws {
        try writer.write { db in
            try db.execute(
                sql: "UPDATE destinations SET name = ?, settings = ?, credentials = ? WHERE id = ?",
                arguments: [record.name, try Self.json(record.settings), try Self.json(record.credentials), record.id]
            )
        }
    }

    /// Deletes a destination, its activations (none active: the caller checks) and everything kept for
    /// them. One transaction.
    public func deleteDestination(_ id: String) throws {
        try writer.write { db in
            let activations = try String.fetchAll(
                db,
                sql: "SELECT id FROM activations WHERE destination = ?",
                arguments: [id]
            )
            for activation in activations {
                for table in ["queue", "delivered", "connector_state"] {
                    try db.execute(sql: "DELETE FROM \(table) WHERE activation = ?", arguments: [activation])
                }
            }
            try db.execute(sql: "DELETE FROM activations WHERE destination = ?", arguments: [id])
            try db.execute(sql: "DELETE FROM planned WHERE destination = ?", arguments: [id])
            try db.execute(sql: "DELETE FROM runs WHERE destination = ?", arguments: [id])
            try db.execute(sql: "DELETE FROM destinations WHERE id = ?", arguments: [id])
        }
    }

    /// Every destination, oldest first.
    public func destinations() throws -> [DestinationRecord] {
        try writer.read { db in
            try Row.fetchAll(
                db,
                sql: "SELECT id, type, name, settings, credentials, created FROM destinations ORDER BY number"
            ).map { row in
                DestinationRecord(
                    id: row[0],
                    type: Cdp_Destination_V1_DestinationType(rawValue: row[1]) ?? .unspecified,
                    name: row[2],
                    settings: try Self.map(row[3]),
                    credentials: try Self.map(row[4]),
                    createdAt: Date(timeIntervalSince1970: row[5])
                )
            }
        }
    }

    /// Activates a segment to a destination and queues every current member of the segment (the
    /// backfill), in one transaction. Returns the activation and how many members it queued.
    public func activate(
        segment: String,
        destination: String,
        identity: Cdp_Destination_V1_IdentityMapping,
        attributes: [String: String],
        at now: Date
    ) throws -> (ActivationRecord, backfill: Int) {
        try writer.write { db in
            let number = try Self.next("activation_number", db)
            let activation = ActivationRecord(
                id: "a\(number)",
                segmentID: segment,
                destinationID: destination,
                identity: identity,
                attributes: attributes,
                active: true,
                createdAt: now
            )
            try db.execute(
                sql: """
                    INSERT INTO activations (id, number, segment, destination, identity, attributes, active, created)
                    VALUES (?, ?, ?, ?, ?, ?, 1, ?)
                    """,
                arguments: [
                    activation.id, number, segment, destination, identity.rawValue, try Self.json(attributes),
                    now.timeIntervalSince1970,
                ]
            )
            try db.execute(
                sql: """
                    INSERT INTO queue (activation, segment, entity, cluster, realized, version, since)
                    SELECT ?, segment, entity, cluster, 1, version, ? FROM members WHERE segment = ? AND realized = 1
                    """,
                arguments: [activation.id, now.timeIntervalSince1970, segment]
            )
            return (activation, db.changesCount)
        }
    }

    /// Stops an activation: nothing more is queued or delivered for it.
    public func deactivate(_ id: String) throws -> ActivationRecord? {
        try writer.write { db in
            try db.execute(sql: "UPDATE activations SET active = 0 WHERE id = ?", arguments: [id])
            try db.execute(sql: "DELETE FROM queue WHERE activation = ?", arguments: [id])
            return try Self.activations(db, filter: "WHERE id = ?", [id]).first
        }
    }

    /// Every activation, oldest first.
    public func activations() throws -> [ActivationRecord] {
        try writer.read { db in try Self.activations(db, filter: "", []) }
    }

    /// One activation, active or not.
    public func activation(_ id: String) throws -> ActivationRecord? {
        try writer.read { db in try Self.activations(db, filter: "WHERE id = ?", [id]).first }
    }

    /// A value a connector keeps for an activation.
    public func connectorState(activation: String, key: String) throws -> String? {
        try writer.read { db in
            try String.fetchOne(
                db,
                sql: "SELECT value FROM connector_state WHERE activation = ? AND key = ?",
                arguments: [activation, key]
            )
        }
    }

    /// Keeps a value for an activation's connector.
    public func setConnectorState(activation: String, key: String, value: String) throws {
        try writer.write { db in
            try db.execute(
                sql: "INSERT OR REPLACE INTO connector_state (activation, key, value) VALUES (?, ?, ?)",
                arguments: [activation, key, value]
            )
        }
    }

    private static func activations(
        _ db: Database,
        filter: String,
        _ arguments: StatementArguments
    ) throws
        -> [ActivationRecord]
    {
        try Row.fetchAll(
            db,
            sql: """
                SELECT id, segment, destination, identity, attributes, active, created FROM activations \(filter)
                ORDER BY number
                """,
            arguments: arguments
        ).map { row in
            ActivationRecord(
                id: row[0],
                segmentID: row[1],
                destinationID: row[2],
                identity: Cdp_Destination_V1_IdentityMapping(rawValue: row[3]) ?? .unspecified,
                attributes: try map(row[4]),
                active: row[5],
                createdAt: Date(timeIntervalSince1970: row[6])
            )
        }
    }

    // MARK: - Membership changes

    /// Takes segmentation's changes: re-deliveries (a sequence at or below the sender's last) and
    /// versions older than the member's are skipped; every active activation of the segment queues
    /// the member's new state. One transaction.
    public func accept(
        sender: String,
        _ changes: [Cdp_Destination_V1_MembershipChange],
        at now: Date
    ) throws -> (accepted: Int, duplicates: Int) {
        try writer.write { db in
            var last =
                try Int64.fetchOne(
                    db,
                    sql: "SELECT last_sequence FROM senders WHERE sender = ?",
                    arguments: [sender]
                ) ?? 0
            var accepted = 0
            var duplicates = 0
            for change in changes {
                guard Int64(clamping: change.sequence) > last else {
                    duplicates += 1
                    continue
                }
                last = Int64(clamping: change.sequence)
                accepted += 1
                let entity = change.entityType.rawValue
                let cluster = Int64(clamping: change.clusterID)
                let version = Int64(clamping: change.version)
                let held = try Int64.fetchOne(
                    try db.cachedStatement(
                        sql: "SELECT version FROM members WHERE segment = ? AND entity = ? AND cluster = ?"
                    ),
                    arguments: [change.segmentID, entity, cluster]
                )
                if let held, held >= version { continue }
                // An erased person's change that was on its way keeps only the cluster.
                let forgotten = try Self.isForgotten(entity, cluster, db)
                try db.cachedStatement(
                    sql: """
                        INSERT OR REPLACE INTO members (segment, entity, cluster, realized, version, record)
                        VALUES (?, ?, ?, ?, ?, ?)
                        """
                ).execute(arguments: [
                    change.segmentID, entity, cluster, change.realized && !forgotten, version,
                    forgotten
                        ? try Self.redacted(change.clusterID).serializedBytes() as Data
                        : try change.record.serializedBytes() as Data,
                ])
                try db.cachedStatement(
                    sql: """
                        INSERT INTO queue (activation, segment, entity, cluster, realized, version, since)
                        SELECT id, segment, ?, ?, ?, ?, ? FROM activations WHERE segment = ? AND active = 1
                        ON CONFLICT (activation, entity, cluster) DO UPDATE
                            SET realized = excluded.realized, version = excluded.version
                            WHERE excluded.version > queue.version
                        """
                ).execute(arguments: [
                    entity, cluster, change.realized && !forgotten, version, now.timeIntervalSince1970,
                    change.segmentID,
                ])
            }
            try db.execute(
                sql: "INSERT OR REPLACE INTO senders (sender, last_sequence) VALUES (?, ?)",
                arguments: [sender, last]
            )
            return (accepted, duplicates)
        }
    }

    // MARK: - Delivery

    /// The oldest pending members of one active activation of `destination`, at most `limit`, with
    /// their records and what was delivered before.
    public func nextBatch(destination: String, limit: Int) throws -> PendingBatch? {
        try writer.read { db in
            guard
                let id = try String.fetchOne(
                    db,
                    sql: """
                        SELECT id FROM (
                            SELECT a.id, (SELECT MIN(since) FROM queue WHERE activation = a.id) AS oldest
                            FROM activations a WHERE a.destination = ? AND a.active = 1
                        ) WHERE oldest IS NOT NULL ORDER BY oldest LIMIT 1
                        """,
                    arguments: [destination]
                ), let activation = try Self.activations(db, filter: "WHERE id = ?", [id]).first
            else { return nil }
            let members = try Row.fetchAll(
                db,
                sql: """
                    SELECT q.entity, q.cluster, q.realized, q.version, m.record, d.realized, d.identity, d.content
                    FROM queue q
                    JOIN members m ON m.segment = q.segment AND m.entity = q.entity AND m.cluster = q.cluster
                    LEFT JOIN delivered d ON d.activation = q.activation AND d.entity = q.entity AND d.cluster = q.cluster
                    WHERE q.activation = ? ORDER BY q.since, q.cluster LIMIT ?
                    """,
                arguments: [id, limit]
            ).map { row in
                PendingMember(
                    entityType: Cdp_Model_V1_EntityType(rawValue: row[0]) ?? .person,
                    cluster: UInt64(row[1] as Int64),
                    realized: row[2],
                    version: UInt64(row[3] as Int64),
                    record: try Cdp_Profile_V1_UnifiedRecord(serializedBytes: row[4] as Data),
                    delivered: row[5],
                    identity: row[6],
                    content: row[7]
                )
            }
            return PendingBatch(activation: activation, members: members)
        }
    }

    /// Saves a destination's planned delivery before it starts: until ``complete(activation:destination:_:)``
    /// records it, ``plannedDelivery(destination:)`` hands it back (after a crash, too).
    public func savePlannedDelivery(destination: String, activation: String, plan: Data) throws {
        try writer.write { db in
            try db.execute(
                sql: "INSERT OR REPLACE INTO planned (destination, activation, plan) VALUES (?, ?, ?)",
                arguments: [destination, activation, plan]
            )
        }
    }

    /// A run number for a destination's next delivery: `atLeast` (the time in milliseconds), or one
    /// above the last one handed out if the clock gave that already or went back. Webhook ids and file
    /// names are built from it, so two deliveries never share one.
    public func nextRunNumber(destination: String, atLeast: Int64) throws -> Int64 {
        try writer.write { db in
            let key = "run_number:" + destination
            let last = try Int64.fetchOne(db, sql: "SELECT value FROM counters WHERE name = ?", arguments: [key]) ?? 0
            let number = max(atLeast, last + 1)
            try db.execute(
                sql: "INSERT OR REPLACE INTO counters (name, value) VALUES (?, ?)",
                arguments: [key, number]
            )
            return number
        }
    }

    /// A destination's planned delivery not yet recorded as done.
    public func plannedDelivery(destination: String) throws -> Data? {
        try writer.read { db in
            try Data.fetchOne(db, sql: "SELECT plan FROM planned WHERE destination = ?", arguments: [destination])
        }
    }

    /// Records a finished delivery: what each member now is at the destination, the queue rows done
    /// (unless a newer version arrived meanwhile), the run with its counts and errors, and the end of
    /// the destination's planned delivery. One transaction.
    public func complete(activation: String, destination: String, _ report: DeliveryReport) throws {
        try writer.write { db in
            for member in report.taken {
                try db.cachedStatement(
                    sql: "DELETE FROM queue WHERE activation = ? AND entity = ? AND cluster = ? AND version <= ?"
                ).execute(arguments: [
                    activation, member.entityType.rawValue, Int64(clamping: member.cluster),
                    Int64(clamping: member.version),
                ])
            }
            for member in report.delivered {
                let entity = member.entityType.rawValue
                let cluster = Int64(clamping: member.cluster)
                if !member.realized, try Self.isForgotten(entity, cluster, db) {
                    // An erased person is off the destination: nothing about it is kept.
                    try db.cachedStatement(
                        sql: "DELETE FROM delivered WHERE activation = ? AND entity = ? AND cluster = ?"
                    ).execute(arguments: [activation, entity, cluster])
                    continue
                }
                try db.cachedStatement(
                    sql: """
                        INSERT OR REPLACE INTO delivered (activation, entity, cluster, realized, version, identity,
                            content)
                        VALUES (?, ?, ?, ?, ?, ?, ?)
                        """
                ).execute(arguments: [
                    activation, member.entityType.rawValue, Int64(clamping: member.cluster), member.realized,
                    Int64(clamping: member.version), member.identity, member.content,
                ])
            }
            var errors = Cdp_Destination_V1_Delivery()
            errors.errors = report.failed.map { failure in
                var error = Cdp_Destination_V1_MemberError()
                error.clusterID = failure.cluster
                error.message = failure.message
                return error
            }
            try db.execute(
                sql: """
                    INSERT INTO runs (activation, destination, started, finished, added, removed, updated, suppressed,
                        failed, retries, errors)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    activation, destination, report.startedAt.timeIntervalSince1970,
                    report.finishedAt.timeIntervalSince1970, report.added, report.removed, report.updated,
                    report.suppressed, report.failed.count, report.retries, try errors.serializedBytes() as Data,
                ]
            )
            try db.execute(sql: "DELETE FROM planned WHERE destination = ?", arguments: [destination])
        }
    }

    /// The members an activation has delivered as added (for full file exports).
    public func deliveredMembers(activation: String) throws -> [PendingMember] {
        try writer.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT d.entity, d.cluster, d.version, m.record, d.identity FROM delivered d
                    JOIN activations a ON a.id = d.activation
                    JOIN members m ON m.segment = a.segment AND m.entity = d.entity AND m.cluster = d.cluster
                    WHERE d.activation = ? AND d.realized = 1 ORDER BY d.cluster
                    """,
                arguments: [activation]
            ).map { row in
                PendingMember(
                    entityType: Cdp_Model_V1_EntityType(rawValue: row[0]) ?? .person,
                    cluster: UInt64(row[1] as Int64),
                    realized: true,
                    version: UInt64(row[2] as Int64),
                    record: try Cdp_Profile_V1_UnifiedRecord(serializedBytes: row[3] as Data),
                    delivered: true,
                    identity: row[4]
                )
            }
        }
    }

    /// A destination's pending members and the oldest one's time.
    public func pending(destination: String) throws -> (count: Int, oldest: Date?) {
        try writer.read { db in
            let row = try Row.fetchOne(
                db,
                sql: """
                    SELECT COUNT(*), MIN(since) FROM queue
                    WHERE activation IN (SELECT id FROM activations WHERE destination = ? AND active = 1)
                    """,
                arguments: [destination]
            )
            let oldest: Double? = row?[1]
            return (row?[0] ?? 0, oldest.map { Date(timeIntervalSince1970: $0) })
        }
    }

    /// A destination's runs, newest first, before run number `before` (0: from the newest).
    public func runs(destination: String, before: Int64, limit: Int) throws -> [(Int64, Cdp_Destination_V1_Delivery)] {
        try writer.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT number, activation, started, finished, added, removed, suppressed, failed, retries, errors,
                        updated
                    FROM runs WHERE destination = ? AND (? = 0 OR number < ?) ORDER BY number DESC LIMIT ?
                    """,
                arguments: [destination, before, before, limit]
            ).map { row in
                var delivery = try Cdp_Destination_V1_Delivery(serializedBytes: row[9] as Data)
                let number: Int64 = row[0]
                delivery.id = "run-\(number)"
                delivery.activationID = row[1]
                delivery.startedAt = Google_Protobuf_Timestamp(date: Date(timeIntervalSince1970: row[2]))
                delivery.finishedAt = Google_Protobuf_Timestamp(date: Date(timeIntervalSince1970: row[3]))
                delivery.added = row[4]
                delivery.removed = row[5]
                delivery.suppressed = row[6]
                delivery.failed = row[7]
                delivery.retries = row[8]
                delivery.updated = row[10]
                return (number, delivery)
            }
        }
    }

    // MARK: - Privacy

    /// Erases persons (a privacy request): every segment's member record keeps only the cluster, the
    /// member leaves its segments, and each active activation that delivered it queues its removal
    /// (under the identity it sent, which is kept until the removal is delivered, then deleted).
    /// What deactivated activations delivered is forgotten at once: nothing more is sent for them.
    /// Returns how many removals were queued, how many records were redacted and how many deliveries
    /// of deactivated activations were forgotten.
    public func erase(clusters: [UInt64], at now: Date) throws -> (removals: Int, records: Int, abandoned: Int) {
        try writer.write { db in
            let person = Cdp_Model_V1_EntityType.person.rawValue
            var removals = 0
            var records = 0
            var abandoned = 0
            for cluster in Set(clusters) {
                let id = Int64(clamping: cluster)
                try db.execute(
                    sql: "INSERT OR IGNORE INTO forgotten (entity, cluster) VALUES (?, ?)",
                    arguments: [person, id]
                )
                let redacted = try Self.redacted(cluster).serializedBytes() as Data
                // Each segment's member leaves and keeps only the cluster (once: a repeated call finds it so).
                try db.execute(
                    sql: """
                        UPDATE members SET realized = 0, version = version + 1, record = ?
                        WHERE entity = ? AND cluster = ? AND (realized = 1 OR record != ?)
                        """,
                    arguments: [redacted, person, id, redacted]
                )
                records += db.changesCount
                // Every active activation that has the person at its destination removes it (unless a
                // removal is queued already).
                try db.execute(
                    sql: """
                        INSERT INTO queue (activation, segment, entity, cluster, realized, version, since)
                        SELECT d.activation, a.segment, d.entity, d.cluster, 0, m.version, ?
                        FROM delivered d JOIN activations a ON a.id = d.activation
                        JOIN members m ON m.segment = a.segment AND m.entity = d.entity AND m.cluster = d.cluster
                        WHERE d.entity = ? AND d.cluster = ? AND d.realized = 1 AND a.active = 1
                        ON CONFLICT (activation, entity, cluster) DO UPDATE
                            SET realized = 0, version = max(queue.version, excluded.version)
                        """,
                    arguments: [now.timeIntervalSince1970, person, id]
                )
                removals += db.changesCount
                // Deactivated activations send nothing more: what they delivered is forgotten now.
                try db.execute(
                    sql: """
                        DELETE FROM delivered WHERE entity = ? AND cluster = ?
                            AND (realized = 0 OR activation IN (SELECT id FROM activations WHERE active = 0))
                        """,
                    arguments: [person, id]
                )
                abandoned += db.changesCount
            }
            return (removals, records, abandoned)
        }
    }

    /// How many of the erased `clusters` are still delivered (waiting for their removal) or queued.
    public func erasurePending(clusters: [UInt64]) throws -> Int {
        try writer.read { db in
            var pending = 0
            for cluster in Set(clusters) {
                let arguments: StatementArguments = [Cdp_Model_V1_EntityType.person.rawValue, Int64(clamping: cluster)]
                pending +=
                    try Int.fetchOne(
                        db,
                        sql: "SELECT COUNT(*) FROM delivered WHERE entity = ? AND cluster = ?",
                        arguments: arguments
                    ) ?? 0
                pending +=
                    try Int.fetchOne(
                        db,
                        sql: """
                            SELECT COUNT(*) FROM queue WHERE entity = ? AND cluster = ?
                                AND activation IN (SELECT id FROM activations WHERE active = 1)
                            """,
                        arguments: arguments
                    ) ?? 0
            }
            return pending
        }
    }

    /// Clears the write-ahead log of deleted data; false if it could not yet.
    public func clearLog() -> Bool { ServiceDatabase.clearLog(writer) }

    private static func isForgotten(_ entity: Int, _ cluster: Int64, _ db: Database) throws -> Bool {
        try Int64.fetchOne(
            try db.cachedStatement(sql: "SELECT 1 FROM forgotten WHERE entity = ? AND cluster = ?"),
            arguments: [entity, cluster]
        ) != nil
    }

    /// A record that names only its cluster.
    static func redacted(_ cluster: UInt64) -> Cdp_Profile_V1_UnifiedRecord {
        var record = Cdp_Profile_V1_UnifiedRecord()
        record.clusterID = cluster
        return record
    }

    // MARK: - Helpers

    private static func next(_ counter: String, _ db: Database) throws -> Int64 {
        let value =
            (try Int64.fetchOne(db, sql: "SELECT value FROM counters WHERE name = ?", arguments: [counter]) ?? 0) + 1
        try db.execute(
            sql: "INSERT OR REPLACE INTO counters (name, value) VALUES (?, ?)",
            arguments: [counter, value]
        )
        return value
    }

    private static func json(_ map: [String: String]) throws -> String {
        String(decoding: try JSONEncoder.sorted.encode(map), as: UTF8.self)
    }

    private static func map(_ text: String) throws -> [String: String] {
        try JSONDecoder().decode([String: String].self, from: Data(text.utf8))
    }
}

extension JSONEncoder {
    /// Keys sorted: the same map is always the same text.
    fileprivate static var sorted: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }
}

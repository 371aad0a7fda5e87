import CDPProto
import Foundation
import GRDB
import IdentityRules
import ProfileModel
import SQLiteSupport
import SwiftProtobuf
import Synchronization

/// The embedded ``ProfileStore``: one SQLite database in WAL mode through GRDB.
///
/// Views are built from the tables on demand: a person's accounts are found through three paths (the
/// person records' account, account-person relations, and opportunity-person relations through the
/// opportunity's account) and every collection is keyed by cluster, so each unified entity appears
/// once however many paths lead to it.
public final class SQLiteProfileStore: ProfileStore {
    /// How views are built.
    public struct Configuration: Sendable {
        /// The merge policy of each entity type (default: timestamp-ordered).
        public var policies: [Cdp_Model_V1_EntityType: MergePolicy]
        /// How far back a person view's events reach.
        public var eventRetention: Duration
        /// The most events in a person view.
        public var maxEventsPerView: Int
        /// How many new events are held by person in memory before a slice of them is written to the
        /// index table in one sorted batch (``EventPersonIndex``).
        public var eventIndexBatch: Int

        /// Creates a configuration: timestamp order, 400 days, 5,000 events, events written to their
        /// index a slice at a time once 400,000 wait.
        public init(
            policies: [Cdp_Model_V1_EntityType: MergePolicy] = [:],
            eventRetention: Duration = .seconds(400 * 86_400),
            maxEventsPerView: Int = 5000,
            eventIndexBatch: Int = 400_000
        ) {
            self.policies = policies
            self.eventRetention = eventRetention
            self.maxEventsPerView = maxEventsPerView
            self.eventIndexBatch = eventIndexBatch
        }

        func policy(_ entity: Cdp_Model_V1_EntityType) -> MergePolicy { policies[entity] ?? .timestampOrdered }
    }

    private let writer: any DatabaseWriter
    private let configuration: Configuration
    /// What persons' views share, kept from one view build to the next.
    private let shared = SharedViewCache()
    /// Each waiting item's last mark in the mark log.
    private let lastMarks = LastMarks()
    /// Which events belong to which person.
    private let eventPeople: EventPersonIndex
    private let now: @Sendable () -> Date

    /// Opens (creating if needed) the database at `path` and migrates it.
    public init(
        path: String,
        configuration: Configuration = Configuration(),
        now: @escaping @Sendable () -> Date = Date.init
    )
        throws
    {
        // Views read many small rows at random: keep more pages per connection than SQLite's 2 MiB
        // default. The file is not mapped into memory (`mmap_size = 0`, which an earlier version set to
        // 256 MiB): mapped pages count as the process's resident memory, and reading through the page
        // cache was faster besides. `profile-benchmark 250000`, two runs of each: views built by scan
        // 5,281–5,611/s unmapped against 3,191–3,331/s with 256 MiB mapped, lookups 3,768–3,993/s
        // against 2,934–3,033/s, events applied at the same rate, and 509 MB less peak RSS. The
        // kernel's page cache still holds the rest of the file.
        // The write-ahead log is copied into the file when it reaches 64 MiB, not SQLite's 4 MiB: an
        // event's index entry lands on a random page, so most commits wrote as many pages as they held
        // events, and each page went to the file again at nearly every commit's checkpoint. With the
        // larger log a page changed by many commits is copied once (`profile-benchmark 100000`: events
        // applied at 78,170/s instead of 49,222/s). The copy runs on a thread of its own
        // (`ServiceDatabase`): inside a commit, the writer waited for its sync.
        writer = try ServiceDatabase.open(
            path: path,
            migrator: Self.migrator,
            pragmas: ["mmap_size = 0", "cache_size = -65536"],
            checkpointAfter: 16384
        )
        self.configuration = configuration
        self.now = now
        eventPeople = EventPersonIndex(batch: configuration.eventIndexBatch)
        try lastMarks.load(writer)
        try eventPeople.load(writer)
    }

    /// A store in memory, for tests: the same schema through the same migrator.
    public init(configuration: Configuration = Configuration(), now: @escaping @Sendable () -> Date = Date.init) throws
    {
        writer = try ServiceDatabase.inMemory(migrator: Self.migrator)
        self.configuration = configuration
        self.now = now
        eventPeople = EventPersonIndex(batch: configuration.eventIndexBatch)
        try lastMarks.load(writer)
        try eventPeople.load(writer)
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1: fragments, references, events, names, changed views") { db in
            try db.execute(
                sql: """
                    -- Every source record but events and crosswalk rows, by entity type and key; cluster 0 for
                    -- the entities identity does not cluster (relations, members).
                    CREATE TABLE fragments (
                        entity INTEGER NOT NULL,
                        key TEXT NOT NULL,
                        cluster INTEGER NOT NULL,
                        version INTEGER NOT NULL,
                        source TEXT NOT NULL,
                        last_updated INTEGER,
                        ingested_at INTEGER NOT NULL,
                        is_deleted INTEGER NOT NULL,
                        record BLOB NOT NULL,
                        PRIMARY KEY (entity, key)
                    ) WITHOUT ROWID;
                    CREATE INDEX fragments_by_cluster ON fragments (entity, cluster);
                    -- What each fragment names, resolved to clusters by identity, with the identity it was
                    -- resolved through (a split moves references by it).
                    CREATE TABLE refs (
                        entity INTEGER NOT NULL,
                        key TEXT NOT NULL,
                        role TEXT NOT NULL,
                        ref_entity INTEGER NOT NULL,
                        ref_cluster INTEGER NOT NULL,
                        ref_namespace TEXT NOT NULL,
                        ref_value TEXT NOT NULL,
                        PRIMARY KEY (entity, key, role)
                    ) WITHOUT ROWID;
                    CREATE INDEX refs_by_target ON refs (ref_entity, ref_cluster, role);
                    -- Events by person, by time.
                    CREATE TABLE events (
                        key TEXT PRIMARY KEY,
                        person_cluster INTEGER NOT NULL,
                        ref_namespace TEXT NOT NULL,
                        ref_value TEXT NOT NULL,
                        timestamp INTEGER NOT NULL,
                        record BLOB NOT NULL
                    );
                    CREATE INDEX events_by_person ON events (person_cluster, timestamp);
                    -- The identities each fragment names, for lookups by identity.
                    CREATE TABLE names (
                        entity INTEGER NOT NULL,
                        namespace TEXT NOT NULL,
                        value TEXT NOT NULL,
                        key TEXT NOT NULL,
                        PRIMARY KEY (entity, namespace, value, key)
                    ) WITHOUT ROWID;
                    CREATE INDEX names_by_fragment ON names (entity, key);
                    -- Persons and accounts whose views changed and wait to be sent; generation counts the
                    -- changes, so one taken for sending and changed again stays.
                    CREATE TABLE changed (
                        entity INTEGER NOT NULL,
                        cluster INTEGER NOT NULL,
                        generation INTEGER NOT NULL,
                        since INTEGER NOT NULL,
                        PRIMARY KEY (entity, cluster)
                    ) WITHOUT ROWID;
                    CREATE INDEX changed_by_age ON changed (since);
                    CREATE TABLE counters (
                        name TEXT PRIMARY KEY,
                        value INTEGER NOT NULL
                    );
                    """
            )
        }
        migrator.registerMigration("v2: privacy requests") { db in
            // A privacy request's progress; `work` holds what it still needs in clear (the identities to
            // remove, the record keys, the clusters) and is dropped when the request is done. The person is
            // found again by the hashes of their identities (a second delete answers the first request).
            try db.execute(
                sql: """
                    CREATE TABLE privacy_requests (
                        number INTEGER PRIMARY KEY,
                        request BLOB NOT NULL,
                        work BLOB
                    );
                    CREATE TABLE privacy_hashes (
                        hash BLOB NOT NULL,
                        number INTEGER NOT NULL,
                        PRIMARY KEY (hash, number)
                    ) WITHOUT ROWID;
                    """
            )
        }
        migrator.registerMigration("v3: state changes instead of views") { db in
            // Segmentation keeps the state it evaluates (unified records, links, events) from profile's
            // changes: what changed waits here, keyed by item, until sent (kind 1: a clustered entity's
            // unified record by entity and cluster, 2: the link a fragment makes, by entity and key, 3: an
            // event by key). A database from before starts by sending everything once.
            try db.execute(
                sql: """
                    CREATE TABLE pending (
                        kind INTEGER NOT NULL,
                        entity INTEGER NOT NULL,
                        cluster INTEGER NOT NULL,
                        key TEXT NOT NULL,
                        generation INTEGER NOT NULL,
                        since INTEGER NOT NULL,
                        PRIMARY KEY (kind, entity, cluster, key)
                    ) WITHOUT ROWID;
                    CREATE INDEX pending_by_age ON pending (since);
                    INSERT OR IGNORE INTO pending (kind, entity, cluster, key, generation, since)
                        SELECT DISTINCT 1, entity, cluster, '', 1, unixepoch() * 1000 FROM fragments
                        WHERE entity IN (1, 2, 3, 6, 8) AND cluster != 0;
                    INSERT OR IGNORE INTO pending (kind, entity, cluster, key, generation, since)
                        SELECT 2, entity, 0, key, 1, unixepoch() * 1000 FROM fragments
                        WHERE entity IN (1, 3, 4, 5, 7, 9);
                    INSERT OR IGNORE INTO pending (kind, entity, cluster, key, generation, since)
                        SELECT 3, 0, 0, key, 1, unixepoch() * 1000 FROM events;
                    DROP TABLE changed;
                    INSERT OR REPLACE INTO counters (name, value)
                        SELECT 'sent_changes', value FROM counters WHERE name = 'sent_views';
                    """
            )
        }
        migrator.registerMigration("v4: a running count of pending changes") { db in
            // Counted once here, then kept by the marker and by markSent.
            try db.execute(
                sql: """
                    INSERT OR REPLACE INTO counters (name, value)
                        SELECT 'pending_changes', count(*) FROM pending;
                    """
            )
        }
        migrator.registerMigration("v5: the event log") { db in
            // New events reach segmentation in the order they were added, by their rowid (given from
            // `event_log_end`, never reused), instead of through a pending row each; the relay's position
            // is `event_log_sent`. The events already here were queued in `pending` by v3 or sent.
            try db.execute(
                sql: """
                    ALTER TABLE events ADD COLUMN applied_at INTEGER NOT NULL DEFAULT 0;
                    INSERT OR REPLACE INTO counters (name, value)
                        SELECT 'event_log_end', coalesce(max(rowid), 0) FROM events;
                    INSERT OR REPLACE INTO counters (name, value)
                        SELECT 'event_log_sent', coalesce(max(rowid), 0) FROM events;
                    """
            )
        }
        migrator.registerMigration("v6: the mark log") { db in
            // What changed is appended to `marks` (one row per item per apply that changed it, at a
            // position given from `mark_log_end`) instead of upserted into `pending` by item key: the keys
            // are random, and each upsert and each delete after the send wrote a page of a large B-tree.
            // The relay takes marks from the head, one change per item, and deletes them up to its
            // position `mark_log_sent` once delivered.
            try db.execute(
                sql: """
                    CREATE TABLE marks (
                        position INTEGER PRIMARY KEY,
                        kind INTEGER NOT NULL,
                        entity INTEGER NOT NULL,
                        cluster INTEGER NOT NULL,
                        key TEXT NOT NULL,
                        since INTEGER NOT NULL
                    );
                    INSERT INTO marks (kind, entity, cluster, key, since)
                        SELECT kind, entity, cluster, key, since FROM pending ORDER BY since;
                    DROP TABLE pending;
                    INSERT OR REPLACE INTO counters (name, value)
                        SELECT 'mark_log_end', coalesce(max(position), 0) FROM marks;
                    INSERT OR REPLACE INTO counters (name, value) VALUES ('mark_log_sent', 0);
                    DELETE FROM counters WHERE name = 'pending_changes';
                    """
            )
        }
        migrator.registerMigration("v7: events by person in a table of their own") { db in
            try EventPersonIndex.migrate(db)
        }
        migrator.registerMigration("v8: marks that carry the link an apply left") { db in
            // The state of the link a fragment makes, as the apply that marked it left it (a
            // `LinkState` without its key), so that the relay need not read it back; NULL: read the
            // tables when sent (the marks from before, those of merges, splits and deletes).
            try db.execute(sql: "ALTER TABLE marks ADD COLUMN link BLOB")
        }
        migrator.registerMigration("v9: names without source keys and without an index by fragment") { db in
            // A fragment's own source key is its key: lookups by it read `fragments`.
            // `names` keeps no index by fragment: a fragment's names are found again from its record.
            try db.execute(
                sql: """
                    DELETE FROM names WHERE namespace = 'sourceKey' AND value = key;
                    DROP INDEX names_by_fragment;
                    """
            )
        }
        return migrator
    }

    // MARK: - Privacy requests

    public func newPrivacyRequest(hashes: [Data], work: Data, at now: Date) throws -> StoredPrivacyRequest {
        try writer.write { db in
            let number = (try Int64.fetchOne(db, sql: "SELECT max(number) FROM privacy_requests") ?? 0) + 1
            var request = Cdp_Privacy_V1_PrivacyRequest()
            request.id = "pr-\(number)"
            request.state = .erasing
            request.createdAt = Google_Protobuf_Timestamp(date: now)
            request.identities = UInt32(hashes.count)
            try db.execute(
                sql: "INSERT INTO privacy_requests (number, request, work) VALUES (?, ?, ?)",
                arguments: [number, try request.serializedBytes() as Data, work]
            )
            for hash in Set(hashes) {
                try db.execute(
                    sql: "INSERT OR IGNORE INTO privacy_hashes (hash, number) VALUES (?, ?)",
                    arguments: [hash, number]
                )
            }
            return StoredPrivacyRequest(request: request, work: work)
        }
    }

    public func savePrivacyRequest(_ stored: StoredPrivacyRequest) throws {
        try writer.write { db in
            try db.execute(
                sql: "UPDATE privacy_requests SET request = ?, work = ? WHERE number = ?",
                arguments: [
                    try stored.request.serializedBytes() as Data, stored.work, Self.requestNumber(stored.request.id),
                ]
            )
        }
    }

    public func privacyRequests() throws -> [StoredPrivacyRequest] {
        try privacyRequests(where: "", [])
    }

    public func privacyRequest(id: String) throws -> StoredPrivacyRequest? {
        try privacyRequests(where: "WHERE number = ?", [Self.requestNumber(id)]).first
    }

    public func privacyRequest(hash: Data) throws -> StoredPrivacyRequest? {
        try privacyRequests(where: "WHERE number IN (SELECT number FROM privacy_hashes WHERE hash = ?)", [hash]).first
    }

    /// Requests, newest first.
    private func privacyRequests(
        where filter: String,
        _ arguments: StatementArguments
    ) throws
        -> [StoredPrivacyRequest]
    {
        try writer.read { db in
            try Row.fetchAll(
                db,
                sql: "SELECT request, work FROM privacy_requests \(filter) ORDER BY number DESC",
                arguments: arguments
            ).map {
                StoredPrivacyRequest(
                    request: try Cdp_Privacy_V1_PrivacyRequest(serializedBytes: $0[0] as Data),
                    work: $0[1]
                )
            }
        }
    }

    public func clearLog() -> Bool { ServiceDatabase.clearLog(writer) }

    private static func requestNumber(_ id: String) -> Int64 {
        id.hasPrefix("pr-") ? Int64(id.dropFirst(3)) ?? 0 : 0
    }

    // MARK: - Applying identity's updates

    public func appliedSequence() throws -> UInt64 {
        try writer.read { db in UInt64(try Counters.value("applied_identity_sequence", db)) }
    }

    public func apply(_ updates: [ReceivedUpdate]) throws -> (applied: Int, duplicates: Int) {
        // After the commit, so that a view build that read the old rows cannot store them as current.
        defer { if updates.contains(where: SharedViewCache.invalidates) { shared.invalidate() } }
        let (result, marked) = try writer.write { db in
            var last = UInt64(try Counters.value("applied_identity_sequence", db))
            var applied = 0
            var duplicates = 0
            let changes = StateMarker(db: db, now: Self.milliseconds(now()))
            for update in updates {
                guard update.sequence > last else {
                    duplicates += 1
                    continue
                }
                switch update.change {
                case .record(let received):
                    switch received.content {
                    case .fragment(let record): try apply(record, received, changes: changes, db: db)
                    case .event(let key, let isDeleted, let timestamp):
                        try applyEvent(
                            key: key,
                            isDeleted: isDeleted,
                            timestamp: timestamp,
                            received,
                            changes: changes,
                            db: db
                        )
                    }
                case .clusterChange(let change): try apply(change, changes: changes, db: db)
                case .identityRemoved(let removed):
                    // Lookups no longer find anything by the removed value.
                    try db.cachedStatement(
                        sql: "DELETE FROM names WHERE entity = ? AND namespace = ? AND value = ?"
                    ).execute(arguments: [
                        removed.entityType.rawValue, removed.identity.namespace, removed.identity.value,
                    ]
                    )
                case .none: break
                }
                last = update.sequence
                applied += 1
            }
            try Counters.set("applied_identity_sequence", Int64(last), db)
            try changes.commit()
            try eventPeople.foldIfDue(db)
            return ((applied, duplicates), changes.positions)
        }
        lastMarks.note(marked)
        return result
    }

    /// Stores a fragment (any record but an event), as received.
    private func apply(
        _ record: Cdp_Model_V1_Record,
        _ received: ReceivedRecord,
        changes: StateMarker,
        db: Database
    ) throws {
        guard let entity = entityType(of: record), entity != .identityLink else { return }
        let key = record.key
        let cluster = clusteredEntityTypes.contains(entity) ? received.clusterID : 0
        let lastUpdated: Int64? = record.hasLastUpdated ? Self.milliseconds(record.lastUpdated.date) : nil
        let values: StatementArguments = [
            Int64(cluster), Int64(bitPattern: received.version), record.source.type + ":" + record.source.instance,
            lastUpdated, Self.milliseconds(received.ingestedAt.date), record.isDeleted, received.bytes,
            entity.rawValue, key,
        ]
        // Most fragments are new: inserted in one look-up of the key. One stored before is marked for
        // what it contributed to (its cluster may change) and updated; its references and names go (a
        // privacy delete removes all three, so a new fragment has none).
        try db.cachedStatement(
            sql: """
                INSERT INTO fragments (cluster, version, source, last_updated, ingested_at, is_deleted, record, entity, key)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (entity, key) DO NOTHING
                """
        ).execute(arguments: values)
        if db.changesCount == 0, let stored = try markFragment(entity, key: key, changes: changes, db: db) {
            try deleteNames(of: stored, entity, key: key, db)
            try db.cachedStatement(
                sql: """
                    UPDATE fragments SET
                        cluster = ?, version = ?, source = ?, last_updated = ?, ingested_at = ?, is_deleted = ?, record = ?
                    WHERE entity = ? AND key = ?
                    """
            ).execute(arguments: values)
            try db.cachedStatement(sql: "DELETE FROM refs WHERE entity = ? AND key = ?").execute(arguments: [
                entity.rawValue, key,
            ])
        }
        var references: [String: UInt64] = [:]
        if !record.isDeleted {
            for reference in received.references where reference.clusterID != 0 {
                try db.cachedStatement(
                    sql: """
                        INSERT OR REPLACE INTO refs (entity, key, role, ref_entity, ref_cluster, ref_namespace, ref_value)
                        VALUES (?, ?, ?, ?, ?, ?, ?)
                        """
                ).execute(arguments: [
                    entity.rawValue, key, reference.role, reference.entityType.rawValue,
                    Int64(reference.clusterID), reference.identity.namespace, reference.identity.value,
                ]
                )
                references[reference.role] = reference.clusterID
            }
            for name in names(of: record, entity) {
                try db.cachedStatement(
                    sql: "INSERT OR IGNORE INTO names (entity, namespace, value, key) VALUES (?, ?, ?, ?)"
                ).execute(arguments: [entity.rawValue, name.namespace, name.value, key])
            }
        }
        // What it contributes to now: the cluster just written (none for 0) and its link, as just
        // written (what the tables now say, without reading them back when it is sent).
        try changes.entity(entity, UInt64(cluster))
        if StateMarker.linkTypes.contains(entity) {
            let link = Links.state(
                entity,
                key: key,
                cluster: record.isDeleted ? nil : UInt64(cluster),
                references: references,
                record: { record }
            )
            try changes.link(entity, key, as: link)
        }
    }

    /// Stores an event, as received, or removes a deleted one or one whose person is not known.
    private func applyEvent(
        key: String,
        isDeleted: Bool,
        timestamp: Google_Protobuf_Timestamp,
        _ received: ReceivedRecord,
        changes: StateMarker,
        db: Database
    ) throws {
        guard !isDeleted,
            let person = received.references.first(where: { $0.role == Role.person && $0.clusterID != 0 })
        else {
            // Segmentation may hold it: it learns that it is gone.
            if try deleteEvent(key: key, db) { try changes.event(key) }
            return
        }
        // Appended to the event log (a new or changed event goes to its end): no pending row. REPLACE
        // deletes the event's earlier row, if any, in the same look-up of its key that checks it is
        // unique (a separate DELETE first cost a third of an event's apply); the index entry of that row
        // is left to the readers' check (``EventPersonIndex``).
        let position = try changes.nextEventPosition()
        try db.cachedStatement(
            sql: """
                INSERT OR REPLACE INTO events
                    (rowid, key, person_cluster, ref_namespace, ref_value, timestamp, applied_at, record)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                """
        ).execute(arguments: [
            position, key, Int64(person.clusterID), person.identity.namespace,
            person.identity.value, Self.milliseconds(timestamp.date), changes.now, received.bytes,
        ]
        )
        eventPeople.added(position, person: person.clusterID, timestamp: Self.milliseconds(timestamp.date))
    }

    /// Deletes an event and its index entry; whether there was one.
    private func deleteEvent(key: String, _ db: Database) throws -> Bool {
        guard
            let removed = try Row.fetchOne(
                try db.cachedStatement(
                    sql: "DELETE FROM events WHERE key = ? RETURNING rowid, person_cluster, timestamp"
                ),
                arguments: [key]
            )
        else { return false }
        try eventPeople.remove([(removed[0], removed[2])], person: UInt64(removed[1] as Int64), db)
        return true
    }

    /// Moves a person's events to another cluster (a merge), or those naming one of `identities` to the
    /// cluster given for it (a split).
    private func moveEvents(
        of from: UInt64,
        to into: UInt64,
        identities: [Cdp_Identity_V1_IdentityValue: UInt64]? = nil,
        _ db: Database
    ) throws {
        var moves: [(position: Int64, timestamp: Int64, target: UInt64)] = []
        for row in try eventPeople.rows(ofPerson: from, columns: "rowid, timestamp, ref_namespace, ref_value", db) {
            if let identities {
                var identity = Cdp_Identity_V1_IdentityValue()
                identity.namespace = row[2]
                identity.value = row[3]
                if let part = identities[identity] { moves.append((row[0], row[1], part)) }
            } else {
                moves.append((row[0], row[1], into))
            }
        }
        // All of them out of `from`'s entries first (at once: a person's list in the map is read once),
        // then into the target's (a split's part may keep the id `from`).
        try eventPeople.remove(moves.map { ($0.position, $0.timestamp) }, person: from, db)
        for move in moves {
            try db.cachedStatement(sql: "UPDATE events SET person_cluster = ? WHERE rowid = ?")
                .execute(arguments: [Int64(move.target), move.position])
            try eventPeople.moved(move.position, to: move.target, timestamp: move.timestamp, db)
        }
    }

    private func apply(_ change: Cdp_Identity_V1_ClusterChange, changes: StateMarker, db: Database) throws {
        let entity = change.entityType
        switch change.kind {
        case .merged:
            guard let into = change.into.first else { return }
            for from in change.from { try markCluster(from, entity: entity, changes: changes, db: db) }
            for from in change.from {
                try db.cachedStatement(
                    sql:
                        "UPDATE fragments INDEXED BY fragments_by_cluster SET cluster = ? WHERE entity = ? AND cluster = ?"
                ).execute(arguments: [Int64(into), entity.rawValue, Int64(from)]
                )
                try db.cachedStatement(
                    sql: "UPDATE refs SET ref_cluster = ? WHERE ref_entity = ? AND ref_cluster = ?"
                ).execute(arguments: [Int64(into), entity.rawValue, Int64(from)]
                )
                if entity == .person { try moveEvents(of: from, to: into, db) }
            }
            try changes.entity(entity, into)
        case .split:
            guard let from = change.from.first else { return }
            try markCluster(from, entity: entity, changes: changes, db: db)
            for part in change.parts {
                for key in part.recordKeys {
                    try db.cachedStatement(
                        sql: "UPDATE fragments SET cluster = ? WHERE entity = ? AND cluster = ? AND key = ?"
                    ).execute(arguments: [Int64(part.clusterID), entity.rawValue, Int64(from), key]
                    )
                }
                for identity in part.identities {
                    try db.cachedStatement(
                        sql: """
                            UPDATE refs SET ref_cluster = ?
                            WHERE ref_entity = ? AND ref_cluster = ? AND ref_namespace = ? AND ref_value = ?
                            """
                    ).execute(arguments: [
                        Int64(part.clusterID), entity.rawValue, Int64(from), identity.namespace, identity.value,
                    ]
                    )
                }
            }
            if entity == .person {
                var parts: [Cdp_Identity_V1_IdentityValue: UInt64] = [:]
                for part in change.parts {
                    for identity in part.identities { parts[identity] = part.clusterID }
                }
                try moveEvents(of: from, to: 0, identities: parts, db)
            }
            for part in change.parts { try changes.entity(entity, part.clusterID) }
        default:
            break
        }
    }

    // MARK: - What changes the state

    /// Marks what a stored fragment contributes to segmentation's state, as the tables say now: its
    /// cluster's unified record and the link it makes. Returns the fragment's record, nil if it is
    /// not stored.
    @discardableResult
    private func markFragment(
        _ entity: Cdp_Model_V1_EntityType,
        key: String,
        changes: StateMarker,
        db: Database
    ) throws -> Data? {
        guard
            let row = try Row.fetchOne(
                try db.cachedStatement(sql: "SELECT cluster, record FROM fragments WHERE entity = ? AND key = ?"),
                arguments: [entity.rawValue, key]
            )
        else { return nil }
        if clusteredEntityTypes.contains(entity) { try changes.entity(entity, UInt64(row[0] as Int64)) }
        if StateMarker.linkTypes.contains(entity) { try changes.link(entity, key) }
        return row[1]
    }

    /// The identities a clustered fragment's record gives `names`: all but its own source key
    /// (``isOwnKey(namespace:value:of:)``). `names` has no index by fragment: the names of a fragment
    /// replaced or deleted are found again from its record.
    private func names(
        of record: Cdp_Model_V1_Record,
        _ entity: Cdp_Model_V1_EntityType
    ) -> [(namespace: String, value: String)] {
        guard clusteredEntityTypes.contains(entity), !record.isDeleted, let plan = IdentityRules.plan(for: record)
        else { return [] }
        return plan.identities.compactMap { identity in
            Self.isOwnKey(namespace: identity.namespace, value: identity.value, of: record.key)
                ? nil : (identity.namespace, identity.value)
        }
    }

    /// Deletes the names a stored fragment's record (as bytes) gave it.
    private func deleteNames(
        of stored: Data,
        _ entity: Cdp_Model_V1_EntityType,
        key: String,
        _ db: Database
    ) throws {
        guard clusteredEntityTypes.contains(entity) else { return }
        // Stored only after it parsed.
        let record = try Cdp_Model_V1_Record(serializedBytes: stored)
        for name in names(of: record, entity) {
            try db.cachedStatement(
                sql: "DELETE FROM names WHERE entity = ? AND namespace = ? AND value = ? AND key = ?"
            ).execute(arguments: [entity.rawValue, name.namespace, name.value, key])
        }
    }

    /// Marks everything that names a cluster, before it merges or splits: its unified record, the
    /// links its fragments make and those of the fragments that name it, and a person's events.
    private func markCluster(
        _ cluster: UInt64,
        entity: Cdp_Model_V1_EntityType,
        changes: StateMarker,
        db: Database
    ) throws {
        try changes.entity(entity, cluster)
        if StateMarker.linkTypes.contains(entity) {
            for key in try String.fetchAll(
                try db.cachedStatement(
                    sql: "SELECT key FROM fragments INDEXED BY fragments_by_cluster WHERE entity = ? AND cluster = ?"
                ),
                arguments: [entity.rawValue, Int64(cluster)]
            ) {
                try changes.link(entity, key)
            }
        }
        for row in try Row.fetchAll(
            try db.cachedStatement(
                sql: "SELECT entity, key FROM refs INDEXED BY refs_by_target WHERE ref_entity = ? AND ref_cluster = ?"
            ),
            arguments: [entity.rawValue, Int64(cluster)]
        ) {
            if let referrer = Cdp_Model_V1_EntityType(rawValue: Int(row[0] as Int64)),
                StateMarker.linkTypes.contains(referrer)
            {
                try changes.link(referrer, row[1])
            }
        }
        if entity == .person {
            for row in try eventPeople.rows(ofPerson: cluster, columns: "key", db) { try changes.event(row[0]) }
        }
    }

    // MARK: - Relations

    /// The person's accounts: through person records, account-person relations and opportunity-person
    /// relations (the opportunity's account).
    private func accounts(ofPerson cluster: UInt64, _ db: Database) throws -> [UInt64] {
        try UInt64s(
            db,
            """
            SELECT r.ref_cluster FROM fragments f INDEXED BY fragments_by_cluster
                CROSS JOIN refs r ON r.entity = f.entity AND r.key = f.key AND r.role = 'account'
                WHERE f.entity = 1 AND f.cluster = ?1 AND f.is_deleted = 0
            UNION
            SELECT a.ref_cluster FROM refs p INDEXED BY refs_by_target
                CROSS JOIN refs a ON a.entity = p.entity AND a.key = p.key AND a.role = 'account'
                WHERE p.ref_entity = 1 AND p.ref_cluster = ?1 AND p.role = 'person' AND p.entity = 4
            UNION
            SELECT oa.ref_cluster FROM refs p INDEXED BY refs_by_target
                CROSS JOIN refs o ON o.entity = p.entity AND o.key = p.key AND o.role = 'opportunity'
                CROSS JOIN fragments opp INDEXED BY fragments_by_cluster
                    ON opp.entity = 3 AND opp.cluster = o.ref_cluster AND opp.is_deleted = 0
                CROSS JOIN refs oa ON oa.entity = 3 AND oa.key = opp.key AND oa.role = 'account'
                WHERE p.ref_entity = 1 AND p.ref_cluster = ?1 AND p.role = 'person' AND p.entity = 5
            """,
            [Int64(cluster)]
        )
    }

    /// The account's persons, through the same three paths.
    private func persons(ofAccount cluster: UInt64, _ db: Database) throws -> [UInt64] {
        try UInt64s(
            db,
            """
            SELECT f.cluster FROM refs r INDEXED BY refs_by_target
                CROSS JOIN fragments f ON f.entity = r.entity AND f.key = r.key AND f.is_deleted = 0
                WHERE r.ref_entity = 2 AND r.ref_cluster = ?1 AND r.role = 'account' AND r.entity = 1
            UNION
            SELECT p.ref_cluster FROM refs a INDEXED BY refs_by_target
                CROSS JOIN refs p ON p.entity = a.entity AND p.key = a.key AND p.role = 'person'
                WHERE a.ref_entity = 2 AND a.ref_cluster = ?1 AND a.role = 'account' AND a.entity = 4
            UNION
            SELECT p.ref_cluster FROM refs oa INDEXED BY refs_by_target
                CROSS JOIN fragments opp ON opp.entity = oa.entity AND opp.key = oa.key AND opp.is_deleted = 0
                CROSS JOIN refs o INDEXED BY refs_by_target
                    ON o.ref_entity = 3 AND o.ref_cluster = opp.cluster AND o.role = 'opportunity' AND o.entity = 5
                CROSS JOIN refs p ON p.entity = 5 AND p.key = o.key AND p.role = 'person'
                WHERE oa.ref_entity = 2 AND oa.ref_cluster = ?1 AND oa.role = 'account' AND oa.entity = 3
            """,
            [Int64(cluster)]
        )
    }

    /// The accounts an opportunity's fragments name.
    private func accounts(ofOpportunity cluster: UInt64, _ db: Database) throws -> [UInt64] {
        try UInt64s(
            db,
            """
            SELECT DISTINCT r.ref_cluster FROM fragments f INDEXED BY fragments_by_cluster
                CROSS JOIN refs r ON r.entity = f.entity AND r.key = f.key AND r.role = 'account'
                WHERE f.entity = 3 AND f.cluster = ?1 AND f.is_deleted = 0
            """,
            [Int64(cluster)]
        )
    }

    /// The opportunities of an account, looked up in `memo` first.
    private func opportunities(ofAccount cluster: UInt64, _ db: Database, _ memo: ViewMemo) throws -> [UInt64] {
        if let known = memo.accountOpportunities[cluster] { return known }
        if let known = memo.shared.opportunities(ofAccount: cluster, generation: memo.generation) {
            memo.accountOpportunities[cluster] = known
            return known
        }
        let found = try opportunities(ofAccount: cluster, db)
        memo.accountOpportunities[cluster] = found
        memo.shared.store(opportunities: found, ofAccount: cluster, generation: memo.generation)
        return found
    }

    /// The opportunities of an account.
    private func opportunities(ofAccount cluster: UInt64, _ db: Database) throws -> [UInt64] {
        try UInt64s(
            db,
            """
            SELECT DISTINCT f.cluster FROM refs r INDEXED BY refs_by_target
                CROSS JOIN fragments f ON f.entity = r.entity AND f.key = r.key AND f.is_deleted = 0
                WHERE r.ref_entity = 2 AND r.ref_cluster = ?1 AND r.role = 'account' AND r.entity = 3
            """,
            [Int64(cluster)]
        )
    }

    /// The person's relation or membership fragments of type `relation` with the cluster of what they
    /// link it to (through `role`).
    private func memberships(
        ofPerson cluster: UInt64,
        relation: Cdp_Model_V1_EntityType,
        role: String,
        _ db: Database
    ) throws -> [(target: UInt64, record: Cdp_Model_V1_Record)] {
        let rows = try Row.fetchAll(
            try db.cachedStatement(
                sql: """
                    SELECT t.ref_cluster, f.record FROM refs p INDEXED BY refs_by_target
                        CROSS JOIN refs t ON t.entity = p.entity AND t.key = p.key AND t.role = ?1
                        CROSS JOIN fragments f ON f.entity = p.entity AND f.key = p.key AND f.is_deleted = 0
                        WHERE p.ref_entity = 1 AND p.ref_cluster = ?3 AND p.role = 'person' AND p.entity = ?2
                        ORDER BY p.key
                    """
            ),
            arguments: [role, relation.rawValue, Int64(cluster)]
        )
        return try rows.map { row in
            (UInt64(row[0] as Int64), try Cdp_Model_V1_Record(serializedBytes: row[1] as Data))
        }
    }

    private func UInt64s(_ db: Database, _ sql: String, _ arguments: StatementArguments) throws -> [UInt64] {
        try Int64.fetchAll(try db.cachedStatement(sql: sql), arguments: arguments).filter { $0 != 0 }.map { UInt64($0) }
            .sorted()
    }

    // MARK: - Views

    /// The unified record of a cluster; nil if it has no live fragment. Looked up in `memo` first.
    private func unified(
        _ entity: Cdp_Model_V1_EntityType,
        _ cluster: UInt64,
        _ db: Database,
        _ memo: ViewMemo
    ) throws
        -> Cdp_Profile_V1_UnifiedRecord?
    {
        let key = ViewKey(entity: entity, cluster: cluster)
        if let known = memo.unified[key] { return known }
        let shareable = SharedViewCache.shareable.contains(entity)
        if shareable, let known = memo.shared.unified(key, generation: memo.generation) {
            memo.unified[key] = .some(known)
            return known
        }
        let rows = try Row.fetchAll(
            try db.cachedStatement(
                sql: """
                    SELECT key, source, last_updated, ingested_at, record FROM fragments INDEXED BY fragments_by_cluster
                    WHERE entity = ? AND cluster = ? AND is_deleted = 0
                    """
            ),
            arguments: [entity.rawValue, Int64(cluster)]
        )
        let fragments = rows.map { row in
            Fragment(key: row[0], source: row[1], lastUpdated: row[2], ingestedAt: row[3], record: row[4])
        }
        var unified: Cdp_Profile_V1_UnifiedRecord?
        if let record = try Unifier.unify(fragments, policy: configuration.policy(entity)) {
            var built = Cdp_Profile_V1_UnifiedRecord()
            built.clusterID = cluster
            built.record = record
            built.fragmentKeys = fragments.map(\.key).sorted()
            unified = built
        }
        memo.unified[key] = .some(unified)
        if shareable { memo.shared.store(unified: unified, for: key, generation: memo.generation) }
        return unified
    }

    public func cluster(
        of entity: Cdp_Model_V1_EntityType,
        named identity: Cdp_Identity_V1_IdentityValue
    ) throws
        -> UInt64?
    {
        try writer.read { db in
            // A source key is the key of the fragment it names (``isOwnKey(namespace:value:of:)``).
            let (sql, arguments): (String, StatementArguments) =
                identity.namespace == Namespace.sourceKey
                ? (
                    "SELECT cluster FROM fragments WHERE entity = ? AND key = ? AND is_deleted = 0 AND cluster != 0",
                    [entity.rawValue, identity.value]
                )
                : (
                    """
                    SELECT f.cluster FROM names n
                        CROSS JOIN fragments f ON f.entity = n.entity AND f.key = n.key AND f.is_deleted = 0
                        WHERE n.entity = ? AND n.namespace = ? AND n.value = ? AND f.cluster != 0
                        LIMIT 1
                    """,
                    [entity.rawValue, identity.namespace, identity.value]
                )
            return try Int64.fetchOne(try db.cachedStatement(sql: sql), arguments: arguments).map { UInt64($0) }
        }
    }

    /// Whether `identity` is the source key of the fragment `key` (a clustered record's first identity,
    /// see IdentityRules): not kept in `names`, where it would be a second copy of the fragment's key
    /// and two more random-key B-tree writes per fragment.
    static func isOwnKey(namespace: String, value: String, of key: String) -> Bool {
        namespace == Namespace.sourceKey && value == key
    }

    public func personView(cluster: UInt64, asOf: Date) throws -> Cdp_Profile_V1_PersonView? {
        let memo = ViewMemo(shared: shared)
        return try writer.read { db in try personView(cluster, asOf: asOf, db, memo) }
    }

    public func accountView(cluster: UInt64) throws -> Cdp_Profile_V1_AccountView? {
        let memo = ViewMemo(shared: shared)
        return try writer.read { db in try accountView(cluster, db, memo) }
    }

    public func views(of keys: [ViewKey], asOf: Date) throws -> [ProfileView?] {
        // The memo notes the shared cache's generation before the read transaction takes its snapshot.
        let memo = ViewMemo(shared: shared)
        return try writer.read { db in
            try keys.map { key in
                switch key.entity {
                case .person: try personView(key.cluster, asOf: asOf, db, memo).map(ProfileView.person)
                case .account: try accountView(key.cluster, db, memo).map(ProfileView.account)
                default: nil
                }
            }
        }
    }

    private func personView(
        _ cluster: UInt64,
        asOf: Date,
        _ db: Database,
        _ memo: ViewMemo
    ) throws -> Cdp_Profile_V1_PersonView? {
        guard let person = try unified(.person, cluster, db, memo) else { return nil }
        var view = Cdp_Profile_V1_PersonView()
        view.person = person
        view.asOf = Google_Protobuf_Timestamp(date: asOf)
        let accountClusters = try accounts(ofPerson: cluster, db)
        view.accounts = try accountClusters.compactMap { try unified(.account, $0, db, memo) }
        let roles = try memberships(ofPerson: cluster, relation: .opportunityPersonRelation, role: Role.opportunity, db)
        var opportunityClusters = Set(roles.map(\.target))
        for account in accountClusters {
            opportunityClusters.formUnion(try opportunities(ofAccount: account, db, memo))
        }
        view.opportunities = try opportunityClusters.sorted().compactMap { try opportunity($0, db, memo) }
        view.opportunityRoles = roles.map { target, record in
            var role = Cdp_Profile_V1_OpportunityRole()
            role.opportunityClusterID = target
            let relation = record.opportunityPersonRelation
            if relation.hasRole { role.role = relation.role }
            if relation.hasIsPrimary { role.isPrimary = relation.isPrimary }
            return role
        }
        view.campaigns = try memberships(ofPerson: cluster, relation: .campaignMember, role: Role.campaign, db)
            .compactMap { target, record in
                guard let campaign = try unified(.campaign, target, db, memo) else { return nil }
                var membership = Cdp_Profile_V1_CampaignMembership()
                membership.campaign = campaign
                let member = record.campaignMember
                if member.hasStatus { membership.status = member.status }
                if member.hasHasResponded_p { membership.hasResponded_p = member.hasResponded_p }
                return membership
            }
        view.lists = try memberships(ofPerson: cluster, relation: .marketingListMember, role: Role.list, db)
            .compactMap { target, _ in
                guard let list = try unified(.marketingList, target, db, memo) else { return nil }
                var membership = Cdp_Profile_V1_ListMembership()
                membership.list = list
                return membership
            }
        let from = asOf.addingTimeInterval(-Double(configuration.eventRetention.components.seconds))
        view.events = try events(cluster, from: from, to: asOf, limit: configuration.maxEventsPerView, db)
        return view
    }

    /// An opportunity of a view, with the accounts it belongs to.
    private func opportunity(
        _ cluster: UInt64,
        _ db: Database,
        _ memo: ViewMemo
    ) throws -> Cdp_Profile_V1_UnifiedRecord? {
        if let known = memo.opportunities[cluster] { return known }
        if let known = memo.shared.opportunity(cluster, generation: memo.generation) {
            memo.opportunities[cluster] = .some(known)
            return known
        }
        var opportunity = try unified(.opportunity, cluster, db, memo)
        if opportunity != nil { opportunity?.accountClusterIds = try accounts(ofOpportunity: cluster, db) }
        memo.opportunities[cluster] = .some(opportunity)
        memo.shared.store(opportunity: opportunity, for: cluster, generation: memo.generation)
        return opportunity
    }

    private func accountView(_ cluster: UInt64, _ db: Database, _ memo: ViewMemo) throws -> Cdp_Profile_V1_AccountView?
    {
        guard let account = try unified(.account, cluster, db, memo) else { return nil }
        var view = Cdp_Profile_V1_AccountView()
        view.account = account
        view.opportunities = try opportunities(ofAccount: cluster, db, memo).compactMap {
            try opportunity($0, db, memo)
        }
        view.persons = try persons(ofAccount: cluster, db).compactMap { try unified(.person, $0, db, memo) }
        view.totals = Cdp_Profile_V1_AccountTotals(opportunities: view.opportunities, persons: view.persons.count)
        return view
    }

    public func clusters(
        of entity: Cdp_Model_V1_EntityType,
        partition: Int,
        partitions: Int,
        after: UInt64,
        limit: Int
    ) throws -> [UInt64] {
        try writer.read { db in
            try Int64.fetchAll(
                try db.cachedStatement(
                    sql: """
                        SELECT DISTINCT cluster FROM fragments INDEXED BY fragments_by_cluster
                        WHERE entity = ? AND cluster > ? AND is_deleted = 0 AND cluster % ? = ?
                        ORDER BY cluster LIMIT ?
                        """
                ),
                arguments: [entity.rawValue, Int64(after), max(partitions, 1), partitions > 1 ? partition : 0, limit]
            ).map { UInt64($0) }
        }
    }

    public func events(person cluster: UInt64, from: Date, to: Date, limit: Int) throws -> [Cdp_Profile_V1_Event] {
        try writer.read { db in try events(cluster, from: from, to: to, limit: limit, db) }
    }

    private func events(
        _ cluster: UInt64,
        from: Date,
        to: Date,
        limit: Int,
        _ db: Database
    ) throws
        -> [Cdp_Profile_V1_Event]
    {
        // The newest first, the records read only for those shown.
        let (from, to) = (Self.milliseconds(from), Self.milliseconds(to))
        let shown = try eventPeople.rows(ofPerson: cluster, columns: "rowid, timestamp, key", db)
            .map { (position: $0[0] as Int64, timestamp: $0[1] as Int64, key: $0[2] as String) }
            .filter { $0.timestamp >= from && $0.timestamp <= to }
            .sorted { ($0.timestamp, $1.key) > ($1.timestamp, $0.key) }
            .prefix(limit)
        let record = try db.cachedStatement(sql: "SELECT record FROM events WHERE rowid = ?")
        return try shown.compactMap { shown in
            guard let bytes = try Data.fetchOne(record, arguments: [shown.position]) else { return nil }
            var event = Cdp_Profile_V1_Event()
            event.key = shown.key
            event.event = try Cdp_Model_V1_Record(serializedBytes: bytes).event
            return event
        }
    }

    // MARK: - Privacy

    public func personData(cluster: UInt64) throws -> PersonData {
        try writer.read { db in
            var data = PersonData()
            // The person's own fragments, then the relations and memberships naming the person.
            data.fragments = try Row.fetchAll(
                try db.cachedStatement(
                    sql:
                        "SELECT entity, key FROM fragments INDEXED BY fragments_by_cluster WHERE entity = 1 AND cluster = ?"
                ),
                arguments: [Int64(cluster)]
            ).map { FragmentKey(entity: $0[0], key: $0[1]) }
            data.fragments += try Row.fetchAll(
                try db.cachedStatement(
                    sql: "SELECT entity, key FROM refs WHERE ref_entity = 1 AND ref_cluster = ? AND role = 'person'"
                ),
                arguments: [Int64(cluster)]
            ).map { FragmentKey(entity: $0[0], key: $0[1]) }
            data.events = try eventPeople.rows(ofPerson: cluster, columns: "key", db).map { $0[0] }
            // What the person's live fragments name, their own keys too: `names` without its copies of
            // the keys, read from the records (it has no index by fragment).
            var identities: Set<Cdp_Identity_V1_IdentityValue> = []
            for row in try Row.fetchAll(
                try db.cachedStatement(
                    sql: """
                        SELECT record FROM fragments INDEXED BY fragments_by_cluster
                            WHERE entity = 1 AND cluster = ? AND is_deleted = 0
                        """
                ),
                arguments: [Int64(cluster)]
            ) {
                let record = try Cdp_Model_V1_Record(serializedBytes: row[0] as Data)
                for name in names(of: record, .person) + [(Namespace.sourceKey, record.key)] {
                    var identity = Cdp_Identity_V1_IdentityValue()
                    identity.namespace = name.namespace
                    identity.value = name.value
                    identities.insert(identity)
                }
            }
            data.identities = identities.sorted { ($0.namespace, $0.value) < ($1.namespace, $1.value) }
            return data
        }
    }

    public func delete(_ data: PersonData) throws -> (fragments: Int, events: Int) {
        defer { shared.invalidate() }
        let (result, marked) = try writer.write { db in
            let changes = StateMarker(db: db, now: Self.milliseconds(now()))
            var fragments = 0
            for fragment in data.fragments {
                guard let entity = Cdp_Model_V1_EntityType(rawValue: Int(fragment.entity)) else { continue }
                // Whatever cluster the fragment is in now (identity's splits may have moved it meanwhile).
                guard let stored = try markFragment(entity, key: fragment.key, changes: changes, db: db) else {
                    continue
                }
                try deleteNames(of: stored, entity, key: fragment.key, db)
                for table in ["fragments", "refs"] {
                    try db.cachedStatement(sql: "DELETE FROM \(table) WHERE entity = ? AND key = ?").execute(
                        arguments: [fragment.entity, fragment.key]
                    )
                    if table == "fragments" { fragments += db.changesCount }
                }
            }
            var events = 0
            for key in data.events {
                try changes.event(key)
                if try deleteEvent(key: key, db) { events += 1 }
            }
            try changes.commit()
            return ((fragments, events), changes.positions)
        }
        lastMarks.note(marked)
        return result
    }

    // MARK: - State changes

    public func takeStateChanges(limit: Int, after: StateChunk?) throws -> StateChunk {
        // One transaction: the values read are those of the moment the items are taken, so a chunk never
        // mixes an item as a later apply left it with the rest of that apply left for the next chunk.
        let memo = ViewMemo(shared: shared)
        let (taken, changes, events, firstEventVersion) = try writer.write { db in
            let marked = try nextMarkedItems(limit: limit, after: after?.marksThrough ?? 0, db)
            var items = marked.items
            let logged = try nextLoggedEvents(limit: limit, after: after?.eventsThrough, db)
            // Fresh versions, increasing across all sends.
            var version = UInt64(try Counters.value("change_version", db))
            for index in items.indices {
                version += 1
                items[index].version = version
            }
            let changes = try stateChanges(of: items, carrying: marked.carried, db, memo)
            try Counters.set("change_version", Int64(version) + Int64(logged.events.count), db)
            let chunk = StateChunk(
                items: items,
                marksThrough: marked.through,
                markCount: marked.count,
                eventsThrough: logged.through,
                eventCount: logged.events.count,
                serialized: []
            )
            return (chunk, changes, logged.events, version + 1)
        }
        // Encoded for the wire once the write lock is released.
        var chunk = taken
        chunk.serialized = try changes.map { try $0.serializedBytes() as Data }
        for (offset, event) in events.enumerated() {
            var change = Cdp_Profile_V1_EventStateChangeBytes()
            change.version = firstEventVersion + UInt64(offset)
            change.event = event
            chunk.serialized.append(try change.serializedBytes())
        }
        return chunk
    }

    /// Up to `limit` events of the log after the last chunk sent (and after position `after`, the
    /// last event of a chunk being sent), and the position of the last.
    private func nextLoggedEvents(
        limit: Int,
        after: Int64?,
        _ db: Database
    ) throws -> (events: [Cdp_Profile_V1_EventStateBytes], through: Int64) {
        let sent = try Counters.value("event_log_sent", db)
        let rows = try Row.fetchAll(
            try db.cachedStatement(
                sql: "SELECT rowid, key, person_cluster, record FROM events WHERE rowid > ? ORDER BY rowid LIMIT ?"
            ),
            arguments: [max(sent, after ?? 0), limit]
        )
        guard let last = rows.last else {
            // Events added and deleted again before they were sent: nothing of them is to send (but
            // only from the head: the chunk being sent is not sent yet).
            let end = try Counters.value("event_log_end", db)
            if after == nil, end > sent { try Counters.set("event_log_sent", end, db) }
            return ([], 0)
        }
        let events = try rows.map { row in
            var event = Cdp_Profile_V1_EventStateBytes()
            event.key = row[1]
            event.personClusterID = UInt64(row[2] as Int64)
            event.event = try RecordEventBytes.of(record: row[3])
            return event
        }
        return (events, last[0])
    }

    /// The next `limit` items of the mark log after position `after` (each item at its last mark: one
    /// marked again later is left for the chunk of that later apply), extended to the end of the apply
    /// that marked the last of them, with the position of the last mark taken and how many marks were.
    private func nextMarkedItems(
        limit: Int,
        after: Int64,
        _ db: Database
    ) throws -> (items: [PendingItem], carried: [Data?], through: Int64, count: Int) {
        var items: [PendingItem] = []
        // The link state each item's last mark read carries (``StateMarker/link(_:_:as:)``).
        var carried: [Data?] = []
        var indices: [PendingItem: Int] = [:]
        var through: Int64 = 0
        var count = 0
        var lastSince: Int64?
        // Sent marks are deleted: the log starts at its first unsent mark.
        let cursor = try Row.fetchCursor(
            try db.cachedStatement(
                sql:
                    "SELECT position, kind, entity, cluster, key, since, link FROM marks WHERE position > ? ORDER BY position"
            ),
            arguments: [after]
        )
        while let row = try cursor.next() {
            let since: Int64 = row[5]
            // Whole transactions: the marks of one apply (one `since`) go in one chunk, so segmentation
            // applies them together and never evaluates half of a merge. The limit counts items, not
            // marks: marks superseded by later ones add none, and a chunk of those alone would hold
            // nothing to send and never move the log on.
            if items.count >= limit, since != lastSince { break }
            lastSince = since
            let position: Int64 = row[0]
            through = position
            count += 1
            let item = LastMarks.item(row)
            // An item marked again by a later apply goes with that apply: its value, read now, is what
            // the later apply left, and must travel with the rest of what that apply changed.
            if lastMarks.isSuperseded(item, at: position) { continue }
            // An apply that committed but is not yet noted in `lastMarks` may have marked an item again
            // after a mark read before: the later mark's state is the one that holds.
            if let index = indices[item] {
                carried[index] = row[6]
            } else {
                indices[item] = items.count
                items.append(item)
                carried.append(row[6])
            }
        }
        return (items, carried, through, count)
    }

    /// The changes of `items`, read now, but the links whose marks carry their state
    /// (`carried`, by index).
    private func stateChanges(
        of items: [PendingItem],
        carrying carried: [Data?],
        _ db: Database,
        _ memo: ViewMemo
    ) throws -> [Cdp_Profile_V1_StateChange] {
        try zip(items, carried).map { item, carried in
            var change = Cdp_Profile_V1_StateChange()
            change.version = item.version
            switch item.kind {
            case .entity:
                var entity = Cdp_Profile_V1_EntityState()
                entity.entityType = item.entity
                entity.clusterID = item.cluster
                if let unified = try unified(item.entity, item.cluster, db, memo) { entity.unified = unified }
                change.entity = entity
            case .link:
                change.link =
                    try carried.map { try StateMarker.link(carried: $0, key: item.key) }
                    ?? linkState(item.entity, key: item.key, db)
            case .event: change.event = try eventState(key: item.key, db)
            }
            return change
        }
    }

    /// The link a fragment makes now, as the tables say (for tests: the relay sends what the marks
    /// carry where they carry it).
    func storedLink(_ entity: Cdp_Model_V1_EntityType, key: String) throws -> Cdp_Profile_V1_LinkState {
        try writer.read { db in try linkState(entity, key: key, db) }
    }

    /// The link a fragment makes now, as the tables say: present if the fragment is live and both its
    /// ends resolved.
    private func linkState(
        _ entity: Cdp_Model_V1_EntityType,
        key: String,
        _ db: Database
    ) throws
        -> Cdp_Profile_V1_LinkState
    {
        let fragment = try Row.fetchOne(
            try db.cachedStatement(
                sql: "SELECT cluster, record FROM fragments WHERE entity = ? AND key = ? AND is_deleted = 0"
            ),
            arguments: [entity.rawValue, key]
        )
        var references: [String: UInt64] = [:]
        if fragment != nil {
            for reference in try Row.fetchAll(
                try db.cachedStatement(sql: "SELECT role, ref_cluster FROM refs WHERE entity = ? AND key = ?"),
                arguments: [entity.rawValue, key]
            ) {
                references[reference[0]] = UInt64(reference[1] as Int64)
            }
        }
        return try Links.state(
            entity,
            key: key,
            cluster: fragment.map { UInt64($0[0] as Int64) },
            references: references,
            record: { try Cdp_Model_V1_Record(serializedBytes: fragment![1] as Data) }
        )
    }

    /// An event and its person now (person 0 if it is gone).
    private func eventState(key: String, _ db: Database) throws -> Cdp_Profile_V1_EventState {
        var event = Cdp_Profile_V1_EventState()
        event.key = key
        if let row = try Row.fetchOne(
            try db.cachedStatement(sql: "SELECT person_cluster, record FROM events WHERE key = ?"),
            arguments: [key]
        ) {
            event.personClusterID = UInt64(row[0] as Int64)
            event.event = try Cdp_Model_V1_Record(serializedBytes: row[1] as Data).event
        }
        return event
    }

    public func markSent(_ chunk: StateChunk) throws {
        try writer.write { db in
            var sent = 0
            if chunk.marksThrough > (try Counters.value("mark_log_sent", db)) {
                try db.cachedStatement(sql: "DELETE FROM marks WHERE position <= ?")
                    .execute(arguments: [chunk.marksThrough])
                try Counters.set("mark_log_sent", chunk.marksThrough, db)
                sent += chunk.items.count
            }
            if chunk.eventsThrough > (try Counters.value("event_log_sent", db)) {
                try Counters.set("event_log_sent", chunk.eventsThrough, db)
                sent += chunk.eventCount
            }
            try Counters.add("sent_changes", Int64(sent), db)
        }
        lastMarks.forget(through: chunk.marksThrough)
    }

    public func outboxStatus() throws -> (pending: UInt64, oldestPending: Date?, sent: UInt64) {
        try writer.read { db in
            let sentEvents = try Counters.value("event_log_sent", db)
            // Events of the log deleted before they were sent count until the relay passes them.
            let loggedEvents = max(try Counters.value("event_log_end", db) - sentEvents, 0)
            let marks = max(try Counters.value("mark_log_end", db) - (try Counters.value("mark_log_sent", db)), 0)
            let oldestMark = try Int64.fetchOne(
                try db.cachedStatement(sql: "SELECT since FROM marks ORDER BY position LIMIT 1")
            )
            let oldestEvent = try Int64.fetchOne(
                try db.cachedStatement(sql: "SELECT applied_at FROM events WHERE rowid > ? ORDER BY rowid LIMIT 1"),
                arguments: [sentEvents]
            )
            let oldest = [oldestMark, oldestEvent].compactMap { $0 }.min()
            return (UInt64(marks + loggedEvents), oldest.map(Self.date), UInt64(try Counters.value("sent_changes", db)))
        }
    }

    // MARK: - Helpers

    static func milliseconds(_ date: Date) -> Int64 { Int64((date.timeIntervalSince1970 * 1000).rounded()) }

    static func date(_ milliseconds: Int64) -> Date { Date(timeIntervalSince1970: Double(milliseconds) / 1000) }
}

/// What the views built from one snapshot share: unified records (an account's, its opportunities'),
/// an account's opportunity clusters. Only valid inside the read transaction that filled it; what lasts
/// longer goes to the ``SharedViewCache`` too.
final class ViewMemo {
    var unified: [ViewKey: Cdp_Profile_V1_UnifiedRecord?] = [:]
    var opportunities: [UInt64: Cdp_Profile_V1_UnifiedRecord?] = [:]
    var accountOpportunities: [UInt64: [UInt64]] = [:]
    let shared: SharedViewCache
    /// The shared cache's generation before the snapshot was taken.
    let generation: UInt64

    init(shared: SharedViewCache) {
        self.shared = shared
        self.generation = shared.generation
    }
}

/// Unified accounts, opportunities, campaigns and lists, and each account's opportunity clusters, kept
/// from one view build to the next: persons' views read them far more often than they change (events
/// and person fragments, most of the traffic, change none of them).
///
/// Any update that could change one of them (a fragment of those entities, a cluster change, a removed
/// identity, a privacy delete) invalidates them all by moving the generation on, after its commit. A
/// build stores a value only under the generation it noted before its snapshot, and only if that is
/// still the current one: a value read from rows older than a change is never served after it.
final class SharedViewCache: Sendable {
    /// The entities whose unified records are kept.
    static let shareable: Set<Cdp_Model_V1_EntityType> = [.account, .opportunity, .campaign, .marketingList]
    /// The most values kept; beyond it the cache starts again empty.
    static let capacity = 200_000

    private struct State {
        var generation: UInt64 = 0
        var unified: [ViewKey: Cdp_Profile_V1_UnifiedRecord?] = [:]
        var opportunities: [UInt64: Cdp_Profile_V1_UnifiedRecord?] = [:]
        var accountOpportunities: [UInt64: [UInt64]] = [:]

        var count: Int { unified.count + opportunities.count + accountOpportunities.count }

        /// Whether a value computed under `generation` may be stored (and makes room if needed).
        mutating func admits(_ generation: UInt64) -> Bool {
            guard generation == self.generation else { return false }
            if count >= SharedViewCache.capacity { self = State(generation: generation) }
            return true
        }
    }

    private let state = Mutex(State())

    /// Whether applying `update` may change a kept value.
    static func invalidates(_ update: ReceivedUpdate) -> Bool {
        switch update.change {
        case .record(let received): shareable.contains(received.entityType)
        case .clusterChange, .identityRemoved: true
        case .none: false
        }
    }

    var generation: UInt64 { state.withLock { $0.generation } }

    func invalidate() { state.withLock { $0 = State(generation: $0.generation &+ 1) } }

    func unified(_ key: ViewKey, generation: UInt64) -> Cdp_Profile_V1_UnifiedRecord?? {
        state.withLock { $0.generation == generation ? $0.unified[key] : nil }
    }

    func opportunity(_ cluster: UInt64, generation: UInt64) -> Cdp_Profile_V1_UnifiedRecord?? {
        state.withLock { $0.generation == generation ? $0.opportunities[cluster] : nil }
    }

    func opportunities(ofAccount cluster: UInt64, generation: UInt64) -> [UInt64]? {
        state.withLock { $0.generation == generation ? $0.accountOpportunities[cluster] : nil }
    }

    func store(unified: Cdp_Profile_V1_UnifiedRecord?, for key: ViewKey, generation: UInt64) {
        state.withLock { if $0.admits(generation) { $0.unified[key] = .some(unified) } }
    }

    func store(opportunity: Cdp_Profile_V1_UnifiedRecord?, for cluster: UInt64, generation: UInt64) {
        state.withLock { if $0.admits(generation) { $0.opportunities[cluster] = .some(opportunity) } }
    }

    func store(opportunities: [UInt64], ofAccount cluster: UInt64, generation: UInt64) {
        state.withLock { if $0.admits(generation) { $0.accountOpportunities[cluster] = opportunities } }
    }
}

/// Marks the items of segmentation's state that changed, within one write transaction. Every item an
/// apply marks takes the apply's time as `since`, also one already waiting (it moves to the back): the
/// items of one apply stay one group, which the relay sends in one chunk, so segmentation never holds an
/// item as an apply left it without the rest of what that apply changed.
///
/// It counts the items it adds, and ``commit()`` adds them to the running count of pending items, so
/// that the outbox's status does not count a table of millions of rows.
final class StateMarker {
    let db: Database
    let now: Int64
    /// The marks of this transaction that carry a link's state.
    private var carrying: Set<Int64> = []
    /// The position of each item this transaction marked.
    private(set) var positions: [PendingItem: Int64] = [:]
    /// The last position given in the event log, once one was asked for.
    private var eventLogEnd: Int64?
    /// The last position given in the mark log, once one was asked for.
    private var markLogEnd: Int64?

    init(db: Database, now: Int64) {
        self.db = db
        self.now = now
    }

    /// The position in the event log of an event added now.
    func nextEventPosition() throws -> Int64 {
        let next = (try eventLogEnd ?? Counters.value("event_log_end", db)) + 1
        eventLogEnd = next
        return next
    }

    /// Saves the ends of the event log and of the mark log; called once, before the transaction
    /// commits.
    func commit() throws {
        if let eventLogEnd { try Counters.set("event_log_end", eventLogEnd, db) }
        if let markLogEnd { try Counters.set("mark_log_end", markLogEnd, db) }
        eventLogEnd = nil
        markLogEnd = nil
    }

    /// The fragment types that make links.
    static let linkTypes: Set<Cdp_Model_V1_EntityType> = [
        .person, .opportunity, .accountPersonRelation, .opportunityPersonRelation, .campaignMember,
        .marketingListMember,
    ]

    /// A clustered entity's unified record.
    func entity(_ entity: Cdp_Model_V1_EntityType, _ cluster: UInt64) throws {
        guard cluster != 0 else { return }
        try mark(.entity, entity, cluster, "")
    }

    /// The link a fragment makes. `state` is the link as this transaction left it, carried by the mark
    /// so that the relay sends it without reading the fragment and its references back (and decoding
    /// the record for a role or a status); a link marked without one (a cluster that merged or split,
    /// a fragment replaced or deleted) is read from the tables when it is sent, the last call of the
    /// transaction deciding.
    func link(_ entity: Cdp_Model_V1_EntityType, _ key: String, as state: Cdp_Profile_V1_LinkState? = nil) throws {
        try mark(.link, entity, 0, key, carrying: state)
    }

    /// An event.
    func event(_ key: String) throws { try mark(.event, .unspecified, 0, key) }

    private func mark(
        _ kind: PendingItem.Kind,
        _ entity: Cdp_Model_V1_EntityType,
        _ cluster: UInt64,
        _ key: String,
        carrying link: Cdp_Profile_V1_LinkState? = nil
    )
        throws
    {
        let item = PendingItem(kind: kind, entity: entity, cluster: cluster, key: key, version: 0)
        let carried = try link.map(Self.carried)
        // Once per transaction is enough: the relay takes a transaction's marks together.
        if let position = positions[item] {
            guard carried != nil || carrying.contains(position) else { return }
            try db.cachedStatement(sql: "UPDATE marks SET link = ? WHERE position = ?").execute(arguments: [
                carried, position,
            ])
            if carried == nil { carrying.remove(position) } else { carrying.insert(position) }
            return
        }
        let position = (try markLogEnd ?? Counters.value("mark_log_end", db)) + 1
        markLogEnd = position
        try db.cachedStatement(
            sql: "INSERT INTO marks (position, kind, entity, cluster, key, since, link) VALUES (?, ?, ?, ?, ?, ?, ?)"
        ).execute(arguments: [position, kind.rawValue, entity.rawValue, Int64(cluster), key, now, carried])
        if carried != nil { carrying.insert(position) }
        positions[item] = position
    }

    /// A link's state as a mark carries it: without its key, which the mark has (its entity type
    /// stays, so that the bytes are never empty, which would read as no state).
    private static func carried(_ link: Cdp_Profile_V1_LinkState) throws -> Data {
        var carried = link
        carried.key = ""
        return try carried.serializedBytes()
    }

    /// The link a mark carries (``carried(_:)``), with its key back.
    static func link(carried: Data, key: String) throws -> Cdp_Profile_V1_LinkState {
        var link = try Cdp_Profile_V1_LinkState(serializedBytes: carried)
        link.key = key
        return link
    }
}

/// Where each waiting item was last marked in the mark log, so that the relay takes an item marked by
/// several applies with the last of them (see ``isSuperseded(_:at:)``). Kept in memory, built from the
/// log at open and noted after each committed apply: a table indexed by item would put a random-key
/// write back on every mark.
///
/// Entries of marks already sent stay until the next pruning: they are at or below every waiting
/// mark's position, so they supersede nothing.
final class LastMarks: Sendable {
    private struct State {
        var positions: [PendingItem: Int64] = [:]
        /// The count that triggers the next pruning.
        var pruneAt = 10_000
    }

    private let state = Mutex(State())

    /// The item of a row of `marks` read as `position, kind, entity, cluster, key, …`.
    static func item(_ row: Row) -> PendingItem {
        PendingItem(
            kind: PendingItem.Kind(rawValue: row[1]) ?? .entity,
            entity: Cdp_Model_V1_EntityType(rawValue: Int(row[2] as Int64)) ?? .unspecified,
            cluster: UInt64(row[3] as Int64),
            key: row[4],
            version: 0
        )
    }

    /// Reads the waiting marks of the log.
    func load(_ reader: any DatabaseReader) throws {
        let positions = try reader.read { db in
            var positions: [PendingItem: Int64] = [:]
            let rows = try Row.fetchCursor(db, sql: "SELECT position, kind, entity, cluster, key FROM marks")
            while let row = try rows.next() {
                let item = Self.item(row)
                positions[item] = max(positions[item] ?? 0, row[0])
            }
            return positions
        }
        state.withLock { $0.positions = positions }
    }

    /// Notes the marks of a committed transaction.
    func note(_ marked: [PendingItem: Int64]) {
        guard !marked.isEmpty else { return }
        state.withLock { state in
            state.positions.merge(marked) { max($0, $1) }
        }
    }

    /// How many items it holds an entry for.
    var count: Int { state.withLock { $0.positions.count } }

    /// Whether the mark of `item` at `position` has a later one.
    func isSuperseded(_ item: PendingItem, at position: Int64) -> Bool {
        state.withLock { ($0.positions[item] ?? 0) > position }
    }

    /// Drops the entries of marks sent (through `position`) once there are many.
    func forget(through position: Int64) {
        state.withLock { state in
            guard state.positions.count >= state.pruneAt else { return }
            state.positions = state.positions.filter { $0.value > position }
            state.pruneAt = max(10_000, 2 * state.positions.count)
        }
    }
}

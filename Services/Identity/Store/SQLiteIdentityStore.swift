import CDPProto
import Foundation
import GRDB
import IdentityGraph
import IdentityRules
import SQLiteSupport

/// The embedded ``IdentityStore``: one SQLite database in WAL mode through GRDB.
///
/// `synchronous = NORMAL`: a commit survives a crash of the process (kill -9), which is what an
/// acknowledgement promises; it may not survive a power loss of the machine.
public final class SQLiteIdentityStore: IdentityStore {
    private let writer: any DatabaseWriter

    /// Opens (creating if needed) the database at `path` and migrates it.
    public init(path: String) throws {
        writer = try ServiceDatabase.open(path: path, migrator: Self.migrator)
    }

    /// A store in memory, for tests: the same schema through the same migrator.
    public init() throws {
        writer = try ServiceDatabase.inMemory(migrator: Self.migrator)
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1: accepted records, graphs, conflicts, outbox") { db in
            try db.execute(
                sql: """
                    -- Every record version taken: a re-delivery is recognised and changes nothing.
                    CREATE TABLE accepted (
                        key TEXT NOT NULL,
                        version INTEGER NOT NULL,
                        PRIMARY KEY (key, version)
                    ) WITHOUT ROWID;
                    -- The identities of each graph; the sequence number is never reused.
                    CREATE TABLE identities (
                        graph TEXT NOT NULL,
                        sequence INTEGER NOT NULL,
                        namespace TEXT NOT NULL,
                        value TEXT NOT NULL,
                        PRIMARY KEY (graph, sequence)
                    ) WITHOUT ROWID;
                    -- Each linked record: the identities it links (sequence numbers, 8 bytes each,
                    -- little-endian, primary first) and where it came from.
                    CREATE TABLE links (
                        graph TEXT NOT NULL,
                        key TEXT NOT NULL,
                        version INTEGER NOT NULL,
                        identities BLOB NOT NULL,
                        source_type TEXT NOT NULL,
                        source_instance TEXT NOT NULL,
                        batch_id TEXT NOT NULL,
                        ingested_at INTEGER NOT NULL,
                        PRIMARY KEY (graph, key)
                    ) WITHOUT ROWID;
                    CREATE TABLE graphs (
                        graph TEXT PRIMARY KEY,
                        next_sequence INTEGER NOT NULL
                    );
                    CREATE TABLE conflicts (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        graph TEXT NOT NULL,
                        record_key TEXT NOT NULL,
                        namespace TEXT NOT NULL,
                        value TEXT NOT NULL,
                        kind TEXT NOT NULL,
                        detail TEXT NOT NULL,
                        clusters TEXT NOT NULL,
                        detected_at INTEGER NOT NULL
                    );
                    CREATE INDEX conflicts_by_graph ON conflicts (graph, id);
                    -- Updates for profile, in order; deleted once acknowledged.
                    CREATE TABLE outbox (
                        sequence INTEGER PRIMARY KEY,
                        payload BLOB NOT NULL,
                        created_at INTEGER NOT NULL
                    );
                    CREATE TABLE counters (
                        name TEXT PRIMARY KEY,
                        value INTEGER NOT NULL
                    );
                    """
            )
        }
        migrator.registerMigration("v2: a conflict is stored once") { db in
            try db.execute(
                sql: """
                    DELETE FROM conflicts WHERE id NOT IN (
                        SELECT min(id) FROM conflicts GROUP BY graph, record_key, namespace, value, kind
                    );
                    CREATE UNIQUE INDEX conflicts_once ON conflicts (graph, record_key, namespace, value, kind);
                    """
            )
        }
        // count(*) reads every page of the outbox, payloads included: 1.4 GB at a backlog of 2M updates,
        // which made each status call (cdp status, cdp ingest --wait) cost most of a core.
        migrator.registerMigration("v3: a running count of pending updates") { db in
            try db.execute(
                sql: "INSERT OR REPLACE INTO counters (name, value) SELECT 'pending_updates', count(*) FROM outbox"
            )
        }
        // Every version ever taken made a value changed back (A, B, A) look like a re-delivery of A and
        // dropped it. Only the current version of each record counts now, with ingestion's sequence
        // number, which also tells an older version re-delivered after a newer one. The old table
        // cannot say which version is current: it goes, and a chunk re-delivered right after the
        // upgrade is taken again (linking is idempotent; profile applies it as the same fragment).
        migrator.registerMigration("v4: the current version of each record") { db in
            try db.execute(
                sql: """
                    DROP TABLE accepted;
                    CREATE TABLE current_versions (
                        key TEXT NOT NULL,
                        entity INTEGER NOT NULL,
                        version INTEGER NOT NULL,
                        sequence INTEGER NOT NULL,
                        PRIMARY KEY (key, entity)
                    ) WITHOUT ROWID;
                    """
            )
        }
        return migrator
    }

    // MARK: - Graphs

    public func loadGraphs() throws -> [EntityGraph: GraphState] {
        try writer.read { db in
            var states: [EntityGraph: GraphState] = [:]
            let next = try Row.fetchAll(db, sql: "SELECT graph, next_sequence FROM graphs")
            for row in next {
                guard let graph = EntityGraph(rawValue: row[0]) else { continue }
                states[graph] = GraphState(identities: [], records: [], nextSequence: UInt64(row[1] as Int64))
            }
            for graph in states.keys {
                var identities: [(sequence: UInt64, identity: Identity)] = []
                let identityRows = try Row.fetchCursor(
                    db,
                    sql: "SELECT sequence, namespace, value FROM identities WHERE graph = ? ORDER BY sequence",
                    arguments: [graph.rawValue]
                )
                while let row = try identityRows.next() {
                    identities.append((UInt64(row[0] as Int64), Identity(row[1], row[2])))
                }
                var records: [(key: String, version: UInt64, identities: [UInt64])] = []
                let linkRows = try Row.fetchCursor(
                    db,
                    sql: "SELECT key, version, identities FROM links WHERE graph = ?",
                    arguments: [graph.rawValue]
                )
                while let row = try linkRows.next() {
                    let version = UInt64(bitPattern: row[1] as Int64)
                    records.append((row[0], version, Self.decodeSequences(row[2])))
                }
                states[graph]?.identities = identities
                states[graph]?.records = records
            }
            return states
        }
    }

    public func currentVersions(of records: [RecordSlot]) throws -> [RecordSlot: TakenVersion] {
        try writer.read { db in
            let select = try RawStatement(
                db,
                "SELECT version, sequence FROM current_versions WHERE key = ?1 AND entity = ?2"
            )
            defer { select.finalize() }
            var found: [RecordSlot: TakenVersion] = [:]
            for slot in records where found[slot] == nil {
                try select.bind(1, slot.key)
                try select.bind(2, Int64(slot.entity.rawValue))
                if let row = try select.integers(2) {
                    found[slot] = TakenVersion(
                        version: UInt64(bitPattern: row[0]),
                        sequence: UInt64(bitPattern: row[1])
                    )
                }
            }
            return found
        }
    }

    /// The per-record statements go through SQLite's C API (``RawStatement``): with GRDB's arguments
    /// they cost a few µs each, and a record writes four or five rows.
    public func commit(_ commit: IdentityCommit) throws {
        guard !commit.isEmpty else { return }
        try writer.write { db in
            let accept = try RawStatement(
                db,
                "INSERT OR REPLACE INTO current_versions (key, entity, version, sequence) VALUES (?1, ?2, ?3, ?4)"
            )
            defer { accept.finalize() }
            for (slot, taken) in commit.accepted {
                try accept.bind(1, slot.key)
                try accept.bind(2, Int64(slot.entity.rawValue))
                try accept.bind(3, Int64(bitPattern: taken.version))
                try accept.bind(4, Int64(bitPattern: taken.sequence))
                try accept.run()
            }
            let statements = try GraphStatements(db)
            defer { statements.finalize() }
            for (graph, changes) in commit.graphChanges where !changes.isEmpty {
                try apply(
                    changes,
                    to: graph,
                    provenance: commit.provenance[graph] ?? [:],
                    statements: statements,
                    db: db
                )
            }
            let conflict = try db.cachedStatement(
                sql: """
                    INSERT OR IGNORE INTO conflicts
                        (graph, record_key, namespace, value, kind, detail, clusters, detected_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                    """
            )
            for stored in commit.conflicts {
                let (kind, detail): (String, String)
                switch stored.conflict.kind {
                case .uniqueNamespace(let namespace): (kind, detail) = ("uniqueNamespace", namespace)
                case .clusterCap(let cap): (kind, detail) = ("clusterCap", String(cap))
                }
                try conflict.execute(arguments: [
                    stored.graph.rawValue, stored.conflict.recordKey, stored.conflict.identity.namespace,
                    stored.conflict.identity.value, kind, detail,
                    stored.conflict.clusters.map { String($0.rawValue) }.joined(separator: ","),
                    Self.milliseconds(stored.detectedAt),
                ])
            }
            for (graph, identity) in commit.redactions {
                try db.execute(
                    sql: "DELETE FROM conflicts WHERE graph = ? AND namespace = ? AND value = ?",
                    arguments: [graph.rawValue, identity.namespace, identity.value]
                )
            }
            if let last = commit.updates.last {
                let update = try RawStatement(
                    db,
                    "INSERT INTO outbox (sequence, payload, created_at) VALUES (?1, ?2, ?3)"
                )
                defer { update.finalize() }
                try update.bind(3, Self.milliseconds(commit.committedAt))
                for (sequence, payload) in commit.updates {
                    try update.bind(1, Int64(sequence))
                    try update.bind(2, payload)
                    try update.run()
                }
                try db.execute(
                    sql: "UPDATE counters SET value = value + ? WHERE name = 'pending_updates'",
                    arguments: [commit.updates.count]
                )
                try db.execute(
                    sql: """
                        INSERT INTO counters (name, value) VALUES ('next_update_sequence', ?)
                        ON CONFLICT (name) DO UPDATE SET value = excluded.value
                        """,
                    arguments: [Int64(last.sequence + 1)]
                )
            }
        }
    }

    /// The statements that apply graph changes.
    private struct GraphStatements {
        let addIdentity: RawStatement
        let link: RawStatement
        /// A record re-linked without a new version (an identity it named was removed) keeps where it came
        /// from.
        let relink: RawStatement
        let unlink: RawStatement
        let removeIdentity: RawStatement

        init(_ db: Database) throws {
            addIdentity = try RawStatement(
                db,
                "INSERT INTO identities (graph, sequence, namespace, value) VALUES (?1, ?2, ?3, ?4)"
            )
            link = try RawStatement(
                db,
                """
                INSERT INTO links (graph, key, version, identities, source_type, source_instance, batch_id, ingested_at)
                VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                ON CONFLICT (graph, key) DO UPDATE SET
                    version = excluded.version, identities = excluded.identities,
                    source_type = excluded.source_type, source_instance = excluded.source_instance,
                    batch_id = excluded.batch_id, ingested_at = excluded.ingested_at
                """
            )
            relink = try RawStatement(
                db,
                "UPDATE links SET version = ?1, identities = ?2 WHERE graph = ?3 AND key = ?4"
            )
            unlink = try RawStatement(db, "DELETE FROM links WHERE graph = ?1 AND key = ?2")
            removeIdentity = try RawStatement(db, "DELETE FROM identities WHERE graph = ?1 AND sequence = ?2")
        }

        func finalize() {
            for statement in [addIdentity, link, relink, unlink, removeIdentity] { statement.finalize() }
        }
    }

    private func apply(
        _ changes: [GraphChange],
        to graph: EntityGraph,
        provenance: [String: LinkProvenance],
        statements: GraphStatements,
        db: Database
    ) throws {
        let name = graph.rawValue
        var nextSequence: UInt64 = 0
        for change in changes {
            switch change {
            case .identityAdded(let sequence, let identity):
                let add = statements.addIdentity
                try add.bind(1, name)
                try add.bind(2, Int64(sequence))
                try add.bind(3, identity.namespace)
                try add.bind(4, identity.value)
                try add.run()
                nextSequence = max(nextSequence, sequence + 1)
            case .recordLinked(let key, let version, let identities):
                let blob = Self.encodeSequences(identities)
                if let origin = provenance[key] {
                    let link = statements.link
                    try link.bind(1, name)
                    try link.bind(2, key)
                    try link.bind(3, Int64(bitPattern: version))
                    try link.bind(4, blob)
                    try link.bind(5, origin.source.type)
                    try link.bind(6, origin.source.instance)
                    try link.bind(7, origin.batchID)
                    try link.bind(8, Self.milliseconds(origin.ingestedAt))
                    try link.run()
                } else {
                    let relink = statements.relink
                    try relink.bind(1, Int64(bitPattern: version))
                    try relink.bind(2, blob)
                    try relink.bind(3, name)
                    try relink.bind(4, key)
                    try relink.run()
                }
            case .recordUnlinked(let key):
                try statements.unlink.bind(1, name)
                try statements.unlink.bind(2, key)
                try statements.unlink.run()
            case .identityRemoved(let sequence):
                try statements.removeIdentity.bind(1, name)
                try statements.removeIdentity.bind(2, Int64(sequence))
                try statements.removeIdentity.run()
            }
        }
        try db.execute(
            sql: """
                INSERT INTO graphs (graph, next_sequence) VALUES (?, ?)
                ON CONFLICT (graph) DO UPDATE SET next_sequence = max(next_sequence, excluded.next_sequence)
                """,
            arguments: [name, Int64(max(nextSequence, 1))]
        )
    }

    public func links(in graph: EntityGraph, keys: [String]) throws -> [String: StoredLink] {
        try writer.read { db in
            let statement = try db.cachedStatement(
                sql: """
                    SELECT version, identities, source_type, source_instance, batch_id, ingested_at
                    FROM links WHERE graph = ? AND key = ?
                    """
            )
            var links: [String: StoredLink] = [:]
            for key in keys {
                guard let row = try Row.fetchOne(statement, arguments: [graph.rawValue, key]) else { continue }
                var source = Cdp_Model_V1_Source()
                source.type = row[2]
                source.instance = row[3]
                links[key] = StoredLink(
                    version: UInt64(bitPattern: row[0] as Int64),
                    identities: Self.decodeSequences(row[1]),
                    provenance: LinkProvenance(source: source, batchID: row[4], ingestedAt: Self.date(row[5]))
                )
            }
            return links
        }
    }

    public func conflicts(in graph: EntityGraph?, before: Int64?, limit: Int) throws -> [StoredConflict] {
        try writer.read { db in
            var conditions: [String] = []
            var arguments: StatementArguments = []
            if let graph {
                conditions.append("graph = ?")
                _ = arguments.append(contentsOf: [graph.rawValue])
            }
            if let before {
                conditions.append("id < ?")
                _ = arguments.append(contentsOf: [before])
            }
            let filter = conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND ")
            _ = arguments.append(contentsOf: [limit])
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT id, graph, record_key, namespace, value, kind, detail, clusters, detected_at
                    FROM conflicts \(filter) ORDER BY id DESC LIMIT ?
                    """,
                arguments: arguments
            )
            return rows.compactMap { row in
                guard let graph = EntityGraph(rawValue: row[1]) else { return nil }
                let detail: String = row[6]
                let kind: Conflict.Kind =
                    (row[5] as String) == "clusterCap" ? .clusterCap(Int(detail) ?? 0) : .uniqueNamespace(detail)
                let clusters = (row[7] as String).split(separator: ",").compactMap { UInt64($0) }.map(ClusterID.init)
                return StoredConflict(
                    id: row[0],
                    graph: graph,
                    conflict: Conflict(
                        recordKey: row[2],
                        identity: Identity(row[3], row[4]),
                        kind: kind,
                        clusters: clusters
                    ),
                    detectedAt: Self.date(row[8])
                )
            }
        }
    }

    public func nextUpdateSequence() throws -> UInt64 {
        try writer.read { db in
            let stored = try Int64.fetchOne(db, sql: "SELECT value FROM counters WHERE name = 'next_update_sequence'")
            return UInt64(stored ?? 1)
        }
    }

    // MARK: - Outbox

    public func nextOutboxChunk(limit: Int, maxBytes: Int, after: UpdateChunk?) throws -> UpdateChunk? {
        try writer.read { db in
            let rows = try Row.fetchCursor(
                try db.cachedStatement(
                    sql: "SELECT sequence, payload FROM outbox WHERE sequence > ? ORDER BY sequence LIMIT ?"
                ),
                arguments: [Int64(after?.lastSequence ?? 0), limit]
            )
            var updates: [Data] = []
            var bytes = 0
            var first: UInt64 = 0
            var last: UInt64 = 0
            while let row = try rows.next() {
                let payload: Data = row[1]
                if !updates.isEmpty && bytes + payload.count > maxBytes { break }
                let sequence = UInt64(row[0] as Int64)
                if updates.isEmpty { first = sequence }
                last = sequence
                bytes += payload.count
                updates.append(payload)
            }
            return updates.isEmpty ? nil : UpdateChunk(updates: updates, firstSequence: first, lastSequence: last)
        }
    }

    public func acknowledge(_ chunk: UpdateChunk) throws {
        try writer.write { db in
            try db.execute(
                sql: "DELETE FROM outbox WHERE sequence BETWEEN ? AND ?",
                arguments: [Int64(chunk.firstSequence), Int64(chunk.lastSequence)]
            )
            let count = db.changesCount
            try db.execute(
                sql: "UPDATE counters SET value = max(value - ?, 0) WHERE name = 'pending_updates'",
                arguments: [count]
            )
            try db.execute(
                sql: """
                    INSERT INTO counters (name, value) VALUES ('forwarded_updates', ?)
                    ON CONFLICT (name) DO UPDATE SET value = value + excluded.value
                    """,
                arguments: [count]
            )
        }
    }

    public func outboxStatus() throws -> (pending: UInt64, oldestPending: Date?, forwarded: UInt64) {
        try writer.read { db in
            let pending =
                try Int64.fetchOne(db, sql: "SELECT value FROM counters WHERE name = 'pending_updates'") ?? 0
            let oldest = try Int64.fetchOne(db, sql: "SELECT created_at FROM outbox ORDER BY sequence LIMIT 1")
            let forwarded =
                try Int64.fetchOne(db, sql: "SELECT value FROM counters WHERE name = 'forwarded_updates'") ?? 0
            return (UInt64(pending), oldest.map(Self.date), UInt64(forwarded))
        }
    }

    // MARK: - Encoding

    static func encodeSequences(_ sequences: [UInt64]) -> Data {
        var data = Data(capacity: sequences.count * 8)
        for sequence in sequences { withUnsafeBytes(of: sequence.littleEndian) { data.append(contentsOf: $0) } }
        return data
    }

    static func decodeSequences(_ data: Data) -> [UInt64] {
        data.withUnsafeBytes { raw in
            stride(from: 0, to: raw.count - raw.count % 8, by: 8).map {
                UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: $0, as: UInt64.self))
            }
        }
    }

    static func milliseconds(_ date: Date) -> Int64 { Int64((date.timeIntervalSince1970 * 1000).rounded()) }

    static func date(_ milliseconds: Int64) -> Date { Date(timeIntervalSince1970: Double(milliseconds) / 1000) }

    // MARK: - Privacy

    public func forget(keys: [String]) throws -> Int {
        try writer.write { db in
            var removed = 0
            for key in Set(keys) {
                try db.execute(sql: "DELETE FROM current_versions WHERE key = ?", arguments: [key])
                removed += db.changesCount
                try db.execute(sql: "DELETE FROM conflicts WHERE record_key = ?", arguments: [key])
                removed += db.changesCount
            }
            return removed
        }
    }

    public func clearLog() -> Bool { ServiceDatabase.clearLog(writer) }
}

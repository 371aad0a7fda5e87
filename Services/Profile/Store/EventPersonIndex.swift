import GRDB
import SQLiteSupport
import Synchronization

/// Which events belong to which person: the `event_people` table for the events up to a position of
/// the event log, and a map in memory for the events added since, folded into the table in large
/// sorted batches.
///
/// Why not an index on `events (person_cluster, …)`: person clusters are random, so each event's entry
/// landed on a random leaf of a B-tree of millions of entries, and every commit wrote about one page per
/// event to the write-ahead log and again to the file at the checkpoint. A batch of a few hundred
/// thousand entries inserted in order writes each leaf it touches once, for dozens of entries.
///
/// The `events` table stays the truth. The table holds an entry for every event at or below the
/// position `event_people_through` (a counter), kept exact by merges, splits and deletions in the same
/// transactions; the map holds the event log's positions above it, rebuilt from `events` at open, so a
/// crash loses nothing. The map may also hold entries of transactions that rolled back, and the table
/// entries of events replaced since (a replaced event takes a new position): every reader checks each
/// candidate against its row (``rows(ofPerson:columns:_:)``).
final class EventPersonIndex: Sendable {
    private struct Tail {
        /// The table covers the positions up to here; the map, those above.
        var base: Int64 = 0
        var positions: [UInt64: [Int64]] = [:]
        var count = 0
    }

    private let tail = Mutex(Tail())
    /// How many events the map holds before they are folded into the table.
    let batch: Int

    init(batch: Int) {
        precondition(batch > 0, "a fold needs at least one event")
        self.batch = batch
    }

    /// The schema: the table beside `events`, filled from its rows, instead of the index on them.
    static func migrate(_ db: Database) throws {
        try db.execute(
            sql: """
                CREATE TABLE event_people (
                    person_cluster INTEGER NOT NULL,
                    timestamp INTEGER NOT NULL,
                    event INTEGER NOT NULL,
                    PRIMARY KEY (person_cluster, timestamp, event)
                ) WITHOUT ROWID;
                INSERT INTO event_people (person_cluster, timestamp, event)
                    SELECT person_cluster, timestamp, rowid FROM events ORDER BY person_cluster, timestamp, rowid;
                DROP INDEX events_by_person;
                INSERT OR REPLACE INTO counters (name, value)
                    SELECT 'event_people_through', coalesce(max(rowid), 0) FROM events;
                """
        )
    }

    /// Reads the events above the table's position into the map (at open).
    func load(_ reader: any DatabaseReader) throws {
        let loaded = try reader.read { db in
            var loaded = Tail(base: try Counters.value("event_people_through", db))
            let rows = try Row.fetchCursor(
                db,
                sql: "SELECT rowid, person_cluster FROM events WHERE rowid > ?",
                arguments: [loaded.base]
            )
            while let row = try rows.next() {
                loaded.positions[UInt64(row[1] as Int64), default: []].append(row[0])
                loaded.count += 1
            }
            return loaded
        }
        tail.withLock { $0 = loaded }
    }

    /// Notes an event appended to the log at `position` (above the table's: positions only grow).
    func added(_ position: Int64, person: UInt64) {
        tail.withLock { tail in
            tail.positions[person, default: []].append(position)
            tail.count += 1
        }
    }

    /// Notes an event at `position` that now belongs to `person` (a merge or split moved it): in the
    /// table if the position is folded, else in the map.
    func moved(_ position: Int64, to person: UInt64, _ db: Database) throws {
        guard position <= (try Counters.value("event_people_through", db)) else {
            added(position, person: person)
            return
        }
        try db.cachedStatement(
            sql: """
                INSERT OR IGNORE INTO event_people (person_cluster, timestamp, event)
                    SELECT person_cluster, timestamp, rowid FROM events WHERE rowid = ?
                """
        ).execute(arguments: [position])
    }

    /// Removes the table's entry of an event whose row is deleted or moves to another person (entries
    /// in the map are checked against the row when read).
    func remove(_ position: Int64, person: UInt64, timestamp: Int64, _ db: Database) throws {
        try db.cachedStatement(
            sql: "DELETE FROM event_people WHERE person_cluster = ? AND timestamp = ? AND event = ?"
        ).execute(arguments: [Int64(person), timestamp, position])
    }

    /// The positions that may hold `person`'s events, in order; readers check each against its row.
    func candidates(ofPerson person: UInt64, _ db: Database) throws -> [Int64] {
        let through = try Counters.value("event_people_through", db)
        var positions = try Int64.fetchAll(
            try db.cachedStatement(sql: "SELECT event FROM event_people WHERE person_cluster = ?"),
            arguments: [Int64(person)]
        )
        let (base, recent) = tail.withLock { ($0.base, $0.positions[person] ?? []) }
        if base > through {
            // This snapshot is older than a fold the map has already forgotten: the events between
            // are found in the log itself (a short range; only a reader that started before the fold
            // gets here).
            positions += try Int64.fetchAll(
                try db.cachedStatement(
                    sql: "SELECT rowid FROM events WHERE rowid > ? AND rowid <= ? AND person_cluster = ?"
                ),
                arguments: [through, base, Int64(person)]
            )
        }
        // A fold committed but not yet forgotten by the map: what it folded is in the table.
        let above = max(base, through)
        positions += recent.filter { $0 > above }
        return Array(Set(positions)).sorted()
    }

    /// The rows of `person`'s events: `columns` (SQL, read from `events`) of each candidate whose row
    /// still names the person.
    func rows(ofPerson person: UInt64, columns: String, _ db: Database) throws -> [Row] {
        let statement = try db.cachedStatement(
            sql: "SELECT \(columns) FROM events WHERE rowid = ? AND person_cluster = ?"
        )
        return try candidates(ofPerson: person, db).compactMap { position in
            try Row.fetchOne(statement, arguments: [position, Int64(person)])
        }
    }

    /// Folds the map into the table, in order, once it holds a batch. Called at the end of a write
    /// transaction, after the event log's end is saved; the map forgets what was folded only when the
    /// transaction commits.
    func foldIfDue(_ db: Database) throws {
        guard tail.withLock({ $0.count }) >= batch else { return }
        let through = try Counters.value("event_people_through", db)
        let end = try Counters.value("event_log_end", db)
        guard end > through else { return }
        // Read from the rows, not the map: they name each event's person as it is now, and events
        // deleted or rolled back are not there.
        try db.execute(
            sql: """
                INSERT OR IGNORE INTO event_people (person_cluster, timestamp, event)
                    SELECT person_cluster, timestamp, rowid FROM events WHERE rowid > ? AND rowid <= ?
                    ORDER BY person_cluster, timestamp, rowid
                """,
            arguments: [through, end]
        )
        try Counters.set("event_people_through", end, db)
        db.afterNextTransaction(onCommit: { [self] _ in
            self.tail.withLock { tail in
                // Only this fold's positions go: the writer is serial, so nothing above `end` came yet,
                // but a filter keeps the map right whatever the order.
                tail.base = max(tail.base, end)
                var count = 0
                tail.positions = tail.positions.compactMapValues { positions in
                    let kept = positions.filter { $0 > end }
                    count += kept.count
                    return kept.isEmpty ? nil : kept
                }
                tail.count = count
            }
        })
    }
}

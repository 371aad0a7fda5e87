import GRDB
import SQLiteSupport
import Synchronization

/// Which events belong to which person: the `event_people` table for the events up to a position of
/// the event log, and a map in memory for the events added since, folded into the table in large
/// sorted batches.
///
/// Why not an index on `events (person_cluster, …)`: each event's entry landed on a random leaf of a
/// B-tree of millions of entries (a person's events come among everyone else's), and every commit
/// wrote about one page per event to the write-ahead log and again to the file at the checkpoint.
/// Entries inserted together in key order write each leaf they touch once, for several entries.
///
/// The table is cut into ``slices`` by a hash of the person cluster, each a contiguous range of its
/// keys (the slice is the first column), and each slice covers the events up to a position of its
/// own (the counter `event_people_through_S`): a fold moves one slice's events from the map into its
/// range of the table, so it touches a 64th of the table's leaves for a 64th of the events
/// (as dense as folding everything at once), and one apply waits for a 64th of the work.
///
/// The `events` table stays the truth. The table holds an entry for every event of a slice's persons
/// at or below the slice's position, kept exact by merges, splits and deletions in the same
/// transactions; the map holds those above it with their times, rebuilt from `events` at open, so a
/// crash loses nothing, and is folded without reading a row. The map may also hold entries of
/// transactions that rolled back (and the table, once they are folded), and the table entries of
/// events replaced since (a replaced event takes a new position): every reader checks each candidate
/// against its row (``rows(ofPerson:columns:_:)``).
final class EventPersonIndex: Sendable {
    /// How many slices the table and the map are cut into.
    static let slices = 1 << sliceBits
    private static let sliceBits = 6

    /// An event in the map: its position in the event log and its time.
    private struct Entry {
        var position: Int64
        var timestamp: Int64
    }

    private struct Tail {
        /// Each slice's position: the table covers its events up to here, the map those above.
        var through = [Int64](repeating: 0, count: EventPersonIndex.slices)
        /// Each slice's persons' events above its position.
        var entries = [[UInt64: [Entry]]](repeating: [:], count: EventPersonIndex.slices)
        var counts = [Int](repeating: 0, count: EventPersonIndex.slices)
        var total = 0

        mutating func append(_ entry: Entry, person: UInt64) {
            let slice = EventPersonIndex.slice(person)
            entries[slice][person, default: []].append(entry)
            counts[slice] += 1
            total += 1
        }

        /// Removes the person's entries at `positions`, in one pass over their list.
        mutating func remove(_ positions: Set<Int64>, person: UInt64) {
            let slice = EventPersonIndex.slice(person)
            guard let list = entries[slice][person] else { return }
            let kept = list.filter { !positions.contains($0.position) }
            entries[slice][person] = kept.isEmpty ? nil : kept
            counts[slice] -= list.count - kept.count
            total -= list.count - kept.count
        }
    }

    private let tail = Mutex(Tail())
    /// How many events the map holds before a slice of them is folded into the table.
    let batch: Int

    init(batch: Int) {
        precondition(batch > 0, "a fold needs at least one event")
        self.batch = batch
    }

    /// A person's slice: the top bits of a multiplicative hash of the cluster (cluster ids are sequence
    /// numbers, which a modulus could spread unevenly).
    static func slice(_ person: UInt64) -> Int { Int((person &* 0x9E37_79B9_7F4A_7C15) >> (64 - sliceBits)) }

    /// The name of a slice's position in `counters` (made once: readers and moves ask for it often).
    static func counter(_ slice: Int) -> String { counterNames[slice] }

    private static let counterNames = (0..<slices).map { "event_people_through_\($0)" }

    /// The schema: the table beside `events`, filled from its rows, instead of the index on them.
    static func migrate(_ db: Database) throws {
        db.add(
            function: DatabaseFunction("event_people_slice", argumentCount: 1, pure: true) { values in
                Int64.fromDatabaseValue(values[0]).map { Int64(slice(UInt64($0))) }
            }
        )
        try db.execute(
            sql: """
                CREATE TABLE event_people (
                    slice INTEGER NOT NULL,
                    person_cluster INTEGER NOT NULL,
                    timestamp INTEGER NOT NULL,
                    event INTEGER NOT NULL,
                    PRIMARY KEY (slice, person_cluster, timestamp, event)
                ) WITHOUT ROWID;
                INSERT INTO event_people (slice, person_cluster, timestamp, event)
                    SELECT event_people_slice(person_cluster), person_cluster, timestamp, rowid FROM events
                    ORDER BY 1, 2, 3, 4;
                DROP INDEX events_by_person;
                """
        )
        let end = try Int64.fetchOne(db, sql: "SELECT coalesce(max(rowid), 0) FROM events") ?? 0
        for slice in 0..<slices { try Counters.set(counter(slice), end, db) }
    }

    /// Reads the events above each slice's position into the map (at open).
    func load(_ reader: any DatabaseReader) throws {
        let loaded = try reader.read { db in
            var loaded = Tail()
            for slice in 0..<Self.slices { loaded.through[slice] = try Counters.value(Self.counter(slice), db) }
            let rows = try Row.fetchCursor(
                db,
                sql: "SELECT rowid, person_cluster, timestamp FROM events WHERE rowid > ?",
                arguments: [loaded.through.min() ?? 0]
            )
            while let row = try rows.next() {
                let entry = Entry(position: row[0], timestamp: row[2])
                let person = UInt64(row[1] as Int64)
                if entry.position > loaded.through[Self.slice(person)] { loaded.append(entry, person: person) }
            }
            return loaded
        }
        tail.withLock { $0 = loaded }
    }

    /// Notes an event appended to the log at `position` (above every slice's position: positions only
    /// grow, and a fold covers only what was logged before it).
    func added(_ position: Int64, person: UInt64, timestamp: Int64) {
        tail.withLock { $0.append(Entry(position: position, timestamp: timestamp), person: person) }
    }

    /// Notes an event at `position` that now belongs to `person` (a merge or split moved it): in the
    /// table if the person's slice covers the position, else in the map.
    func moved(_ position: Int64, to person: UInt64, timestamp: Int64, _ db: Database) throws {
        guard position <= (try Counters.value(Self.counter(Self.slice(person)), db)) else {
            added(position, person: person, timestamp: timestamp)
            return
        }
        try insert(Entry(position: position, timestamp: timestamp), person: person, db)
    }

    private func insert(_ entry: Entry, person: UInt64, _ db: Database) throws {
        try db.cachedStatement(
            sql: "INSERT OR IGNORE INTO event_people (slice, person_cluster, timestamp, event) VALUES (?, ?, ?, ?)"
        ).execute(arguments: [Self.slice(person), Int64(person), entry.timestamp, entry.position])
    }

    /// Removes the entries of events of `person` whose rows are deleted or move to another person,
    /// from the table and from the map.
    func remove(_ events: [(position: Int64, timestamp: Int64)], person: UInt64, _ db: Database) throws {
        let statement = try db.cachedStatement(
            sql: "DELETE FROM event_people WHERE slice = ? AND person_cluster = ? AND timestamp = ? AND event = ?"
        )
        for event in events {
            try statement.execute(arguments: [Self.slice(person), Int64(person), event.timestamp, event.position])
        }
        tail.withLock { $0.remove(Set(events.map(\.position)), person: person) }
    }

    /// The positions that may hold `person`'s events, in order; readers check each against its row.
    func candidates(ofPerson person: UInt64, _ db: Database) throws -> [Int64] {
        let slice = Self.slice(person)
        let through = try Counters.value(Self.counter(slice), db)
        var positions = try Int64.fetchAll(
            try db.cachedStatement(sql: "SELECT event FROM event_people WHERE slice = ? AND person_cluster = ?"),
            arguments: [slice, Int64(person)]
        )
        let (base, recent) = tail.withLock { ($0.through[slice], $0.entries[slice][person] ?? []) }
        if base > through {
            // This snapshot is older than a fold the map has already forgotten: the events between
            // are found in the log itself (only a reader that started before the fold gets here).
            positions += try Int64.fetchAll(
                try db.cachedStatement(
                    sql: "SELECT rowid FROM events WHERE rowid > ? AND rowid <= ? AND person_cluster = ?"
                ),
                arguments: [through, base, Int64(person)]
            )
        }
        // A fold committed but not yet forgotten by the map: what it folded is in the table.
        let above = max(base, through)
        positions += recent.lazy.map(\.position).filter { $0 > above }
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

    /// Once the map holds a batch, folds its largest slice into the table, in key order. Called at the
    /// end of a write transaction, after the event log's end is saved; the map forgets what was folded
    /// only when the transaction commits.
    func foldIfDue(_ db: Database) throws {
        guard
            let (slice, persons) = tail.withLock({ tail -> (Int, [UInt64: [Entry]])? in
                guard tail.total >= batch,
                    let slice = tail.counts.indices.max(by: { tail.counts[$0] < tail.counts[$1] })
                else { return nil }
                return (slice, tail.entries[slice])
            })
        else { return }
        let end = try Counters.value("event_log_end", db)
        // Every event of the slice's persons above its position is in the map (added or moved there),
        // so the slice then covers the whole log.
        for person in persons.keys.sorted() {
            for entry in persons[person]!.sorted(by: { ($0.timestamp, $0.position) < ($1.timestamp, $1.position) }) {
                try insert(entry, person: person, db)
            }
        }
        try Counters.set(Self.counter(slice), end, db)
        db.afterNextTransaction(onCommit: { [self] _ in
            self.tail.withLock { tail in
                // The writer is serial: nothing was added to the slice since it was read.
                tail.through[slice] = max(tail.through[slice], end)
                tail.total -= tail.counts[slice]
                tail.counts[slice] = 0
                tail.entries[slice] = [:]
            }
        })
    }
}

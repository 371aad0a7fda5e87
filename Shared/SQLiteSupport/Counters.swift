import GRDB

/// Named integer counters in a service's `counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)`
/// table (sequence numbers, positions, running counts), read and written inside the caller's
/// transaction through cached statements: stores touch them on every commit.
public enum Counters {
    /// The counter's value; 0 if it was never set.
    public static func value(_ name: String, _ db: Database) throws -> Int64 {
        try Int64.fetchOne(try db.cachedStatement(sql: "SELECT value FROM counters WHERE name = ?"), arguments: [name])
            ?? 0
    }

    /// Sets the counter to `value`.
    public static func set(_ name: String, _ value: Int64, _ db: Database) throws {
        try db.cachedStatement(
            sql: """
                INSERT INTO counters (name, value) VALUES (?, ?)
                ON CONFLICT (name) DO UPDATE SET value = excluded.value
                """
        ).execute(arguments: [name, value])
    }

    /// Adds `amount` (which may be negative) to the counter.
    public static func add(_ name: String, _ amount: Int64, _ db: Database) throws {
        try db.cachedStatement(
            sql: """
                INSERT INTO counters (name, value) VALUES (?, ?)
                ON CONFLICT (name) DO UPDATE SET value = value + excluded.value
                """
        ).execute(arguments: [name, amount])
    }
}

import Foundation
import GRDB
import GRDBSQLite

/// A prepared statement driven through SQLite's C API, for the statements that run once per record.
///
/// GRDB's `StatementArguments` box every value, which costs a few µs per statement (measured in the
/// ingestion store); these statements bind directly. Values are copied by SQLite when bound
/// (`SQLITE_TRANSIENT`), so Swift buffers need not outlive a call. Use it inside a GRDB write or read
/// block, and not after the block ends.
///
/// The statement is the connection's cached one for `sql` (GRDB's statement cache), so a statement
/// run in every transaction is prepared once per connection, not once per transaction (parsing was
/// 2% of identity's CPU). Every method leaves it reset, so it can be taken again for the same SQL.
public final class RawStatement {
    private let connection: OpaquePointer
    /// Holds GRDB's statement, which owns the handle, for as long as this one is used.
    private let statement: Statement
    private let handle: OpaquePointer
    /// SQLite's "copy the value now" destructor sentinel.
    private static let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

    /// Takes the cached statement for `sql` on the connection of `db` (preparing it the first time).
    public init(_ db: Database, _ sql: String) throws {
        guard let connection = db.sqliteConnection else { throw SQLiteError("the database is closed") }
        statement = try db.cachedStatement(sql: sql)
        self.connection = connection
        self.handle = statement.sqliteStatement
    }

    /// Binds text to the parameter at `index` (1-based).
    public func bind(_ index: Int32, _ text: String) throws {
        var text = text
        let code = text.withUTF8 { bytes in
            sqlite3_bind_text(handle, index, bytes.baseAddress, Int32(bytes.count), Self.transient)
        }
        try check(code, "bind")
    }

    /// Binds an integer to the parameter at `index` (1-based).
    public func bind(_ index: Int32, _ value: Int64) throws {
        try check(sqlite3_bind_int64(handle, index, value), "bind")
    }

    /// Binds a blob to the parameter at `index` (1-based).
    public func bind(_ index: Int32, _ data: Data) throws {
        let code = data.withUnsafeBytes { bytes in
            // A zero-length blob still needs a non-null pointer to be a blob rather than NULL.
            sqlite3_bind_blob(
                handle,
                index,
                bytes.baseAddress ?? UnsafeRawPointer(bitPattern: 1),
                Int32(bytes.count),
                Self.transient
            )
        }
        try check(code, "bind")
    }

    /// Steps the statement to its end and resets it for the next values; returns the number of rows it
    /// changed.
    @discardableResult
    public func run() throws -> Int {
        let code = sqlite3_step(handle)
        sqlite3_reset(handle)
        guard code == SQLITE_DONE else { throw Self.error(connection, code, "step") }
        return Int(sqlite3_changes(connection))
    }

    /// Steps the statement once and tells whether it produced a row, then resets it.
    public func hasRow() throws -> Bool {
        let code = sqlite3_step(handle)
        sqlite3_reset(handle)
        guard code == SQLITE_ROW || code == SQLITE_DONE else { throw Self.error(connection, code, "step") }
        return code == SQLITE_ROW
    }

    /// Steps the statement once and returns the integer columns `0..<columns` of the row it produced
    /// (nil when it produced none), then resets it.
    public func integers(_ columns: Int32) throws -> [Int64]? {
        let code = sqlite3_step(handle)
        defer { sqlite3_reset(handle) }
        guard code == SQLITE_ROW || code == SQLITE_DONE else { throw Self.error(connection, code, "step") }
        guard code == SQLITE_ROW else { return nil }
        return (0..<columns).map { sqlite3_column_int64(handle, $0) }
    }

    /// Steps the statement once and returns the integer in the first column of the row it produced
    /// (nil when it produced none, or when that column is NULL), then resets it.
    public func integer() throws -> Int64? {
        let code = sqlite3_step(handle)
        defer { sqlite3_reset(handle) }
        guard code == SQLITE_ROW || code == SQLITE_DONE else { throw Self.error(connection, code, "step") }
        guard code == SQLITE_ROW, sqlite3_column_type(handle, 0) != SQLITE_NULL else { return nil }
        return sqlite3_column_int64(handle, 0)
    }

    /// The rowid of the last row inserted on the connection.
    public var lastInsertedRowID: Int64 { sqlite3_last_insert_rowid(connection) }

    /// Done with the statement: it stays in the connection's cache, reset, for the next user.
    public func finalize() { sqlite3_reset(handle) }

    private func check(_ code: Int32, _ operation: String) throws {
        guard code == SQLITE_OK else { throw Self.error(connection, code, operation) }
    }

    private static func error(_ connection: OpaquePointer, _ code: Int32, _ operation: String) -> SQLiteError {
        SQLiteError("SQLite \(operation) failed (\(code)): \(String(cString: sqlite3_errmsg(connection)))")
    }
}

/// A failure of a ``RawStatement``.
public struct SQLiteError: Error, CustomStringConvertible {
    /// What failed.
    public var description: String

    /// Creates an error.
    public init(_ description: String) { self.description = description }
}

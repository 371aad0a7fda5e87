import GRDB

/// How every service opens its SQLite database.
public enum ServiceDatabase {
    /// Opens (creating if needed) the database at `path` in WAL mode with `synchronous = NORMAL` (a
    /// commit survives a crash of the process, which is what an acknowledgement promises; it may not
    /// survive a power loss of the machine), runs `pragmas` on every connection, and migrates it.
    ///
    /// `secure_delete`: deleted content is overwritten with zeros, so that data a privacy request erased
    /// does not linger in the file's free pages (the write-ahead log is cleared by ``clearLog(_:)``).
    ///
    /// The write-ahead log is copied into the database on a thread of its own once it holds
    /// `checkpointAfter` pages (SQLite's default is 1,000), instead of inside the commit that grew it
    /// (``BackgroundCheckpointer``); `pragmas` must not set `wal_autocheckpoint`, which would undo that.
    public static func open(
        path: String,
        migrator: DatabaseMigrator,
        pragmas: [String] = [],
        checkpointAfter pages: Int = 1000
    ) throws -> DatabasePool {
        precondition(!pragmas.contains { $0.contains("wal_autocheckpoint") }, "checkpointAfter sets it")
        let checkpointer = BackgroundCheckpointer(path: path, threshold: pages)
        var configuration = Configuration()
        // The closure holds the checkpointer for as long as the pool's connections live.
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
            try db.execute(sql: "PRAGMA secure_delete = ON")
            for pragma in pragmas { try db.execute(sql: "PRAGMA " + pragma) }
            if let connection = db.sqliteConnection { checkpointer.install(on: connection) }
        }
        let pool = try DatabasePool(path: path, configuration: configuration)
        try migrator.migrate(pool)
        return pool
    }

    /// A database in memory, for tests: the same schema through the same migrator.
    public static func inMemory(migrator: DatabaseMigrator) throws -> DatabaseQueue {
        let queue = try DatabaseQueue(configuration: Configuration())
        try migrator.migrate(queue)
        return queue
    }

    /// Copies the write-ahead log into the database and truncates it to nothing (a privacy request's
    /// last step: the log still holds pages written before data was deleted). False when readers kept
    /// part of it in use; a later call finishes.
    public static func clearLog(_ writer: any DatabaseWriter) -> Bool {
        guard let pool = writer as? DatabasePool else { return true }
        do {
            let result = try pool.writeWithoutTransaction { db in try db.checkpoint(.truncate) }
            return result.walFrameCount == result.checkpointedFrameCount
        } catch {
            return false
        }
    }
}

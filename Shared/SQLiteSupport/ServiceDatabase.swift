import GRDB

/// How every service opens its SQLite database.
public enum ServiceDatabase {
    /// Opens (creating if needed) the database at `path` in WAL mode with `synchronous = NORMAL` (a
    /// commit survives a crash of the process, which is what an acknowledgement promises; it may not
    /// survive a power loss of the machine), runs `pragmas` on every connection, and migrates it.
    public static func open(path: String, migrator: DatabaseMigrator, pragmas: [String] = []) throws -> DatabasePool {
        var configuration = Configuration()
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
            for pragma in pragmas { try db.execute(sql: "PRAGMA " + pragma) }
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
}

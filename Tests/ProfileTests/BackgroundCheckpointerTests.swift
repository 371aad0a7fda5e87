import Foundation
import GRDB
import Testing

@testable import SQLiteSupport

/// The write-ahead log is copied into the database by a thread of the database's own, not by the
/// commit that grew it.
@Suite struct BackgroundCheckpointerTests {
    private static func database(checkpointAfter pages: Int) throws -> (pool: DatabasePool, path: String) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("checkpoint-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var migrator = DatabaseMigrator()
        migrator.registerMigration("a table") { db in
            try db.execute(sql: "CREATE TABLE t (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        }
        let path = directory.appendingPathComponent("t.sqlite").path
        return (try ServiceDatabase.open(path: path, migrator: migrator, checkpointAfter: pages), path)
    }

    private static func size(_ path: String) -> Int {
        ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int) ?? 0
    }

    @Test func aLogPastTheThresholdIsCopiedIntoTheDatabase() async throws {
        let (pool, path) = try Self.database(checkpointAfter: 100)
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        // 150 commits of a page each: past the threshold (100 pages) and below the limit at which a
        // commit copies the log itself (400), so only the checkpointer's thread copies it.
        for _ in 0..<150 {
            try await pool.write { db in try db.execute(sql: "INSERT INTO t (data) VALUES (zeroblob(3000))") }
        }
        // Until it is copied, the database file holds none of the rows (a page each): then at least the
        // 100 that asked for the checkpoint.
        var copied = false
        for _ in 0..<400 where !copied {
            copied = Self.size(path) >= 100 * 4096
            if !copied { try await Task.sleep(for: .milliseconds(50)) }
        }
        #expect(copied, "the database file has \(Self.size(path)) bytes")
        // Writes go on beside the copy, and after it.
        for _ in 0..<50 {
            try await pool.write { db in try db.execute(sql: "INSERT INTO t (data) VALUES (zeroblob(3000))") }
        }
        #expect(try await pool.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM t") } == 200)
    }

    @Test func belowTheThresholdNothingIsCopied() async throws {
        let (pool, path) = try Self.database(checkpointAfter: 1000)
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        for _ in 0..<150 {
            try await pool.write { db in try db.execute(sql: "INSERT INTO t (data) VALUES (zeroblob(3000))") }
        }
        try await Task.sleep(for: .milliseconds(300))
        #expect(Self.size(path) < 150 * 3000)
    }

    @Test func aRemovedDatabaseIsNotCreatedAgain() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("gone-\(UUID().uuidString).sqlite")
            .path
        BackgroundCheckpointer(path: path, threshold: 1).checkpoint()
        #expect(!FileManager.default.fileExists(atPath: path))
    }
}

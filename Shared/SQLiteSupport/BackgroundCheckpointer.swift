import Dispatch
import GRDBSQLite
import Synchronization

/// Copies a database's write-ahead log into the database file on a thread of its own, so that the
/// connection that writes does not wait for it.
///
/// SQLite's own automatic checkpoint runs inside the commit that grows the log past its limit, on the
/// writing thread, and ends with an `fsync` of the database file: with `synchronous = NORMAL` that
/// wait is the only one a commit has. Measured on the pipeline (profile applying events after every
/// upload was acknowledged), profile's writing thread spent most of the time it did not run blocked
/// in that `fsync` while the machine had a third of its CPU idle.
///
/// Installed on the writing connection as its write-ahead-log hook (in place of the automatic
/// checkpoint): after a commit that leaves `threshold` frames or more in the log, a passive checkpoint
/// runs on a connection of its own, opened for it. A passive checkpoint waits for nobody: it copies
/// what no reader still needs, and the writer starts the log again from its beginning once all of it
/// was copied. Should the log still reach `limit` frames (the copying falls behind the writer), the
/// commit checkpoints itself, as SQLite would.
///
/// Durability is the same as with the automatic checkpoint: a checkpoint syncs the log, copies, and
/// syncs the database before it counts the frames as copied.
final class BackgroundCheckpointer: Sendable {
    /// The database file.
    let path: String
    /// The log's size in frames (pages) from which a commit asks for a checkpoint.
    let threshold: Int32
    /// The log's size in frames from which a commit checkpoints on its own thread.
    let limit: Int32
    private let running = Mutex(false)
    private let queue = DispatchQueue(label: "sqlite-checkpoint")

    /// A checkpointer for the database at `path`, asking for a checkpoint from `threshold` frames and
    /// checkpointing in the commit from four times that many.
    init(path: String, threshold: Int) {
        precondition(threshold > 0 && threshold < Int(Int32.max) / 4)
        self.path = path
        self.threshold = Int32(threshold)
        self.limit = Int32(threshold * 4)
    }

    /// Installs the checkpointer on `connection` (replacing its automatic checkpoint). The checkpointer
    /// must outlive the connection: it is not retained by it.
    func install(on connection: OpaquePointer) {
        sqlite3_wal_hook(connection, Self.hook, Unmanaged.passUnretained(self).toOpaque())
    }

    /// Called by SQLite after each commit on the installed connection, on its thread.
    private static let hook:
        @convention(c) (UnsafeMutableRawPointer?, OpaquePointer?, UnsafePointer<CChar>?, Int32)
            -> Int32 = { context, connection, _, frames in
                guard let context else { return SQLITE_OK }
                let checkpointer = Unmanaged<BackgroundCheckpointer>.fromOpaque(context).takeUnretainedValue()
                checkpointer.committed(frames: frames, connection: connection)
                return SQLITE_OK
            }

    private func committed(frames: Int32, connection: OpaquePointer?) {
        if frames >= limit {
            // Fell behind: this commit pays, as without the checkpointer. Busy (another checkpoint is
            // running) is fine: that one copies.
            sqlite3_wal_checkpoint_v2(connection, nil, SQLITE_CHECKPOINT_PASSIVE, nil, nil)
            return
        }
        guard frames >= threshold else { return }
        let start = running.withLock { running in
            if running { return false }
            running = true
            return true
        }
        guard start else { return }
        queue.async { [self] in
            checkpoint()
            running.withLock { $0 = false }
        }
    }

    /// One passive checkpoint on a connection opened for it. The file is opened without creating it: a
    /// database removed meanwhile is left removed. A checkpoint that cannot run (busy, or the file cannot
    /// be opened) leaves the log to the next commit past the threshold, or to the commit at the limit.
    func checkpoint() {
        var connection: OpaquePointer?
        defer { sqlite3_close_v2(connection) }
        guard sqlite3_open_v2(path, &connection, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nil) == SQLITE_OK
        else { return }
        sqlite3_exec(connection, "PRAGMA synchronous = NORMAL", nil, nil, nil)
        sqlite3_wal_checkpoint_v2(connection, nil, SQLITE_CHECKPOINT_PASSIVE, nil, nil)
    }
}

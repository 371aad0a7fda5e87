import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// An exclusive lock on a data directory (`flock` on `DIR/cdp-up.lock`), held while one set of local
/// services runs on it: two `cdp up` on one directory would run two services on each database.
///
/// The lock belongs to this process's open file (close-on-exec, so the services do not inherit it) and
/// ends with it: a `cdp up` that is killed leaves no stale lock. The file holds the holder's pid, for the
/// message the next one prints.
final class DataDirectoryLock: Sendable {
    private let descriptor: Int32

    /// Takes the lock, or throws naming the process that holds it.
    init(directory: String) throws {
        let path = directory + "/cdp-up.lock"
        let descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else {
            throw LocalServices.Failure(description: "cannot open \(path): \(String(cString: strerror(errno)))")
        }
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            let holder = (try? String(contentsOfFile: path, encoding: .utf8))?
                .trimmingCharacters(in: .whitespacesAndNewlines)
            close(descriptor)
            throw LocalServices.Failure(
                description: "\(directory) is in use by another cdp up"
                    + (holder.map { $0.isEmpty ? "" : " (pid \($0))" } ?? "")
                    + ": stop it first, or give another --data-dir"
            )
        }
        let pid = Array("\(getpid())\n".utf8)
        _ = ftruncate(descriptor, 0)
        _ = pid.withUnsafeBytes { pwrite(descriptor, $0.baseAddress, $0.count, 0) }
        self.descriptor = descriptor
    }

    deinit {
        close(descriptor)
    }
}

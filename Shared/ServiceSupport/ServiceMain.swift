import Foundation
import Logging
import RPCHTTP2
import ServiceLifecycle

/// What every service executable does the same way: logs to standard error, finds and creates its
/// data directory, binds and announces its server, and runs until SIGTERM or SIGINT.
public enum ServiceMain {
    /// Sends logs to standard error at `level` (a `Logger.Level` name; `info` if it is not one).
    public static func bootstrapLogging(level: String) {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = Logger.Level(rawValue: level) ?? .info
            return handler
        }
    }

    /// The value of the environment variable `variable`, nil when it is unset or empty (compose files pass
    /// variables set to nothing).
    public static func variable(_ variable: String) -> String? {
        guard let value = ProcessInfo.processInfo.environment[variable], !value.isEmpty else { return nil }
        return value
    }

    /// The value of the environment variable `variable` when it is set and not empty, else `fallback`:
    /// the default of a flag that `CDP_*` variables stand in for (a flag given on the command line wins).
    public static func environment(_ variable: String, default fallback: String) -> String {
        guard let value = ProcessInfo.processInfo.environment[variable], !value.isEmpty else { return fallback }
        return value
    }

    /// The integer in the environment variable `variable` when it is set and not empty, else
    /// `fallback`; -1 when it is not an integer, which every flag this serves refuses as out of range.
    public static func environment(_ variable: String, default fallback: Int) -> Int {
        guard let value = ProcessInfo.processInfo.environment[variable], !value.isEmpty else { return fallback }
        return Int(value) ?? -1
    }

    /// The service's data directory, created if needed: `flag` (`--data-dir`), else
    /// `$CDP_DATA_DIR/<service>`, else `./data/<service>`.
    public static func dataDirectory(_ flag: String?, service: String) throws -> String {
        let directory =
            flag
            ?? (ProcessInfo.processInfo.environment["CDP_DATA_DIR"].flatMap { $0.isEmpty ? nil : $0 + "/" + service }
                ?? "./data/" + service)
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw StartupError(
                "cannot create the data directory \(directory) (from --data-dir or $CDP_DATA_DIR): "
                    + error.localizedDescription
            )
        }
        return directory
    }

    /// The error for a database that does not open, naming the directory and where it came from.
    public static func databaseError(_ directory: String, _ error: any Error) -> StartupError {
        StartupError(
            "cannot open the database in \(directory) (from --data-dir or $CDP_DATA_DIR): \(error.localizedDescription)"
        )
    }

    /// Binds `server` and prints `listening on HOST:PORT` on standard output (what scripts wait for);
    /// returns the port bound.
    public static func start(_ server: RPCServer, host: String, port: Int) async throws -> Int {
        let bound: Int
        do {
            bound = try await server.start().port ?? port
        } catch {
            throw StartupError("cannot listen on \(host):\(port) (--host, --port): \(error)")
        }
        FileHandle.standardOutput.write(Data("listening on \(host):\(bound)\n".utf8))
        return bound
    }

    /// Runs `services` until SIGTERM or SIGINT starts a graceful shutdown. A service started by `cdp up`
    /// or `cdp demo` (`CDP_PARENT_PID` names that process) also shuts down gracefully once its parent is
    /// gone, however it ended (`cdp demo | head`, SIGKILL), instead of running on unattended.
    public static func run(_ services: [any Service], logger: Logger) async throws {
        if let parent = variable(parentVariable).flatMap(pid_t.init) { stopWhenGone(parent: parent, logger: logger) }
        try await ServiceGroup(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger).run()
    }

    /// The variable in which the process that starts the services passes its process id.
    public static let parentVariable = "CDP_PARENT_PID"

    /// Sends this process SIGTERM (the graceful shutdown) once its parent process is no longer
    /// `parent`: the parent ended and the process was handed to another (checked twice a second).
    private static func stopWhenGone(parent: pid_t, logger: Logger) {
        Task.detached {
            while getppid() == parent {
                try? await Task.sleep(for: .milliseconds(500))
            }
            logger.notice("the process that started this service (pid \(parent)) is gone: stopping")
            kill(getpid(), SIGTERM)
        }
    }
}

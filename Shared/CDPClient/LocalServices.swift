import Foundation
import RPCCore
import ServiceSupport

/// The five service executables run as child processes on one machine, on the embedded default
/// (SQLite under one data directory): what `cdp up` and `cdp demo` start.
///
/// Each service gets `--host`, `--port` (port base + its offset), `--data-dir DATA/<service>` and the
/// addresses of its peers; its standard output and error go to `DATA/logs/<service>.log`.
public final class LocalServices: Sendable {
    /// What to start.
    public struct Configuration: Sendable {
        /// The directory holding one data directory per service, and `logs/`.
        public var dataDirectory: String
        /// The address the services bind and are called on.
        public var host: String
        /// Ingestion's port; the others follow (``ServiceName/portOffset``).
        public var portBase: Int
        /// Where the `cdp-*` executables are; nil: next to the running executable, else on `PATH`.
        public var binDirectory: String?
        /// The services' `--log-level`.
        public var logLevel: String

        /// Creates a configuration.
        public init(
            dataDirectory: String,
            host: String = "127.0.0.1",
            portBase: Int = ServiceName.defaultPortBase,
            binDirectory: String? = nil,
            logLevel: String = "info"
        ) {
            self.dataDirectory = dataDirectory
            self.host = host
            self.portBase = portBase
            self.binDirectory = binDirectory
            self.logLevel = logLevel
        }

        /// The address `service` listens on.
        public func address(of service: ServiceName) -> HostPort {
            HostPort(host: host, port: portBase + service.portOffset)
        }

        /// The endpoints clients use to call these services.
        public var endpoints: ServiceEndpoints {
            // The host and port base are valid by construction; the environment must not override them.
            try! ServiceEndpoints(host: host, portBase: portBase, environment: [:])
        }

        /// The command line of `service`, peers included.
        public func arguments(of service: ServiceName) -> [String] {
            var arguments = [
                "--host", host, "--port", "\(portBase + service.portOffset)",
                "--data-dir", dataDirectory + "/" + service.rawValue, "--log-level", logLevel,
            ]
            let peers: [(String, ServiceName)] =
                switch service {
                case .ingestion: [("--identity", .identity)]
                case .identity: [("--profile", .profile)]
                case .profile: [("--identity", .identity), ("--segmentation", .segmentation)]
                case .segmentation: [("--profile", .profile), ("--destination", .destination)]
                case .destination: []
                }
            for (flag, peer) in peers { arguments += [flag, "\(address(of: peer))"] }
            return arguments
        }
    }

    /// A started service.
    public struct Running: Sendable {
        /// Which service.
        public var service: ServiceName
        /// Its process id.
        public var pid: Int32
        /// Where it listens.
        public var address: HostPort
        /// Its log file.
        public var logPath: String
        /// The executable that runs.
        public var executable: String
    }

    /// A service that could not be started or stopped, or stopped on its own.
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// The configuration the services run with.
    public let configuration: Configuration
    private let processes: LockedBox<[ServiceName: Process]>

    /// Prepares to start the services; nothing runs until ``start()``.
    public init(configuration: Configuration) {
        self.configuration = configuration
        self.processes = LockedBox([:])
    }

    /// The executable of `service`: in `binDirectory` if given, else next to the running executable,
    /// else on `PATH`.
    public static func executable(of service: ServiceName, binDirectory: String?) throws -> String {
        let fileManager = FileManager.default
        if let binDirectory {
            let path = binDirectory + "/" + service.executable
            guard fileManager.isExecutableFile(atPath: path) else {
                throw Failure(
                    description: "no executable \(service.executable) in \(binDirectory) (--bin-dir, $CDP_BIN_DIR)"
                )
            }
            return path
        }
        let own = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        let besideSelf = own.deletingLastPathComponent().appendingPathComponent(service.executable).path
        if fileManager.isExecutableFile(atPath: besideSelf) { return besideSelf }
        for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") {
            let path = "\(directory)/\(service.executable)"
            if fileManager.isExecutableFile(atPath: path) { return path }
        }
        throw Failure(
            description: "cannot find \(service.executable): not next to \(own.path) nor on PATH "
                + "(build it with `swift build -c release`, or point --bin-dir / $CDP_BIN_DIR at it)"
        )
    }

    /// Starts the five services (destination first, so every service's downstream peer is starting
    /// before it) and returns them; they keep running until ``stop(timeout:)``.
    public func start() throws -> [Running] {
        let fileManager = FileManager.default
        let logs = configuration.dataDirectory + "/logs"
        do {
            try fileManager.createDirectory(atPath: logs, withIntermediateDirectories: true)
        } catch {
            throw Failure(description: "cannot create \(logs): \(error.localizedDescription)")
        }
        // Variables the services read in place of flags would contradict the flags given here.
        var environment = ProcessInfo.processInfo.environment
        for variable in ["CDP_DATA_DIR", "CDP_HOST", "CDP_PORT", "CDP_LOG_LEVEL", "CDP_PARTITION", "CDP_PARTITIONS"]
            + ServiceName.allCases.map(\.addressVariable)
        {
            environment[variable] = nil
        }
        var running: [Running] = []
        for service in ServiceName.allCases.reversed() {
            let executable = try Self.executable(of: service, binDirectory: configuration.binDirectory)
            let logPath = logs + "/" + service.rawValue + ".log"
            guard fileManager.createFile(atPath: logPath, contents: nil),
                let log = FileHandle(forWritingAtPath: logPath)
            else { throw Failure(description: "cannot create the log file \(logPath)") }
            let process = Process()
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = configuration.arguments(of: service)
            process.environment = environment
            process.standardInput = FileHandle.nullDevice
            process.standardOutput = log
            process.standardError = log
            do {
                try process.run()
            } catch {
                throw Failure(description: "cannot start \(executable): \(error.localizedDescription)")
            }
            try? log.close()
            processes.withLock { $0[service] = process }
            running.append(
                Running(
                    service: service,
                    pid: process.processIdentifier,
                    address: configuration.address(of: service),
                    logPath: logPath,
                    executable: executable
                )
            )
        }
        return running.sorted { $0.service < $1.service }
    }

    /// Waits until every service answers its health check with SERVING; fails as soon as one exits.
    public func waitUntilHealthy(timeout: Duration) async throws {
        let clients = ServiceClients(
            endpoints: configuration.endpoints,
            token: ProcessInfo.processInfo.environment["CDP_TOKEN"]
        )
        do {
            try await waitUntilHealthy(clients: clients, timeout: timeout)
            await clients.close()
        } catch {
            await clients.close()
            throw error
        }
    }

    private func waitUntilHealthy(clients: ServiceClients, timeout: Duration) async throws {
        let deadline = ContinuousClock.now + timeout
        var waiting = Set(ServiceName.allCases)
        while !waiting.isEmpty {
            if let (service, status) = exited() {
                throw Failure(
                    description: "\(service.executable) exited with status \(status) while starting\n"
                        + logTail(of: service)
                )
            }
            for service in waiting.sorted() {
                let answer = try? await clients.health(service).check(.init(), options: .init(timeout: .seconds(1)))
                if answer?.status == .serving { waiting.remove(service) }
            }
            guard !waiting.isEmpty else { break }
            guard ContinuousClock.now < deadline else {
                let names = waiting.sorted().map(\.executable).joined(separator: ", ")
                throw Failure(
                    description: "\(names) did not become healthy within \(timeout)\n"
                        + waiting.sorted().map { self.logTail(of: $0) }.joined(separator: "\n")
                )
            }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    /// The first service found to have exited, with its exit status; nil while all run.
    public func exited() -> (ServiceName, Int32)? {
        processes.withLock { processes in
            for service in ServiceName.allCases {
                if let process = processes[service], !process.isRunning {
                    return (service, process.terminationStatus)
                }
            }
            return nil
        }
    }

    /// Stops the services with SIGTERM, upstream first (ingestion, identity, profile, segmentation,
    /// destination), each given `timeout` to drain before SIGKILL. Returns each one's exit status
    /// (a process killed by a signal reports the signal's number).
    @discardableResult
    public func stop(timeout: Duration = .seconds(15)) async -> [ServiceName: Int32] {
        var statuses: [ServiceName: Int32] = [:]
        for service in ServiceName.allCases {
            guard let process = processes.withLock({ $0[service] }) else { continue }
            if process.isRunning { process.terminate() }
            let deadline = ContinuousClock.now + timeout
            while process.isRunning, ContinuousClock.now < deadline {
                try? await Task.sleep(for: .milliseconds(20))
            }
            if process.isRunning {
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
            }
            statuses[service] = process.terminationStatus
        }
        processes.withLock { $0 = [:] }
        return statuses
    }

    /// The last lines of `service`'s log, indented, for error messages.
    public func logTail(of service: ServiceName, lines: Int = 15) -> String {
        let path = configuration.dataDirectory + "/logs/" + service.rawValue + ".log"
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return "  (no log at \(path))" }
        let tail = text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines)
        return "  \(path):\n" + tail.map { "    " + $0 }.joined(separator: "\n")
    }
}

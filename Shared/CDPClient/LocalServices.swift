import Foundation
import RPCCore
import RPCServices
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
                // Ingestion too: profile drives privacy requests, which start there.
                case .profile:
                    [("--identity", .identity), ("--segmentation", .segmentation), ("--ingestion", .ingestion)]
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

    /// How a service's process ended.
    public enum Termination: Sendable, Equatable, CustomStringConvertible {
        /// It exited with this status.
        case exited(Int32)
        /// A signal ended it (SIGKILL from the OOM killer or a person, SIGSEGV from a crash, …).
        case signalled(Int32)

        public var description: String {
            switch self {
            case .exited(let status): "exited with status \(status)"
            case .signalled(let signal):
                "was killed by signal \(signal)\(Self.signalName(signal).map { " (\($0))" } ?? "")"
            }
        }

        private static func signalName(_ signal: Int32) -> String? {
            switch signal {
            case SIGKILL: "SIGKILL"
            case SIGTERM: "SIGTERM"
            case SIGINT: "SIGINT"
            case SIGSEGV: "SIGSEGV"
            case SIGABRT: "SIGABRT"
            case SIGILL: "SIGILL"
            case SIGTRAP: "SIGTRAP"
            case SIGBUS: "SIGBUS"
            default: nil
            }
        }
    }

    /// The configuration the services run with.
    public let configuration: Configuration
    private let processes: LockedBox<[ServiceName: Process]>
    /// Held from ``start()`` to ``stop(timeout:)``: one set of services per data directory.
    private let lock: LockedBox<DataDirectoryLock?>

    /// Prepares to start the services; nothing runs until ``start()``.
    public init(configuration: Configuration) {
        self.configuration = configuration
        self.processes = LockedBox([:])
        self.lock = LockedBox(nil)
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
    ///
    /// - Throws: ``Failure`` when the data directory is in use by another `cdp up` (a lock file in it),
    ///   or a service cannot be started.
    public func start() throws -> [Running] {
        let fileManager = FileManager.default
        let logs = configuration.dataDirectory + "/logs"
        do {
            try fileManager.createDirectory(atPath: logs, withIntermediateDirectories: true)
        } catch {
            throw Failure(description: "cannot create \(logs): \(error.localizedDescription)")
        }
        let held = try DataDirectoryLock(directory: configuration.dataDirectory)
        lock.withLock { $0 = held }
        var running: [Running] = []
        for service in ServiceName.allCases.reversed() {
            running.append(try launch(service, freshLog: true))
        }
        return running.sorted { $0.service < $1.service }
    }

    /// Starts `service` again after it stopped on its own (see ``exited()``); its log continues.
    public func restart(_ service: ServiceName) throws -> Running {
        try launch(service, freshLog: false)
    }

    private func launch(_ service: ServiceName, freshLog: Bool) throws -> Running {
        let fileManager = FileManager.default
        let executable = try Self.executable(of: service, binDirectory: configuration.binDirectory)
        let logPath = configuration.dataDirectory + "/logs/" + service.rawValue + ".log"
        if freshLog || !fileManager.fileExists(atPath: logPath) {
            guard fileManager.createFile(atPath: logPath, contents: nil) else {
                throw Failure(description: "cannot create the log file \(logPath)")
            }
        }
        guard let log = FileHandle(forWritingAtPath: logPath) else {
            throw Failure(description: "cannot open the log file \(logPath)")
        }
        defer { try? log.close() }
        _ = try? log.seekToEnd()
        if !freshLog {
            // Where one run of the service ends and the next begins, for whoever reads the log.
            let stamp = ISO8601DateFormatter().string(from: Date())
            try? log.write(contentsOf: Data("--- \(stamp): started again by cdp up ---\n".utf8))
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = configuration.arguments(of: service)
        process.environment = Self.serviceEnvironment
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = log
        process.standardError = log
        do {
            try process.run()
        } catch {
            throw Failure(description: "cannot start \(executable): \(error.localizedDescription)")
        }
        processes.withLock { $0[service] = process }
        return Running(
            service: service,
            pid: process.processIdentifier,
            address: configuration.address(of: service),
            logPath: logPath,
            executable: executable
        )
    }

    /// This process's environment less the variables the services read in place of the flags given
    /// here (they would contradict them), with this process's id in `CDP_PARENT_PID`.
    private static var serviceEnvironment: [String: String] {
        var environment = ProcessInfo.processInfo.environment
        // Each service stops by itself once this process is gone, however it ended.
        environment[ServiceMain.parentVariable] = String(getpid())
        for variable in ["CDP_DATA_DIR", "CDP_HOST", "CDP_PORT", "CDP_LOG_LEVEL", "CDP_PARTITION", "CDP_PARTITIONS"]
            + ServiceName.allCases.map(\.addressVariable)
        {
            environment[variable] = nil
        }
        return environment
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
            if let (service, termination) = exited() {
                throw Failure(
                    description: "\(service.executable) \(termination) while starting\n"
                        + logTail(of: service)
                )
            }
            for service in waiting.sorted() {
                guard
                    let answer = try? await clients.rpc(service).unary(
                        Grpc_Health_V1_Health.Method.check,
                        .init(),
                        options: .init(timeout: .seconds(1))
                    ), answer.message.status == .serving
                else { continue }
                // Whoever answers on the port must be the process started here, not another instance
                // (a port taken by another `cdp up` would otherwise pass for this one's service).
                let pid = processes.withLock { $0[service]?.processIdentifier }
                guard let pid, answer.initialMetadata.first(HealthService.processIDKey) == "\(pid)" else {
                    let other = answer.initialMetadata.first(HealthService.processIDKey).map { " (pid \($0))" } ?? ""
                    throw Failure(
                        description: "\(configuration.address(of: service)) is answered by another process\(other), "
                            + "not by the \(service.executable) started here: the port is taken (another `cdp up`?); "
                            + "stop it or choose another --port-base"
                    )
                }
                waiting.remove(service)
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

    /// The first service found to have stopped, with how it ended; nil while all run.
    public func exited() -> (ServiceName, Termination)? {
        processes.withLock { processes in
            for service in ServiceName.allCases {
                if let process = processes[service], !process.isRunning {
                    let status = process.terminationStatus
                    let termination: Termination =
                        process.terminationReason == .uncaughtSignal ? .signalled(status) : .exited(status)
                    return (service, termination)
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
        lock.withLock { $0 = nil }
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

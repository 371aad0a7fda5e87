import ArgumentParser
import CDPClient
import Foundation
import UnixSignals

/// `cdp up`: the five services as local processes until Ctrl-C or SIGTERM.
struct UpCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "up",
        abstract: "Run the five services locally on SQLite under one data directory, until Ctrl-C or SIGTERM.",
        discussion: """
            Starts cdp-ingestion, cdp-identity, cdp-profile, cdp-segmentation and cdp-destination as separate \
            processes listening on N..N+4 (N: --port-base), each with its own database under DATA_DIR/<service> \
            and the addresses of its peers (ingestion → identity → profile → segmentation → destination). \
            Their logs go to DATA_DIR/logs/<service>.log. Once every service answers its health check, prints \
            the endpoints (with --json one line: {"dataDir":…,"services":[{"name","address","pid"}…]}). \
            Ctrl-C or SIGTERM stops them all (SIGTERM, upstream first); if `cdp up` itself ends otherwise \
            (SIGKILL), each service stops by itself within a second. A service that stops on its own \
            (a crash, SIGKILL) is started again after 1, 2, 4, … s (at most 30 s) while the others keep \
            working: what they could not hand on waits in their outboxes. After --max-restarts restarts of one \
            service within 10 minutes, `cdp up` stops everything and exits with status 1. One `cdp up` per \
            data directory (a lock file in it); a port answered by another process is refused. Other commands \
            find the services with the same --port-base (or $CDP_PORT_BASE).
            """
    )

    @Option(help: "The directory of the services' databases and logs.")
    var dataDir: String = "./data"

    @Option(help: "Ingestion's port; the others follow (default: $CDP_PORT_BASE or 7400).")
    var portBase: Int?

    @Option(help: "The address the services bind (default: $CDP_HOST or 127.0.0.1).")
    var host: String?

    @Option(help: "Where the cdp-* executables are (default: $CDP_BIN_DIR, else next to cdp, else PATH).")
    var binDir: String?

    @Option(help: "The services' log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    @Option(help: "Seconds to wait for the services to become healthy.")
    var startTimeout: Double = 60

    @Option(help: "Restarts of one service within 10 minutes before `cdp up` gives up (0: never restart).")
    var maxRestarts: Int = 5

    @Flag(help: "Print the endpoints as one JSON line.")
    var json = false

    func run() async throws {
        guard maxRestarts >= 0 else { throw CLIError("--max-restarts must be 0 or more (got \(maxRestarts))") }
        let environment = ProcessInfo.processInfo.environment
        let endpoints: ServiceEndpoints
        do {
            endpoints = try ServiceEndpoints(host: host, portBase: portBase, environment: environment)
        } catch let error as ServiceEndpoints.InvalidSetting {
            throw CLIError(error.description)
        }
        let ingestion = endpoints[.ingestion].address
        let services = LocalServices(
            configuration: .init(
                dataDirectory: dataDir,
                host: ingestion.host,
                portBase: ingestion.port,
                binDirectory: binDir ?? environment["CDP_BIN_DIR"],
                logLevel: logLevel
            )
        )
        // Trap the signals before anything starts, so that Ctrl-C during start-up also stops everything.
        let signals = await UnixSignalsSequence(trapping: .sigint, .sigterm)
        let running: [LocalServices.Running]
        do {
            running = try services.start()
            try await services.waitUntilHealthy(timeout: .milliseconds(Int64(startTimeout * 1000)))
        } catch {
            await services.stop()
            throw CLIError("\(error)")
        }
        try announce(running)

        // Until a signal arrives (a clean stop), services that stop on their own are started again; one
        // that keeps stopping ends the run (a failure).
        let outcome = await withTaskGroup(of: Outcome?.self) { group in
            group.addTask {
                for await signal in signals { return .signal("\(signal)") }
                return nil
            }
            group.addTask { await supervise(services) }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        var failed = false
        switch outcome {
        case .gaveUp(let service, let reason):
            failed = true
            Output.error("\(reason); stopping the others\n" + services.logTail(of: service))
        case .signal(let signal):
            Output.note("cdp up: received \(signal), stopping the services")
        case nil:
            break
        }
        let statuses = await services.stop()
        let unclean = statuses.filter { $0.value != 0 }.sorted { $0.key < $1.key }
        for (service, status) in unclean where !failed {
            Output.error("\(service.executable) stopped with status \(status); see \(dataDir)/logs/\(service).log")
        }
        if failed || !unclean.isEmpty { throw ExitCode.failure }
        Output.note("cdp up: all five services stopped")
    }

    /// How supervision ended.
    private enum Outcome: Sendable {
        /// SIGINT or SIGTERM: a clean stop.
        case signal(String)
        /// A service kept stopping, or could not be started again: the reason.
        case gaveUp(ServiceName, String)
    }

    /// Restarts each service that stops on its own, after a backoff, until one has needed more than
    /// --max-restarts restarts within 10 minutes (or cannot be started); returns that failure, or nil
    /// when cancelled.
    private func supervise(_ services: LocalServices) async -> Outcome? {
        let window = Duration.seconds(600)
        var restarts: [ServiceName: [ContinuousClock.Instant]] = [:]
        while !Task.isCancelled {
            guard let (service, termination) = services.exited() else {
                try? await Task.sleep(for: .milliseconds(200))
                continue
            }
            let now = ContinuousClock.now
            let recent = restarts[service, default: []].filter { now - $0 < window }
            guard recent.count < maxRestarts else {
                let times = maxRestarts == 1 ? "once" : "\(maxRestarts) times"
                return .gaveUp(
                    service,
                    maxRestarts == 0
                        ? "\(service.executable) \(termination) (--max-restarts 0)"
                        : "\(service.executable) \(termination) after being restarted \(times) in 10 minutes"
                )
            }
            let delay = Duration.seconds(min(30, 1 << recent.count))
            Output.note(
                "cdp up: \(service.executable) \(termination); restarting it in \(delay.components.seconds) s "
                    + "(restart \(recent.count + 1) of at most \(maxRestarts) in 10 minutes)"
            )
            try? await Task.sleep(for: delay)
            if Task.isCancelled { return nil }
            do {
                let running = try services.restart(service)
                Output.note("cdp up: \(service.executable) restarted (pid \(running.pid))")
            } catch {
                return .gaveUp(service, "\(service.executable) \(termination) and cannot be started again: \(error)")
            }
            restarts[service] = recent + [now]
        }
        return nil
    }

    private func announce(_ running: [LocalServices.Running]) throws {
        if json {
            struct Announcement: Encodable {
                struct Service: Encodable {
                    var name: String
                    var address: String
                    var pid: Int32
                    var log: String
                }
                var dataDir: String
                var services: [Service]
            }
            try Output.json(
                Announcement(
                    dataDir: dataDir,
                    services: running.map {
                        .init(name: $0.service.rawValue, address: "\($0.address)", pid: $0.pid, log: $0.logPath)
                    }
                )
            )
        } else {
            Output.line("cdp up: five services running on \(dataDir) (logs in \(dataDir)/logs); Ctrl-C stops them")
            Output.table(
                ["service", "address", "pid", "executable"],
                running.map { [$0.service.rawValue, "\($0.address)", "\($0.pid)", $0.executable] }
            )
            let base = running.first { $0.service == .ingestion }!.address.port
            if base != ServiceName.defaultPortBase {
                Output.line("other commands: export CDP_PORT_BASE=\(base)")
            }
        }
    }
}

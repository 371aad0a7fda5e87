import ArgumentParser
import AsyncHTTPClient
import CDPProto
import DestinationConnectors
import DestinationService
import DestinationStore
import Foundation
import Logging
import NIOPosix
import RPCCore
import RPCHTTP2
import RPCServices
import ServiceLifecycle
import ServiceSupport

/// The destination service's executable.
@main
struct DestinationCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cdp-destination",
        abstract: "Runs the destination service: destinations, activations, delivery of segment memberships.",
        discussion: """
            Serves cdp.destination.v1.Destination (plus grpc.health.v1.Health and server reflection) over h2c. \
            Segmentation's membership changes (AcceptMembershipChanges) are committed to \
            DATA_DIR/destination.sqlite (SQLite, WAL) before they are acknowledged; each activation of a segment \
            to a destination queues its members' adds and removes, and one worker per destination delivers \
            them, retrying with backoff, so that one failing destination never delays another. Destination \
            types: MARKETO (a static list over the REST API), LINKEDIN (a Matched Audience, DMP segments), \
            WEBHOOK (signed JSON POSTs) and FILE (CSV or JSON Lines per run, incremental or full); their \
            settings are in Services/Destination/README.md.

            Prints 'listening on HOST:PORT' on stdout once bound. SIGINT or SIGTERM start a graceful shutdown. \
            Environment: CDP_HOST, CDP_PORT, CDP_LOG_LEVEL, CDP_DATA_DIR and CDP_TOKEN stand in for --host, --port, --log-level, --data-dir and --auth-token.
            """,
        version: PlatformVersion.current
    )

    @Option(help: "The address to bind ($CDP_HOST stands in for it).")
    var host: String = ServiceMain.environment("CDP_HOST", default: "127.0.0.1")

    @Option(help: "The port to listen on; 0 picks a free one ($CDP_PORT stands in for it).")
    var port: Int = ServiceMain.environment("CDP_PORT", default: 7404)

    @Option(help: "The directory of the service's database (default: $CDP_DATA_DIR/destination or ./data/destination).")
    var dataDir: String?

    @Option(
        name: .customLong("auth-token"),
        help: "A bearer token callers must send (default: $CDP_TOKEN; none or empty: no authentication)."
    )
    var authToken: String?

    @Option(help: "The largest request message, in bytes.")
    var maxReceiveMessageBytes: Int = 16 * 1024 * 1024

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical ($CDP_LOG_LEVEL stands in for it).")
    var logLevel: String = ServiceMain.environment("CDP_LOG_LEVEL", default: "info")

    func validate() throws {
        guard (0...65535).contains(port) else {
            throw ValidationError("--port (or $CDP_PORT) must be between 0 and 65535.")
        }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError(
                "--log-level (or $CDP_LOG_LEVEL) must be one of trace, debug, info, notice, warning, error, critical."
            )
        }
    }

    func run() async throws {
        MemoryTuning.keepFreedMemoryForReuse()
        ServiceMain.bootstrapLogging(level: logLevel)
        let logger = Logger(label: "cdp-destination")
        let directory = try ServiceMain.dataDirectory(dataDir, service: "destination")
        let store: SQLiteDestinationStore
        do {
            store = try SQLiteDestinationStore(path: directory + "/destination.sqlite")
        } catch {
            throw ServiceMain.databaseError(directory, error)
        }
        let engineThread = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        // One HTTP client (connection pools, TLS) for every connector; each request carries its deadline.
        let httpClient = HTTPClient(
            eventLoopGroupProvider: .shared(MultiThreadedEventLoopGroup.singleton),
            configuration: AsyncHTTPTransport.clientConfiguration
        )
        let engine = DestinationEngine(
            store: store,
            loop: engineThread.next(),
            transport: AsyncHTTPTransport(client: httpClient)
        )
        let workers = DeliveryWorkers(engine: engine, logger: logger)
        let erasure = DestinationErasure(engine: engine, workers: workers, logger: logger)
        // An empty token (a variable set to nothing, as compose files pass it) means no authentication.
        let token = (authToken ?? ServiceMain.variable("CDP_TOKEN")).flatMap { $0.isEmpty ? nil : $0 }
        let service = DestinationService(engine: engine, workers: workers, logger: logger)
        let health = HealthService()
        let server = RPCServer(
            configuration: .init(
                host: host,
                port: port,
                maxReceiveMessageBytes: maxReceiveMessageBytes,
                authorizationTokens: token.map { Set([$0]) } ?? [],
                runsHandlersOnEventLoop: false
            ),
            services: [service, erasure, health, ReflectionService(services: [service, erasure, health])],
            logger: logger
        )
        do {
            let boundPort = try await ServiceMain.start(server, host: host, port: port)
            logger.info("destination service started", metadata: ["data.dir": "\(directory)", "port": "\(boundPort)"])
            try await ServiceMain.run([server, workers], logger: logger)
        } catch {
            try? await httpClient.shutdown()
            try? await engineThread.shutdownGracefully()
            throw error
        }
        try await httpClient.shutdown()
        try await engineThread.shutdownGracefully()
    }
}

import ArgumentParser
import CDPProto
import Foundation
import IngestionService
import IngestionStore
import Logging
import RPCCore
import RPCHTTP2
import RPCServices
import ServiceLifecycle
import ServiceSupport

/// The ingestion service's executable.
@main
struct IngestionCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cdp-ingestion",
        abstract: "Runs the ingestion service: sources, batch and streaming ingestion, forwarding to identity.",
        discussion: """
            Serves cdp.ingestion.v1.Ingestion (plus grpc.health.v1.Health and server reflection) over h2c. \
            Accepted records are committed to DATA_DIR/ingestion.sqlite (SQLite, WAL) before they are \
            acknowledged, then forwarded to the identity service from a durable outbox, retried until \
            identity acknowledges them. Without --identity the outbox keeps everything until a later run \
            names one.

            Prints 'listening on HOST:PORT' on stdout once bound. SIGINT or SIGTERM start a graceful \
            shutdown: calls in flight finish, then the process exits.

            Environment: CDP_HOST, CDP_PORT, CDP_LOG_LEVEL, CDP_DATA_DIR, CDP_IDENTITY_ADDR and CDP_TOKEN stand in for --host, --port, --log-level, --data-dir, --identity \
            and --auth-token.
            """,
        version: PlatformVersion.current
    )

    @Option(help: "The address to bind ($CDP_HOST stands in for it).")
    var host: String = ServiceMain.environment("CDP_HOST", default: "127.0.0.1")

    @Option(help: "The port to listen on; 0 picks a free one ($CDP_PORT stands in for it).")
    var port: Int = ServiceMain.environment("CDP_PORT", default: 7400)

    @Option(help: "The directory of the service's database (default: $CDP_DATA_DIR/ingestion or ./data/ingestion).")
    var dataDir: String?

    @Option(help: "The identity service to forward records to, HOST:PORT (default: $CDP_IDENTITY_ADDR).")
    var identity: String?

    @Option(help: "Records per forwarding call to identity.")
    var forwardBatchSize: Int = 1000

    @Option(help: "Records per store transaction while receiving a batch.")
    var chunkRecords: Int = 5000

    @Option(help: "The default largest fraction of rejected records a batch may have (0 to 1).")
    var errorThreshold: Double = 0.05

    @Option(
        name: .customLong("auth-token"),
        help:
            "A bearer token callers must send, also sent to identity (default: $CDP_TOKEN; none or empty: no authentication)."
    )
    var authToken: String?

    @Option(help: "The largest request message, in bytes.")
    var maxReceiveMessageBytes: Int = 4 * 1024 * 1024

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical ($CDP_LOG_LEVEL stands in for it).")
    var logLevel: String = ServiceMain.environment("CDP_LOG_LEVEL", default: "info")

    func validate() throws {
        guard (0...65535).contains(port) else {
            throw ValidationError("--port (or $CDP_PORT) must be between 0 and 65535.")
        }
        guard forwardBatchSize > 0, chunkRecords > 0 else {
            throw ValidationError("--forward-batch-size and --chunk-records must be positive.")
        }
        guard (0...1).contains(errorThreshold) else {
            throw ValidationError("--error-threshold is a fraction between 0 and 1 (0.05 = 5%).")
        }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError(
                "--log-level (or $CDP_LOG_LEVEL) must be one of trace, debug, info, notice, warning, error, critical."
            )
        }
        if let address = identity ?? ServiceMain.variable("CDP_IDENTITY_ADDR") {
            guard HostPort(address) != nil else {
                throw ValidationError("--identity must be HOST:PORT, e.g. 127.0.0.1:7401 (got \"\(address)\").")
            }
        }
    }

    func run() async throws {
        MemoryTuning.keepFreedMemoryForReuse()
        ServiceMain.bootstrapLogging(level: logLevel)
        let logger = Logger(label: "cdp-ingestion")
        let directory = try ServiceMain.dataDirectory(dataDir, service: "ingestion")
        let store: SQLiteIngestionStore
        do {
            store = try SQLiteIngestionStore(path: directory + "/ingestion.sqlite")
        } catch {
            throw ServiceMain.databaseError(directory, error)
        }
        // An empty token (a variable set to nothing, as compose files pass it) means no authentication.
        let token = (authToken ?? ServiceMain.variable("CDP_TOKEN")).flatMap { $0.isEmpty ? nil : $0 }

        var services: [any Service] = []
        var relay: OutboxRelay<OutboxChunk>?
        var identityTransport: HTTP2ClientTransport?
        if let address = (identity ?? ServiceMain.variable("CDP_IDENTITY_ADDR")).flatMap(HostPort.init) {
            let transport = HTTP2ClientTransport(configuration: .init(host: address.host, port: address.port))
            identityTransport = transport
            var metadata = Metadata()
            if let token { metadata.add("authorization", "Bearer \(token)") }
            let client = RPCClient(transport: transport, defaultMetadata: metadata)
            relay = OutboxRelay(
                name: "ingestion→identity",
                // No reading ahead: a privacy erasure deletes the records of the erased person that are
                // not forwarded yet, and a chunk read before it would still go out after it.
                configuration: .init(chunkSize: forwardBatchSize, readsAhead: false),
                logger: logger,
                fetch: { limit, _ in try await store.nextOutboxChunk(limit: limit) },
                deliver: { chunk in try await IdentityForwarding.deliver(chunk, via: client) },
                acknowledge: { chunk in try await store.acknowledge(chunk) }
            )
        } else {
            logger.notice("no identity service configured (--identity): accepted records stay in the outbox")
        }

        let suppression = Suppression(try await store.suppressions())
        let service = IngestionService(
            store: store,
            configuration: .init(chunkRecords: chunkRecords, defaultErrorThreshold: errorThreshold),
            logger: logger,
            committed: { [relay] in relay?.wake() },
            forwardingError: { [relay] in relay?.status.lastError },
            suppression: suppression
        )
        let erasure = IngestionErasure(store: store, suppression: suppression, logger: logger)
        let health = HealthService()
        let server = RPCServer(
            configuration: .init(
                host: host,
                port: port,
                maxReceiveMessageBytes: maxReceiveMessageBytes,
                authorizationTokens: token.map { Set([$0]) } ?? [],
                // Parsing and storage are CPU and disk work: keep them off the event loops.
                runsHandlersOnEventLoop: false
            ),
            services: [service, erasure, health, ReflectionService(services: [service, erasure, health])],
            logger: logger
        )
        let boundPort = try await ServiceMain.start(server, host: host, port: port)
        logger.info(
            "ingestion service started",
            metadata: ["data.dir": "\(directory)", "port": "\(boundPort)"]
        )

        services.append(server)
        if let relay { services.append(relay) }
        try await ServiceMain.run(services, logger: logger)
        await identityTransport?.close()
    }
}

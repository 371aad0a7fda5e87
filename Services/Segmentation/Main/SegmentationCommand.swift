import ArgumentParser
import CDPProto
import Foundation
import Logging
import NIOCore
import NIOPosix
import RPCCore
import RPCHTTP2
import RPCServices
import SegmentationService
import SegmentationStore
import ServiceLifecycle
import ServiceSupport

/// The segmentation service's executable.
@main
struct SegmentationCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cdp-segmentation",
        abstract: "Runs the segmentation service: PQL segments, streaming and batch evaluation, memberships.",
        discussion: """
            Serves cdp.segmentation.v1.Segmentation (plus grpc.health.v1.Health and server reflection) over h2c. \
            Keeps the state segments are evaluated on (unified records, links, events) in memory, up to date \
            with the changes profile sends (AcceptStateChanges) and saved in DATA_DIR/segmentation.sqlite \
            (SQLite, WAL), so a restart resumes where it stopped. The persons and accounts a change touches are \
            evaluated at once against every streaming segment; membership changes (realized, exited, updated) \
            are committed with the state and sent to the destination service from a durable outbox, retried \
            until it acknowledges; without --destination they wait until a later run names one. Memberships \
            that depend on time (event windows) are re-checked when they can expire. Evaluate and Estimate read \
            the state; Explain finds the entity an identity names through --profile.

            Replicas: profile sends the whole state to the one segmentation it names, so a replica answers for \
            the state it holds: its batch jobs and estimates cover all of it. --partition I --partitions N only \
            name the replica to destination (sender segmentation-I-of-N); spreading the state over replicas is \
            not built yet. Each replica has its own data directory, so segments must be created on each.

            Prints 'listening on HOST:PORT' on stdout once bound. SIGINT or SIGTERM start a graceful shutdown. \
            Environment: CDP_HOST, CDP_PORT, CDP_LOG_LEVEL, CDP_DATA_DIR, CDP_PROFILE_ADDR, CDP_DESTINATION_ADDR, CDP_PARTITION, CDP_PARTITIONS and CDP_TOKEN stand in for \
            --host, --port, --log-level, --data-dir, --profile, --destination, --partition, --partitions and --auth-token.
            """,
        version: PlatformVersion.current
    )

    @Option(help: "The address to bind ($CDP_HOST stands in for it).")
    var host: String = ServiceMain.environment("CDP_HOST", default: "127.0.0.1")

    @Option(help: "The port to listen on; 0 picks a free one ($CDP_PORT stands in for it).")
    var port: Int = ServiceMain.environment("CDP_PORT", default: 7403)

    @Option(
        help: "The directory of the service's database (default: $CDP_DATA_DIR/segmentation or ./data/segmentation)."
    )
    var dataDir: String?

    @Option(help: "The profile service, HOST:PORT, for Explain (default: $CDP_PROFILE_ADDR).")
    var profile: String?

    @Option(help: "The destination service to send membership changes to, HOST:PORT (default: $CDP_DESTINATION_ADDR).")
    var destination: String?

    @Option(
        help: "This replica's number, from 0, in the name it sends to destination ($CDP_PARTITION stands in for it)."
    )
    var partition: Int = ServiceMain.environment("CDP_PARTITION", default: 0)

    @Option(help: "How many replicas there are, for that name ($CDP_PARTITIONS stands in for it).")
    var partitions: Int = ServiceMain.environment("CDP_PARTITIONS", default: 1)

    @Option(help: "Membership changes per call to destination.")
    var forwardBatchSize: Int = 500

    @Option(help: "How many days of events before the evaluation time segments see (as profile's views).")
    var eventRetentionDays: Int = 400

    @Option(
        help: ArgumentHelp(
            "Threads a batch job or an estimate evaluates on while no streaming change waits; the default is one per core.",
            valueName: "count"
        )
    )
    var evaluationThreads: Int = System.coreCount

    @Option(
        name: .customLong("auth-token"),
        help:
            "A bearer token callers must send, also sent to profile and destination (default: $CDP_TOKEN; none or empty: no authentication)."
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
        guard partitions > 0, (0..<partitions).contains(partition) else {
            throw ValidationError(
                "--partition ($CDP_PARTITION) must be between 0 and --partitions ($CDP_PARTITIONS) - 1 (partitions count from 0)."
            )
        }
        guard forwardBatchSize > 0, eventRetentionDays > 0 else {
            throw ValidationError("--forward-batch-size and --event-retention-days must be positive.")
        }
        guard evaluationThreads > 0 else {
            throw ValidationError("--evaluation-threads must be positive (got \(evaluationThreads)).")
        }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError(
                "--log-level (or $CDP_LOG_LEVEL) must be one of trace, debug, info, notice, warning, error, critical."
            )
        }
        for (flag, value) in [
            ("--profile", profile ?? ServiceMain.variable("CDP_PROFILE_ADDR")),
            ("--destination", destination ?? ServiceMain.variable("CDP_DESTINATION_ADDR")),
        ] {
            if let value, HostPort(value) == nil {
                throw ValidationError("\(flag) must be HOST:PORT, e.g. 127.0.0.1:7402 (got \"\(value)\").")
            }
        }
    }

    func run() async throws {
        MemoryTuning.keepFreedMemoryForReuse()
        ServiceMain.bootstrapLogging(level: logLevel)
        let logger = Logger(label: "cdp-segmentation")
        let directory = try ServiceMain.dataDirectory(dataDir, service: "segmentation")
        let store: SQLiteSegmentationStore
        do {
            store = try SQLiteSegmentationStore(path: directory + "/segmentation.sqlite")
        } catch {
            throw ServiceMain.databaseError(directory, error)
        }
        let engineThread = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let engine: SegmentationEngine
        do {
            engine = try SegmentationEngine(
                store: store,
                loop: engineThread.next(),
                state: .init(eventRetention: .seconds(eventRetentionDays * 86_400)),
                evaluationThreads: evaluationThreads
            )
        } catch {
            throw StartupError("cannot load the segments and state of \(directory): \(error)")
        }
        let held = await engine.stateCounts()
        logger.info("state loaded", metadata: ["persons": "\(held.persons)", "accounts": "\(held.accounts)"])
        // An empty token (a variable set to nothing, as compose files pass it) means no authentication.
        let token = (authToken ?? ServiceMain.variable("CDP_TOKEN")).flatMap { $0.isEmpty ? nil : $0 }
        var metadata = Metadata()
        if let token { metadata.add("authorization", "Bearer \(token)") }

        var transports: [HTTP2ClientTransport] = []
        let source: any ViewSource
        if let address = (profile ?? ServiceMain.variable("CDP_PROFILE_ADDR")).flatMap(HostPort.init) {
            let transport = HTTP2ClientTransport(configuration: .init(host: address.host, port: address.port))
            transports.append(transport)
            source = ProfileViewSource(client: RPCClient(transport: transport, defaultMetadata: metadata))
        } else {
            logger.notice("no profile service configured (--profile): Explain is refused")
            source = NoViewSource()
        }
        var relay: OutboxRelay<ChangeChunk>?
        var destinationErasure: Cdp_Privacy_V1_Erasure.Client?
        if let address = (destination ?? ServiceMain.variable("CDP_DESTINATION_ADDR")).flatMap(HostPort.init) {
            let transport = HTTP2ClientTransport(configuration: .init(host: address.host, port: address.port))
            transports.append(transport)
            let client = RPCClient(transport: transport, defaultMetadata: metadata)
            destinationErasure = Cdp_Privacy_V1_Erasure.Client(client)
            relay = OutboxRelay(
                name: "segmentation→destination",
                configuration: .init(chunkSize: forwardBatchSize),
                logger: logger,
                fetch: { limit, after in try await engine.nextChangeChunk(limit: limit, after: after) },
                deliver: { [partition, partitions] chunk in
                    try await DestinationForwarding.deliver(
                        chunk,
                        sender: partitions == 1 ? "segmentation" : "segmentation-\(partition)-of-\(partitions)",
                        via: client
                    )
                },
                acknowledge: { chunk in try await engine.acknowledge(chunk) }
            )
        } else {
            logger.notice("no destination service configured (--destination): membership changes wait in the outbox")
        }
        let changed: @Sendable () -> Void = { [relay] in relay?.wake() }
        // Jobs and estimates cover all the state this replica holds (profile sends it all of it).
        let jobs = EvaluationJobs(engine: engine, logger: logger, changed: changed)
        let rechecks = RecheckScheduler(engine: engine, logger: logger, changed: changed)
        let erasure = SegmentationErasure(
            engine: engine,
            destination: destinationErasure,
            logger: logger,
            changed: changed
        )
        let service = SegmentationService(
            engine: engine,
            source: source,
            jobs: jobs,
            logger: logger,
            changed: changed,
            forwardingError: { [relay] in relay?.status.lastError }
        )
        let health = HealthService()
        let server = RPCServer(
            configuration: .init(
                host: host,
                port: port,
                maxReceiveMessageBytes: maxReceiveMessageBytes,
                authorizationTokens: token.map { Set([$0]) } ?? [],
                runsHandlersOnEventLoop: false
            ),
            services: [
                service.serving(service.acceptStateChangesKeepingBytes), erasure, health,
                ReflectionService(services: [service, erasure, health]),
            ],
            logger: logger
        )
        let boundPort = try await ServiceMain.start(server, host: host, port: port)
        logger.info(
            "segmentation service started",
            metadata: ["data.dir": "\(directory)", "port": "\(boundPort)", "partition": "\(partition)/\(partitions)"]
        )

        var services: [any Service] = [server, jobs, rechecks]
        if let relay { services.append(relay) }
        try await ServiceMain.run(services, logger: logger)
        for transport in transports { await transport.close() }
        try await engineThread.shutdownGracefully()
    }
}

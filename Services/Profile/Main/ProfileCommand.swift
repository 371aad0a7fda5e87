import ArgumentParser
import CDPProto
import Foundation
import IdentityRules
import Logging
import NIOPosix
import ProfileModel
import ProfileService
import ProfileStore
import RPCCore
import RPCHTTP2
import RPCServices
import ServiceLifecycle
import ServiceSupport

/// The profile service's executable.
@main
struct ProfileCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cdp-profile",
        abstract: "Runs the profile service: fragments, merge policies, unified person and account views.",
        discussion: """
            Serves cdp.profile.v1.Profile (plus grpc.health.v1.Health and server reflection) over h2c. \
            Identity's ordered stream (annotated records, merges, splits) is applied to DATA_DIR/profile.sqlite \
            (SQLite, WAL) before it is acknowledged; what it changes in the state segmentation evaluates (unified \
            records, links between entities, events) is sent to the segmentation service from a durable outbox \
            that coalesces bursts, retried until segmentation acknowledges. Without --segmentation the changes wait until a later run names one. DeletePerson \
            needs --identity, which it asks to remove the person's identities.

            Prints 'listening on HOST:PORT' on stdout once bound. SIGINT or SIGTERM start a graceful \
            shutdown. Environment: CDP_HOST, CDP_PORT, CDP_LOG_LEVEL, CDP_DATA_DIR, CDP_IDENTITY_ADDR, CDP_SEGMENTATION_ADDR and CDP_TOKEN stand \
            in for --host, --port, --log-level, --data-dir, --identity, --segmentation and --auth-token.
            """,
        version: PlatformVersion.current
    )

    @Option(help: "The address to bind ($CDP_HOST stands in for it).")
    var host: String = ServiceMain.environment("CDP_HOST", default: "127.0.0.1")

    @Option(help: "The port to listen on; 0 picks a free one ($CDP_PORT stands in for it).")
    var port: Int = ServiceMain.environment("CDP_PORT", default: 7402)

    @Option(help: "The directory of the service's database (default: $CDP_DATA_DIR/profile or ./data/profile).")
    var dataDir: String?

    @Option(help: "The identity service, HOST:PORT, for privacy requests (default: $CDP_IDENTITY_ADDR).")
    var identity: String?

    @Option(help: "The ingestion service, HOST:PORT, for privacy requests (default: $CDP_INGESTION_ADDR).")
    var ingestion: String?

    @Option(help: "The segmentation service to send state changes to, HOST:PORT (default: $CDP_SEGMENTATION_ADDR).")
    var segmentation: String?

    @Option(help: "State changes per call to segmentation.")
    var forwardBatchSize: Int = 500

    @Option(
        name: .customLong("merge-policy"),
        help: ArgumentHelp(
            "ENTITY=POLICY, POLICY being 'timestamp' (the default) or 'precedence:Type:instance,Type:instance,…' "
                + "(repeatable), e.g. person=precedence:Salesforce:sf-1,Marketo:mkto-1.",
            valueName: "entity=policy"
        )
    )
    var mergePolicies: [String] = []

    @Option(help: "How many days of events a person view holds (GetPerson, ScanPersonViews).")
    var eventRetentionDays: Int = 400

    @Option(
        name: .customLong("auth-token"),
        help:
            "A bearer token callers must send, also sent to identity and segmentation (default: $CDP_TOKEN; none or empty: no authentication)."
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
        guard forwardBatchSize > 0, eventRetentionDays > 0 else {
            throw ValidationError("--forward-batch-size and --event-retention-days must be positive.")
        }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError(
                "--log-level (or $CDP_LOG_LEVEL) must be one of trace, debug, info, notice, warning, error, critical."
            )
        }
        for (flag, value) in [
            ("--identity", identity ?? ServiceMain.variable("CDP_IDENTITY_ADDR")),
            ("--segmentation", segmentation ?? ServiceMain.variable("CDP_SEGMENTATION_ADDR")),
            ("--ingestion", ingestion ?? ServiceMain.variable("CDP_INGESTION_ADDR")),
        ] {
            if let value, HostPort(value) == nil {
                throw ValidationError("\(flag) must be HOST:PORT, e.g. 127.0.0.1:7401 (got \"\(value)\").")
            }
        }
        _ = try policies()
    }

    /// The merge policies from the flags.
    func policies() throws -> [Cdp_Model_V1_EntityType: MergePolicy] {
        var policies: [Cdp_Model_V1_EntityType: MergePolicy] = [:]
        for entry in mergePolicies {
            let parts = entry.split(separator: "=", maxSplits: 1).map(String.init)
            // Events are not merged: each is its own record.
            guard parts.count == 2, let graph = EntityGraph(rawValue: parts[0]), graph != .event,
                let policy = MergePolicy(parts[1])
            else {
                throw ValidationError(
                    "--merge-policy \"\(entry)\" must be ENTITY=timestamp or ENTITY=precedence:Type:instance,… with "
                        + "ENTITY one of "
                        + EntityGraph.allCases.filter { $0 != .event }.map(\.rawValue).joined(separator: ", ") + "."
                )
            }
            policies[graph.entityType] = policy
        }
        return policies
    }

    func run() async throws {
        MemoryTuning.keepFreedMemoryForReuse()
        ServiceMain.bootstrapLogging(level: logLevel)
        let logger = Logger(label: "cdp-profile")
        let directory = try ServiceMain.dataDirectory(dataDir, service: "profile")
        let store: SQLiteProfileStore
        do {
            store = try SQLiteProfileStore(
                path: directory + "/profile.sqlite",
                configuration: .init(policies: try policies(), eventRetention: .seconds(eventRetentionDays * 86_400))
            )
        } catch {
            throw ServiceMain.databaseError(directory, error)
        }
        let engineThreads = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let engine = ProfileEngine(store: store, loop: engineThreads.next(), readLoop: engineThreads.next())
        // An empty token (a variable set to nothing, as compose files pass it) means no authentication.
        let token = (authToken ?? ServiceMain.variable("CDP_TOKEN")).flatMap { $0.isEmpty ? nil : $0 }
        var metadata = Metadata()
        if let token { metadata.add("authorization", "Bearer \(token)") }

        var transports: [HTTP2ClientTransport] = []
        /// A client of a peer service named by a flag or its variable, if given.
        func client(_ flag: String?, _ variable: String) -> RPCClient? {
            guard let address = (flag ?? ServiceMain.variable(variable)).flatMap(HostPort.init) else { return nil }
            let transport = HTTP2ClientTransport(configuration: .init(host: address.host, port: address.port))
            transports.append(transport)
            return RPCClient(transport: transport, defaultMetadata: metadata)
        }
        let identityClient = client(identity, "CDP_IDENTITY_ADDR")
        let segmentationClient = client(segmentation, "CDP_SEGMENTATION_ADDR")
        let peers = PrivacyCoordinator.Peers(
            ingestion: client(ingestion, "CDP_INGESTION_ADDR").map(Cdp_Privacy_V1_Erasure.Client.init),
            identity: identityClient.map(Cdp_Identity_V1_Identity.Client.init),
            identityErasure: identityClient.map(Cdp_Privacy_V1_Erasure.Client.init),
            segmentation: segmentationClient.map(Cdp_Privacy_V1_Erasure.Client.init)
        )
        if !peers.missing.isEmpty {
            logger.notice(
                "privacy requests are refused: profile needs the addresses of ingestion and identity",
                metadata: ["missing": "\(peers.missing.joined(separator: ", "))"]
            )
        }
        var relay: OutboxRelay<StateChunk>?
        if let client = segmentationClient {
            relay = OutboxRelay(
                name: "profile→segmentation",
                configuration: .init(chunkSize: forwardBatchSize),
                logger: logger,
                fetch: { limit, after in try await engine.nextStateChunk(limit: limit, after: after) },
                deliver: { chunk in try await SegmentationForwarding.deliver(chunk, via: client) },
                acknowledge: { chunk in try await engine.acknowledge(chunk) }
            )
        } else {
            logger.notice("no segmentation service configured (--segmentation): state changes wait in the outbox")
        }

        let privacy = PrivacyCoordinator(engine: engine, peers: peers, logger: logger) { [relay] in relay?.wake() }
        let service = ProfileService(
            engine: engine,
            logger: logger,
            privacy: privacy,
            changed: { [relay] in relay?.wake() },
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
                service.serving(service.acceptIdentityUpdatesKeepingBytes), health,
                ReflectionService(services: [service, health]),
            ],
            logger: logger
        )
        let boundPort = try await ServiceMain.start(server, host: host, port: port)
        logger.info("profile service started", metadata: ["data.dir": "\(directory)", "port": "\(boundPort)"])

        var services: [any Service] = [server]
        if let relay { services.append(relay) }
        services.append(privacy)
        try await ServiceMain.run(services, logger: logger)
        for transport in transports { await transport.close() }
        try await engineThreads.shutdownGracefully()
    }
}

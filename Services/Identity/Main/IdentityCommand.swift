import ArgumentParser
import CDPProto
import Foundation
import IdentityGraph
import IdentityRules
import IdentityService
import IdentityStore
import Logging
import NIOPosix
import RPCCore
import RPCHTTP2
import RPCServices
import ServiceLifecycle
import ServiceSupport

/// The identity service's executable.
@main
struct IdentityCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cdp-identity",
        abstract: "Runs the identity service: identity graphs, clusters, merges and splits, forwarding to profile.",
        discussion: """
            Serves cdp.identity.v1.Identity (plus grpc.health.v1.Health and server reflection) over h2c. \
            Records from ingestion are linked into the person, account, opportunity, campaign and marketing \
            list graphs; everything a call changes is committed to DATA_DIR/identity.sqlite (SQLite, WAL) \
            before it is acknowledged, and the annotated records with the merges and splits they caused go \
            to the profile service from a durable, ordered outbox, retried until profile acknowledges them. \
            Without --profile the outbox keeps everything until a later run names one.

            Guardrails: values in the blocked list (empty, null, n/a, unknown, -1, 0, … plus --block-value) \
            and matching --block-pattern are never linked; an identity already linking \
            --max-records-per-identity records links no more; a link that would make a cluster hold more than \
            --max-cluster-identities identities, or two values of a unique namespace, is refused and listed by \
            ListConflicts.

            Prints 'listening on HOST:PORT' on stdout once bound. SIGINT or SIGTERM start a graceful \
            shutdown. Environment: CDP_HOST, CDP_PORT, CDP_LOG_LEVEL, CDP_DATA_DIR, CDP_PROFILE_ADDR and CDP_TOKEN stand in for --host, --port, --log-level, --data-dir, \
            --profile and --auth-token.
            """,
        version: PlatformVersion.current
    )

    @Option(help: "The address to bind ($CDP_HOST stands in for it).")
    var host: String = ServiceMain.environment("CDP_HOST", default: "127.0.0.1")

    @Option(help: "The port to listen on; 0 picks a free one ($CDP_PORT stands in for it).")
    var port: Int = ServiceMain.environment("CDP_PORT", default: 7401)

    @Option(help: "The directory of the service's database (default: $CDP_DATA_DIR/identity or ./data/identity).")
    var dataDir: String?

    @Option(help: "The profile service to forward updates to, HOST:PORT (default: $CDP_PROFILE_ADDR).")
    var profile: String?

    // 2,000 rather than 1,000: each call costs profile a commit and the sender a round trip, and in
    // the quarter-size pipeline every state change reached segmentation after 84.6 s instead of
    // 91.2 s (4,000: 84.9 s, with 29 MB more of profile's peak RSS).
    @Option(help: "Updates per forwarding call to profile.")
    var forwardBatchSize: Int = 2000

    @Option(help: "The most identities a cluster may hold.")
    var maxClusterIdentities: Int = 50

    @Option(help: "An identity linking this many records links no more (a shared mailbox, a default value).")
    var maxRecordsPerIdentity: Int = 1000

    @Option(
        name: .customLong("unique-namespace"),
        help: ArgumentHelp(
            "GRAPH:NAMESPACE a cluster may hold one value of, e.g. person:crmId (repeatable). Given at all, it "
                + "replaces the defaults person:mdm, account:mdm.",
            valueName: "graph:namespace"
        )
    )
    var uniqueNamespaces: [String] = []

    @Option(
        name: .customLong("block-value"),
        help: "A further value never linked, compared in lower case (repeatable)."
    )
    var blockValues: [String] = []

    @Option(
        name: .customLong("block-pattern"),
        help: ArgumentHelp(
            "[NAMESPACE=]REGEX: values it matches completely (ignoring case) are never linked, e.g. "
                + "'email=.*@example\\.com' (repeatable).",
            valueName: "pattern"
        )
    )
    var blockPatterns: [String] = []

    @Option(
        name: .customLong("auth-token"),
        help:
            "A bearer token callers must send, also sent to profile (default: $CDP_TOKEN; none or empty: no authentication)."
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
        guard forwardBatchSize > 0 else { throw ValidationError("--forward-batch-size must be positive.") }
        guard maxClusterIdentities >= 2, maxRecordsPerIdentity >= 1 else {
            throw ValidationError(
                "--max-cluster-identities must be at least 2 and --max-records-per-identity at least 1."
            )
        }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError(
                "--log-level (or $CDP_LOG_LEVEL) must be one of trace, debug, info, notice, warning, error, critical."
            )
        }
        if let address = profile ?? ServiceMain.variable("CDP_PROFILE_ADDR") {
            guard HostPort(address) != nil else {
                throw ValidationError("--profile must be HOST:PORT, e.g. 127.0.0.1:7402 (got \"\(address)\").")
            }
        }
        _ = try engineConfiguration()
    }

    /// The guardrails from the flags.
    func engineConfiguration() throws -> IdentityEngine.Configuration {
        var unique: [EntityGraph: Set<String>] = [:]
        if uniqueNamespaces.isEmpty {
            for (graph, configuration) in IdentityEngine.Configuration.defaultGraphs {
                unique[graph] = configuration.uniqueNamespaces
            }
        }
        for entry in uniqueNamespaces {
            let parts = entry.split(separator: ":", maxSplits: 1).map(String.init)
            guard parts.count == 2, let graph = EntityGraph(rawValue: parts[0]), graph.isClustered, !parts[1].isEmpty
            else {
                let graphs = EntityGraph.clustered.map(\.rawValue).joined(separator: ", ")
                throw ValidationError(
                    "--unique-namespace \"\(entry)\" must be GRAPH:NAMESPACE with GRAPH one of \(graphs), e.g. person:crmId."
                )
            }
            unique[graph, default: []].insert(parts[1])
        }
        var patterns: [BlockedPattern] = []
        for entry in blockPatterns {
            let parts = entry.split(separator: "=", maxSplits: 1).map(String.init)
            // "ns=regex" scopes the pattern; a bare regex (which may itself contain '=') applies everywhere
            // unless its prefix looks like a namespace name.
            let scoped = parts.count == 2 && parts[0].allSatisfy { $0.isLetter || $0.isNumber }
            do {
                patterns.append(
                    try BlockedPattern(namespace: scoped ? parts[0] : nil, pattern: scoped ? parts[1] : entry)
                )
            } catch {
                throw ValidationError("--block-pattern \"\(entry)\" is not a valid regular expression: \(error)")
            }
        }
        var graphs: [EntityGraph: IdentityGraph.Configuration] = [:]
        for graph in EntityGraph.clustered {
            graphs[graph] = IdentityGraph.Configuration(
                maxIdentitiesPerCluster: maxClusterIdentities,
                uniqueNamespaces: unique[graph] ?? [],
                blockedValues: IdentityGraph.Configuration.defaultBlockedValues.union(
                    blockValues.map { $0.lowercased() }
                ),
                blockedPatterns: patterns,
                maxRecordsPerIdentity: maxRecordsPerIdentity
            )
        }
        return IdentityEngine.Configuration(graphs: graphs)
    }

    func run() async throws {
        MemoryTuning.keepFreedMemoryForReuse()
        ServiceMain.bootstrapLogging(level: logLevel)
        let logger = Logger(label: "cdp-identity")
        let directory = try ServiceMain.dataDirectory(dataDir, service: "identity")
        let store: SQLiteIdentityStore
        do {
            store = try SQLiteIdentityStore(path: directory + "/identity.sqlite")
        } catch {
            throw ServiceMain.databaseError(directory, error)
        }
        // The engine's own thread: its store calls block.
        let engineThread = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let clock = ContinuousClock()
        let loadStart = clock.now
        let engine: IdentityEngine
        do {
            engine = try IdentityEngine(
                store: store,
                configuration: try engineConfiguration(),
                loop: engineThread.next()
            )
        } catch {
            throw StartupError("cannot load the identity graphs from \(directory): \(error)")
        }
        let counts = await engine.counts()
        logger.info(
            "identity graphs loaded",
            metadata: [
                "identities": "\(counts.values.reduce(0) { $0 + $1.identities })",
                "records": "\(counts.values.reduce(0) { $0 + $1.records })",
                "duration": "\(clock.now - loadStart)",
            ]
        )
        // An empty token (a variable set to nothing, as compose files pass it) means no authentication.
        let token = (authToken ?? ServiceMain.variable("CDP_TOKEN")).flatMap { $0.isEmpty ? nil : $0 }

        var relay: OutboxRelay<UpdateChunk>?
        var profileTransport: HTTP2ClientTransport?
        if let address = (profile ?? ServiceMain.variable("CDP_PROFILE_ADDR")).flatMap(HostPort.init) {
            let transport = HTTP2ClientTransport(configuration: .init(host: address.host, port: address.port))
            profileTransport = transport
            var metadata = Metadata()
            if let token { metadata.add("authorization", "Bearer \(token)") }
            let client = RPCClient(transport: transport, defaultMetadata: metadata)
            relay = OutboxRelay(
                name: "identity→profile",
                configuration: .init(chunkSize: forwardBatchSize),
                logger: logger,
                // Through the engine: its store calls block, and belong on its thread.
                fetch: { limit, after in try await engine.nextOutboxChunk(limit: limit, after: after) },
                deliver: { chunk in try await ProfileForwarding.deliver(chunk, via: client) },
                acknowledge: { chunk in try await engine.acknowledge(chunk) }
            )
        } else {
            logger.notice("no profile service configured (--profile): updates stay in the outbox")
        }

        let service = IdentityService(
            engine: engine,
            logger: logger,
            committed: { [relay] in relay?.wake() },
            forwardingError: { [relay] in relay?.status.lastError }
        )
        let erasure = IdentityErasure(engine: engine, logger: logger)
        let health = HealthService()
        let server = RPCServer(
            configuration: .init(
                host: host,
                port: port,
                maxReceiveMessageBytes: maxReceiveMessageBytes,
                authorizationTokens: token.map { Set([$0]) } ?? [],
                // Decoding a call's records is CPU work: keep it off the event loops.
                runsHandlersOnEventLoop: false
            ),
            services: [
                service.serving(service.acceptRecordsKeepingBytes), erasure, health,
                ReflectionService(services: [service, erasure, health]),
            ],
            logger: logger
        )
        let boundPort = try await ServiceMain.start(server, host: host, port: port)
        logger.info("identity service started", metadata: ["data.dir": "\(directory)", "port": "\(boundPort)"])

        var services: [any Service] = [server]
        if let relay { services.append(relay) }
        try await ServiceMain.run(services, logger: logger)
        await profileTransport?.close()
        try await engineThread.shutdownGracefully()
    }
}

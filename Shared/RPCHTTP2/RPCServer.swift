import Logging
import NIOCore
import NIOPosix
import RPCCore
import ServiceLifecycle

/// The methods a server routes to, by request path.
struct Router: Sendable {
    private var methods: [String: ServerMethod] = [:]
    private var serviceNames: Set<String> = []

    init(services: [any RPCService]) {
        for service in services {
            self.serviceNames.insert(service.serviceDescriptor.fullName)
            for method in service.methods { self.methods[method.descriptor.path] = method }
        }
    }

    subscript(path: String) -> ServerMethod? { self.methods[path] }

    /// Whether the service named in a `/service/method` path is served (for the error message).
    func hasService(ofPath path: String) -> Bool {
        let parts = path.split(separator: "/", omittingEmptySubsequences: true)
        return parts.count == 2 && self.serviceNames.contains(String(parts[0]))
    }
}

/// A gRPC server over cleartext HTTP/2 (h2c with prior knowledge), on nghttp2 and SwiftNIO.
///
/// ```swift
/// let server = RPCServer(configuration: .init(port: 50051), services: [MyService()], logger: logger)
/// try await server.run()   // until cancelled or a graceful shutdown, then drains and stops
/// ```
///
/// Each connection gets its own nghttp2 session; each call runs its handler in its own task.
/// Limits (message size, header list size, concurrent streams, idle time) protect the process
/// from misbehaving peers: an abusive connection is closed while others carry on.
public final class RPCServer: Sendable {
    /// Server settings. Defaults suit a service on a private network.
    public struct Configuration: Sendable {
        /// The address to bind.
        public var host: String
        /// The port to bind; 0 picks a free one (see ``RPCServer/start()``).
        public var port: Int
        /// The largest request message accepted, after decompression; larger ones end the call
        /// with `RESOURCE_EXHAUSTED`.
        public var maxReceiveMessageBytes: Int
        /// The largest request header list (RFC 9113 size: names + values + 32 per field);
        /// larger ones are refused with `RESOURCE_EXHAUSTED`.
        public var maxHeaderListBytes: Int
        /// SETTINGS_MAX_CONCURRENT_STREAMS announced to clients; extra streams are refused.
        public var maxConcurrentStreams: Int
        /// A connection without calls for this long is closed with GOAWAY.
        public var idleTimeout: Duration
        /// The flow-control window of each stream: how much a client may send ahead of the handler.
        public var initialStreamWindowBytes: Int
        /// The flow-control window of each connection.
        public var connectionWindowBytes: Int
        /// Bearer tokens accepted in `authorization`; empty turns authentication off.
        public var authorizationTokens: Set<String>
        /// How long a graceful shutdown waits for calls in flight before closing connections.
        public var shutdownGracePeriod: Duration
        /// Whether handlers run on their connection's event loop (fast for short calls: no thread
        /// hops) or on the shared concurrency pool (better for handlers that compute for long,
        /// which would otherwise delay the other connections of their loop).
        public var runsHandlersOnEventLoop: Bool

        /// Creates a configuration; every limit has a default.
        public init(
            host: String = "127.0.0.1",
            port: Int = 0,
            maxReceiveMessageBytes: Int = 4 * 1024 * 1024,
            maxHeaderListBytes: Int = 16 * 1024,
            maxConcurrentStreams: Int = 100,
            idleTimeout: Duration = .seconds(300),
            initialStreamWindowBytes: Int = 1024 * 1024,
            connectionWindowBytes: Int = 16 * 1024 * 1024,
            authorizationTokens: Set<String> = [],
            shutdownGracePeriod: Duration = .seconds(10),
            runsHandlersOnEventLoop: Bool = true
        ) {
            self.host = host
            self.port = port
            self.maxReceiveMessageBytes = maxReceiveMessageBytes
            self.maxHeaderListBytes = maxHeaderListBytes
            self.maxConcurrentStreams = maxConcurrentStreams
            self.idleTimeout = idleTimeout
            self.initialStreamWindowBytes = initialStreamWindowBytes
            self.connectionWindowBytes = connectionWindowBytes
            self.authorizationTokens = authorizationTokens
            self.shutdownGracePeriod = shutdownGracePeriod
            self.runsHandlersOnEventLoop = runsHandlersOnEventLoop
        }
    }

    private enum State {
        case idle
        case running(listener: any Channel, connections: [ObjectIdentifier: any Channel])
        case stopped
    }

    /// The configuration the server was created with.
    public let configuration: Configuration
    private let router: Router
    private let logger: Logger
    private let group: any EventLoopGroup
    private let state = LockedBox<StateBox>(StateBox())
    /// Completed when ``shutdown()`` has finished.
    private let stopped: EventLoopPromise<Void>

    private struct StateBox: @unchecked Sendable {
        // @unchecked: channels are Sendable; the enum only groups them, and is guarded by the lock.
        var state = State.idle
    }

    /// Creates a server.
    ///
    /// - Parameters:
    ///   - configuration: Address and limits.
    ///   - services: The services to serve; their methods are routed by path.
    ///   - logger: Where connection and handler problems are logged.
    ///   - group: The event loops; NIO's shared singleton by default.
    public init(
        configuration: Configuration,
        services: [any RPCService],
        logger: Logger,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) {
        self.configuration = configuration
        self.router = Router(services: services)
        self.logger = logger
        self.group = group
        self.stopped = group.next().makePromise(of: Void.self)
    }

    /// Binds and starts accepting connections.
    ///
    /// - Returns: the bound address (with the actual port when the configuration asked for 0).
    /// - Throws: when the address cannot be bound, or the server was already started.
    @discardableResult
    public func start() async throws -> SocketAddress {
        let router = self.router
        let configuration = self.configuration
        let logger = self.logger
        let listener: any Channel
        do {
            listener = try await self.bind(router: router, configuration: configuration, logger: logger)
        } catch {
            // A server that could not bind is stopped: later shutdowns return at once, and the
            // promise they wait on is not leaked.
            let wasIdle = self.state.withLock { box -> Bool in
                guard case .idle = box.state else { return false }
                box.state = .stopped
                return true
            }
            if wasIdle { self.stopped.succeed(()) }
            throw error
        }
        let accepted = self.state.withLock { box -> Bool in
            guard case .idle = box.state else { return false }
            box.state = .running(listener: listener, connections: [:])
            return true
        }
        guard accepted else {
            try? await listener.close()
            throw RPCError(code: .failedPrecondition, message: "The server was already started.")
        }
        logger.info("listening", metadata: ["address": "\(listener.localAddress.map { "\($0)" } ?? "?")"])
        return listener.localAddress!
    }

    private func bind(router: Router, configuration: Configuration, logger: Logger) async throws -> any Channel {
        try await ServerBootstrap(group: self.group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelInitializer { [weak self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        ServerConnectionHandler(router: router, configuration: configuration, logger: logger)
                    )
                    self?.track(channel)
                }
            }
            .bind(host: configuration.host, port: configuration.port)
            .get()
    }

    deinit {
        // Never started (and so never shut down): complete the promise rather than leak it.
        let idle = self.state.withLock { box -> Bool in
            if case .idle = box.state { return true }
            return false
        }
        if idle { self.stopped.succeed(()) }
    }

    private func track(_ channel: any Channel) {
        let id = ObjectIdentifier(channel)
        let tracked = self.state.withLock { box -> Bool in
            guard case .running(let listener, var connections) = box.state else { return false }
            connections[id] = channel
            box.state = .running(listener: listener, connections: connections)
            return true
        }
        guard tracked else {
            // Shutdown began while this connection was being accepted.
            channel.close(promise: nil)
            return
        }
        channel.closeFuture.whenComplete { [weak self] _ in
            self?.state.withLock { box in
                guard case .running(let listener, var connections) = box.state else { return }
                connections[id] = nil
                box.state = .running(listener: listener, connections: connections)
            }
        }
    }

    /// Stops accepting connections, sends GOAWAY on every connection, lets calls in flight finish
    /// (up to ``Configuration/shutdownGracePeriod``), then closes everything.
    ///
    /// Safe to call more than once and from several tasks: every caller returns once the server
    /// has stopped.
    public func shutdown() async {
        let action = self.state.withLock { box -> ShutdownAction in
            switch box.state {
            case .idle:
                box.state = .stopped
                self.stopped.succeed(())
                return .wait
            case .running(let listener, let connections):
                box.state = .stopped
                return .stop(listener, Array(connections.values))
            case .stopped:
                return .wait
            }
        }
        guard case .stop(let listener, let connections) = action else {
            try? await self.stopped.futureResult.get()
            return
        }
        try? await listener.close()
        for connection in connections {
            connection.pipeline.fireUserInboundEventTriggered(ServerConnectionHandler.GracefulShutdownEvent())
        }
        await withTaskGroup(of: Void.self) { group in
            for connection in connections {
                group.addTask { try? await connection.closeFuture.get() }
            }
            group.addTask {
                // Cancelled once every connection has closed by itself; otherwise the grace period ends.
                guard (try? await Task.sleep(for: self.configuration.shutdownGracePeriod)) != nil else { return }
                for connection in connections { connection.close(promise: nil) }
            }
            // Wait for every connection, then stop the grace timer if it has not fired.
            for _ in connections { await group.next() }
            group.cancelAll()
        }
        self.logger.info("stopped")
        self.stopped.succeed(())
    }

    private enum ShutdownAction {
        case stop(any Channel, [any Channel])
        case wait
    }
}

extension RPCServer: Service {
    /// Serves until a graceful shutdown (SIGTERM through a `ServiceGroup`) or cancellation, then
    /// shuts down gracefully; starts the server first unless ``start()`` was already called.
    public func run() async throws {
        let idle = self.state.withLock { box -> Bool in
            if case .idle = box.state { return true }
            return false
        }
        if idle { try await self.start() }
        await withGracefulShutdownHandler {
            await withTaskCancellationHandler {
                try? await self.stopped.futureResult.get()
            } onCancel: {
                Task { await self.shutdown() }
            }
        } onGracefulShutdown: {
            Task { await self.shutdown() }
        }
    }
}

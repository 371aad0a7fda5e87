import NIOCore
import NIOPosix
import RPCCore

/// A client transport: one HTTP/2 connection (cleartext, prior knowledge) to one server,
/// multiplexing every call; reconnects with exponential backoff when the connection is lost.
///
/// While a reconnect is backing off, calls fail fast with `UNAVAILABLE` instead of queueing.
public final class HTTP2ClientTransport: ClientTransport {
    /// Client settings.
    public struct Configuration: Sendable {
        /// The server's host name or address.
        public var host: String
        /// The server's port.
        public var port: Int
        /// The largest response message accepted; larger ones end the call with `RESOURCE_EXHAUSTED`.
        public var maxReceiveMessageBytes: Int
        /// The largest response header list accepted.
        public var maxHeaderListBytes: Int
        /// How long a connection attempt may take.
        public var connectTimeout: Duration
        /// The first wait after a failed connection attempt; it grows by ``backoffMultiplier``.
        public var initialBackoff: Duration
        /// The longest wait between attempts.
        public var maxBackoff: Duration
        /// Growth factor of the wait between attempts.
        public var backoffMultiplier: Double
        /// The flow-control window of each stream.
        public var initialStreamWindowBytes: Int
        /// The flow-control window of the connection.
        public var connectionWindowBytes: Int

        /// Creates a configuration with gRPC's usual defaults.
        public init(
            host: String,
            port: Int,
            maxReceiveMessageBytes: Int = 4 * 1024 * 1024,
            maxHeaderListBytes: Int = 16 * 1024,
            connectTimeout: Duration = .seconds(20),
            initialBackoff: Duration = .seconds(1),
            maxBackoff: Duration = .seconds(30),
            backoffMultiplier: Double = 1.6,
            initialStreamWindowBytes: Int = 1024 * 1024,
            connectionWindowBytes: Int = 16 * 1024 * 1024
        ) {
            self.host = host
            self.port = port
            self.maxReceiveMessageBytes = maxReceiveMessageBytes
            self.maxHeaderListBytes = maxHeaderListBytes
            self.connectTimeout = connectTimeout
            self.initialBackoff = initialBackoff
            self.maxBackoff = maxBackoff
            self.backoffMultiplier = backoffMultiplier
            self.initialStreamWindowBytes = initialStreamWindowBytes
            self.connectionWindowBytes = connectionWindowBytes
        }

        /// The `:authority` of requests.
        var authority: String { "\(self.host):\(self.port)" }
    }

    private struct Connection: Sendable {
        let channel: any Channel
        let handler: NIOLoopBound<ClientConnectionHandler>
    }

    private enum State: Sendable {
        case idle
        /// `lastDelay`: the backoff before this attempt (zero for a first attempt), from which the
        /// next one grows if this attempt fails.
        case connecting(EventLoopFuture<Connection>, lastDelay: Duration)
        case ready(Connection)
        case backingOff(until: ContinuousClock.Instant, delay: Duration, error: String)
        case closed
    }

    /// The configuration the transport was created with.
    public let configuration: Configuration
    private let group: any EventLoopGroup
    private let state = LockedBox<State>(.idle)

    /// Creates a transport; it connects on the first call.
    public init(configuration: Configuration, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        self.configuration = configuration
        self.group = group
    }

    public func openStream(
        method: MethodDescriptor,
        metadata: Metadata,
        options: CallOptions
    ) async throws -> any ClientStream {
        // A connection may turn out to be going away between lookup and use: try a fresh one once.
        for _ in 0..<2 {
            let connection = try await self.connection()
            let eventLoop = connection.channel.eventLoop
            let stream = try await eventLoop.submit {
                connection.handler.value.open(method: method, metadata: metadata, options: options).map {
                    NIOLoopBound($0, eventLoop: eventLoop)
                }
            }.get()
            if let stream { return HTTP2ClientStream(state: stream, handler: connection.handler) }
            self.forget(connection)
        }
        throw RPCError(code: .unavailable, message: "The connection to \(self.configuration.authority) is closing.")
    }

    /// Closes the connection; calls in flight end with `UNAVAILABLE`, later calls fail.
    public func close() async {
        let previous = self.state.withLock { state -> State in
            defer { state = .closed }
            return state
        }
        switch previous {
        case .ready(let connection): try? await connection.channel.close()
        case .connecting(let future, _): try? await future.get().channel.close()
        default: break
        }
    }

    private func forget(_ connection: Connection) {
        self.state.withLock { state in
            if case .ready(let current) = state, current.channel === connection.channel { state = .idle }
        }
    }

    private func connection() async throws -> Connection {
        let action = self.state.withLock { state -> Result<EventLoopFuture<Connection>, RPCError> in
            switch state {
            case .ready(let connection):
                if connection.channel.isActive {
                    return .success(connection.channel.eventLoop.makeSucceededFuture(connection))
                }
                fallthrough
            case .idle:
                let future = self.connect()
                state = .connecting(future, lastDelay: .zero)
                return .success(future)
            case .connecting(let future, _):
                return .success(future)
            case .backingOff(let until, let delay, let error):
                if ContinuousClock.now < until {
                    return .failure(
                        RPCError(code: .unavailable, message: "Cannot reach \(self.configuration.authority): \(error)")
                    )
                }
                let future = self.connect()
                state = .connecting(future, lastDelay: delay)
                return .success(future)
            case .closed:
                return .failure(RPCError(code: .unavailable, message: "The client transport is closed."))
            }
        }
        let future = try action.get()
        do {
            let connection = try await future.get()
            self.state.withLock { state in
                if case .connecting = state { state = .ready(connection) }
            }
            return connection
        } catch {
            let message = "\(error)"
            self.state.withLock { state in
                guard case .connecting(_, let lastDelay) = state else { return }
                let delay = Self.nextBackoff(after: lastDelay, configuration: self.configuration)
                state = .backingOff(until: .now + Backoff.jittered(delay), delay: delay, error: message)
            }
            throw RPCError(
                code: .unavailable,
                message: "Cannot connect to \(self.configuration.authority): \(message)",
                cause: error
            )
        }
    }

    /// The wait after a failed attempt: the initial backoff first, then growing by the multiplier up
    /// to the maximum (callers add ±20 % jitter so that many clients do not retry in step).
    static func nextBackoff(after previous: Duration, configuration: Configuration) -> Duration {
        Backoff(
            initial: configuration.initialBackoff,
            maximum: configuration.maxBackoff,
            multiplier: configuration.backoffMultiplier
        ).delay(after: previous)
    }

    private func connect() -> EventLoopFuture<Connection> {
        let configuration = self.configuration
        let timeout = TimeAmount(configuration.connectTimeout)
        return ClientBootstrap(group: self.group)
            .connectTimeout(timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        ClientConnectionHandler(configuration: configuration)
                    )
                }
            }
            .connect(host: configuration.host, port: configuration.port)
            .flatMapThrowing { channel in
                let handler = try channel.pipeline.syncOperations.handler(type: ClientConnectionHandler.self)
                let connection = Connection(
                    channel: channel,
                    handler: NIOLoopBound(handler, eventLoop: channel.eventLoop)
                )
                channel.closeFuture.whenComplete { [weak self] _ in self?.forget(connection) }
                return connection
            }
    }
}

/// A call's stream as ``RPCClient`` sees it: each operation hops onto the connection's event loop.
struct HTTP2ClientStream: ClientStream {
    let state: NIOLoopBound<ClientStreamState>
    let handler: NIOLoopBound<ClientConnectionHandler>

    private var eventLoop: any EventLoop { self.state.eventLoop }

    func send(_ message: [UInt8]) async throws {
        try await self.eventLoop.flatSubmit { self.handler.value.send(self.state.value, message) }.get()
    }

    func closeSend() async throws {
        try await self.eventLoop.submit { self.handler.value.closeSend(self.state.value) }.get()
    }

    func receive() async throws -> ClientStreamPart {
        try await self.eventLoop.flatSubmit { self.handler.value.receive(self.state.value) }.get()
    }

    func cancel() {
        self.eventLoop.execute {
            self.handler.value.cancel(
                self.state.value,
                status: Status(code: .cancelled, message: "The call was cancelled.")
            )
        }
    }
}

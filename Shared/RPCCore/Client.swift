import SwiftProtobuf

/// Per-call settings of a client.
public struct CallOptions: Sendable {
    /// How long the call may take; sent to the server as `grpc-timeout`. `nil`: no deadline.
    public var timeout: Duration?
    /// Whether request messages are gzip-compressed.
    public var compressRequests: Bool

    /// Creates options.
    public init(timeout: Duration? = nil, compressRequests: Bool = false) {
        self.timeout = timeout
        self.compressRequests = compressRequests
    }

    /// No deadline, no compression.
    public static let defaults = CallOptions()
}

/// One thing received on a client stream, in order: initial metadata, messages, then the status.
public enum ClientStreamPart: Sendable {
    /// The response headers' custom metadata.
    case metadata(Metadata)
    /// One serialized response message.
    case message([UInt8])
    /// The final status with the trailers' custom metadata; nothing follows.
    case status(Status, Metadata)
}

/// One open call at the transport level: serialized messages out, parts in.
///
/// A single task receives; sending may happen from another task.
public protocol ClientStream: Sendable {
    /// Sends one serialized request; suspends while the server is not reading.
    func send(_ message: [UInt8]) async throws
    /// Half-closes: tells the server no more requests follow.
    func closeSend() async throws
    /// The next part; after `.status` it must not be called again.
    func receive() async throws -> ClientStreamPart
    /// Ends the call early (RST_STREAM CANCEL); the next `receive` returns a `CANCELLED` status.
    func cancel()
}

/// Opens calls to a server. The HTTP/2 transport implements it; tests may too.
public protocol ClientTransport: Sendable {
    /// Opens a call; throws `UNAVAILABLE` when the server cannot be reached.
    func openStream(
        method: MethodDescriptor,
        metadata: Metadata,
        options: CallOptions
    ) async throws
        -> any ClientStream
}

/// A unary or client-streaming response with the metadata around it.
public struct ClientResponse<Output: Sendable>: Sendable {
    /// The response message.
    public var message: Output
    /// The custom metadata of the response headers.
    public var initialMetadata: Metadata
    /// The custom metadata of the trailers.
    public var trailingMetadata: Metadata
}

/// A typed call in progress: send requests, read responses, see metadata and status.
public final class ClientCall<Input: SwiftProtobuf.Message & Sendable, Output: SwiftProtobuf.Message & Sendable>:
    Sendable
{
    private let stream: any ClientStream
    private let state = LockedBox(State())

    private struct State: Sendable {
        var initialMetadata: Metadata?
        var trailingMetadata = Metadata()
        var status: Status?
    }

    init(stream: any ClientStream) { self.stream = stream }

    /// Sends one request.
    public func send(_ message: Input) async throws {
        try await self.stream.send(try message.serializedBytes())
    }

    /// Tells the server that no more requests follow.
    public func closeSend() async throws { try await self.stream.closeSend() }

    /// Cancels the call.
    public func cancel() { self.stream.cancel() }

    /// The next response, `nil` after the last one; throws ``RPCError`` when the call ends with a
    /// non-OK status.
    public func receive() async throws -> Output? {
        while true {
            if let status = self.state.value.status {
                if status.code == .ok { return nil }
                throw RPCError(code: status.code, message: status.message, metadata: self.trailingMetadata)
            }
            switch try await self.stream.receive() {
            case .metadata(let metadata):
                self.state.withLock { $0.initialMetadata = metadata }
            case .message(let bytes):
                do {
                    return try Output(serializedBytes: bytes)
                } catch {
                    self.stream.cancel()
                    throw RPCError(
                        code: .internalError,
                        message: "The response is not a valid \(Output.protoMessageName) message.",
                        cause: error
                    )
                }
            case .status(let status, let trailers):
                self.state.withLock {
                    if $0.initialMetadata == nil { $0.initialMetadata = Metadata() }
                    $0.status = status
                    $0.trailingMetadata = trailers
                }
            }
        }
    }

    /// The responses as a sequence (see ``receive()``).
    public var responses: RPCAsyncSequence<Output> {
        RPCAsyncSequence { try await self.receive() }
    }

    /// The response headers' metadata, waiting for them if needed.
    public func initialMetadata() async throws -> Metadata {
        while true {
            if let metadata = self.state.value.initialMetadata { return metadata }
            switch try await self.stream.receive() {
            case .metadata(let metadata):
                self.state.withLock { $0.initialMetadata = metadata }
            case .message:
                // Headers always precede messages; the transport guarantees the order.
                preconditionFailure("a message arrived before the response headers")
            case .status(let status, let trailers):
                self.state.withLock {
                    $0.initialMetadata = Metadata()
                    $0.status = status
                    $0.trailingMetadata = trailers
                }
            }
        }
    }

    /// The trailers' metadata; empty until the call has ended.
    public var trailingMetadata: Metadata { self.state.value.trailingMetadata }

    /// The final status; `nil` until the call has ended.
    public var status: Status? { self.state.value.status }
}

/// A typed client for any service, over a transport.
///
/// Generated service clients wrap it; it can also call any ``RPCMethod`` directly.
public struct RPCClient: Sendable {
    /// The transport calls go over.
    public let transport: any ClientTransport
    /// Metadata added to every call (for instance `authorization`).
    public var defaultMetadata: Metadata

    /// Creates a client.
    public init(transport: any ClientTransport, defaultMetadata: Metadata = Metadata()) {
        self.transport = transport
        self.defaultMetadata = defaultMetadata
    }

    /// Opens a call of any kind and runs `body` with it; the call is cancelled if `body` returns or
    /// throws before it has ended.
    public func withCall<Input, Output, Result: Sendable>(
        _ method: RPCMethod<Input, Output>,
        metadata: Metadata = Metadata(),
        options: CallOptions = .defaults,
        _ body: (ClientCall<Input, Output>) async throws -> Result
    ) async throws -> Result {
        var allMetadata = self.defaultMetadata
        allMetadata.add(contentsOf: metadata)
        let stream = try await self.transport.openStream(
            method: method.descriptor,
            metadata: allMetadata,
            options: options
        )
        let call = ClientCall<Input, Output>(stream: stream)
        do {
            let result = try await body(call)
            if call.status == nil { stream.cancel() }
            return result
        } catch {
            if call.status == nil { stream.cancel() }
            throw error
        }
    }

    /// Makes a unary call.
    public func unary<Input, Output>(
        _ method: RPCMethod<Input, Output>,
        _ request: Input,
        metadata: Metadata = Metadata(),
        options: CallOptions = .defaults
    ) async throws -> ClientResponse<Output> {
        try await self.clientStreaming(method, [request], metadata: metadata, options: options)
    }

    /// Makes a client-streaming call with the given requests.
    public func clientStreaming<Input, Output>(
        _ method: RPCMethod<Input, Output>,
        _ requests: some Sequence<Input>,
        metadata: Metadata = Metadata(),
        options: CallOptions = .defaults
    ) async throws -> ClientResponse<Output> {
        try await self.withCall(method, metadata: metadata, options: options) { call in
            for request in requests { try await call.send(request) }
            try await call.closeSend()
            guard let response = try await call.receive() else {
                throw RPCError(code: .internalError, message: "\(method.descriptor) ended without a response message.")
            }
            guard try await call.receive() == nil else {
                throw RPCError(code: .internalError, message: "\(method.descriptor) sent more than one response.")
            }
            return ClientResponse(
                message: response,
                initialMetadata: try await call.initialMetadata(),
                trailingMetadata: call.trailingMetadata
            )
        }
    }

    /// Makes a server-streaming call and runs `body` with its responses.
    public func serverStreaming<Input, Output, Result: Sendable>(
        _ method: RPCMethod<Input, Output>,
        _ request: Input,
        metadata: Metadata = Metadata(),
        options: CallOptions = .defaults,
        _ body: (ClientCall<Input, Output>) async throws -> Result
    ) async throws -> Result {
        try await self.withCall(method, metadata: metadata, options: options) { call in
            try await call.send(request)
            try await call.closeSend()
            return try await body(call)
        }
    }
}

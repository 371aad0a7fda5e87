import Foundation
import SwiftProtobuf

/// A method a server can route to: its descriptor and a handler over serialized messages.
///
/// Build them with the typed factories (``unary(_:handler:)`` and friends), which decode requests,
/// encode responses and check message counts; generated service protocols do so for you.
public struct ServerMethod: Sendable {
    /// The serialized form of a handler: requests in, responses out.
    public typealias Handler =
        @Sendable (
            _ requests: RPCAsyncSequence<[UInt8]>,
            _ responses: RPCWriter<[UInt8]>,
            _ context: ServerContext
        ) async throws -> Void

    /// The method this handles.
    public let descriptor: MethodDescriptor
    /// The method's call kind.
    public let kind: CallKind
    /// The handler.
    public let handler: Handler

    /// Creates a method from a handler over serialized messages.
    public init(descriptor: MethodDescriptor, kind: CallKind, handler: @escaping Handler) {
        self.descriptor = descriptor
        self.kind = kind
        self.handler = handler
    }

    /// A handler for a unary method.
    public static func unary<Input, Output>(
        _ method: RPCMethod<Input, Output>,
        handler: @escaping @Sendable (Input, ServerContext) async throws -> Output
    ) -> ServerMethod {
        ServerMethod(descriptor: method.descriptor, kind: .unary) { requests, responses, context in
            let request = try await Self.singleRequest(requests, as: Input.self, method: method.descriptor)
            try await responses.write(try Self.encode(try await handler(request, context)))
        }
    }

    /// A handler for a server-streaming method.
    public static func serverStreaming<Input, Output>(
        _ method: RPCMethod<Input, Output>,
        handler: @escaping @Sendable (Input, RPCWriter<Output>, ServerContext) async throws -> Void
    ) -> ServerMethod {
        ServerMethod(descriptor: method.descriptor, kind: .serverStreaming) { requests, responses, context in
            let request = try await Self.singleRequest(requests, as: Input.self, method: method.descriptor)
            try await handler(request, responses.map(Self.encode), context)
        }
    }

    /// A handler for a client-streaming method.
    public static func clientStreaming<Input, Output>(
        _ method: RPCMethod<Input, Output>,
        handler: @escaping @Sendable (RPCAsyncSequence<Input>, ServerContext) async throws -> Output
    ) -> ServerMethod {
        ServerMethod(descriptor: method.descriptor, kind: .clientStreaming) { requests, responses, context in
            let response = try await handler(requests.map(Self.decoder(Input.self)), context)
            try await responses.write(try Self.encode(response))
        }
    }

    /// A handler for a bidirectional-streaming method.
    public static func bidirectional<Input, Output>(
        _ method: RPCMethod<Input, Output>,
        handler:
            @escaping @Sendable (RPCAsyncSequence<Input>, RPCWriter<Output>, ServerContext) async throws -> Void
    ) -> ServerMethod {
        ServerMethod(descriptor: method.descriptor, kind: .bidirectional) { requests, responses, context in
            try await handler(requests.map(Self.decoder(Input.self)), responses.map(Self.encode), context)
        }
    }

    private static func singleRequest<Input: SwiftProtobuf.Message>(
        _ requests: RPCAsyncSequence<[UInt8]>,
        as type: Input.Type,
        method: MethodDescriptor
    ) async throws -> Input {
        var iterator = requests.makeAsyncIterator()
        guard let bytes = try await iterator.next() else {
            throw RPCError(
                code: .internalError,
                message: "\(method) expects one request message; the client sent none."
            )
        }
        guard try await iterator.next() == nil else {
            throw RPCError(
                code: .internalError,
                message: "\(method) expects one request message; the client sent more."
            )
        }
        return try decoder(Input.self)(bytes)
    }

    private static func decoder<Input: SwiftProtobuf.Message>(_ type: Input.Type) -> @Sendable ([UInt8]) throws -> Input
    {
        { bytes in
            do {
                return try Input(serializedBytes: bytes)
            } catch {
                throw RPCError(
                    code: .internalError,
                    message: "The request is not a valid \(Input.protoMessageName) message.",
                    cause: error
                )
            }
        }
    }

    @Sendable private static func encode<Output: SwiftProtobuf.Message>(_ message: Output) throws -> [UInt8] {
        try message.serializedBytes()
    }
}

/// A set of methods served under one service name.
///
/// Generated service protocols conform to it; implement their methods and pass the value to a server.
public protocol RPCService: Sendable {
    /// The service's name and protobuf descriptors.
    var serviceDescriptor: ServiceDescriptor { get }
    /// The methods to route to.
    var methods: [ServerMethod] { get }
}

extension RPCService {
    /// This service with `replacement` serving its method instead of the handler the service protocol
    /// routes to; typically a handler that decodes the request as a wire-compatible message that keeps
    /// some fields serialized, for a receiver that passes them on as they came. `replacement` must be
    /// one of the service's methods (a programming error otherwise, not a method silently left out).
    public func serving(_ replacement: ServerMethod) -> some RPCService {
        precondition(
            methods.contains { $0.descriptor == replacement.descriptor && $0.kind == replacement.kind },
            "\(replacement.descriptor) is not a \(replacement.kind) method of \(serviceDescriptor.fullName)"
        )
        return ReplacedMethod(base: self, replacement: replacement)
    }
}

/// A service with one method's handler replaced (see ``RPCService/serving(_:)``).
private struct ReplacedMethod<Base: RPCService>: RPCService {
    let base: Base
    let replacement: ServerMethod

    var serviceDescriptor: ServiceDescriptor { base.serviceDescriptor }

    var methods: [ServerMethod] {
        base.methods.map { $0.descriptor == replacement.descriptor ? replacement : $0 }
    }
}

/// A message as it came: decoded, and serialized as the sender wrote it, for a receiver that passes
/// those bytes on or stores them instead of encoding the message again (see
/// ``RPCService/serving(_:)``).
public struct KeptMessage<Message: SwiftProtobuf.Message & Sendable>: Sendable {
    public var message: Message
    public var bytes: Data

    /// A message and its serialized form (`bytes` must decode to `message`).
    public init(_ message: Message, bytes: Data) {
        self.message = message
        self.bytes = bytes
    }

    /// A message serialized here (callers in process: tests, benchmarks).
    public init(_ message: Message) throws {
        self.init(message, bytes: try message.serializedBytes())
    }

    /// Each of `field`'s elements (a `repeated bytes` field standing in for a repeated `Message` field)
    /// decoded, with its bytes.
    ///
    /// - Throws: ``RPCError`` `invalidArgument` naming the first element that does not decode.
    public static func decode(_ elements: [Data], field: String) throws -> [KeptMessage] {
        try RPCError.readingEach(elements, of: field, failing: "is not a valid \(Message.protoMessageName)") {
            KeptMessage(try Message(serializedBytes: $0), bytes: $0)
        }
    }
}

extension RPCError {
    /// Each of a request field's elements read by `read`, for a handler that reads them itself (from
    /// bytes it kept).
    ///
    /// - Throws: `invalidArgument` naming the first element `read` fails on: "`field`[index] `problem`
    ///   (the error); nothing of this call was taken".
    public static func readingEach<Element, Read>(
        _ elements: [Element],
        of field: String,
        failing problem: String,
        _ read: (Element) throws -> Read
    ) throws -> [Read] {
        try elements.enumerated().map { index, element in
            do {
                return try read(element)
            } catch {
                throw RPCError(
                    code: .invalidArgument,
                    message: "\(field)[\(index)] \(problem) (\(error)); nothing of this call was taken"
                )
            }
        }
    }
}

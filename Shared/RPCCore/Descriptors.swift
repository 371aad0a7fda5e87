import SwiftProtobuf

/// Names one RPC method: `package.Service` and `Method`, which make the HTTP/2 path.
public struct MethodDescriptor: Sendable, Hashable, CustomStringConvertible {
    /// The fully qualified service name, e.g. `grpc.testing.TestService`.
    public let service: String
    /// The method name, e.g. `UnaryCall`.
    public let method: String
    /// The request path, `/service/method`.
    public let path: String

    /// Creates a descriptor.
    public init(service: String, method: String) {
        self.service = service
        self.method = method
        self.path = "/\(service)/\(method)"
    }

    public var description: String { self.path }
}

/// How many messages each side of a method sends.
public enum CallKind: Sendable, Hashable {
    /// One request, one response.
    case unary
    /// One request, any number of responses.
    case serverStreaming
    /// Any number of requests, one response.
    case clientStreaming
    /// Any number each way.
    case bidirectional
}

/// A method with its message types: what typed clients and handlers are built from.
public struct RPCMethod<Input: SwiftProtobuf.Message & Sendable, Output: SwiftProtobuf.Message & Sendable>: Sendable {
    /// The method's name.
    public let descriptor: MethodDescriptor
    /// The method's call kind.
    public let kind: CallKind

    /// Creates a typed method.
    public init(service: String, method: String, kind: CallKind) {
        self.descriptor = MethodDescriptor(service: service, method: method)
        self.kind = kind
    }

    /// `method` with other message types: ones whose encodings are the same on the wire (a `bytes`
    /// field where `method`'s message has an embedded message), for a sender or receiver that keeps
    /// some of a message serialized.
    public init<OtherInput, OtherOutput>(wireCompatibleWith method: RPCMethod<OtherInput, OtherOutput>) {
        self.descriptor = method.descriptor
        self.kind = method.kind
    }
}

/// A service's name and the protobuf descriptors that define it, for server reflection.
public struct ServiceDescriptor: Sendable, Hashable {
    /// The fully qualified service name.
    public let fullName: String
    /// The name of the `.proto` file that defines the service.
    public let fileName: String
    /// Serialized `FileDescriptorProto`s: the defining file and every file it imports, transitively,
    /// keyed by file name.
    public let fileDescriptors: [String: [UInt8]]

    /// Creates a descriptor.
    public init(fullName: String, fileName: String, fileDescriptors: [String: [UInt8]]) {
        self.fullName = fullName
        self.fileName = fileName
        self.fileDescriptors = fileDescriptors
    }
}

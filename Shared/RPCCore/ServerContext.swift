/// What a handler knows about its call, and how it sets response metadata.
public struct ServerContext: Sendable {
    /// The method being called.
    public let method: MethodDescriptor
    /// The request's custom headers (reserved HTTP/2 and gRPC headers removed).
    public let requestMetadata: Metadata
    /// When the client gives up on the call, from `grpc-timeout`; `nil` without one. The handler's
    /// task is cancelled at this instant.
    public let deadline: ContinuousClock.Instant?
    /// The peer's address, for logs.
    public let peer: String
    /// Whether the request messages arrived compressed (`grpc-encoding` other than identity).
    public let requestEncoding: String?

    private let responseMetadata: LockedBox<ResponseMetadata>

    struct ResponseMetadata: Sendable {
        var initial = Metadata()
        var initialSent = false
        var trailing = Metadata()
    }

    /// Creates a context; transports call this.
    public init(
        method: MethodDescriptor,
        requestMetadata: Metadata,
        deadline: ContinuousClock.Instant?,
        peer: String,
        requestEncoding: String? = nil
    ) {
        self.method = method
        self.requestMetadata = requestMetadata
        self.deadline = deadline
        self.peer = peer
        self.requestEncoding = requestEncoding
        self.responseMetadata = LockedBox(ResponseMetadata())
    }

    /// Adds metadata to the response headers.
    ///
    /// Takes effect only before the first response message is written (headers go out with it).
    /// - Returns: `false` when the headers have already been sent.
    @discardableResult
    public func addInitialMetadata(_ metadata: Metadata) -> Bool {
        self.responseMetadata.withLock { state in
            guard !state.initialSent else { return false }
            state.initial.add(contentsOf: metadata)
            return true
        }
    }

    /// Adds metadata to the trailers sent with the final status.
    public func addTrailingMetadata(_ metadata: Metadata) {
        self.responseMetadata.withLock { $0.trailing.add(contentsOf: metadata) }
    }

    /// Takes the initial metadata for sending; later additions are refused. Transports call this.
    public func takeInitialMetadata() -> Metadata {
        self.responseMetadata.withLock { state in
            state.initialSent = true
            return state.initial
        }
    }

    /// The trailing metadata set so far. Transports call this when the handler has finished.
    public var trailingMetadata: Metadata {
        self.responseMetadata.withLock { $0.trailing }
    }
}

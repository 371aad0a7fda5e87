/// An error that ends an RPC with a non-OK status.
///
/// Handlers throw it (or any error conforming to ``RPCErrorConvertible``) to choose the status the
/// client sees; every other error reaches the client as `UNKNOWN` with a generic message, so that
/// internals never leak. Clients receive it when a call ends with a non-OK status.
public struct RPCError: Error, Sendable, CustomStringConvertible {
    /// The status code sent to the peer.
    public var code: Status.Code
    /// The message sent to the peer in `grpc-message`.
    public var message: String
    /// Trailing metadata sent with (or received with) the status.
    public var metadata: Metadata
    /// The underlying error, kept for logs; never sent to the peer.
    public var cause: (any Error)?

    /// Creates an error.
    ///
    /// - Parameters:
    ///   - code: The status code; must not be `.ok`.
    ///   - message: A message saying what was wrong and where.
    ///   - metadata: Trailing metadata to send with the status.
    ///   - cause: The underlying error, for logs.
    public init(code: Status.Code, message: String, metadata: Metadata = Metadata(), cause: (any Error)? = nil) {
        precondition(code != .ok, "an RPCError cannot have the status OK")
        self.code = code
        self.message = message
        self.metadata = metadata
        self.cause = cause
    }

    /// The status this error stands for.
    public var status: Status { Status(code: self.code, message: self.message) }

    public var description: String {
        var text = "\(self.code): \(self.message)"
        if let cause = self.cause { text += " (cause: \(cause))" }
        return text
    }
}

/// A domain error that chooses the RPC status it is reported with.
///
/// Conform the errors whose message is safe and useful for clients (validation failures, missing
/// entities); anything that does not conform becomes `UNKNOWN` without its details.
public protocol RPCErrorConvertible: Error {
    /// The error as the client should see it.
    var rpcError: RPCError { get }
}

extension RPCError {
    /// Turns any error thrown by a handler into the error to report to the client.
    ///
    /// `RPCError` and ``RPCErrorConvertible`` keep their status; cancellation becomes `CANCELLED`;
    /// anything else becomes `UNKNOWN` with a generic message (the original stays in ``cause``).
    public init(reporting error: any Error) {
        switch error {
        case let error as RPCError:
            self = error
        case let error as any RPCErrorConvertible:
            self = error.rpcError
        case is CancellationError:
            self = RPCError(code: .cancelled, message: "The call was cancelled.", cause: error)
        default:
            self = RPCError(code: .unknown, message: "The server failed to handle the call.", cause: error)
        }
    }
}

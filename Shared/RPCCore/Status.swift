/// The outcome of an RPC: a code and a human-readable message, sent to the peer in the
/// `grpc-status` and `grpc-message` trailers.
public struct Status: Sendable, Hashable, CustomStringConvertible {
    /// The status code; `.ok` means the call succeeded.
    public var code: Code
    /// A message for developers; empty when there is nothing to add.
    public var message: String

    /// Creates a status with a code and an optional message.
    public init(code: Code, message: String = "") {
        self.code = code
        self.message = message
    }

    /// The status of a successful call.
    public static let ok = Status(code: .ok)

    public var description: String {
        self.message.isEmpty ? "\(self.code)" : "\(self.code): \(self.message)"
    }

    /// A gRPC status code. The numeric values are fixed by the gRPC protocol.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        /// The code's number on the wire (`grpc-status`).
        public let rawValue: Int

        /// Creates a code from its wire value; `nil` when the value is not a gRPC status code.
        public init?(rawValue: Int) {
            guard (0...16).contains(rawValue) else { return nil }
            self.rawValue = rawValue
        }

        private init(_ rawValue: Int) { self.rawValue = rawValue }

        public static let ok = Code(0)
        public static let cancelled = Code(1)
        public static let unknown = Code(2)
        public static let invalidArgument = Code(3)
        public static let deadlineExceeded = Code(4)
        public static let notFound = Code(5)
        public static let alreadyExists = Code(6)
        public static let permissionDenied = Code(7)
        public static let resourceExhausted = Code(8)
        public static let failedPrecondition = Code(9)
        public static let aborted = Code(10)
        public static let outOfRange = Code(11)
        public static let unimplemented = Code(12)
        public static let internalError = Code(13)
        public static let unavailable = Code(14)
        public static let dataLoss = Code(15)
        public static let unauthenticated = Code(16)

        private static let names = [
            "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
            "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
            "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
        ]

        /// The canonical upper-case name, e.g. `DEADLINE_EXCEEDED`.
        public var description: String { Self.names[self.rawValue] }
    }
}

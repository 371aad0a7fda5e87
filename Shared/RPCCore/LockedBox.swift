import Synchronization

/// A value behind a mutex, shareable across tasks.
///
/// `Mutex` itself is non-copyable; this class lets closures and structs hold one by reference.
public final class LockedBox<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>

    /// Creates a box holding `value`.
    public init(_ value: Value) { self.mutex = Mutex(value) }

    /// Runs `body` with exclusive access to the value.
    public func withLock<R: Sendable>(_ body: (inout sending Value) throws -> sending R) rethrows -> R {
        try self.mutex.withLock { try body(&$0) }
    }

    /// A copy of the current value.
    public var value: Value { self.mutex.withLock { $0 } }
}

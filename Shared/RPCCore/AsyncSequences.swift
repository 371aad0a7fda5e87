/// A type-erased asynchronous sequence of messages, as handlers receive requests and clients
/// receive responses.
///
/// Messages are pulled one at a time: the transport takes more data from the peer only as the
/// consumer asks for it, which is what keeps memory bounded when a consumer is slow.
public struct RPCAsyncSequence<Element: Sendable>: AsyncSequence, Sendable {
    public typealias Failure = any Error
    private let nextElement: @Sendable () async throws -> Element?

    /// Creates a sequence from a function that returns the next element, or `nil` at the end.
    public init(next: @escaping @Sendable () async throws -> Element?) {
        self.nextElement = next
    }

    /// A sequence with the given elements.
    public static func elements(_ elements: [Element]) -> Self {
        let remaining = LockedBox(elements[...])
        return Self {
            remaining.withLock { (slice: inout ArraySlice<Element>) in slice.popFirst() }
        }
    }

    /// Returns a sequence whose elements are this sequence's elements transformed.
    public func map<T: Sendable>(_ transform: @escaping @Sendable (Element) throws -> T) -> RPCAsyncSequence<T> {
        let next = self.nextElement
        return RPCAsyncSequence<T> {
            guard let element = try await next() else { return nil }
            return try transform(element)
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(nextElement: self.nextElement) }

    /// The iterator; `next()` throws the error that ended the stream, if any.
    public struct AsyncIterator: AsyncIteratorProtocol {
        fileprivate let nextElement: @Sendable () async throws -> Element?

        public mutating func next() async throws -> Element? { try await self.nextElement() }
    }
}

/// Writes messages to the other side of a call.
///
/// `write` returns once the transport has accepted the message; it suspends while the peer is not
/// reading, so a fast writer cannot fill memory.
public struct RPCWriter<Element: Sendable>: Sendable {
    private let writeElement: @Sendable (Element) async throws -> Void

    /// Creates a writer from a function that sends one message.
    public init(write: @escaping @Sendable (Element) async throws -> Void) {
        self.writeElement = write
    }

    /// Sends one message.
    public func write(_ element: Element) async throws { try await self.writeElement(element) }

    /// Sends each message in order.
    public func write(contentsOf elements: some Sequence<Element>) async throws {
        for element in elements { try await self.writeElement(element) }
    }

    /// Returns a writer that transforms each message before this writer sends it.
    public func map<T: Sendable>(_ transform: @escaping @Sendable (T) throws -> Element) -> RPCWriter<T> {
        let write = self.writeElement
        return RPCWriter<T> { try await write(try transform($0)) }
    }
}

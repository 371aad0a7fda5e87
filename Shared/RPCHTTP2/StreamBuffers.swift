import NIOCore
import RPCCore

/// Received messages of one stream, waiting for the consumer (a handler or a client call).
///
/// Flow control is tied to consumption: bytes of a stream are reported to nghttp2 as consumed
/// (so the peer's window reopens) only while no complete message is waiting. A consumer that stops
/// reading therefore stops the peer after at most one window of data, whatever the peer does.
/// Event-loop confined.
struct InboundMessages {
    private(set) var deframer: MessageDeframer
    private var ready = CircularBuffer<ByteBuffer>()
    private var heldBytes = 0
    private(set) var finished = false
    private(set) var failure: RPCError?
    private var waiter: EventLoopPromise<ByteBuffer?>?

    init(deframer: MessageDeframer) { self.deframer = deframer }

    /// The number of complete messages not yet taken.
    var readyCount: Int { self.ready.count }

    /// Takes in received DATA bytes.
    ///
    /// - Returns: the number of bytes that may be reported to nghttp2 as consumed now.
    /// - Throws: the framing error (bad prefix, oversized message, bad compression).
    mutating func receive(_ bytes: UnsafeRawBufferPointer) throws(RPCError) -> Int {
        guard self.failure == nil, !self.finished else { return bytes.count }
        self.deframer.append(bytes)
        do {
            while let message = try self.deframer.next() {
                if let waiter = self.waiter {
                    self.waiter = nil
                    waiter.succeed(message)
                } else {
                    self.ready.append(message)
                }
            }
        } catch {
            self.fail(error)
            throw error
        }
        if self.ready.isEmpty { return bytes.count }
        self.heldBytes += bytes.count
        return 0
    }

    /// The peer closed its side; a partly received message is an error.
    mutating func finish() throws(RPCError) {
        guard !self.finished, self.failure == nil else { return }
        if self.deframer.hasPartialMessage {
            let error = RPCError(code: .internalError, message: "The stream ended in the middle of a message.")
            self.fail(error)
            throw error
        }
        self.finished = true
        if self.ready.isEmpty, let waiter = self.waiter {
            self.waiter = nil
            waiter.succeed(nil)
        }
    }

    /// Ends the stream with an error; a waiting consumer gets it.
    mutating func fail(_ error: RPCError) {
        guard self.failure == nil else { return }
        self.failure = error
        if let waiter = self.waiter {
            self.waiter = nil
            waiter.fail(error)
        }
    }

    /// Hands the next message to `promise` now or when it arrives (`nil` at the end).
    ///
    /// - Returns: bytes that may now be reported to nghttp2 as consumed.
    mutating func take(_ promise: EventLoopPromise<ByteBuffer?>) -> Int {
        if let message = self.ready.popFirst() {
            promise.succeed(message)
        } else if let failure = self.failure {
            promise.fail(failure)
        } else if self.finished {
            promise.succeed(nil)
        } else {
            precondition(self.waiter == nil, "one consumer at a time")
            self.waiter = promise
        }
        guard self.ready.isEmpty else { return 0 }
        defer { self.heldBytes = 0 }
        return self.heldBytes
    }

    /// Takes every complete message at once (for single-request calls, read after END_STREAM).
    mutating func takeAll() -> [ByteBuffer] {
        defer { self.ready.removeAll() }
        return Array(self.ready)
    }
}

/// Framed messages of one stream waiting for nghttp2 to send them as DATA.
///
/// Writers are held back (their promise completes later) while more than ``highWatermark`` bytes
/// are waiting, so a peer that does not read cannot make us buffer without bound.
/// Event-loop confined.
struct OutboundMessages {
    /// Above this many waiting bytes, a writer waits.
    static let highWatermark = 256 * 1024

    private(set) var buffer: ByteBuffer
    private var writerWaiter: EventLoopPromise<Void>?
    /// nghttp2 was told there is nothing to send (`NGHTTP2_ERR_DEFERRED`); resume it on new bytes.
    var deferred = false
    /// Trailers to send once the buffer is empty; `nil` while the body may still grow.
    var trailers: [(String, String)]?
    /// For clients: the body ends without trailers (half-close).
    var endOfBody = false

    init(allocator: ByteBufferAllocator) { self.buffer = allocator.buffer(capacity: 0) }

    var isEmpty: Bool { self.buffer.readableBytes == 0 }

    /// Appends a message with its prefix.
    mutating func append(_ message: [UInt8], compress: Bool) {
        MessageFramer.frame(message, compress: compress, into: &self.buffer)
    }

    /// Whether a writer should wait before adding more.
    var isFull: Bool { self.buffer.readableBytes > Self.highWatermark }

    /// Registers a writer to be released when the buffer drains.
    mutating func waitForSpace(_ promise: EventLoopPromise<Void>) {
        if let previous = self.writerWaiter { previous.succeed(()) }
        self.writerWaiter = promise
    }

    /// Copies up to `target.count` bytes into `target`; releases a waiting writer when drained enough.
    mutating func read(into target: UnsafeMutableRawBufferPointer) -> Int {
        let count = min(target.count, self.buffer.readableBytes)
        if count > 0 {
            self.buffer.withUnsafeReadableBytes { source in
                target.copyMemory(from: UnsafeRawBufferPointer(rebasing: source.prefix(count)))
            }
            self.buffer.moveReaderIndex(forwardBy: count)
            if self.buffer.readableBytes == 0 { self.buffer.clear() }
        }
        if !self.isFull, let waiter = self.writerWaiter {
            self.writerWaiter = nil
            waiter.succeed(())
        }
        return count
    }

    /// Fails a waiting writer (the stream is gone).
    mutating func fail(_ error: any Error) {
        if let waiter = self.writerWaiter {
            self.writerWaiter = nil
            waiter.fail(error)
        }
    }
}

import CompressNIO
import NIOCore
import RPCCore

/// Splits a byte stream into gRPC messages: a 1-byte compressed flag, a 4-byte big-endian length,
/// then the message.
///
/// It enforces the receive limit as soon as a prefix announces a larger message, so an oversized
/// message is refused without waiting for (or buffering) its bytes.
struct MessageDeframer {
    /// The largest message accepted, after decompression.
    let maxMessageBytes: Int
    /// The stream's `grpc-encoding`, `nil` for identity.
    let encoding: String?
    private var buffer: ByteBuffer

    init(maxMessageBytes: Int, encoding: String?, allocator: ByteBufferAllocator) {
        self.maxMessageBytes = maxMessageBytes
        self.encoding = encoding
        self.buffer = allocator.buffer(capacity: 0)
    }

    /// Whether part of a message is buffered (a stream ending now would truncate it).
    var hasPartialMessage: Bool { self.buffer.readableBytes > 0 }

    /// Appends received bytes.
    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        self.buffer.writeBytes(bytes)
    }

    /// Appends received bytes.
    mutating func append(_ bytes: ByteBuffer) {
        var bytes = bytes
        self.buffer.writeBuffer(&bytes)
    }

    /// The next complete message, `nil` when more bytes are needed.
    mutating func next() throws(RPCError) -> ByteBuffer? {
        guard self.buffer.readableBytes >= 5,
            let flag = self.buffer.getInteger(at: self.buffer.readerIndex, as: UInt8.self),
            let length = self.buffer.getInteger(at: self.buffer.readerIndex + 1, as: UInt32.self)
        else { return nil }
        guard flag <= 1 else {
            throw RPCError(
                code: .internalError,
                message: "Invalid message prefix: compressed flag \(flag) (expected 0 or 1)."
            )
        }
        guard Int(length) <= self.maxMessageBytes else {
            throw RPCError(
                code: .resourceExhausted,
                message: "Received message of \(length) bytes exceeds the limit of \(self.maxMessageBytes) bytes."
            )
        }
        guard self.buffer.readableBytes >= 5 + Int(length) else { return nil }
        self.buffer.moveReaderIndex(forwardBy: 5)
        var message = self.buffer.readSlice(length: Int(length))!
        // Keep the buffer small: once everything is consumed, reuse its storage from the start.
        if self.buffer.readableBytes == 0 { self.buffer.clear() } else { self.buffer.discardReadBytes() }
        guard flag == 1 else { return message }
        guard let encoding = self.encoding, encoding != "identity" else {
            throw RPCError(
                code: .internalError,
                message: "Received a compressed message but the request declares no grpc-encoding."
            )
        }
        precondition(encoding == "gzip", "unsupported encodings are refused before any message is read")
        let tooLarge = RPCError(
            code: .resourceExhausted,
            message: "Decompressed message exceeds the limit of \(self.maxMessageBytes) bytes."
        )
        do {
            // compress-nio's `maxSize` bounds the allocation only roughly; the exact limit is checked after.
            let decompressed = try message.decompress(with: .gzip, maxSize: self.maxMessageBytes + 1)
            guard decompressed.readableBytes <= self.maxMessageBytes else { throw tooLarge }
            return decompressed
        } catch let error as CompressNIOError where error == .bufferOverflow {
            throw tooLarge
        } catch let error as RPCError {
            throw error
        } catch {
            throw RPCError(
                code: .internalError,
                message: "Could not decompress a gzip message: \(error).",
                cause: error
            )
        }
    }
}

/// Writes gRPC message prefixes.
enum MessageFramer {
    /// Appends `message` to `buffer` with its 5-byte prefix, gzip-compressing it when asked.
    static func frame(_ message: [UInt8], compress: Bool, into buffer: inout ByteBuffer) {
        // Should compression fail, the message goes uncompressed (flag 0), which every peer accepts.
        if compress {
            var input = ByteBuffer(bytes: message)
            if let compressed = try? input.compress(with: .gzip) {
                buffer.writeInteger(UInt8(1))
                buffer.writeInteger(UInt32(compressed.readableBytes))
                var compressed = compressed
                buffer.writeBuffer(&compressed)
                return
            }
        }
        buffer.writeInteger(UInt8(0))
        buffer.writeInteger(UInt32(message.count))
        buffer.writeBytes(message)
    }
}

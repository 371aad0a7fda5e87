import NIOCore
import RPCCore
import Testing

@testable import RPCHTTP2

@Suite struct GRPCHeadersTests {
    @Test(arguments: [
        ("1S", Duration.seconds(1)), ("100m", .milliseconds(100)), ("5M", .seconds(300)), ("2H", .seconds(7200)),
        ("250u", .microseconds(250)), ("99999999n", .nanoseconds(99_999_999)),
    ])
    func timeoutsParse(text: String, duration: Duration) {
        #expect(GRPCHeaders.parseTimeout(text) == duration)
    }

    @Test(arguments: ["", "S", "1", "123456789S", "1s", "-1S", "1.5S"])
    func malformedTimeoutsAreRejected(text: String) {
        #expect(GRPCHeaders.parseTimeout(text) == nil)
    }

    @Test func timeoutsFormatWithinEightDigits() {
        #expect(GRPCHeaders.formatTimeout(.milliseconds(1500)) == "1500000u")
        #expect(GRPCHeaders.formatTimeout(.seconds(3600)) == "3600000m")
        #expect(GRPCHeaders.parseTimeout(GRPCHeaders.formatTimeout(.seconds(86400 * 400))) != nil)
    }

    @Test func statusMessagesArePercentEncoded() {
        let message = "\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n"
        let encoded = GRPCHeaders.percentEncode(message)
        #expect(encoded.utf8.allSatisfy { $0 >= 0x20 && $0 <= 0x7E })
        #expect(encoded.hasPrefix("%09%0Atest with whitespace%0D%0A"))
        #expect(GRPCHeaders.percentDecode(encoded) == message)
        #expect(GRPCHeaders.percentDecode("100%") == "100%")
    }

    @Test(arguments: [
        ("application/grpc", true), ("application/grpc+proto", true), ("application/grpc;charset=utf-8", true),
        ("application/grpcx", false), ("application/json", false),
    ])
    func contentTypes(value: String, isGRPC: Bool) {
        #expect(GRPCHeaders.isGRPCContentType(value) == isGRPC)
    }
}

@Suite struct MessageFramingTests {
    private func deframer(limit: Int = 1024, encoding: String? = nil) -> MessageDeframer {
        MessageDeframer(maxMessageBytes: limit, encoding: encoding, allocator: ByteBufferAllocator())
    }

    private func framed(_ message: [UInt8], compress: Bool = false) -> ByteBuffer {
        var buffer = ByteBuffer()
        MessageFramer.frame(message, compress: compress, into: &buffer)
        return buffer
    }

    @Test func messagesSplitAcrossChunksAreReassembled() throws {
        var deframer = self.deframer()
        var bytes = self.framed([1, 2, 3])
        bytes.writeImmutableBuffer(self.framed([]))
        bytes.writeImmutableBuffer(self.framed(Array(repeating: 7, count: 300)))
        var messages: [[UInt8]] = []
        while bytes.readableBytes > 0, let chunk = bytes.readSlice(length: min(7, bytes.readableBytes)) {
            deframer.append(chunk)
            while let message = try deframer.next() { messages.append(Array(message.readableBytesView)) }
        }
        #expect(messages == [[1, 2, 3], [], Array(repeating: 7, count: 300)])
        #expect(!deframer.hasPartialMessage)
    }

    @Test func anOversizedPrefixIsRefusedBeforeItsBytesArrive() {
        var deframer = self.deframer(limit: 10)
        var prefix = ByteBuffer()
        prefix.writeInteger(UInt8(0))
        prefix.writeInteger(UInt32(11))
        deframer.append(prefix)
        #expect(throws: RPCError.self) { try deframer.next() }
        do {
            _ = try deframer.next()
        } catch {
            #expect(error.code == .resourceExhausted)
        }
    }

    @Test func anInvalidCompressedFlagIsAnInternalError() {
        var deframer = self.deframer()
        deframer.append(ByteBuffer(bytes: [2, 0, 0, 0, 0]))
        #expect {
            try deframer.next()
        } throws: { ($0 as? RPCError)?.code == .internalError }
    }

    @Test func aCompressedMessageWithoutEncodingIsAnInternalError() {
        var deframer = self.deframer()
        deframer.append(self.framed([1, 2, 3], compress: true))
        #expect {
            try deframer.next()
        } throws: { ($0 as? RPCError)?.code == .internalError }
    }

    @Test func gzipMessagesAreDecompressed() throws {
        var deframer = self.deframer(encoding: "gzip")
        let message = Array(repeating: UInt8(42), count: 1000)
        deframer.append(self.framed(message, compress: true))
        let decoded = try #require(try deframer.next())
        #expect(Array(decoded.readableBytesView) == message)
    }

    @Test func aGzipBombIsRefused() {
        var deframer = self.deframer(limit: 1000, encoding: "gzip")
        deframer.append(self.framed(Array(repeating: 0, count: 100_000), compress: true))
        #expect {
            try deframer.next()
        } throws: { ($0 as? RPCError)?.code == .resourceExhausted }
    }
}

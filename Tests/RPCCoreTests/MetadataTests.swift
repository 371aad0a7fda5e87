import Testing

@testable import RPCCore

@Suite struct MetadataTests {
    @Test func keysAreLowerCasedAndRepeatable() {
        var metadata = Metadata()
        metadata.add("X-Trace", "a")
        metadata.add("x-trace", "b")
        #expect(metadata[stringValues: "x-trace"] == ["a", "b"])
        #expect(metadata.first("X-TRACE") == "a")
    }

    @Test func binaryValuesTravelAsBase64() {
        var metadata = Metadata()
        metadata.add("x-blob-bin", bytes: [0xAB, 0xAB, 0xAB])
        #expect(metadata.wireEntries.map(\.value) == ["q6ur"])
        var received = Metadata()
        let added = received.addWireValue("x-blob-bin", "q6ur")
        #expect(added)
        #expect(received[binaryValues: "x-blob-bin"] == [[0xAB, 0xAB, 0xAB]])
    }

    @Test(arguments: [
        ([UInt8](), ""), ([0x66], "Zg"), ([0x66, 0x6F], "Zm8"), ([0x66, 0x6F, 0x6F], "Zm9v"),
        ([0xFF, 0x00, 0x10, 0x20], "/wAQIA"),
    ])
    func base64RoundTrips(bytes: [UInt8], encoded: String) {
        #expect(Base64.encode(bytes) == encoded)
        #expect(Base64.decode(encoded) == bytes)
    }

    @Test func paddedBase64IsAccepted() {
        #expect(Base64.decode("Zg==") == [0x66])
    }

    @Test(arguments: ["Zg=a", "Z", "Zm9v!", "Zm 9v"])
    func invalidBase64IsRejected(text: String) {
        #expect(Base64.decode(text) == nil)
        var metadata = Metadata()
        let added = metadata.addWireValue("x-bin", text)
        #expect(!added)
        #expect(metadata.isEmpty)
    }
}

@Suite struct ErrorMappingTests {
    struct DomainError: RPCErrorConvertible {
        var rpcError: RPCError { RPCError(code: .notFound, message: "no such person") }
    }
    struct Internal: Error {}

    @Test func domainErrorsKeepTheirStatus() {
        #expect(RPCError(reporting: DomainError()).status == Status(code: .notFound, message: "no such person"))
    }

    @Test func otherErrorsBecomeUnknownWithoutDetails() {
        let error = RPCError(reporting: Internal())
        #expect(error.code == .unknown)
        #expect(!error.message.contains("Internal"))
        #expect(error.cause is Internal)
    }

    @Test func cancellationBecomesCancelled() {
        #expect(RPCError(reporting: CancellationError()).code == .cancelled)
    }

    @Test func statusCodesHaveCanonicalNames() {
        #expect("\(Status.Code.deadlineExceeded)" == "DEADLINE_EXCEEDED")
        #expect(Status.Code(rawValue: 17) == nil)
        #expect(Status.Code(rawValue: 16) == .unauthenticated)
    }
}

import InteropProto
import Logging
import NIOCore
import NIOEmbedded
import RPCCore
import Testing

@testable import RPCHTTP2

/// A raw HTTP/2 client (an nghttp2 client session) that records everything the server sends.
private final class TestPeer: NGHTTP2SessionDelegate {
    var session: NGHTTP2Session!
    var fields: [Int32: [(String, String)]] = [:]
    var headerBlocks: [Int32: Int] = [:]
    var endedStreams: Set<Int32> = []
    var resets: [Int32: UInt32] = [:]
    var goAway: (lastStreamID: Int32, errorCode: UInt32)?
    private var bodies: [Int32: [UInt8]] = [:]
    private var pendingBody: [UInt8] = []

    init() {
        self.session = NGHTTP2Session(
            role: .client,
            delegate: self,
            settings: .init(
                maxConcurrentStreams: 100,
                initialStreamWindow: 65535,
                connectionWindow: 65535,
                maxHeaderListBytes: 65536
            )
        )
    }

    /// Starts a request; `body` is sent as DATA and the stream ends with it.
    func request(_ headers: [(String, String)], body: [UInt8] = []) -> Int32 {
        self.pendingBody = body
        let id = self.session.submitRequest(headers: headers)!
        self.bodies[id] = body
        return id
    }

    static func grpcRequest(path: String, extra: [(String, String)] = []) -> [(String, String)] {
        [
            (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "test"),
            ("content-type", "application/grpc"), ("te", "trailers"),
        ] + extra
    }

    func value(_ name: String, on stream: Int32) -> String? {
        self.fields[stream]?.first { $0.0 == name }?.1
    }

    func sessionBeginHeaders(streamID: Int32) {}
    func sessionHeader(streamID: Int32, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) -> Bool {
        self.fields[streamID, default: []].append(
            (String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self))
        )
        return true
    }
    func sessionHeadersComplete(streamID: Int32, endStream: Bool) {
        self.headerBlocks[streamID, default: 0] += 1
        if endStream { self.endedStreams.insert(streamID) }
    }
    func sessionData(streamID: Int32, bytes: UnsafeRawBufferPointer) {
        self.session.consumeConnection(bytes.count)
        self.session.consumeStream(streamID, bytes.count)
    }
    func sessionDataEndStream(streamID: Int32) { self.endedStreams.insert(streamID) }
    func sessionStreamClosed(streamID: Int32, errorCode: UInt32) {
        if errorCode != 0 { self.resets[streamID] = errorCode }
    }
    func sessionReadBody(streamID: Int32, into buffer: UnsafeMutableRawBufferPointer) -> BodyChunk {
        let body = self.bodies[streamID] ?? []
        let count = min(body.count, buffer.count)
        buffer.copyBytes(from: body.prefix(count))
        self.bodies[streamID] = Array(body.dropFirst(count))
        return self.bodies[streamID]!.isEmpty ? .endStream(count) : .bytes(count)
    }
    func sessionSentFrame(streamID: Int32, type: UInt8, endStream: Bool) {}
    func sessionReceivedGoAway(lastStreamID: Int32, errorCode: UInt32) {
        self.goAway = (lastStreamID, errorCode)
    }
    func sessionInvalidFrame(streamID: Int32) {}
}

/// A server connection handler in an EmbeddedChannel, talking to a ``TestPeer``: no sockets, no
/// threads. Only paths that never reach a handler task are exercised here (the task would hop
/// onto the embedded loop from another thread); the socket tests cover the rest.
private struct Harness {
    let channel: EmbeddedChannel
    let loop: EmbeddedEventLoop
    let peer = TestPeer()

    init(_ configuration: RPCServer.Configuration = .init()) throws {
        self.loop = EmbeddedEventLoop()
        self.channel = EmbeddedChannel(loop: self.loop)
        let service = Harness.Service()
        try self.channel.pipeline.syncOperations.addHandler(
            ServerConnectionHandler(
                router: Router(services: [service]),
                configuration: configuration,
                logger: Logger(label: "test")
            )
        )
        try self.channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
    }

    /// Moves bytes both ways until neither side has anything to say.
    func exchange() throws {
        for _ in 0..<20 {
            var outgoing = ByteBuffer()
            try self.peer.session.send(into: &outgoing)
            if outgoing.readableBytes > 0, self.channel.isActive { try self.channel.writeInbound(outgoing) }
            var received = false
            while let bytes = try self.channel.readOutbound(as: ByteBuffer.self) {
                try? self.peer.session.receive(bytes)
                received = true
            }
            if !received && outgoing.readableBytes == 0 { return }
        }
    }

    struct Service: RPCService {
        static let method = RPCMethod<InteropEmpty, InteropEmpty>(service: "cdp.test.S", method: "M", kind: .unary)
        var serviceDescriptor: ServiceDescriptor {
            ServiceDescriptor(fullName: "cdp.test.S", fileName: "s.proto", fileDescriptors: [:])
        }
        var methods: [ServerMethod] { [.unary(Self.method) { request, _ in request }] }
    }
}

private typealias InteropEmpty = Grpc_Testing_Empty

@Suite struct ServerConnectionHandlerTests {
    /// Refused calls are answered Trailers-Only: one HEADERS frame with END_STREAM.
    private func expectTrailersOnly(_ harness: Harness, _ stream: Int32, status: Status.Code) {
        #expect(harness.peer.headerBlocks[stream] == 1)
        #expect(harness.peer.endedStreams.contains(stream))
        #expect(harness.peer.value(":status", on: stream) == "200")
        #expect(harness.peer.value("grpc-status", on: stream) == "\(status.rawValue)")
    }

    @Test func unknownServiceAndMethodAreUnimplemented() throws {
        let harness = try Harness()
        let service = harness.peer.request(TestPeer.grpcRequest(path: "/cdp.test.Nope/M"))
        let method = harness.peer.request(TestPeer.grpcRequest(path: "/cdp.test.S/Nope"))
        try harness.exchange()
        self.expectTrailersOnly(harness, service, status: .unimplemented)
        self.expectTrailersOnly(harness, method, status: .unimplemented)
        #expect(harness.peer.value("grpc-message", on: service) == "Service not found: /cdp.test.Nope/M")
        #expect(harness.peer.value("grpc-message", on: method) == "Method not found: /cdp.test.S/Nope")
    }

    @Test func aNonGRPCContentTypeIsHTTP415() throws {
        let harness = try Harness()
        var headers = TestPeer.grpcRequest(path: "/cdp.test.S/M")
        headers[4] = ("content-type", "application/json")
        let stream = harness.peer.request(headers)
        try harness.exchange()
        #expect(harness.peer.value(":status", on: stream) == "415")
        #expect(harness.peer.endedStreams.contains(stream))
    }

    @Test func methodsOtherThanPOSTAreHTTP405() throws {
        let harness = try Harness()
        var headers = TestPeer.grpcRequest(path: "/cdp.test.S/M")
        headers[0] = (":method", "PUT")
        let stream = harness.peer.request(headers)
        try harness.exchange()
        #expect(harness.peer.value(":status", on: stream) == "405")
    }

    @Test func anOversizedHeaderListIsResourceExhausted() throws {
        let harness = try Harness(.init(maxHeaderListBytes: 1024))
        let big = (0..<20).map { ("x-filler-\($0)", String(repeating: "a", count: 100)) }
        let stream = harness.peer.request(TestPeer.grpcRequest(path: "/cdp.test.S/M", extra: big))
        try harness.exchange()
        self.expectTrailersOnly(harness, stream, status: .resourceExhausted)
        // The connection is still usable.
        let next = harness.peer.request(TestPeer.grpcRequest(path: "/cdp.test.Nope/M"))
        try harness.exchange()
        self.expectTrailersOnly(harness, next, status: .unimplemented)
    }

    @Test func missingOrWrongTokensAreUnauthenticated() throws {
        let harness = try Harness(.init(authorizationTokens: ["t0ken"]))
        let missing = harness.peer.request(TestPeer.grpcRequest(path: "/cdp.test.S/M"))
        let wrong = harness.peer.request(
            TestPeer.grpcRequest(path: "/cdp.test.S/M", extra: [("authorization", "Bearer nope")])
        )
        try harness.exchange()
        self.expectTrailersOnly(harness, missing, status: .unauthenticated)
        self.expectTrailersOnly(harness, wrong, status: .unauthenticated)
    }

    @Test func unsupportedEncodingsAndMalformedTimeoutsAreRefused() throws {
        let harness = try Harness()
        let snappy = harness.peer.request(
            TestPeer.grpcRequest(path: "/cdp.test.S/M", extra: [("grpc-encoding", "snappy")])
        )
        let timeout = harness.peer.request(
            TestPeer.grpcRequest(path: "/cdp.test.S/M", extra: [("grpc-timeout", "soon")])
        )
        try harness.exchange()
        self.expectTrailersOnly(harness, snappy, status: .unimplemented)
        #expect(harness.peer.value("grpc-accept-encoding", on: snappy) == "gzip,identity")
        self.expectTrailersOnly(harness, timeout, status: .internalError)
    }

    @Test func anIdleConnectionIsClosedWithGoAway() throws {
        let harness = try Harness(.init(idleTimeout: .seconds(5)))
        try harness.exchange()
        harness.loop.advanceTime(by: .seconds(4))
        try harness.exchange()
        #expect(harness.channel.isActive)
        harness.loop.advanceTime(by: .seconds(2))
        try harness.exchange()
        #expect(harness.peer.goAway?.errorCode == 0)
        #expect(!harness.channel.isActive)
    }

    @Test func anUnfinishedHeaderBlockDoesNotKeepTheConnectionAlive() throws {
        let harness = try Harness(.init(idleTimeout: .seconds(5)))
        try harness.exchange()
        // HEADERS for stream 1 without END_HEADERS, and never a CONTINUATION.
        var frame = ByteBuffer()
        frame.writeBytes([0, 0, 1, 0x1, 0x0, 0, 0, 0, 1, 0x82])
        try harness.channel.writeInbound(frame)
        harness.loop.advanceTime(by: .seconds(6))
        #expect(!harness.channel.isActive)
    }

    @Test func garbageInsteadOfThePrefaceClosesTheConnection() throws {
        let harness = try Harness()
        try harness.channel.writeInbound(ByteBuffer(string: "GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
        #expect(!harness.channel.isActive)
    }

    @Test func gracefulShutdownWithoutCallsSendsGoAwayAndCloses() throws {
        let harness = try Harness()
        try harness.exchange()
        harness.channel.pipeline.fireUserInboundEventTriggered(ServerConnectionHandler.GracefulShutdownEvent())
        try harness.exchange()
        #expect(harness.peer.goAway?.errorCode == 0)
        #expect(!harness.channel.isActive)
    }
}

private import CNGHTTP2
import NIOCore
import RPCCore

/// The client end of one HTTP/2 connection: owns the nghttp2 client session and multiplexes calls.
///
/// Event-loop confined; calls reach it through ``HTTP2ClientStream``, which hops onto the loop.
final class ClientConnectionHandler: ChannelDuplexHandler, NGHTTP2SessionDelegate {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let configuration: HTTP2ClientTransport.Configuration
    private var session: NGHTTP2Session?
    private var context: ChannelHandlerContext?
    private var streams: [Int32: ClientStreamState] = [:]
    /// No new calls once the server sent GOAWAY or the connection closed.
    private(set) var isUsable = true

    init(configuration: HTTP2ClientTransport.Configuration) {
        self.configuration = configuration
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.session = NGHTTP2Session(
            role: .client,
            delegate: self,
            settings: .init(
                maxConcurrentStreams: 100,
                initialStreamWindow: UInt32(self.configuration.initialStreamWindowBytes),
                connectionWindow: Int32(self.configuration.connectionWindowBytes),
                maxHeaderListBytes: UInt32(self.configuration.maxHeaderListBytes)
            )
        )
        if context.channel.isActive { self.flush() }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.flush()
        context.fireChannelActive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.failAll(RPCError(code: .unavailable, message: "The connection to the server closed."))
        self.session = nil
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.failAll(RPCError(code: .unavailable, message: "The connection to the server closed."))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let session = self.session else { return }
        do {
            try session.receive(self.unwrapInboundIn(data))
        } catch {
            self.failAll(RPCError(code: .unavailable, message: "The server violated HTTP/2: \(error)."))
            self.flush()
            context.close(promise: nil)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.flush()
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            self.session?.resumeDeferredBodies(self.streams.values)
            self.flush()
        }
        context.fireChannelWritabilityChanged()
    }

    private func flush() {
        guard let session = self.session, let context = self.context else { return }
        if !session.flush(to: context) { context.close(promise: nil) }
    }

    private func failAll(_ error: RPCError) {
        self.isUsable = false
        let streams = self.streams
        self.streams.removeAll()
        for stream in streams.values { stream.end(status: error.status, trailers: Metadata()) }
    }

    // MARK: Calls

    /// Opens a stream for a call; `nil` when the connection cannot take one.
    func open(
        method: MethodDescriptor,
        metadata: Metadata,
        options: CallOptions
    ) -> ClientStreamState? {
        guard self.isUsable, let session = self.session, let context = self.context else { return nil }
        var headers: [(String, String)] = [
            (":method", "POST"), (":scheme", "http"), (":path", method.path),
            (":authority", self.configuration.authority), ("content-type", "application/grpc"), ("te", "trailers"),
            ("user-agent", "cdp-rpc/1"), ("grpc-accept-encoding", GRPCHeaders.acceptedEncodings),
        ]
        if options.compressRequests { headers.append(("grpc-encoding", "gzip")) }
        if let timeout = options.timeout { headers.append(("grpc-timeout", GRPCHeaders.formatTimeout(timeout))) }
        headers += metadata.wireEntries.filter { !GRPCHeaders.isReserved($0.key) }
        guard let id = session.submitRequest(headers: headers) else { return nil }
        let stream = ClientStreamState(
            id: id,
            eventLoop: context.eventLoop,
            allocator: context.channel.allocator,
            maxMessageBytes: self.configuration.maxReceiveMessageBytes,
            compressRequests: options.compressRequests
        )
        self.streams[id] = stream
        if let timeout = options.timeout {
            let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
            let boundStream = NIOLoopBound(stream, eventLoop: context.eventLoop)
            stream.deadlineTimer = context.eventLoop.scheduleTask(in: .init(timeout)) {
                loopBound.value.cancel(
                    boundStream.value,
                    status: Status(code: .deadlineExceeded, message: "Deadline exceeded.")
                )
            }
        }
        self.flush()
        return stream
    }

    func send(_ stream: ClientStreamState, _ message: [UInt8]) -> EventLoopFuture<Void> {
        let eventLoop = stream.eventLoop
        guard !stream.outbound.endOfBody else {
            return eventLoop.makeFailedFuture(RPCError(code: .failedPrecondition, message: "The call was half-closed."))
        }
        guard stream.status == nil, self.streams[stream.id] != nil else {
            // The server already ended the call; the status explains why when the caller receives.
            return eventLoop.makeSucceededVoidFuture()
        }
        stream.outbound.append(message, compress: stream.compressRequests)
        self.resume(stream)
        guard stream.outbound.isFull else { return eventLoop.makeSucceededVoidFuture() }
        let promise = eventLoop.makePromise(of: Void.self)
        stream.outbound.waitForSpace(promise)
        return promise.futureResult
    }

    func closeSend(_ stream: ClientStreamState) {
        guard !stream.outbound.endOfBody else { return }
        stream.outbound.endOfBody = true
        if self.streams[stream.id] != nil { self.resume(stream) }
    }

    private func resume(_ stream: ClientStreamState) {
        if stream.outbound.deferred {
            stream.outbound.deferred = false
            self.session?.resumeBody(streamID: stream.id)
        }
        self.flush()
    }

    func receive(_ stream: ClientStreamState) -> EventLoopFuture<ClientStreamPart> {
        let promise = stream.eventLoop.makePromise(of: ClientStreamPart.self)
        let consumable = stream.take(promise)
        if consumable > 0, self.streams[stream.id] != nil {
            self.session?.consumeStream(stream.id, consumable)
            self.flush()
        }
        return promise.futureResult
    }

    /// Ends a call locally with a status and resets its stream.
    func cancel(_ stream: ClientStreamState, status: Status) {
        guard stream.status == nil else { return }
        stream.end(status: status, trailers: Metadata())
        if self.streams.removeValue(forKey: stream.id) != nil {
            self.session?.resetStream(streamID: stream.id, errorCode: CDP_CANCEL)
            self.flush()
        }
    }

    // MARK: nghttp2 session events

    func sessionBeginHeaders(streamID: Int32) {
        self.streams[streamID]?.headerBytes = 0
    }

    func sessionHeader(streamID: Int32, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) -> Bool {
        guard let stream = self.streams[streamID] else { return true }
        stream.headerBytes += name.count + value.count + 32
        guard stream.headerBytes <= self.configuration.maxHeaderListBytes else {
            stream.end(
                status: Status(
                    code: .resourceExhausted,
                    message: "Response headers exceed \(self.configuration.maxHeaderListBytes) bytes."
                ),
                trailers: Metadata()
            )
            return false
        }
        stream.pendingHeaders.append((String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self)))
        return true
    }

    func sessionHeadersComplete(streamID: Int32, endStream: Bool) {
        guard let stream = self.streams[streamID] else { return }
        let fields = stream.pendingHeaders
        stream.pendingHeaders.removeAll()
        var metadata = Metadata()
        var httpStatus: String?
        var grpcStatus: String?
        var grpcMessage: String?
        var encoding: String?
        for (name, value) in fields {
            switch name {
            case ":status": httpStatus = value
            case "grpc-status": grpcStatus = value
            case "grpc-message": grpcMessage = GRPCHeaders.percentDecode(value)
            case "grpc-encoding": encoding = value
            default: if !GRPCHeaders.isReserved(name) { metadata.addWireValue(name, value) }
            }
        }
        if !stream.receivedHeaders {
            stream.receivedHeaders = true
            if let httpStatus, httpStatus != "200" {
                return stream.end(
                    status: Self.status(forHTTPStatus: httpStatus, message: grpcMessage),
                    trailers: metadata
                )
            }
            if grpcStatus == nil {
                if let encoding, encoding != "identity", encoding != "gzip" {
                    return self.cancel(
                        stream,
                        status: Status(
                            code: .internalError,
                            message: "The server used unsupported encoding \(encoding)."
                        )
                    )
                }
                stream.startMessages(encoding: encoding)
                stream.deliver(.metadata(metadata))
                return
            }
        }
        // Trailers, or Trailers-Only.
        let code = grpcStatus.flatMap { Int($0) }.flatMap { Status.Code(rawValue: $0) }
        let status =
            code.map { Status(code: $0, message: grpcMessage ?? "") }
            ?? Status(code: .internalError, message: "The server ended the call without a valid grpc-status.")
        stream.end(status: status, trailers: metadata)
    }

    /// Maps an HTTP status to a gRPC status, as gRPC's HTTP-to-gRPC mapping specifies.
    private static func status(forHTTPStatus httpStatus: String, message: String?) -> Status {
        let code: Status.Code =
            switch httpStatus {
            case "400": .internalError
            case "401": .unauthenticated
            case "403": .permissionDenied
            case "404": .unimplemented
            case "429", "502", "503", "504": .unavailable
            default: .unknown
            }
        return Status(code: code, message: message ?? "The server answered HTTP \(httpStatus).")
    }

    func sessionData(streamID: Int32, bytes: UnsafeRawBufferPointer) {
        self.session?.consumeConnection(bytes.count)
        guard let stream = self.streams[streamID] else { return }
        do {
            self.session?.consumeStream(streamID, try stream.receive(bytes))
        } catch {
            self.cancel(stream, status: error.status)
        }
    }

    func sessionDataEndStream(streamID: Int32) {}

    func sessionStreamClosed(streamID: Int32, errorCode: UInt32) {
        guard let stream = self.streams.removeValue(forKey: streamID) else { return }
        let status: Status =
            switch errorCode {
            case CDP_NO_ERROR: Status(code: .internalError, message: "The server closed the stream without a status.")
            case CDP_REFUSED_STREAM: Status(code: .unavailable, message: "The server refused the stream.")
            case CDP_CANCEL: Status(code: .cancelled, message: "The server cancelled the stream.")
            case CDP_ENHANCE_YOUR_CALM:
                Status(code: .resourceExhausted, message: "The server reset the stream (ENHANCE_YOUR_CALM).")
            default:
                Status(code: .internalError, message: "Stream reset: \(NGHTTP2Session.errorDescription(errorCode)).")
            }
        stream.end(status: status, trailers: Metadata())
    }

    func sessionReadBody(streamID: Int32, into buffer: UnsafeMutableRawBufferPointer) -> BodyChunk {
        guard let stream = self.streams[streamID] else { return .endStream(0) }
        let count = stream.outbound.read(into: buffer)
        if stream.outbound.isEmpty && stream.outbound.endOfBody { return .endStream(count) }
        if count == 0 {
            stream.outbound.deferred = true
            return .deferred
        }
        return .bytes(count)
    }

    func sessionSentFrame(streamID: Int32, type: UInt8, endStream: Bool) {}

    func sessionReceivedGoAway(lastStreamID: Int32, errorCode: UInt32) {
        self.isUsable = false
    }

    func sessionInvalidFrame(streamID: Int32) {}
}

/// One call on a client connection. Event-loop confined.
final class ClientStreamState: StreamWithBody {
    let id: Int32
    let eventLoop: any EventLoop
    let compressRequests: Bool
    private let allocator: ByteBufferAllocator
    private let maxMessageBytes: Int
    var outbound: OutboundMessages
    var headerBytes = 0
    var pendingHeaders: [(String, String)] = []
    var receivedHeaders = false
    var deadlineTimer: Scheduled<Void>?
    private var deframer: MessageDeframer?
    private var parts = CircularBuffer<ClientStreamPart>()
    private var pendingMessages = 0
    private var heldBytes = 0
    private var waiter: EventLoopPromise<ClientStreamPart>?
    private(set) var status: Status?

    init(
        id: Int32,
        eventLoop: any EventLoop,
        allocator: ByteBufferAllocator,
        maxMessageBytes: Int,
        compressRequests: Bool
    ) {
        self.id = id
        self.eventLoop = eventLoop
        self.allocator = allocator
        self.maxMessageBytes = maxMessageBytes
        self.compressRequests = compressRequests
        self.outbound = OutboundMessages(allocator: allocator)
    }

    func startMessages(encoding: String?) {
        self.deframer = MessageDeframer(
            maxMessageBytes: self.maxMessageBytes,
            encoding: encoding == "identity" ? nil : encoding,
            allocator: self.allocator
        )
    }

    /// Takes DATA bytes; returns how many may be reported consumed now (see ``InboundMessages``).
    func receive(_ bytes: UnsafeRawBufferPointer) throws(RPCError) -> Int {
        guard self.status == nil else { return bytes.count }
        guard var deframer = self.deframer else {
            throw RPCError(code: .internalError, message: "The server sent data before its response headers.")
        }
        deframer.append(bytes)
        do {
            while let message = try deframer.next() {
                self.pendingMessages += 1
                self.deliver(.message(Array(message.readableBytesView)))
            }
        } catch {
            self.deframer = deframer
            throw RPCError(code: error.code, message: "Response: \(error.message)")
        }
        self.deframer = deframer
        if self.pendingMessages == 0 { return bytes.count }
        self.heldBytes += bytes.count
        return 0
    }

    func deliver(_ part: ClientStreamPart) {
        if let waiter = self.waiter {
            self.waiter = nil
            if case .message = part { self.pendingMessages -= 1 }
            waiter.succeed(part)
        } else {
            self.parts.append(part)
        }
    }

    /// Ends the call with a status (delivered after anything already received).
    func end(status: Status, trailers: Metadata) {
        guard self.status == nil else { return }
        var status = status
        if status.code == .ok, self.deframer?.hasPartialMessage ?? false {
            status = Status(code: .internalError, message: "The response ended in the middle of a message.")
        }
        self.status = status
        self.deadlineTimer?.cancel()
        self.outbound.fail(RPCError(code: status.code == .ok ? .cancelled : status.code, message: status.message))
        self.deliver(.status(status, trailers))
    }

    /// Hands the next part to `promise`; returns bytes that may now be reported consumed.
    func take(_ promise: EventLoopPromise<ClientStreamPart>) -> Int {
        guard let part = self.parts.popFirst() else {
            precondition(self.waiter == nil, "one receiver at a time")
            self.waiter = promise
            return 0
        }
        if case .message = part { self.pendingMessages -= 1 }
        promise.succeed(part)
        guard self.pendingMessages == 0 else { return 0 }
        defer { self.heldBytes = 0 }
        return self.heldBytes
    }
}

private import CNGHTTP2
import Logging
import NIOCore
import RPCCore

/// Serves gRPC calls on one HTTP/2 connection: owns the connection's nghttp2 server session,
/// turns streams into handler calls and handler output into frames.
///
/// Protocol logic lives here, on the event loop; business logic runs in one task per call, which
/// talks to this handler only by hopping onto the event loop.
final class ServerConnectionHandler: ChannelDuplexHandler, NGHTTP2SessionDelegate {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Sent down the pipeline to start a graceful shutdown of the connection.
    struct GracefulShutdownEvent {}

    private let router: Router
    private let configuration: RPCServer.Configuration
    private var logger: Logger
    private var session: NGHTTP2Session?
    private var context: ChannelHandlerContext?
    private var streams: [Int32: ServerStream] = [:]
    private var idleTimer: Scheduled<Void>?
    private var goingAway = false
    /// Set once the session ended and the connection's output is closed: what the peer still sends
    /// is read and dropped until it closes too or ``lingerTime`` passes (see ``closeAfterPeer()``).
    private var lingerTimer: Scheduled<Void>?
    /// How long a connection whose session ended waits for the peer to close it.
    static let lingerTime: TimeAmount = .seconds(2)
    private var handlerExecutor: EventLoopTaskExecutor?
    /// Peer misbehaviour that nghttp2 tolerates per stream but that costs us work; past a limit the
    /// connection is closed (nghttp2 1.52 lacks the newer "glitch" limiter).
    private var glitches = 0
    private static let maxGlitches = 200

    init(router: Router, configuration: RPCServer.Configuration, logger: Logger) {
        self.router = router
        self.configuration = configuration
        self.logger = logger
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.logger[metadataKey: "peer"] = "\(context.remoteAddress.map { "\($0)" } ?? "?")"
        self.session = NGHTTP2Session(
            role: .server,
            delegate: self,
            settings: .init(
                maxConcurrentStreams: UInt32(self.configuration.maxConcurrentStreams),
                initialStreamWindow: UInt32(self.configuration.initialStreamWindowBytes),
                connectionWindow: Int32(self.configuration.connectionWindowBytes),
                maxHeaderListBytes: UInt32(self.configuration.maxHeaderListBytes)
            )
        )
        if context.channel.isActive { self.start(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.start(context: context)
        context.fireChannelActive()
    }

    private func start(context: ChannelHandlerContext) {
        self.flush()
        self.armIdleTimer()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.tearDown()
        // Deleting the session here guarantees no C callback can reach this handler afterwards.
        self.session = nil
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.tearDown()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let session = self.session, self.lingerTimer == nil else { return }
        do {
            try session.receive(self.unwrapInboundIn(data))
        } catch {
            self.logger.debug("closing connection after protocol error", metadata: ["error": "\(error)"])
            self.flush()
            context.close(promise: nil)
            return
        }
        if self.glitches >= Self.maxGlitches {
            self.logger.info("closing abusive connection", metadata: ["glitches": "\(self.glitches)"])
            session.goAway(errorCode: CDP_ENHANCE_YOUR_CALM, message: "too many protocol errors")
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

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is GracefulShutdownEvent {
            self.beginGracefulShutdown()
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.logger.debug("connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    /// Sends every frame nghttp2 has ready; closes the connection when the session is done.
    private func flush() {
        guard let session = self.session, let context = self.context else { return }
        guard session.flush(to: context) else {
            context.close(promise: nil)
            return
        }
        if !session.wantsRead && !session.wantsWrite {
            self.closeAfterPeer()
        }
    }

    /// Ends a connection whose session is done (after GOAWAY and its last stream): closes the output,
    /// so that the peer reads every frame written and then the end of the stream, and closes the rest
    /// once the peer closes its side (or after ``lingerTime``). Closing both at once while frames of the
    /// peer's wait unread (a WINDOW_UPDATE for the last response) makes the kernel reset the connection
    /// and drop what was written but not yet sent: a client saw its last call fail with "connection
    /// reset by peer" instead of ending with its trailers.
    private func closeAfterPeer() {
        guard self.lingerTimer == nil, let context = self.context else { return }
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        self.lingerTimer = context.eventLoop.scheduleTask(in: Self.lingerTime) {
            loopBound.value.context?.close(promise: nil)
        }
        let closeOutput = context.eventLoop.makePromise(of: Void.self)
        closeOutput.futureResult.whenFailure { _ in loopBound.value.context?.close(promise: nil) }
        context.close(mode: .output, promise: closeOutput)
    }

    private func tearDown() {
        self.idleTimer?.cancel()
        self.idleTimer = nil
        self.lingerTimer?.cancel()
        let streams = self.streams
        self.streams.removeAll()
        for stream in streams.values { stream.abort() }
    }

    // MARK: Timers and shutdown

    private func armIdleTimer() {
        guard let context = self.context, self.streams.isEmpty else { return }
        self.idleTimer?.cancel()
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        self.idleTimer = context.eventLoop.scheduleTask(in: .init(self.configuration.idleTimeout)) {
            loopBound.value.idleTimeoutFired()
        }
    }

    private func idleTimeoutFired() {
        guard !self.streams.values.contains(where: { $0.phase != .receivingHead }), self.context != nil else { return }
        self.logger.debug("closing idle connection")
        self.session?.goAway(errorCode: CDP_NO_ERROR, message: "idle timeout")
        self.flush()
        self.closeAfterPeer()
    }

    private func beginGracefulShutdown() {
        guard !self.goingAway, self.context != nil else { return }
        self.goingAway = true
        self.session?.goAway(errorCode: CDP_NO_ERROR, message: "server shutting down")
        self.flush()
        if self.streams.isEmpty { self.closeAfterPeer() }
    }

    /// Counts peer misbehaviour; `channelRead` closes the connection past the limit (not here:
    /// this runs inside nghttp2 callbacks, where the session must not be flushed).
    private func recordGlitch() {
        self.glitches += 1
    }

    // MARK: nghttp2 session events

    func sessionBeginHeaders(streamID: Int32) {
        guard self.streams[streamID] == nil, let context = self.context else { return }
        // The idle timer keeps running until the header block is complete: a peer that starts
        // requests and never finishes them is as idle as one that sends nothing.
        self.streams[streamID] = ServerStream(
            id: streamID,
            allocator: context.channel.allocator,
            maxMessageBytes: self.configuration.maxReceiveMessageBytes
        )
    }

    func sessionHeader(streamID: Int32, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) -> Bool {
        guard let stream = self.streams[streamID] else { return true }
        // RFC 9113 §6.5.2: the size of a field is its name and value lengths plus 32.
        stream.headerBytes += name.count + value.count + 32
        if stream.headerBytes > self.configuration.maxHeaderListBytes {
            // Stop storing; the call is refused when the block ends. A peer that keeps going far past
            // the limit gets the stream reset instead of costing more decoding work.
            stream.headerListTooLarge = true
            if stream.headerBytes > 4 * self.configuration.maxHeaderListBytes {
                self.recordGlitch()
                return false
            }
            return true
        }
        guard case .receivingHead = stream.phase else { return true }
        stream.head.add(name: String(decoding: name, as: UTF8.self), value: String(decoding: value, as: UTF8.self))
        return true
    }

    func sessionHeadersComplete(streamID: Int32, endStream: Bool) {
        guard let stream = self.streams[streamID] else { return }
        switch stream.phase {
        case .receivingHead:
            self.requestHeadReceived(stream, endStream: endStream)
        case .collectingRequest, .running:
            // Trailers from the client carry nothing gRPC uses; END_STREAM matters.
            if endStream { self.requestEnded(stream) }
        case .finished:
            break
        }
    }

    func sessionData(streamID: Int32, bytes: UnsafeRawBufferPointer) {
        self.session?.consumeConnection(bytes.count)
        guard let stream = self.streams[streamID] else { return }
        switch stream.phase {
        case .collectingRequest, .running:
            do {
                let consumable = try stream.inbound.receive(bytes)
                self.session?.consumeStream(streamID, consumable)
                if case .collectingRequest = stream.phase, stream.inbound.readyCount > 1 {
                    self.finish(
                        stream,
                        with: RPCError(
                            code: .internalError,
                            message: "\(stream.methodDescription) expects one request message; the client sent more."
                        )
                    )
                }
            } catch {
                self.finish(stream, with: error)
            }
        case .receivingHead, .finished:
            self.session?.consumeStream(streamID, bytes.count)
        }
    }

    func sessionDataEndStream(streamID: Int32) {
        guard let stream = self.streams[streamID] else { return }
        self.requestEnded(stream)
    }

    func sessionStreamClosed(streamID: Int32, errorCode: UInt32) {
        guard let stream = self.streams.removeValue(forKey: streamID) else { return }
        if errorCode != CDP_NO_ERROR, case .running = stream.phase {
            self.logger.debug(
                "stream reset",
                metadata: ["stream": "\(streamID)", "code": "\(NGHTTP2Session.errorDescription(errorCode))"]
            )
        }
        stream.abort()
        // A connection going away closes in `flush()`, once nghttp2 has nothing left to read or send:
        // closing here would drop the frames (such as this stream's trailers) still being written.
        if self.streams.isEmpty && !self.goingAway { self.armIdleTimer() }
    }

    func sessionReadBody(streamID: Int32, into buffer: UnsafeMutableRawBufferPointer) -> BodyChunk {
        guard let stream = self.streams[streamID] else { return .endStream(0) }
        guard self.context?.channel.isWritable ?? false else {
            stream.outbound.deferred = true
            return .deferred
        }
        let count = stream.outbound.read(into: buffer)
        if stream.outbound.isEmpty, let trailers = stream.outbound.trailers {
            self.session?.submitTrailers(streamID: streamID, trailers: trailers)
            return .endWithTrailers(count)
        }
        if count == 0 {
            stream.outbound.deferred = true
            return .deferred
        }
        return .bytes(count)
    }

    func sessionSentFrame(streamID: Int32, type: UInt8, endStream: Bool) {
        // After the final HEADERS, tell a client that is still sending to stop (RFC 9113 §8.1).
        guard type == CDP_FRAME_HEADERS, endStream, let session = self.session else { return }
        if session.isStreamOpen(streamID), session.isRemoteOpen(streamID) {
            session.resetStream(streamID: streamID, errorCode: CDP_NO_ERROR)
        }
    }

    func sessionReceivedGoAway(lastStreamID: Int32, errorCode: UInt32) {
        self.goingAway = true
    }

    func sessionInvalidFrame(streamID: Int32) {
        self.recordGlitch()
    }

    // MARK: Calls

    private func requestHeadReceived(_ stream: ServerStream, endStream: Bool) {
        self.idleTimer?.cancel()
        self.idleTimer = nil
        let head = stream.head
        if stream.headerListTooLarge {
            self.recordGlitch()
            return self.refuse(
                stream,
                RPCError(
                    code: .resourceExhausted,
                    message: "Request header list of \(stream.headerBytes) bytes exceeds the limit of "
                        + "\(self.configuration.maxHeaderListBytes) bytes."
                )
            )
        }
        guard head.method == "POST" else {
            return self.refuse(
                stream,
                RPCError(code: .internalError, message: "gRPC requires POST, not \(head.method ?? "no method")."),
                httpStatus: 405
            )
        }
        guard let contentType = head.contentType, GRPCHeaders.isGRPCContentType(contentType) else {
            return self.refuse(
                stream,
                RPCError(
                    code: .internalError,
                    message: "Content type \(head.contentType ?? "(none)") is not application/grpc."
                ),
                httpStatus: 415
            )
        }
        if !self.configuration.authorizationTokens.isEmpty {
            guard let authorization = head.authorization, authorization.hasPrefix("Bearer "),
                self.configuration.authorizationTokens.contains(String(authorization.dropFirst("Bearer ".count)))
            else {
                return self.refuse(
                    stream,
                    RPCError(
                        code: .unauthenticated,
                        message: head.authorization == nil
                            ? "The call carries no authorization header; expected 'Bearer <token>'."
                            : "The bearer token is not valid."
                    )
                )
            }
        }
        guard let path = head.path, let method = self.router[path] else {
            let path = head.path ?? "(none)"
            let known = self.router.hasService(ofPath: path)
            return self.refuse(
                stream,
                RPCError(
                    code: .unimplemented,
                    message: known ? "Method not found: \(path)" : "Service not found: \(path)"
                )
            )
        }
        let encoding = head.encoding.flatMap { $0 == "identity" ? nil : $0 }
        if let encoding, encoding != "gzip" {
            return self.refuse(
                stream,
                RPCError(
                    code: .unimplemented,
                    message: "Message encoding \(encoding) is not supported; use gzip or identity."
                )
            )
        }
        var deadline: ContinuousClock.Instant?
        var timeout: Duration?
        if let value = head.timeout {
            guard let parsed = GRPCHeaders.parseTimeout(value) else {
                return self.refuse(stream, RPCError(code: .internalError, message: "Malformed grpc-timeout: \(value)."))
            }
            timeout = parsed
            deadline = .now + parsed
        }
        guard let context = self.context else { return }
        stream.method = method
        stream.inbound = InboundMessages(
            deframer: MessageDeframer(
                maxMessageBytes: self.configuration.maxReceiveMessageBytes,
                encoding: encoding,
                allocator: context.channel.allocator
            )
        )
        stream.callContext = ServerContext(
            method: method.descriptor,
            requestMetadata: head.metadata,
            deadline: deadline,
            peer: self.context?.remoteAddress.map { "\($0)" } ?? "unknown",
            requestEncoding: encoding
        )
        if let timeout, let context = self.context {
            let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
            let id = stream.id
            stream.deadlineTimer = context.eventLoop.scheduleTask(in: .init(timeout)) {
                loopBound.value.deadlineExpired(streamID: id)
            }
        }
        switch method.kind {
        case .unary, .serverStreaming:
            // One request: wait for all of it, then run the handler without further hops.
            stream.phase = .collectingRequest
            if endStream { self.requestEnded(stream) }
        case .clientStreaming, .bidirectional:
            self.startHandler(stream, requests: nil)
            if endStream { self.requestEnded(stream) }
        }
    }

    private func requestEnded(_ stream: ServerStream) {
        do {
            try stream.inbound.finish()
        } catch {
            return self.finish(stream, with: error)
        }
        if case .collectingRequest = stream.phase {
            self.startHandler(stream, requests: stream.inbound.takeAll())
        }
    }

    private func deadlineExpired(streamID: Int32) {
        guard let stream = self.streams[streamID] else { return }
        self.finish(stream, with: RPCError(code: .deadlineExceeded, message: "Deadline exceeded."))
    }

    /// Runs the method's handler in its own task.
    ///
    /// - Parameter requests: all request messages when already received; `nil` to stream them.
    private func startHandler(_ stream: ServerStream, requests: [ByteBuffer]?) {
        guard let method = stream.method, let callContext = stream.callContext, let context = self.context else {
            return
        }
        stream.phase = .running
        let eventLoop = context.eventLoop
        let loopBound = NIOLoopBound(self, eventLoop: eventLoop)
        let id = stream.id
        let logger = self.logger

        let requestSequence: RPCAsyncSequence<[UInt8]>
        if let requests {
            requestSequence = .elements(requests.map { Array($0.readableBytesView) })
        } else {
            requestSequence = RPCAsyncSequence {
                try await eventLoop.flatSubmit { loopBound.value.nextRequest(streamID: id, on: eventLoop) }.get()
                    .map { Array($0.readableBytesView) }
            }
        }
        // A unary call's one response goes out together with its status, in a single hop.
        let singleResponse = method.kind == .unary || method.kind == .clientStreaming
        let pendingResponse = LockedBox<[UInt8]?>(nil)
        let writer = RPCWriter<[UInt8]> { message in
            if singleResponse {
                let duplicate = pendingResponse.withLock { pending -> Bool in
                    defer { pending = message }
                    return pending != nil
                }
                if duplicate {
                    throw RPCError(code: .internalError, message: "The handler wrote more than one response.")
                }
                return
            }
            try await eventLoop.flatSubmit { loopBound.value.writeResponse(streamID: id, message, on: eventLoop) }.get()
        }
        stream.task = Task(executorPreference: self.executor(on: eventLoop)) {
            var failure: RPCError?
            do {
                try await method.handler(requestSequence, writer, callContext)
            } catch {
                failure = RPCError(reporting: error)
                if failure?.code == .unknown {
                    logger.error(
                        "handler failed",
                        metadata: [
                            "method": "\(method.descriptor)", "error": "\(failure?.cause.map { "\($0)" } ?? "")",
                        ]
                    )
                }
            }
            let response = pendingResponse.value
            let outcome = failure
            eventLoop.execute {
                let handler = loopBound.value
                guard let stream = handler.streams[id] else { return }
                if let outcome {
                    handler.finish(stream, with: outcome)
                } else {
                    if let response { handler.enqueue(stream, response) }
                    handler.finish(stream, status: .ok, trailers: callContext.trailingMetadata)
                }
            }
        }
    }

    // The event loop is passed in: handler tasks may still call after the channel is gone
    // (`context` is then nil), and must get a failed future, not a crash.
    /// Where handlers run: their connection's event loop (see ``EventLoopTaskExecutor``), or the
    /// default pool (`nil`) when the configuration says so.
    private func executor(on eventLoop: any EventLoop) -> EventLoopTaskExecutor? {
        guard self.configuration.runsHandlersOnEventLoop else { return nil }
        if let executor = self.handlerExecutor { return executor }
        let executor = EventLoopTaskExecutor(eventLoop: eventLoop)
        self.handlerExecutor = executor
        return executor
    }

    private func nextRequest(streamID: Int32, on eventLoop: any EventLoop) -> EventLoopFuture<ByteBuffer?> {
        let promise = eventLoop.makePromise(of: ByteBuffer?.self)
        guard let stream = self.streams[streamID] else {
            promise.fail(RPCError(code: .cancelled, message: "The call was cancelled."))
            return promise.futureResult
        }
        let consumable = stream.inbound.take(promise)
        if consumable > 0 {
            self.session?.consumeStream(streamID, consumable)
            self.flush()
        }
        return promise.futureResult
    }

    private func writeResponse(
        streamID: Int32,
        _ message: [UInt8],
        on eventLoop: any EventLoop
    ) -> EventLoopFuture<Void> {
        guard let stream = self.streams[streamID], stream.phase == .running else {
            return eventLoop.makeFailedFuture(RPCError(code: .cancelled, message: "The call has ended."))
        }
        self.enqueue(stream, message)
        self.flush()
        guard stream.outbound.isFull else { return eventLoop.makeSucceededVoidFuture() }
        let promise = eventLoop.makePromise(of: Void.self)
        stream.outbound.waitForSpace(promise)
        return promise.futureResult
    }

    /// Queues a response message, sending the response headers first if needed.
    private func enqueue(_ stream: ServerStream, _ message: [UInt8]) {
        stream.outbound.append(message, compress: false)
        self.sendResponseHeadersIfNeeded(stream)
        if stream.outbound.deferred {
            stream.outbound.deferred = false
            self.session?.resumeBody(streamID: stream.id)
        }
    }

    private func sendResponseHeadersIfNeeded(_ stream: ServerStream) {
        guard !stream.responseHeadersSent else { return }
        stream.responseHeadersSent = true
        var headers = Self.responseHeaders
        if let callContext = stream.callContext {
            headers += callContext.takeInitialMetadata().wireEntries
        }
        self.session?.submitResponse(streamID: stream.id, headers: headers, hasBody: true)
    }

    private static let responseHeaders: [(String, String)] = [
        (":status", "200"), ("content-type", "application/grpc"),
        ("grpc-accept-encoding", GRPCHeaders.acceptedEncodings),
    ]

    private func finish(_ stream: ServerStream, with error: RPCError) {
        var trailers = stream.callContext?.trailingMetadata ?? Metadata()
        trailers.add(contentsOf: error.metadata)
        self.finish(stream, status: error.status, trailers: trailers)
    }

    /// Ends the call with a status: after any queued messages, or as Trailers-Only when nothing was sent.
    private func finish(_ stream: ServerStream, status: Status, trailers: Metadata) {
        guard stream.phase != .finished else { return }
        stream.phase = .finished
        stream.deadlineTimer?.cancel()
        stream.task?.cancel()
        stream.inbound.fail(RPCError(code: .cancelled, message: "The call has ended."))
        var fields: [(String, String)] = [("grpc-status", "\(status.code.rawValue)")]
        if !status.message.isEmpty { fields.append(("grpc-message", GRPCHeaders.percentEncode(status.message))) }
        fields += trailers.wireEntries
        if !stream.responseHeadersSent && stream.outbound.isEmpty {
            stream.responseHeadersSent = true
            var headers = Self.responseHeaders
            if let callContext = stream.callContext { headers += callContext.takeInitialMetadata().wireEntries }
            self.session?.submitResponse(streamID: stream.id, headers: headers + fields, hasBody: false)
        } else {
            self.sendResponseHeadersIfNeeded(stream)
            stream.outbound.trailers = fields
            if stream.outbound.deferred {
                stream.outbound.deferred = false
                self.session?.resumeBody(streamID: stream.id)
            }
        }
        self.flush()
    }

    /// Answers a request that will not reach a handler, as Trailers-Only.
    private func refuse(_ stream: ServerStream, _ error: RPCError, httpStatus: Int = 200) {
        stream.phase = .finished
        stream.responseHeadersSent = true
        var headers: [(String, String)] = [
            (":status", "\(httpStatus)"), ("content-type", "application/grpc"),
            ("grpc-accept-encoding", GRPCHeaders.acceptedEncodings),
            ("grpc-status", "\(error.code.rawValue)"), ("grpc-message", GRPCHeaders.percentEncode(error.message)),
        ]
        if httpStatus != 200 { headers[1] = ("content-type", "text/plain") }
        self.session?.submitResponse(streamID: stream.id, headers: headers, hasBody: false)
        self.flush()
    }
}

/// The state of one call on a server connection. Event-loop confined.
final class ServerStream: StreamWithBody {
    enum Phase: Equatable {
        /// Request headers are arriving.
        case receivingHead
        /// Unary or server-streaming: the request is arriving; the handler starts at END_STREAM.
        case collectingRequest
        /// The handler runs.
        case running
        /// The status is sent or queued.
        case finished
    }

    let id: Int32
    var phase = Phase.receivingHead
    var head = RequestHead()
    var headerBytes = 0
    var headerListTooLarge = false
    var method: ServerMethod?
    var callContext: ServerContext?
    var inbound: InboundMessages
    var outbound: OutboundMessages
    var responseHeadersSent = false
    var task: Task<Void, Never>?
    var deadlineTimer: Scheduled<Void>?

    init(id: Int32, allocator: ByteBufferAllocator, maxMessageBytes: Int) {
        self.id = id
        self.inbound = InboundMessages(
            deframer: MessageDeframer(maxMessageBytes: maxMessageBytes, encoding: nil, allocator: allocator)
        )
        self.outbound = OutboundMessages(allocator: allocator)
    }

    var methodDescription: String { self.method.map { "\($0.descriptor)" } ?? self.head.path ?? "the method" }

    /// The stream is gone: stop the handler and release anyone waiting.
    func abort() {
        self.deadlineTimer?.cancel()
        self.task?.cancel()
        let error = RPCError(code: .cancelled, message: "The call was cancelled.")
        self.inbound.fail(error)
        self.outbound.fail(error)
        self.phase = .finished
    }
}

/// The request headers of a call, sorted into what gRPC uses and the custom metadata.
struct RequestHead {
    var method: String?
    var path: String?
    var contentType: String?
    var timeout: String?
    var encoding: String?
    var authorization: String?
    var metadata = Metadata()

    mutating func add(name: String, value: String) {
        switch name {
        case ":method": self.method = value
        case ":path": self.path = value
        case "content-type": self.contentType = value
        case "grpc-timeout": self.timeout = value
        case "grpc-encoding": self.encoding = value
        case "authorization":
            self.authorization = value
            self.metadata.add(name, value)
        default:
            if !GRPCHeaders.isReserved(name) { self.metadata.addWireValue(name, value) }
        }
    }
}

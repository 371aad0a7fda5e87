private import CNGHTTP2
import NIOCore

/// What a connection handler learns from nghttp2 while it parses the peer's bytes.
///
/// Every method runs on the channel's event loop, inside `receive` or `send`.
protocol NGHTTP2SessionDelegate: AnyObject {
    /// A HEADERS frame opens a stream (request) or starts a header block on one.
    func sessionBeginHeaders(streamID: Int32)
    /// One header field; return `false` to reset the stream.
    func sessionHeader(streamID: Int32, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) -> Bool
    /// A complete header block arrived; `endStream` when the peer closed its side with it.
    func sessionHeadersComplete(streamID: Int32, endStream: Bool)
    /// Part of a DATA frame's payload.
    func sessionData(streamID: Int32, bytes: UnsafeRawBufferPointer)
    /// The peer closed its side of the stream with a DATA frame.
    func sessionDataEndStream(streamID: Int32)
    /// The stream is closed; `errorCode` is non-zero when it was reset.
    func sessionStreamClosed(streamID: Int32, errorCode: UInt32)
    /// nghttp2 wants body bytes for the stream; copy at most `buffer.count` into `buffer`.
    func sessionReadBody(streamID: Int32, into buffer: UnsafeMutableRawBufferPointer) -> BodyChunk
    /// A frame was written; used to reset streams after their final HEADERS went out.
    func sessionSentFrame(streamID: Int32, type: UInt8, endStream: Bool)
    /// The peer sent a GOAWAY; streams above `lastStreamID` were not processed.
    func sessionReceivedGoAway(lastStreamID: Int32, errorCode: UInt32)
    /// The peer sent something invalid that nghttp2 answered itself (counted as abuse).
    func sessionInvalidFrame(streamID: Int32)
}

/// The result of ``NGHTTP2SessionDelegate/sessionReadBody(streamID:into:)``.
enum BodyChunk {
    /// `count` bytes were copied; more may follow.
    case bytes(Int)
    /// Nothing to send now; call ``NGHTTP2Session/resumeBody(streamID:)`` when there is.
    case deferred
    /// `count` bytes copied and the body is complete; trailers follow (submitted by the delegate).
    case endWithTrailers(Int)
    /// `count` bytes copied and the body is complete; the stream ends with the last DATA frame.
    case endStream(Int)
}

/// Owns one `nghttp2_session` and forwards its callbacks to a delegate.
///
/// Not thread-safe: every call must happen on the owning channel's event loop. The C callbacks
/// find this object through nghttp2's `user_data` pointer, which is unretained; the owner deletes
/// the session (by releasing this object) before it goes away, so the pointer never dangles.
final class NGHTTP2Session {
    /// Which end of the connection this is.
    enum Role { case server, client }

    /// Settings this side announces.
    struct Settings {
        var maxConcurrentStreams: UInt32
        var initialStreamWindow: UInt32
        var connectionWindow: Int32
        var maxHeaderListBytes: UInt32
    }

    fileprivate unowned(unsafe) let delegate: any NGHTTP2SessionDelegate
    private var session: OpaquePointer?
    /// Set while nghttp2 runs our callbacks from `receive` or `flush`: session I/O must not be
    /// re-entered from a callback, so a flush requested then is left to the outer caller.
    private var inSessionIO = false

    /// Creates a session and queues the initial SETTINGS (sent with the next ``send(into:)``).
    init(role: Role, delegate: any NGHTTP2SessionDelegate, settings: Settings) {
        self.delegate = delegate
        var callbacks: OpaquePointer?
        nghttp2_session_callbacks_new(&callbacks)
        defer { nghttp2_session_callbacks_del(callbacks) }
        nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, onBeginHeaders)
        nghttp2_session_callbacks_set_on_header_callback(callbacks, onHeader)
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, onFrameReceived)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, onDataChunk)
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, onStreamClose)
        nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, onFrameSent)
        nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(callbacks, onInvalidFrame)

        var option: OpaquePointer?
        nghttp2_option_new(&option)
        defer { nghttp2_option_del(option) }
        // Window updates are ours to send: received data is "consumed" only when the handler has
        // taken the message, which is how a slow handler slows the peer down.
        nghttp2_option_set_no_auto_window_update(option, 1)
        // nghttp2 does not enforce the header-list size we announce; the delegate counts it.
        nghttp2_option_set_max_send_header_block_length(option, 64 * 1024)
        // Rapid reset (CVE-2023-44487): a peer may reset at most this many streams in a burst,
        // refilled at 33 per second; beyond it nghttp2 ends the connection with GOAWAY.
        nghttp2_option_set_stream_reset_rate_limit(option, 1000, 33)

        let userData = Unmanaged.passUnretained(self).toOpaque()
        var created: OpaquePointer?
        switch role {
        case .server: nghttp2_session_server_new2(&created, callbacks, userData, option)
        case .client: nghttp2_session_client_new2(&created, callbacks, userData, option)
        }
        self.session = created

        var entries = [
            nghttp2_settings_entry(
                settings_id: CDP_SETTINGS_MAX_CONCURRENT_STREAMS,
                value: settings.maxConcurrentStreams
            ),
            nghttp2_settings_entry(settings_id: CDP_SETTINGS_INITIAL_WINDOW_SIZE, value: settings.initialStreamWindow),
            nghttp2_settings_entry(settings_id: CDP_SETTINGS_MAX_HEADER_LIST_SIZE, value: settings.maxHeaderListBytes),
        ]
        nghttp2_submit_settings(created, CDP_FLAG_NONE, &entries, entries.count)
        nghttp2_session_set_local_window_size(created, CDP_FLAG_NONE, 0, settings.connectionWindow)
    }

    deinit {
        nghttp2_session_del(self.session)
    }

    /// Feeds received bytes to nghttp2, which calls the delegate.
    ///
    /// - Throws: ``SessionError`` when the peer violated the protocol; nghttp2 has then queued a
    ///   GOAWAY where appropriate, and the connection should be flushed and closed.
    func receive(_ buffer: ByteBuffer) throws(SessionError) {
        self.inSessionIO = true
        defer { self.inSessionIO = false }
        let result = buffer.withUnsafeReadableBytes { bytes in
            cdp_session_mem_recv(self.session, bytes.bindMemory(to: UInt8.self).baseAddress, bytes.count)
        }
        if result < 0 { throw SessionError(code: Int32(result)) }
    }

    /// Writes every frame nghttp2 has ready to the channel.
    ///
    /// Does nothing when called from inside a callback (the caller of ``receive(_:)`` or the
    /// running flush picks the frames up).
    /// - Returns: `false` when the session failed and the connection should close.
    func flush(to context: ChannelHandlerContext) -> Bool {
        guard !self.inSessionIO else { return true }
        self.inSessionIO = true
        defer { self.inSessionIO = false }
        var buffer = context.channel.allocator.buffer(capacity: 0)
        do {
            try self.send(into: &buffer)
        } catch {
            return false
        }
        if buffer.readableBytes > 0 { context.writeAndFlush(NIOAny(buffer), promise: nil) }
        return true
    }

    /// Tells nghttp2 that the deferred bodies of these streams may be read again (the channel
    /// became writable).
    func resumeDeferredBodies(_ streams: some Sequence<some StreamWithBody>) {
        for stream in streams where stream.outbound.deferred {
            stream.outbound.deferred = false
            self.resumeBody(streamID: stream.id)
        }
    }

    /// Appends every frame nghttp2 has ready to `buffer`.
    func send(into buffer: inout ByteBuffer) throws(SessionError) {
        while true {
            var data: UnsafePointer<UInt8>?
            let count = cdp_session_mem_send(self.session, &data)
            if count < 0 { throw SessionError(code: Int32(count)) }
            if count == 0 { return }
            buffer.writeBytes(UnsafeRawBufferPointer(start: data, count: count))
        }
    }

    /// Whether nghttp2 has frames to send.
    var wantsWrite: Bool { nghttp2_session_want_write(self.session) != 0 }
    /// Whether the session is still usable (false after GOAWAY in both directions and no streams).
    var wantsRead: Bool { nghttp2_session_want_read(self.session) != 0 }

    /// Submits response headers; with `hasBody`, DATA follows from the delegate's body reads.
    func submitResponse(streamID: Int32, headers: [(String, String)], hasBody: Bool) {
        withNameValues(headers) { nva, count in
            _ = cdp_submit_response(self.session, streamID, nva, count, hasBody ? readBody : nil)
        }
    }

    /// Submits a request with a streamed body; returns the new stream id, or `nil` when refused.
    func submitRequest(headers: [(String, String)]) -> Int32? {
        let id = withNameValues(headers) { nva, count in
            cdp_submit_request(self.session, nva, count, readBody, nil)
        }
        return id > 0 ? id : nil
    }

    /// Submits trailers (a HEADERS frame with END_STREAM).
    func submitTrailers(streamID: Int32, trailers: [(String, String)]) {
        withNameValues(trailers) { nva, count in
            _ = nghttp2_submit_trailer(self.session, streamID, nva, count)
        }
    }

    /// Resets a stream with an HTTP/2 error code.
    func resetStream(streamID: Int32, errorCode: UInt32) {
        nghttp2_submit_rst_stream(self.session, CDP_FLAG_NONE, streamID, errorCode)
    }

    /// Tells nghttp2 that the body of a deferred stream has bytes again.
    func resumeBody(streamID: Int32) {
        nghttp2_session_resume_data(self.session, streamID)
    }

    /// Marks received connection-level bytes as processed (they may be re-announced in WINDOW_UPDATE).
    func consumeConnection(_ count: Int) {
        if count > 0 { nghttp2_session_consume_connection(self.session, count) }
    }

    /// Marks received bytes of a stream as processed.
    func consumeStream(_ streamID: Int32, _ count: Int) {
        if count > 0 { nghttp2_session_consume_stream(self.session, streamID, count) }
    }

    /// Sends GOAWAY: streams above the last one processed will not be served.
    func goAway(errorCode: UInt32, message: String = "") {
        let last = nghttp2_session_get_last_proc_stream_id(self.session)
        var bytes = Array(message.utf8)
        nghttp2_submit_goaway(self.session, CDP_FLAG_NONE, last, errorCode, &bytes, bytes.count)
    }

    /// Whether nghttp2 still tracks the stream (it has not been closed).
    func isStreamOpen(_ streamID: Int32) -> Bool {
        nghttp2_session_find_stream(self.session, streamID) != nil
    }

    /// Whether the peer may still send on the stream (it has not sent END_STREAM or RST).
    func isRemoteOpen(_ streamID: Int32) -> Bool {
        nghttp2_session_get_stream_remote_close(self.session, streamID) == 0
    }

    /// The HTTP/2 error code name for logs.
    static func errorDescription(_ code: UInt32) -> String {
        String(cString: nghttp2_http2_strerror(code))
    }

    private func withNameValues<R>(_ headers: [(String, String)], _ body: (UnsafePointer<nghttp2_nv>, Int) -> R) -> R {
        var storage = [UInt8]()
        var spans = [(name: Int, nameLength: Int, value: Int, valueLength: Int)]()
        spans.reserveCapacity(headers.count)
        for (name, value) in headers {
            let nameStart = storage.count
            storage.append(contentsOf: name.utf8)
            let valueStart = storage.count
            storage.append(contentsOf: value.utf8)
            spans.append((nameStart, valueStart - nameStart, valueStart, storage.count - valueStart))
        }
        if storage.isEmpty { storage.append(0) }
        return storage.withUnsafeMutableBufferPointer { raw in
            let base = raw.baseAddress!
            var nva = spans.map { span in
                nghttp2_nv(
                    name: base + span.name,
                    value: base + span.value,
                    namelen: span.nameLength,
                    valuelen: span.valueLength,
                    flags: CDP_NV_FLAG_NONE
                )
            }
            return nva.withUnsafeMutableBufferPointer { body($0.baseAddress!, $0.count) }
        }
    }
}

/// A stream whose outgoing messages nghttp2 reads through ``NGHTTP2SessionDelegate/sessionReadBody(streamID:into:)``.
protocol StreamWithBody: AnyObject {
    var id: Int32 { get }
    var outbound: OutboundMessages { get set }
}

/// An nghttp2 error code with its description.
struct SessionError: Error, CustomStringConvertible {
    let code: Int32
    var description: String { String(cString: nghttp2_strerror(code)) }
}

// MARK: - C callbacks
//
// Global functions, because nghttp2 takes plain C function pointers. Each recovers the session
// object from `user_data` and forwards to its delegate.

private func owner(_ userData: UnsafeMutableRawPointer?) -> NGHTTP2Session {
    Unmanaged<NGHTTP2Session>.fromOpaque(userData!).takeUnretainedValue()
}

private func onBeginHeaders(
    _ session: OpaquePointer?,
    _ frame: UnsafePointer<nghttp2_frame>?,
    _ userData: UnsafeMutableRawPointer?
) -> Int32 {
    owner(userData).delegate.sessionBeginHeaders(streamID: frame!.pointee.hd.stream_id)
    return 0
}

private func onHeader(
    _ session: OpaquePointer?,
    _ frame: UnsafePointer<nghttp2_frame>?,
    _ name: UnsafePointer<UInt8>?,
    _ nameLength: Int,
    _ value: UnsafePointer<UInt8>?,
    _ valueLength: Int,
    _ flags: UInt8,
    _ userData: UnsafeMutableRawPointer?
) -> Int32 {
    let accepted = owner(userData).delegate.sessionHeader(
        streamID: frame!.pointee.hd.stream_id,
        name: UnsafeRawBufferPointer(start: name, count: nameLength),
        value: UnsafeRawBufferPointer(start: value, count: valueLength)
    )
    return accepted ? 0 : CDP_ERR_TEMPORAL_CALLBACK_FAILURE
}

private func onFrameReceived(
    _ session: OpaquePointer?,
    _ frame: UnsafePointer<nghttp2_frame>?,
    _ userData: UnsafeMutableRawPointer?
) -> Int32 {
    let header = frame!.pointee.hd
    let delegate = owner(userData).delegate
    let endStream = header.flags & CDP_FLAG_END_STREAM != 0
    switch header.type {
    case CDP_FRAME_HEADERS:
        delegate.sessionHeadersComplete(streamID: header.stream_id, endStream: endStream)
    case CDP_FRAME_DATA:
        if endStream { delegate.sessionDataEndStream(streamID: header.stream_id) }
    case CDP_FRAME_GOAWAY:
        delegate.sessionReceivedGoAway(
            lastStreamID: frame!.pointee.goaway.last_stream_id,
            errorCode: frame!.pointee.goaway.error_code
        )
    default:
        break
    }
    return 0
}

private func onDataChunk(
    _ session: OpaquePointer?,
    _ flags: UInt8,
    _ streamID: Int32,
    _ data: UnsafePointer<UInt8>?,
    _ length: Int,
    _ userData: UnsafeMutableRawPointer?
) -> Int32 {
    owner(userData).delegate.sessionData(streamID: streamID, bytes: UnsafeRawBufferPointer(start: data, count: length))
    return 0
}

private func onStreamClose(
    _ session: OpaquePointer?,
    _ streamID: Int32,
    _ errorCode: UInt32,
    _ userData: UnsafeMutableRawPointer?
) -> Int32 {
    owner(userData).delegate.sessionStreamClosed(streamID: streamID, errorCode: errorCode)
    return 0
}

private func onFrameSent(
    _ session: OpaquePointer?,
    _ frame: UnsafePointer<nghttp2_frame>?,
    _ userData: UnsafeMutableRawPointer?
) -> Int32 {
    let header = frame!.pointee.hd
    owner(userData).delegate.sessionSentFrame(
        streamID: header.stream_id,
        type: header.type,
        endStream: header.flags & CDP_FLAG_END_STREAM != 0
    )
    return 0
}

private func onInvalidFrame(
    _ session: OpaquePointer?,
    _ frame: UnsafePointer<nghttp2_frame>?,
    _ errorCode: Int32,
    _ userData: UnsafeMutableRawPointer?
) -> Int32 {
    owner(userData).delegate.sessionInvalidFrame(streamID: frame!.pointee.hd.stream_id)
    return 0
}

private func readBody(
    _ session: OpaquePointer?,
    _ streamID: Int32,
    _ buffer: UnsafeMutablePointer<UInt8>?,
    _ length: Int,
    _ dataFlags: UnsafeMutablePointer<UInt32>?,
    _ source: UnsafeMutablePointer<nghttp2_data_source>?,
    _ userData: UnsafeMutableRawPointer?
) -> Int {
    let chunk = owner(userData).delegate.sessionReadBody(
        streamID: streamID,
        into: UnsafeMutableRawBufferPointer(start: buffer, count: length)
    )
    switch chunk {
    case .bytes(let count):
        return count
    case .deferred:
        return Int(CDP_ERR_DEFERRED)
    case .endWithTrailers(let count):
        dataFlags!.pointee |= CDP_DATA_FLAG_EOF | CDP_DATA_FLAG_NO_END_STREAM
        return count
    case .endStream(let count):
        dataFlags!.pointee |= CDP_DATA_FLAG_EOF
        return count
    }
}

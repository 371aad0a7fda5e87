"""Small HTTP/2 + gRPC wire helpers for the robustness tests.

Two clients:

* ``H2Client`` drives the ``h2`` library (a well-formed client): handshake,
  gRPC requests, flow control, events until a stream ends / GOAWAY / close.
* ``RawConn`` writes frames byte by byte (9-byte header + payload) for the
  things ``h2`` refuses to produce, and parses what the server answers
  (HPACK-decoding every header block so the decoder stays in sync).

Every socket read has a timeout; nothing here can block forever.
"""

from __future__ import annotations

import gzip
import select
import socket
import struct
import time
import zlib
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack

# --------------------------------------------------------------------------
# HTTP/2 constants (RFC 9113 sections 6 and 7)
# --------------------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
FRAME_NAMES = ["DATA", "HEADERS", "PRIORITY", "RST_STREAM", "SETTINGS", "PUSH_PROMISE",
               "PING", "GOAWAY", "WINDOW_UPDATE", "CONTINUATION"]

FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20

NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
SETTINGS_TIMEOUT = 0x4
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
CONNECT_ERROR = 0xA
ENHANCE_YOUR_CALM = 0xB
ERROR_NAMES = {
    0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR",
    4: "SETTINGS_TIMEOUT", 5: "STREAM_CLOSED", 6: "FRAME_SIZE_ERROR", 7: "REFUSED_STREAM",
    8: "CANCEL", 9: "COMPRESSION_ERROR", 10: "CONNECT_ERROR", 11: "ENHANCE_YOUR_CALM",
    12: "INADEQUATE_SECURITY", 13: "HTTP_1_1_REQUIRED",
}

SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6
DEFAULT_MAX_FRAME_SIZE = 16384
MAX_WINDOW = 2**31 - 1


def error_name(code: int | None) -> str:
    if code is None:
        return "None"
    return f"{ERROR_NAMES.get(code, 'UNKNOWN')}({code})"


# gRPC status codes used by the tests
GRPC_OK = 0
GRPC_CANCELLED = 1
GRPC_RESOURCE_EXHAUSTED = 8
GRPC_UNIMPLEMENTED = 12
GRPC_INTERNAL = 13
GRPC_UNAVAILABLE = 14

SERVICE = "/grpc.testing.TestService/"
EMPTY_CALL = SERVICE + "EmptyCall"
UNARY_CALL = SERVICE + "UnaryCall"
STREAMING_OUTPUT_CALL = SERVICE + "StreamingOutputCall"
STREAMING_INPUT_CALL = SERVICE + "StreamingInputCall"
FULL_DUPLEX_CALL = SERVICE + "FullDuplexCall"


# --------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------

def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"", length: int | None = None) -> bytes:
    """One HTTP/2 frame: 24-bit length, type, flags, 31-bit stream id, payload.

    ``length`` overrides the length field (to lie about it)."""
    n = len(payload) if length is None else length
    return struct.pack(">I", n)[1:] + bytes([ftype, flags]) + struct.pack(">I", stream_id & 0x7FFFFFFF) + payload


def settings_frame(pairs=(), ack: bool = False) -> bytes:
    payload = b"".join(struct.pack(">HI", k, v) for k, v in pairs)
    return frame(SETTINGS, FLAG_ACK if ack else 0, 0, payload)


def rst_stream_frame(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, struct.pack(">I", code))


def window_update_frame(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment & 0x7FFFFFFF))


def ping_frame(opaque: bytes = b"\0" * 8, ack: bool = False) -> bytes:
    return frame(PING, FLAG_ACK if ack else 0, 0, opaque)


# --------------------------------------------------------------------------
# Minimal protobuf encoding/decoding for the grpc.testing messages
# --------------------------------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pb_varint(num: int, value: int) -> bytes:
    return _varint(num << 3) + _varint(value)


def pb_bytes(num: int, value: bytes) -> bytes:
    return _varint((num << 3) | 2) + _varint(len(value)) + value


def pb_parse(buf: bytes) -> dict[int, list]:
    """Parse one protobuf message into {field: [values]} (varints as int, length-delimited as bytes)."""
    out: dict[int, list] = {}
    i = 0

    def varint():
        nonlocal i
        shift = result = 0
        while True:
            b = buf[i]
            i += 1
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result

    while i < len(buf):
        key = varint()
        num, wt = key >> 3, key & 7
        if wt == 0:
            val = varint()
        elif wt == 2:
            ln = varint()
            val = bytes(buf[i:i + ln])
            if len(val) != ln:
                raise ValueError("truncated protobuf field")
            i += ln
        elif wt == 1:
            val = bytes(buf[i:i + 8])
            i += 8
        elif wt == 5:
            val = bytes(buf[i:i + 4])
            i += 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        out.setdefault(num, []).append(val)
    return out


def payload_msg(size: int) -> bytes:
    """grpc.testing.Payload{body: size zero bytes}."""
    return pb_bytes(2, b"\0" * size)


def simple_request(response_size: int = 0, payload_size: int = 0) -> bytes:
    """grpc.testing.SimpleRequest."""
    out = b""
    if response_size:
        out += pb_varint(2, response_size)
    if payload_size:
        out += pb_bytes(3, payload_msg(payload_size))
    return out


def streaming_output_request(sizes, interval_us: int = 0) -> bytes:
    """grpc.testing.StreamingOutputCallRequest with one ResponseParameters per size."""
    out = b""
    for s in sizes:
        params = pb_varint(1, s) + (pb_varint(2, interval_us) if interval_us else b"")
        out += pb_bytes(2, params)
    return out


def response_payload_size(message: bytes) -> int:
    """Body length of the Payload in a SimpleResponse / StreamingOutputCallResponse (field 1)."""
    fields = pb_parse(message)
    if 1 not in fields:
        return 0
    body = pb_parse(fields[1][0]).get(2, [b""])[0]
    return len(body)


# --------------------------------------------------------------------------
# gRPC framing
# --------------------------------------------------------------------------

def grpc_frame(body: bytes, compressed_flag: int = 0, length: int | None = None) -> bytes:
    """Length-prefixed message: 1-byte compressed flag, 4-byte big-endian length, body.
    ``length`` overrides the announced length."""
    n = len(body) if length is None else length
    return bytes([compressed_flag]) + struct.pack(">I", n) + body


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9)


def gzip_zeros(total: int, chunk: int = 1 << 20) -> bytes:
    """gzip stream of ``total`` zero bytes, built without holding them in memory."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    zero = b"\0" * chunk
    out = []
    left = total
    while left > 0:
        n = min(chunk, left)
        out.append(c.compress(zero[:n]))
        left -= n
    out.append(c.flush())
    return b"".join(out)


def parse_grpc_messages(data: bytes):
    """Split a response body into [(flag, message)]; raises ValueError when truncated."""
    out = []
    i = 0
    while i < len(data):
        if len(data) - i < 5:
            raise ValueError(f"truncated gRPC prefix ({len(data) - i} bytes)")
        flag = data[i]
        (n,) = struct.unpack(">I", data[i + 1:i + 5])
        if len(data) - i - 5 < n:
            raise ValueError(f"truncated gRPC message ({len(data) - i - 5} of {n} bytes)")
        out.append((flag, bytes(data[i + 5:i + 5 + n])))
        i += 5 + n
    return out


def request_headers(path: str, authority: str, method: str = "POST",
                    content_type: str | None = "application/grpc", extra=()) -> list[tuple[str, str]]:
    hdrs = [(":method", method), (":scheme", "http"), (":path", path), (":authority", authority)]
    if content_type is not None:
        hdrs.append(("content-type", content_type))
    hdrs.append(("te", "trailers"))
    hdrs.extend(extra)
    return hdrs


# --------------------------------------------------------------------------
# Per-stream result (shared by both clients)
# --------------------------------------------------------------------------

@dataclass
class StreamResult:
    stream_id: int
    headers: list = field(default_factory=list)      # first header block (response headers)
    trailers: list = field(default_factory=list)     # second header block
    data: bytearray = field(default_factory=bytearray)
    ended: bool = False                              # END_STREAM seen from the server
    reset_code: int | None = None                    # RST_STREAM from the server
    informational: list = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.ended or self.reset_code is not None

    @staticmethod
    def _get(block, name):
        for k, v in block:
            if k == name:
                return v
        return None

    @property
    def http_status(self) -> int | None:
        v = self._get(self.headers, ":status")
        return int(v) if v is not None else None

    @property
    def trailers_only(self) -> bool:
        return self.ended and not self.trailers and self._get(self.headers, "grpc-status") is not None

    @property
    def grpc_status(self) -> int | None:
        v = self._get(self.trailers, "grpc-status")
        if v is None and self.ended and not self.trailers:
            v = self._get(self.headers, "grpc-status")  # Trailers-Only
        return int(v) if v is not None else None

    @property
    def grpc_message(self) -> str | None:
        v = self._get(self.trailers, "grpc-message")
        if v is None:
            v = self._get(self.headers, "grpc-message")
        return v

    def messages(self):
        return parse_grpc_messages(bytes(self.data))

    def describe(self) -> str:
        parts = [f"stream {self.stream_id}:"]
        parts.append(f":status={self.http_status}")
        parts.append(f"grpc-status={self.grpc_status}")
        if self.grpc_message:
            parts.append(f"grpc-message={self.grpc_message[:200]!r}")
        parts.append(f"data={len(self.data)}B")
        parts.append("END_STREAM" if self.ended else "open")
        if self.reset_code is not None:
            parts.append(f"RST_STREAM {error_name(self.reset_code)}")
        hdr = [(k, v) for k, v in self.headers if k not in (":status",)]
        if hdr:
            parts.append(f"headers={hdr}")
        if self.trailers:
            parts.append(f"trailers={self.trailers}")
        text = " ".join(parts)
        return text if len(text) <= 600 else text[:600] + "..."


@dataclass
class GoAway:
    error_code: int
    last_stream_id: int
    debug: bytes = b""

    def __str__(self):
        return f"GOAWAY {error_name(self.error_code)} last_stream_id={self.last_stream_id} debug={self.debug[:200]!r}"


# --------------------------------------------------------------------------
# What both clients share: the TCP connection and waiting on it
# --------------------------------------------------------------------------

class _Connection:
    """A TCP connection to the server (TCP_NODELAY, every read with a timeout)
    and the per-stream / GOAWAY / close state both clients keep. Subclasses
    implement ``_on_data``."""

    def __init__(self, port: int, host: str, timeout: float, rcvbuf: int | None):
        self.host, self.port, self.timeout = host, port, timeout
        self.authority = f"{host}:{port}"
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.streams: dict[int, StreamResult] = {}
        self.goaway: GoAway | None = None
        self.closed = False          # EOF / reset from the server
        self.close_error: str | None = None

    def _on_data(self, data: bytes) -> None:
        """Process bytes received from the server."""
        raise NotImplementedError

    def _mark_closed(self, why: str) -> None:
        if not self.closed:
            self.closed = True
            self.close_error = why

    def pump(self, timeout: float) -> bool:
        """Read once (up to ``timeout``) and process; False when nothing arrived."""
        if self.closed:
            return False
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(1 << 16)
        except (socket.timeout, BlockingIOError):
            return False
        except OSError as e:
            self._mark_closed(f"recv: {e!r}")
            return True
        if not data:
            self._mark_closed("EOF")
            return True
        self._on_data(data)
        return True

    def wait_for(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                return predicate()
            self.pump(min(left, 0.25))

    def _wait_stream_result(self, st: StreamResult, timeout: float | None) -> StreamResult:
        """Wait until ``st`` is done or a GOAWAY says the server never processed it."""
        sid = st.stream_id
        self.wait_for(lambda: st.done or (self.goaway is not None and sid > self.goaway.last_stream_id),
                      self.timeout if timeout is None else timeout)
        return st

    def wait_closed(self, timeout: float) -> bool:
        return self.wait_for(lambda: self.closed, timeout)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------
# h2-library client
# --------------------------------------------------------------------------

class H2Client(_Connection):
    """A well-behaved HTTP/2 client (prior knowledge h2c) built on the h2 library."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0,
                 settings: dict | None = None, connection_window: int | None = None,
                 auto_flow_control: bool = True, rcvbuf: int | None = None, handshake: bool = True):
        super().__init__(port, host, timeout, rcvbuf)
        self.auto_flow_control = auto_flow_control
        self.conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                             validate_inbound_headers=False))
        self.h2_error: str | None = None   # h2 refused what the server sent
        self.remote_settings_seen = False
        self.events: list = []
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        if connection_window:
            self.conn.increment_flow_control_window(connection_window)
        self.flush()
        if handshake:
            if not self.wait_for(lambda: self.remote_settings_seen, timeout):
                raise AssertionError(f"no SETTINGS from the server within {timeout}s "
                                     f"(closed={self.closed}, goaway={self.goaway})")

    # -- I/O --------------------------------------------------------------
    def flush(self) -> None:
        out = self.conn.data_to_send()
        if out and not self.closed:
            try:
                self.sock.sendall(out)
            except OSError as e:
                self._mark_closed(f"send: {e!r}")

    def _on_data(self, data: bytes) -> None:
        if self.h2_error is not None:
            self._scan_raw_for_goaway(data)
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self.h2_error = repr(e)
            return
        for ev in events:
            self._handle(ev)
        self.flush()

    def _scan_raw_for_goaway(self, data: bytes) -> None:
        # After h2 gave up we only look for a GOAWAY at the start of a chunk (best effort).
        if len(data) >= 17 and data[3] == GOAWAY:
            last, code = struct.unpack(">II", data[9:17])
            self.goaway = GoAway(code, last & 0x7FFFFFFF, data[17:])

    def _handle(self, ev) -> None:
        self.events.append(ev)
        E = h2.events
        st = self.streams.get(getattr(ev, "stream_id", None) or -1)
        if isinstance(ev, E.RemoteSettingsChanged):
            self.remote_settings_seen = True
        elif isinstance(ev, E.ResponseReceived) and st:
            st.headers = list(ev.headers)
        elif isinstance(ev, E.InformationalResponseReceived) and st:
            st.informational.append(list(ev.headers))
        elif isinstance(ev, E.TrailersReceived) and st:
            st.trailers = list(ev.headers)
        elif isinstance(ev, E.DataReceived):
            if st:
                st.data += ev.data
            if self.auto_flow_control and ev.flow_controlled_length:
                try:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                except h2.exceptions.ProtocolError:
                    pass
        elif isinstance(ev, E.StreamEnded) and st:
            st.ended = True
        elif isinstance(ev, E.StreamReset) and st:
            if ev.remote_reset:
                st.reset_code = int(ev.error_code)
        elif isinstance(ev, E.ConnectionTerminated):
            self.goaway = GoAway(int(ev.error_code), ev.last_stream_id or 0, ev.additional_data or b"")

    # -- gRPC -------------------------------------------------------------
    def start(self, path: str, method: str = "POST", content_type: str | None = "application/grpc",
              extra=(), end_stream: bool = False) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.streams[sid] = StreamResult(sid)
        self.conn.send_headers(sid, request_headers(path, self.authority, method, content_type, extra),
                               end_stream=end_stream)
        self.flush()
        return sid

    def send(self, sid: int, data: bytes, end_stream: bool = False, timeout: float | None = None) -> None:
        """Send DATA respecting flow control and frame size (waits for WINDOW_UPDATEs).
        Stops quietly when the server has already ended or reset the stream."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        view = memoryview(data)
        st = self.streams.get(sid)
        while True:
            if st is not None and st.done:
                return
            try:
                window = self.conn.local_flow_control_window(sid)
            except h2.exceptions.StreamClosedError:
                return
            n = min(len(view), window, self.conn.max_outbound_frame_size)
            if n > 0 or len(view) == 0:
                last = n == len(view)
                self.conn.send_data(sid, bytes(view[:n]), end_stream=end_stream and last)
                self.flush()
                view = view[n:]
                if last:
                    return
                continue
            if time.monotonic() > deadline or self.closed:
                raise AssertionError(f"stream {sid}: flow-control window stayed at 0 for too long")
            self.pump(0.2)

    def end(self, sid: int) -> None:
        self.conn.end_stream(sid)
        self.flush()

    def reset(self, sid: int, code: int = CANCEL) -> None:
        self.conn.reset_stream(sid, code)
        self.flush()

    def wait_stream(self, sid: int, timeout: float | None = None) -> StreamResult:
        return self._wait_stream_result(self.streams[sid], timeout)

    def call(self, path: str, body: bytes = b"", extra=(), timeout: float | None = None,
             compressed_flag: int = 0) -> StreamResult:
        """A whole unary call: headers, one message, END_STREAM; waits for the end."""
        sid = self.start(path, extra=extra)
        self.send(sid, grpc_frame(body, compressed_flag), end_stream=True)
        return self.wait_stream(sid, timeout)

    def remote_setting(self, code: int):
        return self.conn.remote_settings.get(code)


# --------------------------------------------------------------------------
# Raw frame client
# --------------------------------------------------------------------------

@dataclass
class Frame:
    type: int
    flags: int
    stream_id: int
    payload: bytes

    def __str__(self):
        name = FRAME_NAMES[self.type] if self.type < len(FRAME_NAMES) else f"type{self.type}"
        return f"{name}(flags=0x{self.flags:x}, stream={self.stream_id}, len={len(self.payload)})"


class RawConn(_Connection):
    """Writes arbitrary bytes; parses the server's frames (with HPACK decoding)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0, rcvbuf: int | None = None,
                 auto_window_update: bool = True, auto_ping_ack: bool = True):
        super().__init__(port, host, timeout, rcvbuf)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder(max_header_list_size=1 << 20)
        self.auto_window_update = auto_window_update
        self.auto_ping_ack = auto_ping_ack
        self.buf = bytearray()
        self.frames: list[Frame] = []
        self.server_settings: dict[int, int] = {}
        self.server_settings_seen = False
        self.send_error: str | None = None
        self.parse_error: str | None = None
        self.raw_received = bytearray()   # first bytes, for diagnostics
        self._hdr_block: bytearray | None = None
        self._hdr_stream = 0
        self._hdr_end_stream = False
        self.next_stream_id = 1

    # -- sending ----------------------------------------------------------
    def send(self, data: bytes) -> bool:
        """sendall; False (and no exception) if the server already closed/reset."""
        if self.closed and self.send_error:
            return False
        try:
            self.sock.settimeout(self.timeout)
            self.sock.sendall(data)
            return True
        except (socket.timeout, OSError) as e:
            self.send_error = repr(e)
            return False

    def handshake(self, settings=(), timeout: float | None = None) -> None:
        """Preface + SETTINGS, wait for the server's SETTINGS and ACK them."""
        self.send(PREFACE + settings_frame(settings))
        if not self.wait_for(lambda: self.server_settings_seen, self.timeout if timeout is None else timeout):
            raise AssertionError(f"no SETTINGS from the server (closed={self.closed}, goaway={self.goaway}, "
                                 f"received={bytes(self.raw_received[:64])!r})")

    @property
    def max_frame_size(self) -> int:
        return self.server_settings.get(SETTINGS_MAX_FRAME_SIZE, DEFAULT_MAX_FRAME_SIZE)

    def encode_headers(self, headers) -> bytes:
        return self.encoder.encode(headers)

    def new_stream_id(self) -> int:
        sid = self.next_stream_id
        self.next_stream_id += 2
        return sid

    def headers_frame(self, sid: int, block: bytes, end_stream=False, end_headers=True) -> bytes:
        flags = (FLAG_END_STREAM if end_stream else 0) | (FLAG_END_HEADERS if end_headers else 0)
        self.streams.setdefault(sid, StreamResult(sid))
        return frame(HEADERS, flags, sid, block)

    def send_request(self, path: str, body: bytes | None = None, end_stream: bool = True,
                     method: str = "POST", content_type: str = "application/grpc", extra=()) -> int:
        """HEADERS (+ one DATA with ``body`` as a gRPC message, if given)."""
        sid = self.new_stream_id()
        block = self.encode_headers(request_headers(path, self.authority, method, content_type, extra))
        out = self.headers_frame(sid, block, end_stream=end_stream and body is None)
        if body is not None:
            out += frame(DATA, FLAG_END_STREAM if end_stream else 0, sid, grpc_frame(body))
        self.send(out)
        return sid

    # -- receiving --------------------------------------------------------
    def _on_data(self, data: bytes) -> None:
        if len(self.raw_received) < 4096:
            self.raw_received += data[:4096 - len(self.raw_received)]
        self.buf += data
        self._parse()

    def _parse(self) -> None:
        replies = bytearray()
        while len(self.buf) >= 9 and self.parse_error is None:
            length = int.from_bytes(self.buf[0:3], "big")
            if len(self.buf) < 9 + length:
                break
            f = Frame(self.buf[3], self.buf[4], int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF,
                      bytes(self.buf[9:9 + length]))
            del self.buf[:9 + length]
            self.frames.append(f)
            try:
                replies += self._on_frame(f)
            except Exception as e:  # noqa: BLE001 - diagnostics only
                self.parse_error = f"{f}: {e!r}"
        if replies:
            self.send(bytes(replies))

    def _on_frame(self, f: Frame) -> bytes:
        reply = b""
        if f.type == SETTINGS:
            if not f.flags & FLAG_ACK:
                for i in range(0, len(f.payload) - 5, 6):
                    k, v = struct.unpack(">HI", f.payload[i:i + 6])
                    self.server_settings[k] = v
                self.server_settings_seen = True
                reply += settings_frame(ack=True)
        elif f.type == PING:
            if not f.flags & FLAG_ACK and self.auto_ping_ack:
                reply += ping_frame(f.payload, ack=True)
        elif f.type == GOAWAY:
            last, code = struct.unpack(">II", f.payload[:8])
            self.goaway = GoAway(code, last & 0x7FFFFFFF, f.payload[8:])
        elif f.type == RST_STREAM:
            (code,) = struct.unpack(">I", f.payload[:4])
            self.streams.setdefault(f.stream_id, StreamResult(f.stream_id)).reset_code = code
        elif f.type in (HEADERS, CONTINUATION):
            payload = f.payload
            if f.type == HEADERS:
                pad = 0
                if f.flags & FLAG_PADDED:
                    pad = payload[0]
                    payload = payload[1:]
                if f.flags & FLAG_PRIORITY:
                    payload = payload[5:]
                if pad:
                    payload = payload[:-pad]
                self._hdr_block = bytearray(payload)
                self._hdr_stream = f.stream_id
                self._hdr_end_stream = bool(f.flags & FLAG_END_STREAM)
            else:
                if self._hdr_block is None:
                    raise ValueError("CONTINUATION without HEADERS")
                self._hdr_block += payload
            if f.flags & FLAG_END_HEADERS:
                headers = self.decoder.decode(bytes(self._hdr_block))
                self._hdr_block = None
                st = self.streams.setdefault(self._hdr_stream, StreamResult(self._hdr_stream))
                status = StreamResult._get(headers, ":status")
                if not st.headers:
                    if status is not None and status.startswith("1"):
                        st.informational.append(headers)
                    else:
                        st.headers = headers
                else:
                    st.trailers = headers
                if self._hdr_end_stream:
                    st.ended = True
        elif f.type == DATA:
            st = self.streams.setdefault(f.stream_id, StreamResult(f.stream_id))
            payload = f.payload
            if f.flags & FLAG_PADDED:
                payload = payload[1:len(payload) - payload[0]]
            st.data += payload
            if f.flags & FLAG_END_STREAM:
                st.ended = True
            if self.auto_window_update and f.payload:
                reply += window_update_frame(0, len(f.payload))
                if not st.done:
                    reply += window_update_frame(f.stream_id, len(f.payload))
        return reply

    def drain(self, timeout: float = 0.0) -> None:
        """Process whatever is readable now (or within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            left = max(deadline - time.monotonic(), 0)
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                return
            self.pump(0.001)

    def wait_stream(self, sid: int, timeout: float | None = None) -> StreamResult:
        return self._wait_stream_result(self.streams.setdefault(sid, StreamResult(sid)), timeout)

    def wait_goaway_or_close(self, timeout: float) -> bool:
        return self.wait_for(lambda: self.goaway is not None or self.closed, timeout)

    def summary(self) -> str:
        kinds = [str(f) for f in self.frames[-12:]]
        return (f"goaway={self.goaway}, closed={self.closed} ({self.close_error}), send_error={self.send_error}, "
                f"parse_error={self.parse_error}, {len(self.frames)} frames, last: {kinds}")

"""SIGTERM drains the server: calls in flight finish, new connections are refused, exit code 0.

Run with: .venv/bin/python -m pytest Tests/Interop/python/test_lifecycle.py -q
(after Tests/python-env.sh; the server binary is .build/debug/cdp-interop-server or
CDP_INTEROP_SERVER).
"""

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(Path(__file__).resolve().parent / "generated"))

import grpc  # noqa: E402
from grpc_testing import messages_pb2, test_pb2_grpc  # noqa: E402

SERVER = os.environ.get("CDP_INTEROP_SERVER", ".build/debug/cdp-interop-server")
LISTEN_RE = re.compile(rb"^listening on ([0-9.]+):(\d+)$")


def start_server():
    path = REPO_ROOT / SERVER
    if not path.exists():
        pytest.skip(f"server binary {path} not built")
    proc = subprocess.Popen([str(path), "--port", "0"], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    line = proc.stdout.readline().strip()
    match = LISTEN_RE.match(line)
    assert match, f"unexpected first line {line!r}"
    return proc, int(match.group(2))


def request(size: int) -> messages_pb2.StreamingOutputCallRequest:
    return messages_pb2.StreamingOutputCallRequest(
        response_parameters=[messages_pb2.ResponseParameters(size=size)])


def test_sigterm_lets_calls_in_flight_finish_then_exits_cleanly():
    proc, port = start_server()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = test_pb2_grpc.TestServiceStub(channel)
            outgoing: "queue.Queue" = queue.Queue()
            responses = stub.FullDuplexCall(iter(outgoing.get, None), timeout=20)
            outgoing.put(request(10))
            assert len(next(responses).payload.body) == 10

            proc.send_signal(signal.SIGTERM)
            # The listener closes at once: new connections are refused.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    time.sleep(0.05)
                except ConnectionRefusedError:
                    break
            else:
                pytest.fail("the server still accepts connections 5 s after SIGTERM")

            # The call in flight carries on and ends with OK.
            outgoing.put(request(20))
            assert len(next(responses).payload.body) == 20
            outgoing.put(None)
            assert list(responses) == []
            assert responses.code() == grpc.StatusCode.OK
        assert proc.wait(timeout=10) == 0, proc.stderr.read().decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = bytes([0, 0, 0, 0x4, 0, 0, 0, 0, 0])
PING = bytes([0, 0, 8, 0x6, 0, 0, 0, 0, 0]) + b"late-png"


def read_until_end(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes its side (a clean end of stream)."""
    received = b""
    while chunk := conn.recv(65536):
        received += chunk
    return received


def frame_types(data: bytes) -> list[int]:
    """The type of each HTTP/2 frame in `data` (whole frames, from the start)."""
    types, offset = [], 0
    while offset + 9 <= len(data):
        length = int.from_bytes(data[offset:offset + 3], "big")
        types.append(data[offset + 3])
        offset += 9 + length
    assert offset == len(data), f"{len(data) - offset} bytes of a partial frame at the end"
    return types


def test_a_closing_connection_sends_its_end_then_reads_what_the_peer_still_sends():
    # The server's side of a connection whose session ended (GOAWAY, no calls) is closed for writing
    # first: the client reads every frame, then the end of the stream, and frames the client sent
    # meanwhile are read and dropped. A server that closed both sides at once left those frames
    # unread, and the kernel then reset the connection, which can drop the last frames written (a
    # gRPC client saw its last call end in "connection reset by peer").
    proc, port = start_server()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(PREFACE + EMPTY_SETTINGS)
            time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            received = read_until_end(conn)
            # The server's SETTINGS, then a GOAWAY (type 7) last, then the end of the stream.
            assert frame_types(received)[-1] == 0x7, frame_types(received)
            # The server still reads: a frame sent now is dropped, not answered with a reset (which
            # Linux reports here as a broken pipe or a reset connection).
            try:
                conn.sendall(PING)
                time.sleep(0.2)
                conn.shutdown(socket.SHUT_WR)
                assert conn.recv(65536) == b""
            except OSError as error:
                pytest.fail(f"the server reset the connection instead of reading the client's last frames: {error}")
        assert proc.wait(timeout=10) == 0, proc.stderr.read().decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

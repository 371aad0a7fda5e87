#!/usr/bin/env python3
"""gRPC interop test client (grpcio) for grpc.testing.TestService servers.

Runs the standard cases from the gRPC interop test descriptions
(https://github.com/grpc/grpc/blob/master/doc/interop-test-descriptions.md)
plus two compression cases of ours (gzip_large_unary, gzip_client_streaming)
against a plaintext HTTP/2 server — in our setup the Swift cdp-interop-server
(Tests/Interop/run-python-client.sh), and interop_server.py to validate this
client itself.

Usage:
  interop_client.py --server_port PORT [--server_host HOST] [--test_case NAME|all]
  interop_client.py --list_test_cases

Output: one line per case, `PASS name` or `FAIL name: reason`, then a final
line `N passed, M failed`. Exit status 1 if any case failed, 2 on usage errors.

Every case runs under its own 30 s deadline (all RPCs of the case share it) and
a watchdog thread, so a misbehaving server cannot hang the run.

Run Tests/python-env.sh first; it generates the protobuf modules imported here.
"""

import argparse
import os
import queue
import sys
import threading
import time

# The generated modules live in ./generated/grpc_testing/ (see python-env.sh).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "generated"))

try:
    import grpc
    from grpc_testing import empty_pb2, messages_pb2, test_pb2_grpc
except ImportError as exc:  # pragma: no cover - environment problem
    sys.exit(f"interop_client: cannot import grpc / generated code ({exc}); "
             "run Tests/python-env.sh and use .venv/bin/python")

CASE_DEADLINE_S = 30.0

ECHO_INITIAL_KEY = "x-grpc-test-echo-initial"
ECHO_INITIAL_VALUE = "test_initial_metadata_value"
ECHO_TRAILING_KEY = "x-grpc-test-echo-trailing-bin"
ECHO_TRAILING_VALUE = b"\xab\xab\xab"

SPECIAL_STATUS_MESSAGE = "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n"


class CaseFailure(Exception):
    """An assertion of an interop case did not hold."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CaseFailure(message)


class Deadline:
    """One absolute deadline per case; each RPC gets the time that is left."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left (<= 0 once expired); never raises."""
        return self._end - time.monotonic()

    def remaining(self) -> float:
        """Seconds left for an RPC timeout; fails the case once expired."""
        left = self.left()
        if left <= 0:
            raise CaseFailure(f"case deadline of {CASE_DEADLINE_S:.0f} s exhausted")
        return left


class Pipe:
    """A request iterator fed from the test thread (for ping-pong style calls).

    close() half-closes the request stream. next() waits at most until the
    case deadline, so grpcio's request-consuming thread can never block
    forever on an abandoned pipe.
    """

    _CLOSE = object()

    def __init__(self, deadline: Deadline) -> None:
        self._queue = queue.Queue()
        self._deadline = deadline

    def add(self, request) -> None:
        self._queue.put(request)

    def close(self) -> None:
        self._queue.put(self._CLOSE)

    def __iter__(self):
        return self

    def __next__(self):
        try:
            item = self._queue.get(timeout=max(self._deadline.left(), 0.001))
        except queue.Empty:
            raise StopIteration
        if item is self._CLOSE:
            raise StopIteration
        return item

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def zeros(n: int) -> messages_pb2.Payload:
    return messages_pb2.Payload(type=messages_pb2.COMPRESSABLE, body=bytes(n))


def check_payload(payload, size: int, what: str) -> None:
    check(len(payload.body) == size,
          f"{what}: payload body is {len(payload.body)} bytes, expected {size}")
    check(payload.body == bytes(size), f"{what}: payload body is not all zeros")


def expect_rpc_error(call_fn, code: grpc.StatusCode, details=None, what: str = "call"):
    """Run call_fn, which must raise grpc.RpcError with `code` (and `details`)."""
    try:
        call_fn()
    except grpc.RpcError as err:
        check(err.code() == code,
              f"{what}: expected status {code.name}, got {err.code().name} ({err.details()!r})")
        if details is not None:
            check(err.details() == details,
                  f"{what}: expected status message {details!r}, got {err.details()!r}")
        return err
    raise CaseFailure(f"{what}: expected status {code.name}, but the call succeeded")


def metadata_value(metadata, key):
    for k, v in metadata or ():
        if k == key:
            return v
    return None


class Context:
    """What a case needs: stubs on a fresh channel and the case deadline."""

    def __init__(self, channel: grpc.Channel, deadline: Deadline) -> None:
        self.stub = test_pb2_grpc.TestServiceStub(channel)
        self.unimplemented_stub = test_pb2_grpc.UnimplementedServiceStub(channel)
        self.deadline = deadline

    def timeout(self) -> float:
        return self.deadline.remaining()

    def assert_server_alive(self, after: str) -> None:
        # Our addition to the cancel cases: the cancellation (RST_STREAM) must
        # not take down the connection or the server.
        try:
            self.stub.EmptyCall(empty_pb2.Empty(), timeout=min(self.timeout(), 5.0))
        except grpc.RpcError as err:
            raise CaseFailure(f"EmptyCall after {after} failed: "
                              f"{err.code().name} ({err.details()!r})")


# ---------------------------------------------------------------------------
# Test cases. Each takes a Context and raises CaseFailure / grpc.RpcError on
# failure.

def empty_unary(ctx: Context) -> None:
    response = ctx.stub.EmptyCall(empty_pb2.Empty(), timeout=ctx.timeout())
    check(isinstance(response, empty_pb2.Empty), f"unexpected response type {type(response)}")


def _large_unary(ctx: Context, compression=None) -> None:
    request = messages_pb2.SimpleRequest(
        response_type=messages_pb2.COMPRESSABLE,
        response_size=314159,
        payload=zeros(271828),
    )
    response = ctx.stub.UnaryCall(request, timeout=ctx.timeout(), compression=compression)
    check_payload(response.payload, 314159, "response")


def large_unary(ctx: Context) -> None:
    _large_unary(ctx)


def gzip_large_unary(ctx: Context) -> None:
    _large_unary(ctx, compression=grpc.Compression.Gzip)


def _client_streaming(ctx: Context, compression=None) -> None:
    requests = (messages_pb2.StreamingInputCallRequest(payload=zeros(n))
                for n in (27182, 8, 1828, 45904))
    response = ctx.stub.StreamingInputCall(requests, timeout=ctx.timeout(),
                                           compression=compression)
    check(response.aggregated_payload_size == 74922,
          f"aggregated_payload_size is {response.aggregated_payload_size}, expected 74922")


def client_streaming(ctx: Context) -> None:
    _client_streaming(ctx)


def gzip_client_streaming(ctx: Context) -> None:
    _client_streaming(ctx, compression=grpc.Compression.Gzip)


def server_streaming(ctx: Context) -> None:
    sizes = (31415, 9, 2653, 58979)
    request = messages_pb2.StreamingOutputCallRequest(
        response_type=messages_pb2.COMPRESSABLE,
        response_parameters=[messages_pb2.ResponseParameters(size=s) for s in sizes],
    )
    responses = list(ctx.stub.StreamingOutputCall(request, timeout=ctx.timeout()))
    check(len(responses) == len(sizes), f"got {len(responses)} responses, expected {len(sizes)}")
    for i, (response, size) in enumerate(zip(responses, sizes)):
        check_payload(response.payload, size, f"response {i}")


def ping_pong(ctx: Context) -> None:
    request_sizes = (27182, 8, 1828, 45904)
    response_sizes = (31415, 9, 2653, 58979)
    with Pipe(ctx.deadline) as pipe:
        call = ctx.stub.FullDuplexCall(pipe, timeout=ctx.timeout())
        for i, (req_size, resp_size) in enumerate(zip(request_sizes, response_sizes)):
            pipe.add(messages_pb2.StreamingOutputCallRequest(
                response_type=messages_pb2.COMPRESSABLE,
                response_parameters=[messages_pb2.ResponseParameters(size=resp_size)],
                payload=zeros(req_size),
            ))
            try:
                response = next(call)
            except StopIteration:
                raise CaseFailure(f"stream ended after {i} responses, expected 4")
            check_payload(response.payload, resp_size, f"response {i}")
        pipe.close()  # half-close; the server must then finish with OK
        extra = list(call)
        check(not extra, f"got {len(extra)} unexpected extra responses after half-close")
        check(call.code() == grpc.StatusCode.OK, f"status {call.code()}")


def empty_stream(ctx: Context) -> None:
    call = ctx.stub.FullDuplexCall(iter(()), timeout=ctx.timeout())
    responses = list(call)
    check(not responses, f"got {len(responses)} responses, expected 0")
    check(call.code() == grpc.StatusCode.OK, f"status {call.code()}")


def _check_echoed_metadata(call, what: str) -> None:
    initial = metadata_value(call.initial_metadata(), ECHO_INITIAL_KEY)
    check(initial == ECHO_INITIAL_VALUE,
          f"{what}: initial metadata {ECHO_INITIAL_KEY} is {initial!r}, "
          f"expected {ECHO_INITIAL_VALUE!r}")
    trailing = metadata_value(call.trailing_metadata(), ECHO_TRAILING_KEY)
    check(trailing == ECHO_TRAILING_VALUE,
          f"{what}: trailing metadata {ECHO_TRAILING_KEY} is {trailing!r}, "
          f"expected {ECHO_TRAILING_VALUE!r}")


def custom_metadata(ctx: Context) -> None:
    metadata = ((ECHO_INITIAL_KEY, ECHO_INITIAL_VALUE), (ECHO_TRAILING_KEY, ECHO_TRAILING_VALUE))

    request = messages_pb2.SimpleRequest(
        response_type=messages_pb2.COMPRESSABLE, response_size=314159, payload=zeros(271828))
    response, call = ctx.stub.UnaryCall.with_call(request, metadata=metadata,
                                                  timeout=ctx.timeout())
    check_payload(response.payload, 314159, "UnaryCall response")
    _check_echoed_metadata(call, "UnaryCall")

    request = messages_pb2.StreamingOutputCallRequest(
        response_type=messages_pb2.COMPRESSABLE,
        response_parameters=[messages_pb2.ResponseParameters(size=314159)],
        payload=zeros(271828),
    )
    call = ctx.stub.FullDuplexCall(iter((request,)), metadata=metadata, timeout=ctx.timeout())
    responses = list(call)
    check(len(responses) == 1, f"FullDuplexCall: got {len(responses)} responses, expected 1")
    check_payload(responses[0].payload, 314159, "FullDuplexCall response")
    _check_echoed_metadata(call, "FullDuplexCall")


def _echo_status(ctx: Context, code: int, message: str, full_duplex: bool) -> None:
    status = messages_pb2.EchoStatus(code=code, message=message)
    expected = next(c for c in grpc.StatusCode if c.value[0] == code)

    unary_request = messages_pb2.SimpleRequest(response_status=status)
    expect_rpc_error(lambda: ctx.stub.UnaryCall(unary_request, timeout=ctx.timeout()),
                     expected, message, "UnaryCall")
    if full_duplex:
        stream_request = messages_pb2.StreamingOutputCallRequest(response_status=status)
        expect_rpc_error(
            lambda: list(ctx.stub.FullDuplexCall(iter((stream_request,)), timeout=ctx.timeout())),
            expected, message, "FullDuplexCall")


def status_code_and_message(ctx: Context) -> None:
    _echo_status(ctx, 2, "test status message", full_duplex=True)


def special_status_message(ctx: Context) -> None:
    _echo_status(ctx, 2, SPECIAL_STATUS_MESSAGE, full_duplex=False)


def unimplemented_method(ctx: Context) -> None:
    expect_rpc_error(lambda: ctx.stub.UnimplementedCall(empty_pb2.Empty(), timeout=ctx.timeout()),
                     grpc.StatusCode.UNIMPLEMENTED, what="TestService/UnimplementedCall")


def unimplemented_service(ctx: Context) -> None:
    expect_rpc_error(
        lambda: ctx.unimplemented_stub.UnimplementedCall(empty_pb2.Empty(), timeout=ctx.timeout()),
        grpc.StatusCode.UNIMPLEMENTED, what="UnimplementedService/UnimplementedCall")


def cancel_after_begin(ctx: Context) -> None:
    with Pipe(ctx.deadline) as pipe:
        future = ctx.stub.StreamingInputCall.future(pipe, timeout=ctx.timeout())
        # The spec cancels "after metadata has been sent": give the HEADERS
        # frame a moment to reach the server so it sees a real RST_STREAM.
        time.sleep(0.2)
        future.cancel()
        check(future.cancelled(), "future.cancelled() is False after cancel()")
        check(future.code() == grpc.StatusCode.CANCELLED,
              f"expected status CANCELLED, got {future.code()}")
    ctx.assert_server_alive("cancel")


def cancel_after_first_response(ctx: Context) -> None:
    with Pipe(ctx.deadline) as pipe:
        call = ctx.stub.FullDuplexCall(pipe, timeout=ctx.timeout())
        pipe.add(messages_pb2.StreamingOutputCallRequest(
            response_type=messages_pb2.COMPRESSABLE,
            response_parameters=[messages_pb2.ResponseParameters(size=31415)],
            payload=zeros(27182),
        ))
        try:
            response = next(call)
        except StopIteration:
            raise CaseFailure("stream ended before the first response")
        check_payload(response.payload, 31415, "first response")
        call.cancel()
        expect_rpc_error(lambda: next(call), grpc.StatusCode.CANCELLED, what="after cancel")
    ctx.assert_server_alive("cancel")


def timeout_on_sleeping_server(ctx: Context) -> None:
    with Pipe(ctx.deadline) as pipe:
        call = ctx.stub.FullDuplexCall(pipe, timeout=0.001)
        pipe.add(messages_pb2.StreamingOutputCallRequest(
            response_type=messages_pb2.COMPRESSABLE, payload=zeros(27182)))
        expect_rpc_error(lambda: next(call), grpc.StatusCode.DEADLINE_EXCEEDED,
                         what="FullDuplexCall with 1 ms timeout")


# Order matters only for readability of the output; `all` runs them in order.
TEST_CASES = {f.__name__: f for f in (
    empty_unary,
    large_unary,
    client_streaming,
    server_streaming,
    ping_pong,
    empty_stream,
    custom_metadata,
    status_code_and_message,
    special_status_message,
    unimplemented_method,
    unimplemented_service,
    cancel_after_begin,
    cancel_after_first_response,
    timeout_on_sleeping_server,
    gzip_large_unary,
    gzip_client_streaming,
)}


def describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return f"RPC failed with {exc.code().name}: {exc.details()!r}"
    if isinstance(exc, CaseFailure):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def run_case(name: str, target: str) -> tuple[bool, str]:
    """Run one case on a fresh channel in a watchdog thread."""
    outcome: list = []

    def body() -> None:
        deadline = Deadline(CASE_DEADLINE_S)
        try:
            # A fresh channel per case keeps a broken connection from one case
            # from failing the next ones.
            with grpc.insecure_channel(target) as channel:
                TEST_CASES[name](Context(channel, deadline))
            outcome.append((True, ""))
        except BaseException as exc:  # report everything, never crash the run
            outcome.append((False, describe(exc)))

    thread = threading.Thread(target=body, name=f"case-{name}", daemon=True)
    thread.start()
    # The RPC timeouts should end the case well before; this is the backstop.
    thread.join(CASE_DEADLINE_S + 5)
    if thread.is_alive():
        return False, f"hung for more than {CASE_DEADLINE_S + 5:.0f} s"
    return outcome[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server_host", default="127.0.0.1")
    parser.add_argument("--server_port", type=int)
    parser.add_argument("--test_case", default="all",
                        help="a case name, a comma-separated list, or 'all' (default)")
    parser.add_argument("--list_test_cases", action="store_true",
                        help="print the case names, one per line, and exit")
    args = parser.parse_args()

    if args.list_test_cases:
        print("\n".join(TEST_CASES))
        return 0
    if args.server_port is None:
        parser.error("--server_port is required")

    names = list(TEST_CASES) if args.test_case == "all" else args.test_case.split(",")
    unknown = [n for n in names if n not in TEST_CASES]
    if unknown:
        parser.error(f"unknown test case(s) {', '.join(unknown)}; "
                     f"known: {', '.join(TEST_CASES)}, all")

    host = args.server_host
    target = f"[{host}]:{args.server_port}" if ":" in host else f"{host}:{args.server_port}"

    passed = failed = 0
    hung = False
    for name in names:
        ok, reason = run_case(name, target)
        if ok:
            passed += 1
            print(f"PASS {name}", flush=True)
        else:
            failed += 1
            hung = hung or reason.startswith("hung")
            print(f"FAIL {name}: {reason}", flush=True)
    print(f"{passed} passed, {failed} failed", flush=True)

    status = 1 if failed else 0
    if hung:
        # A hung case leaves a thread blocked inside grpcio; don't let
        # interpreter shutdown wait for it.
        os._exit(status)
    return status


if __name__ == "__main__":
    sys.exit(main())

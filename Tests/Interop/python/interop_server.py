#!/usr/bin/env python3
"""Reference grpc.testing.TestService server built on grpcio (asyncio API).

Implements the server features of the gRPC interop test descriptions
(https://github.com/grpc/grpc/blob/master/doc/interop-test-descriptions.md):
EmptyCall, UnaryCall, StreamingOutputCall, StreamingInputCall, FullDuplexCall,
HalfDuplexCall, Echo Status, Echo Metadata, ResponseParameters.interval_us and
CompressedResponse. UnimplementedCall and UnimplementedService are deliberately
not implemented (clients must see UNIMPLEMENTED). gzip-compressed requests are
accepted by grpcio out of the box.

It serves two purposes: the peer for our Swift interop client
(Tests/Interop/run-swift-client.sh) and the baseline in
Benchmarks/rpc-benchmark.sh.

Usage: interop_server.py [--port PORT] [--host HOST]
After binding it prints exactly `listening on HOST:PORT` on stdout (PORT is the
real port, also when --port 0 asked for an ephemeral one) and runs until
SIGTERM or SIGINT.

Run Tests/python-env.sh first; it generates the protobuf modules imported here.
"""

import argparse
import asyncio
import os
import signal
import sys

# The generated modules live in ./generated/grpc_testing/ (see python-env.sh).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "generated"))

try:
    import grpc
    from grpc_testing import empty_pb2, messages_pb2, test_pb2_grpc
except ImportError as exc:  # pragma: no cover - environment problem
    sys.exit(f"interop_server: cannot import grpc / generated code ({exc}); "
             "run Tests/python-env.sh and use .venv/bin/python")

ECHO_INITIAL_KEY = "x-grpc-test-echo-initial"
ECHO_TRAILING_KEY = "x-grpc-test-echo-trailing-bin"

# grpc.StatusCode members carry (int, name) tuples; map the integer codes that
# clients send in EchoStatus back to the enum that context.abort() wants.
_STATUS_BY_CODE = {member.value[0]: member for member in grpc.StatusCode}

# Upper bound for a single payload; protects the server from a request asking
# for gigabytes. grpcio's default max message size (4 MiB) would reject
# anything larger on the client side anyway.
MAX_PAYLOAD = 16 * 1024 * 1024


def _payload(size: int) -> messages_pb2.Payload:
    """A COMPRESSABLE payload of `size` zero bytes, as the spec requires."""
    return messages_pb2.Payload(type=messages_pb2.COMPRESSABLE, body=bytes(size))


async def _check_size(size: int, context) -> None:
    if size < 0 or size > MAX_PAYLOAD:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"payload size {size} out of range [0, {MAX_PAYLOAD}]")


async def _check_response_type(response_type: int, context) -> None:
    # Only COMPRESSABLE exists; the spec says to reject unsupported types.
    if response_type != messages_pb2.COMPRESSABLE:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"unsupported response_type {response_type}")


async def _echo_metadata(context) -> None:
    """Echo Metadata feature: copy the test keys to initial/trailing metadata.

    Must run before the first response message so the initial metadata is
    sent with the response headers.
    """
    initial = []
    trailing = []
    for key, value in context.invocation_metadata() or ():
        if key == ECHO_INITIAL_KEY:
            initial.append((key, value))
        elif key == ECHO_TRAILING_KEY:
            trailing.append((key, value))  # value is bytes for a -bin key
    if initial:
        await context.send_initial_metadata(initial)
    if trailing:
        context.set_trailing_metadata(trailing)


async def _maybe_echo_status(request, context) -> None:
    """Echo Status feature: end the RPC with the requested code and message."""
    if not request.HasField("response_status"):
        return
    code = request.response_status.code
    if code == 0:
        return  # OK: nothing to abort; the call completes normally.
    status = _STATUS_BY_CODE.get(code, grpc.StatusCode.UNKNOWN)
    # abort() keeps trailing metadata set earlier (the echoed -bin key) only if
    # we pass it explicitly.
    await context.abort(status, request.response_status.message,
                        trailing_metadata=context.trailing_metadata() or ())


class TestService(test_pb2_grpc.TestServiceServicer):
    async def EmptyCall(self, request, context):
        await _echo_metadata(context)
        return empty_pb2.Empty()

    async def UnaryCall(self, request, context):
        await _echo_metadata(context)
        await _maybe_echo_status(request, context)
        await _check_response_type(request.response_type, context)
        await _check_size(request.response_size, context)
        if request.HasField("response_compressed") and request.response_compressed.value:
            context.set_compression(grpc.Compression.Gzip)
        return messages_pb2.SimpleResponse(payload=_payload(request.response_size))

    async def StreamingInputCall(self, request_iterator, context):
        await _echo_metadata(context)
        total = 0
        async for request in request_iterator:
            total += len(request.payload.body)
        return messages_pb2.StreamingInputCallResponse(aggregated_payload_size=total)

    async def StreamingOutputCall(self, request, context):
        await _echo_metadata(context)
        async for response in _responses_for(request, context):
            yield response
        await _maybe_echo_status(request, context)

    async def FullDuplexCall(self, request_iterator, context):
        await _echo_metadata(context)
        # Each request is answered as soon as it arrives (ping-pong).
        async for request in request_iterator:
            async for response in _responses_for(request, context):
                yield response
            # Echo Status: close with the status, ignore further messages.
            await _maybe_echo_status(request, context)

    async def HalfDuplexCall(self, request_iterator, context):
        await _echo_metadata(context)
        # Buffer everything until the client half-closes, then answer in order.
        requests = [request async for request in request_iterator]
        for request in requests:
            async for response in _responses_for(request, context):
                yield response
            await _maybe_echo_status(request, context)

    # UnimplementedCall is intentionally not overridden: the generated base
    # class answers UNIMPLEMENTED, which is what the interop tests expect.


async def _responses_for(request, context):
    """Responses for one StreamingOutputCallRequest, honouring interval_us."""
    await _check_response_type(request.response_type, context)
    compress_any = any(p.HasField("compressed") and p.compressed.value
                       for p in request.response_parameters)
    if compress_any:
        context.set_compression(grpc.Compression.Gzip)
    for params in request.response_parameters:
        await _check_size(params.size, context)
        if params.interval_us > 0:
            # interval_us is a sleep before each response, relative to the
            # previous one.
            await asyncio.sleep(params.interval_us / 1_000_000)
        if compress_any and not (params.HasField("compressed") and params.compressed.value):
            context.disable_next_message_compression()
        yield messages_pb2.StreamingOutputCallResponse(payload=_payload(params.size))


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server()
    test_pb2_grpc.add_TestServiceServicer_to_server(TestService(), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound_port = server.add_insecure_port(address)
    except RuntimeError as exc:
        sys.exit(f"interop_server: cannot bind {address}: {exc}")
    if bound_port == 0:  # older grpcio reports bind failure this way
        sys.exit(f"interop_server: cannot bind {address}")
    await server.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    # The scripts wait for exactly this line; flush so a pipe sees it now.
    print(f"listening on {host}:{bound_port}", flush=True)

    await stop.wait()
    # Short grace period: in-flight calls (e.g. a benchmark's tail) get to
    # finish, but shutdown never hangs on a stuck stream.
    await server.stop(grace=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0,
                        help="port to listen on; 0 picks an ephemeral port (default 0)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1)")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()

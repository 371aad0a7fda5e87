#!/usr/bin/env python3
"""grpcio's classic (thread-pool) server with EmptyCall and UnaryCall, for the RPC benchmark.

interop_server.py uses grpc.aio; grpcio's synchronous server is the other common way to serve
gRPC from Python and can be faster for tiny unary calls, so the benchmark measures both and
compares our server with the faster one. Only the two benchmarked methods are implemented.

Run Tests/python-env.sh first; it generates the protobuf modules imported here.
"""

import argparse
import os
import signal
import sys
import threading
from concurrent import futures

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "generated"))

import grpc  # noqa: E402
from grpc_testing import empty_pb2, messages_pb2, test_pb2_grpc  # noqa: E402


class BenchService(test_pb2_grpc.TestServiceServicer):
    def EmptyCall(self, request, context):
        return empty_pb2.Empty()

    def UnaryCall(self, request, context):
        return messages_pb2.SimpleResponse(
            payload=messages_pb2.Payload(body=b"\0" * max(0, request.response_size)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0 = any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--threads", type=int, default=16, help="handler thread pool size")
    args = parser.parse_args()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.threads))
    test_pb2_grpc.add_TestServiceServicer_to_server(BenchService(), server)
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    if port == 0:
        sys.exit(f"bench_sync_server: cannot bind {args.host}:{args.port}")
    server.start()
    print(f"listening on {args.host}:{port}", flush=True)

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=1).wait()


if __name__ == "__main__":
    main()

"""Generic gRPC tooling against our server, without any .proto files.

This is what `grpcurl list`, `grpcurl describe` and `grpcurl -d '{...}' host:port
grpc.testing.TestService/UnaryCall` do (grpcurl itself is not installable
here), reproduced with PyPI's grpcio-reflection and grpcio-health-checking:

* the services are discovered through server reflection
  (``ProtoReflectionDescriptorDatabase``, which speaks
  ``grpc.reflection.v1alpha``),
* the request / response message classes are built at run time from the
  descriptors the server hands out, and a call is made with them,
* ``grpc.reflection.v1.ServerReflection`` is exercised directly, and
* the standard health service is queried with the stock ``HealthStub``.

Nothing here imports the generated ``grpc_testing`` modules: the server is
the only source of schema information.

Server: ``.build/debug/cdp-interop-server`` at the repository root, or
``CDP_INTEROP_SERVER=/path/to/binary`` (a ``.py`` path is run with this
Python; ``Tests/Interop/python/interop_server.py``, which has neither
reflection nor health, makes every test fail: a way to see that they can).
The tests are skipped (with a message) when the binary does not exist. One server process serves the whole module;
at teardown it must still be running (a crash fails the run).

Run: ``.venv/bin/python -m pytest Tests/Interop/python/test_standard_services.py -q -p no:cacheprovider``
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_BINARY = REPO_ROOT / ".build" / "debug" / "cdp-interop-server"
STARTUP_TIMEOUT = 20.0
CALL_TIMEOUT = 10.0  # deadline of every RPC in this module
LISTEN_RE = re.compile(rb"listening on ([0-9.]+):(\d+)")

TEST_SERVICE = "grpc.testing.TestService"
HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
REFLECTION_V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]  # 5


# --------------------------------------------------------------------------- server


def _binary_path() -> Path:
    path = Path(os.environ.get("CDP_INTEROP_SERVER") or DEFAULT_BINARY)
    return path if path.is_absolute() else (REPO_ROOT / path)


class _Server:
    def __init__(self, binary: Path, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self._drain: threading.Thread | None = None
        # stderr goes to a file; stdout is a pipe: the first line gives the port, the
        # rest is drained by a thread.
        # A .py server (e.g. interop_server.py, the grpcio reference) runs under this Python.
        cmd = [sys.executable, str(binary)] if binary.suffix == ".py" else [str(binary)]
        self.proc = subprocess.Popen(cmd + ["--port", "0"], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self._log, cwd=str(REPO_ROOT),
                                     start_new_session=True)
        self.port = self._read_port()

    def _read_port(self) -> int:
        fd = self.proc.stdout.fileno()
        line = b""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail_startup(f"server printed no 'listening on' line within {STARTUP_TIMEOUT}s")
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(fd, 1)
                if not chunk:
                    self.proc.wait(timeout=5)
                    self._fail_startup(f"server exited during startup (rc={self.proc.returncode})")
                line += chunk
        m = LISTEN_RE.search(line)
        if not m:
            self._fail_startup(f"unexpected first stdout line from the server: {line!r}")
        # Keep reading stdout so the server never blocks on a full pipe (and never
        # gets SIGPIPE, as it would if we closed our end).
        self._drain = threading.Thread(target=self._drain_stdout, daemon=True)
        self._drain.start()
        return int(m.group(2))

    def _fail_startup(self, message: str) -> None:
        tail = self.stderr_tail()  # before stop(), which closes the log
        self.stop()
        pytest.fail(f"{message}: {' '.join(self.proc.args)}\nstderr:\n{tail}", pytrace=False)

    def _drain_stdout(self) -> None:
        for _ in iter(lambda: self.proc.stdout.read1(65536), b""):
            pass

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stderr_tail(self, lines: int = 40) -> str:
        self._log.flush()
        text = self.log_path.read_bytes()[-16384:].decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:]) or "<empty>"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self._drain is not None:
            self._drain.join(timeout=2)
        self.proc.stdout.close()
        self._log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    binary = _binary_path()
    if not binary.exists():
        pytest.skip(f"server binary not found: {binary} (build it with `swift build`, "
                    f"or point CDP_INTEROP_SERVER at it)")
    srv = _Server(binary, tmp_path_factory.mktemp("standard-services") / "server-stderr.log")
    try:
        yield srv
        # Give a crash caused by the last call a moment to happen before judging.
        try:
            srv.proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
        rc = srv.proc.poll()
        assert rc is None, (f"the server died during the tests (rc={rc})"
                            f"\nstderr:\n{srv.stderr_tail()}")
    finally:
        srv.stop()


# --------------------------------------------------------------------------- channels


class _DeadlineInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                           grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Gives every call without a deadline one of CALL_TIMEOUT seconds.

    ProtoReflectionDescriptorDatabase calls its stub without a timeout; through
    this interceptor a server that never answers fails the test instead of
    hanging it.
    """

    def _details(self, details):
        if details.timeout is not None:
            return details
        return _Details(details.method, CALL_TIMEOUT, details.metadata, details.credentials,
                        getattr(details, "wait_for_ready", None), getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


class _Details(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


@pytest.fixture
def channel(server):
    raw = grpc.insecure_channel(server.target, options=[("grpc.enable_http_proxy", 0)])
    try:
        grpc.channel_ready_future(raw).result(timeout=CALL_TIMEOUT)
        yield grpc.intercept_channel(raw, _DeadlineInterceptor())
    finally:
        raw.close()


# --------------------------------------------------------------------------- 1. grpcurl list


def test_reflection_lists_services(channel):
    """`grpcurl list`: ProtoReflectionDescriptorDatabase.get_services()."""
    services = list(ProtoReflectionDescriptorDatabase(channel).get_services())
    expected = {TEST_SERVICE, HEALTH_SERVICE, REFLECTION_V1, REFLECTION_V1ALPHA}
    missing = expected - set(services)
    assert not missing, f"reflection does not list {sorted(missing)}; it lists {services}"
    assert len(services) == len(set(services)), f"duplicate service names: {services}"


# --------------------------------------------------------------------------- 2. grpcurl describe + call


def test_reflection_describe_and_call_unary_without_proto_files(channel):
    """`grpcurl describe grpc.testing.TestService` and
    `grpcurl -d '{"response_size": 7}' … grpc.testing.TestService/UnaryCall`."""
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))

    service = pool.FindServiceByName(TEST_SERVICE)
    assert service.file.name == "grpc_testing/test.proto", service.file.name
    methods = {m.name: m for m in service.methods}
    assert {"EmptyCall", "UnaryCall"} <= set(methods), f"TestService methods: {sorted(methods)}"

    unary = methods["UnaryCall"]
    assert not unary.client_streaming and not unary.server_streaming
    assert unary.input_type.full_name == "grpc.testing.SimpleRequest"
    assert unary.output_type.full_name == "grpc.testing.SimpleResponse"
    # `describe` would print the request's fields; the ones we use must be there.
    assert {"response_size", "payload"} <= set(unary.input_type.fields_by_name)
    assert "payload" in unary.output_type.fields_by_name

    request_class = message_factory.GetMessageClass(unary.input_type)
    response_class = message_factory.GetMessageClass(unary.output_type)
    request = json_format.Parse('{"response_size": 7}', request_class())

    call = channel.unary_unary(f"/{TEST_SERVICE}/{unary.name}",
                               request_serializer=request_class.SerializeToString,
                               response_deserializer=response_class.FromString)
    response = call(request, timeout=CALL_TIMEOUT)

    assert isinstance(response, response_class)
    body = response.payload.body
    assert len(body) == 7, f"expected a 7-byte payload, got {len(body)}: {json_format.MessageToJson(response)}"


# --------------------------------------------------------------------------- 3. raw reflection v1


# grpcio-reflection ships only the v1alpha messages; v1's are field-for-field
# identical (same numbers, same types), so they are used with the v1 path too.
@pytest.mark.parametrize("reflection_service", [REFLECTION_V1, REFLECTION_V1ALPHA])
def test_reflection_raw_stream(channel, reflection_service):
    """Several requests on one ServerReflectionInfo stream, as grpcurl sends them."""
    call = channel.stream_stream(f"/{reflection_service}/ServerReflectionInfo",
                                 request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                 response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.testing.SimpleRequest"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.such.Symbol"),
    ]
    responses = list(call(iter(requests), timeout=CALL_TIMEOUT))
    kinds = [r.WhichOneof("message_response") for r in responses]
    assert kinds == ["list_services_response", "file_descriptor_response", "error_response"], \
        f"one answer per request, in order; got {kinds}: {responses}"
    listed, file_answer, error_answer = responses

    names = {s.name for s in listed.list_services_response.service}
    assert {TEST_SERVICE, HEALTH_SERVICE, REFLECTION_V1, REFLECTION_V1ALPHA} <= names, sorted(names)

    files = []
    for raw in file_answer.file_descriptor_response.file_descriptor_proto:
        fd = descriptor_pb2.FileDescriptorProto()
        fd.ParseFromString(raw)
        files.append(fd)
    file_names = [fd.name for fd in files]
    assert "grpc_testing/messages.proto" in file_names, file_names
    messages_proto = next(fd for fd in files if fd.name == "grpc_testing/messages.proto")
    assert messages_proto.package == "grpc.testing"
    assert "SimpleRequest" in {m.name for m in messages_proto.message_type}

    assert error_answer.error_response.error_code == NOT_FOUND, error_answer
    for request, response in zip(requests, responses):
        if response.HasField("original_request"):
            assert response.original_request == request


# --------------------------------------------------------------------------- 4. health


def test_health_check(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING, \
        health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    with pytest.raises(grpc.RpcError) as info:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=CALL_TIMEOUT)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND, (info.value.code(), info.value.details())


def test_health_watch(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    stream = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT)
    try:
        first = next(stream)
        assert first.status == health_pb2.HealthCheckResponse.SERVING, \
            health_pb2.HealthCheckResponse.ServingStatus.Name(first.status)
    finally:
        stream.cancel()
    # An unknown service is not an error for Watch: it streams SERVICE_UNKNOWN.
    unknown = stub.Watch(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=CALL_TIMEOUT)
    try:
        first = next(unknown)
        assert first.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN, \
            health_pb2.HealthCheckResponse.ServingStatus.Name(first.status)
    finally:
        unknown.cancel()
    # The server must keep serving after the client cancelled the watches.
    again = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT)
    assert again.status == health_pb2.HealthCheckResponse.SERVING

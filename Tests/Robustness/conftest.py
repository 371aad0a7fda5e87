"""Fixtures for the socket-level robustness tests.

``target`` starts the server under test (a fresh process per test), plus a
"bystander": a background grpcio client calling EmptyCall / UnaryCall every
~50 ms over its own connection.  After every test body (in the test's call
phase, so it is reported as a failure of that test) we assert that

* the bystander had zero failures (each call has a 2 s deadline), and a fresh
  connection still gets served, and
* the server process is still alive (a crash fails the test with the tail of
  its stderr).

Server selection:
* default: ``.build/debug/cdp-interop-server`` at the repository root;
* ``CDP_INTEROP_SERVER=/path/to/binary`` overrides it;
* ``CDP_INTEROP_SERVER=Tests/Interop/python/interop_server.py`` (any ``.py``)
  runs a grpcio reference server instead ("reference mode"): it is started
  with ``--port 0`` only, the receive / header limits are grpcio's defaults,
  and tests marked ``needs_server_flags`` are skipped.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import h2wire  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BINARY = REPO_ROOT / ".build" / "debug" / "cdp-interop-server"
STARTUP_TIMEOUT = 20.0
LISTEN_RE = re.compile(rb"listening on ([0-9.]+):(\d+)")

# The small limits every test runs with (the server's defaults are 4 MiB / 16 KiB / 100 / 300 s).
DEFAULT_LIMITS = {
    "--max-receive-message-bytes": 1 << 20,
    "--max-header-list-bytes": 8 << 10,
    "--max-concurrent-streams": 10,
}
# grpcio (reference mode) defaults
REFERENCE_LIMITS = {
    "--max-receive-message-bytes": 4 << 20,
    "--max-header-list-bytes": 8 << 10,
    "--max-concurrent-streams": None,
}

BYSTANDER_INTERVAL = 0.05
BYSTANDER_DEADLINE = 2.0


def pytest_configure(config):
    config.addinivalue_line("markers", "server_args(**flags): extra/overridden server flags, "
                            "e.g. server_args(idle_timeout_seconds=2)")
    config.addinivalue_line("markers", "needs_server_flags: relies on the limit flags of our server; "
                            "skipped against the grpcio reference server")


def _server_command() -> tuple[list[str], bool]:
    path = os.environ.get("CDP_INTEROP_SERVER") or str(DEFAULT_BINARY)
    if not os.path.isabs(path):
        path = str((REPO_ROOT / path) if (REPO_ROOT / path).exists() else Path(path).resolve())
    if path.endswith(".py"):
        return [sys.executable, path], True
    return [path], False


@dataclass
class Limits:
    max_receive_message_bytes: int
    max_header_list_bytes: int
    max_concurrent_streams: int | None
    idle_timeout_seconds: float | None


class ServerProcess:
    def __init__(self, cmd: list[str], args: list[str], log_dir: Path):
        self.cmd = cmd + ["--port", "0"] + args
        self.stderr_path = log_dir / "server-stderr.log"
        self.stdout_path = log_dir / "server-stdout.log"
        self.proc: subprocess.Popen | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self._stdout_thread: threading.Thread | None = None

    def start(self) -> None:
        if not Path(self.cmd[0]).exists():
            pytest.fail(f"server executable not found: {self.cmd[0]} "
                        f"(build it with `swift build`, or set CDP_INTEROP_SERVER)", pytrace=False)
        self._stderr_file = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._stderr_file, cwd=str(REPO_ROOT), start_new_session=True)
        line = b""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        fd = self.proc.stdout.fileno()
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                pytest.fail(f"server printed no 'listening on' line within {STARTUP_TIMEOUT}s: "
                            f"{' '.join(self.cmd)}\nstderr:\n{self.stderr_tail()}", pytrace=False)
            r, _, _ = select.select([fd], [], [], min(left, 0.5))
            if r:
                chunk = os.read(fd, 1)
                if not chunk:
                    self.proc.wait(timeout=5)
                    pytest.fail(f"server exited during startup (rc={self.proc.returncode}): {' '.join(self.cmd)}"
                                f"\nstderr:\n{self.stderr_tail()}", pytrace=False)
                line += chunk
        m = LISTEN_RE.search(line)
        if not m:
            self.stop()
            pytest.fail(f"unexpected first stdout line {line!r}", pytrace=False)
        self.host, self.port = m.group(1).decode(), int(m.group(2))
        self._stdout_thread = threading.Thread(target=self._drain_stdout, daemon=True)
        self._stdout_thread.start()

    def _drain_stdout(self) -> None:
        with open(self.stdout_path, "wb") as out:
            for chunk in iter(lambda: self.proc.stdout.read1(65536), b""):
                out.write(chunk)
                out.flush()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_description(self) -> str:
        rc = self.proc.returncode
        if rc is None:
            return "running"
        if rc < 0:
            try:
                return f"killed by signal {signal.Signals(-rc).name}"
            except ValueError:
                return f"killed by signal {-rc}"
        return f"exited with code {rc}"

    def stderr_tail(self, lines: int = 40) -> str:
        try:
            self._stderr_file.flush()
            text = self.stderr_path.read_bytes()[-16384:].decode("utf-8", "replace")
        except (OSError, AttributeError):
            return "<no stderr>"
        return "\n".join(text.splitlines()[-lines:])

    def memory_kib(self) -> dict[str, int]:
        """VmRSS / VmHWM (peak RSS) of the server process, in KiB."""
        out = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0])
        return out

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stdout:
            self.proc.stdout.close()
        if self._stdout_thread:
            self._stdout_thread.join(timeout=2)
        self._stderr_file.close()


@dataclass
class Failure:
    at: float
    method: str
    code: str
    details: str

    def __str__(self):
        return f"t+{self.at:.2f}s {self.method}: {self.code} {self.details!r}"


class Bystander(threading.Thread):
    """A well-behaved grpcio client on its own connection, calling every ~50 ms."""

    def __init__(self, target: str):
        super().__init__(daemon=True, name="bystander")
        self.target = target
        self.stop_event = threading.Event()
        self.failures: list[Failure] = []
        self.successes = 0
        self.max_latency = 0.0
        self.t0 = time.monotonic()
        self.first_success = threading.Event()

    def _channel(self):
        return grpc.insecure_channel(self.target, options=[("grpc.enable_http_proxy", 0)])

    def one_call(self, channel, i: int) -> None:
        t = time.monotonic()
        method = h2wire.EMPTY_CALL if i % 2 == 0 else h2wire.UNARY_CALL
        try:
            if method == h2wire.EMPTY_CALL:
                resp = channel.unary_unary(method)(b"", timeout=BYSTANDER_DEADLINE, wait_for_ready=True)
                if resp != b"":
                    raise AssertionError(f"EmptyCall returned {resp!r}")
            else:
                resp = channel.unary_unary(method)(h2wire.simple_request(response_size=64, payload_size=64),
                                                   timeout=BYSTANDER_DEADLINE, wait_for_ready=True)
                if h2wire.response_payload_size(resp) != 64:
                    raise AssertionError(f"UnaryCall returned a payload of {h2wire.response_payload_size(resp)}"
                                         " bytes, expected 64")
        except grpc.RpcError as e:
            self.failures.append(Failure(t - self.t0, method.rsplit("/", 1)[1], str(e.code()), e.details() or ""))
            return
        except Exception as e:  # noqa: BLE001 - a wrong answer is a failure too
            self.failures.append(Failure(t - self.t0, method.rsplit("/", 1)[1], "WRONG_RESPONSE", repr(e)))
            return
        self.max_latency = max(self.max_latency, time.monotonic() - t)
        self.successes += 1
        self.first_success.set()

    def run(self) -> None:
        channel = self._channel()
        try:
            i = 0
            while not self.stop_event.is_set():
                self.one_call(channel, i)
                i += 1
                self.stop_event.wait(BYSTANDER_INTERVAL)
        finally:
            channel.close()

    def finish(self) -> None:
        self.stop_event.set()
        self.join(timeout=BYSTANDER_DEADLINE * 2 + 2)
        # a fresh connection must still be served after the attack
        channel = self._channel()
        try:
            self.one_call(channel, 0)
            self.one_call(channel, 1)
        finally:
            channel.close()


@dataclass
class Target:
    server: ServerProcess
    limits: Limits
    reference: bool
    bystander: Bystander | None = None
    extra_checks: list = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    def h2(self, **kw) -> h2wire.H2Client:
        return h2wire.H2Client(self.port, self.host, **kw)

    def raw(self, **kw) -> h2wire.RawConn:
        return h2wire.RawConn(self.port, self.host, **kw)

    def problems(self) -> list[str]:
        out = []
        if self.bystander is not None:
            if self.server.alive():
                self.bystander.finish()
            else:
                self.bystander.stop_event.set()
                self.bystander.join(timeout=BYSTANDER_DEADLINE * 2 + 2)
            if self.bystander.failures:
                shown = "\n  ".join(str(f) for f in self.bystander.failures[:10])
                out.append(f"bystander had {len(self.bystander.failures)} failed calls "
                           f"({self.bystander.successes} succeeded):\n  {shown}")
        if not self.server.alive():
            out.append(f"server process died ({self.server.exit_description()}); stderr tail:\n"
                       f"{self.server.stderr_tail()}")
        return out


def _resolve_args(marker_kwargs: dict, reference: bool) -> tuple[list[str], Limits]:
    flags: dict[str, object] = dict(DEFAULT_LIMITS)
    for k, v in marker_kwargs.items():
        flags["--" + k.replace("_", "-")] = v
    if reference:
        lim = dict(REFERENCE_LIMITS)
        return [], Limits(lim["--max-receive-message-bytes"], lim["--max-header-list-bytes"],
                          lim["--max-concurrent-streams"], None)
    args: list[str] = []
    for k, v in flags.items():
        if v is not None:
            args += [k, str(v)]
    idle = flags.get("--idle-timeout-seconds")
    return args, Limits(int(flags["--max-receive-message-bytes"]), int(flags["--max-header-list-bytes"]),
                        int(flags["--max-concurrent-streams"]), float(idle) if idle is not None else None)


@pytest.fixture
def target(request, tmp_path):
    cmd, reference = _server_command()
    if reference and request.node.get_closest_marker("needs_server_flags"):
        pytest.skip("reference (grpcio) server: the limit flags of our server are not available")
    marker = request.node.get_closest_marker("server_args")
    args, limits = _resolve_args(marker.kwargs if marker else {}, reference)
    server = ServerProcess(cmd, args, tmp_path)
    server.start()
    t = Target(server=server, limits=limits, reference=reference)
    try:
        by = Bystander(f"{server.host}:{server.port}")
        by.start()
        if not by.first_success.wait(10):
            by.stop_event.set()
            pytest.fail(f"bystander never got an answer from the fresh server: "
                        f"{[str(f) for f in by.failures[:5]]}\nstderr:\n{server.stderr_tail()}", pytrace=False)
        t.bystander = by
        request.node._robustness_target = t
        yield t
    finally:
        if t.bystander is not None and t.bystander.is_alive():
            t.bystander.stop_event.set()
            t.bystander.join(timeout=BYSTANDER_DEADLINE * 2 + 2)
        server.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """After the test body: bystander must have had zero failures, the server must be alive."""
    try:
        result = yield
    except BaseException as exc:
        t = getattr(item, "_robustness_target", None)
        if t is not None and not isinstance(exc, pytest.skip.Exception):
            for p in t.problems():
                exc.add_note("ALSO: " + p)
        raise
    t = getattr(item, "_robustness_target", None)
    if t is not None:
        problems = t.problems()
        if problems:
            raise AssertionError("after the test:\n" + "\n".join(problems))
    return result

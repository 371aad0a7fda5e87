"""Crash test for cdp-ingestion: SIGKILL during uploads, restart on the same data directory, re-send.

What test_crash_recovery does (~40 s with the debug build at the default sizes):

* starts a fake identity receiver (a grpcio server implementing cdp.identity.v1.Identity/AcceptRecords
  that records every (key, version, batch id) it gets and can be told to fail with UNAVAILABLE);
* starts cdp-ingestion on a fresh data directory pointing at it, creates the sources, uploads one
  batch that must FAIL (too many invalid emails), and starts a StreamRecords client thread that
  streams small event requests all along, remembering which requests were acknowledged and re-sending
  the others on a new stream after every restart;
* uploads CRASH_TEST_BATCHES canonical person CSV files (CRASH_TEST_RECORDS rows each, 1 MiB
  chunks); during CRASH_TEST_KILLS of them it SIGKILLs the service at a random point of the upload
  (seeded: CRASH_TEST_SEED; see below), restarts it on the same data directory and port, and re-sends the batch
  with the same idempotency key. The last kill happens while the receiver fails (the outbox holds
  records at the kill, and must still hold them after the restart);
* re-sends the first batch once more (must be answered from the stored result: replayed, same id);
* waits until GetOutboxStatus.pending_records is 0, stops the service (SIGTERM) and checks:
  - every record of every COMPLETED batch and every acknowledged stream request is in the `records`
    table exactly once, with the batch id of the COMPLETED attempt (or `stream:...`), and nothing
    else is (no record of the FAILED batch or of an INTERRUPTED attempt);
  - right after each restart, the killed attempt is INTERRUPTED (GetBatch and ListBatches), nothing is
    RECEIVING, and none of the attempt's records is in the store;
  - at the end ListBatches has exactly one batch per idempotency key, COMPLETED, plus the FAILED one;
  - the receiver got every stored (key, version) at least once, nothing that is not stored, nothing
    with a sequence number other than the stored record's (which would be a record of a deleted
    attempt) and nothing under the FAILED batch's id. Duplicates at the receiver (at-least-once
    delivery) are allowed; their number is printed.

The API's answer for an idempotency key, as asserted here (the store's choice): re-sending the key of
an INTERRUPTED batch runs the batch again under the same batch id (replayed = false), which then ends
COMPLETED, so the interrupted attempt is only visible as INTERRUPTED until the re-send; re-sending a
COMPLETED or FAILED batch answers its stored result (replayed = true, same id and counts) and stores
nothing. If a kill lands after the commit but before the answer reached the client, the attempt is
COMPLETED after the restart and the re-send is answered replayed = true.

The kill point is a random fraction (0-95%) of the batch's records committed: a thread beside the
upload waits until ListBatches shows the attempt as RECEIVING (so the service certainly knows the
batch it must call INTERRUPTED after the restart), then polls the records table (read-only, WAL)
until that many of the attempt's records are stored, then SIGKILLs. So interrupted attempts usually
leave committed chunks behind that the restart must delete.

A second, short test (test_abandoned_upload_is_interrupted_and_can_be_resent) checks the client side
of the same contract: an upload the client cancels half way ends INTERRUPTED with nothing kept, and
the same idempotency key can then be sent again.

Run (after building cdp-ingestion and Tests/python-env.sh):
    .venv/bin/python -m pytest Tests/Ingestion/test_crash.py -s -q

Environment:
    CDP_INGESTION_BIN            the binary (default .build/debug/cdp-ingestion)
    CRASH_TEST_RECORDS           person rows per batch (default 30000)
    CRASH_TEST_BATCHES           batches (default 4, at least 2)
    CRASH_TEST_KILLS             kills during uploads (default 3, at most CRASH_TEST_BATCHES - 1;
                                 the last batch always gets one, with the receiver failing)
    CRASH_TEST_SEED              seed of the kill points and the data (default 1)
    CRASH_TEST_STREAM_EVENTS     events per StreamRecords request (default 20)
    CRASH_TEST_STREAM_INTERVAL   seconds between new stream requests (default 0.05)
    CRASH_TEST_DRAIN_TIMEOUT     seconds for the outbox to drain at the end (default 60)
    CRASH_TEST_FAIL_AFTER_RESTART  seconds the receiver keeps failing after the last restart (default 2)
    CRASH_TEST_FORWARD_BATCH_SIZE  passed as --forward-batch-size when set
    CRASH_TEST_SAME_PORT         1 (default): restart on the same port; 0: on a new one
    CRASH_TEST_LOG_LEVEL         the service's --log-level (default info)
"""

from __future__ import annotations

import collections
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protos import identity_pb2, identity_pb2_grpc, ingestion_pb2, ingestion_pb2_grpc, model_pb2  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
CHUNK = 1 << 20
U64 = (1 << 64) - 1
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0), ("grpc.max_receive_message_length", 64 << 20),
                   ("grpc.max_send_message_length", 64 << 20)]

MKTO = model_pb2.Source(type="Marketo", instance="mkto-1")
WEB = model_pb2.Source(type="Web", instance="web-1")
PERSON_HEADER = ("personId,email,firstName,lastName,jobTitle,personType,score,country,accountId,crmId,ecid,"
                 "emailOptOut,lastUpdated,isDeleted")
ENTITY_PERSON = model_pb2.ENTITY_TYPE_PERSON
ENTITY_EVENT = model_pb2.ENTITY_TYPE_EVENT

S = ingestion_pb2  # short alias for enum values
STATE = {v: k for k, v in ingestion_pb2.BatchState.items()}


def source_key(id_: str, source) -> str:
    return f"{id_}@{source.instance}.{source.type}"


_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[crash {time.monotonic() - _T0:6.2f}s] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------
# The fake identity receiver
# ---------------------------------------------------------------------------------------------------

class FakeIdentity(identity_pb2_grpc.IdentityServicer):
    """cdp.identity.v1.Identity on 127.0.0.1:<ephemeral>: records every (key, version) it takes, with
    the batch ids it came under, and counts duplicates. ``set_failing(True)`` makes every call fail
    with UNAVAILABLE (taking nothing) until ``set_failing(False)``."""

    def __init__(self, workers: int = 4, detail: bool = True):
        # detail=False (the benchmark): only (key, version) counts, no batch ids / entity kinds.
        self.detail = detail
        self.lock = threading.Lock()
        self.failing = False
        self.seen: dict[tuple[str, int], int] = {}          # (key, version) -> times received
        self.batch_ids: dict[tuple[str, int], set[str]] = {}  # (key, version) -> batch ids it came in
        self.sequences: dict[tuple[str, int], set[int]] = {}  # (key, version) -> sequence numbers it came with
        self.entity_kind: dict[str, str] = {}                # key -> oneof name of the record's entity
        self.records_received = 0
        self.calls_ok = 0
        self.calls_failed = 0
        self.bad_records: list[str] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                                  options=[("grpc.max_receive_message_length", 512 << 20)])
        identity_pb2_grpc.add_IdentityServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"

    def start(self) -> "FakeIdentity":
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(grace=None)

    def set_failing(self, failing: bool) -> None:
        with self.lock:
            self.failing = failing

    @property
    def duplicates(self) -> int:
        with self.lock:
            return self.records_received - len(self.seen)

    def AcceptRecords(self, request, context):  # noqa: N802 - gRPC method name
        with self.lock:
            if self.failing:
                self.calls_failed += 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "fake identity: failing on purpose")
            accepted = duplicates = 0
            for stored in request.records:
                rec = stored.record
                pair = (rec.key, stored.version & U64)
                if self.detail and (not rec.key or stored.version == 0 or rec.WhichOneof("entity") is None):
                    if len(self.bad_records) < 20:
                        self.bad_records.append(f"seq {stored.sequence}: key={rec.key!r} version={stored.version} "
                                                f"entity={rec.WhichOneof('entity')}")
                n = self.seen.get(pair, 0)
                self.seen[pair] = n + 1
                if self.detail:
                    self.batch_ids.setdefault(pair, set()).add(stored.batch_id)
                    self.sequences.setdefault(pair, set()).add(stored.sequence)
                    self.entity_kind[rec.key] = rec.WhichOneof("entity") or ""
                if n:
                    duplicates += 1
                else:
                    accepted += 1
            self.records_received += len(request.records)
            self.calls_ok += 1
        return identity_pb2.AcceptRecordsResponse(accepted=accepted, duplicates=duplicates)


# ---------------------------------------------------------------------------------------------------
# The service process
# ---------------------------------------------------------------------------------------------------

def ingestion_binary(default_config: str = "debug") -> Path:
    path = os.environ.get("CDP_INGESTION_BIN") or str(REPO_ROOT / ".build" / default_config / "cdp-ingestion")
    p = Path(path)
    if not p.is_absolute():
        p = (REPO_ROOT / p) if (REPO_ROOT / p).exists() else p.resolve()
    return p


class ServiceError(Exception):
    pass


class Service:
    """One cdp-ingestion process at a time on a fixed data directory; every start is a new
    "generation" with its own stdout/stderr files in ``log_dir``."""

    STARTUP_TIMEOUT = 30.0

    def __init__(self, binary: Path, data_dir: Path, identity: str, log_dir: Path, extra_args: list[str] = ()):
        self.binary = binary
        self.data_dir = data_dir
        self.identity = identity
        self.log_dir = log_dir
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.generation = 0
        self.host = "127.0.0.1"
        self.port = 0
        self.stderr_path: Path | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, port: int = 0) -> str:
        if not self.binary.exists():
            raise ServiceError(f"cdp-ingestion not found at {self.binary} (build it, or set CDP_INGESTION_BIN)")
        self.generation += 1
        out_path = self.log_dir / f"ingestion-{self.generation}.out"
        self.stderr_path = self.log_dir / f"ingestion-{self.generation}.err"
        cmd = [str(self.binary), "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(self.data_dir),
               *(["--identity", self.identity] if self.identity else []), *self.extra_args]
        with open(out_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         cwd=str(REPO_ROOT), start_new_session=True)
        deadline = time.monotonic() + self.STARTUP_TIMEOUT
        while True:
            text = out_path.read_bytes()
            if b"\n" in text:
                line = text.split(b"\n", 1)[0].decode("utf-8", "replace")
                prefix = "listening on "
                if not line.startswith(prefix) or ":" not in line:
                    self.kill()
                    raise ServiceError(f"unexpected first stdout line {line!r} from {' '.join(cmd)}\n"
                                       f"{self.stderr_tail()}")
                host, _, p = line[len(prefix):].strip().rpartition(":")
                self.host, self.port = host, int(p)
                if port and self.port != port:
                    raise ServiceError(f"asked for port {port}, got {line!r}")
                return self.address
            if self.proc.poll() is not None:
                raise ServiceError(f"cdp-ingestion exited during startup ({self.exit_description()}): "
                                   f"{' '.join(cmd)}\n{self.stderr_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise ServiceError(f"no 'listening on' line within {self.STARTUP_TIMEOUT}s: {' '.join(cmd)}\n"
                                   f"{self.stderr_tail()}")
            time.sleep(0.02)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, and wait until it is gone."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> bool:
        """SIGTERM; True when it exited with status 0 within `timeout` (else it is SIGKILLed)."""
        if self.proc is None:
            return True
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return False
        return self.proc.returncode == 0

    def exit_description(self) -> str:
        rc = self.proc.returncode if self.proc else None
        if rc is None:
            return "running"
        if rc < 0:
            try:
                return f"killed by {signal.Signals(-rc).name}"
            except ValueError:
                return f"killed by signal {-rc}"
        return f"exit status {rc}"

    def stderr_tail(self, lines: int = 40) -> str:
        if self.stderr_path is None:
            return "<no stderr>"
        try:
            text = self.stderr_path.read_bytes()[-32768:].decode("utf-8", "replace")
        except OSError:
            return "<no stderr>"
        return f"--- stderr of generation {self.generation} (last {lines} lines) ---\n" + \
            "\n".join(text.splitlines()[-lines:])

    def vm_kib(self) -> dict[str, int]:
        out = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0])
        return out


def channel(address: str) -> grpc.Channel:
    ch = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    grpc.channel_ready_future(ch).result(timeout=10)
    return ch


def upload_requests(header, data: bytes, chunk: int = CHUNK):
    """The IngestBatch request stream: the header, then `data` in `chunk`-byte pieces."""
    yield ingestion_pb2.IngestBatchRequest(header=header)
    for off in range(0, len(data), chunk):
        yield ingestion_pb2.IngestBatchRequest(data=data[off:off + chunk])


def list_all_batches(stub) -> list:
    out, token = [], ""
    while True:
        resp = stub.ListBatches(ingestion_pb2.ListBatchesRequest(page_size=1000, page_token=token), timeout=30)
        out.extend(resp.batches)
        token = resp.next_page_token
        if not token:
            return out


# ---------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------

FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Niklaus", "Margaret",
         "John", "Sophie", "Tim", "Hedy", "Linus"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Perlman", "Wirth",
        "Hamilton", "Backus", "Wilson", "Berners-Lee", "Lamarr", "Torvalds"]
TITLES = ["Engineer", "CTO", "\"VP, Sales\"", "Buyer", "Head of IT", "Analyst"]
COUNTRIES = ["US", "DE", "FR", "GB", "JP", "BR", "IN"]


def person_csv(prefix: str, n: int, rng: random.Random, bad_email_every: int = 0) -> tuple[bytes, list[str]]:
    """A canonical person CSV of `n` rows with person ids `{prefix}{i}`; returns (bytes, ids)."""
    rows = [PERSON_HEADER]
    ids = []
    for i in range(n):
        pid = f"{prefix}{i}"
        ids.append(pid)
        f, l_ = rng.choice(FIRST), rng.choice(LAST)
        email = f"{f.lower()}.{l_.lower()}.{i}@{prefix.lower().strip('-')}co{i % 97}.example"
        if bad_email_every and i % bad_email_every == 0:
            email = "not-an-email"
        ts = f"2026-0{1 + i % 9}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}Z"
        rows.append(f"{pid},{email},{f},{l_},{rng.choice(TITLES)},{'Lead' if i % 3 else 'Contact'},"
                    f"{rng.randint(0, 100)},{rng.choice(COUNTRIES)},A{i % 500},003{i:09d},ECID{i:012d},"
                    f"{'true' if i % 11 == 0 else 'false'},{ts},false")
    return ("\n".join(rows) + "\n").encode(), ids


# ---------------------------------------------------------------------------------------------------
# Harness: the service's generations, for the stream thread
# ---------------------------------------------------------------------------------------------------

class Harness:
    def __init__(self, service: Service):
        self.service = service
        self.cond = threading.Condition()
        self.generation = 0
        self.up = False

    def started(self) -> None:
        with self.cond:
            self.generation = self.service.generation
            self.up = True
            self.cond.notify_all()

    def going_down(self) -> None:
        with self.cond:
            self.up = False

    def wait_up(self, newer_than: int, stop: threading.Event, timeout: float = 120.0) -> int | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not (self.up and self.generation > newer_than):
                if stop.is_set() or time.monotonic() > deadline:
                    return None
                self.cond.wait(0.1)
            return self.generation

    def is_current(self, generation: int) -> bool:
        with self.cond:
            return self.up and self.generation == generation


class Streamer(threading.Thread):
    """StreamRecords client: sends paced requests of `per_request` events (deterministic content per
    request index), at most WINDOW unacknowledged at a time; after a broken stream it waits for the
    next service generation and re-sends every unacknowledged request, in order, on a new stream."""

    WINDOW = 8

    def __init__(self, harness: Harness, per_request: int, interval: float):
        super().__init__(daemon=True, name="streamer")
        self.harness = harness
        self.per_request = per_request
        self.interval = interval
        self.lock = threading.Condition()
        self.requests: list = []
        self.event_ids: list[list[str]] = []
        self.acked: dict[int, tuple[int, int]] = {}  # request index -> (accepted, duplicates) of its ack
        self.resends = 0
        self.resent_duplicates = 0        # re-sent requests the service already had (committed, ack lost)
        self.streams = 0
        self.stop_producing = threading.Event()
        self.abort = threading.Event()
        self.errors: list[str] = []

    def _make_request(self, r: int):
        recs, ids = [], []
        for j in range(self.per_request):
            eid = f"E{r}-{j}"
            ids.append(eid)
            ev = model_pb2.ExperienceEvent(
                event_id=eid, email=f"visitor{(r * 31 + j) % 5000}@stream{j % 7}.example",
                event_type="web.webpagedetails.pageViews",
                url=f"https://bodea.example/page/{(r + j) % 40}", name="page view")
            ev.timestamp.FromSeconds(1_780_000_000 + r * 60 + j)
            recs.append(model_pb2.Record(event=ev))
        self.event_ids.append(ids)
        return ingestion_pb2.StreamRecordsRequest(source=WEB, records=recs)

    def acked_event_keys(self) -> set[str]:
        with self.lock:
            return {source_key(e, WEB) for i in self.acked for e in self.event_ids[i]}

    def unacked(self) -> list[int]:
        with self.lock:
            return [i for i in range(len(self.requests)) if i not in self.acked]

    def run(self) -> None:
        generation = 0
        while not self.abort.is_set():
            generation = self.harness.wait_up(generation, self.abort)
            if generation is None:
                if not self.abort.is_set():
                    self.errors.append("the service did not come back up")
                return
            if self._one_stream(generation):
                return

    def _one_stream(self, generation: int) -> bool:
        """One stream; True when everything was sent and acknowledged and the stream ended OK."""
        sent: list[int] = []
        over = threading.Event()
        with self.lock:
            resend = [i for i in range(len(self.requests)) if i not in self.acked]
        first_new = len(self.requests)

        def gen():
            last_new = 0.0
            queue = list(resend)
            while not over.is_set():
                with self.lock:
                    inflight = sum(1 for i in sent if i not in self.acked)
                    if inflight >= self.WINDOW:
                        self.lock.wait(0.05)
                        continue
                    if queue:
                        i = queue.pop(0)
                        self.resends += 1
                    elif not self.stop_producing.is_set():
                        wait = last_new + self.interval - time.monotonic()
                        if wait > 0:
                            self.lock.wait(wait)
                            continue
                        i = len(self.requests)
                        self.requests.append(self._make_request(i))
                        last_new = time.monotonic()
                    elif inflight == 0:
                        return  # half-close: all sent and acknowledged
                    else:
                        self.lock.wait(0.05)
                        continue
                    sent.append(i)
                    req = self.requests[i]
                yield req

        ch = None
        try:
            ch = grpc.insecure_channel(self.harness.service.address, options=CHANNEL_OPTIONS)
            stub = ingestion_pb2_grpc.IngestionStub(ch)
            self.streams += 1
            for resp in stub.StreamRecords(gen(), timeout=600):
                n = resp.request_number
                with self.lock:
                    if not 1 <= n <= len(sent):
                        self.errors.append(f"stream {self.streams}: ack for request_number {n}, only {len(sent)} sent")
                        continue
                    i = sent[n - 1]
                    k = self.per_request
                    if resp.errors:
                        self.errors.append(f"request {i}: errors {[e.reason for e in resp.errors][:3]}")
                    pair = (resp.accepted, resp.duplicates)
                    if pair not in ((k, 0), (0, k)):
                        self.errors.append(f"request {i}: accepted={resp.accepted} duplicates={resp.duplicates}, "
                                           f"expected all {k} accepted (first delivery) or all {k} duplicates "
                                           f"(re-sent after a committed but unacknowledged delivery)")
                    if i < first_new and pair == (0, k):
                        self.resent_duplicates += 1
                    elif i >= first_new and pair != (k, 0):
                        self.errors.append(f"request {i} (first delivery) acknowledged as {pair}")
                    if i not in self.acked:
                        self.acked[i] = pair
                    self.lock.notify_all()
            with self.lock:
                done = self.stop_producing.is_set() and all(i in self.acked for i in range(len(self.requests)))
            if not done:
                self.errors.append(f"stream {self.streams} ended OK before every request was acknowledged")
            return done
        except grpc.RpcError as e:
            if self.harness.is_current(generation):
                # The service is up: the stream broke for another reason than our kill.
                self.errors.append(f"stream {self.streams} failed while the service was up: "
                                   f"{e.code()} {e.details()}")
                time.sleep(0.5)
            return False
        finally:
            over.set()
            with self.lock:
                self.lock.notify_all()
            if ch is not None:
                ch.close()


# ---------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------

def _env(name: str, default, conv=int):
    v = os.environ.get(name)
    return conv(v) if v not in (None, "") else default


@dataclass
class Config:
    records: int = field(default_factory=lambda: _env("CRASH_TEST_RECORDS", 30000))
    batches: int = field(default_factory=lambda: _env("CRASH_TEST_BATCHES", 4))
    kills: int = field(default_factory=lambda: _env("CRASH_TEST_KILLS", 3))
    seed: int = field(default_factory=lambda: _env("CRASH_TEST_SEED", 1))
    stream_events: int = field(default_factory=lambda: _env("CRASH_TEST_STREAM_EVENTS", 20))
    stream_interval: float = field(default_factory=lambda: _env("CRASH_TEST_STREAM_INTERVAL", 0.05, float))
    drain_timeout: float = field(default_factory=lambda: _env("CRASH_TEST_DRAIN_TIMEOUT", 60.0, float))
    fail_after_restart: float = field(default_factory=lambda: _env("CRASH_TEST_FAIL_AFTER_RESTART", 2.0, float))
    forward_batch_size: int | None = field(default_factory=lambda: _env("CRASH_TEST_FORWARD_BATCH_SIZE", None))
    same_port: bool = field(default_factory=lambda: bool(_env("CRASH_TEST_SAME_PORT", 1)))
    log_level: str = field(default_factory=lambda: _env("CRASH_TEST_LOG_LEVEL", "info", str))

    def kill_batches(self) -> list[int]:
        """The batches whose first upload is killed: the first kills-1, and the last one."""
        k = max(0, min(self.kills, self.batches - 1))
        return ([] if k == 0 else list(range(k - 1)) + [self.batches - 1])


@dataclass
class BatchPlan:
    index: int
    key: str
    data: bytes
    ids: list[str]
    failed_attempts: int = 0
    kill_fractions: list[float] = field(default_factory=list)
    receiving_ids: list[str] = field(default_factory=list)  # batch ids of the killed attempts
    states_after_restart: list[str] = field(default_factory=list)  # GetBatch state of each, after the restart
    final: object = None  # the COMPLETED Batch the successful attempt answered


# ---------------------------------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------------------------------

def test_crash_recovery(tmp_path):
    cfg = Config()
    assert cfg.batches >= 2, "CRASH_TEST_BATCHES must be at least 2"
    rng = random.Random(cfg.seed)
    binary = ingestion_binary()
    if not binary.exists():
        pytest.fail(f"cdp-ingestion not found at {binary} (build it, or set CDP_INGESTION_BIN)", pytrace=False)
    kill_batches = cfg.kill_batches()
    fail_from = max(0, cfg.batches - 2)  # the receiver fails from this batch until after the last restart
    log(f"binary {binary}; seed {cfg.seed}; {cfg.batches} batches x {cfg.records} persons; kills during batches "
        f"{kill_batches}; receiver fails from batch {fail_from}; data dir {tmp_path / 'data'}")

    # Data first (not timed against the service).
    plans = []
    for b in range(cfg.batches):
        data, ids = person_csv(f"P{b}-", cfg.records, rng)
        plans.append(BatchPlan(b, f"crash-b{b}", data, ids))
    bad_data, _ = person_csv("F-", 2000, rng, bad_email_every=5)  # 20% invalid emails > 5% threshold

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    receiver = FakeIdentity().start()
    extra = ["--log-level", cfg.log_level]
    if cfg.forward_batch_size:
        extra += ["--forward-batch-size", str(cfg.forward_batch_size)]
    service = Service(binary, data_dir, receiver.address, tmp_path, extra)
    harness = Harness(service)
    streamer = Streamer(harness, cfg.stream_events, cfg.stream_interval)
    problems: list[str] = []  # collected, so one run reports every broken promise
    notes: list[str] = []
    ch = None

    def connect():
        nonlocal ch
        if ch is not None:
            ch.close()
        ch = channel(service.address)
        return ingestion_pb2_grpc.IngestionStub(ch)

    def killer():
        harness.going_down()
        service.kill()

    def db_count(sql: str, args=()) -> int:
        db = sqlite3.connect(f"file:{data_dir / 'ingestion.sqlite'}?mode=ro", uri=True, timeout=10)
        try:
            return db.execute(sql, args).fetchone()[0]
        finally:
            db.close()

    def kill_during(plan: BatchPlan, stub, target: int, seq0: int, upload_over: threading.Event, out: dict):
        """Runs beside an upload: waits until ListBatches shows the attempt as RECEIVING (so the service
        certainly knows the batch it must call INTERRUPTED after the restart), then until `target` of its
        records are committed (records table, seq > seq0) or the upload is over, then SIGKILLs."""
        try:
            deadline = time.monotonic() + 30
            seen = None
            while seen is None and time.monotonic() < deadline and not upload_over.is_set():
                seen = next((bt for bt in list_all_batches(stub)
                             if bt.idempotency_key == plan.key and bt.state == S.BATCH_STATE_RECEIVING), None)
                if seen is None:
                    time.sleep(0.02)
            if seen is None:
                problems.append(f"batch {plan.index}: ListBatches never showed the batch being uploaded as RECEIVING")
            else:
                plan.receiving_ids.append(seen.batch_id)
                deadline = time.monotonic() + 120
                while not upload_over.is_set() and time.monotonic() < deadline:
                    n = db_count("SELECT COUNT(*) FROM records WHERE seq > ? AND batch_id = ?", (seq0, seen.batch_id))
                    if n >= target:
                        break
                    time.sleep(0.01)
        except Exception as e:  # noqa: BLE001 - reported; the kill happens anyway
            problems.append(f"batch {plan.index}: while waiting for the kill point: {e!r}")
        finally:
            try:
                out["committed"] = db_count("SELECT COUNT(*) FROM records WHERE seq > ? AND batch_id = ?",
                                            (seq0, plan.receiving_ids[-1])) if plan.receiving_ids else -1
            finally:
                killer()

    def restart():
        port = service.port if cfg.same_port else 0
        try:
            service.start(port)
        except ServiceError as e:
            raise AssertionError(f"restart (generation {service.generation}) failed: {e}") from None
        harness.started()
        return connect()

    def check_after_restart(plan: BatchPlan, stub) -> None:
        """Right after a restart: nothing is RECEIVING any more, the killed attempt is INTERRUPTED (or
        COMPLETED if the kill came after its commit) and none of its records is stored."""
        batches = list_all_batches(stub)
        receiving = [bt.batch_id for bt in batches if bt.state == S.BATCH_STATE_RECEIVING]
        if receiving:
            problems.append(f"batch {plan.index}: after the restart, batches are still RECEIVING: {receiving}")
        if not plan.receiving_ids or len(plan.receiving_ids) < plan.failed_attempts:
            return
        attempt = plan.receiving_ids[-1]
        got = stub.GetBatch(ingestion_pb2.GetBatchRequest(batch_id=attempt), timeout=10)
        listed = [STATE[bt.state] for bt in batches if bt.batch_id == attempt]
        plan.states_after_restart.append(STATE[got.state])
        if listed != [STATE[got.state]]:
            problems.append(f"batch {plan.index}: after the restart ListBatches lists attempt {attempt} as {listed}, "
                            f"GetBatch says {STATE[got.state]}")
        if got.state == S.BATCH_STATE_INTERRUPTED:
            if not got.failure:
                problems.append(f"batch {plan.index}: the INTERRUPTED attempt {attempt} has no failure text")
            db = sqlite3.connect(f"file:{data_dir / 'ingestion.sqlite'}?mode=ro", uri=True, timeout=10)
            try:
                kept = db.execute("SELECT COUNT(*) FROM records WHERE batch_id = ?", (attempt,)).fetchone()[0]
            finally:
                db.close()
            if kept:
                problems.append(f"batch {plan.index}: {kept} records of the INTERRUPTED attempt {attempt} are still "
                                f"stored after the restart")
            log(f"batch {plan.index}: after the restart attempt {attempt} is INTERRUPTED ({got.failure!r}), "
                f"{kept} of its records stored")
        elif got.state == S.BATCH_STATE_COMPLETED:
            notes.append(f"batch {plan.index}: the kill came after the commit; the attempt is COMPLETED")
        else:
            problems.append(f"batch {plan.index}: after the restart the killed attempt {attempt} is {STATE[got.state]}, "
                            f"expected INTERRUPTED")

    def header(plan: BatchPlan):
        return ingestion_pb2.BatchHeader(source=MKTO, entity="person", format=S.FORMAT_CANONICAL_CSV,
                                         idempotency_key=plan.key, file_name=f"persons-{plan.index}.csv")

    def outbox(stub):
        return stub.GetOutboxStatus(ingestion_pb2.GetOutboxStatusRequest(), timeout=10)

    try:
        t_start = time.monotonic()
        service.start(0)
        harness.started()
        stub = connect()
        for src, desc in ((MKTO, "Marketo instance 1"), (WEB, "web events")):
            info = stub.CreateSource(ingestion_pb2.CreateSourceRequest(source=src, description=desc), timeout=10)
            assert info.source == src, f"CreateSource answered {info.source}"

        # A batch that must fail as a whole: 20% invalid emails, threshold 5%.
        bad_header = ingestion_pb2.BatchHeader(source=MKTO, entity="person", format=S.FORMAT_CANONICAL_CSV,
                                               idempotency_key="crash-failed", file_name="bad.csv")
        failed_batch = stub.IngestBatch(upload_requests(bad_header, bad_data), timeout=120)
        if failed_batch.state != S.BATCH_STATE_FAILED:
            problems.append(f"the batch with 20% invalid emails is {STATE[failed_batch.state]}, expected FAILED "
                            f"(counts {failed_batch.counts})")
        elif failed_batch.counts.rejected != 400:
            problems.append(f"the FAILED batch counts {failed_batch.counts.rejected} rejected records, expected 400")
        log(f"bad batch: {STATE[failed_batch.state]} {failed_batch.failure!r} counts "
            f"{dict(records=failed_batch.counts.records, rejected=failed_batch.counts.rejected)}")

        streamer.start()
        pending_before_last_kill = None

        for plan in plans:
            b = plan.index
            if b == fail_from:
                receiver.set_failing(True)
                log("receiver now fails with UNAVAILABLE")
            if b in kill_batches:
                if receiver.failing:
                    # The outbox must hold records at the kill: wait until forwarding has been tried.
                    deadline = time.monotonic() + 15
                    st = outbox(stub)
                    while (st.pending_records == 0 or not st.last_error or receiver.calls_failed == 0) \
                            and time.monotonic() < deadline:
                        time.sleep(0.1)
                        st = outbox(stub)
                    if st.pending_records == 0:
                        problems.append("receiver failing, but GetOutboxStatus.pending_records is 0 before the kill")
                    if not st.last_error:
                        problems.append(f"receiver failing ({receiver.calls_failed} failed calls), but "
                                        f"GetOutboxStatus.last_error is empty")
                    if not st.HasField("oldest_pending") and st.pending_records:
                        problems.append("pending_records > 0 but oldest_pending is unset")
                    pending_before_last_kill = st.pending_records
                    log(f"before the kill with a failing receiver: pending_records={st.pending_records} "
                        f"last_error={st.last_error!r} receiver failed calls={receiver.calls_failed}")
                # The kill point: when this fraction of the batch's records is committed (0: as soon as
                # the batch is RECEIVING). The records of an interrupted attempt are then partly stored.
                frac = rng.uniform(0.0, 0.95)
                plan.kill_fractions.append(frac)
                target = int(cfg.records * frac)
                seq0 = db_count("SELECT COALESCE(MAX(seq), 0) FROM records")
                over, out = threading.Event(), {}
                k = threading.Thread(target=kill_during, args=(plan, stub, target, seq0, over, out), daemon=True)
                t = time.monotonic()
                k.start()
                try:
                    got = stub.IngestBatch(upload_requests(header(plan), plan.data), timeout=120)
                    notes.append(f"batch {b}: the upload was answered {STATE[got.state]} before the kill")
                except grpc.RpcError as e:
                    plan.failed_attempts += 1
                    log(f"batch {b}: killed at {target} of {cfg.records} records committed (found "
                        f"{out.get('committed', '?')}), after {time.monotonic() - t:.2f}s -> client saw {e.code().name}")
                over.set()
                k.join(timeout=60)
                if service.alive():
                    service.kill()
                stub = restart()
                log(f"restarted (generation {service.generation}) on {service.address}")
                check_after_restart(plan, stub)
                if pending_before_last_kill is not None and receiver.failing:
                    st = outbox(stub)
                    log(f"after restart: pending_records={st.pending_records}")
                    if st.pending_records < pending_before_last_kill:
                        problems.append(f"the outbox lost records in the crash: pending_records "
                                        f"{pending_before_last_kill} before the kill, {st.pending_records} after the "
                                        f"restart (the receiver failed all along)")
                    time.sleep(cfg.fail_after_restart)
                    receiver.set_failing(False)
                    log("receiver recovered")
            t = time.monotonic()
            try:
                got = stub.IngestBatch(upload_requests(header(plan), plan.data), timeout=300)
            except grpc.RpcError as e:
                raise AssertionError(f"batch {b}: upload failed with the service up: {e.code()} {e.details()}\n"
                                     f"{service.stderr_tail()}") from None
            dt = time.monotonic() - t
            plan.final = got
            n = cfg.records
            log(f"batch {b}: {STATE[got.state]} id={got.batch_id} replayed={got.replayed} in {dt:.2f}s "
                f"({n / dt:,.0f} records/s) counts records={got.counts.records} accepted={got.counts.accepted} "
                f"duplicates={got.counts.duplicates} rejected={got.counts.rejected}")
            if got.state != S.BATCH_STATE_COMPLETED:
                problems.append(f"batch {b}: re-send answered {STATE[got.state]} ({got.failure!r}), expected COMPLETED")
            c = got.counts
            if (c.records, c.accepted, c.duplicates, c.rejected) != (n, n, 0, 0):
                problems.append(f"batch {b}: counts records={c.records} accepted={c.accepted} "
                                f"duplicates={c.duplicates} rejected={c.rejected}, expected {n}/{n}/0/0 (an interrupted "
                                f"attempt must leave nothing behind)")
            if got.idempotency_key != plan.key:
                problems.append(f"batch {b}: answered idempotency_key {got.idempotency_key!r}")
            # The API's answer for an idempotency key whose last attempt was INTERRUPTED: the batch runs again
            # under the same batch id (replayed = false); after a kill that came after the commit, the
            # stored COMPLETED result (replayed = true); on a first upload, a new batch.
            last_state = plan.states_after_restart[-1] if plan.states_after_restart else None
            if plan.receiving_ids and got.batch_id != plan.receiving_ids[-1]:
                problems.append(f"batch {b}: the re-send after the kill ran as batch {got.batch_id}, expected the "
                                f"interrupted attempt's id {plan.receiving_ids[-1]}")
            if got.replayed != (last_state == "BATCH_STATE_COMPLETED"):
                problems.append(f"batch {b}: answered replayed={got.replayed}; the previous attempt was "
                                f"{last_state or 'none'}")

        if receiver.failing:  # CRASH_TEST_KILLS=0: no restart recovered it
            receiver.set_failing(False)
        streamer.stop_producing.set()
        streamer.join(timeout=60)
        if streamer.is_alive():
            streamer.abort.set()
            problems.append(f"the stream did not finish: {len(streamer.unacked())} requests never acknowledged")
        problems.extend(streamer.errors)
        log(f"stream: {len(streamer.requests)} requests ({streamer.per_request} events each) on {streamer.streams} "
            f"streams, {streamer.resends} re-sent, of which {streamer.resent_duplicates} had been committed already")

        # Re-sending a COMPLETED batch: answered from the stored result, nothing stored twice.
        first = plans[0]
        again = stub.IngestBatch(upload_requests(header(first), first.data), timeout=300)
        if not (again.replayed and again.batch_id == first.final.batch_id and again.state == S.BATCH_STATE_COMPLETED
                and again.counts == first.final.counts):
            problems.append(f"re-sending completed batch 0: replayed={again.replayed} id={again.batch_id} "
                            f"state={STATE[again.state]} counts={again.counts}; expected replayed=True, "
                            f"id={first.final.batch_id}, COMPLETED, counts {first.final.counts}")
        again_failed = stub.IngestBatch(upload_requests(bad_header, bad_data), timeout=120)
        if not (again_failed.replayed and again_failed.batch_id == failed_batch.batch_id
                and again_failed.state == S.BATCH_STATE_FAILED):
            problems.append(f"re-sending the FAILED batch: replayed={again_failed.replayed} id={again_failed.batch_id} "
                            f"state={STATE[again_failed.state]}; expected the first result (FAILED, replayed)")

        # ListBatches at the end: one batch per idempotency key (an interrupted attempt's id is reused by
        # its re-send), COMPLETED; the bad one FAILED; nothing else.
        batches = list_all_batches(stub)
        failed_ids = {failed_batch.batch_id}
        ids_seen = collections.Counter(bt.batch_id for bt in batches)
        if any(c > 1 for c in ids_seen.values()):
            problems.append(f"ListBatches lists a batch id twice: {[i for i, c in ids_seen.items() if c > 1][:5]}")
        if len(batches) != len(plans) + 1:
            problems.append(f"ListBatches lists {len(batches)} batches, expected {len(plans) + 1}: "
                            f"{[(bt.batch_id, bt.idempotency_key, STATE[bt.state]) for bt in batches]}")
        for plan in plans:
            mine = [(bt.batch_id, STATE[bt.state]) for bt in batches if bt.idempotency_key == plan.key]
            if mine != [(plan.final.batch_id, "BATCH_STATE_COMPLETED")]:
                problems.append(f"batch {plan.index} ({plan.key}): ListBatches has {mine}; expected "
                                f"[({plan.final.batch_id!r}, 'BATCH_STATE_COMPLETED')]")
            one = stub.GetBatch(ingestion_pb2.GetBatchRequest(batch_id=plan.final.batch_id), timeout=10)
            if one.state != S.BATCH_STATE_COMPLETED or one.counts != plan.final.counts:
                problems.append(f"GetBatch({plan.final.batch_id}): {STATE[one.state]} {one.counts}; the upload was "
                                f"answered COMPLETED {plan.final.counts}")
        bad = [STATE[bt.state] for bt in batches if bt.idempotency_key == "crash-failed"]
        if bad != ["BATCH_STATE_FAILED"]:
            problems.append(f"the bad batch is listed as {bad}, expected FAILED")
        newest_first = [bt.created_at.ToNanoseconds() for bt in batches]
        if newest_first != sorted(newest_first, reverse=True):
            problems.append("ListBatches is not newest first")
        log(f"ListBatches: {len(batches)} batches: {dict(collections.Counter(STATE[bt.state] for bt in batches))}")

        # The outbox drains.
        t = time.monotonic()
        deadline = t + cfg.drain_timeout
        st = outbox(stub)
        while st.pending_records and time.monotonic() < deadline:
            time.sleep(0.2)
            st = outbox(stub)
        drain = time.monotonic() - t
        log(f"outbox: pending={st.pending_records} forwarded={st.forwarded_records} last_error={st.last_error!r} "
            f"(waited {drain:.1f}s)")
        if st.pending_records:
            problems.append(f"the outbox did not drain within {cfg.drain_timeout}s: pending_records="
                            f"{st.pending_records}, last_error={st.last_error!r}")
        else:
            if st.HasField("oldest_pending"):
                problems.append("pending_records is 0 but oldest_pending is set")
            if st.last_error:
                problems.append(f"the outbox drained but last_error is still {st.last_error!r}")
        forwarded_status = st.forwarded_records

        stopped_ok = service.stop()
        harness.going_down()
        if not stopped_ok:
            problems.append(f"cdp-ingestion did not exit cleanly on SIGTERM ({service.exit_description()})\n"
                            f"{service.stderr_tail()}")
        total_time = time.monotonic() - t_start

        # The store.
        db = sqlite3.connect(data_dir / "ingestion.sqlite")
        try:
            rows = db.execute("SELECT key, version, batch_id, entity FROM records").fetchall()
            seqs = db.execute("SELECT seq, key FROM records").fetchall()
        finally:
            db.close()
        per_key = collections.Counter(r[0] for r in rows)
        twice = [k for k, c in per_key.items() if c > 1]
        if twice:
            problems.append(f"{len(twice)} keys stored more than once, e.g. {twice[:5]}")
        batch_of_key = {}
        for plan in plans:
            for pid in plan.ids:
                batch_of_key[source_key(pid, MKTO)] = plan.final.batch_id
        event_keys = streamer.acked_event_keys()
        expected = set(batch_of_key) | event_keys
        stored = set(per_key)
        missing, extra_keys = expected - stored, stored - expected
        if missing:
            problems.append(f"{len(missing)} acknowledged records are not stored, e.g. {sorted(missing)[:5]}")
        if extra_keys:
            bad = [k for k in extra_keys if k.startswith("F-")]
            problems.append(f"{len(extra_keys)} stored records were never acknowledged ({len(bad)} of the FAILED "
                            f"batch), e.g. {sorted(extra_keys)[:5]}")
        wrong_batch, wrong_entity, stream_prefix = [], [], set()
        for key, version, batch_id, entity in rows:
            if key in batch_of_key:
                if batch_id != batch_of_key[key]:
                    wrong_batch.append((key, batch_id))
                if entity != ENTITY_PERSON:
                    wrong_entity.append((key, entity))
            elif key in event_keys:
                if not batch_id.startswith("stream"):
                    wrong_batch.append((key, batch_id))
                elif not batch_id.startswith("stream:"):
                    stream_prefix.add(batch_id)
                if entity != ENTITY_EVENT:
                    wrong_entity.append((key, entity))
        if wrong_batch:
            problems.append(f"{len(wrong_batch)} records stored under another batch id than expected, e.g. "
                            f"{wrong_batch[:3]}")
        if stream_prefix:
            problems.append(f"streamed records are stored under batch ids like {sorted(stream_prefix)[0]!r}; "
                            f"identity.proto (StoredRecord.batch_id) documents `stream:...`")
        if wrong_entity:
            problems.append(f"{len(wrong_entity)} records with an unexpected entity column, e.g. {wrong_entity[:3]}")

        # The receiver.
        stored_pairs = {(k, v & U64) for k, v, _, _ in rows}
        with receiver.lock:
            got_pairs = set(receiver.seen)
            from_dead = [(p, ids) for p, ids in receiver.batch_ids.items() if ids & failed_ids]
            seq_of_key = {k: seq for seq, k in seqs}
            # A record forwarded with a sequence number the store no longer has was forwarded from an
            # attempt whose records were deleted (an interrupted or failed batch).
            foreign_seq = [(k, sq) for (k, _), sqs in receiver.sequences.items() for sq in sqs
                           if seq_of_key.get(k) != sq]
            kinds = dict(receiver.entity_kind)
            bad_records = list(receiver.bad_records)
        not_received = stored_pairs - got_pairs
        not_stored = got_pairs - stored_pairs
        if not_received:
            problems.append(f"{len(not_received)} stored records never reached identity, e.g. {sorted(not_received)[:3]}")
        if not_stored:
            problems.append(f"identity got {len(not_stored)} (key, version) pairs that are not stored, "
                            f"e.g. {sorted(not_stored)[:3]}")
        if from_dead:
            problems.append(f"identity got {len(from_dead)} records under the FAILED batch's id, e.g. {from_dead[:3]}")
        if foreign_seq:
            problems.append(f"identity got {len(foreign_seq)} records with a sequence number other than the stored "
                            f"record's (forwarded from a deleted attempt?), e.g. {foreign_seq[:3]}")
        if bad_records:
            problems.append(f"identity got malformed stored records: {bad_records[:5]}")
        kind_wrong = [k for k, kind in kinds.items()
                      if (k in batch_of_key and kind != "person") or (k in event_keys and kind != "event")]
        if kind_wrong:
            problems.append(f"{len(kind_wrong)} forwarded records with the wrong entity, e.g. {kind_wrong[:3]}")
        if forwarded_status < len(stored_pairs):
            problems.append(f"GetOutboxStatus.forwarded_records={forwarded_status} < {len(stored_pairs)} stored records")

        log("summary:")
        log(f"  kills: {sum(p.failed_attempts for p in plans)} during uploads (batches {kill_batches}, at "
            f"{[f'{f:.0%}' for p in plans for f in p.kill_fractions]} of the records committed); service generations: {service.generation}")
        log(f"  stored records: {len(rows)} ({len(batch_of_key)} persons in {len(plans)} batches, "
            f"{len(event_keys)} streamed events); killed attempts after restart: "
            f"{[st for p in plans for st in p.states_after_restart]}")
        log(f"  receiver: {receiver.records_received} records in {receiver.calls_ok} calls "
            f"({receiver.calls_failed} failed on purpose), {len(got_pairs)} distinct, "
            f"{receiver.duplicates} duplicates (at-least-once)")
        log(f"  total {total_time:.1f}s")
        for n_ in notes:
            log(f"  note: {n_}")
        if problems:
            pytest.fail(f"{len(problems)} problem(s):\n- " + "\n- ".join(problems) +
                        f"\n(data and logs in {tmp_path})", pytrace=False)
    except BaseException:
        log(f"service: {service.exit_description() if service.proc else 'not started'}\n{service.stderr_tail()}")
        raise
    finally:
        streamer.abort.set()
        if ch is not None:
            ch.close()
        if service.alive():
            service.kill()
        receiver.stop()


def test_abandoned_upload_is_interrupted_and_can_be_resent(tmp_path):
    """The client side of the same contract: an upload the client cancels half way (or whose connection
    drops) must end INTERRUPTED with nothing of it kept, and re-sending it with the same idempotency
    key must then run it again (not be refused as "being received right now")."""
    binary = ingestion_binary()
    if not binary.exists():
        pytest.fail(f"cdp-ingestion not found at {binary} (build it, or set CDP_INGESTION_BIN)", pytrace=False)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    receiver = FakeIdentity().start()
    service = Service(binary, data_dir, receiver.address, tmp_path, ["--chunk-records", "1000"])
    n = 6000
    data, _ = person_csv("C-", n, random.Random(3))
    hdr = ingestion_pb2.BatchHeader(source=MKTO, entity="person", format=S.FORMAT_CANONICAL_CSV,
                                    idempotency_key="abandoned", file_name="abandoned.csv")
    try:
        service.start(0)
        ch = channel(service.address)
        stub = ingestion_pb2_grpc.IngestionStub(ch)
        stub.CreateSource(ingestion_pb2.CreateSourceRequest(source=MKTO), timeout=10)
        gate = threading.Event()

        def first_half():
            yield ingestion_pb2.IngestBatchRequest(header=hdr)
            yield ingestion_pb2.IngestBatchRequest(data=data[:len(data) * 2 // 3])
            gate.wait(30)

        upload_ch = channel(service.address)
        call = ingestion_pb2_grpc.IngestionStub(upload_ch).IngestBatch.future(first_half(), timeout=60)
        deadline = time.monotonic() + 20
        batch = None
        committed = 0
        while time.monotonic() < deadline:  # until some chunks of the attempt are committed
            batch = next((bt for bt in list_all_batches(stub) if bt.idempotency_key == hdr.idempotency_key), None)
            if batch is not None:
                db = sqlite3.connect(f"file:{data_dir / 'ingestion.sqlite'}?mode=ro", uri=True, timeout=10)
                committed = db.execute("SELECT COUNT(*) FROM records WHERE batch_id = ?", (batch.batch_id,)).fetchone()[0]
                db.close()
                if committed >= 1000:
                    break
            time.sleep(0.05)
        assert batch is not None and batch.state == S.BATCH_STATE_RECEIVING, f"the upload is not RECEIVING: {batch}"
        call.cancel()
        gate.set()
        upload_ch.close()
        log(f"cancelled the upload of {batch.batch_id} with {committed} of its records committed")

        deadline = time.monotonic() + 10
        state = None
        while time.monotonic() < deadline:
            state = stub.GetBatch(ingestion_pb2.GetBatchRequest(batch_id=batch.batch_id), timeout=10).state
            if state != S.BATCH_STATE_RECEIVING:
                break
            time.sleep(0.1)
        db = sqlite3.connect(f"file:{data_dir / 'ingestion.sqlite'}?mode=ro", uri=True, timeout=10)
        kept = db.execute("SELECT COUNT(*) FROM records WHERE batch_id = ?", (batch.batch_id,)).fetchone()[0]
        db.close()
        problems = []
        if state != S.BATCH_STATE_INTERRUPTED:
            problems.append(f"10 s after the client cancelled the upload, batch {batch.batch_id} is {STATE[state]}, "
                            f"expected INTERRUPTED")
        if kept:
            problems.append(f"{kept} records of the cancelled upload are still stored")
        try:
            got = stub.IngestBatch(upload_requests(hdr, data), timeout=60)
            if (got.state, got.batch_id, got.replayed, got.counts.accepted) != \
                    (S.BATCH_STATE_COMPLETED, batch.batch_id, False, n):
                problems.append(f"the re-send answered {STATE[got.state]} id={got.batch_id} replayed={got.replayed} "
                                f"accepted={got.counts.accepted}; expected COMPLETED, id {batch.batch_id}, "
                                f"replayed=False, accepted={n}")
        except grpc.RpcError as e:
            problems.append(f"the re-send with the same idempotency key failed: {e.code().name} {e.details()}")
        ch.close()
        if problems:
            pytest.fail("\n- ".join(["problems:", *problems]) + f"\n{service.stderr_tail(10)}", pytrace=False)
    finally:
        if service.alive():
            service.kill()
        receiver.stop()

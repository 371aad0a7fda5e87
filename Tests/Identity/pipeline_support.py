"""Helpers for the identity pipeline tests (Tests/Identity/test_pipeline.py).

* the generated proto modules (through Tests/Ingestion/protos.py, which compiles every
  ``proto/cdp/**/*.proto`` into ``.build/python-proto`` on import), plus ``profile_pb2``;
* ``FakeProfile``: a grpcio server for ``/cdp.profile.v1.Profile/AcceptIdentityUpdates`` (a generic
  handler that parses ``AcceptIdentityUpdatesRequest``) which applies updates in sequence order, skips
  (and counts) any update whose sequence is <= the highest applied, records what it applied, and fails
  a chosen fraction of calls with UNAVAILABLE - before applying (nothing taken) or after applying (the
  answer is lost, so identity re-sends and the fake must skip);
* ``Service``: one cdp-identity or cdp-ingestion process at a time on a fixed data directory; every
  start is a new generation with its own stdout/stderr files, for stderr tails in failure messages;
* CSV builders, upload and polling helpers.
"""

from __future__ import annotations

import collections
import importlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "Tests" / "Ingestion"))
from protos import identity_pb2, identity_pb2_grpc, ingestion_pb2, ingestion_pb2_grpc, model_pb2  # noqa: E402

profile_pb2 = importlib.import_module("cdp.profile.v1.profile_pb2")

U64 = (1 << 64) - 1
CHUNK = 1 << 20
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0), ("grpc.max_receive_message_length", 64 << 20),
                   ("grpc.max_send_message_length", 64 << 20)]

E = model_pb2  # EntityType values: E.ENTITY_TYPE_PERSON, ...
ENTITY_NAME = {v: k.removeprefix("ENTITY_TYPE_") for k, v in model_pb2.EntityType.items()}
MERGED = identity_pb2.ClusterChange.KIND_MERGED
SPLIT = identity_pb2.ClusterChange.KIND_SPLIT
BATCH_STATE = {v: k for k, v in ingestion_pb2.BatchState.items()}

_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[identity-pipeline {time.monotonic() - _T0:6.2f}s] {msg}", flush=True)


def source(spec: str):
    """`Type:instance` -> model_pb2.Source."""
    type_, _, instance = spec.partition(":")
    return model_pb2.Source(type=type_, instance=instance)


def source_key(id_: str, src) -> str:
    return f"{id_}@{src.instance}.{src.type}"


def free_port() -> int:
    """A port free on 127.0.0.1 now, for a service started later on it: below Linux's ephemeral range
    (32768-60999), so that no outgoing connection of the services (whose local ports come from that
    range) takes it meanwhile, which made a start fail with "Address already in use"."""
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found between 20000 and 32000")


# ---------------------------------------------------------------------------------------------------
# The fake profile service
# ---------------------------------------------------------------------------------------------------

class FakeProfile:
    """`cdp.profile.v1.Profile/AcceptIdentityUpdates` on 127.0.0.1:<ephemeral>.

    Applies each update whose sequence is above the highest applied one (and notes a problem when it is
    not exactly the next one, or when a request is not in sequence order); skips and counts the others.

    Failures (seeded): the first ``forced_failures`` calls fail in turn before and after applying (so
    that both retry paths run at least once when failing is asked for at all), then each call fails with
    probability ``fail_rate``; a failing call fails after applying with probability
    ``after_apply_share``. ``set_fail_rate`` changes the rate while running."""

    def __init__(self, fail_rate: float = 0.0, seed: int = 0, after_apply_share: float = 0.5,
                 forced_failures: int = 0, workers: int = 4):
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.fail_rate = fail_rate
        self.after_apply_share = after_apply_share
        self.forced = forced_failures if fail_rate > 0 else 0
        self.highest = 0
        self.applied: list = []               # IdentityUpdate, in the order applied
        self.record_counts: collections.Counter = collections.Counter()  # (key, version) -> times applied
        self.records_applied = 0
        self.skipped = 0                      # updates received again (sequence <= highest)
        self.calls = 0
        self.calls_ok = 0
        self.failed_before = 0
        self.failed_after = 0
        self.problems: list[str] = []
        self.senders: set[str] = set()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                                  options=[("grpc.max_receive_message_length", 256 << 20)])
        handler = grpc.method_handlers_generic_handler("cdp.profile.v1.Profile", {
            "AcceptIdentityUpdates": grpc.unary_unary_rpc_method_handler(
                self._accept,
                request_deserializer=profile_pb2.AcceptIdentityUpdatesRequest.FromString,
                response_serializer=profile_pb2.AcceptIdentityUpdatesResponse.SerializeToString),
        })
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"

    def start(self) -> "FakeProfile":
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(grace=None)

    def set_fail_rate(self, rate: float) -> None:
        with self.lock:
            self.fail_rate = rate

    def _problem(self, text: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(text)

    def _decide(self) -> str | None:
        """None, "before" or "after"."""
        if self.forced > 0:
            self.forced -= 1
            return "before" if self.forced % 2 else "after"
        if self.fail_rate > 0 and self.rng.random() < self.fail_rate:
            return "after" if self.rng.random() < self.after_apply_share else "before"
        return None

    def _accept(self, request, context):
        with self.lock:
            self.calls += 1
            self.senders.add(request.sender)
            fail = self._decide()
            if fail == "before":
                self.failed_before += 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "fake profile: failing on purpose (nothing applied)")
            applied = duplicates = 0
            previous = None
            for update in request.updates:
                seq = update.sequence
                if previous is not None and seq <= previous:
                    self._problem(f"call {self.calls}: sequence {seq} after {previous} in one request")
                previous = seq
                if seq <= self.highest:
                    duplicates += 1
                    continue
                if seq != self.highest + 1:
                    self._problem(f"call {self.calls}: sequence {seq} follows {self.highest} (gap)")
                kind = update.WhichOneof("update")
                if kind is None:
                    self._problem(f"sequence {seq}: neither record nor cluster_change")
                elif kind == "record":
                    st = update.record.stored
                    if not st.record.key:
                        self._problem(f"sequence {seq}: annotated record without a key")
                    self.record_counts[(st.record.key, st.version & U64)] += 1
                    self.records_applied += 1
                self.highest = seq
                self.applied.append(update)
                applied += 1
            self.skipped += duplicates
            if fail == "after":
                self.failed_after += 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "fake profile: failing on purpose (after applying)")
            self.calls_ok += 1
            return profile_pb2.AcceptIdentityUpdatesResponse(applied=applied, duplicates=duplicates)

    def summary(self) -> str:
        with self.lock:
            return (f"fake profile: {len(self.applied)} updates applied (highest {self.highest}), "
                    f"{self.records_applied} records, {self.skipped} re-sent updates skipped; "
                    f"{self.calls} calls: {self.calls_ok} ok, {self.failed_before} failed before applying, "
                    f"{self.failed_after} failed after applying; senders {sorted(self.senders)}")

    def snapshot(self) -> list:
        with self.lock:
            return list(self.applied)


# ---------------------------------------------------------------------------------------------------
# The service processes
# ---------------------------------------------------------------------------------------------------

def service_binary(name: str, env: str) -> Path:
    path = os.environ.get(env) or str(REPO_ROOT / ".build" / "debug" / name)
    p = Path(path)
    if not p.is_absolute():
        p = (REPO_ROOT / p) if (REPO_ROOT / p).exists() else p.resolve()
    return p


class ServiceError(Exception):
    pass


class Service:
    """One cdp-identity / cdp-ingestion process at a time on a fixed data directory."""

    STARTUP_TIMEOUT = 30.0

    def __init__(self, name: str, binary: Path, env_var: str, data_dir: Path, log_dir: Path, args: list[str]):
        self.name = name
        self.binary = binary
        self.env_var = env_var
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.args = list(args)
        self.proc: subprocess.Popen | None = None
        self.generation = 0
        self.host = "127.0.0.1"
        self.port = 0
        self.stderr_path: Path | None = None
        self.history: list[str] = []  # how each generation ended

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, port: int = 0) -> str:
        if not self.binary.exists():
            raise ServiceError(f"{self.binary.name} not found at {self.binary} (build it, or set {self.env_var})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.generation += 1
        out_path = self.log_dir / f"{self.name}-{self.generation}.out"
        self.stderr_path = self.log_dir / f"{self.name}-{self.generation}.err"
        cmd = [str(self.binary), "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(self.data_dir),
               *self.args]
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
                    raise ServiceError(f"{self.name}: asked for port {port}, got {line!r}")
                return self.address
            if self.proc.poll() is not None:
                raise ServiceError(f"{self.name} exited during startup ({self.exit_description()}): "
                                   f"{' '.join(cmd)}\n{self.stderr_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise ServiceError(f"{self.name}: no 'listening on' line within {self.STARTUP_TIMEOUT}s: "
                                   f"{' '.join(cmd)}\n{self.stderr_tail()}")
            time.sleep(0.02)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL (this process only, by pid), and wait until it is gone."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)
            self.history.append(f"generation {self.generation}: {self.exit_description()}")

    def stop(self, timeout: float = 15.0) -> bool:
        """SIGTERM; True when it exited with status 0 within `timeout` (else it is SIGKILLed)."""
        if self.proc is None or self.proc.returncode is not None:
            return True
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return False
        self.history.append(f"generation {self.generation}: {self.exit_description()}")
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

    def stderr_tail(self, lines: int = 30, generation: int | None = None) -> str:
        gen = generation or self.generation
        path = self.log_dir / f"{self.name}-{gen}.err"
        try:
            text = path.read_bytes()[-32768:].decode("utf-8", "replace")
        except OSError:
            return f"--- {self.name}: no stderr (generation {gen}) ---"
        state = self.exit_description() if gen == self.generation else "ended"
        return (f"--- stderr of {self.name} generation {gen} ({state}), last {lines} lines ---\n" +
                "\n".join(text.splitlines()[-lines:]))


def diagnostics(services: list[Service], fake: FakeProfile | None = None, lines: int = 25) -> str:
    parts = []
    if fake is not None:
        parts.append(fake.summary())
        if fake.problems:
            parts.append("fake profile problems: " + "; ".join(fake.problems[:10]))
    for s in services:
        if s.history:
            parts.append(f"{s.name} history: " + "; ".join(s.history))
        for gen in range(1, s.generation):  # earlier generations (killed or stopped): a short tail each
            parts.append(s.stderr_tail(8, generation=gen))
        if s.generation:
            parts.append(s.stderr_tail(lines))
    return "\n".join(parts)


def channel(address: str) -> grpc.Channel:
    ch = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    grpc.channel_ready_future(ch).result(timeout=10)
    return ch


# ---------------------------------------------------------------------------------------------------
# Ingestion helpers
# ---------------------------------------------------------------------------------------------------

def upload_requests(header, data: bytes, chunk: int = CHUNK):
    yield ingestion_pb2.IngestBatchRequest(header=header)
    for off in range(0, len(data), chunk):
        yield ingestion_pb2.IngestBatchRequest(data=data[off:off + chunk])


def ingest(stub, src, entity: str, text: str, fmt=ingestion_pb2.FORMAT_CANONICAL_CSV, key: str = "",
           expect_records: int | None = None):
    """Uploads one batch and checks it COMPLETED with every record accepted; returns the Batch."""
    data = text.encode()
    header = ingestion_pb2.BatchHeader(source=src, entity=entity, format=fmt, idempotency_key=key,
                                       file_name=f"{entity}-{src.instance}.csv")
    batch = stub.IngestBatch(upload_requests(header, data), timeout=120)
    errors = [f"line {e.line} {e.field}: {e.reason}" for e in batch.errors[:5]]
    assert batch.state == ingestion_pb2.BATCH_STATE_COMPLETED and batch.counts.rejected == 0, (
        f"batch {entity} of {src.type}:{src.instance} ended {BATCH_STATE[batch.state]} "
        f"(failure {batch.failure!r}, counts {batch.counts}); first errors {errors}")
    if expect_records is not None:
        assert batch.counts.accepted == expect_records, (
            f"batch {entity} of {src.type}:{src.instance}: accepted {batch.counts.accepted}, expected "
            f"{expect_records} (counts {batch.counts})")
    return batch


def csv_line(values) -> str:
    out = []
    for v in values:
        s = "" if v is None else str(v)
        if any(c in s for c in ',"\n\r'):
            s = '"' + s.replace('"', '""') + '"'
        out.append(s)
    return ",".join(out)


def csv_text(header: list[str], rows) -> str:
    return "\n".join([",".join(header), *(csv_line(r) for r in rows)]) + "\n"


PERSON_COLUMNS = ["personId", "email", "firstName", "lastName", "personType", "accountId", "ecid", "lastUpdated"]
ACCOUNT_COLUMNS = ["accountId", "name", "domain", "lastUpdated"]
OPPORTUNITY_COLUMNS = ["opportunityId", "accountId", "name", "stage", "amount", "currency", "isClosed", "isWon",
                       "closeDate", "lastUpdated"]
MDM_COLUMNS = ["masterId", "entity", "source", "id"]


def call_with_retry(fn, timeout: float, what: str):
    """Calls fn() until it does not raise UNAVAILABLE / DEADLINE_EXCEEDED (a service restarting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) \
                    or time.monotonic() > deadline:
                raise AssertionError(f"{what}: {e.code().name} {e.details()}") from None
            time.sleep(0.1)


def wait_drained(ingestion_address_fn, identity_address_fn, timeout: float, fake: FakeProfile | None = None,
                 on_poll=None) -> tuple:
    """Polls until ingestion's outbox and then identity's outbox are empty (ingestion first: identity
    commits its updates before it acknowledges ingestion, so both empty in that order means done).
    The address functions are called on every poll (identity may have moved generations). Returns
    (ingestion OutboxStatus, identity OutboxStatus)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if on_poll is not None:
            on_poll()
        try:
            with grpc.insecure_channel(ingestion_address_fn(), options=CHANNEL_OPTIONS) as ch:
                ing = ingestion_pb2_grpc.IngestionStub(ch).GetOutboxStatus(
                    ingestion_pb2.GetOutboxStatusRequest(), timeout=5)
            if ing.pending_records == 0:
                with grpc.insecure_channel(identity_address_fn(), options=CHANNEL_OPTIONS) as ch:
                    idn = identity_pb2_grpc.IdentityStub(ch).GetOutboxStatus(
                        identity_pb2.GetOutboxStatusRequest(), timeout=5)
                last = (ing, idn)
                if idn.pending_updates == 0:
                    return ing, idn
            else:
                last = (ing, None)
        except grpc.RpcError as e:
            last = f"{e.code().name} {e.details()}"
        time.sleep(0.1)
    raise AssertionError(f"the outboxes did not drain within {timeout:.0f}s; last status {last}"
                         + (f"; {fake.summary()}" if fake else ""))


def ingestion_store_versions(data_dir: Path) -> dict[str, set[int]]:
    """key -> versions stored in ingestion's records table (read-only)."""
    db = sqlite3.connect(f"file:{data_dir / 'ingestion.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        out: dict[str, set[int]] = {}
        for key, version in db.execute("SELECT key, version FROM records"):
            out.setdefault(key, set()).add(version & U64)
        return out
    finally:
        db.close()


# ---------------------------------------------------------------------------------------------------
# Reading the stream the fake received
# ---------------------------------------------------------------------------------------------------

class MergeFollower:
    """Follows the MERGED cluster changes of one entity type through the stream of IdentityUpdates.

    Cluster ids are never reused, so a cluster that was alive at sequence s ends up where the chain of
    MERGED changes naming it as `from` leads (all of them come after s). ``dead_at`` keeps when each id
    was merged away, so that a reference to a cluster that no longer existed is caught."""

    def __init__(self, updates: list, entity_type: int):
        self.merges = []  # (sequence, from ids, into id)
        self.others = []  # non-MERGED changes of this type (splits), as text
        for u in updates:
            if u.WhichOneof("update") != "cluster_change" or u.cluster_change.entity_type != entity_type:
                continue
            c = u.cluster_change
            if c.kind == MERGED and len(c.into) == 1:
                self.merges.append((u.sequence, list(getattr(c, "from")), c.into[0]))
            else:
                self.others.append(f"seq {u.sequence}: kind {c.kind} from {list(getattr(c, 'from'))} "
                                   f"into {list(c.into)}")
        self.next: dict[int, int] = {}
        self.dead_at: dict[int, int] = {}
        for seq, froms, into in self.merges:
            for f in froms:
                self.next[f] = into
                self.dead_at.setdefault(f, seq)

    def alive_at(self, cluster: int, sequence: int) -> bool:
        return self.dead_at.get(cluster, sequence + 1) > sequence

    def final(self, cluster: int) -> int:
        """Where `cluster` ended up after every MERGED change naming it (or its successors)."""
        seen = set()
        while cluster in self.next and cluster not in seen:
            seen.add(cluster)
            cluster = self.next[cluster]
        return cluster

    def after(self, cluster: int, sequence: int) -> int:
        """`cluster` as seen at `sequence`, moved through the MERGED changes after it, applied one by one
        (slow; for small streams)."""
        for seq, froms, into in self.merges:
            if seq > sequence and cluster in froms:
                cluster = into
        return cluster


def check_contiguous(updates: list) -> list[str]:
    problems = []
    seqs = [u.sequence for u in updates]
    if seqs != list(range(1, len(seqs) + 1)):
        bad = next((i for i, s in enumerate(seqs) if s != i + 1), None)
        problems.append(f"applied sequences are not 1..{len(seqs)}: first deviation at position {bad}: "
                        f"{seqs[max(0, (bad or 0) - 3):(bad or 0) + 3]}")
    return problems

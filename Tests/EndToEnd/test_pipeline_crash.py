"""The five services under SIGKILL, end to end, on generated B2B data (Benchmarks/b2b_generator.py).

One dataset is run twice through ingestion -> identity -> profile -> segmentation -> destination, each
service a real process on its own data directory:

* **clean**: every file of the manifest uploaded with ``IngestBatch``, then events streamed with
  ``StreamRecords``; nothing is killed.
* **crash**: the same uploads and stream while a killer SIGKILLs a random service (seeded) several times
  and restarts it on the same port and data directory. The clients behave as a real one must: a batch
  whose answer did not arrive is sent again with the same idempotency key, a stream request that was not
  acknowledged is sent again on a new stream; the first acknowledgement of each counts.

Then, for the crash run:

1. every acknowledged record is in ingestion's store exactly once (one version per source key);
2. the person and account clusters that profile serves equal the generator's ground truth (every
   fragment in exactly one cluster, no true entity split, no two merged);
3. every event (the files' and every acknowledged stream request's) is in exactly one person view, and
   no other event is;
4. every person view (fragments, accounts, opportunities, roles, campaigns, lists, events; clusters named
   by their smallest fragment key, since cluster numbers depend on arrival order) equals the clean run's;
5. the members of the twenty segments of Benchmarks/b2b_segments.py (batch, evaluated as of the
   dataset's end) and of one streaming segment equal the clean run's;
6. the streaming segment's file export, replayed, adds each member once and ends with exactly its members.

Sizes: CDP_CRASH_PERSONS (default 900; accounts, opportunities and events follow), CDP_CRASH_KILLS (default
8: each service at least once), CDP_CRASH_SEED (default 7). Binaries: CDP_<SERVICE>_BIN (default .build/debug).
"""

from __future__ import annotations

import collections
import os
import random
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import grpc
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "Benchmarks"))
sys.path.insert(0, str(REPO_ROOT / "Tests" / "Destination"))
import b2b_generator  # noqa: E402
import b2b_segments  # noqa: E402
import ground_truth  # noqa: E402
from destination_support import (  # noqa: E402
    CHANNEL_OPTIONS, FILE, DestinationPipeline, destination_pb2, ingestion_pb2, members, profile_pb2,
    profile_pb2_grpc, read_exports, replay, segmentation_pb2,
)
from segmentation_support import wait_job  # noqa: E402
from pipeline_support import ingestion_pb2_grpc, ingestion_store_versions, model_pb2, upload_requests  # noqa: E402

PERSONS = int(os.environ.get("CDP_CRASH_PERSONS", "900"))
SIZES = {"persons": PERSONS, "accounts": max(1, PERSONS // 5), "opportunities": max(1, PERSONS // 2),
         "events": PERSONS * 4}
KILLS = int(os.environ.get("CDP_CRASH_KILLS", "8"))
SEED = int(os.environ.get("CDP_CRASH_SEED", "7"))
STREAM_REQUESTS = 120      # of STREAM_PER_REQUEST events each
STREAM_PER_REQUEST = 10
STREAM_INTERVAL = 0.05     # seconds between stream requests: the stream lasts while the killer works
STREAMING_SEGMENT = "engaged-and-reachable"
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
             grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)

_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[end-to-end {time.monotonic() - _T0:6.1f}s] {msg}", flush=True)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("dataset")
    manifest = b2b_generator.generate(out, seed=SEED, **SIZES)
    log(f"dataset {SIZES}: {manifest['records']['total']:,} records, {manifest['truth']['persons']:,} true persons")
    return out, manifest


# ---------------------------------------------------------------------------------------------------
# Clients that retry the way a real client must
# ---------------------------------------------------------------------------------------------------

def upload_until_acknowledged(pipe: DestinationPipeline, dataset: Path, entry: dict, stop: threading.Event) -> int:
    """Uploads one manifest file with an idempotency key until a COMPLETED answer; returns the attempts."""
    header = ingestion_pb2.BatchHeader(
        source=model_pb2.Source(type=entry["source"].split(":")[0], instance=entry["source"].split(":")[1]),
        entity=entry["entity"], idempotency_key=f"crash-test/{entry['path']}", file_name=entry["path"],
        format=(ingestion_pb2.FORMAT_CANONICAL_NDJSON if entry["format"] == "ndjson"
                else ingestion_pb2.FORMAT_CANONICAL_CSV))
    data = (dataset / entry["path"]).read_bytes()
    attempts = 0
    while not stop.is_set():
        attempts += 1
        try:
            with grpc.insecure_channel(pipe.ingestion.address, options=CHANNEL_OPTIONS) as ch:
                batch = ingestion_pb2_grpc.IngestionStub(ch).IngestBatch(upload_requests(header, data), timeout=120)
        except grpc.RpcError as error:
            if error.code() not in RETRYABLE:
                raise AssertionError(f"{entry['path']}: {error.code().name} {error.details()}") from None
            time.sleep(0.2)
            continue
        assert batch.state == ingestion_pb2.BATCH_STATE_COMPLETED and batch.counts.accepted == entry["records"], (
            f"{entry['path']} (attempt {attempts}): state {batch.state}, counts {batch.counts}, "
            f"errors {[e.reason for e in batch.errors[:3]]}")
        return attempts
    raise AssertionError(f"{entry['path']}: stopped before it was acknowledged")


class Streamer:
    """Stream requests of STREAM_PER_REQUEST events, one in flight; an unacknowledged request is sent again
    on a new stream. It sends at least `minimum` requests, and more while `more()` is true (the killer is
    still at work). Event timestamps lie inside the dataset's year, so views as of its end show
    them."""

    def __init__(self, pipe: DestinationPipeline, emails: list[str], end: datetime, minimum: int):
        self.pipe = pipe
        self.minimum = minimum
        self.emails = emails
        self.base = int(end.timestamp()) - 86_400
        self.rng = random.Random(SEED)
        self.requests: list = []
        self.acknowledged: list[str] = []   # event keys of acknowledged requests
        self.resent = 0
        self.streams = 0

    def request(self, r: int):
        """Request number r (0-based), made once and kept: a resend sends the same events."""
        while len(self.requests) <= r:
            n = len(self.requests)
            records = []
            for j in range(STREAM_PER_REQUEST):
                event = model_pb2.ExperienceEvent(
                    event_id=f"stream-{n}-{j}", email=self.rng.choice(self.emails),
                    event_type="web.webpagedetails.pageViews", url="https://bodea.example/pricing", name="Pricing")
                event.timestamp.FromSeconds(self.base + n * STREAM_PER_REQUEST + j)
                records.append(model_pb2.Record(event=event))
            self.requests.append(ingestion_pb2.StreamRecordsRequest(
                source=model_pb2.Source(type="Web", instance="web-stream"), records=records))
        return self.requests[r]

    def run(self, stop: threading.Event, more) -> None:
        next_request = 0

        def wanted(i: int) -> bool:
            # A request sent once is sent until acknowledged: it may have been committed.
            return i < len(self.requests) or i < self.minimum or more()

        while wanted(next_request) and not stop.is_set():
            self.streams += 1
            resending = self.streams > 1 and next_request < len(self.requests)
            go = threading.Event()

            def one_at_a_time(start: int):
                i = start
                while wanted(i) and not stop.is_set():
                    go.clear()
                    yield self.request(i)
                    if not go.wait(30):
                        return
                    time.sleep(STREAM_INTERVAL)
                    i += 1

            try:
                with grpc.insecure_channel(self.pipe.ingestion.address, options=CHANNEL_OPTIONS) as ch:
                    stub = ingestion_pb2_grpc.IngestionStub(ch)
                    for response in stub.StreamRecords(one_at_a_time(next_request), timeout=300):
                        pair = (response.accepted, response.duplicates)
                        assert pair == (STREAM_PER_REQUEST, 0) or (resending and pair == (0, STREAM_PER_REQUEST)), (
                            f"stream request {next_request}: accepted {pair[0]}, duplicates {pair[1]}, errors "
                            f"{[e.reason for e in response.errors[:3]]}")
                        if pair[1]:
                            self.resent += 1
                        resending = False
                        self.acknowledged.extend(f"{r.event.event_id}@web-stream.Web"
                                                 for r in self.requests[next_request].records)
                        next_request += 1
                        go.set()
            except grpc.RpcError as error:
                if error.code() not in RETRYABLE:
                    raise AssertionError(f"StreamRecords: {error.code().name} {error.details()}") from None
                time.sleep(0.2)


class Killer(threading.Thread):
    """SIGKILLs a service every 0.4-1.5 s and restarts it at once on its port and data directory: each of
    the five once, in a random order, then random ones up to `kills`."""

    def __init__(self, pipe: DestinationPipeline, kills: int):
        super().__init__(daemon=True, name="killer")
        self.pipe = pipe
        self.rng = random.Random(SEED)
        victims = list(pipe.services)
        self.rng.shuffle(victims)
        self.schedule = (victims + [self.rng.choice(pipe.services) for _ in range(kills)])[:kills]
        self.done = threading.Event()
        self.history: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for service in self.schedule:
                if self.done.wait(self.rng.uniform(0.4, 1.5)):
                    return
                port = service.port
                service.kill()
                time.sleep(self.rng.uniform(0.05, 0.4))
                service.start(port)
                self.history.append(f"{service.name} (generation {service.generation})")
                log(f"killed and restarted {service.name}")
        except BaseException as error:  # noqa: BLE001 - reported by the test
            self.error = error
        finally:
            self.done.set()


# ---------------------------------------------------------------------------------------------------
# One run of the platform
# ---------------------------------------------------------------------------------------------------

def key_of(record) -> str:
    """A cluster named by its smallest fragment key: the same in every run, unlike cluster numbers."""
    return min(record.fragment_keys) if record.fragment_keys else f"cluster {record.cluster_id}"


def person_digests(profile_address: str, as_of) -> tuple[dict[str, tuple], collections.Counter, list[list[str]]]:
    """Every person view in a comparable form, by person key; how often each event key appears; and each
    cluster's fragment keys, as scanned (a fragment in two clusters shows there, not in the digests)."""
    digests: dict[str, tuple] = {}
    clusters: list[list[str]] = []
    events: collections.Counter = collections.Counter()
    with grpc.insecure_channel(profile_address, options=CHANNEL_OPTIONS) as ch:
        request = profile_pb2.ScanRequest(partition=0, partitions=1)
        request.as_of.CopyFrom(as_of)
        for view in profile_pb2_grpc.ProfileStub(ch).ScanPersonViews(request, timeout=300):
            opportunities = {o.cluster_id: key_of(o) for o in view.opportunities}
            digests[key_of(view.person)] = (
                tuple(sorted(view.person.fragment_keys)),
                tuple(sorted(key_of(a) for a in view.accounts)),
                tuple(sorted(opportunities.values())),
                tuple(sorted((opportunities.get(r.opportunity_cluster_id, "?"), r.role, r.is_primary)
                             for r in view.opportunity_roles)),
                tuple(sorted((key_of(c.campaign), c.status, c.has_responded) for c in view.campaigns)),
                tuple(sorted(key_of(m.list) for m in view.lists)),
                tuple(sorted(e.key for e in view.events)),
            )
            events.update(e.key for e in view.events)
            clusters.append(list(view.person.fragment_keys))
    return digests, events, clusters


class Run:
    """The outcome of one run: what the checks compare."""

    def __init__(self):
        self.digests: dict[str, tuple] = {}
        self.events: collections.Counter = collections.Counter()
        self.memberships: dict[str, frozenset[str]] = {}
        self.kills = 0
        self.person_clusters: list[list[str]] = []
        self.account_clusters: list[list[str]] = []
        self.ingestion_versions: dict[str, set[int]] = {}
        self.export_members: set[str] = set()
        self.export_problems: list[str] = []
        self.streaming_emails: set[str] = set()
        self.acknowledged_stream_events: list[str] = []
        self.stream_requests = 0
        self.notes: list[str] = []


def run_platform(tmp: Path, dataset: Path, manifest: dict, kills: int, stream_requests: int) -> Run:
    """One run; it streams at least `stream_requests` requests, more while the killer works."""
    pipe = DestinationPipeline(tmp).start()
    outcome = Run()
    try:
        for src in manifest["sources"] + [{"type": "Web", "instance": "web-stream"}]:
            pipe.ingestion_stub().CreateSource(ingestion_pb2.CreateSourceRequest(
                source=model_pb2.Source(type=src["type"], instance=src["instance"])), timeout=10)
        seg = pipe.segmentation_stub()
        ids: dict[str, str] = {}
        for name, entity, definition in b2b_segments.segments(manifest):
            ids[name] = seg.CreateSegment(segmentation_pb2.CreateSegmentRequest(
                name=name, pql=b2b_segments.resolve(definition, ids),
                entity_type=model_pb2.ENTITY_TYPE_ACCOUNT if entity == "account" else model_pb2.ENTITY_TYPE_PERSON,
                mode=segmentation_pb2.EVALUATION_MODE_BATCH), timeout=10).id
        definition = dict((n, d) for n, _, d in b2b_segments.segments(manifest))[STREAMING_SEGMENT]
        streaming = seg.CreateSegment(segmentation_pb2.CreateSegmentRequest(
            name="streaming", pql=definition, mode=segmentation_pb2.EVALUATION_MODE_STREAMING), timeout=10).id
        exports = tmp / "exports"
        dst = pipe.destination_stub()
        destination = dst.CreateDestination(destination_pb2.CreateDestinationRequest(
            type=FILE, name="export", settings={"directory": str(exports), "format": "csv"}), timeout=10)
        dst.Activate(destination_pb2.ActivateRequest(segment_id=streaming, destination_id=destination.id),
                     timeout=10)

        emails = sorted({email for email in ground_truth.load_truth(dataset, events=False).person_emails.values()
                         if email})
        end = datetime.fromisoformat(manifest["end"].replace("Z", "+00:00"))
        streamer = Streamer(pipe, emails, end, stream_requests)
        stop = threading.Event()
        errors: list[BaseException] = []

        def guarded(fn):
            def body():
                try:
                    fn()
                except BaseException as error:  # noqa: BLE001 - re-raised below
                    errors.append(error)
                    stop.set()
            return threading.Thread(target=body, daemon=True)

        def upload_all():
            attempts = [upload_until_acknowledged(pipe, dataset, entry, stop) for entry in manifest["files"]]
            outcome.notes.append(f"uploads: {sum(attempts)} attempts for {len(attempts)} files")

        killer = Killer(pipe, kills)
        if not kills:
            killer.done.set()
        threads = [guarded(upload_all), guarded(lambda: streamer.run(stop, more=lambda: not killer.done.is_set()))]
        if kills:
            threads.append(killer)
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=900)
        if errors:
            raise errors[0]
        assert killer.error is None, f"the killer failed: {killer.error}"
        outcome.kills = len(killer.history)
        outcome.notes.append(f"kills: {', '.join(killer.history) or 'none'}; stream: {streamer.streams} streams, "
                             f"{streamer.resent} requests answered as duplicates after a resend")
        outcome.acknowledged_stream_events = streamer.acknowledged
        outcome.stream_requests = len(streamer.acknowledged) // STREAM_PER_REQUEST
        log(f"uploads and stream acknowledged; {outcome.notes}")

        pipe.settle(timeout=600)
        as_of = profile_pb2.ScanRequest().as_of
        as_of.FromDatetime(end.replace(tzinfo=None))
        evaluate = segmentation_pb2.EvaluateRequest(segment_ids=list(ids.values()))
        evaluate.as_of.CopyFrom(as_of)
        job = wait_job(seg, seg.Evaluate(evaluate, timeout=30).id, timeout=300)
        assert job.state == segmentation_pb2.JOB_STATE_SUCCEEDED, f"the evaluation ended {job}"
        for name, segment_id in [*ids.items(), ("streaming", streaming)]:
            outcome.memberships[name] = frozenset(
                key_of(m.record) for m in members(seg, segment_id, segmentation_pb2.MEMBERSHIP_STATUS_REALIZED))
        outcome.streaming_emails = {m.record.record.person.email for m in members(
            seg, streaming, segmentation_pb2.MEMBERSHIP_STATUS_REALIZED) if m.record.record.person.email}

        profile_address = f"127.0.0.1:{pipe.profile_port}"
        outcome.digests, outcome.events, outcome.person_clusters = person_digests(profile_address, as_of)
        outcome.account_clusters = ground_truth.scan_account_views(profile_address)
        outcome.export_members, outcome.export_problems = replay(read_exports(exports))
        for service in pipe.services:
            assert service.stop(), f"{service.name} did not stop cleanly: {service.exit_description()}"
        outcome.ingestion_versions = ingestion_store_versions(pipe.ingestion.data_dir)
        return outcome
    except BaseException:
        print(pipe.diagnostics(), file=sys.stderr)
        raise
    finally:
        pipe.close()


# ---------------------------------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------------------------------

def test_sigkill_loses_and_duplicates_nothing(tmp_path, dataset):
    directory, manifest = dataset
    truth = ground_truth.load_truth(directory)
    # The crash run first: it streams for as long as the killer works, and the clean run then streams
    # exactly as many requests (the same events: they are made from the request number and the seed).
    crash = run_platform(tmp_path / "crash", directory, manifest, kills=KILLS, stream_requests=STREAM_REQUESTS)
    log(f"crash run: {len(crash.digests):,} persons; {crash.notes}")
    clean = run_platform(tmp_path / "clean", directory, manifest, kills=0, stream_requests=crash.stream_requests)
    log(f"clean run: {len(clean.digests):,} persons; {clean.notes}")

    for run, name in ((clean, "clean"), (crash, "crash")):
        # 1. Ingestion holds every record once.
        twice = {k: v for k, v in run.ingestion_versions.items() if len(v) != 1}
        assert not twice, f"{name}: ingestion holds {len(twice)} keys in several versions, e.g. {list(twice.items())[:3]}"
        assert len(run.ingestion_versions) == manifest["records"]["total"] + len(run.acknowledged_stream_events), (
            f"{name}: ingestion holds {len(run.ingestion_versions):,} records, expected "
            f"{manifest['records']['total']:,} from the files + {len(run.acknowledged_stream_events):,} streamed")
        # 2. Clusters equal the ground truth.
        problems = ground_truth.compare_clusters(run.person_clusters, truth.persons)
        assert not problems, f"{name}: person clusters differ from the ground truth:\n" + "\n".join(problems)
        problems = ground_truth.compare_clusters(run.account_clusters, truth.accounts)
        assert not problems, f"{name}: account clusters differ from the ground truth:\n" + "\n".join(problems)
        # 3. Every event once.
        expected = set(truth.events) | set(run.acknowledged_stream_events)
        duplicated = [k for k, n in run.events.items() if n > 1]
        missing = expected - set(run.events)
        unexpected = set(run.events) - expected
        assert not duplicated and not missing and not unexpected, (
            f"{name}: events in views: {len(duplicated)} duplicated (e.g. {duplicated[:3]}), {len(missing)} "
            f"missing (e.g. {sorted(missing)[:3]}), {len(unexpected)} unexpected (e.g. {sorted(unexpected)[:3]})")
        # 6. The export adds each member once and ends with the streaming segment's members.
        assert not run.export_problems, f"{name}: export problems: {run.export_problems[:5]}"
        assert run.export_members == run.streaming_emails, (
            f"{name}: the export holds {len(run.export_members)} members, the streaming segment "
            f"{len(run.streaming_emails)}; only exported: {sorted(run.export_members - run.streaming_emails)[:3]}, "
            f"only members: {sorted(run.streaming_emails - run.export_members)[:3]}")

    assert crash.acknowledged_stream_events == clean.acknowledged_stream_events, (
        f"the runs streamed different events: {len(crash.acknowledged_stream_events)} and "
        f"{len(clean.acknowledged_stream_events)}")
    assert crash.kills == KILLS, f"{crash.kills} kills of the {KILLS} asked: {crash.notes}"
    # 4. Views equal the clean run's.
    differing = [k for k in clean.digests.keys() | crash.digests.keys() if clean.digests.get(k) != crash.digests.get(k)]
    assert not differing, (f"{len(differing)} person views differ between the clean and the crash run, e.g. "
                           f"{differing[0]}:\nclean {clean.digests.get(differing[0])}\ncrash {crash.digests.get(differing[0])}")
    # 5. Memberships equal the clean run's, and the segments are not trivially empty.
    for name in clean.memberships:
        assert clean.memberships[name] == crash.memberships[name], (
            f"segment {name}: {len(clean.memberships[name])} members in the clean run, "
            f"{len(crash.memberships[name])} after the crashes; only clean: "
            f"{sorted(clean.memberships[name] - crash.memberships[name])[:3]}, only crash: "
            f"{sorted(crash.memberships[name] - clean.memberships[name])[:3]}")
    non_empty = sum(1 for m in clean.memberships.values() if m)
    assert non_empty >= 15, f"only {non_empty} of {len(clean.memberships)} segments have members: {clean.memberships}"
    log("memberships: " + ", ".join(f"{n} {len(m)}" for n, m in clean.memberships.items()))

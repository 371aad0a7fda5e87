"""Helpers for the destination pipeline tests (Tests/Destination/test_destination.py).

Builds on Tests/Segmentation/segmentation_support.py and through it the profile and identity helpers
(imported, not copied: ``SegmentationPipeline``, ``Service``, CSV builders, ``ingest``, ``members``,
``expect_error``, the generated proto modules) and adds:

* the generated modules of ``cdp.destination.v1`` with its stub, and ``DESTINATION_BIN``;
* ``DestinationPipeline``: cdp-ingestion -> cdp-identity -> cdp-profile -> cdp-segmentation ->
  cdp-destination as real processes (the ``SegmentationPipeline`` with the real destination in place of the
  fake one; destination's port is picked up front so that it comes back there after a SIGKILL),
  ``settle`` (all four outboxes drained, then destination's delivery queue empty), stubs;
* ``EmailDataset``: synthetic persons whose email domain and last name decide the segment, in three rounds
  (ingest; deletions, moves to the segment's domain and renames: persons enter and leave; renames back:
  they enter again after leaving, or leave after entering);
* the export files: ``read_exports`` (CSV and JSON Lines, in name order), ``replay`` (adds then removes,
  file by file, noting every add of a member already added), ``hashed`` (SHA-256 of the trimmed,
  lower-cased email), ``deliveries`` (every page of ListDeliveries).
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import io
import json
import random
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "Tests" / "Segmentation"))
from segmentation_support import (  # noqa: E402,F401  (re-exported for the tests)
    ALL_BINARIES, CHANNEL_OPTIONS, E, PERSON_COLUMNS, REALIZED, SegmentationPipeline, Service, call_with_retry,
    channel, csv_text, diagnostics, entity_request, expect_error, free_port, ingest, ingestion_pb2, member_emails,
    members, profile_pb2, profile_pb2_grpc, segmentation_pb2, segmentation_pb2_grpc, service_binary, source,
)

destination_pb2 = importlib.import_module("cdp.destination.v1.destination_pb2")
destination_pb2_grpc = importlib.import_module("cdp.destination.v1.destination_pb2_grpc")

DESTINATION_BIN = service_binary("cdp-destination", "CDP_DESTINATION_BIN")
PIPELINE_BINARIES = (*ALL_BINARIES, (DESTINATION_BIN, "CDP_DESTINATION_BIN"))

FILE = destination_pb2.DESTINATION_TYPE_FILE
EMAIL_ID = destination_pb2.IDENTITY_MAPPING_EMAIL
HASHED_ID = destination_pb2.IDENTITY_MAPPING_HASHED_EMAIL

_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[destination-pipeline {time.monotonic() - _T0:6.2f}s] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------
# The pipeline with a real destination
# ---------------------------------------------------------------------------------------------------

class DestinationPipeline(SegmentationPipeline):
    """The five services, each on its own data directory under tmp_path; destination starts first (on a
    port picked up front, kept across restarts), segmentation sends to it with ``--destination``."""

    def __init__(self, tmp_path: Path, destination_args=(), segmentation_args=(), profile_args=()):
        self.destination_port = free_port()
        super().__init__(tmp_path, None, segmentation_args=["--destination", f"127.0.0.1:{self.destination_port}",
                                                            *segmentation_args], profile_args=profile_args)
        self.dest = Service("destination", DESTINATION_BIN, "CDP_DESTINATION_BIN", tmp_path / "destination-data",
                            tmp_path, list(destination_args))

    @property
    def services(self) -> list[Service]:
        return [self.ingestion, self.identity, self.profile, self.segmentation, self.dest]

    def start(self) -> "DestinationPipeline":
        self.dest.start(self.destination_port)
        super().start()
        return self

    def restart_destination(self) -> None:
        self.dest.start(self.destination_port)

    def destination_stub(self):
        """A stub on a channel to destination's fixed address (it reconnects after a restart)."""
        return destination_pb2_grpc.DestinationStub(self._channel(f"127.0.0.1:{self.destination_port}"))

    def destinations(self) -> list:
        with grpc.insecure_channel(f"127.0.0.1:{self.destination_port}", options=CHANNEL_OPTIONS) as ch:
            return list(destination_pb2_grpc.DestinationStub(ch).ListDestinations(
                destination_pb2.ListDestinationsRequest(), timeout=5).destinations)

    def settle(self, timeout: float, on_poll=None) -> list:
        """The four outboxes drained (segmentation's last: destination committed every change), then every
        destination's queue empty (a batch leaves the queue only with its recorded run). Returns the
        destinations as ListDestinations shows them."""
        deadline = time.monotonic() + timeout
        self.drain(timeout=timeout, on_poll=on_poll)
        last = None
        while time.monotonic() < deadline:
            if on_poll is not None:
                on_poll()
            if self.dest.generation and not self.dest.alive():
                raise AssertionError(f"destination died while its queue drained: {self.dest.exit_description()}")
            try:
                ds = self.destinations()
                last = "; ".join(f"{d.id} pending {d.pending} (error {d.last_error!r})" for d in ds)
                if all(d.pending == 0 for d in ds):
                    return ds
            except grpc.RpcError as e:
                last = f"{e.code().name} {e.details()}"
            time.sleep(0.1)
        raise AssertionError(f"destination's queues did not empty within {timeout:.0f}s; last: {last}")


# ---------------------------------------------------------------------------------------------------
# The data
# ---------------------------------------------------------------------------------------------------

MKTO, SF = source("Marketo:mkto-1"), source("Salesforce:sf-1")
STAMPS = ("2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z", "2026-03-03T00:00:00Z")
MATCH, OTHER, GONE = "match.example", "other.example", "Gone"
SEGMENT_PQL = f'person.email.endsWith("@{MATCH}") and person.lastName != "{GONE}"'


class EmailDataset:
    """Person i is Marketo record m-{i} with the email ``Person{i}.S{seed}@<domain>`` (ingestion lower-cases
    it), @match.example when i % 3 == 0, and the last name ``Last{i}``. Persons with i % 5 == 0 are also
    Salesforce record s-{i} with the same email and name (identity merges the two; never changed again).
    The segment: the email ends with @match.example and the last name is not "Gone".

    Round 1 ingests everyone. Round 2 deletes (profile's DeletePerson) the persons with i % 7 == 0 (of the
    others: i % 5 != 0, i % 4 in (0, 3)), moves the Marketo records with i % 4 == 1 and an @other.example
    email to @match.example (they enter under a new email) and renames those with i % 4 == 2 "Gone" (they
    leave). Round 3 gives those with i % 8 == 2 their name back (they enter again after leaving) and renames
    those with i % 8 == 1 that moved in round 2 "Gone" (they leave after entering).

    The identity of a member never changes while it is in the segment: see test_destination.py
    (test_a_member_whose_email_changed_is_removed_under_the_email_it_was_added_with) for why."""

    def __init__(self, persons: int, seed: int):
        rng = random.Random(seed)
        self.persons = persons
        self.seed = seed
        changeable = [i % 5 != 0 for i in range(persons)]
        self.deleted = {i for i in range(persons) if i % 7 == 0 and changeable[i] and i % 4 in (0, 3)}
        domain = [[MATCH if i % 3 == 0 else OTHER for i in range(persons)]]
        last = [[f"Last{i}" for i in range(persons)]]
        moved = [i for i in range(persons) if changeable[i] and i % 4 == 1 and domain[0][i] == OTHER]
        gone = [i for i in range(persons) if changeable[i] and i % 4 == 2]
        back = [i for i in gone if i % 8 == 2]
        moved_gone = [i for i in moved if i % 8 == 1]
        domain.append([MATCH if i in set(moved) else domain[0][i] for i in range(persons)])
        last.append([GONE if i in set(gone) else last[0][i] for i in range(persons)])
        domain.append(list(domain[1]))
        last.append([last[0][i] if i in set(back) else GONE if i in set(moved_gone) else last[1][i]
                     for i in range(persons)])
        self.first_email = [self.email(i, domain[0][i]) for i in range(persons)]

        def row(prefix, i, r):
            return [f"{prefix}-{i}", self.email(i, domain[r][i]), "First", last[r][i], "Contact", None, None,
                    STAMPS[r]]

        mkto = [row("m", i, 0) for i in range(persons)]
        sf = [row("s", i, 0) for i in range(0, persons, 5)]
        round2 = [row("m", i, 1) for i in sorted(set(moved) | set(gone))]
        round3 = [row("m", i, 2) for i in sorted(set(back) | set(moved_gone))]
        for rows in (mkto, sf, round2, round3):
            rng.shuffle(rows)
        half = len(mkto) // 2
        self.rounds = [
            [(MKTO, mkto[:half], "persons-1"), (SF, sf, "sf-persons"), (MKTO, mkto[half:], "persons-2")],
            [(MKTO, round2, "moves-and-renames")],
            [(MKTO, round3, "renames")],
        ]
        # The segment's members (lower-cased emails) after each round, and the membership changes each round
        # makes segmentation send.
        self.expected_rounds = []
        for r in range(3):
            self.expected_rounds.append({
                self.email(i, domain[r][i]).lower() for i in range(persons)
                if domain[r][i] == MATCH and last[r][i] != GONE and (r == 0 or i not in self.deleted)})
        self.round_changes = [len(self.expected_rounds[0])] + [
            len(self._ids(r) ^ self._ids(r - 1)) for r in (1, 2)]
        self._domain, self._last = domain, last
        self.moved, self.gone, self.back, self.moved_gone = moved, gone, back, moved_gone

    def _ids(self, r: int) -> set[int]:
        return {int(e.split(".")[0].removeprefix("person")) for e in self.expected_rounds[r]}

    def email(self, i: int, domain: str) -> str:
        return f"Person{i}.S{self.seed}@{domain}"


# ---------------------------------------------------------------------------------------------------
# The export files
# ---------------------------------------------------------------------------------------------------

def hashed(email: str) -> str:
    """SHA-256 of the trimmed, lower-cased email, lower-case hex (IDENTITY_MAPPING_HASHED_EMAIL)."""
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()


def _run_start(name: str) -> tuple[str, int]:
    """`<activation>-<mode>-<ms>.<format>` -> (activation, ms)."""
    stem = name.rsplit(".", 1)[0]
    activation, _, ms = stem.rpartition("-")
    return activation, int(ms)


def read_exports(directory: Path) -> list[tuple[str, list[tuple[str, str]]]]:
    """[(file name, [(op, identity), ...])] of the finished files (not the hidden temporary ones), in name
    order (the run start in ms has 13 digits until 2286; sorted numerically to be sure)."""
    if not directory.exists():
        return []
    names = sorted((p.name for p in directory.iterdir() if not p.name.startswith(".")), key=_run_start)
    out = []
    for name in names:
        text = (directory / name).read_text()
        if name.endswith(".csv"):
            rows = list(csv.reader(io.StringIO(text)))
            if not rows or rows[0][:2] != ["op", "identity"]:
                raise AssertionError(f"{name}: the header is {rows[:1]}, expected op,identity first")
            out.append((name, [(r[0], r[1]) for r in rows[1:]]))
        elif name.endswith(".jsonl"):
            objs = [json.loads(line) for line in text.splitlines() if line.strip()]
            out.append((name, [(o["op"], o["identity"]) for o in objs]))
        else:
            raise AssertionError(f"an unexpected file in {directory}: {name}")
    return out


def hidden_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".")) if directory.exists() else []


def replay(files) -> tuple[set[str], list[str]]:
    """Applies each file's adds, then its removes, in order. Returns (the members added at the end, the
    problems: an add of a member already added with no remove between, a remove of one not added, an update
    of one not added, an op that is none of add, update and remove, a member twice in one file)."""
    held: set[str] = set()
    problems: list[str] = []
    for name, rows in files:
        seen: set[str] = set()
        for op, identity in rows:
            if identity in seen:
                problems.append(f"{name}: {identity} twice in one file")
            seen.add(identity)
            if op not in ("add", "update", "remove"):
                problems.append(f"{name}: op {op!r} for {identity}")
            if op == "update" and identity not in held:
                problems.append(f"{name}: updates {identity}, which no earlier file added")
        for op, identity in rows:
            if op == "add":
                if identity in held:
                    problems.append(f"{name}: adds {identity}, already added by an earlier file (no remove between)")
                held.add(identity)
        for op, identity in rows:
            if op == "remove":
                if identity not in held:
                    problems.append(f"{name}: removes {identity}, which no earlier file added")
                held.discard(identity)
    return held, problems


def deliveries(stub, destination_id: str, page_size: int = 7) -> list:
    """Every run of a destination through all pages of ListDeliveries (newest first; ids never repeat)."""
    out = []
    token = ""
    for _ in range(100_000):
        page = stub.ListDeliveries(destination_pb2.ListDeliveriesRequest(
            destination_id=destination_id, page_size=page_size, page_token=token), timeout=10)
        out.extend(page.deliveries)
        if not page.next_page_token:
            break
        token = page.next_page_token
    ids = [d.id for d in out]
    if len(set(ids)) != len(ids):
        raise AssertionError(f"ListDeliveries({destination_id}) lists a run twice across its pages: {ids}")
    return out


# ---------------------------------------------------------------------------------------------------
# Helpers of the connector tests (Tests/Destination/test_connectors.py)
# ---------------------------------------------------------------------------------------------------

MARKETO = destination_pb2.DESTINATION_TYPE_MARKETO
LINKEDIN = destination_pb2.DESTINATION_TYPE_LINKEDIN
WEBHOOK = destination_pb2.DESTINATION_TYPE_WEBHOOK
CRM_ID = destination_pb2.IDENTITY_MAPPING_CRM_ID


def person_change(sequence: int, cluster: int, version: int, realized: bool, email: str, segment: str = "s1",
                  **person):
    """A MembershipChange of a person (cluster) with a record holding `email` and the Person fields given
    (first_name=..., last_name=..., job_title=..., email_opt_out=...)."""
    change = destination_pb2.MembershipChange(sequence=sequence, segment_id=segment, entity_type=E.ENTITY_TYPE_PERSON,
                                              cluster_id=cluster, realized=realized, version=version)
    change.record.cluster_id = cluster
    change.record.record.person.email = email
    for k, v in person.items():
        setattr(change.record.record.person, k, v)
    return change


def standalone_destination(tmp_path: Path, args=()) -> Service:
    """A cdp-destination on its own (no segmentation: the test sends membership changes itself)."""
    return Service("destination", DESTINATION_BIN, "CDP_DESTINATION_BIN", tmp_path / "destination-data", tmp_path,
                   list(args))


@contextmanager
def running_destination(tmp_path: Path, args=(), port: int | None = None, fakes=(), on_error=None):
    """A standalone cdp-destination (``standalone_destination``) started, and a DestinationStub on a channel to
    it: yields (the Service, the stub). Without `port` the service takes a free one and the channel waits until
    it is ready; with `port` (kept across the test's restarts) the channel is a plain one to 127.0.0.1:port.
    On any exception (a failed check included) logs on_error() (when given), then the service's diagnostics,
    and re-raises; always closes the channel, kills the service if it still runs and stops the `fakes`."""
    svc = standalone_destination(tmp_path, args)
    ch = None
    try:
        if port is None:
            svc.start(0)
            ch = channel(svc.address)
        else:
            svc.start(port)
            ch = grpc.insecure_channel(f"127.0.0.1:{port}")
        yield svc, destination_pb2_grpc.DestinationStub(ch)
    except BaseException:
        if on_error is not None:
            on_error()
        log(diagnostics([svc]))
        raise
    finally:
        if ch is not None:
            ch.close()
        if svc.alive():
            svc.kill()
        for f in fakes:
            f.stop()


def wait_until(fn, timeout: float, what: str, interval: float = 0.05):
    """Polls fn() until it returns something truthy (returned); AssertionError naming `what` and the last
    value (or error) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = fn()
            if value:
                return value
            last = value
        except grpc.RpcError as e:
            last = f"{e.code().name} {e.details()}"
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last!r})")
        time.sleep(interval)


def destination_info(stub, destination_id: str):
    """One destination as ListDestinations shows it."""
    for d in stub.ListDestinations(destination_pb2.ListDestinationsRequest(), timeout=10).destinations:
        if d.id == destination_id:
            return d
    raise AssertionError(f"ListDestinations does not list {destination_id}")


def account_change(sequence: int, cluster: int, version: int, realized: bool, name: str | None, domain: str | None,
                   segment: str = "s2"):
    """A MembershipChange of an account (cluster) with a record holding its name and domain (when given)."""
    change = destination_pb2.MembershipChange(sequence=sequence, segment_id=segment, entity_type=E.ENTITY_TYPE_ACCOUNT,
                                              cluster_id=cluster, realized=realized, version=version)
    change.record.cluster_id = cluster
    change.record.record.account.account_id = f"acc-{cluster}"
    if name is not None:
        change.record.record.account.name = name
    if domain is not None:
        change.record.record.account.domain = domain
    return change

"""Helpers for the segmentation pipeline tests (Tests/Segmentation/test_segmentation.py).

Builds on Tests/Profile/profile_support.py and through it Tests/Identity/pipeline_support.py (imported,
not copied: ``Pipeline``, ``Service``, CSV builders, ``ingest``, ``channel``, ``free_port``,
``expect_error``, the generated proto modules) and adds:

* the generated modules of ``cdp.segmentation.v1`` (with its stub), ``cdp.destination.v1`` and
  ``cdp.privacy.v1``;
* ``FakeDestination``: a grpcio server for ``/cdp.destination.v1.Destination/AcceptMembershipChanges``
  (a generic handler that parses ``AcceptMembershipChangesRequest``) which records every
  MembershipChange delivered, applies each sequence once (a re-sent sequence is a duplicate and must
  carry the same change as the first time), keeps the latest change per (segment, entity type, cluster)
  by ``version``, notes every broken promise of the protocol in ``problems`` and the authorization
  headers it was sent in ``authorizations``, and can fail a chosen fraction of calls with UNAVAILABLE,
  before applying (nothing taken) or after (the answer is lost, so segmentation sends again);
* ``SegmentationPipeline``: cdp-ingestion -> cdp-identity -> cdp-profile -> cdp-segmentation -> fake
  destination as real processes (``Pipeline`` of profile_support with a real segmentation in place of
  the fake one), ``drain`` over all four outboxes, stubs, and SIGKILL/restart of segmentation on its port;
* state changes to feed segmentation directly in place of profile (``AcceptStateChanges``):
  ``person_change`` (a test person's unified record; it stands for a person view with nothing but the
  person), ``removed_change`` (an entity without its unified record: gone), ``entity_change``,
  ``view_changes`` (a whole PersonView as entity, link and event changes, as
  ``EntityState.changes(building:version:)`` builds them) and ``accept_state``; ``state_loaded``: the
  persons and accounts a segmentation process logged as loaded from its own store at start;
* ``members``: every page of GetMembers; ``wait_job``: polls GetEvaluation until the job ends
  (``call_with_retry`` of pipeline_support for calls that may meet a restarting segmentation).
"""

from __future__ import annotations

import importlib
import os
import random
import re
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "Tests" / "Profile"))
from profile_support import (  # noqa: E402,F401  (re-exported for the tests)
    erasure_handler,
    ACCOUNT_COLUMNS, BINARIES, CHANNEL_OPTIONS, E, EVENT_COLUMNS, MDM_COLUMNS, OPPORTUNITY_COLUMNS,
    PERSON_COLUMNS, Pipeline, Service, channel, csv_text, diagnostics, entity_request, expect_error, free_port,
    ident, ingest, ingestion_pb2, model_pb2, profile_pb2, profile_pb2_grpc, rfc3339, segmentation_pb2,
    service_binary, source, source_key,
)
from pipeline_support import call_with_retry  # noqa: E402,F401  (Tests/Identity, on sys.path through profile_support)

# profile_support drops CDP_DATA_DIR, CDP_IDENTITY_ADDR, CDP_PROFILE_ADDR, CDP_SEGMENTATION_ADDR and CDP_TOKEN;
# cdp-segmentation also reads this one (a stray value would give the unhappy-path service a destination).
os.environ.pop("CDP_DESTINATION_ADDR", None)

segmentation_pb2_grpc = importlib.import_module("cdp.segmentation.v1.segmentation_pb2_grpc")
destination_pb2 = importlib.import_module("cdp.destination.v1.destination_pb2")
privacy_pb2 = importlib.import_module("cdp.privacy.v1.privacy_pb2")

SEGMENTATION_BIN = service_binary("cdp-segmentation", "CDP_SEGMENTATION_BIN")
ALL_BINARIES = (*BINARIES, (SEGMENTATION_BIN, "CDP_SEGMENTATION_BIN"))

REALIZED = segmentation_pb2.MEMBERSHIP_STATUS_REALIZED
EXITED = segmentation_pb2.MEMBERSHIP_STATUS_EXITED
JOB_STATE = {v: k for k, v in segmentation_pb2.JobState.items()}

_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[segmentation-pipeline {time.monotonic() - _T0:6.2f}s] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------
# The fake destination service
# ---------------------------------------------------------------------------------------------------

def membership_key(change) -> tuple[str, int, int]:
    """(segment, entity type, cluster) of a MembershipChange."""
    return change.segment_id, change.entity_type, change.cluster_id


def describe(change) -> str:
    email = change.record.record.person.email if change.record.record.HasField("person") else ""
    return (f"seq {change.sequence} {change.segment_id}/{change.cluster_id} v{change.version} "
            f"{'realized' if change.realized else 'exited'}{f' ({email})' if email else ''}")


def _content(change) -> bytes:
    """What an update must change: the record's entity fields and custom attributes (not its key, source or
    source time)."""
    record = destination_pb2.MembershipChange()
    record.CopyFrom(change)
    inner = record.record.record
    inner.ClearField("key")
    inner.ClearField("source")
    inner.ClearField("last_updated")
    return inner.SerializeToString(deterministic=True)


class FakeDestination:
    """`cdp.destination.v1.Destination/AcceptMembershipChanges` on 127.0.0.1:<ephemeral>.

    Each change whose sequence is above the highest applied one is applied: appended to ``applied``,
    its content kept by sequence, and taken as the latest of its (segment, entity type, cluster) when its
    version is above the one held. What breaks the protocol goes to ``problems``:

    * sequences not strictly increasing within one request;
    * a sequence at or below the highest applied that was never applied (delivered out of order);
    * a re-sent sequence whose change differs from the first delivery of that sequence;
    * a (segment, cluster, version) delivered under two sequences or with two different contents;
    * a new sequence whose version is not above the one held for its membership (a lower version applied
      after a higher one), and versions of one membership that are not 1, 2, 3, ... in sequence order;
    * an exit of a membership not realized, and a realized change of a realized membership (an update)
      whose record tells nothing new (the same entity fields and custom attributes);
    * a change without a segment or cluster.

    Failures (seeded): the first ``forced_failures`` calls fail in turn after and before applying, then
    each call fails with probability ``fail_rate``, after applying with probability ``after_share``."""

    def __init__(self, fail_rate: float = 0.0, seed: int = 0, after_share: float = 0.5, forced_failures: int = 0,
                 workers: int = 4):
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.fail_rate = fail_rate
        self.after_share = after_share
        self.forced = forced_failures if fail_rate > 0 else 0
        self.highest = 0
        self.applied: list = []                                   # MembershipChange, in the order applied
        self.by_sequence: dict[int, bytes] = {}                   # sequence -> the change as first delivered
        # (segment, type, cluster, version) -> (sequence, the change without its sequence)
        self.by_version: dict[tuple, tuple[int, bytes]] = {}
        self.latest: dict[tuple[str, int, int], object] = {}      # membership -> change with the highest version
        self.delivered = 0                                        # changes received, duplicates included
        self.duplicates = 0
        self.calls = 0
        self.calls_ok = 0
        self.failed_before = 0
        self.failed_after = 0
        self.problems: list[str] = []
        self.senders: set[str] = set()
        self.authorizations: set[str] = set()                     # authorization headers seen ('' for none)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                                  options=[("grpc.max_receive_message_length", 256 << 20)])
        handler = grpc.method_handlers_generic_handler("cdp.destination.v1.Destination", {
            "AcceptMembershipChanges": grpc.unary_unary_rpc_method_handler(
                self._accept,
                request_deserializer=destination_pb2.AcceptMembershipChangesRequest.FromString,
                response_serializer=destination_pb2.AcceptMembershipChangesResponse.SerializeToString),
        })
        self.erasures: list = []
        self.server.add_generic_rpc_handlers((handler, erasure_handler(self.erasures)))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"

    def start(self) -> "FakeDestination":
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
        if self.forced > 0:
            self.forced -= 1
            return "after" if self.forced % 2 else "before"
        if self.fail_rate > 0 and self.rng.random() < self.fail_rate:
            return "after" if self.rng.random() < self.after_share else "before"
        return None

    def _accept(self, request, context):
        with self.lock:
            self.calls += 1
            self.senders.add(request.sender)
            self.authorizations.add(dict(context.invocation_metadata()).get("authorization", ""))
            fail = self._decide()
            if fail == "before":
                self.failed_before += 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "fake destination: failing on purpose (nothing applied)")
            accepted = duplicates = 0
            previous = None
            for change in request.changes:
                self.delivered += 1
                seq = change.sequence
                content = change.SerializeToString(deterministic=True)
                if previous is not None and seq <= previous:
                    self._problem(f"call {self.calls}: sequence {seq} after {previous} in one request")
                previous = seq
                if seq <= self.highest:
                    duplicates += 1
                    first = self.by_sequence.get(seq)
                    if first is None:
                        self._problem(f"call {self.calls}: {describe(change)} arrives after sequence "
                                      f"{self.highest} was applied, and was never delivered before (out of order)")
                    elif first != content:
                        before = destination_pb2.MembershipChange.FromString(first)
                        self._problem(f"call {self.calls}: sequence {seq} re-sent as {describe(change)}, first "
                                      f"delivered as {describe(before)}")
                    continue
                if not change.segment_id or change.cluster_id == 0:
                    self._problem(f"call {self.calls}: a change without a segment or cluster: {describe(change)}")
                key = membership_key(change)
                vkey = (*key, change.version)
                bare = destination_pb2.MembershipChange()
                bare.CopyFrom(change)
                bare.sequence = 0
                bare_content = bare.SerializeToString(deterministic=True)
                if vkey in self.by_version:
                    first_seq, first = self.by_version[vkey]
                    first_change = destination_pb2.MembershipChange.FromString(first)
                    first_change.sequence = first_seq
                    same = "the same change" if first == bare_content else "a different change"
                    self._problem(f"call {self.calls}: {describe(change)}: version {change.version} of "
                                  f"{key[0]}/{key[2]} was already delivered as {describe(first_change)} "
                                  f"({same} under a second sequence)")
                else:
                    self.by_version[vkey] = (seq, bare_content)
                held = self.latest.get(key)
                held_version = held.version if held is not None else 0
                if change.version <= held_version:
                    self._problem(f"call {self.calls}: {describe(change)} applied after version {held_version} "
                                  f"of the same membership (sequence {held.sequence})")
                else:
                    if change.version != held_version + 1:
                        self._problem(f"call {self.calls}: {describe(change)} follows version {held_version} "
                                      f"(a version skipped)")
                    held_realized = held.realized if held is not None else False
                    if not change.realized and not held_realized:
                        self._problem(f"call {self.calls}: {describe(change)}: an exit of a membership that is "
                                      f"not realized")
                    elif change.realized and held_realized and _content(held) == _content(change):
                        self._problem(f"call {self.calls}: {describe(change)}: realized again (an update) with "
                                      f"the same content as version {held_version}")
                    self.latest[key] = change
                self.by_sequence[seq] = content
                self.highest = seq
                self.applied.append(change)
                accepted += 1
            self.duplicates += duplicates
            if fail == "after":
                self.failed_after += 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "fake destination: failing on purpose (after applying)")
            self.calls_ok += 1
            return destination_pb2.AcceptMembershipChangesResponse(accepted=accepted, duplicates=duplicates)

    def snapshot(self) -> list:
        with self.lock:
            return list(self.applied)

    def latest_of(self, segment: str) -> dict[int, object]:
        """cluster -> the latest change of each membership of `segment` (person and account clusters)."""
        with self.lock:
            return {k[2]: c for k, c in self.latest.items() if k[0] == segment}

    def summary(self) -> str:
        with self.lock:
            realized = sum(1 for c in self.applied if c.realized)
            return (f"fake destination: {len(self.applied)} changes applied ({realized} realized, "
                    f"{len(self.applied) - realized} exited; highest sequence {self.highest}), {len(self.latest)} "
                    f"memberships, {self.duplicates} re-sent changes skipped; {self.calls} calls: {self.calls_ok} ok, "
                    f"{self.failed_before} failed before applying, {self.failed_after} after; "
                    f"senders {sorted(self.senders)}; {len(self.problems)} problems")


# ---------------------------------------------------------------------------------------------------
# The pipeline with a real segmentation
# ---------------------------------------------------------------------------------------------------

class SegmentationPipeline(Pipeline):
    """cdp-ingestion -> cdp-identity -> cdp-profile -> cdp-segmentation -> fake destination, each process
    on its own data directory under tmp_path. Segmentation's port is picked up front (profile sends to
    it, and it comes back there after a restart); profile's address is known once profile started, and
    segmentation starts first of all after profile, so that segments can be created before ingesting."""

    def __init__(self, tmp_path: Path, destination: FakeDestination | None, segmentation_args=(),
                 ingestion_args=(), identity_args=(), profile_args=()):
        self.segmentation_port = free_port()
        super().__init__(tmp_path, None, ingestion_args=ingestion_args, identity_args=identity_args,
                         profile_args=["--segmentation", f"127.0.0.1:{self.segmentation_port}", *profile_args])
        self.destination = destination
        dest = ["--destination", destination.address] if destination is not None else []
        self.segmentation = Service("segmentation", SEGMENTATION_BIN, "CDP_SEGMENTATION_BIN",
                                    tmp_path / "segmentation-data", tmp_path, [*dest, *segmentation_args])

    @property
    def services(self) -> list[Service]:
        return [self.ingestion, self.identity, self.profile, self.segmentation]

    def start(self) -> "SegmentationPipeline":
        super().start()
        self.segmentation.args = ["--profile", f"127.0.0.1:{self.profile_port}", *self.segmentation.args]
        self.segmentation.start(self.segmentation_port)
        return self

    def restart_segmentation(self) -> None:
        self.segmentation.start(self.segmentation_port)

    def segmentation_stub(self):
        """A stub on a channel to segmentation's fixed address (it reconnects after a restart)."""
        return segmentation_pb2_grpc.SegmentationStub(self._channel(f"127.0.0.1:{self.segmentation_port}"))

    def segmentation_status(self):
        with grpc.insecure_channel(f"127.0.0.1:{self.segmentation_port}", options=CHANNEL_OPTIONS) as ch:
            return segmentation_pb2_grpc.SegmentationStub(ch).GetOutboxStatus(
                segmentation_pb2.GetOutboxStatusRequest(), timeout=5)

    def drain(self, timeout: float, on_poll=None):
        """Polls until ingestion's, identity's, profile's and segmentation's outboxes are empty in one
        pass, in pipeline order (each commits what it takes before acknowledging the previous one, so
        all four empty in that order means every record reached destination as membership changes).
        Returns the four statuses."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if on_poll is not None:
                on_poll()
            for s in self.services:
                if s.generation and not s.alive():
                    raise AssertionError(f"{s.name} died while the outboxes drained: {s.exit_description()}")
            try:
                ing, idn, prof = self.statuses()
                seg = self.segmentation_status()
                last = (f"ingestion pending {ing.pending_records}; identity pending {idn.pending_updates} "
                        f"(error {idn.last_error!r}); profile pending state changes {prof.pending_changes} (sent "
                        f"{prof.sent_changes}, error {prof.last_error!r}); segmentation pending changes "
                        f"{seg.pending_changes} (sent {seg.sent_changes}, error {seg.last_error!r})")
                if (ing.pending_records, idn.pending_updates, prof.pending_changes, seg.pending_changes) == \
                        (0, 0, 0, 0):
                    return ing, idn, prof, seg
            except grpc.RpcError as e:
                last = f"{e.code().name} {e.details()}"
            time.sleep(0.1)
        raise AssertionError(f"the outboxes did not drain within {timeout:.0f}s; last status: {last}"
                             + (f"; {self.destination.summary()}" if self.destination else ""))

    def diagnostics(self) -> str:
        text = diagnostics(self.services)
        if self.destination is not None:
            d = self.destination
            text = d.summary() + ("\nfake destination problems: " + "; ".join(d.problems[:5])
                                  if d.problems else "") + "\n" + text
        return text

    def close(self) -> None:
        super().close()
        if self.destination is not None:
            self.destination.stop()


# ---------------------------------------------------------------------------------------------------
# State changes: what tests feed segmentation directly (AcceptStateChanges) in place of profile
# ---------------------------------------------------------------------------------------------------

def person_record(cluster: int, email: str, last_name: str | None = None) -> object:
    """The unified record of a test person: one fragment ``P<cluster>@t-1.Test`` with that email (and last
    name, if given)."""
    key = f"P{cluster}@t-1.Test"
    person = model_pb2.Person(person_id=f"P{cluster}", email=email)
    if last_name is not None:
        person.last_name = last_name
    return profile_pb2.UnifiedRecord(cluster_id=cluster, fragment_keys=[key], record=model_pb2.Record(
        key=key, person=person))


def entity_change(entity_type, cluster: int, version: int, unified=None) -> object:
    """A StateChange of one entity's unified record; without `unified`: the entity is gone."""
    entity = profile_pb2.EntityState(entity_type=entity_type, cluster_id=cluster)
    if unified is not None:
        entity.unified.CopyFrom(unified)
    return profile_pb2.StateChange(version=version, entity=entity)


def person_change(cluster: int, email: str, version: int, last_name: str | None = None) -> object:
    """A person's unified record (what a person view with nothing but the person stood for)."""
    return entity_change(E.ENTITY_TYPE_PERSON, cluster, version, person_record(cluster, email, last_name))


def removed_change(cluster: int, version: int, entity_type=E.ENTITY_TYPE_PERSON) -> object:
    """The entity has no unified record any more (merged away, deleted)."""
    return entity_change(entity_type, cluster, version)


def view_changes(view, version: int) -> tuple[list, int]:
    """The state changes that make segmentation hold what a PersonView shows, as
    ``EntityState.changes(building:version:)`` (Services/Segmentation/State/ViewChanges.swift) builds them:
    the unified records of the person, its accounts, opportunities, campaigns and lists, a link per relation
    (keyed ``view:<from>:<to>``) and the events, with versions version + 1, version + 2, ... Returns the changes
    and the last version used."""
    changes = []

    def nxt() -> int:
        nonlocal version
        version += 1
        return version

    def entity(entity_type, unified) -> None:
        record = profile_pb2.UnifiedRecord()
        record.CopyFrom(unified)
        del record.account_cluster_ids[:]
        changes.append(entity_change(entity_type, unified.cluster_id, nxt(), record))

    def link(entity_type, frm: int, to: int, **details) -> None:
        changes.append(profile_pb2.StateChange(version=nxt(), link=profile_pb2.LinkState(
            entity_type=entity_type, key=f"view:{frm}:{to}", present=True, from_cluster_id=frm, to_cluster_id=to,
            **details)))

    person = view.person.cluster_id
    entity(E.ENTITY_TYPE_PERSON, view.person)
    for account in view.accounts:
        entity(E.ENTITY_TYPE_ACCOUNT, account)
        link(E.ENTITY_TYPE_ACCOUNT_PERSON_RELATION, person, account.cluster_id)
    for opportunity in view.opportunities:
        entity(E.ENTITY_TYPE_OPPORTUNITY, opportunity)
        for account in opportunity.account_cluster_ids:
            link(E.ENTITY_TYPE_OPPORTUNITY, opportunity.cluster_id, account)
    for role in view.opportunity_roles:
        details = {f: getattr(role, f) for f in ("role", "is_primary") if role.HasField(f)}
        link(E.ENTITY_TYPE_OPPORTUNITY_PERSON_RELATION, person, role.opportunity_cluster_id, **details)
    for membership in view.campaigns:
        entity(E.ENTITY_TYPE_CAMPAIGN, membership.campaign)
        details = {f: getattr(membership, f) for f in ("status", "has_responded") if membership.HasField(f)}
        link(E.ENTITY_TYPE_CAMPAIGN_MEMBER, person, membership.campaign.cluster_id, **details)
    for membership in view.lists:
        entity(E.ENTITY_TYPE_MARKETING_LIST, membership.list)
        link(E.ENTITY_TYPE_MARKETING_LIST_MEMBER, person, membership.list.cluster_id)
    for event in view.events:
        changes.append(profile_pb2.StateChange(version=nxt(), event=profile_pb2.EventState(
            key=event.key, person_cluster_id=person, event=event.event)))
    return changes, version


_STATE_LOADED = re.compile(r"accounts=(\d+) persons=(\d+) .*state loaded")


def state_loaded(svc: Service, generation: int | None = None, timeout: float = 5.0) -> tuple[int, int]:
    """(persons, accounts) that a generation of cdp-segmentation logged as loaded from its own store at start
    (``state loaded``, before it listens); fails if the line is missing."""
    gen = generation or svc.generation
    path = svc.log_dir / f"{svc.name}-{gen}.err"
    deadline = time.monotonic() + timeout
    while True:
        try:
            text = path.read_text("utf-8", "replace")
        except OSError:
            text = ""
        found = _STATE_LOADED.search(text)
        if found:
            return int(found.group(2)), int(found.group(1))
        if time.monotonic() > deadline:
            raise AssertionError(f"{svc.name} generation {gen} logged no 'state loaded' line with persons and "
                                 f"accounts:\n{svc.stderr_tail(10, generation=gen)}")
        time.sleep(0.05)


def accept_state(stub, changes, metadata=(), sender: str = "test"):
    """AcceptStateChanges of `changes` (a list of StateChange)."""
    return stub.AcceptStateChanges(segmentation_pb2.AcceptStateChangesRequest(sender=sender, changes=changes),
                                   timeout=10, metadata=metadata)


# ---------------------------------------------------------------------------------------------------
# Segmentation calls
# ---------------------------------------------------------------------------------------------------

def members(stub, segment_id: str, status=segmentation_pb2.MEMBERSHIP_STATUS_UNSPECIFIED,
            page_size: int = 0) -> list:
    """Every member of a segment, through all pages of GetMembers (checks that pages do not repeat)."""
    out = []
    token = ""
    for _ in range(100_000):
        page = stub.GetMembers(segmentation_pb2.GetMembersRequest(
            segment_id=segment_id, status=status, page_size=page_size, page_token=token), timeout=30)
        out.extend(page.members)
        if not page.next_page_token:
            break
        if token and int(page.next_page_token) <= int(token):
            raise AssertionError(f"GetMembers({segment_id}) page token went from {token} to {page.next_page_token}")
        token = page.next_page_token
    clusters = [(m.entity_type, m.cluster_id) for m in out]
    if len(set(clusters)) != len(clusters):
        raise AssertionError(f"GetMembers({segment_id}) lists a member twice across its pages")
    return out


def member_emails(ms) -> dict[int, str]:
    """cluster -> the member record's email."""
    return {m.cluster_id: m.record.record.person.email for m in ms}


def wait_job(stub, job_id: str, timeout: float = 60.0):
    """Polls GetEvaluation until the job is no longer RUNNING; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        job = stub.GetEvaluation(segmentation_pb2.GetEvaluationRequest(id=job_id), timeout=10)
        if job.state != segmentation_pb2.JOB_STATE_RUNNING:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"evaluation job {job_id} still running after {timeout:.0f}s: {job}")
        time.sleep(0.1)

"""Helpers for the profile pipeline tests (Tests/Profile/test_pipeline.py).

Builds on Tests/Identity/pipeline_support.py (imported, not copied: ``Service``, CSV builders, ``ingest``,
``channel``, ``free_port``, the generated proto modules) and adds:

* the generated modules of ``cdp.profile.v1`` and ``cdp.segmentation.v1``;
* ``FakeSegmentation``: a grpcio server for ``/cdp.segmentation.v1.Segmentation/AcceptStateChanges`` (a
  generic handler that parses ``AcceptStateChangesRequest``) which keeps, per item (an entity's unified
  record by (type, cluster), a link by (fragment type, key), an event by key), the StateChange with the
  highest ``version`` (a change whose version is not above the one held is stale and changes nothing),
  checks that versions increase across calls, and can fail a chosen fraction of calls with UNAVAILABLE,
  before recording (nothing taken) or after (the answer is lost, profile sends again);
* ``FakeState``: the person and account views built from the items the fake holds, the way segmentation's
  EntityState builds them (an independent oracle of what profile's changes mean);
* ``Pipeline``: cdp-ingestion -> cdp-identity -> cdp-profile -> fake segmentation as real processes,
  each on its own data directory, ``drain`` (all three outboxes empty, in pipeline order) and stubs;
* ``person_digest`` / ``account_digest``: what of a view the tests compare (cluster ids, fragment keys,
  event keys, the won amount), and ``without_as_of`` for whole-view comparisons.
"""

from __future__ import annotations

import importlib
import math
import os
import random
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "Tests" / "Identity"))
from pipeline_support import (  # noqa: E402,F401  (re-exported for the tests)
    ACCOUNT_COLUMNS, CHANNEL_OPTIONS, E, MDM_COLUMNS, OPPORTUNITY_COLUMNS, PERSON_COLUMNS, Service, channel,
    csv_text, diagnostics, free_port, identity_pb2, identity_pb2_grpc, ingest, ingestion_pb2, ingestion_pb2_grpc,
    model_pb2, service_binary, source, source_key,
)

# The services read these in place of flags; every address and directory here is the test's own choice
# (and a stray CDP_IDENTITY_ADDR would give the unhappy-path profile an identity service).
for _var in ("CDP_DATA_DIR", "CDP_IDENTITY_ADDR", "CDP_INGESTION_ADDR", "CDP_PROFILE_ADDR", "CDP_SEGMENTATION_ADDR",
             "CDP_TOKEN"):
    os.environ.pop(_var, None)

profile_pb2 = importlib.import_module("cdp.profile.v1.profile_pb2")
profile_pb2_grpc = importlib.import_module("cdp.profile.v1.profile_pb2_grpc")
segmentation_pb2 = importlib.import_module("cdp.segmentation.v1.segmentation_pb2")
privacy_pb2 = importlib.import_module("cdp.privacy.v1.privacy_pb2")

EVENT_COLUMNS = ["eventId", "personId", "email", "ecid", "eventType", "timestamp", "url", "name"]

INGESTION_BIN = service_binary("cdp-ingestion", "CDP_INGESTION_BIN")
IDENTITY_BIN = service_binary("cdp-identity", "CDP_IDENTITY_BIN")
PROFILE_BIN = service_binary("cdp-profile", "CDP_PROFILE_BIN")
BINARIES = ((INGESTION_BIN, "CDP_INGESTION_BIN"), (IDENTITY_BIN, "CDP_IDENTITY_BIN"), (PROFILE_BIN, "CDP_PROFILE_BIN"))

_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[profile-pipeline {time.monotonic() - _T0:6.2f}s] {msg}", flush=True)


def ident(namespace: str, value: str) -> identity_pb2.IdentityValue:
    return identity_pb2.IdentityValue(namespace=namespace, value=value)


def sk(key: str) -> identity_pb2.IdentityValue:
    return ident("sourceKey", key)


def entity_request(namespace: str, value: str) -> profile_pb2.GetEntityRequest:
    return profile_pb2.GetEntityRequest(identity=ident(namespace, value))


def rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


# ---------------------------------------------------------------------------------------------------
# The fake segmentation service
# ---------------------------------------------------------------------------------------------------

PERSON, ACCOUNT, OPPORTUNITY = E.ENTITY_TYPE_PERSON, E.ENTITY_TYPE_ACCOUNT, E.ENTITY_TYPE_OPPORTUNITY
ACCOUNT_PERSON, OPPORTUNITY_PERSON = E.ENTITY_TYPE_ACCOUNT_PERSON_RELATION, E.ENTITY_TYPE_OPPORTUNITY_PERSON_RELATION
CAMPAIGN, CAMPAIGN_MEMBER = E.ENTITY_TYPE_CAMPAIGN, E.ENTITY_TYPE_CAMPAIGN_MEMBER
MARKETING_LIST, MARKETING_LIST_MEMBER = E.ENTITY_TYPE_MARKETING_LIST, E.ENTITY_TYPE_MARKETING_LIST_MEMBER
# The entity types profile sends unified records of, and the fragment types that make links.
ENTITY_TYPES = frozenset({PERSON, ACCOUNT, OPPORTUNITY, CAMPAIGN, MARKETING_LIST})
LINK_TYPES = frozenset({PERSON, OPPORTUNITY, ACCOUNT_PERSON, OPPORTUNITY_PERSON, CAMPAIGN_MEMBER,
                        MARKETING_LIST_MEMBER})
# Profile's view defaults: events within 400 days before as_of, at most 5,000.
EVENT_RETENTION_SECONDS = 400 * 86400
MAX_EVENTS_PER_VIEW = 5000


def item_key(change) -> tuple:
    """The item a StateChange is about: ("entity", type, cluster), ("link", type, fragment key) or
    ("event", event key); ("none",) for a change that carries no item."""
    which = change.WhichOneof("item")
    if which == "entity":
        return "entity", change.entity.entity_type, change.entity.cluster_id
    if which == "link":
        return "link", change.link.entity_type, change.link.key
    if which == "event":
        return "event", change.event.key
    return ("none",)


def change_problem(change) -> str | None:
    """What is wrong with a StateChange, as segmentation's EntityState.check sees it (plus a present
    link with an end 0, and a unified record whose cluster is not the entity's)."""
    which = change.WhichOneof("item")
    if which == "entity":
        e = change.entity
        if e.entity_type not in ENTITY_TYPES:
            return f"an entity change of type {e.entity_type}"
        if e.cluster_id == 0:
            return "an entity change without a cluster id"
        if e.HasField("unified") and e.unified.cluster_id not in (0, e.cluster_id):
            return f"entity {e.entity_type}/{e.cluster_id} carries the unified record of cluster {e.unified.cluster_id}"
        return None
    if which == "link":
        link = change.link
        if link.entity_type not in LINK_TYPES:
            return f"a link change of type {link.entity_type}"
        if not link.key:
            return "a link change without a fragment key"
        if link.present and (link.from_cluster_id == 0 or link.to_cluster_id == 0):
            return f"link {link.key} is present with from {link.from_cluster_id} and to {link.to_cluster_id}"
        return None
    if which == "event":
        return None if change.event.key else "an event change without a key"
    return "a change without an entity, link or event"


def timestamp_ms(ts) -> int:
    """A Timestamp in milliseconds, rounded half away from zero as profile and segmentation round it."""
    x = ts.seconds * 1000 + ts.nanos / 1e6
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


class FakeState:
    """A snapshot of the items the fake holds, and the person and account views built from them the way
    segmentation's EntityState (Services/Segmentation/State/EntityState.swift) builds them. Written
    apart from the Swift code, it is the tests' independent oracle of what profile's changes mean.

    ``entities[(type, cluster)]`` is the unified record of every entity whose latest change carries one;
    ``links[(type, key)]`` every link whose latest change is present with both ends; ``events[key]`` every
    event whose latest change names a person."""

    def __init__(self, held: dict):
        self.entities: dict[tuple[int, int], object] = {}
        self.links: dict[tuple[int, str], object] = {}
        self.events: dict[str, object] = {}
        self.links_from: dict[tuple[int, int], list] = {}  # (link type, from cluster) -> links
        self.links_to: dict[tuple[int, int], list] = {}    # (link type, to cluster) -> links
        self.person_events: dict[int, list] = {}           # person cluster -> events
        for key, change in held.items():
            if key[0] == "entity" and change.entity.HasField("unified"):
                unified = profile_pb2.UnifiedRecord()
                unified.CopyFrom(change.entity.unified)
                unified.cluster_id = change.entity.cluster_id
                self.entities[(key[1], key[2])] = unified
            elif key[0] == "link":
                link = change.link
                if link.present and link.from_cluster_id != 0 and link.to_cluster_id != 0:
                    self.links[(key[1], key[2])] = link
                    self.links_from.setdefault((key[1], link.from_cluster_id), []).append(link)
                    self.links_to.setdefault((key[1], link.to_cluster_id), []).append(link)
            elif key[0] == "event" and change.event.person_cluster_id != 0:
                self.events[key[1]] = change.event
                self.person_events.setdefault(change.event.person_cluster_id, []).append(change.event)

    # --- relations ---

    def to(self, link_type: int, from_cluster: int) -> set[int]:
        """The to ends of the links of `link_type` fragments from a cluster."""
        return {link.to_cluster_id for link in self.links_from.get((link_type, from_cluster), ())}

    def from_(self, link_type: int, to_cluster: int) -> set[int]:
        """The from ends of the links of `link_type` fragments to a cluster."""
        return {link.from_cluster_id for link in self.links_to.get((link_type, to_cluster), ())}

    def person_links(self, link_type: int, person: int) -> list:
        """A person's links of one fragment type, in fragment key order."""
        return sorted(self.links_from.get((link_type, person), ()), key=lambda link: link.key)

    def accounts_of_person(self, person: int) -> list[int]:
        """Through person records, account-person relations, and the accounts of the opportunities the
        person has a role on. Ascending."""
        accounts = self.to(PERSON, person) | self.to(ACCOUNT_PERSON, person)
        for opportunity in self.to(OPPORTUNITY_PERSON, person):
            accounts |= self.to(OPPORTUNITY, opportunity)
        return sorted(accounts)

    def persons_of_account(self, account: int) -> list[int]:
        """The same three paths, reversed. Ascending."""
        persons = self.from_(PERSON, account) | self.from_(ACCOUNT_PERSON, account)
        for opportunity in self.from_(OPPORTUNITY, account):
            persons |= self.from_(OPPORTUNITY_PERSON, opportunity)
        return sorted(persons)

    # --- views ---

    def record(self, entity_type: int, cluster: int):
        return self.entities.get((entity_type, cluster))

    def clusters(self, entity_type: int) -> list[int]:
        """The clusters of `entity_type` that have a unified record, ascending."""
        return sorted(c for (t, c) in self.entities if t == entity_type)

    def opportunity(self, cluster: int):
        """An opportunity's record with the accounts its OPPORTUNITY links go to; None without a record."""
        held = self.entities.get((OPPORTUNITY, cluster))
        if held is None:
            return None
        out = profile_pb2.UnifiedRecord()
        out.CopyFrom(held)
        del out.account_cluster_ids[:]
        out.account_cluster_ids.extend(sorted(self.to(OPPORTUNITY, cluster)))
        return out

    def person_view(self, cluster: int, as_of: float | None = None):
        """The PersonView of a person cluster as of `as_of` (seconds; None: now); None without a record."""
        person = self.entities.get((PERSON, cluster))
        if person is None:
            return None
        as_of = time.time() if as_of is None else as_of
        view = profile_pb2.PersonView()
        view.person.CopyFrom(person)
        view.as_of.FromNanoseconds(int(round(as_of * 1e9)))
        accounts = self.accounts_of_person(cluster)
        view.accounts.extend(a for a in (self.entities.get((ACCOUNT, c)) for c in accounts) if a is not None)
        roles = self.person_links(OPPORTUNITY_PERSON, cluster)
        opportunities = {link.to_cluster_id for link in roles}
        for account in accounts:
            opportunities |= self.from_(OPPORTUNITY, account)
        view.opportunities.extend(o for o in map(self.opportunity, sorted(opportunities)) if o is not None)
        for link in roles:
            role = view.opportunity_roles.add(opportunity_cluster_id=link.to_cluster_id)
            if link.HasField("role"):
                role.role = link.role
            if link.HasField("is_primary"):
                role.is_primary = link.is_primary
        for link in self.person_links(CAMPAIGN_MEMBER, cluster):
            campaign = self.entities.get((CAMPAIGN, link.to_cluster_id))
            if campaign is None:
                continue
            membership = view.campaigns.add()
            membership.campaign.CopyFrom(campaign)
            if link.HasField("status"):
                membership.status = link.status
            if link.HasField("has_responded"):
                membership.has_responded = link.has_responded
        for link in self.person_links(MARKETING_LIST_MEMBER, cluster):
            lst = self.entities.get((MARKETING_LIST, link.to_cluster_id))
            if lst is not None:
                view.lists.add().list.CopyFrom(lst)
        to_ms = timestamp_ms(view.as_of)
        from_ms = to_ms - EVENT_RETENTION_SECONDS * 1000
        timed = sorted(((timestamp_ms(e.event.timestamp), e) for e in self.person_events.get(cluster, ())),
                       key=lambda t: (-t[0], t[1].key))
        for ms, e in timed:
            if len(view.events) >= MAX_EVENTS_PER_VIEW or ms < from_ms:
                break
            if ms <= to_ms:
                view.events.add(key=e.key).event.CopyFrom(e.event)
        return view

    def account_view(self, cluster: int):
        """The AccountView of an account cluster; None without a record."""
        account = self.entities.get((ACCOUNT, cluster))
        if account is None:
            return None
        view = profile_pb2.AccountView()
        view.account.CopyFrom(account)
        view.opportunities.extend(o for o in map(self.opportunity, sorted(self.from_(OPPORTUNITY, cluster)))
                                  if o is not None)
        view.persons.extend(p for p in (self.entities.get((PERSON, c)) for c in self.persons_of_account(cluster))
                            if p is not None)
        t = view.totals
        t.opportunities = len(view.opportunities)
        for o in view.opportunities:
            opp = o.record.opportunity
            if opp.is_closed and opp.is_won:
                t.won_opportunities += 1
                t.won_amount += opp.amount
            elif not opp.is_closed:
                t.open_amount += opp.amount
        t.persons = len(view.persons)
        return view


def erasure_handler(calls: list):
    """`cdp.privacy.v1.Erasure/Erase` for a fake: records each request and answers nothing pending."""
    def erase(request, context):
        calls.append(request)
        return privacy_pb2.EraseReport()
    return grpc.method_handlers_generic_handler("cdp.privacy.v1.Erasure", {
        "Erase": grpc.unary_unary_rpc_method_handler(
            erase, request_deserializer=privacy_pb2.EraseRequest.FromString,
            response_serializer=privacy_pb2.EraseReport.SerializeToString),
    })


class FakeSegmentation:
    """`cdp.segmentation.v1.Segmentation/AcceptStateChanges` on 127.0.0.1:<ephemeral>.

    ``held[item]`` (``item_key``: an entity by (type, cluster), a link by (type, fragment key), an event
    by key) is the StateChange with the highest version received for the item; a change whose version is
    not above the one held is stale (counted, not taken). ``received`` keeps every change taken, in
    order. ``version_regressions`` notes calls whose versions are not all above every version seen
    before (profile promises versions increasing across all its sends, and a re-send after a failure
    takes new versions). ``problems`` notes malformed changes (no item, a wrong type, no cluster or key,
    a present link with an end 0). ``state()`` snapshots the held items as a ``FakeState``, which
    builds person and account views from them as segmentation does.

    Failures (seeded): the first ``forced_failures`` calls fail in turn after and before recording, then
    each call fails with probability ``fail_rate``, after recording with probability ``after_share``."""

    def __init__(self, fail_rate: float = 0.0, seed: int = 0, after_share: float = 0.5, forced_failures: int = 0,
                 workers: int = 4):
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.fail_rate = fail_rate
        self.after_share = after_share
        self.forced = forced_failures if fail_rate > 0 else 0
        self.held: dict[tuple, object] = {}
        self.received: list = []
        self.stale = 0
        self.calls = 0
        self.calls_ok = 0
        self.failed_before = 0
        self.failed_after = 0
        self.max_version = 0
        self.version_regressions: list[str] = []
        self.problems: list[str] = []
        self.senders: set[str] = set()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                                  options=[("grpc.max_receive_message_length", 256 << 20)])
        handler = grpc.method_handlers_generic_handler("cdp.segmentation.v1.Segmentation", {
            "AcceptStateChanges": grpc.unary_unary_rpc_method_handler(
                self._accept,
                request_deserializer=segmentation_pb2.AcceptStateChangesRequest.FromString,
                response_serializer=segmentation_pb2.AcceptStateChangesResponse.SerializeToString),
        })
        self.erasures: list = []
        self.server.add_generic_rpc_handlers((handler, erasure_handler(self.erasures)))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"

    def start(self) -> "FakeSegmentation":
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(grace=None)

    def set_fail_rate(self, rate: float) -> None:
        with self.lock:
            self.fail_rate = rate

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
            versions = [c.version for c in request.changes]
            if versions and min(versions) <= self.max_version and len(self.version_regressions) < 20:
                self.version_regressions.append(
                    f"call {self.calls}: versions {min(versions)}..{max(versions)} after version {self.max_version}")
            if versions:
                self.max_version = max(self.max_version, max(versions))
            fail = self._decide()
            if fail == "before":
                self.failed_before += 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "fake segmentation: failing on purpose (nothing taken)")
            accepted = stale = 0
            for change in request.changes:
                problem = change_problem(change)
                if problem is not None:
                    if len(self.problems) < 20:
                        self.problems.append(f"call {self.calls}: {problem}: {str(change)[:300]}")
                    continue
                key = item_key(change)
                held = self.held.get(key)
                if held is not None and change.version <= held.version:
                    stale += 1
                    continue
                self.held[key] = change
                self.received.append(change)
                accepted += 1
            self.stale += stale
            if fail == "after":
                self.failed_after += 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "fake segmentation: failing on purpose (after taking)")
            self.calls_ok += 1
            return segmentation_pb2.AcceptStateChangesResponse(accepted=accepted, stale=stale)

    def entity(self, entity_type: int, cluster: int):
        """The latest change of an entity (None if none came)."""
        with self.lock:
            return self.held.get(("entity", entity_type, cluster))

    def link(self, link_type: int, key: str):
        with self.lock:
            return self.held.get(("link", link_type, key))

    def event(self, key: str):
        with self.lock:
            return self.held.get(("event", key))

    def versions(self) -> dict[tuple, int]:
        """The version held for each item."""
        with self.lock:
            return {k: c.version for k, c in self.held.items()}

    def state(self) -> FakeState:
        with self.lock:
            return FakeState(dict(self.held))

    def person_view(self, cluster: int, as_of: float | None = None):
        return self.state().person_view(cluster, as_of)

    def account_view(self, cluster: int):
        return self.state().account_view(cluster)

    def summary(self) -> str:
        with self.lock:
            kinds: dict[str, int] = {}
            for c in self.received:
                w = c.WhichOneof("item")
                kinds[w] = kinds.get(w, 0) + 1
            return (f"fake segmentation: {len(self.received)} changes taken {kinds}, {len(self.held)} items held, "
                    f"{self.stale} stale; {self.calls} calls: {self.calls_ok} ok, {self.failed_before} failed "
                    f"before taking, {self.failed_after} after; highest version {self.max_version}; "
                    f"senders {sorted(self.senders)}")


# ---------------------------------------------------------------------------------------------------
# Comparing views
# ---------------------------------------------------------------------------------------------------

def person_digest(view) -> dict:
    """What the tests compare of a PersonView: the person's cluster and fragments, the accounts'
    and opportunities' clusters and fragments, the event keys."""
    return {
        "cluster": view.person.cluster_id,
        "fragments": tuple(sorted(view.person.fragment_keys)),
        "accounts": tuple(sorted((a.cluster_id, tuple(sorted(a.fragment_keys))) for a in view.accounts)),
        "opportunities": tuple(sorted((o.cluster_id, tuple(sorted(o.fragment_keys))) for o in view.opportunities)),
        "events": tuple(sorted(e.key for e in view.events)),
    }


def account_digest(view) -> dict:
    return {
        "cluster": view.account.cluster_id,
        "fragments": tuple(sorted(view.account.fragment_keys)),
        "opportunities": tuple(sorted((o.cluster_id, tuple(sorted(o.fragment_keys))) for o in view.opportunities)),
        "persons": tuple(sorted((p.cluster_id, tuple(sorted(p.fragment_keys))) for p in view.persons)),
        "won_amount": view.totals.won_amount,
    }


def without_as_of(view):
    """A copy of a PersonView (or AccountView) without ``as_of``, for comparing whole views."""
    out = type(view)()
    out.CopyFrom(view)
    if out.DESCRIPTOR.fields_by_name.get("as_of") is not None:
        out.ClearField("as_of")
    return out


def expect_error(fn, code, what: str) -> str:
    """Calls fn, which must fail with `code`; returns the status message."""
    try:
        resp = fn()
    except grpc.RpcError as e:
        assert e.code() == code, f"{what}: expected {code.name}, got {e.code().name}: {e.details()}"
        return e.details() or ""
    raise AssertionError(f"{what}: expected {code.name}, got an answer: {str(resp)[:500]}")


# ---------------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------------

class Pipeline:
    """cdp-ingestion -> cdp-identity -> cdp-profile -> fake segmentation, each process on its own data
    directory under tmp_path. Identity and profile need each other's address (identity forwards to
    profile, profile's DeletePerson calls identity and ingestion), so identity's and ingestion's ports are
    picked up front; profile's port is kept after its first start, so that restarts come back where identity
    sends."""

    def __init__(self, tmp_path: Path, fake: FakeSegmentation | None, ingestion_args=(), identity_args=(),
                 profile_args=()):
        self.fake = fake
        self.identity_port = free_port()
        self.ingestion_port = free_port()
        self.profile_port = 0
        seg = ["--segmentation", fake.address] if fake is not None else []
        self.profile = Service("profile", PROFILE_BIN, "CDP_PROFILE_BIN", tmp_path / "profile-data", tmp_path,
                               [*seg, "--identity", f"127.0.0.1:{self.identity_port}",
                                "--ingestion", f"127.0.0.1:{self.ingestion_port}", *profile_args])
        self.identity = Service("identity", IDENTITY_BIN, "CDP_IDENTITY_BIN", tmp_path / "identity-data",
                                tmp_path, list(identity_args))
        self.ingestion = Service("ingestion", INGESTION_BIN, "CDP_INGESTION_BIN", tmp_path / "ingestion-data",
                                 tmp_path, list(ingestion_args))
        self.channels: list[grpc.Channel] = []

    @property
    def services(self) -> list[Service]:
        return [self.ingestion, self.identity, self.profile]

    def start(self) -> "Pipeline":
        self.profile.start(0)
        self.profile_port = self.profile.port
        self.identity.args = ["--profile", self.profile.address, *self.identity.args]
        self.identity.start(self.identity_port)
        self.ingestion.args = ["--identity", self.identity.address, *self.ingestion.args]
        self.ingestion.start(self.ingestion_port)
        return self

    def restart_profile(self) -> None:
        self.profile.start(self.profile_port)

    def _channel(self, address: str) -> grpc.Channel:
        ch = channel(address)
        self.channels.append(ch)
        return ch

    def ingestion_stub(self):
        return ingestion_pb2_grpc.IngestionStub(self._channel(self.ingestion.address))

    def identity_stub(self):
        return identity_pb2_grpc.IdentityStub(self._channel(self.identity.address))

    def profile_stub(self):
        """A stub on a channel to profile's fixed address (it reconnects after a restart)."""
        return profile_pb2_grpc.ProfileStub(self._channel(f"127.0.0.1:{self.profile_port}"))

    def statuses(self):
        """(ingestion, identity, profile) OutboxStatus, on fresh channels."""
        out = []
        for addr, stub_cls, req in (
                (self.ingestion.address, ingestion_pb2_grpc.IngestionStub, ingestion_pb2.GetOutboxStatusRequest()),
                (self.identity.address, identity_pb2_grpc.IdentityStub, identity_pb2.GetOutboxStatusRequest()),
                (f"127.0.0.1:{self.profile_port}", profile_pb2_grpc.ProfileStub,
                 profile_pb2.GetOutboxStatusRequest())):
            with grpc.insecure_channel(addr, options=CHANNEL_OPTIONS) as ch:
                out.append(stub_cls(ch).GetOutboxStatus(req, timeout=5))
        return tuple(out)

    def drain(self, timeout: float, on_poll=None):
        """Polls until ingestion's, identity's and profile's outboxes are empty in one pass, in pipeline
        order (each commits what it takes before acknowledging the previous one, so all three empty in
        that order means every record reached segmentation as state changes). Returns the three
        statuses."""
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
                last = (f"ingestion pending {ing.pending_records}; identity pending {idn.pending_updates} "
                        f"(forwarded {idn.forwarded_updates}, error {idn.last_error!r}); profile pending changes "
                        f"{prof.pending_changes} (applied seq {prof.applied_identity_sequence}, sent "
                        f"{prof.sent_changes}, error {prof.last_error!r})")
                if ing.pending_records == 0 and idn.pending_updates == 0 and prof.pending_changes == 0:
                    return ing, idn, prof
            except grpc.RpcError as e:
                last = f"{e.code().name} {e.details()}"
            time.sleep(0.1)
        raise AssertionError(f"the outboxes did not drain within {timeout:.0f}s; last status: {last}"
                             + (f"; {self.fake.summary()}" if self.fake else ""))

    def diagnostics(self) -> str:
        text = diagnostics(self.services)
        if self.fake is not None:
            text = self.fake.summary() + (
                "\nfake segmentation problems: " + "; ".join(self.fake.problems[:5]) if self.fake.problems else "") + \
                "\n" + text
        return text

    def close(self) -> None:
        for ch in self.channels:
            ch.close()
        for s in self.services:
            if s.alive():
                s.kill()
        if self.fake is not None:
            self.fake.stop()

"""Helpers for the profile pipeline tests (Tests/Profile/test_pipeline.py).

Builds on Tests/Identity/pipeline_support.py (imported, not copied: ``Service``, CSV builders, ``ingest``,
``channel``, ``free_port``, the generated proto modules) and adds:

* the generated modules of ``cdp.profile.v1`` and ``cdp.segmentation.v1``;
* ``FakeSegmentation``: a grpcio server for ``/cdp.segmentation.v1.Segmentation/AcceptViews`` (a generic
  handler that parses ``AcceptViewsRequest``) which records every ViewChange, keeps the latest one per
  (entity kind, cluster) by ``version`` (a change whose version is below the one held is stale and
  changes nothing), and can fail a chosen fraction of calls with UNAVAILABLE, before recording (nothing
  taken) or after (the answer is lost, profile sends again);
* ``Pipeline``: cdp-ingestion -> cdp-identity -> cdp-profile -> fake segmentation as real processes,
  each on its own data directory, ``drain`` (all three outboxes empty, in pipeline order) and stubs;
* ``person_digest``: what of a PersonView the tests compare (cluster ids, fragment keys, event keys).
"""

from __future__ import annotations

import importlib
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

KIND_NAMES = {E.ENTITY_TYPE_PERSON: "person", E.ENTITY_TYPE_ACCOUNT: "account"}


def change_key(change) -> tuple[str, int]:
    """(entity kind, cluster id) of a ViewChange."""
    which = change.WhichOneof("view")
    if which == "person":
        return "person", change.person.person.cluster_id
    if which == "account":
        return "account", change.account.account.cluster_id
    if which == "removed":
        return KIND_NAMES.get(change.removed.entity_type, f"type{change.removed.entity_type}"), \
            change.removed.cluster_id
    return "none", 0


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
    """`cdp.segmentation.v1.Segmentation/AcceptViews` on 127.0.0.1:<ephemeral>.

    ``latest[(kind, cluster)]`` is the ViewChange with the highest version received for the entity; a
    change below it is stale (counted, not taken; an equal one is a re-send and changes nothing either).
    ``received`` keeps every change taken, in order. ``version_regressions`` notes calls whose versions
    are not all above every version seen before (profile promises versions increasing across all its
    sends, and a re-send after a failure takes new versions).

    Failures (seeded): the first ``forced_failures`` calls fail in turn after and before recording, then
    each call fails with probability ``fail_rate``, after recording with probability ``after_share``."""

    def __init__(self, fail_rate: float = 0.0, seed: int = 0, after_share: float = 0.5, forced_failures: int = 0,
                 workers: int = 4):
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.fail_rate = fail_rate
        self.after_share = after_share
        self.forced = forced_failures if fail_rate > 0 else 0
        self.latest: dict[tuple[str, int], object] = {}
        self.received: list = []
        self.stale = 0
        self.resent = 0
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
            "AcceptViews": grpc.unary_unary_rpc_method_handler(
                self._accept,
                request_deserializer=segmentation_pb2.AcceptViewsRequest.FromString,
                response_serializer=segmentation_pb2.AcceptViewsResponse.SerializeToString),
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
                key = change_key(change)
                if key[0] == "none" or key[1] == 0:
                    if len(self.problems) < 20:
                        self.problems.append(f"call {self.calls}: a change without a view or cluster: {change}")
                    continue
                held = self.latest.get(key)
                if held is not None and change.version < held.version:
                    stale += 1
                    continue
                if held is not None and change.version == held.version:
                    self.resent += 1
                    accepted += 1
                    continue
                self.latest[key] = change
                self.received.append(change)
                accepted += 1
            self.stale += stale
            if fail == "after":
                self.failed_after += 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "fake segmentation: failing on purpose (after taking)")
            self.calls_ok += 1
            return segmentation_pb2.AcceptViewsResponse(accepted=accepted, stale=stale)

    def get(self, kind: str, cluster: int):
        with self.lock:
            return self.latest.get((kind, cluster))

    def versions(self) -> dict[tuple[str, int], int]:
        with self.lock:
            return {k: c.version for k, c in self.latest.items()}

    def summary(self) -> str:
        with self.lock:
            kinds: dict[str, int] = {}
            for c in self.received:
                w = c.WhichOneof("view")
                kinds[w] = kinds.get(w, 0) + 1
            return (f"fake segmentation: {len(self.received)} changes taken {kinds}, {len(self.latest)} entities "
                    f"held, {self.stale} stale, {self.resent} re-sent; {self.calls} calls: {self.calls_ok} ok, "
                    f"{self.failed_before} failed before taking, {self.failed_after} after; highest version "
                    f"{self.max_version}; senders {sorted(self.senders)}")


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
        that order means every record reached segmentation as views). Returns the three statuses."""
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
                        f"(forwarded {idn.forwarded_updates}, error {idn.last_error!r}); profile pending views "
                        f"{prof.pending_views} (applied seq {prof.applied_identity_sequence}, sent "
                        f"{prof.sent_views}, error {prof.last_error!r})")
                if ing.pending_records == 0 and idn.pending_updates == 0 and prof.pending_views == 0:
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

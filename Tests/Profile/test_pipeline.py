"""Ingestion -> identity -> profile -> (fake) segmentation, end to end over gRPC, against the real binaries.

Tests (about 45 s in all with the debug builds on 2 cores, nearly all of it the crash test):

* test_running_example_fanout_and_delete: the Bodea story in canonical CSV (p1 and p2 in Marketo 1 with
  account A1, p2 and p3 in Marketo 2 with account A2, opportunities O1 $200k on A1 and O2 $900k on A2,
  both closed-won, an MDM crosswalk making A1 and A2 one company, p2's page view of the new product page
  three days ago) through cdp-ingestion, cdp-identity and cdp-profile to a fake segmentation that fails
  30% of its calls (half of them after taking the views, so profile sends again). After all outboxes
  drained: GetAccount(A1) is one account of A1 and A2 with O1 and O2 once each, won amount $1,100,000,
  persons p1, p2 (two fragments), p3; GetPerson(p2) has that one
  account, both opportunities and the page view; GetEvents(p2) the page view; the latest views the fake
  holds for p1, p2, p3 and the account equal profile's answers.
  Fan-out: a new version of O2 ($950,000) makes profile send new (higher version) views of p1, p2, p3
  (opportunities summing to $1,150,000) and of the account (won $1,150,000).
  DeletePerson(p3): answers p3's identities; then GetPerson(p3) and identity's Resolve(email p3) are
  NOT_FOUND, the account has p1 and p2 only, and segmentation got a `removed` change for p3's cluster.
  All three services then stop on SIGTERM with status 0.
* test_profile_sigkill_during_forwarding: a generated dataset (default 5,000 persons over two sources
  sharing emails, 2 x 150 accounts of which 3/4 are joined by an MDM crosswalk, an opportunity per account,
  page views of a third of the persons, by email or by source key) ingested in 12 batches while cdp-profile
  is SIGKILLed twice (at fractions of identity's stream applied; seeded) and restarted on the same data
  directory and port; the fake segmentation fails 10% of calls. At the end: profile's
  applied_identity_sequence equals identity's forwarded_updates; ScanPersonViews (partitions 0 and 1 of 2)
  holds exactly one view per generated person whose fragment keys are the generator's, no cluster twice
  and no cluster in the wrong partition, and together exactly the clusters of partitions=1; a sample of
  GetPerson answers equals the generator's ground truth (the person's fragments, its accounts'
  fragments, its opportunities' fragments, its event keys) and the latest view segmentation holds.
* test_profile_unhappy_paths: a cdp-profile without --identity, fed directly through AcceptIdentityUpdates
  (re-sent updates count as duplicates): GetPerson without a namespace or value (INVALID_ARGUMENT),
  of an unknown identity (NOT_FOUND); GetAccount of an unknown identity (NOT_FOUND); ScanPersonViews with
  partition >= partitions (INVALID_ARGUMENT); GetEvents with from > to (INVALID_ARGUMENT); DeletePerson
  (FAILED_PRECONDITION: no identity service); ScanPersonViews with partitions=2 against partitions=1.
* test_delete_person_of_two_fragments: DeletePerson of p2 (one fragment in each Marketo) leaves no view
  of either fragment, in profile or at segmentation, although identity splits p2's cluster meanwhile.

Run (Tests/python-env.sh first; the debug binaries must exist):
    .venv/bin/python -m pytest Tests/Profile -q -p no:cacheprovider

Environment:
    CDP_INGESTION_BIN / CDP_IDENTITY_BIN / CDP_PROFILE_BIN   the binaries (default .build/debug/...)
    PROFILE_CRASH_PERSONS       persons in the crash test (default 5000)
    PROFILE_CRASH_KILLS         SIGKILLs of cdp-profile (default 2)
    PROFILE_CRASH_SEED          seed of the data, the kill points and the fake's failures (default 5)
    PROFILE_CRASH_FAIL_RATE     the fake segmentation's failure rate in the crash test (default 0.1)
    PROFILE_EXAMPLE_FAIL_RATE   ... in the running example (default 0.3)
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_support import (  # noqa: E402
    ACCOUNT_COLUMNS, BINARIES, E, EVENT_COLUMNS, MDM_COLUMNS, OPPORTUNITY_COLUMNS, PERSON_COLUMNS, PROFILE_BIN,
    FakeSegmentation, Pipeline, Service, account_digest, channel, csv_text, diagnostics, entity_request,
    expect_error, ident, identity_pb2, ingest, ingestion_pb2, log, model_pb2, person_digest, profile_pb2,
    profile_pb2_grpc, rfc3339, sk, source, source_key,
)

INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def _env(name: str, default, conv=int):
    v = os.environ.get(name)
    return conv(v) if v not in (None, "") else default


def _require_binaries():
    for b, env in BINARIES:
        if not b.exists():
            pytest.fail(f"{b.name} not found at {b} (build it, or set {env})", pytrace=False)


def _fail(problems: list[str], pipe: Pipeline, tmp_path: Path, extra: str = "") -> None:
    if problems:
        pytest.fail(f"{len(problems)} problem(s):\n- " + "\n- ".join(problems) + (f"\n{extra}" if extra else "") +
                    f"\n{pipe.diagnostics()}\n(data and logs in {tmp_path})", pytrace=False)


def _keys(records) -> set[str]:
    return {k for r in records for k in r.fragment_keys}


# ---------------------------------------------------------------------------------------------------
# 1. The running example: views, fan-out, a privacy delete
# ---------------------------------------------------------------------------------------------------

MKTO1, MKTO2, MDM1, WEB = source("Marketo:mkto-1"), source("Marketo:mkto-2"), source("MDM:mdm-1"), source("Web:web-1")
TS = "2026-04-18T10:00:00Z"
K = {
    "p1": source_key("101", MKTO1), "p2a": source_key("102", MKTO1), "p2b": source_key("2102", MKTO2),
    "p3": source_key("2103", MKTO2), "A1": source_key("A1", MKTO1), "A2": source_key("A2", MKTO2),
    "O1": source_key("O1", MKTO1), "O2": source_key("O2", MKTO2), "ev": source_key("w-1", WEB),
}
P_FRAGMENTS = {"p1": (K["p1"],), "p2": tuple(sorted((K["p2a"], K["p2b"]))), "p3": (K["p3"],)}
EMAIL = {"p1": "p1@townsend.com", "p2": "p2@townsend.com", "p3": "p3@townsend.com"}


def _opp_row(opp_id, account, name, amount, updated):
    return (opp_id, account, name, "Closed Won", str(amount), "USD", "true", "true", "2026-03-31", updated)


def test_running_example_fanout_and_delete(tmp_path):
    _require_binaries()
    t_start = time.monotonic()
    fail_rate = _env("PROFILE_EXAMPLE_FAIL_RATE", 0.3, float)
    fake = FakeSegmentation(fail_rate=fail_rate, seed=3, forced_failures=2).start()
    # One view per call to segmentation: many calls, so failures land between views.
    pipe = Pipeline(tmp_path, fake, profile_args=["--forward-batch-size", "1"])
    problems: list[str] = []
    try:
        pipe.start()
        ing = pipe.ingestion_stub()
        for src in (MKTO1, MKTO2, MDM1, WEB):
            ing.CreateSource(ingestion_pb2.CreateSourceRequest(source=src), timeout=10)
        ingest(ing, MKTO1, "person", csv_text(PERSON_COLUMNS, [
            ("101", EMAIL["p1"], "Pat", "One", "Contact", "A1", None, TS),
            ("102", EMAIL["p2"], "Paul", "Okafor", "Contact", "A1", None, TS)]), key="m1-persons", expect_records=2)
        ingest(ing, MKTO2, "person", csv_text(PERSON_COLUMNS, [
            ("2102", EMAIL["p2"], "Paul", "Okafor", "Contact", "A2", None, TS),
            ("2103", EMAIL["p3"], "Mei", "Tanaka", "Contact", "A2", None, TS)]), key="m2-persons", expect_records=2)
        ingest(ing, MKTO1, "account", csv_text(ACCOUNT_COLUMNS, [("A1", "Townsend, Inc.", "townsend.com", TS)]),
               key="m1-accounts", expect_records=1)
        ingest(ing, MKTO2, "account", csv_text(ACCOUNT_COLUMNS, [("A2", "Townsend Inc", "townsend.com", TS)]),
               key="m2-accounts", expect_records=1)
        ingest(ing, MKTO1, "opportunity", csv_text(OPPORTUNITY_COLUMNS, [
            _opp_row("O1", "A1", "Townsend - Rollout", 200000, TS)]), key="m1-opps", expect_records=1)
        ingest(ing, MKTO2, "opportunity", csv_text(OPPORTUNITY_COLUMNS, [
            _opp_row("O2", "A2", "Townsend - Expansion", 900000, TS)]), key="m2-opps", expect_records=1)
        ingest(ing, MDM1, "identityLink", csv_text(MDM_COLUMNS, [
            ("M-ACC-TOWNSEND", "account", "Marketo:mkto-1", "A1"),
            ("M-ACC-TOWNSEND", "account", "Marketo:mkto-2", "A2")]),
            fmt=ingestion_pb2.FORMAT_MDM_CSV, key="mdm-crosswalk", expect_records=2)
        viewed_at = rfc3339(time.time() - 3 * 86400)
        ingest(ing, WEB, "event", csv_text(EVENT_COLUMNS, [
            ("w-1", None, EMAIL["p2"], None, "web.webpagedetails.pageViews", viewed_at,
             "https://bodea.example/new-product", "New Product")]), key="web-events", expect_records=1)
        t0 = time.monotonic()
        _, idn_status, prof_status = pipe.drain(timeout=60)
        log(f"running example drained in {time.monotonic() - t0:.1f}s; {fake.summary()}")
        if prof_status.applied_identity_sequence != idn_status.forwarded_updates:
            problems.append(f"profile applied identity sequence {prof_status.applied_identity_sequence}, identity "
                            f"forwarded {idn_status.forwarded_updates} updates")

        prof = pipe.profile_stub()
        idn = pipe.identity_stub()

        # --- profile's account view ---
        account = prof.GetAccount(entity_request("sourceKey", K["A1"]), timeout=10)
        acc_cluster = account.account.cluster_id
        if set(account.account.fragment_keys) != {K["A1"], K["A2"]}:
            problems.append(f"GetAccount(A1): account fragments {list(account.account.fragment_keys)}, expected "
                            f"A1 and A2 (the crosswalk makes them one)")
        opp_keys = sorted(k for o in account.opportunities for k in o.fragment_keys)
        if opp_keys != sorted([K["O1"], K["O2"]]) or len(account.opportunities) != 2:
            problems.append(f"GetAccount(A1): opportunities {[list(o.fragment_keys) for o in account.opportunities]}"
                            f", expected O1 and O2 once each")
        t = account.totals
        if (t.won_amount, t.won_opportunities, t.opportunities, t.open_amount, t.persons) != (1_100_000, 2, 2, 0, 3):
            problems.append(f"GetAccount(A1) totals: won {t.won_amount} in {t.won_opportunities} of {t.opportunities}"
                            f" opportunities, open {t.open_amount}, {t.persons} persons; expected won 1,100,000 in "
                            f"2 of 2, open 0, 3 persons")
        persons = sorted(tuple(sorted(p.fragment_keys)) for p in account.persons)
        if persons != sorted(P_FRAGMENTS.values()):
            problems.append(f"GetAccount(A1): persons {persons}, expected {sorted(P_FRAGMENTS.values())}")
        if account.account.record.account.name not in ("Townsend, Inc.", "Townsend Inc"):
            problems.append(f"GetAccount(A1): merged name {account.account.record.account.name!r}")
        # Any of the account's identities names the same view; the crosswalk's master id is identity's only.
        a2 = prof.GetAccount(entity_request("sourceKey", K["A2"]), timeout=10)
        if a2.account.cluster_id != acc_cluster:
            problems.append(f"GetAccount(A2) is cluster {a2.account.cluster_id}, GetAccount(A1) {acc_cluster}")

        # --- profile's person views ---
        views = {}
        for p, email in EMAIL.items():
            views[p] = prof.GetPerson(entity_request("email", email), timeout=10)
            v = views[p]
            if tuple(sorted(v.person.fragment_keys)) != P_FRAGMENTS[p]:
                problems.append(f"GetPerson({email}): fragments {list(v.person.fragment_keys)}, expected "
                                f"{list(P_FRAGMENTS[p])}")
            if [a.cluster_id for a in v.accounts] != [acc_cluster]:
                problems.append(f"GetPerson({email}): accounts {[a.cluster_id for a in v.accounts]}, expected the "
                                f"one account {acc_cluster}")
            if _keys(v.opportunities) != {K["O1"], K["O2"]} or len(v.opportunities) != 2:
                problems.append(f"GetPerson({email}): opportunities {[list(o.fragment_keys) for o in v.opportunities]}")
        p2 = views["p2"]
        if [e.key for e in p2.events] != [K["ev"]] or p2.events[0].event.url != "https://bodea.example/new-product":
            problems.append(f"GetPerson(p2): events {[(e.key, e.event.url) for e in p2.events]}, expected the page "
                            f"view {K['ev']} of https://bodea.example/new-product")
        if p2.person.record.person.email != EMAIL["p2"]:
            problems.append(f"GetPerson(p2): merged email {p2.person.record.person.email!r}")
        for p in ("p1", "p3"):
            if views[p].events:
                problems.append(f"GetPerson({p}): events {[e.key for e in views[p].events]}, expected none")
        by_key = prof.GetPerson(entity_request("sourceKey", K["p2b"]), timeout=10)
        if by_key.person.cluster_id != p2.person.cluster_id:
            problems.append(f"GetPerson(sourceKey {K['p2b']}) is cluster {by_key.person.cluster_id}, by email "
                            f"{p2.person.cluster_id}")
        ev = prof.GetEvents(profile_pb2.GetEventsRequest(identity=ident("email", EMAIL["p2"])), timeout=10)
        if [(e.key, e.event.event_type) for e in ev.events] != [(K["ev"], "web.webpagedetails.pageViews")]:
            problems.append(f"GetEvents(p2): {[(e.key, e.event.event_type) for e in ev.events]}")
        window = profile_pb2.GetEventsRequest(identity=ident("email", EMAIL["p2"]))
        window.to.FromSeconds(int(time.time()) - 5 * 86400)
        before = prof.GetEvents(window, timeout=10)
        if before.events:
            problems.append(f"GetEvents(p2, to = five days ago): {[e.key for e in before.events]}, expected none")

        # --- what segmentation holds: the same views ---
        for p, v in views.items():
            held = fake.get("person", v.person.cluster_id)
            if held is None or held.WhichOneof("view") != "person":
                problems.append(f"segmentation holds {held and held.WhichOneof('view')} for {p}'s cluster "
                                f"{v.person.cluster_id}, expected a person view")
            elif person_digest(held.person) != person_digest(v):
                problems.append(f"segmentation's latest view of {p} {person_digest(held.person)} differs from "
                                f"GetPerson {person_digest(v)}")
        held = fake.get("account", acc_cluster)
        if held is None or held.WhichOneof("view") != "account":
            problems.append(f"segmentation holds no account view of Townsend (cluster {acc_cluster})")
        elif account_digest(held.account) != account_digest(account):
            problems.append(f"segmentation's latest Townsend view {account_digest(held.account)} differs from "
                            f"GetAccount {account_digest(account)}")
        if fail_rate > 0 and not (fake.failed_before and fake.failed_after):
            problems.append(f"the retry paths did not both run: {fake.summary()}")
        if fake.version_regressions:
            problems.append(f"view versions did not increase across sends: {fake.version_regressions[:3]}")
        _fail(problems, pipe, tmp_path)

        # --- fan-out: O2's new amount reaches every view it is part of ---
        before = fake.versions()
        ingest(ing, MKTO2, "opportunity", csv_text(OPPORTUNITY_COLUMNS, [
            _opp_row("O2", "A2", "Townsend - Expansion", 950000, "2026-04-19T10:00:00Z")]), key="m2-opps-2",
            expect_records=1)
        pipe.drain(timeout=60)
        log(f"fan-out drained; {fake.summary()}")
        for p, v in views.items():
            key = ("person", v.person.cluster_id)
            held = fake.get(*key)
            if held is None or held.version <= before.get(key, 0):
                problems.append(f"segmentation got no new view of {p} after O2 changed (held version "
                                f"{held and held.version}, before {before.get(key)})")
                continue
            amounts = [(list(o.fragment_keys), o.record.opportunity.amount) for o in held.person.opportunities]
            total = sum(a for _, a in amounts)
            if total != 1_150_000:
                problems.append(f"{p}'s new view (version {held.version}): opportunities {amounts} sum to {total}, "
                                f"expected 1,150,000")
        held = fake.get("account", acc_cluster)
        if held is None or held.version <= before.get(("account", acc_cluster), 0):
            problems.append("segmentation got no new Townsend account view after O2 changed")
        elif held.account.totals.won_amount != 1_150_000:
            problems.append(f"Townsend's new view: won amount {held.account.totals.won_amount}, expected 1,150,000")
        account = prof.GetAccount(entity_request("sourceKey", K["A1"]), timeout=10)
        if account.totals.won_amount != 1_150_000:
            problems.append(f"GetAccount(A1) after O2 changed: won amount {account.totals.won_amount}")
        _fail(problems, pipe, tmp_path)

        # --- a privacy delete of p3 ---
        p3_cluster = views["p3"].person.cluster_id
        resp = prof.DeletePerson(entity_request("email", EMAIL["p3"]), timeout=30)
        got = {(i.namespace, i.value) for i in resp.identities}
        if not {("email", EMAIL["p3"]), ("sourceKey", K["p3"])} <= got:
            problems.append(f"DeletePerson(p3) answered identities {sorted(got)}, expected email {EMAIL['p3']} and "
                            f"sourceKey {K['p3']}")
        if resp.fragments_deleted < 1:
            problems.append(f"DeletePerson(p3) deleted {resp.fragments_deleted} fragments")
        pipe.drain(timeout=60)
        log(f"delete drained; {fake.summary()}; DeletePerson answered {resp.fragments_deleted} fragments, "
            f"{resp.events_deleted} events, identities {sorted(got)}")
        for what, fn in (("GetPerson(email p3)", lambda: prof.GetPerson(entity_request("email", EMAIL["p3"]),
                                                                        timeout=10)),
                         ("GetPerson(sourceKey p3)", lambda: prof.GetPerson(entity_request("sourceKey", K["p3"]),
                                                                            timeout=10)),
                         ("identity's Resolve(email p3)", lambda: idn.Resolve(identity_pb2.ResolveRequest(
                             entity_type=E.ENTITY_TYPE_PERSON, identity=ident("email", EMAIL["p3"])), timeout=10))):
            try:
                expect_error(fn, NOT_FOUND, what)
            except AssertionError as e:
                problems.append(str(e))
        account = prof.GetAccount(entity_request("sourceKey", K["A1"]), timeout=10)
        persons = sorted(tuple(sorted(p.fragment_keys)) for p in account.persons)
        if persons != sorted([P_FRAGMENTS["p1"], P_FRAGMENTS["p2"]]) or account.totals.persons != 2:
            problems.append(f"after deleting p3 the account has persons {persons} ({account.totals.persons}), "
                            f"expected p1 and p2")
        held = fake.get("person", p3_cluster)
        if held is None or held.WhichOneof("view") != "removed" or \
                held.removed.entity_type != E.ENTITY_TYPE_PERSON:
            problems.append(f"segmentation's latest change for p3's cluster {p3_cluster} is "
                            f"{held and held.WhichOneof('view')}, expected removed (PERSON)")
        held = fake.get("account", acc_cluster)
        if held is None or held.WhichOneof("view") != "account" or \
                sorted(tuple(sorted(p.fragment_keys)) for p in held.account.persons) != persons:
            problems.append(f"segmentation's latest Townsend view does not list p1 and p2 only: "
                            f"{held and account_digest(held.account)}")
        for p in ("p1", "p2"):
            v = prof.GetPerson(entity_request("email", EMAIL[p]), timeout=10)
            if tuple(sorted(v.person.fragment_keys)) != P_FRAGMENTS[p]:
                problems.append(f"after deleting p3, GetPerson({p}) has fragments {list(v.person.fragment_keys)}")
        if fake.version_regressions or fake.problems:
            problems.append(f"fake segmentation: {fake.version_regressions[:3]} {fake.problems[:3]}")

        for s in pipe.services:
            if not s.stop():
                problems.append(f"{s.name} did not exit with status 0 on SIGTERM ({s.exit_description()})")
        log(f"running example total {time.monotonic() - t_start:.1f}s")
        _fail(problems, pipe, tmp_path)
    except pytest.fail.Exception:
        raise
    except BaseException:
        log(pipe.diagnostics())
        raise
    finally:
        pipe.close()


# ---------------------------------------------------------------------------------------------------
# 2. SIGKILL of cdp-profile while identity's stream flows
# ---------------------------------------------------------------------------------------------------

CRASH_SOURCES = [source("Marketo:mkto-1"), source("Salesforce:sf-1")]
CRASH_MDM, CRASH_WEB = source("MDM:mdm-1"), source("Web:web-1")
ID_PREFIX = ["m-", "s-"]


class Dataset:
    """The synthetic data and its ground truth.

    Person i is in one or both sources (record id ``{prefix}{i}``), every record with the person's email,
    so records of one person merge by email; each names account ACC{i % accounts} of its source. Every
    account exists in both sources; those with j % 4 != 3 are one company (crosswalk rows to M-{j}). Each
    account has one opportunity OPP{j} in its source (amount (j + 1) * 1000, won when j % 3 == 0). Persons
    with i % 3 == 0 viewed a page (event v-{i}), named by email (even i) or by the source key of one of
    their records (odd i), within the last 30 days."""

    def __init__(self, persons: int, seed: int, accounts: int = 150):
        rng = random.Random(seed)
        now = time.time()
        self.persons = persons
        self.accounts = accounts
        self.email = [f"person{i}.s{seed}@co{i % 97}.example" for i in range(persons)]
        self.person_keys: list[tuple[str, ...]] = []
        self.person_sources: list[list[int]] = []
        rows: list[list[list]] = [[] for _ in CRASH_SOURCES]
        for i in range(persons):
            srcs = sorted(rng.sample(range(2), rng.choices([1, 2], weights=[40, 60])[0]))
            self.person_sources.append(srcs)
            keys = []
            for s in srcs:
                pid = f"{ID_PREFIX[s]}{i}"
                rows[s].append([pid, self.email[i], "First", f"Last{i}", "Contact", f"ACC{i % accounts}", None,
                                "2026-03-01T00:00:00Z"])
                keys.append(source_key(pid, CRASH_SOURCES[s]))
            self.person_keys.append(tuple(sorted(keys)))
        for r in rows:
            rng.shuffle(r)
        self.person_rows = rows
        self.account_rows = [[[f"ACC{j}", f"Company {j}", f"company{j}.example", "2026-02-01T00:00:00Z"]
                              for j in range(accounts)] for _ in CRASH_SOURCES]
        self.opportunity_rows = [[[f"OPP{j}", f"ACC{j}", f"Deal {j}", "Closed Won" if j % 3 == 0 else "Proposal",
                                   str((j + 1) * 1000), "USD", str(j % 3 == 0).lower(), str(j % 3 == 0).lower(),
                                   "2026-03-31", "2026-02-01T00:00:00Z"] for j in range(accounts)]
                                 for _ in CRASH_SOURCES]
        xw = [[f"M-{j}", "account", f"{s.type}:{s.instance}", f"ACC{j}"]
              for j in range(accounts) if j % 4 != 3 for s in CRASH_SOURCES]
        rng.shuffle(xw)
        self.crosswalk_rows = xw
        self.event_rows = []
        self.events: dict[int, str] = {}
        for i in range(0, persons, 3):
            by_key = i % 2 == 1
            s = self.person_sources[i][0]
            self.event_rows.append([f"v-{i}", f"{ID_PREFIX[s]}{i}@{CRASH_SOURCES[s].instance}.{CRASH_SOURCES[s].type}"
                                    if by_key else None, None if by_key else self.email[i], None,
                                    "web.webpagedetails.pageViews", rfc3339(now - rng.uniform(3600, 30 * 86400)),
                                    f"https://bodea.example/p/{i % 50}", f"Page {i % 50}"])
            self.events[i] = source_key(f"v-{i}", CRASH_WEB)
        rng.shuffle(self.event_rows)
        self.total_records = (sum(len(r) for r in rows) + 2 * accounts * len(CRASH_SOURCES) + len(xw) +
                              len(self.event_rows))

    def account_fragments(self, j: int, s: int) -> tuple[str, ...]:
        """The fragment keys of the account cluster holding ACC{j} of source s."""
        if j % 4 != 3:
            return tuple(sorted(source_key(f"ACC{j}", src) for src in CRASH_SOURCES))
        return (source_key(f"ACC{j}", CRASH_SOURCES[s]),)

    def truth(self, i: int) -> dict:
        """What person i's view must hold (as person_digest, without cluster ids)."""
        j = i % self.accounts
        accounts = {self.account_fragments(j, s) for s in self.person_sources[i]}
        opportunities = set()
        for acc in accounts:
            for key in acc:  # each account fragment's source has one opportunity on it
                src = key.split("@", 1)[1]
                opportunities.add((f"OPP{j}@{src}",))
        return {"fragments": self.person_keys[i], "accounts": sorted(accounts),
                "opportunities": sorted(opportunities), "events": (self.events[i],) if i in self.events else ()}

    def batches(self):
        """(source, entity, format, csv text, key, records) in upload order: half the persons of each
        source, source 1's accounts and opportunities, half the crosswalk, half the events; then the rest."""
        out = []
        canonical, mdm = ingestion_pb2.FORMAT_CANONICAL_CSV, ingestion_pb2.FORMAT_MDM_CSV

        def half(rows, part):
            return rows[:len(rows) // 2] if part == 0 else rows[len(rows) // 2:]
        for part in (0, 1):
            for s, src in enumerate(CRASH_SOURCES):
                chunk = half(self.person_rows[s], part)
                out.append((src, "person", canonical, csv_text(PERSON_COLUMNS, chunk), f"persons-{s}-{part}",
                            len(chunk)))
            s = part
            out.append((CRASH_SOURCES[s], "account", canonical, csv_text(ACCOUNT_COLUMNS, self.account_rows[s]),
                        f"accounts-{s}", self.accounts))
            out.append((CRASH_SOURCES[s], "opportunity", canonical,
                        csv_text(OPPORTUNITY_COLUMNS, self.opportunity_rows[s]), f"opps-{s}", self.accounts))
            chunk = half(self.crosswalk_rows, part)
            out.append((CRASH_MDM, "identityLink", mdm, csv_text(MDM_COLUMNS, chunk), f"crosswalk-{part}", len(chunk)))
            chunk = half(self.event_rows, part)
            out.append((CRASH_WEB, "event", canonical, csv_text(EVENT_COLUMNS, chunk), f"events-{part}", len(chunk)))
        return out


def _digest_without_ids(d: dict) -> dict:
    return {"fragments": d["fragments"], "accounts": sorted(f for _, f in d["accounts"]),
            "opportunities": sorted(f for _, f in d["opportunities"]), "events": d["events"]}


def _scan(stub, partition: int, partitions: int) -> list:
    return list(stub.ScanPersonViews(profile_pb2.ScanRequest(partition=partition, partitions=partitions), timeout=120))


def test_profile_sigkill_during_forwarding(tmp_path):
    _require_binaries()
    persons = _env("PROFILE_CRASH_PERSONS", 5000)
    kills = _env("PROFILE_CRASH_KILLS", 2)
    seed = _env("PROFILE_CRASH_SEED", 5)
    fail_rate = _env("PROFILE_CRASH_FAIL_RATE", 0.1, float)
    rng = random.Random(seed)
    data = Dataset(persons, seed)
    total = data.total_records
    # Kill points: identity updates applied at profile, as fractions of the records (each record is one
    # update; merges add a few more).
    kill_at = [int(total * rng.uniform(0.15 + 0.7 * i / kills, 0.15 + 0.7 * (i + 1) / kills)) for i in range(kills)]
    log(f"seed {seed}: {persons} persons, {total} records; SIGKILL cdp-profile when it has applied {kill_at} "
        f"identity updates; fake segmentation fails {fail_rate:.0%} of calls")
    fake = FakeSegmentation(fail_rate=fail_rate, seed=seed, forced_failures=2).start()
    pipe = Pipeline(tmp_path, fake, identity_args=["--forward-batch-size", "200"],
                    ingestion_args=["--forward-batch-size", "500"])
    problems: list[str] = []
    kill_log: list[str] = []
    killer_errors: list[str] = []
    stop = threading.Event()
    t_start = time.monotonic()

    def applied_sequence() -> int | None:
        try:
            with grpc.insecure_channel(f"127.0.0.1:{pipe.profile_port}") as ch:
                return profile_pb2_grpc.ProfileStub(ch).GetOutboxStatus(
                    profile_pb2.GetOutboxStatusRequest(), timeout=2).applied_identity_sequence
        except grpc.RpcError:
            return None

    def killer():
        krng = random.Random(seed + 1)
        try:
            for n, target in enumerate(kill_at, 1):
                while True:
                    seq = applied_sequence()
                    if seq is not None and seq >= target:
                        break
                    if stop.wait(0.02):
                        return
                time.sleep(krng.uniform(0, 0.05))
                was_alive = pipe.profile.alive()
                pipe.profile.kill()
                kill_log.append(f"kill {n} at {time.monotonic() - t_start:.1f}s: profile had applied >= {seq} "
                                f"updates (target {target}), generation {pipe.profile.generation} "
                                f"{'running' if was_alive else 'ALREADY DEAD'}; segmentation held "
                                f"{len(fake.latest)} entities")
                if not was_alive:
                    killer_errors.append(f"profile was not running at kill {n}: {pipe.profile.exit_description()}")
                time.sleep(krng.uniform(0.05, 0.4))  # identity's calls fail meanwhile
                pipe.restart_profile()
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            killer_errors.append(f"killer: {e!r}")

    thread = threading.Thread(target=killer, name="killer", daemon=True)
    try:
        pipe.start()
        ing = pipe.ingestion_stub()
        for src in [*CRASH_SOURCES, CRASH_MDM, CRASH_WEB]:
            ing.CreateSource(ingestion_pb2.CreateSourceRequest(source=src), timeout=10)
        thread.start()
        batches = data.batches()
        for src, entity, fmt, text, key, n in batches:
            ingest(ing, src, entity, text, fmt=fmt, key=key, expect_records=n)
        log(f"uploaded {len(batches)} batches in {time.monotonic() - t_start:.1f}s")
        thread.join(timeout=90)
        if thread.is_alive():
            stop.set()
            thread.join(5)
            raise AssertionError(f"the kill points were not all reached within 90 s: {kill_log}")
        if killer_errors:
            raise AssertionError("; ".join(killer_errors))
        for k in kill_log:
            log(k)
        ing_status, idn_status, prof_status = pipe.drain(timeout=90)
        log(f"drained {time.monotonic() - t_start:.1f}s after the start; {fake.summary()}")
        if prof_status.applied_identity_sequence != idn_status.forwarded_updates:
            problems.append(f"profile's applied_identity_sequence is {prof_status.applied_identity_sequence}, "
                            f"identity forwarded {idn_status.forwarded_updates} updates")
        if ing_status.forwarded_records != total:
            problems.append(f"ingestion forwarded {ing_status.forwarded_records} records, generated {total}")
        if fake.version_regressions or fake.problems:
            problems.append(f"fake segmentation: {fake.version_regressions[:3]} {fake.problems[:3]}")

        # --- every person, through ScanPersonViews (partitions 0 and 1 of 2) ---
        prof = pipe.profile_stub()
        t0 = time.monotonic()
        parts = [_scan(prof, p, 2) for p in (0, 1)]
        log(f"ScanPersonViews of both partitions: {sum(map(len, parts))} views in {time.monotonic() - t0:.1f}s")
        owner = {keys: i for i, keys in enumerate(data.person_keys)}
        seen_clusters: dict[int, int] = {}
        found: dict[int, object] = {}
        bad = []
        for p, views in enumerate(parts):
            for v in views:
                c = v.person.cluster_id
                if c % 2 != p:
                    bad.append(f"cluster {c} in partition {p} of 2")
                if c in seen_clusters:
                    bad.append(f"cluster {c} in partitions {seen_clusters[c]} and {p}")
                seen_clusters[c] = p
                i = owner.get(tuple(sorted(v.person.fragment_keys)))
                if i is None:
                    bad.append(f"cluster {c}: fragments {list(v.person.fragment_keys)} are no generated person's")
                elif i in found:
                    bad.append(f"person {i} is clusters {found[i].person.cluster_id} and {c}")
                else:
                    found[i] = v
        missing = sorted(set(range(persons)) - found.keys())
        if missing:
            bad.append(f"{len(missing)} generated persons have no view, e.g. "
                       f"{[(i, data.person_keys[i]) for i in missing[:3]]}")
        if bad:
            problems.append(f"{len(bad)} problems in the scanned person views, e.g. {bad[:5]}")
        whole = sorted(v.person.cluster_id for v in _scan(prof, 0, 1))
        if whole != sorted(seen_clusters):
            problems.append(f"ScanPersonViews(partitions=1) has {len(whole)} clusters, partitions 0 and 1 of 2 "
                            f"together {len(seen_clusters)} ({len(set(whole) ^ set(seen_clusters))} differ)")

        # --- a sample against the ground truth, GetPerson and segmentation's latest view ---
        srng = random.Random(seed + 2)
        mismatches = []
        for i in srng.sample(range(persons), min(200, persons)):
            want = data.truth(i)
            view = prof.GetPerson(entity_request("email", data.email[i]), timeout=10)
            got = _digest_without_ids(person_digest(view))
            if got != want:
                mismatches.append(f"person {i}: GetPerson {got}, expected {want}")
                continue
            held = fake.get("person", view.person.cluster_id)
            if held is None or held.WhichOneof("view") != "person" or \
                    person_digest(held.person) != person_digest(view):
                mismatches.append(f"person {i}: segmentation holds "
                                  f"{held and held.WhichOneof('view') == 'person' and person_digest(held.person)}, "
                                  f"GetPerson {person_digest(view)}")
            if i in found and person_digest(found[i]) != person_digest(view):
                mismatches.append(f"person {i}: the scan's view differs from GetPerson's")
        if mismatches:
            problems.append(f"{len(mismatches)} of the sampled persons differ, e.g. {mismatches[:3]}")
        won = {j: (j + 1) * 1000 * 2 if j % 4 != 3 else (j + 1) * 1000 for j in range(data.accounts) if j % 3 == 0}
        for j in srng.sample(range(data.accounts), 20):
            acc = prof.GetAccount(entity_request("sourceKey", source_key(f"ACC{j}", CRASH_SOURCES[0])), timeout=10)
            if acc.totals.won_amount != won.get(j, 0):
                problems.append(f"account ACC{j}: won amount {acc.totals.won_amount}, expected {won.get(j, 0)}")
        if not pipe.profile.stop():
            problems.append(f"profile did not exit with status 0 on SIGTERM ({pipe.profile.exit_description()})")
        log(f"crash test total {time.monotonic() - t_start:.1f}s")
        _fail(problems, pipe, tmp_path, "kills: " + "; ".join(kill_log))
    except pytest.fail.Exception:
        raise
    except BaseException:
        stop.set()
        log("kills: " + "; ".join(kill_log))
        log(pipe.diagnostics())
        raise
    finally:
        stop.set()
        pipe.close()


# ---------------------------------------------------------------------------------------------------
# 3. Unhappy paths (and partitions) against a cdp-profile fed directly
# ---------------------------------------------------------------------------------------------------

TEST_SRC = source("Test:t-1")


def _person_update(seq: int, n: int, cluster: int, account_cluster: int):
    key = source_key(f"P{n}", TEST_SRC)
    rec = model_pb2.Record(key=key, source=TEST_SRC, person=model_pb2.Person(
        person_id=f"P{n}", email=f"u{n}@unhappy.example", account_key=source_key("ACC", TEST_SRC)))
    stored = identity_pb2.StoredRecord(sequence=seq, batch_id="b-1", version=1000 + n, record=rec)
    stored.ingested_at.FromSeconds(1_790_000_000)
    return profile_pb2.IdentityUpdate(sequence=seq, record=profile_pb2.AnnotatedRecord(
        stored=stored, entity_type=E.ENTITY_TYPE_PERSON, cluster_id=cluster,
        references=[profile_pb2.ResolvedReference(role="account", entity_type=E.ENTITY_TYPE_ACCOUNT,
                                                  cluster_id=account_cluster,
                                                  identity=sk(source_key("ACC", TEST_SRC)))]))


def test_profile_unhappy_paths(tmp_path):
    _require_binaries()
    svc = Service("profile", PROFILE_BIN, "CDP_PROFILE_BIN", tmp_path / "profile-data", tmp_path, [])
    ch = None
    try:
        svc.start(0)
        ch = channel(svc.address)
        stub = profile_pb2_grpc.ProfileStub(ch)

        # 41 persons (clusters 7, 10, 13, ...: both parities) of one account (cluster 5), then an event.
        persons = 41
        updates = [_person_update(1 + n, n, 7 + 3 * n, 5) for n in range(persons)]
        acc = model_pb2.Record(key=source_key("ACC", TEST_SRC), source=TEST_SRC,
                               account=model_pb2.Account(account_id="ACC", name="Unhappy Ltd"))
        seq = persons + 1
        updates.append(profile_pb2.IdentityUpdate(sequence=seq, record=profile_pb2.AnnotatedRecord(
            stored=identity_pb2.StoredRecord(sequence=seq, batch_id="b-1", version=7, record=acc),
            entity_type=E.ENTITY_TYPE_ACCOUNT, cluster_id=5)))
        ev = model_pb2.Record(key=source_key("e-1", TEST_SRC), source=TEST_SRC, event=model_pb2.ExperienceEvent(
            event_id="e-1", email="u0@unhappy.example", event_type="web.webpagedetails.pageViews"))
        ev.event.timestamp.FromSeconds(int(time.time()) - 86400)
        seq += 1
        updates.append(profile_pb2.IdentityUpdate(sequence=seq, record=profile_pb2.AnnotatedRecord(
            stored=identity_pb2.StoredRecord(sequence=seq, batch_id="b-2", version=8, record=ev),
            references=[profile_pb2.ResolvedReference(role="person", entity_type=E.ENTITY_TYPE_PERSON, cluster_id=7,
                                                      identity=ident("email", "u0@unhappy.example"))])))
        req = profile_pb2.AcceptIdentityUpdatesRequest(sender="test", updates=updates)
        first = stub.AcceptIdentityUpdates(req, timeout=30)
        again = stub.AcceptIdentityUpdates(req, timeout=30)
        assert (first.applied, first.duplicates) == (len(updates), 0), f"first AcceptIdentityUpdates: {first}"
        assert (again.applied, again.duplicates) == (0, len(updates)), f"re-sent AcceptIdentityUpdates: {again}"
        status = stub.GetOutboxStatus(profile_pb2.GetOutboxStatusRequest(), timeout=10)
        assert status.applied_identity_sequence == seq and status.pending_views == persons + 1, (
            f"outbox status {status}: expected applied sequence {seq} and {persons + 1} views pending (no "
            f"--segmentation: they wait)")
        known = stub.GetPerson(entity_request("email", "U0@Unhappy.example "), timeout=10)  # normalized
        assert known.person.cluster_id == 7 and [e.key for e in known.events] == [source_key("e-1", TEST_SRC)], (
            f"GetPerson(u0) answered cluster {known.person.cluster_id} with events {[e.key for e in known.events]}")
        account = stub.GetAccount(entity_request("sourceKey", source_key("ACC", TEST_SRC)), timeout=10)
        assert account.totals.persons == persons, f"the account lists {account.totals.persons} persons"

        # Bad and unknown identities.
        for ns, value in (("", "u0@unhappy.example"), ("email", ""), ("", "")):
            expect_error(lambda: stub.GetPerson(entity_request(ns, value), timeout=10), INVALID,
                         f"GetPerson with namespace {ns!r} and value {value!r}")
        expect_error(lambda: stub.GetPerson(profile_pb2.GetEntityRequest(), timeout=10), INVALID,
                     "GetPerson without an identity")
        expect_error(lambda: stub.GetAccount(profile_pb2.GetEntityRequest(), timeout=10), INVALID,
                     "GetAccount without an identity")
        msg = expect_error(lambda: stub.GetPerson(entity_request("email", "nobody@nowhere.example"), timeout=10),
                           NOT_FOUND, "GetPerson of an unknown email")
        assert "nobody@nowhere.example" in msg, f"NOT_FOUND does not name the identity: {msg!r}"
        expect_error(lambda: stub.GetPerson(entity_request("sourceKey", source_key("ACC", TEST_SRC)), timeout=10),
                     NOT_FOUND, "GetPerson of an account's source key")
        expect_error(lambda: stub.GetAccount(entity_request("sourceKey", "nothing@x.Y"), timeout=10), NOT_FOUND,
                     "GetAccount of an unknown source key")
        expect_error(lambda: stub.GetEvents(profile_pb2.GetEventsRequest(
            identity=ident("email", "nobody@nowhere.example")), timeout=10), NOT_FOUND, "GetEvents of an unknown email")

        # Partitions out of range.
        for partition, partitions in ((2, 2), (5, 2), (1, 1), (1, 0)):
            msg = expect_error(lambda: _scan(stub, partition, partitions), INVALID,
                               f"ScanPersonViews partition {partition} of {partitions}")
            assert "partition" in msg, f"the message does not name the partition: {msg!r}"
        expect_error(lambda: list(stub.ScanAccountViews(profile_pb2.ScanRequest(partition=3, partitions=3),
                                                        timeout=10)), INVALID, "ScanAccountViews partition 3 of 3")

        # GetEvents with from after to.
        bad = profile_pb2.GetEventsRequest(identity=ident("email", "u0@unhappy.example"))
        bad.to.FromSeconds(1_700_000_000)
        getattr(bad, "from").FromSeconds(1_700_000_001)
        expect_error(lambda: stub.GetEvents(bad, timeout=10), INVALID, "GetEvents with from > to")
        ok = profile_pb2.GetEventsRequest(identity=ident("email", "u0@unhappy.example"), limit=1)
        assert len(stub.GetEvents(ok, timeout=10).events) == 1, "GetEvents with from = to = unset"

        # DeletePerson without an identity service: refused, nothing deleted.
        msg = expect_error(lambda: stub.DeletePerson(entity_request("email", "u0@unhappy.example"), timeout=10),
                           FAILED_PRECONDITION, "DeletePerson on a profile without --identity")
        assert "identity" in msg, f"the message does not say what is missing: {msg!r}"
        still = stub.GetPerson(entity_request("email", "u0@unhappy.example"), timeout=10)
        assert still.person.cluster_id == 7 and len(still.events) == 1, "the refused DeletePerson deleted something"

        # Partitions: 0 and 1 of 2 are disjoint, each holds its parity, and together they are partitions=1
        # (and partitions=0, which means everything too).
        whole = [v.person.cluster_id for v in _scan(stub, 0, 1)]
        assert whole == sorted(whole) and len(whole) == persons, f"partitions=1 scanned {whole}"
        assert [v.person.cluster_id for v in _scan(stub, 0, 0)] == whole, "partitions=0 differs from partitions=1"
        parts = [[v.person.cluster_id for v in _scan(stub, p, 2)] for p in (0, 1)]
        for p, clusters in enumerate(parts):
            assert clusters == sorted(clusters) and all(c % 2 == p for c in clusters), (
                f"partition {p} of 2 holds {clusters}")
        assert not set(parts[0]) & set(parts[1]) and sorted(parts[0] + parts[1]) == whole, (
            f"partitions 0 and 1 of 2 ({parts}) are not partitions=1 ({whole}) split in two")
        assert svc.alive(), f"profile died during the unhappy paths: {svc.exit_description()}"
    except BaseException:
        log(diagnostics([svc]))
        raise
    finally:
        if ch is not None:
            ch.close()
        if svc.alive():
            svc.kill()


# ---------------------------------------------------------------------------------------------------
# 4. A privacy delete of a person of two fragments: profile lists the person's data before identity splits
#    the cluster, and deletes it by key wherever the split moved it
# ---------------------------------------------------------------------------------------------------

def test_delete_person_of_two_fragments(tmp_path):
    _require_binaries()
    fake = FakeSegmentation().start()
    pipe = Pipeline(tmp_path, fake)
    try:
        pipe.start()
        ing = pipe.ingestion_stub()
        for src in (MKTO1, MKTO2):
            ing.CreateSource(ingestion_pb2.CreateSourceRequest(source=src), timeout=10)
        ingest(ing, MKTO1, "person", csv_text(PERSON_COLUMNS, [
            ("101", EMAIL["p1"], "Pat", "One", "Contact", "A1", None, TS),
            ("102", EMAIL["p2"], "Paul", "Okafor", "Contact", "A1", None, TS)]), key="m1", expect_records=2)
        ingest(ing, MKTO2, "person", csv_text(PERSON_COLUMNS, [
            ("2102", EMAIL["p2"], "Paul", "Okafor", "Contact", "A2", None, TS)]), key="m2", expect_records=1)
        pipe.drain(timeout=60)
        prof = pipe.profile_stub()
        p2 = prof.GetPerson(entity_request("email", EMAIL["p2"]), timeout=10)
        assert tuple(sorted(p2.person.fragment_keys)) == P_FRAGMENTS["p2"], f"p2 before: {p2.person}"
        resp = prof.DeletePerson(entity_request("email", EMAIL["p2"]), timeout=30)
        pipe.drain(timeout=60)
        left = [(v.person.cluster_id, list(v.person.fragment_keys)) for v in _scan(prof, 0, 1)]
        held = [(k, c.WhichOneof("view")) for k, c in fake.latest.items() if k[0] == "person" and
                c.WhichOneof("view") == "person" and set(c.person.person.fragment_keys) & set(P_FRAGMENTS["p2"])]
        assert left == [(left[0][0], [K["p1"]])] and not held, (
            f"after DeletePerson(p2) (answered {resp.fragments_deleted} fragments deleted) profile still holds "
            f"person views {left} and segmentation's latest views of p2's fragments are {held}")
    finally:
        pipe.close()

"""Ingestion -> identity -> profile -> (fake) segmentation, end to end over gRPC, against the real binaries.

Profile sends segmentation state changes (AcceptStateChanges): the current value of one item each, a
clustered entity's unified record, the link one fragment makes between two clusters, or an event, with
versions increasing across all its sends. The fake segmentation keeps the latest change of each item and
builds person and account views from them as segmentation's EntityState does (profile_support.FakeState),
so the tests compare those views with profile's own answers.

Tests (about 45 s in all with the debug builds on 2 cores, nearly all of it the crash test):

* test_running_example_fanout_and_delete: the Bodea story in canonical CSV (p1 and p2 in Marketo 1 with
  account A1, p2 and p3 in Marketo 2 with account A2, opportunities O1 $200k on A1 and O2 $900k on A2,
  both closed-won, an MDM crosswalk making A1 and A2 one company, p2's page view of the new product page
  three days ago) through cdp-ingestion, cdp-identity and cdp-profile to a fake segmentation that fails
  30% of its calls (half of them after taking the changes, so profile sends again). After all outboxes
  drained: GetAccount(A1) is one account of A1 and A2 with O1 and O2 once each, won amount $1,100,000,
  persons p1, p2 (two fragments), p3; GetPerson(p2) has that one
  account, both opportunities and the page view; GetEvents(p2) the page view. Segmentation holds unified
  records of exactly the three persons, the account and the two opportunities (the account merged away
  came as gone), the four person records' and two opportunity records' links to the account, and p2's
  page view; the views built from them equal GetPerson and GetAccount whole.
  No fan-out: a new version of O2 ($950,000) makes profile send new versions of exactly O2's entity and
  its link (sent_changes grows by 2), and the views built from segmentation's state for p1, p2, p3 and
  the account now show it (opportunities summing to $1,150,000, won $1,150,000) as profile does.
  DeletePerson(p3): answers p3's identities and calls segmentation's Erase; then GetPerson(p3) and
  identity's Resolve(email p3) are NOT_FOUND, the account has p1 and p2 only; segmentation got new
  versions of exactly p3's entity, gone (no unified record), and its link, not present; the views built
  from its state no longer list p3. All three services then stop on SIGTERM with status 0.
* test_profile_sigkill_during_forwarding: a generated dataset (default 5,000 persons over two sources
  sharing emails, 2 x 150 accounts of which 3/4 are joined by an MDM crosswalk, an opportunity per account,
  page views of a third of the persons, by email or by source key) ingested in 12 batches while cdp-profile
  is SIGKILLed twice (at fractions of identity's stream applied; seeded) and restarted on the same data
  directory and port; the fake segmentation fails 10% of calls. At the end: profile's
  applied_identity_sequence equals identity's forwarded_updates; versions never went back across the
  restarts; ScanPersonViews (partitions 0 and 1 of 2) holds exactly one view per generated person whose
  fragment keys are the generator's, no cluster twice and no cluster in the wrong partition, and together
  exactly the clusters of partitions=1; segmentation holds unified records of exactly the scanned persons
  and accounts, and every view built from its state equals the scanned one; a sample of GetPerson answers
  equals the generator's ground truth (the person's fragments, its accounts' fragments, its opportunities'
  fragments, its event keys) and the view built from segmentation's state.
* test_profile_unhappy_paths: a cdp-profile without --identity, fed directly through AcceptIdentityUpdates
  (re-sent updates count as duplicates; the 41 person records, the account and the event leave 84 state
  changes pending, none sent): GetPerson without a namespace or value (INVALID_ARGUMENT),
  of an unknown identity (NOT_FOUND); GetAccount of an unknown identity (NOT_FOUND); ScanPersonViews with
  partition >= partitions (INVALID_ARGUMENT); GetEvents with from > to (INVALID_ARGUMENT); DeletePerson
  (FAILED_PRECONDITION: no identity service); ScanPersonViews with partitions=2 against partitions=1.
* test_delete_person_of_two_fragments: DeletePerson of p2 (one fragment in each Marketo) leaves no view
  of either fragment, in profile or in segmentation's state (p2's cluster came as gone, both fragments'
  links as not present), although identity splits p2's cluster meanwhile.
* test_relations_and_memberships: account-person and opportunity-person relations, campaigns and lists
  with their members, and events inside and outside the 400-day window: profile's views follow the three
  account paths, roles, memberships (in key order) and the window, and the views built from
  segmentation's state equal them; changing a role and deleting a membership and a relation re-sends
  exactly those three links (the deleted ones not present) and every view follows.

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
    ACCOUNT, ACCOUNT_COLUMNS, ACCOUNT_PERSON, BINARIES, CAMPAIGN_MEMBER, E, EVENT_COLUMNS, MARKETING_LIST_MEMBER,
    MDM_COLUMNS, OPPORTUNITY, OPPORTUNITY_COLUMNS, OPPORTUNITY_PERSON, PERSON, PERSON_COLUMNS, PROFILE_BIN,
    FakeSegmentation, Pipeline, Service, account_digest, channel, csv_text, diagnostics, entity_request,
    expect_error, ident, identity_pb2, ingest, ingestion_pb2, log, model_pb2, person_digest, profile_pb2,
    profile_pb2_grpc, rfc3339, sk, source, source_key, without_as_of,
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
# 1. The running example: views, a change without fan-out, a privacy delete
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
    # One change per call to segmentation: many calls, so failures land between changes.
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

        # --- what segmentation holds: the items, and the same views built from them ---
        opp_cluster = {k: o.cluster_id for o in account.opportunities for k in o.fragment_keys}
        person_cluster = {p: v.person.cluster_id for p, v in views.items()}
        state = fake.state()
        live = {(PERSON, c) for c in person_cluster.values()} | {(ACCOUNT, acc_cluster)} | \
            {(OPPORTUNITY, opp_cluster.get(K[o], 0)) for o in ("O1", "O2")}
        if set(state.entities) != live:
            problems.append(f"segmentation holds unified records of {sorted(state.entities)}, expected exactly the "
                            f"persons, the account and the opportunities {sorted(live)}")
        want_links = {(PERSON, K[f]): (person_cluster[p], acc_cluster)
                      for p, f in (("p1", "p1"), ("p2", "p2a"), ("p2", "p2b"), ("p3", "p3"))}
        want_links.update({(OPPORTUNITY, K[o]): (opp_cluster.get(K[o], 0), acc_cluster) for o in ("O1", "O2")})
        got_links = {k: (link.from_cluster_id, link.to_cluster_id) for k, link in state.links.items()}
        held_links = {(k[1], k[2]) for k in fake.versions() if k[0] == "link"}
        if got_links != want_links or held_links != set(want_links):
            problems.append(f"segmentation holds links {got_links} (items {sorted(held_links)}), expected "
                            f"{want_links}")
        got_events = {k: e.person_cluster_id for k, e in state.events.items()}
        held_event = state.events.get(K["ev"], profile_pb2.EventState()).event
        if got_events != {K["ev"]: person_cluster["p2"]} or held_event != (p2.events[0].event if p2.events else None):
            problems.append(f"segmentation holds events {got_events}, expected the page view {K['ev']} of p2 "
                            f"(cluster {person_cluster['p2']}) as GetPerson shows it")
        for p, v in views.items():
            built = state.person_view(v.person.cluster_id)
            if built is None:
                problems.append(f"segmentation's state has no person view of {p} (cluster {v.person.cluster_id})")
            elif person_digest(built) != person_digest(v):
                problems.append(f"the view of {p} built from segmentation's state {person_digest(built)} differs "
                                f"from GetPerson {person_digest(v)}")
            elif without_as_of(built) != without_as_of(v):
                problems.append(f"the view of {p} built from segmentation's state differs from GetPerson beyond "
                                f"the digest:\n{without_as_of(built)}\nGetPerson:\n{without_as_of(v)}")
        built = state.account_view(acc_cluster)
        if built is None:
            problems.append(f"segmentation's state has no account view of Townsend (cluster {acc_cluster})")
        elif account_digest(built) != account_digest(account) or built != account:
            problems.append(f"the Townsend view built from segmentation's state {account_digest(built)} differs "
                            f"from GetAccount {account_digest(account)}")
        if fail_rate > 0 and not (fake.failed_before and fake.failed_after):
            problems.append(f"the retry paths did not both run: {fake.summary()}")
        if fake.version_regressions or fake.problems:
            problems.append(f"versions did not increase across sends, or malformed changes: "
                            f"{fake.version_regressions[:3]} {fake.problems[:3]}")
        _fail(problems, pipe, tmp_path)

        # --- O2's new amount: one entity change and its link (no fan-out), and every view shows it ---
        o2_cluster = opp_cluster[K["O2"]]
        before = fake.versions()
        ingest(ing, MKTO2, "opportunity", csv_text(OPPORTUNITY_COLUMNS, [
            _opp_row("O2", "A2", "Townsend - Expansion", 950000, "2026-04-19T10:00:00Z")]), key="m2-opps-2",
            expect_records=1)
        _, _, prof_after = pipe.drain(timeout=60)
        log(f"O2 change drained; {fake.summary()}")
        resent = {k for k, version in fake.versions().items() if version > before.get(k, 0)}
        expected = {("entity", OPPORTUNITY, o2_cluster), ("link", OPPORTUNITY, K["O2"])}
        if resent != expected:
            problems.append(f"after O2 changed segmentation got new versions of {sorted(resent, key=str)}, expected "
                            f"exactly O2's entity and link {sorted(expected, key=str)}")
        if prof_after.sent_changes - prof_status.sent_changes != 2:
            problems.append(f"profile's sent_changes went from {prof_status.sent_changes} to "
                            f"{prof_after.sent_changes}, expected 2 more (O2's entity and its link)")
        held = fake.entity(OPPORTUNITY, o2_cluster)
        if held is None or not held.entity.HasField("unified") or \
                held.entity.unified.record.opportunity.amount != 950_000 or \
                list(held.entity.unified.fragment_keys) != [K["O2"]]:
            problems.append(f"segmentation's O2 (cluster {o2_cluster}) is {held and held.entity}, expected its "
                            f"unified record with amount 950,000")
        link = fake.link(OPPORTUNITY, K["O2"])
        if link is None or (link.link.present, link.link.from_cluster_id, link.link.to_cluster_id) != \
                (True, o2_cluster, acc_cluster):
            problems.append(f"segmentation's O2 link is {link and link.link}, expected present from {o2_cluster} "
                            f"to the account {acc_cluster}")
        state = fake.state()
        for p, v in views.items():
            built = state.person_view(v.person.cluster_id)
            fresh = prof.GetPerson(entity_request("email", EMAIL[p]), timeout=10)
            if built is None:
                problems.append(f"segmentation's state lost {p}'s view after O2 changed")
                continue
            amounts = [(list(o.fragment_keys), o.record.opportunity.amount) for o in built.opportunities]
            total = sum(a for _, a in amounts)
            if total != 1_150_000:
                problems.append(f"{p}'s view built from segmentation's state: opportunities {amounts} sum to "
                                f"{total}, expected 1,150,000")
            if without_as_of(built) != without_as_of(fresh):
                problems.append(f"after O2 changed, {p}'s view built from segmentation's state "
                                f"{person_digest(built)} differs from GetPerson {person_digest(fresh)}")
        account = prof.GetAccount(entity_request("sourceKey", K["A1"]), timeout=10)
        if account.totals.won_amount != 1_150_000:
            problems.append(f"GetAccount(A1) after O2 changed: won amount {account.totals.won_amount}")
        built = state.account_view(acc_cluster)
        if built is None or built.totals.won_amount != 1_150_000 or built != account:
            problems.append(f"after O2 changed, the Townsend view built from segmentation's state "
                            f"{built and (account_digest(built), built.totals)} differs from GetAccount "
                            f"{account_digest(account), account.totals} or does not sum to 1,150,000")
        _fail(problems, pipe, tmp_path)

        # --- a privacy delete of p3 ---
        p3_cluster = views["p3"].person.cluster_id
        before = fake.versions()
        resp = prof.DeletePerson(entity_request("email", EMAIL["p3"]), timeout=30)
        got = {(i.namespace, i.value) for i in resp.identities}
        if not {("email", EMAIL["p3"]), ("sourceKey", K["p3"])} <= got:
            problems.append(f"DeletePerson(p3) answered identities {sorted(got)}, expected email {EMAIL['p3']} and "
                            f"sourceKey {K['p3']}")
        if resp.fragments_deleted < 1:
            problems.append(f"DeletePerson(p3) deleted {resp.fragments_deleted} fragments")
        if not fake.erasures:
            problems.append("DeletePerson(p3) answered without calling segmentation's Erase")
        pipe.drain(timeout=60)
        resent = sorted((k for k, version in fake.versions().items() if version > before.get(k, 0)), key=str)
        log(f"delete drained; {fake.summary()}; DeletePerson answered {resp.fragments_deleted} fragments, "
            f"{resp.events_deleted} events, identities {sorted(got)}; items re-sent {resent}")
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
        # p3 has one fragment, no relation and no event: the delete changes its cluster's record and the
        # fragment's link to the account, nothing else (the account's record is not re-sent).
        expected = [("entity", PERSON, p3_cluster), ("link", PERSON, K["p3"])]
        if resent != sorted(expected, key=str):
            problems.append(f"after DeletePerson(p3) segmentation got new versions of {resent}, expected exactly "
                            f"{expected}")
        held = fake.entity(PERSON, p3_cluster)
        if held is None or held.version <= before.get(("entity", PERSON, p3_cluster), 0) or \
                held.entity.HasField("unified"):
            problems.append(f"segmentation's latest change of p3's cluster {p3_cluster} is {held}, expected a new "
                            f"one without a unified record (gone)")
        link = fake.link(PERSON, K["p3"])
        if link is None or link.version <= before.get(("link", PERSON, K["p3"]), 0) or link.link.present:
            problems.append(f"segmentation's latest change of p3's account link is {link}, expected a new one, "
                            f"not present")
        state = fake.state()
        if state.person_view(p3_cluster) is not None or p3_cluster in state.clusters(PERSON) or \
                K["p3"] in {k for _, c in state.entities.items() for k in c.fragment_keys}:
            problems.append(f"segmentation's state still holds p3 (cluster {p3_cluster}): persons "
                            f"{state.clusters(PERSON)}")
        built = state.account_view(acc_cluster)
        if built is None or sorted(tuple(sorted(p.fragment_keys)) for p in built.persons) != persons or \
                built != account:
            problems.append(f"the Townsend view built from segmentation's state does not list p1 and p2 only as "
                            f"GetAccount does: {built and account_digest(built)}, GetAccount "
                            f"{account_digest(account)}")
        for p in ("p1", "p2"):
            v = prof.GetPerson(entity_request("email", EMAIL[p]), timeout=10)
            if tuple(sorted(v.person.fragment_keys)) != P_FRAGMENTS[p]:
                problems.append(f"after deleting p3, GetPerson({p}) has fragments {list(v.person.fragment_keys)}")
            built = state.person_view(v.person.cluster_id)
            if built is None or without_as_of(built) != without_as_of(v):
                problems.append(f"after deleting p3, {p}'s view built from segmentation's state "
                                f"{built and person_digest(built)} differs from GetPerson {person_digest(v)}")
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
                                f"{len(fake.versions())} items")
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

        # --- segmentation's state: every person and account view built from it is profile's ---
        state = fake.state()
        if state.clusters(PERSON) != whole:
            problems.append(f"segmentation holds unified records of {len(state.clusters(PERSON))} persons, profile "
                            f"scans {len(whole)} ({len(set(state.clusters(PERSON)) ^ set(whole))} differ, e.g. "
                            f"{sorted(set(state.clusters(PERSON)) ^ set(whole))[:5]})")
        differ = [v.person.cluster_id for views in parts for v in views
                  if (built := state.person_view(v.person.cluster_id)) is None
                  or without_as_of(built) != without_as_of(v)]
        if differ:
            c = differ[0]
            built = state.person_view(c)
            problems.append(f"{len(differ)} scanned person views differ from the views built from segmentation's "
                            f"state, e.g. cluster {c}: built {built and person_digest(built)}, scanned "
                            f"{[person_digest(v) for views in parts for v in views if v.person.cluster_id == c]}")
        accounts = list(prof.ScanAccountViews(profile_pb2.ScanRequest(partition=0, partitions=1), timeout=120))
        if state.clusters(ACCOUNT) != [a.account.cluster_id for a in accounts]:
            problems.append(f"segmentation holds unified records of {len(state.clusters(ACCOUNT))} accounts, "
                            f"profile scans {len(accounts)}")
        differ = [a.account.cluster_id for a in accounts if state.account_view(a.account.cluster_id) != a]
        if differ:
            built = state.account_view(differ[0])
            problems.append(f"{len(differ)} scanned account views differ from the views built from segmentation's "
                            f"state, e.g. cluster {differ[0]}: built {built and account_digest(built)}")
        # One account per id merged by the crosswalk (j % 4 != 3), one per source for the others.
        want_accounts = sum(1 if j % 4 != 3 else len(CRASH_SOURCES) for j in range(data.accounts))
        if len(accounts) != want_accounts:
            problems.append(f"profile scans {len(accounts)} accounts, expected {want_accounts}")

        # --- a sample against the ground truth, GetPerson and the view built from segmentation's state ---
        srng = random.Random(seed + 2)
        mismatches = []
        for i in srng.sample(range(persons), min(200, persons)):
            want = data.truth(i)
            view = prof.GetPerson(entity_request("email", data.email[i]), timeout=10)
            got = _digest_without_ids(person_digest(view))
            if got != want:
                mismatches.append(f"person {i}: GetPerson {got}, expected {want}")
                continue
            built = state.person_view(view.person.cluster_id)
            if built is None or person_digest(built) != person_digest(view):
                mismatches.append(f"person {i}: the view built from segmentation's state is "
                                  f"{built and person_digest(built)}, GetPerson {person_digest(view)}")
            if i in found and person_digest(found[i]) != person_digest(view):
                mismatches.append(f"person {i}: the scan's view differs from GetPerson's")
        if mismatches:
            problems.append(f"{len(mismatches)} of the sampled persons differ, e.g. {mismatches[:3]}")
        won = {j: (j + 1) * 1000 * 2 if j % 4 != 3 else (j + 1) * 1000 for j in range(data.accounts) if j % 3 == 0}
        for j in srng.sample(range(data.accounts), 20):
            acc = prof.GetAccount(entity_request("sourceKey", source_key(f"ACC{j}", CRASH_SOURCES[0])), timeout=10)
            built = state.account_view(acc.account.cluster_id)
            if acc.totals.won_amount != won.get(j, 0) or built is None or built.totals != acc.totals:
                problems.append(f"account ACC{j}: won amount {acc.totals.won_amount} (built from segmentation's "
                                f"state: {built and built.totals.won_amount}), expected {won.get(j, 0)}")
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
        # Each person record marks its cluster's unified record and its PERSON link (to the account), the
        # account record the account's unified record, the event the event: all distinct items.
        pending = 2 * persons + 2
        assert (status.applied_identity_sequence, status.pending_changes, status.sent_changes) == \
            (seq, pending, 0), (
            f"outbox status {status}: expected applied sequence {seq}, {pending} changes pending and none sent (no "
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
        p2_cluster = p2.person.cluster_id
        before = fake.versions()
        resp = prof.DeletePerson(entity_request("email", EMAIL["p2"]), timeout=30)
        pipe.drain(timeout=60)
        left = [(v.person.cluster_id, list(v.person.fragment_keys)) for v in _scan(prof, 0, 1)]
        assert left == [(left[0][0], [K["p1"]])] if left else False, (
            f"after DeletePerson(p2) (answered {resp.fragments_deleted} fragments deleted) profile still holds "
            f"person views {left}")
        state = fake.state()
        held = [(c, list(r.fragment_keys)) for (t, c), r in state.entities.items()
                if t == PERSON and set(r.fragment_keys) & set(P_FRAGMENTS["p2"])]
        assert state.clusters(PERSON) == [left[0][0]] and not held, (
            f"after DeletePerson(p2) segmentation holds unified persons {state.clusters(PERSON)}, those of p2's "
            f"fragments {held}; profile holds {left}")
        gone = fake.entity(PERSON, p2_cluster)
        assert gone is not None and gone.version > before.get(("entity", PERSON, p2_cluster), 0) and \
            not gone.entity.HasField("unified"), f"p2's cluster {p2_cluster} was not sent as gone: {gone}"
        for key in P_FRAGMENTS["p2"]:
            link = fake.link(PERSON, key)
            assert link is not None and link.version > before.get(("link", PERSON, key), 0) and \
                not link.link.present, f"p2's fragment {key} still links its account at segmentation: {link}"
        assert state.persons_of_account(state.links[(PERSON, K["p1"])].to_cluster_id) == [left[0][0]], (
            f"segmentation's state relates {state.persons_of_account(state.links[(PERSON, K['p1'])].to_cluster_id)} "
            f"to p1's account, expected p1 only")
        built = state.person_view(left[0][0])
        p1 = prof.GetPerson(entity_request("email", EMAIL["p1"]), timeout=10)
        assert built is not None and without_as_of(built) == without_as_of(p1), (
            f"p1's view built from segmentation's state {built and person_digest(built)} differs from GetPerson "
            f"{person_digest(p1)}")
        assert not fake.version_regressions and not fake.problems, (
            f"fake segmentation: {fake.version_regressions[:3]} {fake.problems[:3]}")
    finally:
        pipe.close()


# ---------------------------------------------------------------------------------------------------
# 5. Relations and memberships: every link type reaches segmentation, and the views built from its
#    state follow the three account paths, roles, memberships and the event window as profile does
# ---------------------------------------------------------------------------------------------------

APR_COLUMNS = ["accountId", "personId", "role", "isPrimary", "isActive", "lastUpdated", "isDeleted"]
OPR_COLUMNS = ["opportunityId", "personId", "role", "isPrimary", "lastUpdated", "isDeleted"]
CAMPAIGN_COLUMNS = ["campaignId", "name", "type", "status", "lastUpdated", "isDeleted"]
CAMPAIGN_MEMBER_COLUMNS = ["campaignId", "personId", "status", "hasResponded", "lastUpdated", "isDeleted"]
LIST_COLUMNS = ["listId", "name", "lastUpdated", "isDeleted"]
LIST_MEMBER_COLUMNS = ["listId", "personId", "lastUpdated", "isDeleted"]


def test_relations_and_memberships(tmp_path):
    """p1 (account A1 on its record), p2 (no account on its record; an account-person relation to A9, a role on
    O1 of A1), p3 (a role on O9 of A9 only). p1 in campaigns C1 and C2 and list L1, p2 in C1, p3 in L1. p1
    has page views one and three days ago and one 500 days ago (outside the 400-day window); p3 one ten
    days ago. Then p3's role changes and p2's campaign membership and account relation are deleted."""
    _require_binaries()
    fake = FakeSegmentation(fail_rate=0.2, seed=11, forced_failures=2).start()
    pipe = Pipeline(tmp_path, fake, profile_args=["--forward-batch-size", "3"])
    problems: list[str] = []
    src, web = MKTO1, WEB

    def key(*ids: str) -> str:
        return source_key("/".join(ids), src)

    def ev(event_id: str, email: str, days_ago: float):
        return (event_id, None, email, None, "web.webpagedetails.pageViews", rfc3339(now - days_ago * 86400),
                f"https://bodea.example/{event_id}", event_id)

    def by_fragments(records) -> list[tuple[str, ...]]:
        return sorted(tuple(sorted(r.fragment_keys)) for r in records)

    now = time.time()
    try:
        pipe.start()
        ing = pipe.ingestion_stub()
        for s in (src, web):
            ing.CreateSource(ingestion_pb2.CreateSourceRequest(source=s), timeout=10)
        ingest(ing, src, "person", csv_text(PERSON_COLUMNS, [
            ("101", EMAIL["p1"], "Pat", "One", "Contact", "A1", None, TS),
            ("102", EMAIL["p2"], "Paul", "Okafor", "Contact", None, None, TS),
            ("103", EMAIL["p3"], "Mei", "Tanaka", "Contact", None, None, TS)]), key="persons", expect_records=3)
        ingest(ing, src, "account", csv_text(ACCOUNT_COLUMNS, [("A1", "Townsend", "townsend.com", TS),
                                                               ("A9", "Kessler", "kessler.example", TS)]),
               key="accounts", expect_records=2)
        ingest(ing, src, "opportunity", csv_text(OPPORTUNITY_COLUMNS, [
            _opp_row("O1", "A1", "Townsend - Rollout", 100000, TS),
            ("O9", "A9", "Kessler - Pilot", "Proposal", "5000", "USD", "false", "false", "2026-06-30", TS)]),
            key="opps", expect_records=2)
        ingest(ing, src, "accountPersonRelation", csv_text(APR_COLUMNS, [
            ("A9", "102", "Procurement", "true", "true", TS, "false")]), key="apr", expect_records=1)
        ingest(ing, src, "opportunityPersonRelation", csv_text(OPR_COLUMNS, [
            ("O1", "102", "Economic Buyer", "false", TS, "false"),
            ("O9", "103", "Decision Maker", "true", TS, "false")]), key="opr", expect_records=2)
        ingest(ing, src, "campaign", csv_text(CAMPAIGN_COLUMNS, [
            ("C1", "Spring Webinar", "Webinar", "Completed", TS, "false"),
            ("C2", "Executive Dinner", "Event", "Planned", TS, "false")]), key="campaigns", expect_records=2)
        ingest(ing, src, "campaignMember", csv_text(CAMPAIGN_MEMBER_COLUMNS, [
            ("C1", "101", "Attended", "true", TS, "false"),
            ("C2", "101", "Registered", None, TS, "false"),
            ("C1", "102", "Invited", "false", TS, "false")]), key="members", expect_records=3)
        ingest(ing, src, "marketingList", csv_text(LIST_COLUMNS, [("L1", "Buying Committee", TS, "false")]),
               key="lists", expect_records=1)
        ingest(ing, src, "marketingListMember", csv_text(LIST_MEMBER_COLUMNS, [
            ("L1", "101", TS, "false"), ("L1", "103", TS, "false")]), key="list-members", expect_records=2)
        ingest(ing, web, "event", csv_text(EVENT_COLUMNS, [
            ev("e-1", EMAIL["p1"], 3), ev("e-2", EMAIL["p1"], 1), ev("e-old", EMAIL["p1"], 500),
            ev("e-3", EMAIL["p3"], 10)]), key="events", expect_records=4)
        _, _, prof_status = pipe.drain(timeout=60)
        log(f"relations drained; {fake.summary()}")
        prof = pipe.profile_stub()
        P = {p: (source_key(f"10{p[1]}", src),) for p in ("p1", "p2", "p3")}
        A1, A9, O1, O9 = (source_key(i, src) for i in ("A1", "A9", "O1", "O9"))
        C1, C2, L1 = (source_key(i, src) for i in ("C1", "C2", "L1"))
        EV = {e: source_key(e, web) for e in ("e-1", "e-2", "e-old", "e-3")}

        def check(stage: str, want: dict, want_accounts: dict) -> None:
            """Profile's views against the expected relations, and the views built from segmentation's state
            against profile's."""
            state = fake.state()
            for p, (accounts, opportunities, roles, campaigns, lists, events) in want.items():
                v = prof.GetPerson(entity_request("email", EMAIL[p]), timeout=10)
                got = (by_fragments(v.accounts), by_fragments(v.opportunities),
                       [(r.role if r.HasField("role") else None, r.is_primary if r.HasField("is_primary") else None)
                        for r in v.opportunity_roles],
                       [(tuple(c.campaign.fragment_keys), c.status if c.HasField("status") else None,
                         c.has_responded if c.HasField("has_responded") else None) for c in v.campaigns],
                       [tuple(m.list.fragment_keys) for m in v.lists], [e.key for e in v.events])
                expected = ([(a,) for a in accounts], [(o,) for o in opportunities], roles,
                            [((c,), s, r) for c, s, r in campaigns], [(lst,) for lst in lists],
                            [EV[e] for e in events])
                if got != expected:
                    problems.append(f"{stage}: GetPerson({p}) has (accounts, opportunities, roles, campaigns, "
                                    f"lists, events) {got}, expected {expected}")
                built = state.person_view(v.person.cluster_id)
                if built is None or without_as_of(built) != without_as_of(v):
                    problems.append(f"{stage}: {p}'s view built from segmentation's state differs from GetPerson:"
                                    f"\n{built and without_as_of(built)}\nGetPerson:\n{without_as_of(v)}")
            for a, (persons, won, open_) in want_accounts.items():
                v = prof.GetAccount(entity_request("sourceKey", a), timeout=10)
                got = (by_fragments(v.persons), v.totals.won_amount, v.totals.open_amount)
                if got != (sorted(P[p] for p in persons), won, open_):
                    problems.append(f"{stage}: GetAccount({a}) has (persons, won, open) {got}, expected "
                                    f"{persons}, {won}, {open_}")
                built = state.account_view(v.account.cluster_id)
                if built != v:
                    problems.append(f"{stage}: {a}'s view built from segmentation's state differs from GetAccount:"
                                    f"\n{built}\nGetAccount:\n{v}")

        check("after the load", {
            "p1": ([A1], [O1], [], [(C1, "Attended", True), (C2, "Registered", None)], [L1], ["e-2", "e-1"]),
            "p2": (sorted([A1, A9]), sorted([O1, O9]), [("Economic Buyer", False)], [(C1, "Invited", False)], [],
                   []),
            "p3": ([A9], [O9], [("Decision Maker", True)], [], [L1], ["e-3"]),
        }, {A1: (["p1", "p2"], 100000, 0), A9: (["p2", "p3"], 0, 5000)})
        state = fake.state()
        want_links = {(PERSON, P["p1"][0]), (OPPORTUNITY, O1), (OPPORTUNITY, O9),
                      (ACCOUNT_PERSON, key("A9", "102")), (OPPORTUNITY_PERSON, key("O1", "102")),
                      (OPPORTUNITY_PERSON, key("O9", "103")), (CAMPAIGN_MEMBER, key("C1", "101")),
                      (CAMPAIGN_MEMBER, key("C2", "101")), (CAMPAIGN_MEMBER, key("C1", "102")),
                      (MARKETING_LIST_MEMBER, key("L1", "101")), (MARKETING_LIST_MEMBER, key("L1", "103"))}
        if set(state.links) != want_links:
            problems.append(f"segmentation holds the links {sorted(state.links)}, expected {sorted(want_links)}")
        if sorted(state.events) != sorted(EV.values()):
            problems.append(f"segmentation holds the events {sorted(state.events)}, expected all four "
                            f"{sorted(EV.values())} (the old one too: the window is the view's)")
        _fail(problems, pipe, tmp_path)

        # --- p3's role changes; p2's campaign membership and account relation are deleted ---
        before = fake.versions()
        later = "2026-04-20T10:00:00Z"
        ingest(ing, src, "opportunityPersonRelation", csv_text(OPR_COLUMNS, [
            ("O9", "103", "Champion", "false", later, "false")]), key="opr-2", expect_records=1)
        ingest(ing, src, "campaignMember", csv_text(CAMPAIGN_MEMBER_COLUMNS, [
            ("C1", "102", "Invited", "false", later, "true")]), key="members-2", expect_records=1)
        ingest(ing, src, "accountPersonRelation", csv_text(APR_COLUMNS, [
            ("A9", "102", "Procurement", "true", "true", later, "true")]), key="apr-2", expect_records=1)
        _, _, prof_after = pipe.drain(timeout=60)
        log(f"relation changes drained; {fake.summary()}")
        resent = sorted((k for k, version in fake.versions().items() if version > before.get(k, 0)), key=str)
        expected = sorted([("link", OPPORTUNITY_PERSON, key("O9", "103")), ("link", CAMPAIGN_MEMBER,
                           key("C1", "102")), ("link", ACCOUNT_PERSON, key("A9", "102"))], key=str)
        if resent != expected:
            problems.append(f"after three relation records changed segmentation got new versions of {resent}, "
                            f"expected exactly their links {expected}")
        if prof_after.sent_changes - prof_status.sent_changes != 3:
            problems.append(f"profile's sent_changes went from {prof_status.sent_changes} to "
                            f"{prof_after.sent_changes}, expected 3 more (the three links)")
        role = fake.link(OPPORTUNITY_PERSON, key("O9", "103"))
        if role is None or not role.link.present or (role.link.role, role.link.is_primary) != ("Champion", False):
            problems.append(f"segmentation's link of p3's role on O9 is {role and role.link}, expected present, "
                            f"role Champion, not primary")
        for k, t in ((key("C1", "102"), CAMPAIGN_MEMBER), (key("A9", "102"), ACCOUNT_PERSON)):
            held = fake.link(t, k)
            if held is None or held.link.present:
                problems.append(f"segmentation's link of the deleted {k} is {held and held.link}, expected not "
                                f"present")
        check("after the changes", {
            "p1": ([A1], [O1], [], [(C1, "Attended", True), (C2, "Registered", None)], [L1], ["e-2", "e-1"]),
            "p2": ([A1], [O1], [("Economic Buyer", False)], [], [], []),
            "p3": ([A9], [O9], [("Champion", False)], [], [L1], ["e-3"]),
        }, {A1: (["p1", "p2"], 100000, 0), A9: (["p3"], 0, 5000)})
        if fake.version_regressions or fake.problems:
            problems.append(f"fake segmentation: {fake.version_regressions[:3]} {fake.problems[:3]}")
        if not (fake.failed_before and fake.failed_after):
            problems.append(f"the retry paths did not both run: {fake.summary()}")
        _fail(problems, pipe, tmp_path)
    except pytest.fail.Exception:
        raise
    except BaseException:
        log(pipe.diagnostics())
        raise
    finally:
        pipe.close()

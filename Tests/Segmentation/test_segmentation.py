"""Ingestion -> identity -> profile -> segmentation -> (fake) destination, end to end over gRPC, against the
real binaries (cdp-segmentation real, destination a grpcio fake).

Tests (about 25 s in all with the debug builds on 2 cores; 8 s of it waiting for a time window to pass):

* test_running_example_streaming: the Bodea segment of ARCHITECTURE.md §5 (closed-won opportunities of the
  person's accounts summing to more than $1,000,000, and a view of the new product page within a month),
  the same with a $2,000,000 threshold, and an account segment (won amount over $1,000,000) created on
  cdp-segmentation BEFORE the running example is ingested (p1 and p2 in Marketo 1 with account A1, p2 and
  p3 in Marketo 2 with account A2, O1 $200k on A1 and O2 $900k on A2, both closed-won, an MDM crosswalk
  making A1 and A2 one company, p2's page view three days ago); the fake destination fails 30% of its
  calls (the first two for sure: after and before applying). Evaluate before any segment exists is
  FAILED_PRECONDITION. After all four outboxes drained:
  - GetMembers(REALIZED) of the $1M segment is exactly p2 (by the member record's email), of any status
    p2 at version 1 only; GetSegment counts 1; the destination applied exactly one change of it, p2
    realized at version 1 with p2's record; a re-check is scheduled a month after the page view;
  - the $2M segment has no members and sent nothing; the account segment holds the Townsend account
    (one change at the destination), estimates 1 of 1 and explains A2 naming O1 and O2;
  - Explain(p2) matched, its first step the comparison "true (1100000 > 1000000)", naming O1@mkto-1.Marketo
    and O2@mkto-2.Marketo with 200000 and 900000 and the page view w-1@web-1.Web with its url; Explain(p1)
    and Explain(p2) of the $2M segment not matched; Explain as of 40 days later not matched; Explain of an
    unknown email NOT_FOUND;
  - Estimate matches 1 of 3 ($1M, $1,099,999) and 0 of 3 ($2M, $1,100,000, and $1M as of 40 days later);
  - Evaluate of the $1M segment: a job, SUCCEEDED over 3 views with no transitions (nothing sent); a
    batch-mode segment has no members until its own Evaluate (although a new view of p1 streamed in),
    then p1, p2, p3 (the destination gets p1's latest record); Evaluate of every segment: 4 views, nothing
    changes;
  - DeleteSegment of the $1M segment: 1 exited, p2's exit (version 2) reaches the destination;
  - a time re-check: a segment of the pricing page within 2 days, and p1's page view of it 2 days minus
    8 seconds ago: p1 enters at once (the next re-check is due when the view leaves the window); then
    cdp-segmentation is SIGKILLed and restarted, and p1 still exits (version 2) within seconds of the view
    leaving the window, with no new view;
  - every process stops on SIGTERM with status 0.
* test_unhappy_paths: against a cdp-segmentation without --profile or --destination, fed views directly:
  Evaluate with no segments (FAILED_PRECONDITION); CreateSegment with bad PQL (INVALID_ARGUMENT with
  'line 1, column N' and what was expected), with the unknown field person.revenue (INVALID_ARGUMENT
  naming it), of entity type EVENT, rooted at account in a person audience, naming an unknown segment;
  GetSegment / UpdateSegment / DeleteSegment / GetMembers / GetEvaluation / Evaluate / Explain of unknown
  ids (NOT_FOUND); UpdateSegment making an inSegment cycle, of three segments or of one (INVALID_ARGUMENT
  showing the cycle, nothing changed); DeleteSegment of a segment another names (FAILED_PRECONDITION
  naming it, nothing deleted); AcceptViews (re-sent: all stale), members paged by 2, inSegment members,
  the changes waiting in the outbox; GetMembers with garbage page tokens (INVALID_ARGUMENT); AcceptViews
  with a change without a view (INVALID_ARGUMENT, nothing taken); Estimate and Explain
  (FAILED_PRECONDITION: no profile service); a bad definition in Estimate (INVALID_ARGUMENT first).
* test_evaluate_without_profile_is_refused: Evaluate on a segmentation without --profile is refused with
  FAILED_PRECONDITION, like Estimate and Explain.
* test_get_members_page_token_above_int64: GetMembers with page_token 2^64 - 1 or 2^63 answers
  INVALID_ARGUMENT (and the process lives on).
* test_accept_views_ids_above_int64: AcceptViews with a cluster id or version >= 2^63 is refused
  (INVALID_ARGUMENT).
* test_huge_numbers_in_definitions_do_not_crash: CreateSegment of a definition with a number beyond Int in
  an error position, or 'occurs <= 99999999999999999999 days', answers INVALID_ARGUMENT.
* test_estimate_of_an_entity_type_without_segments_is_refused: Estimate with entity_type EVENT or
  OPPORTUNITY is refused like CreateSegment refuses it.
* test_membership_changes_carry_when_they_were_decided: MembershipChange.at is the time segmentation
  decided the change.
* test_auth_token: a cdp-segmentation with --auth-token refuses calls without it or with another token
  (UNAUTHENTICATED), and sends it (as a bearer token) with the membership changes to destination.
* test_segmentation_sigkill: a generated dataset (default 400 persons in Marketo, a fifth also in
  Salesforce by email; three segments: an email domain, a last name, and inSegment of both) in two
  rounds: round 1 ingests the persons, round 2 deletes a ninth of them through profile's DeletePerson and
  changes the last name of a quarter (persons leave and enter the last-name segment). cdp-segmentation is
  SIGKILLed once per round (at fractions of the views profile sent in the round; seeded) and restarted on
  the same data directory and port; profile's relay retries meanwhile, and the fake destination fails 10%
  of calls. At the end: each segment's GetMembers(REALIZED) is exactly the ground truth (the cluster
  profile answers for each matching person's email, with that email in the member record); GetMembers
  (EXITED) agrees; the destination's latest change per (segment, cluster) is realized exactly for those
  members, with the member's version; the destination saw every membership's versions as 1, 2, 3, ... in
  sequence order, exits only of realized memberships and updates (realized again) only with a changed
  record, no (segment, cluster, version) under two sequences,
  sequences strictly increasing once duplicates are dropped, every re-sent sequence identical to its
  first delivery (at-least-once, never a lower version after a higher one); segmentation's sent_changes
  equals the changes applied; every change names its person's email, but the exits of persons erased by
  DeletePerson, which name only the cluster (GetMembers no longer lists them). Then
  a batch job killed right after it started is FAILED (or SUCCEEDED), never left RUNNING, after the
  restart; and a batch job of every segment changes nothing.

Run (Tests/python-env.sh first; the debug binaries must exist):
    .venv/bin/python -m pytest Tests/Segmentation -q -p no:cacheprovider

Environment:
    CDP_INGESTION_BIN / CDP_IDENTITY_BIN / CDP_PROFILE_BIN / CDP_SEGMENTATION_BIN   the binaries
                                       (default .build/debug/...)
    SEGMENTATION_CRASH_PERSONS         persons in the crash test (default 400)
    SEGMENTATION_CRASH_KILLS           SIGKILLs of cdp-segmentation, alternating between the rounds (default 2)
    SEGMENTATION_CRASH_SEED            seed of the data, the kill points and the fake's failures (default 11)
    SEGMENTATION_CRASH_FAIL_RATE       the fake destination's failure rate in the crash test (default 0.1)
    SEGMENTATION_EXAMPLE_FAIL_RATE     ... in the running example (default 0.3)
"""

from __future__ import annotations

import os
import queue
import random
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from segmentation_support import (  # noqa: E402
    ACCOUNT_COLUMNS, ALL_BINARIES, E, EVENT_COLUMNS, EXITED, JOB_STATE, MDM_COLUMNS, OPPORTUNITY_COLUMNS,
    PERSON_COLUMNS, REALIZED, SEGMENTATION_BIN, FakeDestination, SegmentationPipeline, Service, call_with_retry,
    channel, csv_text, describe, diagnostics, entity_request, expect_error, ident, ingest, ingestion_pb2, log,
    member_emails, members, model_pb2, profile_pb2, profile_pb2_grpc, rfc3339, segmentation_pb2,
    segmentation_pb2_grpc, source, source_key, wait_job,
)

INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def _env(name: str, default, conv=int):
    v = os.environ.get(name)
    return conv(v) if v not in (None, "") else default


def _require_binaries():
    for b, env in ALL_BINARIES:
        if not b.exists():
            pytest.fail(f"{b.name} not found at {b} (build it, or set {env})", pytrace=False)


def _fail(problems: list[str], pipe: SegmentationPipeline, tmp_path: Path, extra: str = "") -> None:
    if problems:
        pytest.fail(f"{len(problems)} problem(s):\n- " + "\n- ".join(problems) + (f"\n{extra}" if extra else "") +
                    f"\n{pipe.diagnostics()}\n(data and logs in {tmp_path})", pytrace=False)


def _create(stub, name: str, pql: str, mode=segmentation_pb2.EVALUATION_MODE_STREAMING):
    return stub.CreateSegment(segmentation_pb2.CreateSegmentRequest(name=name, pql=pql, mode=mode), timeout=10)


# ---------------------------------------------------------------------------------------------------
# 1. The running example, streaming
# ---------------------------------------------------------------------------------------------------

MKTO1, MKTO2, MDM1, WEB = source("Marketo:mkto-1"), source("Marketo:mkto-2"), source("MDM:mdm-1"), source("Web:web-1")
TS = "2026-04-18T10:00:00Z"
K = {"O1": source_key("O1", MKTO1), "O2": source_key("O2", MKTO2), "ev": source_key("w-1", WEB)}
EMAIL = {"p1": "p1@townsend.com", "p2": "p2@townsend.com", "p3": "p3@townsend.com"}
NEW_PRODUCT = "https://bodea.example/new-product"


def bodea(threshold: int = 1_000_000) -> str:
    return (f"(sum O.amount over O from person.accounts.opportunities where (O.isClosed = true and O.isWon = true)) "
            f"> {threshold}\n"
            f"and exists E from xEvent where (E.eventType = \"web.webpagedetails.pageViews\" and E.url = "
            f"\"{NEW_PRODUCT}\" and E.timestamp occurs <= 1 months before now)")


ACCOUNT_PQL = ("(sum O.amount over O from account.opportunities where (O.isClosed = true and O.isWon = true)) "
               "> 1000000")


def _opp_row(opp_id, account, name, amount, updated):
    return (opp_id, account, name, "Closed Won", str(amount), "USD", "true", "true", "2026-03-31", updated)


def ingest_running_example(ing, viewed_at: str) -> None:
    """The Bodea story in canonical CSV, the page view last."""
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
    ingest(ing, WEB, "event", csv_text(EVENT_COLUMNS, [
        ("w-1", None, EMAIL["p2"], None, "web.webpagedetails.pageViews", viewed_at, NEW_PRODUCT, "New Product")]),
        key="web-events", expect_records=1)


def _steps_text(explanation) -> str:
    return "; ".join(f"[{s.text!r} = {s.result} ({s.line}:{s.column}) "
                     f"{[(e.kind, e.key, e.value) for e in s.entities]}]" for s in explanation.steps)


def test_running_example_streaming(tmp_path):
    _require_binaries()
    t_start = time.monotonic()
    fail_rate = _env("SEGMENTATION_EXAMPLE_FAIL_RATE", 0.3, float)
    dest = FakeDestination(fail_rate=fail_rate, seed=3, forced_failures=2).start()
    # One change per call to destination, one view per call to segmentation: failures land between them.
    pipe = SegmentationPipeline(tmp_path, dest, segmentation_args=["--forward-batch-size", "1"],
                                profile_args=["--forward-batch-size", "1"])
    problems: list[str] = []
    try:
        pipe.start()
        seg = pipe.segmentation_stub()
        msg = expect_error(lambda: seg.Evaluate(segmentation_pb2.EvaluateRequest(), timeout=10), FAILED_PRECONDITION,
                           "Evaluate before any segment exists")
        assert "no segments" in msg, f"Evaluate before any segment exists: {msg!r}"
        s1 = _create(seg, "Bodea: $1M won and the new product page", bodea())
        s2 = _create(seg, "Bodea: $2M won and the new product page", bodea(2_000_000))
        s3 = seg.CreateSegment(segmentation_pb2.CreateSegmentRequest(
            name="accounts with more than $1M won", pql=ACCOUNT_PQL, entity_type=E.ENTITY_TYPE_ACCOUNT), timeout=10)
        assert (s1.id, s2.id, s3.id) == ("s1", "s2", "s3"), f"segment ids {s1.id!r}, {s2.id!r}, {s3.id!r}"
        assert s1.depends_on_time and s1.entity_type == E.ENTITY_TYPE_PERSON and \
            s1.mode == segmentation_pb2.EVALUATION_MODE_STREAMING and s1.pql == bodea(), (
                f"CreateSegment answered {s1}")

        viewed_at = int(time.time()) - 3 * 86400
        ing = pipe.ingestion_stub()
        ingest_running_example(ing, rfc3339(viewed_at))
        t0 = time.monotonic()
        *_, seg_status = pipe.drain(timeout=60)
        log(f"running example drained in {time.monotonic() - t0:.1f}s; {dest.summary()}")
        # p2's membership depends on the page view staying within a month: a re-check is due then.
        due = seg_status.next_recheck.seconds
        if seg_status.scheduled_rechecks < 1 or not viewed_at + 28 * 86400 <= due <= viewed_at + 32 * 86400:
            problems.append(f"segmentation's outbox status {seg_status}: expected a re-check scheduled a month "
                            f"after the page view of {rfc3339(viewed_at)}")

        prof = pipe.profile_stub()
        clusters = {p: prof.GetPerson(entity_request("email", e), timeout=10).person.cluster_id
                    for p, e in EMAIL.items()}
        account = prof.GetAccount(entity_request("sourceKey", source_key("A1", MKTO1)), timeout=10).account.cluster_id

        # --- the members ---
        got = member_emails(members(seg, s1.id, REALIZED))
        if got != {clusters["p2"]: EMAIL["p2"]}:
            problems.append(f"GetMembers({s1.id}, REALIZED) is {got}, expected only p2 {{{clusters['p2']}: "
                            f"{EMAIL['p2']!r}}}")
        everyone = members(seg, s1.id)
        listed = [(m.cluster_id, m.status, m.version) for m in everyone]
        if listed != [(clusters["p2"], REALIZED, 1)]:
            problems.append(f"GetMembers({s1.id}) of any status is {listed} (cluster, status, version), expected p2 "
                            f"realized at version 1 and nobody else")
        elif not everyone[0].record.fragment_keys or everyone[0].entity_type != E.ENTITY_TYPE_PERSON:
            problems.append(f"p2's member record: {everyone[0]}")
        counted = seg.GetSegment(segmentation_pb2.GetSegmentRequest(id=s1.id), timeout=10).realized
        if counted != 1:
            problems.append(f"GetSegment({s1.id}).realized is {counted}, expected 1")
        if members(seg, s2.id):
            problems.append(f"GetMembers({s2.id}) ($2M threshold) lists {member_emails(members(seg, s2.id))}, "
                            f"expected nobody")

        # --- what destination got ---
        applied = dest.snapshot()
        mine = [c for c in applied if c.segment_id == s1.id]
        if len(mine) != 1 or not mine[0].realized or mine[0].cluster_id != clusters["p2"] or \
                mine[0].version != 1 or mine[0].record.record.person.email != EMAIL["p2"] or \
                mine[0].entity_type != E.ENTITY_TYPE_PERSON:
            problems.append(f"destination applied {[describe(c) for c in mine]} for {s1.id}, expected exactly one "
                            f"change: p2 (cluster {clusters['p2']}, {EMAIL['p2']}) realized at version 1")
        others = [describe(c) for c in applied if c.segment_id not in (s1.id, s3.id)]
        if others:
            problems.append(f"destination applied changes of other segments: {others}")

        # --- the account audience: Townsend once A1 and A2 are one company ($1.1M won) ---
        got = [(m.cluster_id, m.status, m.version, m.entity_type, m.record.record.account.name)
               for m in members(seg, s3.id)]
        if [g[:4] for g in got] != [(account, REALIZED, 1, E.ENTITY_TYPE_ACCOUNT)] or \
                got[0][4] not in ("Townsend, Inc.", "Townsend Inc"):
            problems.append(f"GetMembers({s3.id}) (accounts) is {got}, expected the Townsend account {account} "
                            f"realized at version 1")
        at_dest = [c for c in applied if c.segment_id == s3.id]
        if [(c.cluster_id, c.realized, c.version, c.entity_type) for c in at_dest] != \
                [(account, True, 1, E.ENTITY_TYPE_ACCOUNT)]:
            problems.append(f"destination applied {[describe(c) for c in at_dest]} for {s3.id}, expected the "
                            f"Townsend account {account} realized once")
        est = seg.Estimate(segmentation_pb2.EstimateRequest(pql=ACCOUNT_PQL, entity_type=E.ENTITY_TYPE_ACCOUNT),
                           timeout=30)
        if (est.matched, est.evaluated) != (1, 1):
            problems.append(f"Estimate of the account definition: matched {est.matched} of {est.evaluated}, "
                            f"expected 1 of 1")
        why = seg.Explain(segmentation_pb2.ExplainRequest(
            segment_id=s3.id, identity=ident("sourceKey", source_key("A2", MKTO2))), timeout=10)
        opps = sorted((e.key, e.value) for st in why.steps for e in st.entities)
        if not why.matched or why.cluster_id != account or opps != [(K["O1"], "200000"), (K["O2"], "900000")]:
            problems.append(f"Explain({s3.id}, A2): matched {why.matched}, cluster {why.cluster_id}; expected "
                            f"matched, cluster {account}, naming O1 and O2: {_steps_text(why)}")
        if dest.senders != {"segmentation"}:
            problems.append(f"destination's senders are {sorted(dest.senders)}, expected segmentation")
        if fail_rate > 0 and not (dest.failed_before and dest.failed_after and dest.duplicates):
            problems.append(f"the retry paths did not both run (or no re-sent change was skipped): {dest.summary()}")
        if dest.problems:
            problems.append(f"destination saw {dest.problems[:5]}")

        # --- explanations ---
        explanation = seg.Explain(segmentation_pb2.ExplainRequest(segment_id=s1.id,
                                                                   identity=ident("email", EMAIL["p2"])), timeout=10)
        steps = _steps_text(explanation)
        if not explanation.matched or explanation.cluster_id != clusters["p2"]:
            problems.append(f"Explain({s1.id}, p2): matched {explanation.matched}, cluster {explanation.cluster_id}; "
                            f"expected matched, cluster {clusters['p2']}; steps {steps}")
        opps = {(e.key, e.value) for s in explanation.steps for e in s.entities if e.kind == "opportunity"}
        if opps != {(K["O1"], "200000"), (K["O2"], "900000")}:
            problems.append(f"Explain({s1.id}, p2) names opportunities {sorted(opps)}, expected {K['O1']} with "
                            f"200000 and {K['O2']} with 900000; steps {steps}")
        events = [(e.key, e.label) for s in explanation.steps for e in s.entities if e.kind == "event"]
        if len(events) != 1 or events[0][0] != K["ev"] or NEW_PRODUCT not in events[0][1]:
            problems.append(f"Explain({s1.id}, p2) names events {events}, expected the page view {K['ev']} of "
                            f"{NEW_PRODUCT}; steps {steps}")
        sums = [s for s in explanation.steps if s.text.startswith("sum O.amount") and s.result == "1100000"]
        if not sums:
            problems.append(f"Explain({s1.id}, p2) has no step summing O.amount to 1100000: {steps}")
        if not explanation.steps or not explanation.steps[0].text.endswith("> 1000000") or \
                explanation.steps[0].result != "true (1100000 > 1000000)" or explanation.steps[0].line != 1:
            problems.append(f"Explain({s1.id}, p2): the first (outermost) step is not the comparison with 1000000 "
                            f"on line 1, true (1100000 > 1000000): {steps}")
        p1 = seg.Explain(segmentation_pb2.ExplainRequest(segment_id=s1.id, identity=ident("email", EMAIL["p1"])),
                         timeout=10)
        if p1.matched or p1.cluster_id != clusters["p1"]:
            problems.append(f"Explain({s1.id}, p1): matched {p1.matched} for cluster {p1.cluster_id}, expected not "
                            f"matched (p1 viewed nothing): {_steps_text(p1)}")
        high = seg.Explain(segmentation_pb2.ExplainRequest(segment_id=s2.id, identity=ident("email", EMAIL["p2"])),
                           timeout=10)
        if high.matched or not any(s.text.rstrip().endswith("> 2000000") and s.result.startswith("false")
                                   for s in high.steps):
            problems.append(f"Explain({s2.id}, p2): matched {high.matched}; expected not matched with the comparison "
                            f"with 2000000 false: {_steps_text(high)}")
        msg = expect_error(lambda: seg.Explain(segmentation_pb2.ExplainRequest(
            segment_id=s1.id, identity=ident("email", "nobody@townsend.com")), timeout=10), NOT_FOUND,
            "Explain of an unknown email")
        if "nobody@townsend.com" not in msg:
            problems.append(f"Explain of an unknown email: NOT_FOUND does not name it: {msg!r}")

        later = segmentation_pb2.ExplainRequest(segment_id=s1.id, identity=ident("email", EMAIL["p2"]))
        later.as_of.FromSeconds(viewed_at + 40 * 86400)
        later = seg.Explain(later, timeout=10)
        if later.matched or later.as_of.seconds != viewed_at + 40 * 86400:
            problems.append(f"Explain({s1.id}, p2) as of 40 days after the page view: matched {later.matched} (as of "
                            f"{later.as_of.seconds}), expected not matched (the view left the month): "
                            f"{_steps_text(later)}")

        # --- estimates (now, and as of 40 days after the page view) ---
        for pql, matched in ((bodea(), 1), (bodea(2_000_000), 0), (bodea(1_099_999), 1), (bodea(1_100_000), 0)):
            est = seg.Estimate(segmentation_pb2.EstimateRequest(pql=pql), timeout=30)
            if (est.matched, est.evaluated) != (matched, 3):
                problems.append(f"Estimate({pql.splitlines()[0]!r}...) matched {est.matched} of {est.evaluated}, "
                                f"expected {matched} of 3")
        req = segmentation_pb2.EstimateRequest(pql=bodea())
        req.as_of.FromSeconds(viewed_at + 40 * 86400)
        est = seg.Estimate(req, timeout=30)
        if (est.matched, est.evaluated, est.as_of.seconds) != (0, 3, viewed_at + 40 * 86400):
            problems.append(f"Estimate(bodea) as of 40 days after the page view: matched {est.matched} of "
                            f"{est.evaluated} as of {est.as_of.seconds}; expected 0 of 3 as of "
                            f"{viewed_at + 40 * 86400}")
        _fail(problems, pipe, tmp_path)

        # --- batch jobs: of the Bodea segment (the same answer, nothing changes), of a batch-mode segment
        #     (filled by the job only), then of every segment (nothing changes) ---
        def run_job(ids: list[str], evaluated: int, realized: int, what: str):
            job = seg.Evaluate(segmentation_pb2.EvaluateRequest(segment_ids=ids), timeout=10)
            want_ids = ids or [s.id for s in seg.ListSegments(segmentation_pb2.ListSegmentsRequest(),
                                                              timeout=10).segments]
            if not job.id or job.state not in (segmentation_pb2.JOB_STATE_RUNNING,
                                               segmentation_pb2.JOB_STATE_SUCCEEDED) or \
                    sorted(job.segment_ids) != sorted(want_ids) or (job.partition, job.partitions) != (0, 1):
                problems.append(f"Evaluate({ids}) answered {job}; expected a running job of {want_ids}, partition "
                                f"0 of 1")
            done = wait_job(seg, job.id)
            if done.state != segmentation_pb2.JOB_STATE_SUCCEEDED or done.evaluated != evaluated or \
                    (done.realized, done.exited) != (realized, 0) or not done.HasField("finished_at"):
                problems.append(f"evaluation {job.id} of {want_ids} ended {JOB_STATE.get(done.state)} "
                                f"({done.error!r}): evaluated {done.evaluated}, realized {done.realized}, exited "
                                f"{done.exited}; expected SUCCEEDED over {evaluated} views, {realized} realized "
                                f"and none exited ({what})")
            pipe.drain(timeout=30)

        sent_before = len(dest.snapshot())
        run_job([s1.id], 3, 0, "streaming already holds p2")
        if member_emails(members(seg, s1.id, REALIZED)) != {clusters["p2"]: EMAIL["p2"]} or members(seg, s2.id):
            problems.append(f"after the batch job: {s1.id} has {member_emails(members(seg, s1.id, REALIZED))}, "
                            f"{s2.id} has {member_emails(members(seg, s2.id))}")
        if len(dest.snapshot()) != sent_before:
            problems.append(f"the batch job sent {[describe(c) for c in dest.snapshot()[sent_before:]]}, expected "
                            f"nothing")
        # A new view streams in (p1's name changes), then a batch-mode segment is created: the job its creation
        # starts evaluates every existing view, so it has its members without a manual Evaluate.
        ingest(ing, MKTO1, "person", csv_text(PERSON_COLUMNS, [
            ("101", EMAIL["p1"], "Patricia", "One", "Contact", "A1", None, "2026-04-19T10:00:00Z")]),
            key="m1-persons-2", expect_records=1)
        pipe.drain(timeout=30)
        townsend = seg.CreateSegment(segmentation_pb2.CreateSegmentRequest(
            name="everyone at Townsend (batch)", pql='person.email.endsWith("@townsend.com")',
            mode=segmentation_pb2.EVALUATION_MODE_BATCH), timeout=10)
        if not townsend.evaluation_job_id:
            problems.append(f"CreateSegment answered {townsend}: no evaluation_job_id")
        else:
            first = wait_job(seg, townsend.evaluation_job_id)
            if first.state != segmentation_pb2.JOB_STATE_SUCCEEDED or list(first.segment_ids) != [townsend.id] or \
                    (first.evaluated, first.realized, first.exited) != (3, 3, 0):
                problems.append(f"the creation job of {townsend.id}: {first}; expected SUCCEEDED over 3 views, "
                                f"3 realized (p1, p2 and p3)")
        pipe.drain(timeout=30)
        run_job([townsend.id], 3, 0, "the creation job already entered p1, p2 and p3")
        want = {clusters[p]: e for p, e in EMAIL.items()}
        if member_emails(members(seg, townsend.id, REALIZED)) != want:
            problems.append(f"GetMembers({townsend.id}) after its batch job: "
                            f"{member_emails(members(seg, townsend.id, REALIZED))}, expected {want}")
        sent = {c.cluster_id: c.record.record.person for c in dest.snapshot() if c.segment_id == townsend.id}
        if {c: p.email for c, p in sent.items()} != want or sent[clusters["p1"]].first_name != "Patricia":
            problems.append(f"destination got {[(c, p.email, p.first_name) for c, p in sent.items()]} for "
                            f"{townsend.id}, expected p1 (Patricia, the latest record), p2 and p3 realized")
        sent_before = len(dest.snapshot())
        run_job([], 4, 0, "3 persons and 1 account; every segment already holds the truth")
        if len(dest.snapshot()) != sent_before:
            problems.append(f"the batch job of every segment sent "
                            f"{[describe(c) for c in dest.snapshot()[sent_before:]]}, expected nothing")
        _fail(problems, pipe, tmp_path)

        # --- deleting the segment: p2 exits ---
        deleted = seg.DeleteSegment(segmentation_pb2.DeleteSegmentRequest(id=s1.id), timeout=10)
        if deleted.exited != 1:
            problems.append(f"DeleteSegment({s1.id}) answered {deleted.exited} exited, expected 1 (p2)")
        expect_error(lambda: seg.GetSegment(segmentation_pb2.GetSegmentRequest(id=s1.id), timeout=10), NOT_FOUND,
                     "GetSegment of the deleted segment")
        pipe.drain(timeout=30)
        last = dest.latest_of(s1.id).get(clusters["p2"])
        if last is None or last.realized or last.version != 2:
            problems.append(f"after DeleteSegment({s1.id}) destination holds {last and describe(last)} for p2, "
                            f"expected an exit at version 2")
        listed = [s.id for s in seg.ListSegments(segmentation_pb2.ListSegmentsRequest(), timeout=10).segments]
        if listed != [s2.id, s3.id, townsend.id]:
            problems.append(f"ListSegments after the delete: {listed}, expected {[s2.id, s3.id, townsend.id]}")
        if dest.problems:
            problems.append(f"destination saw {dest.problems[:5]}")

        _fail(problems, pipe, tmp_path)

        # --- a time re-check: p1 views a page that leaves a two-day window a few seconds later; p1 enters
        #     the segment as the view streams in and exits when the re-check comes due, with no new view,
        #     although segmentation was SIGKILLed and restarted in between ---
        margin = 8
        window = _create(seg, "pricing page within two days", 'exists E from xEvent where (E.url = '
                         '"https://bodea.example/pricing" and E.timestamp occurs <= 2 days before now)')
        if not window.depends_on_time:
            problems.append(f"{window.id} does not depend on time: {window}")
        recent = int(time.time()) - 2 * 86400 + margin
        ingest(ing, WEB, "event", csv_text(EVENT_COLUMNS, [
            ("w-2", None, EMAIL["p1"], None, "web.webpagedetails.pageViews", rfc3339(recent),
             "https://bodea.example/pricing", "Pricing")]), key="web-events-2", expect_records=1)
        pipe.drain(timeout=margin)
        entered = dest.latest_of(window.id)
        status = pipe.segmentation_status()
        if [(c, e.version, e.realized) for c, e in entered.items()] != [(clusters["p1"], 1, True)]:
            problems.append(f"{window.id} at the destination while p1's page view is within two days: "
                            f"{[describe(e) for e in entered.values()]}, expected p1 realized (version 1)")
        elif abs(status.next_recheck.seconds - (recent + 2 * 86400)) > 1:
            problems.append(f"while p1 is in {window.id}, the next re-check is due at {status.next_recheck.seconds}, "
                            f"expected {recent + 2 * 86400} (the page view leaving the two days)")
        # The re-check is durable: it comes due in a new process.
        pipe.segmentation.kill()
        pipe.restart_segmentation()
        deadline = recent + 2 * 86400 + 8  # the scheduler looks every second; then the relay sends
        while time.time() < deadline:
            left = dest.latest_of(window.id).get(clusters["p1"])
            if left is not None and not left.realized:
                break
            time.sleep(0.2)
        left = dest.latest_of(window.id).get(clusters["p1"])
        exit_delay = time.time() - (recent + 2 * 86400)
        if left is None or left.realized or left.version != 2 or members(seg, window.id, REALIZED):
            problems.append(f"{window.id} {exit_delay:.1f}s after p1's page view left the two days: destination holds "
                            f"{left and describe(left)}, GetMembers(REALIZED) "
                            f"{member_emails(members(seg, window.id, REALIZED))}; expected p1 exited at version 2")
        else:
            log(f"p1 exited {window.id} {exit_delay:.1f}s after the page view left the window (re-check)")
        if dest.problems:
            problems.append(f"destination saw {dest.problems[:5]}")

        for s in reversed(pipe.services):
            if not s.stop():
                problems.append(f"{s.name} did not exit with status 0 on SIGTERM ({s.exit_description()})")
        log(f"running example total {time.monotonic() - t_start:.1f}s; {dest.summary()}")
        _fail(problems, pipe, tmp_path)
    except pytest.fail.Exception:
        raise
    except BaseException:
        log(pipe.diagnostics())
        raise
    finally:
        pipe.close()


# ---------------------------------------------------------------------------------------------------
# 2. Unhappy paths against a cdp-segmentation without --profile or --destination, fed directly
# ---------------------------------------------------------------------------------------------------

def _view_change(cluster: int, email: str, version: int):
    key = f"P{cluster}@t-1.Test"
    return segmentation_pb2.ViewChange(version=version, person=profile_pb2.PersonView(
        person=profile_pb2.UnifiedRecord(cluster_id=cluster, fragment_keys=[key], record=model_pb2.Record(
            key=key, person=model_pb2.Person(person_id=f"P{cluster}", email=email)))))


def _standalone_segmentation(tmp_path: Path) -> Service:
    return Service("segmentation", SEGMENTATION_BIN, "CDP_SEGMENTATION_BIN", tmp_path / "segmentation-data",
                   tmp_path, [])


def test_unhappy_paths(tmp_path):
    _require_binaries()
    svc = _standalone_segmentation(tmp_path)
    ch = None
    try:
        svc.start(0)
        ch = channel(svc.address)
        seg = segmentation_pb2_grpc.SegmentationStub(ch)
        Req = segmentation_pb2

        expect_error(lambda: seg.Evaluate(Req.EvaluateRequest(), timeout=10), FAILED_PRECONDITION,
                     "Evaluate with no segments at all (and no profile)")

        # --- bad definitions: the position and the problem ---
        for pql, column, expected in (
                ('person.email = ', 16, "expected a value"),
                ('person.email = "a@x.example" andd person.score > 1', 30, "expected 'and', 'or' or the end"),
                ('', 1, "expected a value")):
            msg = expect_error(lambda: _create(seg, "bad", pql), INVALID, f"CreateSegment({pql!r})")
            assert f"line 1, column {column}" in msg and expected in msg, (
                f"CreateSegment({pql!r}): the message {msg!r} does not say 'line 1, column {column}' and "
                f"{expected!r}")
        msg = expect_error(lambda: _create(seg, "bad", "person.revenue > 1000000"), INVALID,
                           "CreateSegment naming person.revenue")
        assert "'revenue'" in msg and "line 1, column 7" in msg, (
            f"CreateSegment naming person.revenue: the message does not name the field and its place: {msg!r}")
        msg = expect_error(lambda: seg.CreateSegment(Req.CreateSegmentRequest(
            name="events", pql="person.score > 1", entity_type=E.ENTITY_TYPE_EVENT), timeout=10), INVALID,
            "CreateSegment of entity type EVENT")
        assert "PERSON" in msg and "ACCOUNT" in msg, f"CreateSegment of EVENT does not name the valid types: {msg!r}"
        msg = expect_error(lambda: _create(seg, "bad", 'account.name = "x"'), INVALID,
                           "CreateSegment rooted at account in a person audience")
        listed = seg.ListSegments(Req.ListSegmentsRequest(), timeout=10).segments
        assert not listed, f"refused definitions were saved: {[(s.id, s.pql) for s in listed]}"

        # --- unknown ids ---
        a = _create(seg, "a", 'person.email.endsWith("@a.example")')
        b = _create(seg, "b", f'inSegment("{a.id}") and person.email.startsWith("u1")')
        c = _create(seg, "c", f'inSegment("{b.id}")')
        assert (a.id, b.id, c.id) == ("s1", "s2", "s3") and list(b.depends_on) == [a.id], (
            f"created {a.id}, {b.id} (depends on {list(b.depends_on)}), {c.id}")
        for what, fn in (
                ("GetSegment(s99)", lambda: seg.GetSegment(Req.GetSegmentRequest(id="s99"), timeout=10)),
                ("GetSegment('')", lambda: seg.GetSegment(Req.GetSegmentRequest(), timeout=10)),
                ("UpdateSegment(s99)", lambda: seg.UpdateSegment(Req.UpdateSegmentRequest(id="s99", name="x"),
                                                                 timeout=10)),
                ("DeleteSegment(s99)", lambda: seg.DeleteSegment(Req.DeleteSegmentRequest(id="s99"), timeout=10)),
                ("GetMembers(s99)", lambda: seg.GetMembers(Req.GetMembersRequest(segment_id="s99"), timeout=10)),
                ("GetEvaluation(job-99)", lambda: seg.GetEvaluation(Req.GetEvaluationRequest(id="job-99"),
                                                                    timeout=10)),
                ("Evaluate([s99])", lambda: seg.Evaluate(Req.EvaluateRequest(segment_ids=["s99"]), timeout=10)),
                ("Explain(s99)", lambda: seg.Explain(Req.ExplainRequest(segment_id="s99", identity=ident(
                    "email", "u3@a.example")), timeout=10))):
            msg = expect_error(fn, NOT_FOUND, what)
        msg = expect_error(lambda: seg.GetSegment(Req.GetSegmentRequest(id="s99"), timeout=10), NOT_FOUND,
                           "GetSegment(s99)")
        assert "s99" in msg, f"GetSegment(s99): NOT_FOUND does not name the id: {msg!r}"
        msg = expect_error(lambda: _create(seg, "d", 'inSegment("s99")'), INVALID, "CreateSegment naming s99")
        assert "s99" in msg, f"CreateSegment naming an unknown segment: {msg!r}"

        # --- cycles and dependents ---
        for pql, want in ((f'inSegment("{c.id}")', f"{a.id} → {c.id} → {b.id} → {a.id}"),
                          (f'inSegment("{a.id}")', f"{a.id} → {a.id}")):
            msg = expect_error(lambda: seg.UpdateSegment(Req.UpdateSegmentRequest(id=a.id, pql=pql), timeout=10),
                               INVALID, f"UpdateSegment({a.id}, {pql!r})")
            assert "cycle" in msg and want in msg, f"UpdateSegment({a.id}, {pql!r}): {msg!r} does not show the cycle " \
                                                   f"{want}"
        kept = seg.GetSegment(Req.GetSegmentRequest(id=a.id), timeout=10)
        assert kept.pql == a.pql and not kept.depends_on, f"a refused update changed {a.id}: {kept}"
        msg = expect_error(lambda: seg.DeleteSegment(Req.DeleteSegmentRequest(id=a.id), timeout=10),
                           FAILED_PRECONDITION, f"DeleteSegment({a.id}), named by {b.id}")
        assert b.id in msg, f"DeleteSegment({a.id}): the message does not name {b.id}: {msg!r}"
        assert [s.id for s in seg.ListSegments(Req.ListSegmentsRequest(), timeout=10).segments] == \
            [a.id, b.id, c.id], "a refused DeleteSegment deleted something"

        # --- views fed directly (no profile): memberships wait in the outbox (no destination) ---
        changes = [_view_change(n, f"u{n}@{'a' if n % 2 else 'b'}.example", 10) for n in range(3, 15)]
        first = seg.AcceptViews(Req.AcceptViewsRequest(sender="test", changes=changes), timeout=10)
        again = seg.AcceptViews(Req.AcceptViewsRequest(sender="test", changes=changes), timeout=10)
        assert (first.accepted, first.stale) == (12, 0) and (again.accepted, again.stale) == (0, 12), (
            f"AcceptViews answered {first} and, re-sent, {again}: expected 12 accepted, then 12 stale")
        want_a = {n: f"u{n}@a.example" for n in range(3, 15, 2)}
        got = member_emails(members(seg, a.id, REALIZED, page_size=2))
        assert got == want_a, f"GetMembers({a.id}) in pages of 2: {got}, expected {want_a}"
        got = member_emails(members(seg, b.id, REALIZED))
        assert got == {11: "u11@a.example", 13: "u13@a.example"}, f"GetMembers({b.id}) (inSegment): {got}"
        assert member_emails(members(seg, c.id)) == got, f"GetMembers({c.id}) differs from {b.id}'s"
        status = seg.GetOutboxStatus(Req.GetOutboxStatusRequest(), timeout=10)
        assert status.pending_changes == 6 + 2 + 2 and status.sent_changes == 0, (
            f"outbox status {status}: expected 10 realized changes waiting (no --destination)")

        # --- bad page tokens ---
        for token in ("garbage", "-1", "1.5", "s1"):
            msg = expect_error(lambda: seg.GetMembers(Req.GetMembersRequest(segment_id=a.id, page_token=token),
                                                      timeout=10), INVALID, f"GetMembers with page_token {token!r}")
            assert "page_token" in msg, f"GetMembers with page_token {token!r}: {msg!r}"

        # --- AcceptViews with a change that carries no view: nothing taken ---
        msg = expect_error(lambda: seg.AcceptViews(Req.AcceptViewsRequest(sender="test", changes=[
            _view_change(21, "u21@a.example", 30), Req.ViewChange(version=31)]), timeout=10), INVALID,
            "AcceptViews with a change without a view")
        assert 21 not in member_emails(members(seg, a.id)), "a refused AcceptViews call realized a member"

        # --- everything that reads profile ---
        msg = expect_error(lambda: seg.Estimate(Req.EstimateRequest(pql="person.score > 1"), timeout=10),
                           FAILED_PRECONDITION, "Estimate without --profile")
        assert "profile" in msg, f"Estimate without --profile: {msg!r}"
        msg = expect_error(lambda: seg.Estimate(Req.EstimateRequest(pql="person.score >"), timeout=10), INVALID,
                           "Estimate of a bad definition (checked before profile is needed)")
        assert "line 1, column 15" in msg, f"Estimate of a bad definition: {msg!r}"
        msg = expect_error(lambda: seg.Explain(Req.ExplainRequest(segment_id=a.id, identity=ident(
            "email", "u3@a.example")), timeout=10), FAILED_PRECONDITION, "Explain without --profile")
        assert "profile" in msg, f"Explain without --profile: {msg!r}"
        assert svc.alive(), f"segmentation died during the unhappy paths: {svc.exit_description()}"
        assert svc.stop(), f"segmentation did not exit with status 0 on SIGTERM ({svc.exit_description()})"
    except BaseException:
        log(diagnostics([svc]))
        raise
    finally:
        if ch is not None:
            ch.close()
        if svc.alive():
            svc.kill()


def test_evaluate_without_profile_is_refused(tmp_path):
    _require_binaries()
    svc = _standalone_segmentation(tmp_path)
    ch = None
    try:
        svc.start(0)
        ch = channel(svc.address)
        seg = segmentation_pb2_grpc.SegmentationStub(ch)
        s1 = _create(seg, "a", 'person.email.endsWith("@a.example")')
        try:
            msg = expect_error(lambda: seg.Evaluate(segmentation_pb2.EvaluateRequest(segment_ids=[s1.id]),
                                                    timeout=10), FAILED_PRECONDITION, "Evaluate without --profile")
        except AssertionError as e:
            jobs = []
            for n in range(1, 4):
                try:
                    job = wait_job(seg, f"job-{n}", timeout=10)
                    jobs.append(f"job-{n} {JOB_STATE.get(job.state)} error {job.error!r}")
                except grpc.RpcError:
                    break
            raise AssertionError(f"{e}; jobs: {jobs}") from None
        assert "profile" in msg, f"Evaluate without --profile: {msg!r}"
    finally:
        if ch is not None:
            ch.close()
        if svc.alive():
            svc.kill()


def _survives(svc: Service, what: str, call) -> object:
    """Calls `call`; fails (AssertionError) if it kills the process or fails for any reason but
    INVALID_ARGUMENT. Returns the answer, or None for INVALID_ARGUMENT."""
    try:
        return call()
    except grpc.RpcError as e:
        time.sleep(0.3)
        if not svc.alive():
            raise AssertionError(f"{what} crashed cdp-segmentation ({svc.exit_description()}; the call failed "
                                 f"with {e.code().name}):\n{svc.stderr_tail(12)}") from None
        assert e.code() == INVALID, f"{what}: expected INVALID_ARGUMENT (or an answer), got {e.code().name}: " \
                                    f"{e.details()}"
        return None


def test_get_members_page_token_above_int64(tmp_path):
    _require_binaries()
    svc = _standalone_segmentation(tmp_path)
    ch = None
    try:
        svc.start(0)
        ch = channel(svc.address)
        seg = segmentation_pb2_grpc.SegmentationStub(ch)
        s1 = _create(seg, "a", 'person.email.endsWith("@a.example")')
        for token in (str((1 << 64) - 1), str(1 << 63)):
            page = _survives(svc, f"GetMembers with page_token {token}", lambda: seg.GetMembers(
                segmentation_pb2.GetMembersRequest(segment_id=s1.id, page_token=token), timeout=10))
            assert page is None or not page.members, f"GetMembers after cluster {token} listed {page}"
    finally:
        if ch is not None:
            ch.close()
        if svc.alive():
            svc.kill()


def test_accept_views_ids_above_int64(tmp_path):
    _require_binaries()
    svc = _standalone_segmentation(tmp_path)
    ch = None
    try:
        big = 1 << 63
        for n, (what, change) in enumerate((
                ("a view of cluster 2^63", _view_change(big, "x@a.example", 1)),
                ("a view of version 2^63", _view_change(5, "x@a.example", big)),
                ("a removal of cluster 2^64 - 1", segmentation_pb2.ViewChange(version=2, removed=(
                    segmentation_pb2.RemovedEntity(entity_type=E.ENTITY_TYPE_PERSON, cluster_id=(1 << 64) - 1)))))):
            if not svc.alive():
                if ch is not None:
                    ch.close()
                svc.start(0)
                ch = channel(svc.address)
            seg = segmentation_pb2_grpc.SegmentationStub(ch)
            if n == 0:
                _create(seg, "a", 'person.email.endsWith("@a.example")')
            _survives(svc, f"AcceptViews with {what}", lambda: seg.AcceptViews(
                segmentation_pb2.AcceptViewsRequest(sender="test", changes=[change]), timeout=10))
    finally:
        if ch is not None:
            ch.close()
        if svc.alive():
            svc.kill()


def test_huge_numbers_in_definitions_do_not_crash(tmp_path):
    _require_binaries()
    svc = _standalone_segmentation(tmp_path)
    ch = None
    try:
        for pql in ('person.email = "a@x.example" 99999999999999999999',
                    'exists E from xEvent where (E.timestamp occurs <= 99999999999999999999 days before now)'):
            if not svc.alive():
                if ch is not None:
                    ch.close()
                svc.start(0)
                ch = channel(svc.address)
            seg = segmentation_pb2_grpc.SegmentationStub(ch)
            _survives(svc, f"CreateSegment({pql!r})", lambda: _create(seg, "huge", pql))
    finally:
        if ch is not None:
            ch.close()
        if svc.alive():
            svc.kill()


def test_estimate_of_an_entity_type_without_segments_is_refused(tmp_path):
    _require_binaries()
    svc = _standalone_segmentation(tmp_path)
    ch = None
    try:
        svc.start(0)
        ch = channel(svc.address)
        seg = segmentation_pb2_grpc.SegmentationStub(ch)
        for entity_type in (E.ENTITY_TYPE_EVENT, E.ENTITY_TYPE_OPPORTUNITY):
            msg = expect_error(lambda: seg.Estimate(segmentation_pb2.EstimateRequest(
                pql="person.score > 1", entity_type=entity_type), timeout=10), INVALID,
                f"Estimate with entity_type {E.EntityType.Name(entity_type)} (CreateSegment refuses it)")
            assert "PERSON" in msg and "ACCOUNT" in msg, f"Estimate of {entity_type}: {msg!r}"
    finally:
        if ch is not None:
            ch.close()
        if svc.alive():
            svc.kill()


def test_membership_changes_carry_when_they_were_decided(tmp_path):
    _require_binaries()
    dest = FakeDestination().start()
    svc = Service("segmentation", SEGMENTATION_BIN, "CDP_SEGMENTATION_BIN", tmp_path / "segmentation-data", tmp_path,
                  ["--destination", dest.address])
    ch = None
    try:
        svc.start(0)
        ch = channel(svc.address)
        seg = segmentation_pb2_grpc.SegmentationStub(ch)
        s1 = _create(seg, "a", 'person.email.endsWith("@a.example")')
        before = time.time()
        seg.AcceptViews(segmentation_pb2.AcceptViewsRequest(sender="test", changes=[
            _view_change(3, "u3@a.example", 1)]), timeout=10)
        after = time.time()
        deadline = time.monotonic() + 15
        while not dest.snapshot() and time.monotonic() < deadline:
            time.sleep(0.05)
        changes = dest.snapshot()
        assert [(c.segment_id, c.cluster_id) for c in changes] == [(s1.id, 3)], (
            f"destination got {[describe(c) for c in changes]}\n{diagnostics([svc])}")
        at = changes[0].at.seconds + changes[0].at.nanos / 1e9
        assert changes[0].HasField("at") and before - 1 <= at <= after + 1, (
            f"the change's `at` is {changes[0].at if changes[0].HasField('at') else 'unset'}, expected the time "
            f"AcceptViews decided it, between {before:.0f} and {after:.0f}")
    finally:
        if ch is not None:
            ch.close()
        if svc.alive():
            svc.kill()
        dest.stop()


# ---------------------------------------------------------------------------------------------------
# 3. SIGKILL of cdp-segmentation while views flow
# ---------------------------------------------------------------------------------------------------

CRASH_MKTO, CRASH_SF = source("Marketo:mkto-1"), source("Salesforce:sf-1")
OLD, NEW = "2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z"
CRASH_SEGMENTS = (  # (name, definition); created in this order: s1, s2, s3
    ("match", 'person.email.endsWith("@match.example")'),
    ("vip", 'person.lastName = "Vip"'),
    ("match and vip", 'inSegment("s1") and inSegment("s2")'),
)


class CrashDataset:
    """The synthetic persons and their ground truth.

    Round 1: person i is record m-{i} in Marketo, email ``person{i}.s{seed}@match.example`` when i % 3 == 0
    (else ``@other.example``), last name "Vip" when i % 4 == 0. Persons with i % 5 == 0 are also record
    s-{i} in Salesforce with the same email and name (identity merges the two; they are never changed
    again). Round 2: persons with i % 9 == 0 (and i % 5 != 0) are deleted through profile's DeletePerson
    (segmentation gets `removed`: they exit everything); of the others, the Marketo record of those with
    i % 8 == 0 gets the last name "Former" (leaving `vip`) and of those with i % 4 == 2 "Vip" (entering
    it), with a later lastUpdated."""

    def __init__(self, persons: int, seed: int):
        rng = random.Random(seed)
        self.persons = persons
        self.email = [f"person{i}.s{seed}@{'match' if i % 3 == 0 else 'other'}.example" for i in range(persons)]
        self.deleted = {i for i in range(persons) if i % 9 == 0 and i % 5 != 0}
        self.first_name = ["Vip" if i % 4 == 0 else f"Last{i}" for i in range(persons)]
        self.final_name = list(self.first_name)
        for i in range(persons):
            if i % 5 == 0 or i in self.deleted:
                continue
            if i % 8 == 0:
                self.final_name[i] = "Former"
            elif i % 4 == 2:
                self.final_name[i] = "Vip"
        mkto = [[f"m-{i}", self.email[i], "First", self.first_name[i], "Contact", None, None, OLD]
                for i in range(persons)]
        sf = [[f"s-{i}", self.email[i], "First", self.first_name[i], "Contact", None, None, OLD]
              for i in range(0, persons, 5)]
        updates = [[f"m-{i}", self.email[i], "First", self.final_name[i], "Contact", None, None, NEW]
                   for i in range(persons) if self.final_name[i] != self.first_name[i]]
        for rows in (mkto, sf, updates):
            rng.shuffle(rows)
        third = (len(mkto) + 2) // 3
        self.updates = len(updates)
        self.rounds = [
            [(CRASH_MKTO, mkto[:third], "persons-1"), (CRASH_MKTO, mkto[third:2 * third], "persons-2"),
             (CRASH_SF, sf, "sf-persons"), (CRASH_MKTO, mkto[2 * third:], "persons-3")],
            [(CRASH_MKTO, updates[:len(updates) // 2], "updates-1"),
             (CRASH_MKTO, updates[len(updates) // 2:], "updates-2")],
        ]

    def expected(self) -> dict[str, set[int]]:
        """Segment id -> the persons (indexes) in it at the end."""
        alive = set(range(self.persons)) - self.deleted
        match = {i for i in alive if i % 3 == 0}
        vip = {i for i in alive if self.final_name[i] == "Vip"}
        return {"s1": match, "s2": vip, "s3": match & vip}


def test_segmentation_sigkill(tmp_path):
    _require_binaries()
    persons = _env("SEGMENTATION_CRASH_PERSONS", 400)
    kills = _env("SEGMENTATION_CRASH_KILLS", 2)
    seed = _env("SEGMENTATION_CRASH_SEED", 11)
    fail_rate = _env("SEGMENTATION_CRASH_FAIL_RATE", 0.1, float)
    rng = random.Random(seed)
    data = CrashDataset(persons, seed)
    # Views each round makes profile send at least: one per person; one per deleted or updated person.
    round_views = [persons, len(data.deleted) + data.updates]
    kills_in = [len(range(r, kills, 2)) for r in (0, 1)]  # kill 1 in round 1, kill 2 in round 2, ...
    log(f"seed {seed}: {persons} persons, {len(data.deleted)} deleted and {data.updates} updated in round 2; "
        f"{kills_in} SIGKILLs of cdp-segmentation per round; fake destination fails {fail_rate:.0%} of calls")
    dest = FakeDestination(fail_rate=fail_rate, seed=seed, forced_failures=2).start()
    # Small chunks both ways, so that the kills and the failures land between many calls.
    pipe = SegmentationPipeline(tmp_path, dest, segmentation_args=["--forward-batch-size", "5"],
                                profile_args=["--forward-batch-size", "5"])
    problems: list[str] = []
    kill_log: list[str] = []
    killer_errors: list[str] = []
    targets: queue.Queue = queue.Queue()
    done_kills = threading.Semaphore(0)
    stop = threading.Event()
    t_start = time.monotonic()

    def sent_views() -> int | None:
        try:
            with grpc.insecure_channel(f"127.0.0.1:{pipe.profile_port}") as ch:
                return profile_pb2_grpc.ProfileStub(ch).GetOutboxStatus(
                    profile_pb2.GetOutboxStatusRequest(), timeout=2).sent_views
        except grpc.RpcError:
            return None

    def killer():
        """Kills segmentation when profile has sent each target's number of views (segmentation took them)."""
        krng = random.Random(seed + 1)
        n = 0
        try:
            while not stop.is_set():
                try:
                    target = targets.get(timeout=0.1)
                except queue.Empty:
                    continue
                n += 1
                while True:
                    sent = sent_views()
                    if sent is not None and sent >= target:
                        break
                    if stop.wait(0.02):
                        return
                time.sleep(krng.uniform(0, 0.05))
                was_alive = pipe.segmentation.alive()
                pipe.segmentation.kill()
                kill_log.append(f"kill {n} at {time.monotonic() - t_start:.1f}s: profile had sent >= {sent} views "
                                f"(target {target}), generation {pipe.segmentation.generation} "
                                f"{'running' if was_alive else 'ALREADY DEAD'}; destination had applied "
                                f"{len(dest.snapshot())} changes")
                if not was_alive:
                    killer_errors.append(f"segmentation was not running at kill {n}: "
                                         f"{pipe.segmentation.exit_description()}")
                time.sleep(krng.uniform(0.05, 0.4))  # profile's calls fail meanwhile
                pipe.restart_segmentation()
                done_kills.release()
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            killer_errors.append(f"killer: {e!r}")
            done_kills.release()

    def run_round(r: int, before_batches=None) -> None:
        base = sent_views() or 0
        m = kills_in[r]
        for j in range(m):
            targets.put(base + int(round_views[r] * rng.uniform(0.1 + 0.75 * j / m, 0.1 + 0.75 * (j + 1) / m)))
        if before_batches is not None:
            before_batches()
        for src, rows, key in data.rounds[r]:
            ingest(ing, src, "person", csv_text(PERSON_COLUMNS, rows), key=key, expect_records=len(rows))
        deadline = time.monotonic() + 60
        for _ in range(m):
            if not done_kills.acquire(timeout=max(0.1, deadline - time.monotonic())):
                raise AssertionError(f"round {r + 1}: the kill points were not all reached within 60 s: {kill_log}")
        if killer_errors:
            raise AssertionError("; ".join(killer_errors))
        *_, prof_status, _ = pipe.drain(timeout=60)
        log(f"round {r + 1} drained {time.monotonic() - t_start:.1f}s after the start; profile sent "
            f"{prof_status.sent_views} views; {dest.summary()}")

    def delete_persons() -> None:
        prof = pipe.profile_stub()
        for i in sorted(data.deleted):
            resp = prof.DeletePerson(entity_request("email", data.email[i]), timeout=30)
            if resp.fragments_deleted != 1:
                problems.append(f"DeletePerson({data.email[i]}) deleted {resp.fragments_deleted} fragments, "
                                f"expected 1")

    thread = threading.Thread(target=killer, name="killer", daemon=True)
    try:
        pipe.start()
        seg = pipe.segmentation_stub()
        for name, pql in CRASH_SEGMENTS:
            _create(seg, name, pql)
        ing = pipe.ingestion_stub()
        for src in (CRASH_MKTO, CRASH_SF):
            ing.CreateSource(ingestion_pb2.CreateSourceRequest(source=src), timeout=10)
        thread.start()
        run_round(0)
        run_round(1, before_batches=delete_persons)
        for k in kill_log:
            log(k)
        seg_status = pipe.segmentation_status()

        # --- the ground truth: profile's person clusters ---
        prof = pipe.profile_stub()
        views = list(prof.ScanPersonViews(profile_pb2.ScanRequest(partition=0, partitions=1), timeout=60))
        cluster_of: dict[str, int] = {}
        for v in views:
            email = v.person.record.person.email
            if email in cluster_of:
                problems.append(f"profile has two person clusters with {email}: {cluster_of[email]} and "
                                f"{v.person.cluster_id}")
            cluster_of[email] = v.person.cluster_id
        alive = sorted(data.email[i] for i in range(persons) if i not in data.deleted)
        if sorted(cluster_of) != alive:
            problems.append(f"profile has {len(cluster_of)} persons, expected {len(alive)} (generated {persons}, "
                            f"deleted {len(data.deleted)}); {len(set(cluster_of) ^ set(alive))} emails differ")
        _fail(problems, pipe, tmp_path, "kills: " + "; ".join(kill_log))

        # --- memberships against the ground truth, at segmentation and at destination ---
        # Persons deleted through DeletePerson are erased: segmentation keeps nothing of them (GetMembers
        # does not list them) and their exits name only the cluster.
        deleted_emails = {data.email[i] for i in data.deleted}
        deleted_clusters = {c.cluster_id for c in dest.snapshot() if c.record.record.person.email in deleted_emails}
        for sid, indexes in data.expected().items():
            want = {cluster_of[data.email[i]]: data.email[i] for i in indexes}
            everyone = members(seg, sid, page_size=50)
            got = {m.cluster_id: m.record.record.person.email for m in everyone if m.status == REALIZED}
            if got != want:
                missing = sorted(set(want) - set(got))
                extra = sorted(set(got) - set(want))
                wrong = sorted(c for c in set(got) & set(want) if got[c] != want[c])
                problems.append(f"GetMembers({sid}) holds {len(got)} realized members, expected {len(want)}: "
                                f"{len(missing)} missing e.g. {[(c, want[c]) for c in missing[:3]]}, {len(extra)} "
                                f"not expected e.g. {[(c, got[c]) for c in extra[:3]]}, {len(wrong)} with another "
                                f"email e.g. {[(c, got[c], want[c]) for c in wrong[:3]]}")
            if sid == "s2":
                names = {m.record.record.person.last_name for m in everyone if m.status == REALIZED}
                if names - {"Vip"}:
                    problems.append(f"GetMembers(s2) member records have last names {sorted(names)}, expected Vip")
            latest = dest.latest_of(sid)
            held = {c: ch.record.record.person.email for c, ch in latest.items() if ch.realized}
            if held != want:
                problems.append(f"destination's latest changes of {sid} realize {len(held)} memberships, expected "
                                f"{len(want)}: missing {sorted(set(want) - set(held))[:5]}, not expected "
                                f"{sorted(set(held) - set(want))[:5]}, other email "
                                f"{[c for c in set(held) & set(want) if held[c] != want[c]][:5]}")
            versions = {m.cluster_id: (m.version, m.status == REALIZED) for m in everyone}
            if set(versions) & deleted_clusters:
                problems.append(f"GetMembers({sid}) still lists erased persons: "
                                f"{sorted(set(versions) & deleted_clusters)[:5]}")
            at_dest = {c: (ch.version, ch.realized) for c, ch in latest.items()
                       if not (c in deleted_clusters and not ch.realized and c not in versions)}
            if versions != at_dest:
                diff = sorted(c for c in set(versions) | set(at_dest) if versions.get(c) != at_dest.get(c))
                problems.append(f"{sid}: (version, realized) of {len(diff)} memberships differ between GetMembers "
                                f"and the destination's latest change, e.g. "
                                f"{[(c, versions.get(c), at_dest.get(c)) for c in diff[:5]]}")
            exited = {m.cluster_id for m in members(seg, sid, EXITED, page_size=1000)}
            if exited != {m.cluster_id for m in everyone if m.status == EXITED}:
                problems.append(f"GetMembers({sid}, EXITED) differs from the exited members of GetMembers({sid})")
            counted = seg.GetSegment(segmentation_pb2.GetSegmentRequest(id=sid), timeout=10).realized
            if counted != len(want):
                problems.append(f"GetSegment({sid}).realized is {counted}, expected {len(want)}")
        applied = dest.snapshot()
        # Each cluster is one person (clusters of deleted persons: the email of their first change).
        email_of = {c: e for e, c in cluster_of.items()}
        for c in applied:
            email_of.setdefault(c.cluster_id, c.record.record.person.email)
        wrong = [describe(c) for c in applied if c.entity_type != E.ENTITY_TYPE_PERSON or (
                 not (c.cluster_id in deleted_clusters and not c.realized and not c.record.record.person.email)
                 and (not c.record.record.person.email or email_of[c.cluster_id] != c.record.record.person.email))]
        if wrong:
            problems.append(f"{len(wrong)} changes at the destination name another email than their cluster's "
                            f"person (or are no person's), e.g. {wrong[:5]}")
        if seg_status.sent_changes != len(applied):
            problems.append(f"segmentation counts {seg_status.sent_changes} changes sent, the destination applied "
                            f"{len(applied)}")
        exits = sum(1 for c in applied if not c.realized)
        if not exits:
            problems.append("no membership exited during the run (the updates and merges should make some)")
        if fail_rate > 0 and not (dest.failed_before and dest.failed_after):
            problems.append(f"the retry paths did not both run: {dest.summary()}")
        if dest.problems:
            problems.append(f"the destination saw {len(dest.problems)} broken promises: {dest.problems[:8]}")
        _fail(problems, pipe, tmp_path, "kills: " + "; ".join(kill_log))

        # --- a batch job killed while it runs: it fails (not left running) once segmentation is back ---
        started = seg.Evaluate(segmentation_pb2.EvaluateRequest(), timeout=10)
        time.sleep(rng.uniform(0, 0.2))
        pipe.segmentation.kill()
        pipe.restart_segmentation()
        killed = call_with_retry(lambda: seg.GetEvaluation(segmentation_pb2.GetEvaluationRequest(id=started.id),
                                                           timeout=10), 20, f"GetEvaluation({started.id})")
        if killed.state == segmentation_pb2.JOB_STATE_RUNNING:
            killed = wait_job(seg, started.id, timeout=10)
        if not (killed.state == segmentation_pb2.JOB_STATE_SUCCEEDED or
                (killed.state == segmentation_pb2.JOB_STATE_FAILED and "stopped" in killed.error
                 and killed.HasField("finished_at"))):
            problems.append(f"{started.id}, killed while it ran, is {JOB_STATE.get(killed.state)} "
                            f"({killed.error!r}) after the restart; expected FAILED with the reason (or SUCCEEDED "
                            f"if it finished first)")
        log(f"the batch job killed after it started is {JOB_STATE.get(killed.state)} after the restart "
            f"(evaluated {killed.evaluated}): {killed.error!r}")
        pipe.drain(timeout=30)

        # --- a batch job over every segment agrees with what streaming built ---
        job = wait_job(seg, seg.Evaluate(segmentation_pb2.EvaluateRequest(), timeout=10).id)
        if job.state != segmentation_pb2.JOB_STATE_SUCCEEDED or job.evaluated != len(alive) or \
                (job.realized, job.exited) != (0, 0):
            problems.append(f"the batch job after the run ended {JOB_STATE.get(job.state)} ({job.error!r}): evaluated "
                            f"{job.evaluated} views of {len(alive)} persons, realized {job.realized}, exited "
                            f"{job.exited}; "
                            f"expected no transitions (streaming holds the truth)")
        if not pipe.segmentation.stop():
            problems.append(f"segmentation did not exit with status 0 on SIGTERM "
                            f"({pipe.segmentation.exit_description()})")
        log(f"crash test total {time.monotonic() - t_start:.1f}s; {exits} exits among {len(applied)} changes")
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
# 4. --auth-token: callers must present it, and segmentation presents it to destination
# ---------------------------------------------------------------------------------------------------

def test_auth_token(tmp_path):
    _require_binaries()
    dest = FakeDestination().start()
    token = "segmentation-test-token"
    svc = Service("segmentation", SEGMENTATION_BIN, "CDP_SEGMENTATION_BIN", tmp_path / "segmentation-data", tmp_path,
                  ["--auth-token", token, "--destination", dest.address])
    ch = None
    try:
        svc.start(0)
        ch = channel(svc.address)
        seg = segmentation_pb2_grpc.SegmentationStub(ch)
        status_req = segmentation_pb2.GetOutboxStatusRequest()
        for what, md in (("no authorization", ()), ("a wrong token", (("authorization", "Bearer nope"),))):
            expect_error(lambda: seg.GetOutboxStatus(status_req, timeout=10, metadata=md),
                         grpc.StatusCode.UNAUTHENTICATED, f"GetOutboxStatus with {what}")
        expect_error(lambda: _create(seg, "a", 'person.email.endsWith("@a.example")'),
                     grpc.StatusCode.UNAUTHENTICATED, "CreateSegment without the token")
        md = (("authorization", f"Bearer {token}"),)
        s1 = seg.CreateSegment(segmentation_pb2.CreateSegmentRequest(
            name="a", pql='person.email.endsWith("@a.example")'), timeout=10, metadata=md)
        resp = seg.AcceptViews(segmentation_pb2.AcceptViewsRequest(
            sender="test", changes=[_view_change(3, "u3@a.example", 1)]), timeout=10, metadata=md)
        assert resp.accepted == 1, f"AcceptViews with the token answered {resp}"
        deadline = time.monotonic() + 15
        while not dest.snapshot() and time.monotonic() < deadline:
            time.sleep(0.05)
        got = [describe(c) for c in dest.snapshot()]
        assert [(c.segment_id, c.cluster_id, c.realized) for c in dest.snapshot()] == [(s1.id, 3, True)], (
            f"destination got {got}, expected cluster 3 realized in {s1.id}\n{diagnostics([svc])}")
        assert dest.authorizations == {f"Bearer {token}"}, (
            f"segmentation called destination with authorization {sorted(dest.authorizations)}, expected the "
            f"--auth-token")
    except BaseException:
        log(diagnostics([svc]))
        raise
    finally:
        if ch is not None:
            ch.close()
        if svc.alive():
            svc.kill()
        dest.stop()

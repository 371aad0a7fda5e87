"""Ingestion -> identity -> profile -> segmentation -> destination -> export files, end to end over gRPC,
against the real binaries (all five services real; the destinations are FILE destinations).

Tests:

* test_file_exports_follow_the_segment: a streaming segment s1 = person.email.endsWith("@match.example") and
  person.lastName != "Gone", created before any data; two FILE destinations: d1 (csv, incremental)
  activated with the EMAIL identity before any data, d2 (jsonl, full) activated with HASHED_EMAIL after
  round 1 (its backfill comes from the members destination holds). The EmailDataset (default 240 persons)
  in three rounds: ingest; delete some through profile's DeletePerson, move some to @match.example (they
  enter) and rename some "Gone" (they leave); give half of those their name back (they enter again) and
  rename half of the moved ones "Gone" (they leave again). After each round, once the four outboxes
  drained and destination's queues emptied:
  - GetMembers(s1, REALIZED) is the ground truth (the lower-cased emails of the persons in the segment);
  - replaying d1's incremental CSV files in name order (each file's adds, then its removes) gives exactly
    the members' emails; no member is added while already added (no duplicate adds), none removed while
    not added, none twice in one file;
  - d2's newest full file lists exactly the SHA-256 hex of the members' trimmed, lower-cased emails, all
    `add`, each once;
  at the end also: per destination, ListDeliveries (paged) sums: added - removed == the member count, no
  failed or suppressed members, no errors; ListDestinations shows nothing pending and no error; SIGTERM
  stops destination with status 0.
* test_destination_sigkill: the same with cdp-destination SIGKILLed DESTINATION_CRASH_KILLS times (default
  3: one per round, when segmentation has had a seeded fraction of the round's membership changes
  acknowledged) and restarted on the same data directory and port while segmentation's relay retries;
  the same checks (the files still replay to exactly the members, no duplicate adds).
* test_a_member_whose_email_changed_is_removed_under_the_email_it_was_added_with: a member added to an
  incremental file as a@match.example whose exit carries its new record (email a@other.example) is removed
  as a@match.example.
* test_a_member_that_came_and_went_before_delivery_is_not_counted: a member realized and exited in one
  AcceptMembershipChanges before any delivery is sent nowhere, and no run counts it as added or removed.
* test_a_batch_written_before_a_sigkill_is_not_added_again: a SIGKILL right after an incremental file
  appears (before its run is recorded): the restarted destination delivers the saved plan again into the
  same file name (same run number), so no second file adds the member again.
* test_unhappy_paths: against a standalone cdp-destination: CreateDestination FILE without `directory`
  (INVALID_ARGUMENT naming it), with format xml (naming format), MARKETO / LINKEDIN / WEBHOOK
  each without a required setting (INVALID_ARGUMENT naming it, never echoing a secret), UNSPECIFIED (INVALID_ARGUMENT); Activate to an unknown destination (NOT_FOUND), with an
  empty segment (INVALID_ARGUMENT); Deactivate of an unknown activation (NOT_FOUND); ListDeliveries of an
  unknown destination (NOT_FOUND), with garbage page tokens (INVALID_ARGUMENT); AcceptMembershipChanges
  with an empty sender (INVALID_ARGUMENT, nothing taken), a re-sent sequence (a duplicate).

Run (Tests/python-env.sh first; the debug binaries must exist):
    .venv/bin/python -m pytest Tests/Destination -q -p no:cacheprovider

Environment:
    CDP_INGESTION_BIN / CDP_IDENTITY_BIN / CDP_PROFILE_BIN / CDP_SEGMENTATION_BIN / CDP_DESTINATION_BIN
                                       the binaries (default .build/debug/...)
    DESTINATION_PERSONS                persons in the pipeline tests (default 240)
    DESTINATION_SEED                   seed of the data (default 5; the SIGKILL test uses seed + 1)
    DESTINATION_CRASH_KILLS            SIGKILLs of cdp-destination, one round after another (default 3)
"""

from __future__ import annotations

import os
import queue
import random
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from destination_support import (  # noqa: E402
    E, EMAIL_ID, FILE, HASHED_ID, PIPELINE_BINARIES, REALIZED, SEGMENT_PQL, DestinationPipeline, EmailDataset,
    DESTINATION_BIN, csv_text, deliveries, destination_pb2, entity_request, expect_error, hashed, hidden_files,
    ingest, ingestion_pb2, log, members, read_exports, replay, running_destination, segmentation_pb2, MKTO, SF,
    PERSON_COLUMNS,
)

INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


def _env(name: str, default, conv=int):
    v = os.environ.get(name)
    return conv(v) if v not in (None, "") else default


def _require_binaries():
    for b, env in PIPELINE_BINARIES:
        if not b.exists():
            pytest.fail(f"{b.name} not found at {b} (build it, or set {env})", pytrace=False)


def _fail(problems: list[str], pipe, tmp_path: Path, extra: str = "") -> None:
    if problems:
        pytest.fail(f"{len(problems)} problem(s):\n- " + "\n- ".join(problems) + (f"\n{extra}" if extra else "") +
                    f"\n{pipe.diagnostics()}\n(data, exports and logs in {tmp_path})", pytrace=False)


# ---------------------------------------------------------------------------------------------------
# 1 and 2. The pipeline to two file destinations, with or without SIGKILLs of destination
# ---------------------------------------------------------------------------------------------------

def _pipeline_scenario(tmp_path: Path, seed: int, kills: int) -> None:
    _require_binaries()
    persons = _env("DESTINATION_PERSONS", 240)
    data = EmailDataset(persons, seed)
    rng = random.Random(seed)
    kills_in = [len(range(r, kills, 3)) for r in range(3)]
    log(f"seed {seed}: {persons} persons; round 2: {len(data.deleted)} deleted, {len(data.moved)} moved in, "
        f"{len(data.gone)} renamed out; round 3: {len(data.back)} renamed back, {len(data.moved_gone)} moved ones "
        f"renamed out; membership changes per round {data.round_changes}; "
        f"SIGKILLs of cdp-destination per round {kills_in}")
    # Small chunks, so that many delivery runs (files) happen and the kills land between them.
    pipe = DestinationPipeline(tmp_path, segmentation_args=["--forward-batch-size", "5"],
                               profile_args=["--forward-batch-size", "10"])
    csv_dir, jsonl_dir = tmp_path / "exports-csv", tmp_path / "exports-jsonl"
    problems: list[str] = []
    kill_log: list[str] = []
    killer_errors: list[str] = []
    targets: queue.Queue = queue.Queue()
    done_kills = threading.Semaphore(0)
    stop = threading.Event()
    t_start = time.monotonic()

    def sent_changes() -> int | None:
        try:
            return pipe.segmentation_status().sent_changes
        except grpc.RpcError:
            return None

    def killer():
        """Kills destination when segmentation has had each target's number of changes acknowledged."""
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
                    sent = sent_changes()
                    if sent is not None and sent >= target:
                        break
                    if stop.wait(0.01):
                        return
                time.sleep(krng.uniform(0, 0.05))
                was_alive = pipe.dest.alive()
                pipe.dest.kill()
                files = len(read_exports(csv_dir)) + len(read_exports(jsonl_dir))
                kill_log.append(f"kill {n} at {time.monotonic() - t_start:.1f}s: segmentation had sent >= {sent} "
                                f"changes (target {target}), generation {pipe.dest.generation} "
                                f"{'running' if was_alive else 'ALREADY DEAD'}; {files} export files")
                if not was_alive:
                    killer_errors.append(f"destination was not running at kill {n}: {pipe.dest.exit_description()}")
                time.sleep(krng.uniform(0.05, 0.4))  # segmentation's sends fail meanwhile
                pipe.restart_destination()
                done_kills.release()
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            killer_errors.append(f"killer: {e!r}")
            done_kills.release()

    def run_round(r: int, before_batches=None) -> None:
        base = sent_changes() or 0
        m = kills_in[r]
        for j in range(m):
            targets.put(base + max(1, int(data.round_changes[r] * rng.uniform(0.1 + 0.75 * j / m,
                                                                            0.1 + 0.75 * (j + 1) / m))))
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
        pipe.settle(timeout=60)
        log(f"round {r + 1} settled {time.monotonic() - t_start:.1f}s after the start; "
            f"{len(read_exports(csv_dir))} incremental and {len(read_exports(jsonl_dir))} full files")

    def check(r: int, d2_active: bool) -> None:
        """The members against the ground truth, and both destinations' files against the members."""
        everyone = members(seg, s1.id, REALIZED, page_size=100)
        got = [m.record.record.person.email for m in everyone]
        want = data.expected_rounds[r]
        if set(got) != want or len(got) != len(want):
            problems.append(f"round {r + 1}: GetMembers({s1.id}, REALIZED) holds {len(got)} members, expected "
                            f"{len(want)}: missing {sorted(want - set(got))[:5]}, not expected "
                            f"{sorted(set(got) - want)[:5]}")
        held, replay_problems = replay(read_exports(csv_dir))
        for p in replay_problems[:10]:
            problems.append(f"round {r + 1}: {csv_dir.name}: {p}")
        if held != set(got):
            problems.append(f"round {r + 1}: replaying {csv_dir.name} gives {len(held)} members, GetMembers "
                            f"{len(got)}: missing {sorted(set(got) - held)[:5]}, not members "
                            f"{sorted(held - set(got))[:5]}")
        if d2_active:
            files = read_exports(jsonl_dir)
            if not files:
                problems.append(f"round {r + 1}: no file in {jsonl_dir.name}")
            else:
                name, rows = files[-1]
                idents = [i for _, i in rows]
                hashes = {hashed(e) for e in got}
                if [op for op, _ in rows if op != "add"]:
                    problems.append(f"round {r + 1}: the full file {name} has ops "
                                    f"{sorted({op for op, _ in rows})}, expected only add")
                if len(set(idents)) != len(idents):
                    problems.append(f"round {r + 1}: the full file {name} lists a member twice")
                if set(idents) != hashes:
                    problems.append(f"round {r + 1}: the newest full file {name} lists {len(set(idents))} hashed "
                                    f"emails, the members are {len(hashes)}: {len(hashes - set(idents))} missing, "
                                    f"{len(set(idents) - hashes)} not members (e.g. "
                                    f"{sorted(set(idents) - hashes)[:3]})")
        log(f"round {r + 1}: {len(got)} members; {csv_dir.name} replays to {len(held)}")

    def delete_persons() -> None:
        prof = pipe.profile_stub()
        for i in sorted(data.deleted):
            resp = prof.DeletePerson(entity_request("email", data.first_email[i]), timeout=30)
            if resp.fragments_deleted != 1:
                problems.append(f"DeletePerson({data.first_email[i]}) deleted {resp.fragments_deleted} fragments, "
                                f"expected 1")

    thread = threading.Thread(target=killer, name="killer", daemon=True)
    try:
        pipe.start()
        seg = pipe.segmentation_stub()
        s1 = seg.CreateSegment(segmentation_pb2.CreateSegmentRequest(name="match", pql=SEGMENT_PQL), timeout=10)
        dst = pipe.destination_stub()
        d1 = dst.CreateDestination(destination_pb2.CreateDestinationRequest(
            type=FILE, name="incremental csv",
            settings={"directory": str(csv_dir), "format": "csv", "mode": "incremental"}), timeout=10)
        d2 = dst.CreateDestination(destination_pb2.CreateDestinationRequest(
            type=FILE, name="full jsonl, hashed",
            settings={"directory": str(jsonl_dir), "format": "jsonl", "mode": "full"}), timeout=10)
        assert (d1.type, dict(d1.settings), list(d1.credentials)) == (
            FILE, {"directory": str(csv_dir), "format": "csv", "mode": "incremental"}, []), f"d1 is {d1}"
        a1 = dst.Activate(destination_pb2.ActivateRequest(segment_id=s1.id, destination_id=d1.id,
                                                          identity=EMAIL_ID), timeout=10)
        assert (a1.segment_id, a1.destination_id, a1.identity, a1.active) == (s1.id, d1.id, EMAIL_ID, True), (
            f"Activate answered {a1}")
        ing = pipe.ingestion_stub()
        for src in (MKTO, SF):
            ing.CreateSource(ingestion_pb2.CreateSourceRequest(source=src), timeout=10)
        thread.start()

        run_round(0)
        check(0, d2_active=False)
        # d2 after the members exist: its first run is the backfill from what destination holds.
        a2 = dst.Activate(destination_pb2.ActivateRequest(segment_id=s1.id, destination_id=d2.id,
                                                          identity=HASHED_ID), timeout=10)
        pipe.settle(timeout=30)
        check(0, d2_active=True)
        run_round(1, before_batches=delete_persons)
        check(1, d2_active=True)
        run_round(2)
        check(2, d2_active=True)
        for k in kill_log:
            log(k)

        # --- the run log adds up, nothing failed, nothing pending ---
        count = len(members(seg, s1.id, REALIZED, page_size=100))
        for d, a in ((d1, a1), (d2, a2)):
            runs = deliveries(dst, d.id)
            added, removed = sum(x.added for x in runs), sum(x.removed for x in runs)
            if added - removed != count:
                problems.append(f"ListDeliveries({d.id}): {len(runs)} runs adding {added} and removing {removed}, "
                                f"expected added - removed == {count} members")
            bad = [x for x in runs if x.failed or x.suppressed or x.errors or x.activation_id != a.id]
            if bad:
                problems.append(f"ListDeliveries({d.id}): {len(bad)} runs with failures, suppressions, errors or "
                                f"another activation than {a.id}, e.g. {bad[0]}")
            if not runs or any(not x.HasField("finished_at") or x.finished_at.ToNanoseconds() <
                               x.started_at.ToNanoseconds() for x in runs):
                problems.append(f"ListDeliveries({d.id}): {len(runs)} runs, some without a proper finish time")
            log(f"{d.id}: {len(runs)} runs, {added} added, {removed} removed, retries "
                f"{sum(x.retries for x in runs)}")
        for d in pipe.destinations():
            if d.pending or d.last_error:
                problems.append(f"ListDestinations: {d.id} pending {d.pending}, last error {d.last_error!r}")
        leftovers = hidden_files(csv_dir) + hidden_files(jsonl_dir)
        if leftovers:
            log(f"temporary files left behind (killed while writing): {leftovers}")
        _fail(problems, pipe, tmp_path, "kills: " + "; ".join(kill_log))
        if not pipe.dest.stop():
            problems.append(f"destination did not exit with status 0 on SIGTERM ({pipe.dest.exit_description()})")
        log(f"total {time.monotonic() - t_start:.1f}s")
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


def test_file_exports_follow_the_segment(tmp_path):
    _pipeline_scenario(tmp_path, _env("DESTINATION_SEED", 5), kills=0)


def test_destination_sigkill(tmp_path):
    _pipeline_scenario(tmp_path, _env("DESTINATION_SEED", 5) + 1, kills=_env("DESTINATION_CRASH_KILLS", 3))


# ---------------------------------------------------------------------------------------------------
# 3. Unhappy paths against a standalone cdp-destination
# ---------------------------------------------------------------------------------------------------

def test_unhappy_paths(tmp_path):
    if not DESTINATION_BIN.exists():
        pytest.fail(f"cdp-destination not found at {DESTINATION_BIN} (build it, or set CDP_DESTINATION_BIN)",
                    pytrace=False)
    with running_destination(tmp_path) as (svc, dst):
        Req = destination_pb2

        def create(type_, settings, name="x"):
            return dst.CreateDestination(Req.CreateDestinationRequest(type=type_, name=name, settings=settings),
                                         timeout=10)

        msg = expect_error(lambda: create(FILE, {"format": "csv"}), INVALID, "CreateDestination FILE without directory")
        assert "directory" in msg, f"CreateDestination FILE without directory: {msg!r} does not name it"
        msg = expect_error(lambda: create(FILE, {"directory": str(tmp_path / "x"), "format": "xml"}), INVALID,
                           "CreateDestination FILE with format xml")
        assert "format" in msg, f"CreateDestination FILE with format xml: {msg!r} does not name format"
        for type_, settings, missing in (
                (Req.DESTINATION_TYPE_MARKETO, {"endpoint": "https://123-ABC-456.mktorest.com",
                                                "client_id": "c", "client_secret": "s3cr3t"}, "list_id"),
                (Req.DESTINATION_TYPE_LINKEDIN, {"ad_account": "urn:li:sponsoredAccount:1",
                                                 "source_platform": "P"}, "access_token"),
                (Req.DESTINATION_TYPE_WEBHOOK, {"url": "http://127.0.0.1:9/"}, "secret")):
            msg = expect_error(lambda: create(type_, settings), INVALID,
                               f"CreateDestination {Req.DestinationType.Name(type_)} without {missing}")
            assert missing in msg, f"CreateDestination without {missing}: {msg!r} does not name it"
            assert "s3cr3t" not in msg, f"CreateDestination MARKETO's error shows the client secret: {msg!r}"
        expect_error(lambda: create(Req.DESTINATION_TYPE_UNSPECIFIED, {"directory": str(tmp_path / "x")}), INVALID,
                     "CreateDestination with no type")
        assert list(dst.ListDestinations(Req.ListDestinationsRequest(), timeout=10).destinations) == [], (
            "a refused CreateDestination left a destination behind")

        d1 = create(FILE, {"directory": str(tmp_path / "exports")})
        assert d1.id == "d1", f"the first destination is {d1.id!r}"

        msg = expect_error(lambda: dst.Activate(Req.ActivateRequest(segment_id="s1", destination_id="d9"),
                                                timeout=10), NOT_FOUND, "Activate to an unknown destination")
        assert "d9" in msg, f"Activate to d9: {msg!r} does not name it"
        expect_error(lambda: dst.Activate(Req.ActivateRequest(segment_id="", destination_id=d1.id), timeout=10),
                     INVALID, "Activate with an empty segment")
        expect_error(lambda: dst.Deactivate(Req.DeactivateRequest(activation_id="a9"), timeout=10), NOT_FOUND,
                     "Deactivate of an unknown activation")
        msg = expect_error(lambda: dst.ListDeliveries(Req.ListDeliveriesRequest(destination_id="d9"), timeout=10),
                           NOT_FOUND, "ListDeliveries of an unknown destination")
        assert "d9" in msg, f"ListDeliveries of d9: {msg!r} does not name it"
        for token in ("garbage", "-3", "0", "1.5", "99999999999999999999"):
            msg = expect_error(lambda: dst.ListDeliveries(Req.ListDeliveriesRequest(
                destination_id=d1.id, page_token=token), timeout=10), INVALID, f"ListDeliveries page_token {token!r}")
            assert "page_token" in msg, f"ListDeliveries page_token {token!r}: {msg!r}"

        change = Req.MembershipChange(sequence=1, segment_id="s1", entity_type=E.ENTITY_TYPE_PERSON, cluster_id=7,
                                      realized=True, version=1)
        change.record.cluster_id = 7
        change.record.record.person.email = "p7@match.example"
        msg = expect_error(lambda: dst.AcceptMembershipChanges(Req.AcceptMembershipChangesRequest(
            sender="", changes=[change]), timeout=10), INVALID, "AcceptMembershipChanges with an empty sender")
        assert "sender" in msg, f"AcceptMembershipChanges with an empty sender: {msg!r}"
        # Nothing was taken: the same sequence is new for a real sender, and a duplicate when re-sent.
        r1 = dst.AcceptMembershipChanges(Req.AcceptMembershipChangesRequest(sender="segmentation", changes=[change]),
                                         timeout=10)
        r2 = dst.AcceptMembershipChanges(Req.AcceptMembershipChangesRequest(sender="segmentation", changes=[change]),
                                         timeout=10)
        assert (r1.accepted, r1.duplicates, r2.accepted, r2.duplicates) == (1, 0, 0, 1), (
            f"AcceptMembershipChanges then the same again answered {r1} and {r2}")
        assert svc.alive(), f"destination died: {svc.exit_description()}"


# ---------------------------------------------------------------------------------------------------
# 4. Service bugs found by the pipeline test, pinned down against a standalone cdp-destination
# ---------------------------------------------------------------------------------------------------

def _person_change(sequence: int, cluster: int, version: int, realized: bool, email: str, segment: str = "s1"):
    change = destination_pb2.MembershipChange(sequence=sequence, segment_id=segment, entity_type=E.ENTITY_TYPE_PERSON,
                                              cluster_id=cluster, realized=realized, version=version)
    change.record.cluster_id = cluster
    change.record.record.person.email = email
    return change


def _wait_idle(dst, destination_id: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        ds = {d.id: d for d in dst.ListDestinations(destination_pb2.ListDestinationsRequest(), timeout=10).destinations}
        if ds[destination_id].pending == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{destination_id} still has {ds[destination_id].pending} pending after {timeout}s")
        time.sleep(0.05)


class _Standalone:
    """A cdp-destination with one FILE destination (csv, incremental) and s1 activated to it by email."""

    def __init__(self, tmp_path: Path):
        if not DESTINATION_BIN.exists():
            pytest.fail(f"cdp-destination not found at {DESTINATION_BIN}", pytrace=False)
        self.tmp_path = tmp_path
        self.exports = tmp_path / "exports"

    def __enter__(self):
        with ExitStack() as stack:
            self.svc, self.dst = stack.enter_context(running_destination(self.tmp_path))
            self.d1 = self.dst.CreateDestination(destination_pb2.CreateDestinationRequest(
                type=FILE, name="csv", settings={"directory": str(self.exports)}), timeout=10)
            self.a1 = self.dst.Activate(destination_pb2.ActivateRequest(segment_id="s1", destination_id=self.d1.id,
                                                                        identity=EMAIL_ID), timeout=10)
            self._running = stack.pop_all()
        return self

    def send(self, *changes) -> None:
        resp = self.dst.AcceptMembershipChanges(destination_pb2.AcceptMembershipChangesRequest(
            sender="segmentation", changes=list(changes)), timeout=10)
        assert resp.accepted == len(changes), f"AcceptMembershipChanges answered {resp}"
        _wait_idle(self.dst, self.d1.id)

    def __exit__(self, *exc):
        # running_destination's exit: logs the diagnostics on an exception, closes the channel, kills the service
        return self._running.__exit__(*exc)


def test_a_member_whose_email_changed_is_removed_under_the_email_it_was_added_with(tmp_path):
    with _Standalone(tmp_path) as d:
        d.send(_person_change(1, 11, 1, True, "a@match.example"))
        d.send(_person_change(2, 11, 2, False, "a@other.example"))
        files = read_exports(d.exports)
        held, problems = replay(files)
        assert (held, problems) == (set(), []), (
            f"the files {files} replay to {sorted(held)} with problems {problems}; expected nobody")


def test_a_member_that_came_and_went_before_delivery_is_not_counted(tmp_path):
    with _Standalone(tmp_path) as d:
        d.send(_person_change(1, 12, 1, True, "b@match.example"), _person_change(2, 12, 2, False, "b@match.example"))
        files = read_exports(d.exports)
        runs = deliveries(d.dst, d.d1.id)
        added, removed = sum(r.added for r in runs), sum(r.removed for r in runs)
        assert files == [] and (added, removed) == (0, 0), (
            f"files {files}; runs {[(r.id, r.added, r.removed) for r in runs]}: added {added}, removed {removed}, "
            f"expected no file and nothing counted")


def test_a_batch_written_before_a_sigkill_is_not_added_again(tmp_path):
    with _Standalone(tmp_path) as d:
        for k in range(8):
            d.dst.AcceptMembershipChanges(destination_pb2.AcceptMembershipChangesRequest(
                sender="segmentation", changes=[_person_change(k + 1, 20 + k, 1, True, f"w{k}@match.example")]),
                timeout=10)
            deadline = time.monotonic() + 10
            while not any(("add", f"w{k}@match.example") in rows for _, rows in read_exports(d.exports)):
                assert time.monotonic() < deadline, f"no export file adds w{k}@match.example within 10 s"
            d.svc.kill()
            d.svc.start(d.svc.port)
            _wait_idle(d.dst, d.d1.id)
            files = read_exports(d.exports)
            held, problems = replay(files)
            if problems:
                break
        log(f"{k + 1} tries; files {[n for n, _ in files]}")
        assert (held, problems) == ({f"w{j}@match.example" for j in range(k + 1)}, []), (
            f"after {k + 1} SIGKILLs the files {files} replay with problems {problems}")

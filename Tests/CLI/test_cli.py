"""Acceptance test of the `cdp` CLI (README.md "The CLI"; Examples/bodea/README.md).

1. ``cdp up`` runs the five services; the Bodea flow goes through the CLI only: ``source create`` for each
   source of Examples/bodea/ingest.tsv, ``ingest --wait --json`` of every file (COMPLETED, nothing rejected),
   the batch segment (``segment create``), ``segment evaluate`` as of 2026-05-01, ``segment members`` (exactly
   p2@townsend.com), ``segment explain``, two file destinations (a Marketo static list's import file, a
   LinkedIn upload file), ``activate`` to both, the export files, ``deliveries`` and ``status``;
2. the unhappy paths against the same services: a bad definition, ``--identity`` without a colon, a missing
   file, an unknown format, ``--set`` without ``=``, an unknown segment to activate or list, a bad row
   reported with its line number (and a batch over the error threshold), ``status`` with nothing listening;
3. SIGTERM to ``cdp up``: exit status 0 within 20 s, none of its services left;
4. ``cdp demo`` as a whole on its own ports and data directory.

The binaries are .build/debug's unless CDP_BIN_DIR names another directory (e.g. .build-static/release).
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from cli_support import (
    AS_OF, BODEA, BODEA_PQL, LINKEDIN_ROWS, MARKETO_ROWS, OPPORTUNITY_1, OPPORTUNITY_2, P2, P2_VISIT, SERVICES,
    assert_cli_error, assert_no_crash, cdp_json, cdp_ok, describe, exported, free_port_base, id_of,
    manifest, num, read_csv_rows, require_cdp, run_cdp, service_running, wait_for_files,
)


def test_up_json_line(stack):
    """The JSON line of `cdp up --json`: the data directory and the five services in order, each on its port
    and running."""
    info, base = stack.info, stack.port_base
    assert Path(info.get("dataDir", "")).resolve() == stack.data_dir.resolve(), info
    services = info.get("services", [])
    assert [s.get("name") for s in services] == list(SERVICES), info
    for i, s in enumerate(services):
        assert s.get("address") == f"127.0.0.1:{base + i}", f"{s['name']}: {s} (port base {base})"
        assert isinstance(s.get("pid"), int) and s["pid"] > 0, s
    assert all(service_running(pid, name) for name, pid in stack.pids().items()), (
        f"not every service of {stack.pids()} is running\n{stack.logs()}")
    for name in SERVICES:
        assert (stack.data_dir / "logs" / f"{name}.log").is_file(), f"no log {stack.data_dir}/logs/{name}.log"


def test_bodea_flow(stack):
    """Examples/bodea through the CLI: exactly p2@townsend.com, exported to both files."""
    base, work = stack.port_base, stack.data_dir.parent
    lines = manifest()

    # Sources, then every file in the manifest's order.
    for source in dict.fromkeys(line.source for line in lines):
        type_, instance = source.split(":", 1)
        cdp_ok(["source", "create", "--type", type_, "--instance", instance, "--description", f"Bodea {source}"],
               base)
    listed = run_cdp(["source", "list"], base)
    assert listed.returncode == 0 and all(s in listed.stdout for s in ("mkto-1", "mkto-2", "mdm-1")), (
        describe(["source", "list"], listed))

    total = 0
    for line in lines:
        batch = cdp_json(["ingest", line.file, "--entity", line.entity, "--source", line.source, "--format",
                          line.format, "--wait"], base)
        counts = batch.get("counts", {})
        where = f"{line.file.relative_to(BODEA)}: {batch}"
        assert batch.get("state") == "BATCH_STATE_COMPLETED", where
        assert num(counts, "rejected") == 0 and not batch.get("errors"), where
        assert num(counts, "records") > 0 and num(counts, "accepted") == num(counts, "records"), where
        total += num(counts, "accepted")
    assert total == 31, f"{total} records accepted over the manifest; Examples/bodea/README.md says 31"

    # The batch segment, evaluated as of the story's now.
    segment = cdp_json(["segment", "create", "--mode", "batch", "--name", "Townsend buyers", "--pql", BODEA_PQL],
                       base)
    seg = id_of(segment)
    assert segment.get("pql") == BODEA_PQL and segment.get("mode", "").endswith("BATCH"), segment
    job = cdp_json(["segment", "evaluate", seg, "--as-of", AS_OF], base)
    assert str(job.get("state", "")).upper().endswith("SUCCEEDED"), job
    assert num(job, "realized") == 1 and num(job, "exited") == 0 and num(job, "evaluated") >= 6, job

    members = cdp_json(["segment", "members", seg, "--status", "realized"], base)
    assert isinstance(members, list) and len(members) == 1, members
    assert members[0].get("emails") == [P2] and members[0].get("status") == "realized", members
    # Ids are strings, as in the services' JSON (64-bit numbers).
    assert isinstance(members[0].get("id"), str) and members[0]["id"].isdigit() and members[0].get("since"), members

    explained = cdp_json(["segment", "explain", seg, "--identity", f"email:{P2}", "--as-of", "2026-05-01"], base)
    assert explained.get("matched") is True, explained
    text = str(explained)
    assert OPPORTUNITY_1 in text and OPPORTUNITY_2 in text and P2_VISIT in text, (
        f"the explanation does not name Opportunity 1, Opportunity 2 and p2's visit: {explained}")

    # Activation to a Marketo static list's import file and a LinkedIn upload file.
    marketo_dir, linkedin_dir = work / "marketo", work / "linkedin"
    marketo = id_of(cdp_json(["destination", "create", "--type", "file", "--name", "Marketo static list",
                              "--set", f"directory={marketo_dir}", "--set", "format=csv"], base))
    linkedin = id_of(cdp_json(["destination", "create", "--type", "file", "--name", "LinkedIn Matched Audience",
                               "--set", f"directory={linkedin_dir}", "--set", "format=csv"], base))
    assert marketo != linkedin
    listed = run_cdp(["destination", "list"], base)
    assert listed.returncode == 0 and marketo in listed.stdout and linkedin in listed.stdout, (
        describe(["destination", "list"], listed))
    a1 = cdp_json(["activate", seg, "--destination", marketo, "--identity", "email",
                   "--attribute", "firstName=firstName", "--attribute", "lastName=lastName",
                   "--attribute", "title=jobTitle"], base)
    a2 = cdp_json(["activate", seg, "--destination", linkedin, "--identity", "hashed-email"], base)
    assert id_of(a1) != id_of(a2)

    found = wait_for_files([marketo_dir, linkedin_dir], timeout=60)
    for name, directory, want in [("Marketo", marketo_dir, MARKETO_ROWS), ("LinkedIn", linkedin_dir, LINKEDIN_ROWS)]:
        files = found[directory]
        assert len(files) == 1, f"{name}: {directory} holds {files} after 60 s; expected one export file\n" \
                                f"{stack.logs()}"
        assert read_csv_rows(files[0]) == want, f"{name}: {files[0]}:\n{files[0].read_text()}"

    # The delivery log (written right after the file) and the services' backlogs.
    for d in (marketo, linkedin):
        deadline = time.monotonic() + 30
        while True:
            deliveries = cdp_json(["deliveries", d], base).get("deliveries", [])
            added = sum(num(x, "added") for x in deliveries)
            if added >= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert added == 1 and all(num(x, "failed") == 0 for x in deliveries), f"deliveries of {d}: {deliveries}"

    deadline = time.monotonic() + 30
    while True:
        status = cdp_json(["status"], base)
        services = status.get("services", [])
        settled = all(s.get("healthy") is True and num(s, "pending") == 0 for s in services)
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [s.get("name") for s in services] == list(SERVICES) and settled, status
    assert [s.get("address") for s in services] == [f"127.0.0.1:{base + i}" for i in range(5)], status


# ---------------------------------------------------------------------------------------------------
# Unhappy paths (against the same services)
# ---------------------------------------------------------------------------------------------------

def test_bad_pql_names_line_and_column(stack):
    args = ["segment", "create", "--mode", "batch", "--name", "broken", "--pql", "person.score >"]
    assert_cli_error(args, run_cdp(args, stack.port_base), "line 1, column 15", "expected")


@pytest.mark.parametrize("command", [
    ["segment", "explain", "s1", "--identity", "no-namespace-here"],
    ["profile", "get", "--identity", "no-namespace-here"],
])
def test_identity_without_colon(stack, command):
    assert_cli_error(command, run_cdp(command, stack.port_base),
                     any_of=("no-namespace-here", "--identity", "NS:VALUE"))


def test_ingest_missing_file(stack, tmp_path):
    missing = tmp_path / "no-such-file.csv"
    args = ["ingest", missing, "--entity", "leads", "--source", "Marketo:mkto-1", "--format", "marketo"]
    assert_cli_error(args, run_cdp(args, stack.port_base), "no-such-file.csv")


def test_ingest_unknown_format(stack):
    args = ["ingest", BODEA / "marketo-1" / "leads.csv", "--entity", "leads", "--source", "Marketo:mkto-1",
            "--format", "excel"]
    assert_cli_error(args, run_cdp(args, stack.port_base), "excel")


def test_destination_set_without_equals(stack, tmp_path):
    args = ["destination", "create", "--type", "file", "--name", "broken", "--set", f"directory{tmp_path}"]
    assert_cli_error(args, run_cdp(args, stack.port_base), any_of=("--set", "KEY=VALUE", f"directory{tmp_path}"))


def test_activate_unknown_segment(stack, tmp_path):
    # cdp-destination itself takes an activation of any segment id (it learns members from segmentation as
    # they come); the CLI is to refuse a segment that segmentation does not know.
    dest = id_of(cdp_json(["destination", "create", "--type", "file", "--name", "unused",
                           "--set", f"directory={tmp_path / 'unused'}"], stack.port_base))
    args = ["activate", "s999", "--destination", dest, "--identity", "email"]
    assert_cli_error(args, run_cdp(args, stack.port_base), "s999")


def test_members_of_unknown_segment(stack):
    args = ["segment", "members", "s999"]
    assert_cli_error(args, run_cdp(args, stack.port_base), "s999")


BAD_PERSONS = """\
personId,email,firstName,lastName
cli-1,one@cli.example,Ada,One
cli-2,not-an-email,Bad,Row
cli-3,three@cli.example,Cy,Three
cli-4,four@cli.example,Di,Four
"""


def test_rejected_row_reported_with_its_line(stack, tmp_path):
    """Under the error threshold the batch completes; the bad row is in its errors with line 3 and column email."""
    base = stack.port_base
    cdp_ok(["source", "create", "--type", "Test", "--instance", "cli-errors"], base)
    tolerant = tmp_path / "persons-tolerant.csv"
    tolerant.write_text(BAD_PERSONS)
    batch = cdp_json(["ingest", tolerant, "--entity", "person", "--source", "Test:cli-errors", "--format",
                      "canonical", "--error-threshold", "0.5"], base)
    counts = batch.get("counts", {})
    assert batch.get("state") == "BATCH_STATE_COMPLETED", batch
    assert num(counts, "records") == 4 and num(counts, "accepted") == 3 and num(counts, "rejected") == 1, batch
    errors = batch.get("errors", [])
    assert len(errors) == 1 and num(errors[0], "line") == 3 and errors[0].get("field") == "email", batch
    assert "not-an-email" in errors[0].get("reason", ""), batch


def test_source_named_as_ingest_names_it(stack):
    """`cdp source create TYPE:INSTANCE` registers the source `cdp ingest --source` names the same way; a name
    without the instance, or given twice, is refused with what to write instead."""
    base = stack.port_base
    assert cdp_ok(["source", "create", "Test:cli-positional"], base).stdout.strip() == "Test:cli-positional"
    listed = run_cdp(["source", "list"], base)
    assert "Test:cli-positional" in listed.stdout, describe(["source", "list"], listed)
    for args, says in ((["source", "create", "Test"], "TYPE:INSTANCE"),
                       (["source", "create"], "TYPE:INSTANCE"),
                       (["source", "create", "Test:x", "--type", "Test", "--instance", "x"], "not both")):
        res = run_cdp(args, base)
        assert res.returncode != 0 and says in res.stderr, describe(args, res)


def test_failed_batch(stack, tmp_path):
    """Over the default error threshold (5 %) the batch fails: exit status 1, the plain output still says which
    line was wrong, and stderr says that the batch failed (`cdp: error: …`, like every failing command)."""
    base = stack.port_base
    cdp_ok(["source", "create", "--type", "Test", "--instance", "cli-errors"], base)
    strict = tmp_path / "persons-strict.csv"
    strict.write_text(BAD_PERSONS)
    args = ["ingest", strict, "--entity", "person", "--source", "Test:cli-errors", "--format", "canonical"]
    res = run_cdp(args, base)
    assert res.returncode == 1, describe(args, res)
    assert re.search(r"\bline 3\b", res.stdout + res.stderr), f"line 3 is not reported: {describe(args, res)}"
    assert_cli_error(args, res, exit_status=1)


def test_status_with_nothing_listening():
    require_cdp()
    base = free_port_base()
    args = ["status"]
    res = run_cdp(args, base, timeout=60)
    assert_cli_error(args, res, f"127.0.0.1:{base}", exit_status=1, names_in_output=True)


def test_up_stops_on_sigterm(stack):
    """Last test of the module: SIGTERM to `cdp up` stops all five services; it exits 0 within 20 s."""
    pids = stack.pids()
    assert len(pids) == 5, stack.info
    rc, took = stack.terminate()
    assert rc is not None, f"cdp up did not exit within 20 s of SIGTERM\n{stack.logs()}"
    assert rc == 0, f"cdp up exited with status {rc} after SIGTERM ({took:.1f} s)\n{stack.logs()}"
    left = stack.left_running()
    assert not left, f"still running after cdp up exited: {left}\n{stack.logs()}"
    crashes = [m for m in ("Fatal error", "Program crashed", "💣") if m in stack.logs(chars=100_000)]
    assert not crashes, f"crash reports in the logs: {crashes}\n{stack.logs()}"


# ---------------------------------------------------------------------------------------------------
# cdp demo
# ---------------------------------------------------------------------------------------------------

def test_demo(tmp_path):
    require_cdp()
    data, out = tmp_path / "data", tmp_path / "out"
    args = ["demo", "--data-dir", data, "--out", out, "--port-base", free_port_base()]
    res = run_cdp(args, None, timeout=600)
    assert res.returncode == 0, describe(args, res)
    assert_no_crash(args, res)
    assert P2 in res.stdout, f"the demo's output does not mention {P2}: {describe(args, res)}"
    files = exported(out)
    rows = sorted((read_csv_rows(f) for f in files), key=lambda r: len(r[0]) if r else 0)  # LinkedIn's first
    assert rows == [LINKEDIN_ROWS, MARKETO_ROWS], (
        f"{out} holds {[str(f.relative_to(out)) for f in files]}; expected a LinkedIn export {LINKEDIN_ROWS} and a "
        f"Marketo export {MARKETO_ROWS}:\n" + "\n".join(f"{f}:\n{f.read_text()}" for f in files))

"""Commands users expect (issue 18, the CLI list), through the `cdp` CLI against the real binaries: `cdp ingest -`
(standard input) and gzip files, `cdp batch list|get`, `cdp segment update` with `--pql-file`, `cdp activate
--wait`, `cdp identity get`, errors as JSON with `--json`, and usage errors in the `cdp: error:` form.
"""

from __future__ import annotations

import gzip
import json
import subprocess

from cli_support import CDP, assert_cli_error, cdp_env, cdp_json, cdp_ok, describe, num, run_cdp


def test_standard_input_and_gzip_files_are_uploaded(stack, tmp_path):
    base = stack.port_base
    cdp_ok(["source", "create", "--type", "Test", "--instance", "pipes"], base)
    # A gzip file, named .gz: uploaded as its plain CSV, under its name without .gz.
    packed = tmp_path / "people.csv.gz"
    packed.write_bytes(gzip.compress(b"personId,email,firstName\ngz-1,gil@pipes.example,Gil\n"
                                     b"gz-2,gus@pipes.example,Gus\n"))
    batch = cdp_json(["ingest", packed, "--entity", "person", "--source", "Test:pipes"], base)
    assert num(batch["counts"], "accepted") == 2 and batch["fileName"] == "people.csv", batch
    # Standard input: CSV, then NDJSON (told by its first character).
    for text, person in (("personId,email\nin-1,ida@pipes.example\n", "ida"),
                         ('{"personId":"in-2","email":"ivo@pipes.example"}\n', "ivo")):
        res = subprocess.run([str(CDP), "ingest", "-", "--entity", "person", "--source", "Test:pipes", "--json"],
                             input=text, env=cdp_env(base), capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        batch = json.loads(res.stdout)
        assert num(batch["counts"], "accepted") == 1 and batch["fileName"] == "stdin", (person, batch)
    # A file that claims to be gzip and is not: refused, saying why.
    broken = tmp_path / "broken.csv.gz"
    broken.write_bytes(b"\x1f\x8bnot really gzip")
    args = ["ingest", broken, "--entity", "person", "--source", "Test:pipes"]
    assert_cli_error(args, run_cdp(args, base), "not valid gzip")

    # The batches, and one with its record errors.
    bad = tmp_path / "typos.csv"
    bad.write_text("personId,email\nty-1,not-an-email\nty-2,ty@pipes.example\n")
    res = run_cdp(["ingest", bad, "--entity", "person", "--source", "Test:pipes", "--json"], base)
    # One JSON document: the failed batch (the failure is its state; no second document follows).
    assert res.returncode == 1 and len(res.stdout.strip().splitlines()) == 1, describe(["ingest"], res)
    failed = json.loads(res.stdout)
    listed = run_cdp(["batch", "list"], base)
    assert listed.returncode == 0 and failed["batchId"] in listed.stdout and "people.csv" in listed.stdout, (
        describe(["batch", "list"], listed))
    shown = run_cdp(["batch", "get", failed["batchId"]], base)
    assert shown.returncode == 1 and "line 2, field email" in shown.stdout, describe(["batch", "get"], shown)
    args = ["batch", "get", "b-nothing"]
    assert_cli_error(args, run_cdp(args, base), "b-nothing")


def test_segment_update_from_a_file_and_identity_get(stack, tmp_path):
    base = stack.port_base
    cdp_ok(["source", "create", "--type", "Test", "--instance", "update"], base)
    people = tmp_path / "people.csv"
    people.write_text("personId,email,jobTitle\nup-1,uma@update.example,CFO\nup-2,uri@update.example,CTO\n")
    cdp_ok(["ingest", people, "--entity", "person", "--source", "Test:update", "--wait"], base)
    definition = tmp_path / "cfo.pql"
    definition.write_text('person.email.endsWith("@update.example")\n  and person.jobTitle = "CFO"\n')
    segment = cdp_ok(["segment", "create", "--name", "cfos", "--pql-file", definition, "--wait"], base).stdout.strip()
    assert [m["emails"] for m in cdp_json(["segment", "members", segment], base)] == [["uma@update.example"]]

    # A typo on the file's second line is reported there; the segment is unchanged.
    definition.write_text('person.email.endsWith("@update.example")\n  and person.jobTitel = "CTO"\n')
    args = ["segment", "update", segment, "--pql-file", definition]
    assert_cli_error(args, run_cdp(args, base), "jobTitel", any_of=("line 2", "2:"))
    definition.write_text('person.email.endsWith("@update.example")\n  and person.jobTitle = "CTO"\n')
    res = run_cdp(["segment", "update", segment, "--pql-file", definition, "--name", "ctos", "--wait"], base)
    assert res.returncode == 0 and res.stdout.strip() == segment, describe(["segment", "update"], res)
    members = cdp_json(["segment", "members", segment, "--status", "realized"], base)
    assert [m["emails"] for m in members] == [["uri@update.example"]], members
    assert cdp_json(["segment", "get", segment], base)["name"] == "ctos"
    args = ["segment", "update", segment]
    assert_cli_error(args, run_cdp(args, base), "nothing to change")

    # activate --wait returns once the backfill is delivered: the export is there at once.
    exports = tmp_path / "exports"
    destination = cdp_ok(["destination", "create", "--type", "file", "--name", "ctos", "--set",
                          f"directory={exports}"], base).stdout.strip()
    res = run_cdp(["activate", segment, "--destination", destination, "--wait"], base)
    assert res.returncode == 0, describe(["activate", "--wait"], res)
    assert [p.read_text() for p in exports.iterdir()] == ["op,identity\nadd,uri@update.example\n"], list(exports.iterdir())

    # The cluster behind a person: its identities and the record that links them.
    res = run_cdp(["identity", "get", "--identity", "email:URI@update.example"], base)
    assert res.returncode == 0, describe(["identity", "get"], res)
    assert "email:uri@update.example" in res.stdout and "up-2@update.Test" in res.stdout, describe([], res)
    args = ["identity", "get", "--identity", "email:nobody@update.example"]
    assert_cli_error(args, run_cdp(args, base), "nobody@update.example")


def test_errors_with_json_and_usage_errors(stack):
    base = stack.port_base
    # With --json a failure is also a JSON document on stdout, with the same exit status.
    args = ["segment", "get", "s999", "--json"]
    res = run_cdp(args, base)
    assert res.returncode == 1 and res.stderr.startswith("cdp: error:"), describe(args, res)
    document = json.loads(res.stdout)
    assert document["error"]["exitStatus"] == 1 and document["error"]["service"] == "segmentation", document
    assert document["error"]["code"] == "NOT_FOUND" and "s999" in document["error"]["message"], document
    # Usage errors: the same form, then the usage.
    args = ["ingest", "--entity", "person"]
    res = run_cdp(args, base)
    assert res.returncode == 64 and res.stderr.startswith("cdp: error:"), describe(args, res)
    assert "Usage: cdp ingest" in res.stderr, describe(args, res)


def test_estimate_takes_the_definition_as_its_argument(stack):
    """`cdp segment estimate 'PQL'` as a new user first types it: the same answer as `--pql`; given twice, refused."""
    base = stack.port_base
    pql = 'person.email.endsWith("@nowhere.example")'
    with_option = run_cdp(["segment", "estimate", "--pql", pql, "--as-of", "2026-05-01"], base)
    as_argument = run_cdp(["segment", "estimate", pql, "--as-of", "2026-05-01"], base)
    assert as_argument.returncode == 0, describe(["segment", "estimate", pql], as_argument)
    assert as_argument.stdout == with_option.stdout and "of" in as_argument.stdout, describe(["estimate"], as_argument)
    args = ["segment", "estimate", pql, "--pql", pql]
    res = run_cdp(args, base)
    assert res.returncode == 1 and "give the definition once" in res.stderr, describe(args, res)


def test_estimate_honours_timeout(stack):
    """Item 9: `estimate` has no deadline by default (it reads every profile), and `--timeout` bounds it."""
    base = stack.port_base
    pql = 'person.email.endsWith("@nowhere.example")'
    res = run_cdp(["segment", "estimate", "--pql", pql], base)
    assert res.returncode == 0, describe(["segment", "estimate"], res)
    args = ["segment", "estimate", "--pql", pql, "--timeout", "0.001"]
    assert_cli_error(args, run_cdp(args, base), "segmentation", any_of=("did not answer in time", "Deadline exceeded"))

"""A person's right to erasure (issue 18, item 3), through the `cdp` CLI against the real binaries and an HTTP
fake of Marketo that checks what it receives against the documented API.

`cdp privacy delete --identity … --wait` erases a person from every service: the Marketo list and the file
export remove them, segment members and profile lookups no longer know them, and afterwards a scan of every
service's database files (the SQLite database, its write-ahead log and shared memory) finds none of the
person's identities or names, in any case. A second delete succeeds and names the first request. A later
upload of the person is refused with a clear message (counted apart from invalid records, not against the
error threshold) while the other records of the file are taken; `cdp privacy allow` lets the person in again.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "Tests" / "Destination"))

from cli_support import cdp_json, cdp_ok, describe, id_of, num, run_cdp  # noqa: E402
from destination_support import read_exports, replay  # noqa: E402
from fakes import FakeMarketo  # noqa: E402

HEADER = "personId,email,firstName,lastName,jobTitle,crmId\n"
# Quentin is erased; Ada stays. The words the scan looks for are Quentin's alone.
QUENTIN = "pv-1,Quentin.Zabriskie@Privacy.example,Quentin,Zabriskie,Chief Erasure Officer,CRM-QZ-77123\n"
ADA = "pv-2,ada@privacy.example,Ada,Lovelace,Engineer,CRM-AL-1\n"
SECRETS = ["quentin.zabriskie@privacy.example", "zabriskie", "quentin", "crm-qz-77123", "chief erasure officer"]


def wait_for(what: str, check, stack, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        problem = check()
        if not problem:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} after {timeout:.0f} s: {problem}\n{stack.logs()}")
        time.sleep(0.2)


def database_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in data_dir.rglob("*") if p.is_file() and ".sqlite" in p.name)


def scan(files: list[Path]) -> list[str]:
    """Where the secrets occur, in any case, as `file: word`."""
    found = []
    for path in files:
        data = path.read_bytes().lower()
        found += [f"{path.parent.name}/{path.name}: {word}" for word in SECRETS if word.encode() in data]
    return found


def test_a_privacy_delete_leaves_nothing_and_refuses_the_person_afterwards(stack, tmp_path):
    base = stack.port_base
    marketo = FakeMarketo().start()
    try:
        cdp_ok(["source", "create", "--type", "Test", "--instance", "privacy"], base)
        first = tmp_path / "crm-export-1.csv"
        first.write_text(HEADER + QUENTIN + ADA)
        batch = cdp_json(["ingest", first, "--entity", "person", "--source", "Test:privacy", "--wait"], base)
        assert num(batch["counts"], "accepted") == 2, batch
        segment = cdp_ok(["segment", "create", "--name", "privacy people", "--wait", "--pql",
                          'person.email.endsWith("@privacy.example")'], base).stdout.strip()
        exports = tmp_path / "exports"
        mk = id_of(cdp_json(["destination", "create", "--type", "marketo", "--name", "privacy list", "--set",
                             f"endpoint={marketo.url}", "--set", f"client_id={marketo.client_id}", "--set",
                             f"client_secret={marketo.client_secret}", "--set", "list_id=1001"], base))
        files = id_of(cdp_json(["destination", "create", "--type", "file", "--name", "privacy file", "--set",
                                f"directory={exports}"], base))
        for destination in (mk, files):
            cdp_ok(["activate", segment, "--destination", destination, "--attribute", "lastName=lastName"], base)
        both = {"quentin.zabriskie@privacy.example", "ada@privacy.example"}
        wait_for("both persons did not reach Marketo", lambda: marketo.list_emails() != both and
                 f"the list holds {marketo.list_emails()}", stack)

        # The scan sees the person before the delete (in ingestion, identity, profile, segmentation, destination).
        before = {entry.split("/")[0] for entry in scan(database_files(stack.data_dir))}
        assert {"ingestion", "identity", "profile", "segmentation", "destination"} <= before, before

        # The delete, with the email typed as the CRM shows it.
        args = ["privacy", "delete", "--identity", "email:Quentin.Zabriskie@Privacy.example", "--wait"]
        res = run_cdp(args, base, timeout=180)
        assert res.returncode == 0, describe(args, res)
        assert "pr-1: done" in res.stdout, describe(args, res)
        for service in ("ingestion", "identity", "profile", "segmentation", "destination"):
            assert f"  {service}: done" in res.stdout, f"{service} is not done:\n{describe(args, res)}"

        # Gone from the destinations, the segment and profile.
        assert marketo.list_emails() == {"ada@privacy.example"}, marketo.list_emails()
        held, problems = replay(read_exports(exports))
        assert held == {"ada@privacy.example"} and not problems, (held, problems)
        members = cdp_json(["segment", "members", segment], base)
        assert [m["emails"] for m in members] == [["ada@privacy.example"]], members
        gone = run_cdp(["profile", "get", "--identity", "email:quentin.zabriskie@privacy.example"], base)
        assert gone.returncode != 0 and "no person" in gone.stderr, describe(["profile", "get"], gone)

        # A second delete succeeds and names the request that erased the person.
        again = run_cdp(["privacy", "delete", "--identity", "email:quentin.zabriskie@privacy.example"], base)
        assert again.returncode == 0 and "erased by pr-1" in again.stderr, describe(["privacy", "delete"], again)
        nobody = run_cdp(["privacy", "delete", "--identity", "email:nobody@privacy.example"], base)
        assert nobody.returncode == 1 and "no person has the identity email:nobody@privacy.example" in nobody.stderr, (
            describe(["privacy", "delete"], nobody))
        listed = run_cdp(["privacy", "status"], base)
        assert listed.returncode == 0 and "pr-1" in listed.stdout and "done" in listed.stdout, (
            describe(["privacy", "status"], listed))

        # Nothing of Quentin in any service's files (the pipeline is idle: the request waited for it).
        found = scan(database_files(stack.data_dir))
        assert not found, f"the person is still in the database files: {found}"

        # The next export of the CRM still holds Quentin: refused, said why; Ada's change is taken.
        second = tmp_path / "crm-export-2.csv"
        second.write_text(HEADER + QUENTIN.replace("Chief", "Former Chief") + ADA.replace("Engineer", "CTO"))
        args = ["ingest", second, "--entity", "person", "--source", "Test:privacy", "--wait"]
        res = run_cdp(args, base, timeout=120)
        assert res.returncode == 0, describe(args, res)
        assert "1 accepted" in res.stdout and "1 refused (persons erased by privacy requests)" in res.stdout, (
            describe(args, res))
        assert "line 2" in res.stdout and "erased by privacy request pr-1" in res.stdout, describe(args, res)
        assert "cdp privacy allow" in res.stdout, describe(args, res)
        gone = run_cdp(["profile", "get", "--identity", "email:quentin.zabriskie@privacy.example"], base)
        assert gone.returncode != 0, describe(["profile", "get"], gone)
        found = scan(database_files(stack.data_dir))
        assert not found, f"the refused upload left the person in the database files: {found}"

        # Allowed again: the person's records are taken from then on.
        res = run_cdp(["privacy", "allow", "--identity", "email:QUENTIN.zabriskie@privacy.example"], base)
        assert res.returncode == 0 and "lifted pr-1" in res.stdout, describe(["privacy", "allow"], res)
        res = run_cdp(["privacy", "allow", "--identity", "email:quentin.zabriskie@privacy.example"], base)
        assert res.returncode == 1 and "no privacy request suppressed" in res.stderr, describe(["privacy", "allow"], res)
        batch = cdp_json(["ingest", second, "--entity", "person", "--source", "Test:privacy", "--wait", "--key",
                          "after the allow"], base)
        assert num(batch["counts"], "accepted") == 1 and num(batch["counts"], "suppressed") == 0, batch
        back = cdp_json(["profile", "get", "--identity", "email:quentin.zabriskie@privacy.example"], base)
        assert back.get("person", {}).get("record", {}).get("person", {}).get("jobTitle") == \
            "Former Chief Erasure Officer", back
        assert not marketo.violations and not marketo.duplicate_adds, (marketo.violations, marketo.duplicate_adds)
    finally:
        marketo.stop()

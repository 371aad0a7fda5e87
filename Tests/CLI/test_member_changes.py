"""A member's identity or attributes change while it stays in an activated segment (issue 18, item 4), through
the `cdp` CLI against the real binaries and HTTP fakes of Marketo, LinkedIn and a webhook receiver that check
what they receive against the documented APIs.

A member whose email changes is removed under the old email and added under the new one everywhere (Marketo:
the new lead added to the list and the old one removed; LinkedIn: the old hash removed and the new added; the
webhook and the file: a remove and an add). A member whose mapped attribute (the job title) changes is updated
in place: Marketo upserts the lead without touching the list, the webhook and the file get an `update`, and
LinkedIn, which matches by the hashed email alone, is told nothing.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "Tests" / "Destination"))

from cli_support import cdp_json, cdp_ok, describe, hashed, id_of, num, run_cdp  # noqa: E402
from destination_support import read_exports, replay  # noqa: E402
from fakes import FakeLinkedIn, FakeMarketo, FakeWebhook  # noqa: E402

HEADER = "personId,email,firstName,jobTitle\n"
SETTLE = 60.0


def ingest(base: int, path: Path) -> None:
    batch = cdp_json(["ingest", path, "--entity", "person", "--source", "Test:moves", "--wait"], base)
    assert num(batch["counts"], "accepted") >= 1, batch


def settle(what: str, check, stack) -> None:
    """Waits until check() returns an empty list of problems; fails with the last ones."""
    deadline = time.monotonic() + SETTLE
    while True:
        problems = check()
        if not problems:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}, after {SETTLE:.0f} s:\n" + "\n".join(problems) + f"\n{stack.logs()}")
        time.sleep(0.2)


def test_identity_and_attribute_changes_reach_every_destination(stack, tmp_path):
    base = stack.port_base
    marketo = FakeMarketo().start()
    linkedin = FakeLinkedIn().start()
    webhook = FakeWebhook("whsec_" + "bW92ZXMtc2VjcmV0LWZvci10ZXN0cw==").start()
    try:
        cdp_ok(["source", "create", "--type", "Test", "--instance", "moves"], base)
        args = ["segment", "create", "--name", "members", "--wait", "--pql", 'person.email.endsWith("@members.example")']
        created = cdp_ok(args, base)
        # stdout is the id alone (for `seg=$(cdp segment create …)`), the job's end a note on stderr.
        segment = created.stdout.strip()
        assert segment.startswith("s") and "\n" not in segment and "job-" in created.stderr, describe(args, created)
        exports = tmp_path / "exports"
        destinations = {
            "marketo": ["--type", "marketo", "--set", f"endpoint={marketo.url}", "--set",
                        f"client_id={marketo.client_id}", "--set", f"client_secret={marketo.client_secret}",
                        "--set", "list_id=1001", "--set", "timeout_seconds=5"],
            "linkedin": ["--type", "linkedin", "--set", f"endpoint={linkedin.url}", "--set",
                         f"access_token={linkedin.access_token}", "--set", "ad_account=urn:li:sponsoredAccount:507",
                         "--set", "source_platform=CDP_TEST", "--set", "segment_ready_seconds=0"],
            "webhook": ["--type", "webhook", "--set", f"url={webhook.url}{webhook.path}", "--set",
                        f"secret={webhook.secret}"],
            "file": ["--type", "file", "--set", f"directory={exports}", "--set", "format=csv"],
        }
        ids = {}
        for name, args in destinations.items():
            ids[name] = id_of(cdp_json(["destination", "create", "--name", f"moves {name}", *args], base))
            extra = [] if name == "linkedin" else ["--attribute", "title=jobTitle", "--attribute",
                                                   "firstName=firstName"]
            cdp_ok(["activate", segment, "--destination", ids[name], *extra], base)

        first = tmp_path / "monday.csv"
        first.write_text(HEADER + "m-1,ann@members.example,Ann,CFO\n"
                                  "m-2,bob@members.example,Bob,Buyer\n")
        ingest(base, first)
        everyone = {"ann@members.example", "bob@members.example"}

        def members_are(expected: set[str]) -> list[str]:
            problems = []
            if (got := marketo.list_emails()) != expected:
                problems.append(f"Marketo list 1001 holds {sorted(got)}")
            try:
                got = linkedin.members()
            except AssertionError as e:
                got = {str(e)}
            if got != {hashed(e) for e in expected}:
                problems.append(f"LinkedIn holds {sorted(got)}, expected the hashes of {sorted(expected)}")
            webhook_members = set().union(*[webhook.members(a) for a in list(webhook.activations)] or [set()])
            if webhook_members != expected:
                problems.append(f"the webhook receiver holds {sorted(webhook_members)}")
            held, file_problems = replay(read_exports(exports))
            if held != expected or file_problems:
                problems.append(f"the export files replay to {sorted(held)} with problems {file_problems}")
            return problems

        settle("the first export did not reach every destination", lambda: members_are(everyone), stack)
        upserts_before = len(marketo.upserts)
        list_adds_before = list(marketo.ever_added_emails())

        # Tuesday: Ann has a new address (same person id: still a member); Bob has a new title.
        second = tmp_path / "tuesday.csv"
        second.write_text(HEADER + "m-1,ann.lee@members.example,Ann,CFO\n"
                                   "m-2,bob@members.example,Bob,Head of Buying\n")
        ingest(base, second)
        moved = {"ann.lee@members.example", "bob@members.example"}
        settle("Ann's new email did not replace the old one everywhere", lambda: members_are(moved), stack)

        def bob_updated() -> list[str]:
            problems = []
            lead = marketo.lead("bob@members.example") or {}
            if lead.get("title") != "Head of Buying":
                problems.append(f"Marketo's lead of Bob is {lead}")
            hook = next((webhook.member_info[k] for k in webhook.member_info if k[1] == "bob@members.example"), {})
            if hook.get("attributes", {}).get("title") != "Head of Buying" or hook.get("op") != "update":
                problems.append(f"the webhook's last word on Bob is {hook}")
            rows = [row for _, rows in read_exports(exports) for row in rows]
            if ("update", "bob@members.example") not in rows:
                problems.append(f"no export file updates Bob: {rows}")
            return problems

        settle("Bob's new title did not reach the destinations", bob_updated, stack)
        # Bob was updated in place: the list got Ann's new lead only, never Bob again.
        list_adds = marketo.ever_added_emails()[len(list_adds_before):]
        assert list_adds == ["ann.lee@members.example"], f"list adds after the changes: {list_adds}"
        assert len(marketo.upserts) > upserts_before
        assert marketo.removals("ann@members.example") == 1
        for fake in (marketo, linkedin, webhook):
            assert not fake.violations and not fake.duplicate_adds, (fake.name, fake.violations, fake.duplicate_adds)
        assert not webhook.stray_updates, webhook.stray_updates

        # The delivery log counts the update.
        deliveries = cdp_json(["deliveries", ids["webhook"]], base).get("deliveries", [])
        assert sum(num(d, "updated") for d in deliveries) == 1, deliveries
        table = run_cdp(["deliveries", ids["file"]], base)
        assert table.returncode == 0 and "updated" in table.stdout.splitlines()[0], describe(["deliveries"], table)
    finally:
        for fake in (marketo, linkedin, webhook):
            fake.stop()

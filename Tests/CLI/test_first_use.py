"""What a new user hits first (issue 18), through the `cdp` CLI against the real binaries.

1. A record changed back to an earlier value is a new version, not a duplicate: a person opted out, then
   opted in again by a later export, ends opted in; a Salesforce Contact export first sent as `--entity Lead`
   and then re-sent right ends with Contacts.
2. The default re-upload key covers what changes a batch's outcome: a corrected retry (another entity, another
   threshold) is a new batch, a plain retry replays the first result, and the replay says how to force a new
   upload (`--key`).
6. `cdp … | head` (a reader that goes away) ends the command quietly: no crash report, no backtrace.
7. A new segment has its members without a manual `segment evaluate`: creating it starts a job over the
   existing profiles, which `segment create --wait` and `segment job --wait` follow.
8. A batch failed by its rejected records names the way on (`--error-threshold`, a fraction), and a
   closing quote left out of a CSV row is reported on that row, not taken with the next one silently.
"""

from __future__ import annotations

import subprocess

from cli_support import CDP, assert_cli_error, cdp_env, cdp_json, cdp_ok, describe, id_of, num, run_cdp


def person_view(base: int, email: str) -> dict:
    view = cdp_json(["profile", "get", "--identity", f"email:{email}"], base)
    return view.get("person", {}).get("record", {}).get("person", {})


def ingest(base: int, path, entity: str, source: str, fmt: str = "canonical", *extra: str) -> dict:
    return cdp_json(["ingest", path, "--entity", entity, "--source", source, "--format", fmt, "--wait", *extra],
                    base)


def test_a_value_changed_back_is_a_new_version(stack, tmp_path):
    """Opted out by one export, opted in again by the next: the person ends opted in (the third version equals
    the first and was dropped as a duplicate of it)."""
    base = stack.port_base
    cdp_ok(["source", "create", "--type", "Test", "--instance", "versions"], base)
    header = "personId,email,firstName,emailOptOut\n"
    first = tmp_path / "monday.csv"
    first.write_text(header + "v-1,ann@versions.example,Ann,false\n")
    second = tmp_path / "tuesday.csv"
    second.write_text(header + "v-1,ann@versions.example,Ann,true\n")
    # Wednesday's export: Ann as on Monday, and someone new (so the file itself is not Monday's again).
    third = tmp_path / "wednesday.csv"
    third.write_text(header + "v-1,ann@versions.example,Ann,false\nv-2,bob@versions.example,Bob,false\n")

    assert num(ingest(base, first, "person", "Test:versions")["counts"], "accepted") == 1
    assert person_view(base, "ann@versions.example").get("emailOptOut") in (False, None)
    assert num(ingest(base, second, "person", "Test:versions")["counts"], "accepted") == 1
    assert person_view(base, "ann@versions.example").get("emailOptOut") is True
    batch = ingest(base, third, "person", "Test:versions")
    assert num(batch["counts"], "accepted") == 2 and num(batch["counts"], "duplicates") == 0, batch
    view = person_view(base, "ann@versions.example")
    assert view.get("emailOptOut") in (False, None), f"Ann is still opted out: {view}"

    # The same export again is a re-send; its records, equal to the current versions, change nothing.
    again = ingest(base, third, "person", "Test:versions", "canonical", "--key", "wednesday, once more")
    assert num(again["counts"], "accepted") == 0 and num(again["counts"], "duplicates") == 2, again


def test_profile_get_lists_the_latest_events(stack, tmp_path):
    """`cdp profile get` shows a person's latest ten events, newest first, and says how many there are."""
    base = stack.port_base
    cdp_ok(["source", "create", "--type", "Test", "--instance", "events"], base)
    cdp_ok(["source", "create", "--type", "Web", "--instance", "events-web"], base)
    people = tmp_path / "people.csv"
    people.write_text("personId,email\ne-1,eve@events.example\n")
    ingest(base, people, "person", "Test:events")
    lines = [f'{{"eventId": "ev-{day:02d}", "eventType": "web.webpagedetails.pageViews", '
             f'"timestamp": "2026-11-{day:02d}T09:00:00Z", "email": "eve@events.example", '
             f'"url": "https://events.example/day-{day:02d}"}}' for day in range(1, 16)]
    events = tmp_path / "events.ndjson"
    events.write_text("\n".join(lines) + "\n")
    assert num(ingest(base, events, "event", "Web:events-web")["counts"], "accepted") == 15
    shown = run_cdp(["profile", "get", "--identity", "email:eve@events.example"], base)
    assert shown.returncode == 0, describe(["profile", "get"], shown)
    assert "events: 15 (the latest 10 below; --json for all)" in shown.stdout, shown.stdout
    days = [line.split("day-")[1] for line in shown.stdout.splitlines() if "events.example/day-" in line]
    assert days == [f"{day:02d}" for day in range(15, 5, -1)], f"events listed: {days}\n{shown.stdout}"


CONTACTS = """\
Id,AccountId,Email,FirstName,LastName,Title,HasOptedOutOfEmail,LastModifiedDate
0035g00000Ver01AAA,,cora@contacts.example,Cora,Vance,CFO,false,2026-11-02T10:00:00.000+0000
0035g00000Ver02AAA,,dan@contacts.example,Dan,Webb,CTO,false,2026-11-02T10:00:00.000+0000
"""


def test_a_corrected_upload_is_a_new_batch(stack, tmp_path):
    """A Contact export sent as `--entity Lead` by mistake, then re-sent right: a new batch (not the first
    one's result), and the people are Contacts. A plain retry replays, saying how to force a new upload."""
    base = stack.port_base
    cdp_ok(["source", "create", "--type", "Salesforce", "--instance", "sfdc-versions"], base)
    contacts = tmp_path / "contacts.csv"
    contacts.write_text(CONTACTS)
    wrong = ingest(base, contacts, "Lead", "Salesforce:sfdc-versions", "salesforce")
    assert num(wrong["counts"], "accepted") == 2, wrong
    assert person_view(base, "cora@contacts.example").get("personType") == "PERSON_TYPE_LEAD"

    right = ingest(base, contacts, "Contact", "Salesforce:sfdc-versions", "salesforce")
    assert not right.get("replayed") and right["batchId"] != wrong["batchId"], (
        f"the corrected upload got the first batch's result: {right}")
    assert num(right["counts"], "accepted") == 2, right
    assert person_view(base, "cora@contacts.example").get("personType") == "PERSON_TYPE_CONTACT"

    # A plain retry of the same upload: the stored result, and the way out named.
    args = ["ingest", contacts, "--entity", "Contact", "--source", "Salesforce:sfdc-versions", "--format",
            "salesforce"]
    retry = cdp_ok(args, base)
    assert right["batchId"] in retry.stdout and "nothing was stored again" in retry.stdout, describe(args, retry)
    assert "--key" in retry.stdout, f"the replay does not say how to send again: {describe(args, retry)}"
    # Another threshold is another outcome, so another batch.
    other = ingest(base, contacts, "Contact", "Salesforce:sfdc-versions", "salesforce", "--error-threshold", "0.5")
    assert not other.get("replayed") and other["batchId"] != right["batchId"], other


def test_output_into_a_closed_pipe(stack):
    """`cdp source list | head -n 1`, with more lines than head reads and than a pipe holds (80 KB): a quiet end
    by SIGPIPE (exit status 141, as other tools end), no crash."""
    base = stack.port_base
    for n in range(40):
        cdp_ok(["source", "create", "--type", "Pipe", "--instance", f"pipe-{n:02d}",
                "--description", "x" * 2000], base)
    # The reader exits after one line; the writer's next writes hit a closed pipe.
    script = f"set -o pipefail; {CDP} source list | head -n 1; echo \"status=${{PIPESTATUS[0]}}\""
    res = subprocess.run(["bash", "-c", script], env=cdp_env(base), capture_output=True, text=True, timeout=60)
    status = res.stdout.strip().splitlines()[-1]
    assert status == "status=141", f"{status}\nstdout: {res.stdout[-2000:]}\nstderr: {res.stderr}"
    for marker in ("Fatal error", "Broken pipe", "Backtrace", "Stack dump"):
        assert marker not in res.stderr, f"{marker!r} on stderr: {res.stderr[-3000:]}"


def test_a_new_segment_is_evaluated_over_existing_profiles(stack, tmp_path):
    """Profiles first, the segment after: `segment create` starts a job over the existing profiles, so that
    `members` is right without `segment evaluate`, for streaming and batch segments alike."""
    base = stack.port_base
    cdp_ok(["source", "create", "--type", "Test", "--instance", "late-segment"], base)
    people = tmp_path / "people.csv"
    people.write_text("personId,email,firstName,jobTitle\n"
                      "ls-1,eve@late.example,Eve,VP Late Segments\n"
                      "ls-2,fay@late.example,Fay,Engineer\n")
    ingest(base, people, "person", "Test:late-segment")
    pql = 'person.jobTitle = "VP Late Segments"'

    # Streaming: the note names the job; `segment job --wait` follows it to its end.
    args = ["segment", "create", "--name", "late streaming", "--pql", pql]
    created = cdp_ok(args, base)
    segment = created.stdout.strip()
    assert segment and "job-" in created.stderr and "segment job" in created.stderr, describe(args, created)
    job_id = created.stderr.split("job ", 1)[1].split()[0]
    job = cdp_json(["segment", "job", job_id, "--wait"], base)
    assert str(job.get("state", "")).endswith("SUCCEEDED") and job.get("segmentIds") == [segment], job
    members = cdp_json(["segment", "members", segment], base)
    assert [m["emails"] for m in members] == [["eve@late.example"]], members

    # Batch, with --wait: members at once.
    batch = cdp_json(["segment", "create", "--mode", "batch", "--name", "late batch", "--pql", pql, "--wait"],
                     base)
    assert batch.get("evaluationJobId"), batch
    members = cdp_json(["segment", "members", id_of(batch)], base)
    assert [m["emails"] for m in members] == [["eve@late.example"]], members
    listed = run_cdp(["segment", "list"], base)
    assert listed.returncode == 0, describe(["segment", "list"], listed)


def test_rejected_records_name_the_way_on(stack, tmp_path):
    """Four activities typed by hand: a date in the wrong form (line 3), a closing quote left out (line 4,
    whose quoted field then runs into line 5). The batch fails on the default threshold and says how to let it
    through; a threshold given as a percentage is refused with the fraction it means; with 0.7, the good line
    is kept and each bad one is reported on its own line."""
    base = stack.port_base
    cdp_ok(["source", "create", "--type", "Marketo", "--instance", "mkto-typed"], base)
    page = '"{""Webpage URL"":""https://bodea.example/pricing""}"'
    activities = tmp_path / "activities.csv"
    activities.write_text(
        "marketoGUID,leadId,activityDate,activityTypeId,campaignId,primaryAttributeValueId,"
        "primaryAttributeValue,attributes\n"
        f"9900001,2104,2026-12-06T10:00:00Z,1,null,72,bodea.example/pricing,{page}\n"
        f"9900002,2104,06/12/2026 10:00,1,null,72,bodea.example/pricing,{page}\n"
        f"9900003,2103,2026-12-06T10:05:00Z,1,null,72,bodea.example/pricing,{page[:-2]}\n"
        f"9900004,2102,2026-12-06T10:06:00Z,1,null,72,bodea.example/pricing,{page}\n")
    args = ["ingest", activities, "--entity", "activities", "--source", "Marketo:mkto-typed", "--format", "marketo"]
    res = run_cdp(args, base)
    assert_cli_error(args, res, "--error-threshold", "0.5")
    assert "line 3, field activityDate" in res.stdout, describe(args, res)
    assert "closing quote missing on line 4" in res.stdout, describe(args, res)
    percent = [*args, "--error-threshold", "50"]
    assert_cli_error(percent, run_cdp(percent, base), "--error-threshold", "0.5", "50")
    kept = cdp_json([*args, "--error-threshold", "0.7"], base)
    counts = kept["counts"]
    assert (num(counts, "records"), num(counts, "accepted"), num(counts, "rejected")) == (3, 1, 2), kept

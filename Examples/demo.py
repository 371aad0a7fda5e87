"""Pipeline demo: Bodea's fixture files through a release cdp-ingestion, cdp-identity, cdp-profile,
cdp-segmentation and cdp-destination, step by step.

Run through Examples/demo.sh (builds the release binaries, prepares .venv), or directly:
    .venv/bin/python Examples/demo.py [--keep-data] [--ingestion-binary PATH] [--identity-binary PATH]
                                      [--profile-binary PATH] [--segmentation-binary PATH]
                                      [--destination-binary PATH]

1. starts `cdp-destination --port 0 --data-dir <temp>/destination`, then `cdp-segmentation --port 0
   --data-dir <temp>/segmentation --profile <profile's address> --destination <destination's address>`,
   then `cdp-profile --port <picked> --data-dir <temp>/profile --identity <identity's address>
   --segmentation <segmentation's address>` (its changed views flow to segmentation), then `cdp-identity
   --port <picked> --data-dir <temp>/identity --profile <profile's address>` (default rules: a person may
   hold several CRM ids, one per CRM of Bodea's, see IDENTITY_RULES), then `cdp-ingestion --port 0
   --data-dir <temp>/ingestion --identity <identity's address>`; profile's and identity's ports are
   picked before segmentation starts, as segmentation and profile, and profile and identity, each name the
   other;
2. creates the Bodea segment (DESIGN.md §5) on segmentation before any data arrives: "Townsend buyers",
   PERSON, STREAMING: a company that has won more than $1M across all its accounts, and a page view of the
   new product page within a month of now; and a BATCH copy, which only Evaluate changes;
3. creates the sources of the Bodea story (Tests/IngestionTests/Fixtures/EXPECTED.md);
4. uploads every fixture file (64 KiB data messages, key = the file's path, error threshold 0.5:
   the fixtures hold bad rows on purpose) and prints each batch with its record errors;
5. re-sends one file under the same key (`replayed`, same batch) and one under a new key (a new
   batch whose valid records are all duplicates);
6. streams two page views of p2@townsend.com: a new one, and the one canonical/event.csv brought;
7. prints ListBatches, waits until ingestion's outbox has forwarded every accepted record to identity;
8. prints identity's view of the story: p2@townsend.com resolved to one person across Salesforce and
   both Marketo instances; the Townsend account cluster (Account 1 of Marketo 1, Account 2 of
   Marketo 2 and the Salesforce account, joined by the MDM crosswalk) with the record behind each
   link; p1 and p3 as persons of their own; the refused links (ListConflicts); identity's outbox,
   once it has forwarded every update to profile;
9. prints profile's view of the story (as of 2026-05-01, the story's "now", so that the event window
   does not depend on the day the demo runs): the Townsend account view (the fragments it merges,
   its opportunities with their amounts, its persons, the won total: $1,100,000, Opportunity 1 counted
   once although Salesforce and Marketo 1 both hold it), p2's person view (the merged person, its
   accounts, opportunities and roles, campaigns, lists, events) and profile's outbox, once it has sent
   every changed view to segmentation;
10. prints segmentation's view: the streaming segment's members (the views were evaluated as they arrived,
    as of the day the demo runs: p2 is a member only if its last page view of the new product page, in
    April 2026, is within a month of now; the demo computes which and prints why); a batch Evaluate of the
    batch copy as of 2026-05-01, polled until it succeeds; its realized members (exactly p2@townsend.com);
    the explanation of p2's membership (the two opportunities summed, the page view that matched); the
    estimates of the same definition with a $2M threshold (nobody: the total is $1.1M) and with $1M (p2);
    segmentation's outbox, once it has sent p2's realization to destination;
11. prints destination's part: two file destinations, a Marketo static list's import file and a LinkedIn
    Matched Audience's upload file, the batch segment activated to both (the first with email, first
    name, last name and title; the second with hashed emails only); the files written (exactly
    p2@townsend.com, and exactly its SHA-256) and the delivery log;
12. stops the services with SIGTERM (ingestion, identity, profile, segmentation, then destination) and
    requires exit status 0 from each.

Exit status 1 when anything is unexpected (a call fails, a batch does not complete, counts do not
add up, identity resolves the story differently, profile's views differ from the story, segmentation's
members, explanation or estimates differ from the story, a service does not stop cleanly), 2 when a
service does not start.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import grpc

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "Tests" / "IngestionTests" / "Fixtures"
sys.path.insert(0, str(REPO_ROOT / "Tests" / "Ingestion"))
from protos import identity_pb2 as ipb, identity_pb2_grpc, model_pb2  # noqa: E402
from protos import ingestion_pb2 as pb, ingestion_pb2_grpc  # noqa: E402

ppb = importlib.import_module("cdp.profile.v1.profile_pb2")  # generated beside the others by `protos`
profile_pb2_grpc = importlib.import_module("cdp.profile.v1.profile_pb2_grpc")
spb = importlib.import_module("cdp.segmentation.v1.segmentation_pb2")
segmentation_pb2_grpc = importlib.import_module("cdp.segmentation.v1.segmentation_pb2_grpc")
dpb = importlib.import_module("cdp.destination.v1.destination_pb2")
destination_pb2_grpc = importlib.import_module("cdp.destination.v1.destination_pb2_grpc")

CHUNK = 64 * 1024
TIMEOUT = 30
DRAIN_TIMEOUT = 120
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]  # the services are on 127.0.0.1, never behind a proxy
SF, MKTO1, MKTO2, MDM, WEB = (model_pb2.Source(type=t, instance=i) for t, i in [
    ("Salesforce", "sf-1"), ("Marketo", "mkto-1"), ("Marketo", "mkto-2"), ("MDM", "mdm-1"), ("Web", "web-1")])
SOURCES = [(SF, "CRM, line of business 1"), (MKTO1, "Marketo 1, line of business 1 (synced with sf-1)"),
           (MKTO2, "Marketo 2, line of business 2"), (MDM, "MDM crosswalk"), (WEB, "web tag on bodea.example")]
STATE = {v: k.removeprefix("BATCH_STATE_") for k, v in pb.BatchState.items()}
FORMAT = {v: k.removeprefix("FORMAT_") for k, v in pb.Format.items()}
ENTITY = {v: k.removeprefix("ENTITY_TYPE_") for k, v in model_pb2.EntityType.items()}
CONFLICT = {v: k.removeprefix("KIND_") for k, v in ipb.Conflict.Kind.items()}
PERSON, ACCOUNT = model_pb2.ENTITY_TYPE_PERSON, model_pb2.ENTITY_TYPE_ACCOUNT
# Variables the services read in place of flags: the demo decides every address and directory itself.
SERVICE_ENV = ("CDP_DATA_DIR", "CDP_IDENTITY_ADDR", "CDP_PROFILE_ADDR", "CDP_SEGMENTATION_ADDR",
               "CDP_DESTINATION_ADDR", "CDP_TOKEN")


class Unexpected(Exception):
    """Something the demo did not expect: exit status 1."""


def src(s: model_pb2.Source) -> str:
    return f"{s.type}:{s.instance}"


def source_key(id_: str, s: model_pb2.Source) -> str:
    """A record's source key, `{id}@{instance}.{type}`."""
    return f"{id_}@{s.instance}.{s.type}"


def check(ok: bool, what: str) -> None:
    if not ok:
        raise Unexpected(what)


def plan() -> list[tuple[str, model_pb2.Source, str, int]]:
    """(path under Fixtures, source, entity, format) of every fixture file, in upload order."""
    out = [(p, source, p.stem, fmt) for folder, source, fmt in [("salesforce", SF, pb.FORMAT_SALESFORCE_CSV),
                                                                 ("marketo", MKTO1, pb.FORMAT_MARKETO_CSV)]
           for p in sorted((FIXTURES / folder).iterdir())]
    ndjson = {"events": ("event", WEB), "persons": ("person", MKTO2)}
    for p in sorted((FIXTURES / "canonical").iterdir()):
        if p.suffix == ".csv":
            out.append((p, WEB if p.stem == "event" else MKTO2, p.stem, pb.FORMAT_CANONICAL_CSV))
        else:
            check(p.stem in ndjson, f"no rule for fixture {p}")
            entity, source = ndjson[p.stem]
            out.append((p, source, entity, pb.FORMAT_CANONICAL_NDJSON))
    out.append((FIXTURES / "mdm" / "crosswalk.csv", MDM, "identityLink", pb.FORMAT_MDM_CSV))
    return [(str(p.relative_to(FIXTURES)), s, e, f) for p, s, e, f in out]


def upload(stub, name: str, source, entity: str, fmt: int, key: str) -> pb.Batch:
    def requests():
        yield pb.IngestBatchRequest(header=pb.BatchHeader(
            source=source, entity=entity, format=fmt, idempotency_key=key, error_threshold=0.5, file_name=name))
        with open(FIXTURES / name, "rb") as f:
            while chunk := f.read(CHUNK):
                yield pb.IngestBatchRequest(data=chunk)
    return stub.IngestBatch(requests(), timeout=TIMEOUT)


def page_view(event_id: str, when: str, url: str, name: str, referrer: str | None = None) -> model_pb2.Record:
    ev = model_pb2.ExperienceEvent(event_id=event_id, email="p2@townsend.com",
                                   event_type="web.webpagedetails.pageViews", url=url, name=name)
    ev.timestamp.FromJsonString(when)
    rec = model_pb2.Record(event=ev)
    if referrer:
        rec.custom_attributes["referrer"].string_value = referrer
    return rec


class Service:
    """One service process, started with --port `port` (0: any free one); its stdout and stderr go to
    files in the temp dir."""

    def __init__(self, name: str, binary: Path, args: list[str], work: Path, port: int = 0):
        self.name, self.binary, self.args, self.work, self.port = name, binary, args, work, port
        self.proc: subprocess.Popen | None = None
        self.address = ""

    def start(self) -> str:
        env = {k: v for k, v in os.environ.items() if k not in SERVICE_ENV}
        out_path = self.work / f"{self.name}.out"
        with open(out_path, "wb") as out, open(self.work / f"{self.name}.err", "wb") as err:
            self.proc = subprocess.Popen([str(self.binary), "--port", str(self.port), *self.args], env=env,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            first, nl, _ = out_path.read_bytes().partition(b"\n")
            if nl:
                line = first.decode("utf-8", "replace")
                if line.startswith("listening on "):
                    self.address = line.removeprefix("listening on ").strip()
                    return self.address
                break
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"{self.binary.name} did not print 'listening on HOST:PORT':\n{self.stderr_tail()}")

    def stderr_tail(self, chars: int = 2000) -> str:
        try:
            return (self.work / f"{self.name}.err").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> int:
        """SIGTERM (this process only), then its exit status; killed after 15 s."""
        assert self.proc is not None
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()
            raise Unexpected(f"cdp-{self.name} did not stop within 15 s of SIGTERM (killed)") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def ingest_fixtures(stub) -> tuple[int, dict[str, str]]:
    """Steps 2-6 on ingestion; returns the number of records it accepted (batches and stream) and the
    file name of each batch id."""
    print("\n== Sources")
    for source, description in SOURCES:
        stub.CreateSource(pb.CreateSourceRequest(source=source, description=description), timeout=TIMEOUT)
    listed = stub.ListSources(pb.ListSourcesRequest(), timeout=TIMEOUT).sources
    check(sorted(src(s.source) for s in listed) == sorted(src(s) for s, _ in SOURCES), "ListSources differs")
    for s in listed:
        print(f"  {src(s.source):<16}  {s.description}")

    print("\n== Uploads (idempotency key = file path, error threshold 0.5, 64 KiB data messages)")
    files = plan()
    w = max(len(f[0]) for f in files)
    print(f"  {'file':<{w}}  {'source':<16} {'format':<16} {'state':<9} records accepted dup rejected")
    batches = {}
    for name, source, entity, fmt in files:
        b = upload(stub, name, source, entity, fmt, key=name)
        c = b.counts
        print(f"  {name:<{w}}  {src(source):<16} {FORMAT[fmt]:<16} {STATE[b.state]:<9} "
              f"{c.records:>7} {c.accepted:>8} {c.duplicates:>3} {c.rejected:>8}")
        for e in b.errors:
            print(f"      line {e.line}, field {e.field}: {e.reason}" if e.field else
                  f"      line {e.line}: {e.reason}")
        check(b.state == pb.BATCH_STATE_COMPLETED, f"{name}: batch {STATE[b.state]}: {b.failure}")
        check(not b.replayed and c.records == c.accepted + c.duplicates + c.rejected
              and c.rejected == len(b.errors) and c.records > 0, f"{name}: unexpected counts {c}")
        batches[name] = b
    total = {k: sum(getattr(b.counts, k) for b in batches.values()) for k in ("records", "accepted", "rejected")}
    print(f"  {len(batches)} batches: {total['records']} records, {total['accepted']} accepted, "
          f"{total['rejected']} rejected")

    print("\n== Re-sending")
    name, source, entity, fmt = files[0]
    again = upload(stub, name, source, entity, fmt, key=name)
    first = batches[name]
    print(f"  {name} under the same key {name!r}:\n"
          f"    replayed={again.replayed}, batch {again.batch_id} (first upload: {first.batch_id}), "
          f"{STATE[again.state]}, the first upload's counts, nothing stored again")
    check(again.replayed and again.batch_id == first.batch_id and again.counts == first.counts,
          f"{name}: the re-send was not answered with the stored batch")
    name, source, entity, fmt = next(f for f in files if f[0] == "canonical/person.csv")
    key = name + "#resend"
    new = upload(stub, name, source, entity, fmt, key=key)
    c = new.counts
    print(f"  {name} under a new key {key!r}:\n"
          f"    replayed={new.replayed}, new batch {new.batch_id}, {STATE[new.state]}, records {c.records}: "
          f"accepted {c.accepted}, duplicates {c.duplicates}, rejected {c.rejected} (the same bad row)")
    check(new.state == pb.BATCH_STATE_COMPLETED and not new.replayed and new.batch_id != batches[name].batch_id
          and c.accepted == 0 and c.duplicates == batches[name].counts.accepted, f"{name}: re-send under a new key")

    print(f"\n== StreamRecords (source {src(WEB)}, person p2@townsend.com)")
    sent = [("w-3001", "new page view of /new-product",
             page_view("w-3001", "2026-04-27T08:30:00Z", "https://bodea.example/new-product", "New Product, Pricing")),
            ("w-1001", "same page view as canonical/event.csv line 2",
             page_view("w-1001", "2026-04-21T09:15:00Z", "https://bodea.example/new-product", "New Product, Overview",
                       referrer="https://www.google.com/search?q=bodea+new+product"))]
    acks = list(stub.StreamRecords(iter(pb.StreamRecordsRequest(source=WEB, records=[r]) for _, _, r in sent),
                                   timeout=TIMEOUT))
    check(len(acks) == len(sent), f"{len(acks)} acknowledgements for {len(sent)} requests")
    for (event_id, what, _), ack in zip(sent, acks):
        print(f"  request {ack.request_number}  {event_id}  {what:<44}  ack: accepted {ack.accepted}, "
              f"duplicates {ack.duplicates}, errors {len(ack.errors)}")
        for e in ack.errors:
            print(f"      record {e.record_number}, field {e.field}: {e.reason}")
    check([(a.request_number, a.accepted, a.duplicates, len(a.errors)) for a in acks] == [(1, 1, 0, 0), (2, 0, 1, 0)],
          "the stream acknowledgements are not: request 1 accepted, request 2 a duplicate")

    print("\n== ListBatches (newest first)")
    listed, token = [], None
    while token != "":  # pages of 20, to the last one
        page = stub.ListBatches(pb.ListBatchesRequest(page_size=20, page_token=token or ""), timeout=TIMEOUT)
        listed, token = listed + list(page.batches), page.next_page_token
    wid = max(len(b.batch_id) for b in listed)
    print(f"  {'batch':<{wid}}  {'created':<8}  {'file':<{w}}  {'source':<16} {'state':<9} "
          f"records accepted dup rejected")
    for b in listed:
        c = b.counts
        created = time.strftime("%H:%M:%S", time.gmtime(b.created_at.seconds))
        print(f"  {b.batch_id:<{wid}}  {created}  {b.file_name:<{w}}  {src(b.source):<16} {STATE[b.state]:<9} "
              f"{c.records:>7} {c.accepted:>8} {c.duplicates:>3} {c.rejected:>8}")
    check(len(listed) == len(batches) + 1 and listed[0].batch_id == new.batch_id
          and all(b.state == pb.BATCH_STATE_COMPLETED for b in listed), "ListBatches does not match the uploads")
    return total["accepted"] + sum(a.accepted for a in acks), {b.batch_id: b.file_name for b in listed}


def wait_forwarded(stub, accepted: int) -> None:
    print("\n== Ingestion's outbox (forwarding to identity)")
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while True:
        st = stub.GetOutboxStatus(pb.GetOutboxStatusRequest(), timeout=TIMEOUT)
        if st.pending_records == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for label, value in [("pending records", st.pending_records), ("forwarded records", st.forwarded_records),
                         ("last error", st.last_error or "-")]:
        print(f"  {label:<18} {value}")
    check(st.pending_records == 0, f"ingestion's outbox still holds {st.pending_records} records after "
                                   f"{DRAIN_TIMEOUT} s (last error: {st.last_error or '-'})")
    check(st.forwarded_records == accepted, f"ingestion forwarded {st.forwarded_records} records, "
                                            f"it accepted {accepted}")
    print(f"  = all {accepted} accepted records taken by identity")


# The Bodea story in the fixtures' keys (Tests/IngestionTests/Fixtures/EXPECTED.md, "The story in the data").
ACCOUNT_1 = source_key("0015g00000Twn01AAA", MKTO1)  # marketo/companies.csv line 2
ACCOUNT_2 = source_key("0017Q00000Twn02AAA", MKTO2)  # canonical/account.csv line 2
ACCOUNT_SF = source_key("0015g00000Twn01AAA", SF)    # salesforce/Account.csv line 2
MASTER = "M-ACC-TOWNSEND"                           # mdm/crosswalk.csv lines 2-4 (canonical/identityLink.csv too)
P2 = {source_key("0035g00000Twp02AAA", SF): "Salesforce contact",
      source_key("00Q5g00000Twl02AAA", SF): "Salesforce lead, converted into that contact",
      source_key("102", MKTO1): "Marketo 1 lead (synced with the contact)",
      source_key("2102", MKTO2): "Marketo 2 person"}
P1 = {source_key("0035g00000Twp01AAA", SF), source_key("101", MKTO1)}
P3 = {source_key("2103", MKTO2)}
LABELS = {ACCOUNT_1: "Account 1: Townsend in Marketo 1", ACCOUNT_2: "Account 2: Townsend in Marketo 2",
          ACCOUNT_SF: "Townsend in Salesforce (synced with Marketo 1)", MASTER: "MDM master id", **P2}
# The crosswalk rows that say Account 1, Account 2 and the Salesforce account are one company.
CROSSWALK = {f"{MASTER}/{k}@mdm-1.MDM" for k in (ACCOUNT_1, ACCOUNT_2, ACCOUNT_SF)}
# Townsend Europe (Salesforce, Marketo 1) and Townsend de México (Marketo 2): child accounts, not Townsend.
SUBSIDIARIES = [source_key("0015g00000Twn05AAA", SF), source_key("0015g00000Twn05AAA", MKTO1),
                source_key("0017Q00000Twn07AAA", MKTO2)]
# Bodea has one CRM per line of business, and each numbers its people its own way: p2 is
# 0035g00000Twp02AAA in the first and 0037Q00000Twp02AAA in the second (plus the id of the converted
# lead). Identity's default rules allow a person several CRM ids (only an MDM master id is unique), so
# the demo runs with them; with `--unique-namespace person:crmId` p2's email would not join them (two
# UNIQUE_NAMESPACE conflicts, p2 in three clusters).
IDENTITY_RULES: list[str] = []


def ident(namespace: str, value: str) -> ipb.IdentityValue:
    return ipb.IdentityValue(namespace=namespace, value=value)


def values(identities, namespace: str) -> set[str]:
    return {i.value for i in identities if i.namespace == namespace}


def print_identities(identities, indent: str = "    ") -> None:
    w = max(len(i.namespace) for i in identities)
    for i in identities:
        note = LABELS.get(i.value, "")
        print(f"{indent}{i.namespace:<{w}}  {i.value:<40}{'  ' + note if note else ''}".rstrip())


def print_links(links, files: dict[str, str], indent: str = "    ") -> None:
    for n, link in enumerate(links, 1):
        print(f"{indent}{n}. record {link.record_key}")
        print(f"{indent}   from {src(link.source)}, batch {link.batch_id} ({files.get(link.batch_id, '?')})")
        print(f"{indent}   links {', '.join(f'{i.namespace}:{i.value}' for i in link.identities)}")


def identity_view(stub, files: dict[str, str], accepted: int) -> int:
    """Prints and checks identity's view; returns the number of updates it forwarded to profile."""
    print("\n== Identity's view")
    print(f"  rules: {' '.join(IDENTITY_RULES) or 'the defaults'} (a person may hold several CRM ids: Bodea has "
          f"a CRM per line of business; only an MDM master id is unique)")

    print("\n-- Resolve p2@townsend.com in the PERSON graph")
    p2 = stub.Resolve(ipb.ResolveRequest(entity_type=PERSON, identity=ident("email", "p2@townsend.com")),
                      timeout=TIMEOUT)
    print(f"  cluster {p2.cluster_id}, {len(p2.identities)} identities (oldest first):")
    print_identities(p2.identities)
    cluster = stub.GetCluster(ipb.GetClusterRequest(entity_type=PERSON, id=p2.cluster_id), timeout=TIMEOUT)
    print(f"  linked by {len(cluster.links)} records (GetCluster {p2.cluster_id}):")
    print_links(cluster.links, files)
    check(values(p2.identities, "sourceKey") == set(P2),
          f"p2@townsend.com's cluster {p2.cluster_id} holds the source keys "
          f"{sorted(values(p2.identities, 'sourceKey'))}; expected {sorted(P2)}")
    check(values(p2.identities, "email") == {"p2@townsend.com"} and values(p2.identities, "mdm") == {"M-PER-0002"},
          f"p2@townsend.com's cluster holds the emails {sorted(values(p2.identities, 'email'))} and the master ids "
          f"{sorted(values(p2.identities, 'mdm'))}; expected p2@townsend.com and M-PER-0002")
    for k in (source_key("102", MKTO1), source_key("2102", MKTO2)):
        got = stub.Resolve(ipb.ResolveRequest(entity_type=PERSON, identity=ident("sourceKey", k)), timeout=TIMEOUT)
        check(got.cluster_id == p2.cluster_id, f"{k} resolves to person {got.cluster_id}, p2 is {p2.cluster_id}")
    print(f"  = one person: Salesforce's contact and converted lead, Marketo 1's 102 and Marketo 2's 2102 "
          f"(same email), and the MDM's person master M-PER-0002")

    print(f"\n-- The Townsend account: GetCluster of {ACCOUNT_1} in the ACCOUNT graph")
    account = stub.GetCluster(ipb.GetClusterRequest(entity_type=ACCOUNT, identity=ident("sourceKey", ACCOUNT_1)),
                              timeout=TIMEOUT)
    print(f"  cluster {account.id}, {len(account.identities)} identities (oldest first):")
    print_identities(account.identities)
    print(f"  linked by {len(account.links)} records, in the order they were linked:")
    print_links(account.links, files)
    others = {what: stub.Resolve(ipb.ResolveRequest(entity_type=ACCOUNT, identity=ident(ns, value)),
                                 timeout=TIMEOUT).cluster_id
              for what, ns, value in [("Account 2", "sourceKey", ACCOUNT_2), ("the master id", "mdm", MASTER)]}
    check(all(c == account.id for c in others.values()),
          f"Account 1 is in account cluster {account.id}, but " +
          ", ".join(f"{what} in {c}" for what, c in others.items()))
    check(values(account.identities, "sourceKey") == {ACCOUNT_1, ACCOUNT_2, ACCOUNT_SF}
          and values(account.identities, "mdm") == {MASTER},
          f"the Townsend account cluster holds the source keys {sorted(values(account.identities, 'sourceKey'))} "
          f"and the master ids {sorted(values(account.identities, 'mdm'))}; expected {ACCOUNT_1}, {ACCOUNT_2}, "
          f"{ACCOUNT_SF} and {MASTER}")
    linked = {link.record_key for link in account.links}
    check({ACCOUNT_1, ACCOUNT_2, ACCOUNT_SF} | CROSSWALK <= linked,
          f"the Townsend account is not linked by its three account records and the crosswalk rows "
          f"{sorted(CROSSWALK)}: links {sorted(linked)}")
    for k in SUBSIDIARIES:
        got = stub.Resolve(ipb.ResolveRequest(entity_type=ACCOUNT, identity=ident("sourceKey", k)), timeout=TIMEOUT)
        check(got.cluster_id != account.id, f"the subsidiary {k} is in the Townsend account cluster {account.id}")
    print(f"  = one account: Account 1 (Marketo 1), Account 2 (Marketo 2) and Salesforce's, joined by the MDM "
          f"crosswalk ({MASTER});\n    the subsidiaries (Townsend Europe, Townsend de México) stay accounts of "
          f"their own")

    print("\n-- p1 and p3 are persons of their own (Resolve)")
    ids = {"p2@townsend.com": p2.cluster_id}
    for email, expected in [("p1@townsend.com", P1), ("p3@townsend.com", P3)]:
        got = stub.Resolve(ipb.ResolveRequest(entity_type=PERSON, identity=ident("email", email)), timeout=TIMEOUT)
        ids[email] = got.cluster_id
        print(f"  {email}: cluster {got.cluster_id}")
        print_identities(got.identities)
        check(values(got.identities, "sourceKey") == expected,
              f"{email}'s cluster {got.cluster_id} holds the source keys "
              f"{sorted(values(got.identities, 'sourceKey'))}; expected {sorted(expected)}")
    check(len(set(ids.values())) == 3, f"p1, p2 and p3 are not three persons: clusters {ids}")
    print("  = p1: Salesforce's contact and Marketo 1's 101 (same email and crmId); p3: Marketo 2's 2103 alone")
    print("    (2103 links what its latest version holds: persons.ndjson line 1, without the crmId of person.csv)")
    print("  three persons:", ", ".join(f"{e.split('@')[0]} = cluster {c}" for e, c in sorted(ids.items())))

    print("\n-- ListConflicts (a conflict is a link a guardrail refused: two clusters that would hold different")
    print("   values of a unique namespace, e.g. two MDM master ids, or a cluster over the identity cap)")
    conflicts, token = [], None
    while token != "":
        page = stub.ListConflicts(ipb.ListConflictsRequest(page_token=token or ""), timeout=TIMEOUT)
        conflicts, token = conflicts + list(page.conflicts), page.next_page_token
    for c in conflicts:
        print(f"  {c.id}. {ENTITY[c.entity_type]} {CONFLICT[c.kind]}: record {c.record_key} not linked through "
              f"{c.identity.namespace}:{c.identity.value}; clusters {list(c.clusters)} stayed apart\n"
              f"     {c.reason}")
    print(f"  {len(conflicts)} conflicts" + (" (with --unique-namespace person:crmId there would be two: p2's "
                                             "converted lead and Marketo 2 record held apart by their different "
                                             "crmIds)" if not conflicts else ""))
    check(not conflicts, f"{len(conflicts)} unexpected conflicts")

    print("\n-- Identity's outbox (forwarding to profile), once it is empty")
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while True:
        st = stub.GetOutboxStatus(ipb.GetOutboxStatusRequest(), timeout=TIMEOUT)
        if st.pending_updates == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for label, value in [("pending updates", st.pending_updates), ("forwarded updates", st.forwarded_updates),
                         ("last error", st.last_error or "-")]:
        print(f"  {label:<18} {value}")
    check(st.pending_updates == 0, f"identity's outbox still holds {st.pending_updates} updates after "
                                   f"{DRAIN_TIMEOUT} s (last error: {st.last_error or '-'})")
    check(st.forwarded_updates > accepted and not st.last_error,
          f"identity's outbox: {st.forwarded_updates} forwarded, last error {st.last_error!r}; expected the "
          f"{accepted} records and the cluster changes forwarded")
    print(f"  = all {st.forwarded_updates} updates taken by profile: {accepted} annotated records (each with its "
          f"cluster ids) + {st.forwarded_updates - accepted} cluster changes (merges, splits), in one ordered stream")
    return st.forwarded_updates


# Profile's view of the story (EXPECTED.md, "The story in the data"). Opportunity 1 is in Salesforce and in
# Marketo 1 (synced: the same CRM id, so one opportunity of two fragments); Opportunity 2 is Marketo 2's.
OPPORTUNITY_1 = {source_key("0065g00000TwO01AAA", SF): "salesforce/Opportunity.csv line 2",
                 source_key("0065g00000TwO01AAA", MKTO1): "marketo/opportunities.csv line 2"}
OPPORTUNITY_2 = {source_key("0067Q00000TwO02AAA", MKTO2): "canonical/opportunity.csv line 2"}
MEXICO = source_key("0017Q00000Twn07AAA", MKTO2)  # Townsend de México: p2 advises it (accountPersonRelation)
MEXICO_OPPORTUNITY = source_key("0067Q00000Twn08AAA", MKTO2)  # its closed-lost onboarding (canonical/opportunity.csv)
# p2's events: the web tag's (canonical/event.csv, events.ndjson, the streamed one) and Marketo 1's activities of
# lead 102; the page views of the new product page among them.
P2_PAGE_VIEWS = {source_key("w-3001", WEB), source_key("w-2001", WEB), source_key("w-1001", WEB),
                 source_key("9000001", MKTO1)}
P2_EVENTS = P2_PAGE_VIEWS | {source_key("w-1003", WEB), source_key("9000004", MKTO1)}
# The story's "now": the person view's event window (400 days by default) ends here, whatever the date.
AS_OF = "2026-05-01T00:00:00Z"
NEW_PRODUCT = ("https://bodea.example/new-product", "/new-product")  # a web tag's URL, Marketo's path
LABELS.update({**OPPORTUNITY_1, **OPPORTUNITY_2, MEXICO: "Townsend de México (Marketo 2)"})


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def money(amount: float, currency: str = "") -> str:
    return f"${amount:,.0f}" if currency in ("", "USD") else f"{amount:,.0f} {currency}"


def keys_of(unified) -> set[str]:
    return set(unified.fragment_keys)


def print_fragments(unified, indent: str = "      ") -> None:
    for k in unified.fragment_keys:
        note = LABELS.get(k, "")
        print(f"{indent}{k:<44}{'  ' + note if note else ''}".rstrip())


def print_opportunity(o, indent: str = "    ") -> None:
    opp = o.record.opportunity
    state = "won" if opp.is_closed and opp.is_won else "lost" if opp.is_closed else "open"
    print(f"{indent}opportunity {o.cluster_id}: {opp.name!r}, {opp.stage}, {money(opp.amount, opp.currency)} "
          f"({state}), merged from {len(o.fragment_keys)}:")
    print_fragments(o, indent + "  ")


def person_name(p) -> str:
    return f"{p.record.person.first_name} {p.record.person.last_name}".strip()


def profile_view(stub, forwarded: int) -> tuple[int, str, datetime]:
    """Prints and checks profile's view; returns p2's cluster and the key and time of p2's latest page view of
    the new product page."""
    print("\n== Profile's view")
    as_of = ppb.GetEntityRequest().as_of
    as_of.FromJsonString(AS_OF)

    print(f"\n-- The Townsend account: GetAccount of {ACCOUNT_1}")
    view = stub.GetAccount(ppb.GetEntityRequest(identity=ident("sourceKey", ACCOUNT_1)), timeout=TIMEOUT)
    a = view.account.record.account
    print(f"  account {view.account.cluster_id}: {a.name!r}, {a.domain}, {a.industry}, {a.employees} employees, "
          f"{a.country} (each field from the fragment updated last that has it; the record's key: "
          f"{view.account.record.key})")
    print(f"  merged from {len(view.account.fragment_keys)} fragments:")
    print_fragments(view.account, "    ")
    print(f"  {len(view.opportunities)} opportunities:")
    for o in view.opportunities:
        print_opportunity(o)
    print(f"  {len(view.persons)} persons:")
    for p in view.persons:
        print(f"    person {p.cluster_id}: {person_name(p)} <{p.record.person.email}>, "
              f"{plural(len(p.fragment_keys), 'fragment')} ({', '.join(p.fragment_keys)})")
    t = view.totals
    print(f"  totals: {t.opportunities} opportunities, {t.won_opportunities} won, won amount {money(t.won_amount)}, "
          f"open amount {money(t.open_amount)}, {t.persons} persons")
    check(keys_of(view.account) == {ACCOUNT_1, ACCOUNT_2, ACCOUNT_SF},
          f"the Townsend account view merges {sorted(view.account.fragment_keys)}; expected {ACCOUNT_1}, "
          f"{ACCOUNT_2} and {ACCOUNT_SF}")
    opps = {frozenset(o.fragment_keys): o.record.opportunity for o in view.opportunities}
    want = {frozenset(OPPORTUNITY_1): 200_000, frozenset(OPPORTUNITY_2): 900_000}
    check(len(view.opportunities) == 2 and {k: o.amount for k, o in opps.items()} == want
          and all(o.is_closed and o.is_won for o in opps.values()),
          f"the Townsend account's opportunities are {[(sorted(k), o.amount, o.is_won) for k, o in opps.items()]}; "
          f"expected Opportunity 1 (Salesforce and Marketo 1, $200,000) and Opportunity 2 (Marketo 2, $900,000), "
          f"both won")
    check((t.won_amount, t.won_opportunities, t.opportunities, t.open_amount) == (1_100_000, 2, 2, 0),
          f"the Townsend account's totals: won {t.won_amount} in {t.won_opportunities} of {t.opportunities}, open "
          f"{t.open_amount}; expected $1,100,000 in 2 of 2, nothing open")
    persons = sorted(sorted(p.fragment_keys) for p in view.persons)
    check(persons == sorted(sorted(x) for x in (P1, P2, P3)) and t.persons == 3,
          f"the Townsend account's persons are {persons}; expected p1, p2 and p3")
    print(f"  = one account of three fragments; Opportunity 1 counted once although Salesforce and Marketo 1 both "
          f"hold it: won {money(t.won_amount)}")

    print(f"\n-- p2@townsend.com: GetPerson as of {AS_OF}")
    p2 = stub.GetPerson(ppb.GetEntityRequest(identity=ident("email", "p2@townsend.com"), as_of=as_of),
                        timeout=TIMEOUT)
    p = p2.person.record.person
    print(f"  person {p2.person.cluster_id}: {person_name(p2.person)} <{p.email}>, {p.job_title!r}, "
          f"{ppb_person_type(p.person_type)}, score {p.score:g}, {p.country} (the record's key: "
          f"{p2.person.record.key})")
    print(f"  merged from {len(p2.person.fragment_keys)} fragments:")
    print_fragments(p2.person, "    ")
    print(f"  {len(p2.accounts)} accounts:")
    for acc in p2.accounts:
        print(f"    account {acc.cluster_id}: {acc.record.account.name!r} ({', '.join(acc.fragment_keys)})")
    print(f"  {len(p2.opportunities)} opportunities (of those accounts, and those p2 has a role on):")
    for o in p2.opportunities:
        opp = o.record.opportunity
        print(f"    opportunity {o.cluster_id}: {opp.name!r}, {opp.stage}, {money(opp.amount, opp.currency)} "
              f"({', '.join(o.fragment_keys)})")
    print(f"  {len(p2.opportunity_roles)} opportunity roles (one per relation record: Salesforce's contact role and "
          f"Marketo 1's opportunity role both name Opportunity 1):")
    for r in p2.opportunity_roles:
        print(f"    on opportunity {r.opportunity_cluster_id}: {r.role!r}{', primary' if r.is_primary else ''}")
    print(f"  {len(p2.campaigns)} campaigns, {len(p2.lists)} lists:")
    for c in p2.campaigns:
        print(f"    campaign {c.campaign.cluster_id}: {c.campaign.record.campaign.name!r}, status {c.status!r}, "
              f"responded {c.has_responded}")
    for m in p2.lists:
        print(f"    list {m.list.cluster_id}: {m.list.record.marketing_list.name!r}")
    print(f"  {len(p2.events)} events (newest first, 400 days before {AS_OF}):")
    for e in p2.events:
        ev = e.event
        print(f"    {ev.timestamp.ToJsonString():<24} {ev.event_type:<32} {ev.url or '-':<40} {e.key}")
    check(keys_of(p2.person) == set(P2), f"p2's person view merges {sorted(p2.person.fragment_keys)}; expected "
                                         f"{sorted(P2)}")
    check(p.email == "p2@townsend.com", f"p2's merged email is {p.email!r}")
    accounts = {frozenset(acc.fragment_keys) for acc in p2.accounts}
    check(frozenset(view.account.fragment_keys) in accounts and any(MEXICO in a for a in accounts)
          and len(accounts) == 2,
          f"p2's accounts are {[sorted(a) for a in accounts]}; expected Townsend and Townsend de México")
    opp_keys = sorted(sorted(o.fragment_keys) for o in p2.opportunities)
    want_opps = sorted(sorted(x) for x in (OPPORTUNITY_1, OPPORTUNITY_2, {MEXICO_OPPORTUNITY}))
    check(opp_keys == want_opps, f"p2's opportunities are {opp_keys}; expected {want_opps} (Townsend's two and "
                                 f"Townsend de México's)")
    events = [e.key for e in p2.events]
    check(sorted(events) == sorted(P2_EVENTS), f"p2's events are {events}; expected {sorted(P2_EVENTS)}")
    check([e.event.timestamp.ToNanoseconds() for e in p2.events] ==
          sorted((e.event.timestamp.ToNanoseconds() for e in p2.events), reverse=True), "p2's events are not newest "
                                                                                        "first")
    new_product = [e for e in p2.events if e.event.event_type == "web.webpagedetails.pageViews"
                   and e.event.url in NEW_PRODUCT]
    check({e.key for e in new_product} == P2_PAGE_VIEWS,
          f"p2's page views of the new product page are {[e.key for e in new_product]}; expected "
          f"{sorted(P2_PAGE_VIEWS)}")
    print(f"  = one person of {len(p2.person.fragment_keys)} fragments with {len(new_product)} page views of the new "
          f"product page")

    print("\n-- Profile's outbox (forwarding changed views to segmentation), once it is empty")
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while True:
        st = stub.GetOutboxStatus(ppb.GetOutboxStatusRequest(), timeout=TIMEOUT)
        if st.pending_views == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    oldest = (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.oldest_pending.seconds))
              if st.HasField("oldest_pending") else "-")
    for label, value in [("pending views", st.pending_views), ("oldest pending", oldest),
                         ("sent views", st.sent_views), ("applied identity seq", st.applied_identity_sequence),
                         ("last error", st.last_error or "-")]:
        print(f"  {label:<20} {value}")
    check(st.pending_views == 0, f"profile's outbox still holds {st.pending_views} views after {DRAIN_TIMEOUT} s "
                                 f"(last error: {st.last_error or '-'})")
    check(st.applied_identity_sequence == forwarded and st.sent_views > 0 and not st.last_error,
          f"profile's outbox: applied identity sequence {st.applied_identity_sequence} (identity forwarded "
          f"{forwarded}), {st.sent_views} views sent, last error {st.last_error!r}; expected every update applied "
          f"and the changed views sent")
    print(f"  = every update identity forwarded applied; {st.sent_views} views of changed persons and accounts "
          f"taken by segmentation")
    latest = new_product[0]  # newest first
    return p2.person.cluster_id, latest.key, latest.event.timestamp.ToDatetime(tzinfo=timezone.utc)


def ppb_person_type(value: int) -> str:
    return model_pb2.PersonType.Name(value).removeprefix("PERSON_TYPE_").capitalize()


# The Bodea segment, as DESIGN.md §5 writes it.
BODEA_PQL = """\
(sum O.amount over O from person.accounts.opportunities where (O.isClosed = true and O.isWon = true)) > 1000000
and exists E from xEvent where (E.eventType = "web.webpagedetails.pageViews"
    and E.url = "https://bodea.example/new-product" and E.timestamp occurs <= 1 months before now)"""
SEGMENT_NAME = "Townsend buyers"
JOB_STATE = {v: k.removeprefix("JOB_STATE_") for k, v in spb.JobState.items()}
MODE = {v: k.removeprefix("EVALUATION_MODE_") for k, v in spb.EvaluationMode.items()}
MEMBERSHIP = {v: k.removeprefix("MEMBERSHIP_STATUS_") for k, v in spb.MembershipStatus.items()}


def timestamp(when: str):
    ts = spb.EvaluateRequest().as_of
    ts.FromJsonString(when)
    return ts


def ts_text(ts) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts.seconds))


def months_before(t: datetime, count: int) -> datetime:
    """`t` moved back `count` calendar months, keeping the time of day; a day the target month lacks becomes its
    last day (March 31 minus a month is February 28/29): the segmentation service's `occurs <= N months before`."""
    months = t.year * 12 + (t.month - 1) - count
    year, month = divmod(months, 12)
    month += 1
    next_first = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=t.tzinfo)
    last_day = (next_first - datetime(year, month, 1, tzinfo=t.tzinfo)).days
    return t.replace(year=year, month=month, day=min(t.day, last_day))


def create_segment(stub) -> tuple[spb.Segment, spb.Segment]:
    """Step 2: the Bodea segment, before any data arrives, so that streaming evaluation sees every view."""
    print("\n== The Bodea segment (CreateSegment on segmentation, before any data arrives)")
    seg = stub.CreateSegment(spb.CreateSegmentRequest(name=SEGMENT_NAME, pql=BODEA_PQL, entity_type=PERSON,
                                                      mode=spb.EVALUATION_MODE_STREAMING), timeout=TIMEOUT)
    print(f"  segment {seg.id}: {seg.name!r}, {ENTITY[seg.entity_type]}, {MODE[seg.mode]}, depends on time: "
          f"{seg.depends_on_time}, created {ts_text(seg.created_at)}")
    for line in seg.pql.splitlines():
        print(f"    {line}")
    check(seg.id and seg.name == SEGMENT_NAME and seg.pql == BODEA_PQL and seg.entity_type == PERSON
          and seg.mode == spb.EVALUATION_MODE_STREAMING and seg.depends_on_time and seg.realized == 0,
          f"CreateSegment returned {seg}")
    print("  = every view profile sends from now on is evaluated against it as it arrives, as of that moment")
    batch = stub.CreateSegment(spb.CreateSegmentRequest(name=SEGMENT_NAME + ", as of the story", pql=BODEA_PQL,
                                                        entity_type=PERSON, mode=spb.EVALUATION_MODE_BATCH),
                               timeout=TIMEOUT)
    print(f"  segment {batch.id}: {batch.name!r}, {ENTITY[batch.entity_type]}, {MODE[batch.mode]}: the same definition; "
          f"only Evaluate changes its members")
    check(batch.id and batch.id != seg.id and batch.mode == spb.EVALUATION_MODE_BATCH,
          f"CreateSegment (batch) returned {batch}")
    print("  = a streaming segment always means now (a membership that expires is re-checked and exits);\n"
          "    the batch copy keeps what an evaluation as of the story's time decided")
    return seg, batch


def members(stub, segment_id: str, status: int) -> list:
    out, token = [], None
    while token != "":
        page = stub.GetMembers(spb.GetMembersRequest(segment_id=segment_id, status=status, page_token=token or ""),
                               timeout=TIMEOUT)
        out, token = out + list(page.members), page.next_page_token
    return out


def print_members(found: list, indent: str = "  ") -> None:
    for m in found:
        person = m.record.record.person
        print(f"{indent}person {m.cluster_id}: {person.first_name} {person.last_name} <{person.email}>, "
              f"{MEMBERSHIP[m.status]} since {ts_text(m.since)}, version {m.version}")


def segmentation_view(stub, segment: spb.Segment, batch: spb.Segment, p2_cluster: int, visit_key: str,
                      visit: datetime) -> None:
    print("\n== Segmentation's view")
    as_of = timestamp(AS_OF)

    print(f"\n-- Streaming: GetMembers({segment.id}, REALIZED) once profile has sent every view (each evaluated "
          f"as it arrived, as of then)")
    streamed = members(stub, segment.id, spb.MEMBERSHIP_STATUS_REALIZED)
    print_members(streamed, "  ")
    now = datetime.now(timezone.utc).replace(microsecond=0)
    window_start = months_before(now, 1)
    recent = visit >= window_start
    print(f"  {plural(len(streamed), 'realized member')}: p2's latest page view of the new product page, "
          f"{visit:%Y-%m-%dT%H:%M:%SZ} ({visit_key}),\n    is {(now - visit).days} days before now "
          f"({now:%Y-%m-%dT%H:%M:%SZ}), "
          + (f"within the month (since {window_start:%Y-%m-%dT%H:%M:%SZ}): p2 qualifies as of now" if recent else
             f"older than a month (since {window_start:%Y-%m-%dT%H:%M:%SZ}):\n    nobody qualifies as of now; the "
             f"batch evaluation below uses the story's now, {AS_OF}"))
    got = sorted(m.cluster_id for m in streamed)
    check(got == ([p2_cluster] if recent else []),
          f"the streaming members of {segment.id} are the person clusters {got}; expected "
          + (f"p2 alone (cluster {p2_cluster})" if recent else "none") + f": p2's last visit {visit} is "
          + ("within" if recent else "older than") + f" a month before {now}")

    print(f"\n-- Batch: Evaluate(segment_ids=[{batch.id}], as_of={AS_OF}), then GetEvaluation until it is done")
    job = stub.Evaluate(spb.EvaluateRequest(segment_ids=[batch.id], as_of=as_of), timeout=TIMEOUT)
    print(f"  job {job.id}: segments {list(job.segment_ids)}, as of {ts_text(job.as_of)}, partition "
          f"{job.partition} of {job.partitions}")
    print(f"  job {job.id}: {JOB_STATE[job.state]:<9} evaluated {job.evaluated:>3} views, realized {job.realized}, "
          f"exited {job.exited}")
    deadline, shown = time.monotonic() + DRAIN_TIMEOUT, (job.state, job.evaluated, job.realized, job.exited)
    while True:
        job = stub.GetEvaluation(spb.GetEvaluationRequest(id=job.id), timeout=TIMEOUT)
        progress = (job.state, job.evaluated, job.realized, job.exited)
        if progress != shown:
            print(f"  job {job.id}: {JOB_STATE[job.state]:<9} evaluated {job.evaluated:>3} views, realized "
                  f"{job.realized}, exited {job.exited}")
            shown = progress
        if job.state != spb.JOB_STATE_RUNNING or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    check(job.state == spb.JOB_STATE_SUCCEEDED,
          f"evaluation job {job.id} is {JOB_STATE[job.state]} after {DRAIN_TIMEOUT} s: {job.error or '-'}")
    want_realized = 1  # p2, by the job
    check(job.evaluated > 0 and job.realized == want_realized and job.exited == 0,
          f"evaluation job {job.id}: evaluated {job.evaluated}, realized {job.realized}, exited {job.exited}; "
          f"expected the persons evaluated, {want_realized} realized, none exited")
    print(f"  = {job.evaluated} person views evaluated as of {AS_OF} in "
          f"{(job.finished_at.ToNanoseconds() - job.started_at.ToNanoseconds()) / 1e6:.0f} ms"
          + "; p2 realized")

    print(f"\n-- GetMembers({batch.id}, REALIZED)")
    realized = members(stub, batch.id, spb.MEMBERSHIP_STATUS_REALIZED)
    print_members(realized, "  ")
    emails = [m.record.record.person.email for m in realized]
    check(emails == ["p2@townsend.com"] and realized[0].cluster_id == p2_cluster,
          f"the realized members of {batch.id} are {emails} (clusters {[m.cluster_id for m in realized]}); "
          f"expected p2@townsend.com alone (cluster {p2_cluster})")
    seg = stub.GetSegment(spb.GetSegmentRequest(id=batch.id), timeout=TIMEOUT)
    check(seg.realized == 1, f"GetSegment({batch.id}) counts {seg.realized} realized members; expected 1")
    print(f"  = the audience is exactly p2@townsend.com (GetSegment: {seg.realized} realized)")

    print(f"\n-- Explain({batch.id}, email p2@townsend.com, as_of={AS_OF})")
    ex = stub.Explain(spb.ExplainRequest(segment_id=batch.id, identity=ident("email", "p2@townsend.com"),
                                         as_of=as_of), timeout=TIMEOUT)
    print(f"  person {ex.cluster_id}: matched {ex.matched}, as of {ts_text(ex.as_of)}; {len(ex.steps)} steps, "
          f"outermost first:")
    for step in ex.steps:
        text = " ".join(step.text.split())
        print(f"    {f'{step.line}:{step.column}':<7}{text}\n           = {step.result}")
        for e in step.entities:
            value = f", value {e.value}" if e.value else ""
            print(f"             {e.kind:<12} {e.key:<36} {e.label}{value}")
    check(ex.matched and ex.cluster_id == p2_cluster,
          f"Explain: p2 (cluster {ex.cluster_id}) matched {ex.matched}; expected cluster {p2_cluster}, matched")
    sums = [st for st in ex.steps if st.text.lstrip("( ").startswith("sum ") and st.entities]
    check(len(sums) == 1, f"Explain: {len(sums)} steps of the sum name entities; expected one")
    opp_keys = [e.key for e in sums[0].entities if e.kind == "opportunity"]
    check(len(opp_keys) == 2 and any(k in OPPORTUNITY_1 for k in opp_keys)
          and any(k in OPPORTUNITY_2 for k in opp_keys),
          f"Explain: the sum names the opportunities {opp_keys}; expected Opportunity 1 (one of "
          f"{sorted(OPPORTUNITY_1)}) and Opportunity 2 ({sorted(OPPORTUNITY_2)}), each once")
    exists = [st for st in ex.steps if st.text.lstrip("( ").startswith("exists ")]
    check(len(exists) == 1, f"Explain: {len(exists)} steps of the exists; expected one")
    event_keys = [e.key for e in exists[0].entities if e.kind == "event"]
    check(event_keys and set(event_keys) <= P2_PAGE_VIEWS,
          f"Explain: the exists step names the events {event_keys}; expected a page view of the new product page "
          f"({sorted(P2_PAGE_VIEWS)})")
    print(f"  = a won total of $1,100,000 over Opportunity 1 and Opportunity 2 (each once), and the page view "
          f"{event_keys[0]}" + (" (p2's latest of the new product page)" if event_keys[0] == visit_key else ""))

    print(f"\n-- Estimate (the definition evaluated over every person view of profile, nothing saved), as of {AS_OF}")
    for threshold, want, note in [
            (2_000_000, 0, "a $2M threshold: nobody (the total is $1.1M; each opportunity counts once)"),
            (1_000_000, 1, "the segment's $1M threshold: p2")]:
        check(BODEA_PQL.count(") > 1000000\n") == 1, "the $1M threshold is not in the Bodea definition")
        pql = BODEA_PQL.replace(") > 1000000\n", f") > {threshold}\n")
        est = stub.Estimate(spb.EstimateRequest(pql=pql, entity_type=PERSON, as_of=as_of), timeout=TIMEOUT)
        print(f"  > {threshold:>9,}: matched {est.matched} of {est.evaluated} persons: {note}")
        check(est.matched == want and est.evaluated > 0 and ts_text(est.as_of) == AS_OF,
              f"Estimate with > {threshold}: matched {est.matched} of {est.evaluated} as of {ts_text(est.as_of)}; "
              f"expected {want} as of {AS_OF}")

    print("\n-- Segmentation's outbox (--destination: membership changes go to cdp-destination)")
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while True:
        st = stub.GetOutboxStatus(spb.GetOutboxStatusRequest(), timeout=TIMEOUT)
        if st.pending_changes == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for label, value in [("pending changes", st.pending_changes),
                         ("oldest pending", ts_text(st.oldest_pending) if st.HasField("oldest_pending") else "-"),
                         ("sent changes", st.sent_changes), ("last error", st.last_error or "-"),
                         ("scheduled rechecks", st.scheduled_rechecks),
                         ("next recheck", ts_text(st.next_recheck) if st.HasField("next_recheck") else "-")]:
        print(f"  {label:<18} {value}")
    check(st.pending_changes == 0 and st.sent_changes >= 1 and not st.last_error,
          f"segmentation's outbox: {st.pending_changes} changes pending, {st.sent_changes} sent, last error "
          f"{st.last_error or '-'}; expected p2's realization sent to destination")
    print("  = p2's realization is at destination, which holds every segment's members for activations")


def destination_view(stub, batch: spb.Segment, work: Path) -> None:
    """The batch segment's audience activated to two file exports: a Marketo static list's import file and a
    LinkedIn Matched Audience's upload file (hashed emails only). Marketo and LinkedIn themselves come next."""
    print("\n== Destination: the audience activated to a Marketo list export and a LinkedIn upload file")
    marketo = stub.CreateDestination(dpb.CreateDestinationRequest(
        type=dpb.DESTINATION_TYPE_FILE, name="Marketo static list: Townsend buyers (import file)",
        settings={"directory": str(work / "exports" / "marketo"), "format": "csv"}), timeout=TIMEOUT)
    linkedin = stub.CreateDestination(dpb.CreateDestinationRequest(
        type=dpb.DESTINATION_TYPE_FILE, name="LinkedIn Matched Audience: Townsend buyers (upload file)",
        settings={"directory": str(work / "exports" / "linkedin"), "format": "csv"}), timeout=TIMEOUT)
    for d in (marketo, linkedin):
        print(f"  destination {d.id}: {d.name}, {dict(d.settings)}")
    activations = [
        stub.Activate(dpb.ActivateRequest(segment_id=batch.id, destination_id=marketo.id,
                                          identity=dpb.IDENTITY_MAPPING_EMAIL,
                                          attributes={"firstName": "firstName", "lastName": "lastName",
                                                      "title": "jobTitle"}), timeout=TIMEOUT),
        stub.Activate(dpb.ActivateRequest(segment_id=batch.id, destination_id=linkedin.id,
                                          identity=dpb.IDENTITY_MAPPING_HASHED_EMAIL), timeout=TIMEOUT),
    ]
    for a in activations:
        print(f"  activation {a.id}: segment {a.segment_id} -> {a.destination_id}, identity "
              f"{dpb.IdentityMapping.Name(a.identity)}, attributes {dict(a.attributes) or '-'}")

    def exported(directory: Path) -> list[Path]:
        return sorted(p for p in directory.glob("*.csv")) if directory.exists() else []

    deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline and not (exported(work / "exports" / "marketo")
                                               and exported(work / "exports" / "linkedin")):
        time.sleep(0.05)
    hashed = hashlib.sha256(b"p2@townsend.com").hexdigest()
    for name, directory, want in [("Marketo", work / "exports" / "marketo",
                                   [["add", "p2@townsend.com", "Paul", "Okafor", "Director, Procurement"]]),
                                  ("LinkedIn", work / "exports" / "linkedin", [["add", hashed]])]:
        files = exported(directory)
        check(len(files) == 1, f"the {name} export directory {directory} holds {len(files)} files; expected one")
        text = files[0].read_text()
        print(f"\n-- {name}: {files[0].name}")
        for line in text.splitlines():
            print(f"  {line}")
        rows = list(csv.reader(text.splitlines()))
        check(rows[1:] == want, f"the {name} export holds {rows[1:]}; expected {want}")
    print(f"  = the Marketo file adds exactly p2@townsend.com; the LinkedIn file exactly its SHA-256, {hashed[:16]}…")

    print("\n-- ListDeliveries")
    for d in (marketo, linkedin):
        runs = stub.ListDeliveries(dpb.ListDeliveriesRequest(destination_id=d.id), timeout=TIMEOUT).deliveries
        for run in runs:
            print(f"  {d.id} {run.id}: activation {run.activation_id}, added {run.added}, removed {run.removed}, "
                  f"suppressed (opted out) {run.suppressed}, failed {run.failed}, retries {run.retries}")
        check(sum(r.added for r in runs) == 1 and all(r.failed == 0 for r in runs),
              f"deliveries of {d.id}: {[(r.added, r.failed) for r in runs]}; expected one member added")


def free_port() -> int:
    """A port free right now (identity's and profile's, picked before the services start; see main)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def binary(given: Path | None, env: str, name: str) -> Path:
    return given or Path(os.environ.get(env) or REPO_ROOT / ".build" / "release" / name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep-data", action="store_true", help="keep the temp dir (data dirs and service logs)")
    ap.add_argument("--ingestion-binary", type=Path, metavar="PATH",
                    help="cdp-ingestion to run (default $CDP_INGESTION_BIN or .build/release/cdp-ingestion)")
    ap.add_argument("--identity-binary", type=Path, metavar="PATH",
                    help="cdp-identity to run (default $CDP_IDENTITY_BIN or .build/release/cdp-identity)")
    ap.add_argument("--profile-binary", type=Path, metavar="PATH",
                    help="cdp-profile to run (default $CDP_PROFILE_BIN or .build/release/cdp-profile)")
    ap.add_argument("--segmentation-binary", type=Path, metavar="PATH",
                    help="cdp-segmentation to run (default $CDP_SEGMENTATION_BIN or .build/release/cdp-segmentation)")
    ap.add_argument("--destination-binary", type=Path, metavar="PATH",
                    help="cdp-destination to run (default $CDP_DESTINATION_BIN or .build/release/cdp-destination)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cdp-demo."))
    # Profile forwards to segmentation, which reads profile's views for Evaluate, Estimate and Explain; identity
    # forwards to profile, whose DeletePerson calls identity. Profile's and identity's ports are picked first, so
    # that segmentation, then profile, then identity can each start knowing where to send (and tell its address).
    identity = Service("identity", binary(args.identity_binary, "CDP_IDENTITY_BIN", "cdp-identity"),
                       ["--data-dir", str(work / "identity"), *IDENTITY_RULES], work, port=free_port())
    profile = Service("profile", binary(args.profile_binary, "CDP_PROFILE_BIN", "cdp-profile"),
                      ["--data-dir", str(work / "profile"), "--identity", f"127.0.0.1:{identity.port}"], work,
                      port=free_port())
    segmentation = Service("segmentation",
                           binary(args.segmentation_binary, "CDP_SEGMENTATION_BIN", "cdp-segmentation"),
                           ["--data-dir", str(work / "segmentation"), "--profile", f"127.0.0.1:{profile.port}"], work)
    ingestion = Service("ingestion", binary(args.ingestion_binary, "CDP_INGESTION_BIN", "cdp-ingestion"),
                        ["--data-dir", str(work / "ingestion")], work)
    destination = Service("destination", binary(args.destination_binary, "CDP_DESTINATION_BIN", "cdp-destination"),
                          ["--data-dir", str(work / "destination")], work)
    services = (ingestion, identity, profile, segmentation, destination)
    try:
        try:
            destination.start()
            segmentation.args += ["--destination", destination.address]
            segmentation.start()
            profile.args += ["--segmentation", segmentation.address]
            profile.start()
            identity.args += ["--profile", profile.address]
            identity.start()
            ingestion.args += ["--identity", identity.address]
            ingestion.start()
        except (OSError, RuntimeError) as e:
            print(f"demo: error: cannot start a service: {e}", file=sys.stderr)
            return 2
        print(f"cdp-destination  listening on {destination.address} (pid {destination.proc.pid}), data dir "
              f"{work / 'destination'}")
        print(f"cdp-segmentation listening on {segmentation.address} (pid {segmentation.proc.pid}), data dir "
              f"{work / 'segmentation'}, --profile {profile.address}, --destination {destination.address}")
        print(f"cdp-profile      listening on {profile.address} (pid {profile.proc.pid}), data dir {work / 'profile'}, "
              f"--identity {identity.address}, --segmentation {segmentation.address}")
        print(f"cdp-identity     listening on {identity.address} (pid {identity.proc.pid}), data dir "
              f"{work / 'identity'}, --profile {profile.address}")
        print(f"  rules: {' '.join(IDENTITY_RULES) or 'the defaults'}")
        print(f"cdp-ingestion    listening on {ingestion.address} (pid {ingestion.proc.pid}), "
              f"data dir {work / 'ingestion'}, --identity {identity.address}")
        with grpc.insecure_channel(ingestion.address, options=CHANNEL_OPTIONS) as ing_channel, \
                grpc.insecure_channel(identity.address, options=CHANNEL_OPTIONS) as idn_channel, \
                grpc.insecure_channel(profile.address, options=CHANNEL_OPTIONS) as prof_channel, \
                grpc.insecure_channel(segmentation.address, options=CHANNEL_OPTIONS) as seg_channel, \
                grpc.insecure_channel(destination.address, options=CHANNEL_OPTIONS) as dst_channel:
            for ch in (ing_channel, idn_channel, prof_channel, seg_channel, dst_channel):
                grpc.channel_ready_future(ch).result(timeout=TIMEOUT)
            seg = segmentation_pb2_grpc.SegmentationStub(seg_channel)
            segment, batch_segment = create_segment(seg)
            ing = ingestion_pb2_grpc.IngestionStub(ing_channel)
            accepted, files = ingest_fixtures(ing)
            wait_forwarded(ing, accepted)
            forwarded = identity_view(identity_pb2_grpc.IdentityStub(idn_channel), files, accepted)
            p2_cluster, visit_key, visit = profile_view(profile_pb2_grpc.ProfileStub(prof_channel), forwarded)
            segmentation_view(seg, segment, batch_segment, p2_cluster, visit_key, visit)
            destination_view(destination_pb2_grpc.DestinationStub(dst_channel), batch_segment, work)
        print()
        # In the order data flows: ingestion forwards to identity, identity to profile, profile to segmentation,
        # segmentation to destination.
        for service in services:
            rc = service.stop()
            print(f"stopped cdp-{service.name} with SIGTERM: exit status {rc}")
            check(rc == 0, f"cdp-{service.name} exited with status {rc} on SIGTERM:\n{service.stderr_tail()}")
        return 0
    except (Unexpected, grpc.RpcError, grpc.FutureTimeoutError, subprocess.TimeoutExpired) as e:
        what = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.RpcError) else str(e) or repr(e)
        print(f"\ndemo: error: {what}" + ("" if args.keep_data else " (--keep-data keeps the services' logs)"),
              file=sys.stderr)
        return 1
    finally:
        for service in services:
            service.kill()
        if args.keep_data:
            print(f"kept {work} (ingestion/, identity/, profile/, segmentation/, destination/, exports/, *.out, *.err)")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

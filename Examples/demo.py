"""Ingestion demo: Bodea's fixture files through a release cdp-ingestion, step by step.

Run through Examples/ingestion-demo.sh (builds the release binary, prepares .venv), or directly:
    .venv/bin/python Examples/ingestion_demo.py [--keep-data] [--binary PATH]

1. starts `cdp-ingestion --port 0 --data-dir <temp dir>` without --identity: accepted records wait
   in the durable outbox for the identity service, the next service of the pipeline;
2. creates the sources of the Bodea story (Tests/IngestionTests/Fixtures/EXPECTED.md);
3. uploads every fixture file (64 KiB data messages, key = the file's path, error threshold 0.5:
   the fixtures hold bad rows on purpose) and prints each batch with its record errors;
4. re-sends one file under the same key (`replayed`, same batch) and one under a new key (a new
   batch whose valid records are all duplicates);
5. streams two page views of p2@townsend.com: a new one, and the one canonical/event.csv brought;
6. prints ListBatches and GetOutboxStatus, stops the service with SIGTERM.

Exit status 1 when anything is unexpected (a call fails, a batch does not complete, counts do not
add up, the service does not stop cleanly), 2 when the service does not start.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "Tests" / "IngestionTests" / "Fixtures"
sys.path.insert(0, str(REPO_ROOT / "Tests" / "Ingestion"))
from protos import ingestion_pb2 as pb, ingestion_pb2_grpc, model_pb2  # noqa: E402

CHUNK = 64 * 1024
TIMEOUT = 30
SF, MKTO1, MKTO2, MDM, WEB = (model_pb2.Source(type=t, instance=i) for t, i in [
    ("Salesforce", "sf-1"), ("Marketo", "mkto-1"), ("Marketo", "mkto-2"), ("MDM", "mdm-1"), ("Web", "web-1")])
SOURCES = [(SF, "CRM, line of business 1"), (MKTO1, "Marketo 1, line of business 1 (synced with sf-1)"),
           (MKTO2, "Marketo 2, line of business 2"), (MDM, "MDM crosswalk"), (WEB, "web tag on bodea.example")]
STATE = {v: k.removeprefix("BATCH_STATE_") for k, v in pb.BatchState.items()}
FORMAT = {v: k.removeprefix("FORMAT_") for k, v in pb.Format.items()}


class Unexpected(Exception):
    """Something the demo did not expect: exit status 1."""


def src(s: model_pb2.Source) -> str:
    return f"{s.type}:{s.instance}"


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


def start_service(binary: Path, work: Path) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CDP_IDENTITY_ADDR", "CDP_TOKEN", "CDP_DATA_DIR")}
    out_path = work / "ingestion.out"
    with open(out_path, "wb") as out, open(work / "ingestion.err", "wb") as err:
        proc = subprocess.Popen([str(binary), "--port", "0", "--data-dir", str(work / "data")], env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        first, nl, _ = out_path.read_bytes().partition(b"\n")
        if nl:
            line = first.decode("utf-8", "replace")
            if line.startswith("listening on "):
                return proc, line.removeprefix("listening on ").strip()
            break
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"cdp-ingestion did not print 'listening on HOST:PORT':\n"
                       f"{(work / 'ingestion.err').read_text(errors='replace')[-2000:]}")


def demo(stub) -> None:
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

    print("\n== Outbox (no --identity: records wait here for the identity service, which comes next)")
    st = stub.GetOutboxStatus(pb.GetOutboxStatusRequest(), timeout=TIMEOUT)
    oldest = (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.oldest_pending.seconds))
              if st.HasField("oldest_pending") else "-")
    for label, value in [("pending records", st.pending_records), ("oldest pending", oldest),
                         ("forwarded records", st.forwarded_records), ("last error", st.last_error or "-")]:
        print(f"  {label:<18} {value}")
    streamed = sum(a.accepted for a in acks)
    check(st.pending_records == total["accepted"] + streamed and st.forwarded_records == 0,
          f"outbox: {st.pending_records} pending, {st.forwarded_records} forwarded; expected "
          f"{total['accepted'] + streamed} pending")
    print(f"  = {total['accepted']} records accepted from the batches + {streamed} streamed, none forwarded")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep-data", action="store_true", help="keep the temp dir (data dir and service logs)")
    ap.add_argument("--binary", type=Path, help="cdp-ingestion to run (default $CDP_INGESTION_BIN or "
                                                ".build/release/cdp-ingestion)")
    args = ap.parse_args()
    binary = args.binary or Path(os.environ.get("CDP_INGESTION_BIN") or REPO_ROOT / ".build/release/cdp-ingestion")
    work = Path(tempfile.mkdtemp(prefix="cdp-ingestion-demo."))
    proc = None
    try:
        try:
            proc, address = start_service(binary, work)
        except (OSError, RuntimeError) as e:
            print(f"ingestion-demo: error: cannot start {binary}: {e}", file=sys.stderr)
            return 2
        print(f"cdp-ingestion listening on {address} (pid {proc.pid}), data dir {work / 'data'}")
        print("no --identity: accepted records wait in the outbox for the identity service, which comes next")
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
            demo(ingestion_pb2_grpc.IngestionStub(channel))
        proc.terminate()
        rc = proc.wait(timeout=15)
        print(f"\nstopped cdp-ingestion with SIGTERM: exit status {rc}")
        check(rc == 0, f"cdp-ingestion exited with status {rc} on SIGTERM")
        return 0
    except (Unexpected, grpc.RpcError, grpc.FutureTimeoutError, subprocess.TimeoutExpired) as e:
        what = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.RpcError) else str(e) or repr(e)
        print(f"\ningestion-demo: error: {what}" + ("" if args.keep_data else
              " (--keep-data keeps the service's log)"), file=sys.stderr)
        return 1
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if args.keep_data:
            print(f"kept {work} (data/, ingestion.out, ingestion.err)")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

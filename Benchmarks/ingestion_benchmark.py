"""Ingestion benchmark: upload ~1M canonical records to a release cdp-ingestion and time it.

Run through Benchmarks/ingestion-benchmark.sh (builds release, prepares .venv), or directly:
    .venv/bin/python Benchmarks/ingestion_benchmark.py [--records N] [--keep-data] ...

Steps:
 1. generate the files in a temp dir, deterministic for a seed (--seed): by default 400k persons and
    100k accounts and 200k opportunities as canonical CSV, 300k events as canonical NDJSON
    (--records N scales the mix: 40% / 10% / 20% / 30%). Values look real: names, emails, domains,
    amounts, currencies, stages, RFC 3339 timestamps; a few CSV fields are quoted.
 2. start a fake identity receiver (grpcio, in this process) and the release cdp-ingestion on a
    fresh data directory pointing at it, so forwarding runs during the upload as in production.
 3. upload every file at once: one IngestBatch per file, each on its own connection, 1 MiB
    `data` chunks read from the file. Upload time = first byte sent -> last Batch answer.
 4. wait for GetOutboxStatus.pending_records = 0: drain time = last Batch answer -> outbox empty.
 5. print a table: records, bytes, seconds, records/s, MB/s (10^6 bytes), the server's peak RSS
    (VmHWM from /proc/PID/status) and CPU time, the drain time, what identity received.

Exit status 1 when a batch is not COMPLETED, does not accept every record, the outbox does not drain
within --drain-timeout, or identity did not receive every record; 2 on bad arguments or when the
service does not start.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "Tests" / "Ingestion"))
from protos import ingestion_pb2, ingestion_pb2_grpc, model_pb2  # noqa: E402
# The fake identity receiver and the process wrapper are shared with the crash test.
from test_crash import CHANNEL_OPTIONS, FakeIdentity, Service, ServiceError, ingestion_binary  # noqa: E402

CHUNK = 1 << 20
SOURCE = model_pb2.Source(type="Salesforce", instance="sfdc-1")
MIX = [  # entity, format, file, share of --records
    ("person", ingestion_pb2.FORMAT_CANONICAL_CSV, "persons.csv", 0.4),
    ("account", ingestion_pb2.FORMAT_CANONICAL_CSV, "accounts.csv", 0.1),
    ("opportunity", ingestion_pb2.FORMAT_CANONICAL_CSV, "opportunities.csv", 0.2),
    ("event", ingestion_pb2.FORMAT_CANONICAL_NDJSON, "events.ndjson", 0.3),
]
STATE = {v: k.removeprefix("BATCH_STATE_") for k, v in ingestion_pb2.BatchState.items()}

FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Niklaus", "Margaret",
         "John", "Sophie", "Tim", "Hedy", "Linus", "Katherine", "Dennis", "Annie", "Guido", "Lynn", "Bjarne",
         "Shafi", "Leslie", "Yukihiro", "Jean", "Carol", "Tony", "Mary", "Robin", "Adele", "Whitfield"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Perlman", "Wirth",
        "Hamilton", "Backus", "Wilson", "Berners-Lee", "Lamarr", "Torvalds", "Johnson", "Ritchie", "Easley",
        "van Rossum", "Conway", "Stroustrup", "Goldwasser", "Lamport", "Matsumoto", "Sammet", "Shaw", "Hoare",
        "Keller", "Milner", "Goldberg", "Diffie"]
TITLES = ["Software Engineer", "CTO", "\"VP, Sales\"", "Procurement Manager", "Head of IT", "Data Analyst",
          "Marketing Director", "\"Director, Operations\"", "CFO", "Account Executive", "Product Manager", "CEO"]
COUNTRIES = ["US", "DE", "FR", "GB", "JP", "BR", "IN", "CA", "AU", "NL", "ES", "SE"]
WORDS = ["Acme", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Townsend", "Bodea", "Vandelay", "Hooli",
         "Soylent", "Tyrell", "Cyberdyne", "Wonka", "Gringotts", "Oscorp", "Aperture", "Massive", "Dynamic",
         "Blue", "North", "Pacific", "Quantum", "Summit", "Vertex", "Nimbus", "Orbit", "Atlas", "Zenith", "Nova"]
SUFFIXES = ["Inc", "GmbH", "Ltd", "SA", "Corp", "Holdings, LLC", "KK", "AB"]
INDUSTRIES = ["Software", "Manufacturing", "Retail", "Financial Services", "Healthcare", "Energy", "Telecom",
              "Education", "Logistics", "Media"]
STAGES = [("Prospecting", False, False), ("Qualification", False, False), ("Proposal", False, False),
          ("Negotiation", False, False), ("Closed Won", True, True), ("Closed Lost", True, False)]
CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CAD"]
PRODUCTS = ["Platform", "Analytics Add-on", "Support Renewal", "Enterprise License", "Onboarding", "Expansion"]
PAGES = ["/", "/pricing", "/new-product", "/docs/getting-started", "/blog/b2b-cdp", "/contact", "/careers",
         "/customers/townsend", "/webinar/2026", "/trial"]
EVENT_TYPES = ["web.webpagedetails.pageViews"] * 6 + ["web.webinteraction.linkClicks", "commerce.productViews",
                                                      "web.formFilledOut", "directMarketing.emailOpened"]

BASE_TS = 1_735_689_600  # 2025-01-01T00:00:00Z
SPAN = 500 * 86400


def ts(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def counts_for(total: int) -> list[int]:
    counts = [int(total * share) for *_, share in MIX]
    counts[0] += total - sum(counts)  # rounding goes to persons
    return counts


def generate(dir_: Path, total: int, seed: int) -> list[tuple[str, int, Path, int]]:
    """Writes the files; returns (entity, format, path, rows) per file."""
    rng = random.Random(seed)
    n_person, n_account, n_opp, n_event = counts_for(total)
    n_account_ref = max(1, n_account)
    n_person_ref = max(1, n_person)
    out = []

    def write(name: str, header: str | None, rows) -> Path:
        path = dir_ / name
        with open(path, "w", buffering=1 << 20) as f:
            if header:
                f.write(header + "\n")
            buf = []
            for row in rows:
                buf.append(row)
                if len(buf) >= 10000:
                    f.write("\n".join(buf) + "\n")
                    buf.clear()
            if buf:
                f.write("\n".join(buf) + "\n")
        return path

    def persons():
        for i in range(n_person):
            r = rng.getrandbits(64)
            first, last = FIRST[r & 31], LAST[(r >> 5) & 31]
            acct = (r >> 10) % n_account_ref
            email = f"{first.lower()}.{last.lower().replace(' ', '')}{i}@{WORDS[acct % 30].lower()}{acct}.example"
            ptype = "Lead" if (r >> 40) & 1 else "Contact"
            opt = "true" if (r >> 41) % 13 == 0 else "false"
            deleted = "true" if (r >> 45) % 100 == 0 else "false"
            yield (f"P{i},{email},{first},{last},{TITLES[(r >> 30) % 12]},{ptype},{(r >> 20) % 1000 / 10},"
                   f"{COUNTRIES[(r >> 34) % 12]},A{acct},003{i:012d},{(r >> 8) % 10**15:015d}{i},{opt},"
                   f"{ts(BASE_TS + (r >> 16) % SPAN)},{deleted}")

    def accounts():
        for i in range(n_account):
            r = rng.getrandbits(64)
            w1, w2 = WORDS[i % 30], WORDS[(r >> 5) % 30]
            domain = f"{w1.lower()}{i}.example"
            parent = f"A{(r >> 12) % i}" if i and (r >> 40) % 10 == 0 else ""
            name = f"{w1} {w2} {SUFFIXES[r & 7]}"
            if "," in name:
                name = f'"{name}"'
            yield (f"A{i},{name},{domain},https://www.{domain}/,{INDUSTRIES[(r >> 8) % 10]},"
                   f"{(r >> 16) % 5_000_000_000 / 100:.2f},{1 + (r >> 20) % 100_000},{COUNTRIES[(r >> 50) % 12]},"
                   f"{(r >> 24) % 10**9:09d},{parent},001{i:012d},{ts(BASE_TS + (r >> 28) % SPAN)}")

    def opportunities():
        for i in range(n_opp):
            r = rng.getrandbits(64)
            acct = (r >> 8) % n_account_ref
            stage, closed, won = STAGES[r % 6]
            close = time.strftime("%Y-%m-%d", time.gmtime(BASE_TS + (r >> 30) % SPAN))
            yield (f"O{i},A{acct},{WORDS[acct % 30]} - {PRODUCTS[(r >> 3) % 6]},{stage},"
                   f"{(r >> 12) % 200_000_000 / 100:.2f},{CURRENCIES[(r >> 40) % 5]},{str(closed).lower()},"
                   f"{str(won).lower()},{close},006{i:012d},{ts(BASE_TS + (r >> 20) % SPAN)}")

    def events():
        for i in range(n_event):
            r = rng.getrandbits(64)
            p = r % n_person_ref
            page = PAGES[(r >> 20) % 10]
            who = (r >> 24) % 3  # by person id, by email, or by ecid
            person = f'"personId":"P{p}",' if who == 0 else ""
            email = f'"email":"visitor{p}@{WORDS[p % 30].lower()}.example",' if who == 1 else ""
            ecid = f'"ecid":"{(r >> 8) % 10**15:015d}{p}",' if who == 2 else ""
            yield (f'{{"eventId":"E{i}",{person}{email}{ecid}"eventType":"{EVENT_TYPES[(r >> 28) % 10]}",'
                   f'"timestamp":"{ts(BASE_TS + (r >> 32) % SPAN)}","url":"https://bodea.example{page}",'
                   f'"name":"{page.strip("/") or "home"}"}}')

    headers = {
        "person": "personId,email,firstName,lastName,jobTitle,personType,score,country,accountId,crmId,ecid,"
                  "emailOptOut,lastUpdated,isDeleted",
        "account": "accountId,name,domain,website,industry,annualRevenue,employees,country,dunsNumber,"
                   "parentAccountId,crmId,lastUpdated",
        "opportunity": "opportunityId,accountId,name,stage,amount,currency,isClosed,isWon,closeDate,crmId,lastUpdated",
        "event": None,
    }
    gens = {"person": persons, "account": accounts, "opportunity": opportunities, "event": events}
    for (entity, fmt, name, _), n in zip(MIX, (n_person, n_account, n_opp, n_event)):
        if n == 0:
            continue
        out.append((entity, fmt, write(name, headers[entity], gens[entity]()), n))
    return out


class Upload(threading.Thread):
    def __init__(self, address: str, entity: str, fmt: int, path: Path, rows: int, seed: int, go: threading.Event):
        super().__init__(daemon=True, name=f"upload-{entity}")
        self.address, self.entity, self.fmt, self.path, self.rows = address, entity, fmt, path, rows
        self.key = f"bench-{seed}-{entity}"
        self.go = go
        self.first_byte: float | None = None
        self.done: float | None = None
        self.result = None
        self.error: str | None = None

    def requests(self):
        header = ingestion_pb2.BatchHeader(source=SOURCE, entity=self.entity, format=self.fmt,
                                           idempotency_key=self.key, file_name=self.path.name)
        self.first_byte = time.monotonic()
        yield ingestion_pb2.IngestBatchRequest(header=header)
        with open(self.path, "rb") as f:
            while chunk := f.read(CHUNK):
                yield ingestion_pb2.IngestBatchRequest(data=chunk)

    def run(self):
        ch = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        try:
            grpc.channel_ready_future(ch).result(timeout=10)
            stub = ingestion_pb2_grpc.IngestionStub(ch)
            self.go.wait()
            self.result = stub.IngestBatch(self.requests(), timeout=3600)
        except grpc.RpcError as e:
            self.error = f"{e.code().name}: {e.details()}"
        except Exception as e:  # noqa: BLE001 - reported, not raised in a thread
            self.error = repr(e)
        finally:
            self.done = time.monotonic()
            ch.close()


def proc_stats(pid: int) -> dict[str, float]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(rest.split()[0]) * 1024
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    out["cpu"] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return out


def table(rows: list[tuple[str, ...]], header: tuple[str, ...], left: tuple[int, ...] = (0,)) -> str:
    """A Markdown table; columns in `left` are left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    def line(r):
        return "| " + " | ".join(str(c).ljust(w) if i in left else str(c).rjust(w)
                                 for i, (c, w) in enumerate(zip(r, widths))) + " |"
    sep = "|" + "|".join("-" * (w + 1) + ("-" if i in left else ":") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), sep, *map(line, rows)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000, help="records in all (default 1,000,000)")
    ap.add_argument("--seed", type=int, default=42, help="seed of the generated data (default 42)")
    ap.add_argument("--keep-data", action="store_true", help="keep the temp dir (files, data dir, logs)")
    ap.add_argument("--binary", default=None,
                    help="cdp-ingestion to run (default $CDP_INGESTION_BIN or .build/release/cdp-ingestion)")
    ap.add_argument("--forward-batch-size", type=int, default=None, help="passed to cdp-ingestion")
    ap.add_argument("--log-level", default="info", help="cdp-ingestion --log-level (default info)")
    ap.add_argument("--forward-after-upload", action="store_true",
                    help="upload with no identity configured, then restart the service with identity and time "
                         "the drain (the upload figures are then ingestion's alone)")
    ap.add_argument("--drain-timeout", type=float, default=600, help="seconds to wait for the outbox (default 600)")
    ap.add_argument("--work-dir", default=None, help="where to make the temp dir (default $TMPDIR)")
    args = ap.parse_args()
    if args.records < 1:
        ap.error("--records must be at least 1")

    binary = Path(args.binary) if args.binary else ingestion_binary("release")
    if not binary.exists():
        print(f"ingestion-benchmark: error: {binary} not found (build it: swift build -c release "
              f"--product cdp-ingestion)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="cdp-ingestion-bench.", dir=args.work_dir))
    files_dir, data_dir = work / "files", work / "data"
    files_dir.mkdir()
    data_dir.mkdir()
    receiver = FakeIdentity(workers=4, detail=False).start()
    extra = ["--log-level", args.log_level]
    if args.forward_batch_size:
        extra += ["--forward-batch-size", str(args.forward_batch_size)]
    # --forward-after-upload: no identity while uploading (the upload figures are then ingestion's
    # alone), then a restart on the same data directory with identity, timed until the outbox drains.
    service = Service(binary, data_dir, "" if args.forward_after_upload else receiver.address, work, extra)
    failed = False
    try:
        t = time.monotonic()
        files = generate(files_dir, args.records, args.seed)
        total_rows = sum(n for *_, n in files)
        total_bytes = sum(p.stat().st_size for _, _, p, _ in files)
        print(f"generated {total_rows:,} records, {total_bytes / 1e6:.1f} MB in {len(files)} files in "
              f"{time.monotonic() - t:.1f}s (seed {args.seed}): "
              + ", ".join(f"{p.name} {n:,}" for _, _, p, n in files), flush=True)

        try:
            address = service.start(0)
        except ServiceError as e:
            print(f"ingestion-benchmark: error: {e}", file=sys.stderr)
            return 2
        print(f"cdp-ingestion {binary} pid {service.pid} on {address}, data dir {data_dir}, "
              f"identity {receiver.address}", flush=True)
        ch = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        stub = ingestion_pb2_grpc.IngestionStub(ch)
        stub.CreateSource(ingestion_pb2.CreateSourceRequest(source=SOURCE, description="benchmark"), timeout=10)

        go = threading.Event()
        uploads = [Upload(address, e, f, p, n, args.seed, go) for e, f, p, n in files]
        for u in uploads:
            u.start()
        time.sleep(0.2)  # connections are up; start together
        go.set()
        for u in uploads:
            u.join()
        first = min(u.first_byte for u in uploads if u.first_byte is not None)
        last = max(u.done for u in uploads)
        upload_s = last - first
        after_upload = proc_stats(service.pid)

        if args.forward_after_upload:
            ch.close()
            if not service.stop():
                print(f"ingestion-benchmark: cdp-ingestion did not exit cleanly on SIGTERM "
                      f"({service.exit_description()})", file=sys.stderr)
                return 1
            service.identity = receiver.address
            address = service.start(0)
            last = time.monotonic()
            ch = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
            stub = ingestion_pb2_grpc.IngestionStub(ch)
            print(f"restarted cdp-ingestion (pid {service.pid}) with identity {receiver.address}", flush=True)

        # Drain: last Batch answer (or the restart) -> pending_records == 0.
        deadline = last + args.drain_timeout
        st = stub.GetOutboxStatus(ingestion_pb2.GetOutboxStatusRequest(), timeout=10)
        while st.pending_records and time.monotonic() < deadline:
            time.sleep(0.05)
            st = stub.GetOutboxStatus(ingestion_pb2.GetOutboxStatusRequest(), timeout=10)
        drained = time.monotonic()
        drain_s = drained - last
        after_drain = proc_stats(service.pid)
        ch.close()

        per_file = []
        accepted = 0
        for u in uploads:
            r = u.result
            if r is None:
                per_file.append((u.path.name, f"{u.rows:,}", f"{u.path.stat().st_size / 1e6:.1f}",
                                 f"{u.done - u.first_byte:.2f}" if u.first_byte else "-", "ERROR", "-", "-"))
                print(f"ingestion-benchmark: {u.path.name}: {u.error}", file=sys.stderr)
                failed = True
                continue
            accepted += r.counts.accepted
            per_file.append((u.path.name, f"{u.rows:,}", f"{u.path.stat().st_size / 1e6:.1f}",
                             f"{u.done - u.first_byte:.2f}", STATE[r.state], f"{r.counts.accepted:,}",
                             f"{r.counts.rejected:,}"))
            if r.state != ingestion_pb2.BATCH_STATE_COMPLETED:
                errs = "; ".join(f"line {e.line} {e.field}: {e.reason}" for e in r.errors[:3])
                print(f"ingestion-benchmark: {u.path.name}: batch {r.batch_id} {STATE[r.state]}: {r.failure} "
                      f"(first errors: {errs})", file=sys.stderr)
                failed = True
            elif r.counts.accepted != u.rows or r.counts.records != u.rows:
                errs = "; ".join(f"line {e.line} {e.field}: {e.reason}" for e in r.errors[:3])
                print(f"ingestion-benchmark: {u.path.name}: {r.counts.records:,} records read, "
                      f"{r.counts.accepted:,} accepted of {u.rows:,} ({r.counts.rejected:,} rejected: {errs})",
                      file=sys.stderr)
                failed = True
        if st.pending_records:
            print(f"ingestion-benchmark: the outbox did not drain within {args.drain_timeout:.0f}s: "
                  f"{st.pending_records:,} pending, last_error {st.last_error!r}", file=sys.stderr)
            failed = True
        with receiver.lock:
            received, distinct = receiver.records_received, len(receiver.seen)
        if not st.pending_records and distinct != accepted:
            print(f"ingestion-benchmark: identity got {distinct:,} distinct records, ingestion accepted "
                  f"{accepted:,}", file=sys.stderr)
            failed = True

        print()
        print(table(per_file, ("file", "records", "MB", "seconds", "state", "accepted", "rejected"), left=(0, 4)))
        print()
        mib = 1 << 20
        summary = [
            ("records", f"{total_rows:,}"),
            ("bytes", f"{total_bytes / 1e6:,.1f} MB"),
            ("upload: first byte -> last Batch", f"{upload_s:.2f} s"),
            ("records/s", f"{total_rows / upload_s:,.0f}"),
            ("MB/s", f"{total_bytes / 1e6 / upload_s:,.1f}"),
            ("server peak RSS (VmHWM) after upload", f"{after_upload['VmHWM'] / mib:,.0f} MiB"),
            ("server peak RSS (VmHWM) after drain", f"{after_drain['VmHWM'] / mib:,.0f} MiB"),
            ("server RSS (anon + file) after upload / after drain",
             f"{after_upload.get('RssAnon', 0) / mib:,.0f} + {after_upload.get('RssFile', 0) / mib:,.0f} / "
             f"{after_drain.get('RssAnon', 0) / mib:,.0f} + {after_drain.get('RssFile', 0) / mib:,.0f} MiB"),
            ("server CPU during upload / in all", f"{after_upload['cpu']:.1f} s / {after_drain['cpu']:.1f} s"),
            ("outbox drain after last Batch", f"{drain_s:.2f} s" + ("" if not st.pending_records else " (TIMEOUT)")),
            ("first byte -> all at identity", f"{drained - first:.2f} s"),
            ("identity received", f"{received:,} ({distinct:,} distinct, {received - distinct:,} duplicates, "
                                  f"{receiver.calls_ok:,} calls)"),
        ]
        print(table(summary, ("metric", "value")))
        print(f"\nbinary {binary}; {os.cpu_count()} CPUs; data dir: "
              + ", ".join(f"{p.name} {p.stat().st_size / 1e6:,.1f} MB" for p in sorted(data_dir.iterdir())),
              flush=True)
        if not service.stop():
            print(f"ingestion-benchmark: cdp-ingestion did not exit cleanly on SIGTERM "
                  f"({service.exit_description()})\n{service.stderr_tail()}", file=sys.stderr)
            failed = True
        if failed:
            print(service.stderr_tail(), file=sys.stderr)
        return 1 if failed else 0
    finally:
        if service.alive():
            service.kill()
        receiver.stop()
        if args.keep_data:
            print(f"kept {work} (files/, data/, ingestion-*.out/.err)")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

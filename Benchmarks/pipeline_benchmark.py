"""The whole platform at scale: a generated B2B dataset through the five release services, then a
stream of events at fixed rates.

1. Generates the dataset (Benchmarks/b2b_generator.py; default 1M person, 200k account, 500k opportunity
   and 5M event records, plus relations, memberships and the MDM crosswalk), or reuses ``--dataset DIR``.
2. Starts the five services with ``cdp up`` (release binaries, ``--bin-dir``), creates the sources and
   the twenty segments of Benchmarks/b2b_segments.py (batch mode: they are evaluated once, at the end).
3. Ingests every file of the manifest, in its order, with ``cdp ingest --json`` (each acknowledged when
   ingestion committed it), while a sampler reads every stage's counters twice a second:
   ingestion's forwarded records, identity's forwarded updates, profile's applied updates and the state
   changes segmentation took, each service's CPU time and RSS.
4. Waits until every outbox is empty: every state change taken by segmentation. Then evaluates the
   twenty segments in one job as of the dataset's end and counts their members.
5. Streaming: a streaming segment of the Bodea shape (the won amount across the person's accounts, which
   every person satisfies, and a visit to a probe page within a day) activated to a webhook (a local
   receiver), created with ``--wait`` (its first evaluation over every person ends before the stream
   starts). One event for each of many distinct persons, at each ``--rates`` step for
   ``--stream-seconds``: a ``StreamRecords`` request every ``--stream-tick-ms`` with the events due; per
   event, the latency from its acknowledgement to the membership transition (the member's ``since`` in
   segmentation) and to the webhook's receipt of the add (which comes after the delivery was queued, so
   it bounds that from above).
6. Streaming during a batch job: the twenty segments evaluated again, and the first rate streamed while
   that job runs (for 70% of the time the first evaluation took, from a second after the job started).

Prints a report (also written to ``--report FILE``) and exits 1 if a batch failed, an outbox did not
drain, or a streamed event's person did not enter the probe segment.

Usage: .venv/bin/python Benchmarks/pipeline_benchmark.py [--scale 1.0] [--bin-dir .build-static/release]
       [--dataset DIR] [--rates 1000,2000,4000] [--stream-seconds 20] [--keep-data] [--report FILE]
"""

from __future__ import annotations

import argparse
import http.server
import importlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import grpc

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "Benchmarks"))
sys.path.insert(0, str(REPO_ROOT / "Tests" / "Ingestion"))
import b2b_generator  # noqa: E402
import b2b_segments  # noqa: E402
import ground_truth  # noqa: E402
from protos import identity_pb2, identity_pb2_grpc, ingestion_pb2, ingestion_pb2_grpc, model_pb2  # noqa: E402

profile_pb2 = importlib.import_module("cdp.profile.v1.profile_pb2")
profile_pb2_grpc = importlib.import_module("cdp.profile.v1.profile_pb2_grpc")
segmentation_pb2 = importlib.import_module("cdp.segmentation.v1.segmentation_pb2")
segmentation_pb2_grpc = importlib.import_module("cdp.segmentation.v1.segmentation_pb2_grpc")

FULL = {"persons": 1_000_000, "accounts": 200_000, "opportunities": 500_000, "events": 5_000_000}
SERVICES = ("ingestion", "identity", "profile", "segmentation", "destination")
PROBE_URL = "https://bodea.example/stream-probe"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_base() -> int:
    for base in range(27400, 60000, 5):
        socks = []
        try:
            for port in range(base, base + 5):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise SystemExit("no five free ports")


def proc_stats(pid: int) -> tuple[float, float, float]:
    """CPU seconds, RSS MB and peak RSS MB of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = hwm = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    return cpu, rss, hwm


class Platform:
    """The five services of ``cdp up`` and the CLI pointed at them."""

    def __init__(self, bin_dir: Path, data_dir: Path):
        self.cdp = bin_dir / "cdp"
        self.base = free_base()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CDP_")} | {
            "CDP_PORT_BASE": str(self.base)}
        self.up = subprocess.Popen(
            [str(self.cdp), "up", "--data-dir", str(data_dir), "--bin-dir", str(bin_dir), "--json",
             "--log-level", "warning"],
            stdout=subprocess.PIPE, text=True, env=self.env, start_new_session=True)
        line = self.up.stdout.readline()
        if not line:
            raise RuntimeError(f"cdp up exited with {self.up.wait()}; see {data_dir}/logs")
        self.pids = {s["name"]: s["pid"] for s in json.loads(line)["services"]}
        self.channels = {name: grpc.insecure_channel(f"127.0.0.1:{self.base + i}")
                         for i, name in enumerate(SERVICES)}

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.base + SERVICES.index(service)}"

    def cli(self, *argv: str, timeout: float = 7200) -> dict | list:
        out = subprocess.run([str(self.cdp), *argv, "--json"], capture_output=True, text=True, env=self.env,
                             timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"cdp {' '.join(argv)[:200]}: {out.stderr.strip()}")
        return json.loads(out.stdout)

    def counters(self) -> dict[str, int]:
        """Every stage's progress counters and backlogs."""
        ing = ingestion_pb2_grpc.IngestionStub(self.channels["ingestion"]).GetOutboxStatus(
            ingestion_pb2.GetOutboxStatusRequest(), timeout=10)
        ide = identity_pb2_grpc.IdentityStub(self.channels["identity"]).GetOutboxStatus(
            identity_pb2.GetOutboxStatusRequest(), timeout=10)
        pro = profile_pb2_grpc.ProfileStub(self.channels["profile"]).GetOutboxStatus(
            profile_pb2.GetOutboxStatusRequest(), timeout=10)
        seg = segmentation_pb2_grpc.SegmentationStub(self.channels["segmentation"]).GetOutboxStatus(
            segmentation_pb2.GetOutboxStatusRequest(), timeout=10)
        return {
            "ingestion_forwarded": ing.forwarded_records, "ingestion_pending": ing.pending_records,
            "identity_forwarded": ide.forwarded_updates, "identity_pending": ide.pending_updates,
            "profile_applied": pro.applied_identity_sequence, "profile_sent_changes": pro.sent_changes,
            "profile_pending": pro.pending_changes,
            "segmentation_sent": seg.sent_changes, "segmentation_pending": seg.pending_changes,
        }

    def stop(self) -> None:
        for ch in self.channels.values():
            ch.close()
        try:
            os.killpg(self.up.pid, signal.SIGTERM)
            self.up.wait(timeout=120)
        except ProcessLookupError:
            pass


class Sampler(threading.Thread):
    """Counters, CPU and RSS twice a second, for per-stage rates and peaks."""

    def __init__(self, platform_: Platform, interval: float = 0.5):
        super().__init__(daemon=True)
        self.platform = platform_
        self.interval = interval
        self.samples: list[tuple[float, dict, dict]] = []
        self.halt = threading.Event()
        self.peak_rss = {name: 0.0 for name in SERVICES}

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            try:
                counters = self.platform.counters()
            except grpc.RpcError:
                continue
            procs = {}
            for name, pid in self.platform.pids.items():
                cpu, rss, hwm = proc_stats(pid)
                procs[name] = cpu
                self.peak_rss[name] = max(self.peak_rss[name], hwm)
            self.samples.append((time.monotonic(), counters, procs))

    def rate(self, key: str, since: float) -> tuple[float, float, float]:
        """(count, seconds active, per second) of a counter from `since`: from the first sample it moved
        in to the last."""
        rows = [(t, c[key]) for t, c, _ in self.samples if t >= since]
        if len(rows) < 2:
            return 0.0, 0.0, 0.0
        start_value = rows[0][1]
        moved = [t for (t, v), (_, prev) in zip(rows[1:], rows[:-1]) if v != prev]
        if not moved:
            return 0.0, 0.0, 0.0
        first = max(t for t, v in rows if v == start_value)  # the last sample before it moved
        first = min(first, moved[0])
        count = rows[-1][1] - start_value
        seconds = moved[-1] - first
        return count, seconds, count / seconds if seconds > 0 else 0.0


def wait_drained(platform_: Platform, accepted: int, timeout: float) -> dict:
    """Waits until ingestion forwarded every accepted record and every later outbox is empty."""
    deadline = time.monotonic() + timeout
    last = {}
    while time.monotonic() < deadline:
        try:
            last = platform_.counters()
        except grpc.RpcError as error:
            # A service busy with a large backlog may answer a status call late: look again.
            if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            log(f"a status call took more than 10 s ({error.details()}); asking again")
            continue
        if (last["ingestion_forwarded"] >= accepted and last["ingestion_pending"] == 0
                and last["identity_pending"] == 0 and last["profile_applied"] >= last["identity_forwarded"]
                and last["profile_pending"] == 0 and last["segmentation_pending"] == 0):
            # profile's pending count is read after its last apply: one more look catches changes marked since.
            time.sleep(0.3)
            again = platform_.counters()
            if again["profile_pending"] == 0 and again["identity_pending"] == 0:
                return again
        time.sleep(0.25)
    raise RuntimeError(f"the pipeline did not drain within {timeout:.0f}s; last counters: {last}")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


class WebhookReceiver:
    """A local webhook endpoint: notes when each added identity arrived."""

    def __init__(self):
        self.arrivals: dict[int, float] = {}  # cluster -> when its add arrived
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                now = time.time()
                for member in json.loads(body).get("members", []):
                    if member.get("op") == "add":
                        receiver.arrivals.setdefault(int(member["cluster"]), now)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def stream_step(platform_: Platform, targets: list[tuple[str, str]], rate: int, seconds: float, prefix: str,
                tick: float):
    """Sends one event for each of `rate * seconds` distinct persons (true person, email), paced at `rate`:
    every `tick` seconds one StreamRecords request with the events due by then (as a client reading a
    queue would). Returns (the true persons, ack times by true person, achieved rate)."""
    total = int(rate * seconds)
    chosen = [person for person, _ in targets[:total]]
    emails = [email for _, email in targets[:total]]
    del targets[:total]
    source = model_pb2.Source(type="Web", instance="web-stream")
    requests_sent: list[list[str]] = []   # the true persons of each request, in order
    acked: dict[str, float] = {}
    last_sent = [0.0]

    def requests():
        start = time.monotonic()
        sent = 0
        while sent < total:
            due = min(total, int((time.monotonic() - start) * rate) + 1)
            if due > sent:
                records = []
                for i in range(sent, due):
                    event = model_pb2.ExperienceEvent(event_id=f"{prefix}-{i}", email=emails[i],
                                                      event_type="web.webpagedetails.pageViews", url=PROBE_URL,
                                                      name="Stream probe")
                    event.timestamp.FromDatetime(datetime.now(timezone.utc))
                    records.append(model_pb2.Record(event=event))
                requests_sent.append(chosen[sent:due])
                sent = due
                last_sent[0] = time.monotonic()
                yield ingestion_pb2.StreamRecordsRequest(source=source, records=records)
            time.sleep(tick)

    stub = ingestion_pb2_grpc.IngestionStub(platform_.channels["ingestion"])
    start = time.monotonic()
    for response in stub.StreamRecords(requests(), timeout=seconds * 10 + 120):
        persons = requests_sent[response.request_number - 1]
        if response.accepted != len(persons):
            raise RuntimeError(f"stream request {response.request_number}: accepted {response.accepted} of "
                               f"{len(persons)}, errors {list(response.errors)[:2]}")
        now = time.time()
        for person in persons:
            acked[person] = now
    elapsed = last_sent[0] - start
    return chosen, acked, (total / elapsed if elapsed > 0 else 0.0)


def probe_members(platform_: Platform, segment_id: str, persons: dict[str, str]) -> dict[str, tuple[int, float]]:
    """Realized members of the probe segment by true person (through their fragment keys and the ground
    truth): their cluster and the time they entered."""
    stub = segmentation_pb2_grpc.SegmentationStub(platform_.channels["segmentation"])
    found: dict[str, float] = {}
    token = ""
    while True:
        page = stub.GetMembers(segmentation_pb2.GetMembersRequest(segment_id=segment_id, page_token=token,
                                                                  page_size=1000), timeout=60)
        for member in page.members:
            if member.status == segmentation_pb2.MEMBERSHIP_STATUS_REALIZED and member.record.fragment_keys:
                person = persons.get(member.record.fragment_keys[0])
                if person is not None:
                    found[person] = (member.cluster_id, member.since.ToMicroseconds() / 1e6)
        token = page.next_page_token
        if not token:
            return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the full size (1.0: 1M persons, "
                    "200k accounts, 500k opportunities, 5M events)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--dataset", help="a directory generated before (its manifest.json); default: generate")
    ap.add_argument("--bin-dir", default=str(REPO_ROOT / ".build-static" / "release"))
    ap.add_argument("--rates", default="1000,2000,4000", help="events per second of the streaming steps")
    ap.add_argument("--stream-seconds", type=float, default=20.0, help="length of each streaming step")
    ap.add_argument("--stream-tick-ms", type=float, default=10.0,
                    help="a StreamRecords request every this many ms with the events due (default 10)")
    ap.add_argument("--drain-timeout", type=float, default=7200.0)
    ap.add_argument("--keep-data", action="store_true")
    ap.add_argument("--report", help="also write the report to this file")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cdp-pipeline-bench-"))
    report: list[str] = []

    def say(line: str = "") -> None:
        report.append(line)
        print(line, flush=True)

    if args.dataset:
        dataset = Path(args.dataset)
        manifest = json.loads((dataset / "manifest.json").read_text())
        generation_seconds = None
    else:
        dataset = work / "dataset"
        sizes = {k: max(1, int(v * args.scale)) for k, v in FULL.items()}
        log(f"generating {sizes} into {dataset}")
        started = time.monotonic()
        manifest = b2b_generator.generate(dataset, seed=args.seed, **sizes)
        generation_seconds = time.monotonic() - started
    platform_ = None
    status = 1
    try:
        log("starting the five services (cdp up)")
        platform_ = Platform(Path(args.bin_dir), work / "data")
        for src in manifest["sources"]:
            platform_.cli("source", "create", "--type", src["type"], "--instance", src["instance"])
        platform_.cli("source", "create", "--type", "Web", "--instance", "web-stream")
        ids: dict[str, str] = {}
        for name, entity, definition in b2b_segments.segments(manifest):
            created = platform_.cli("segment", "create", "--name", name, "--entity", entity, "--mode", "batch",
                                    "--pql", b2b_segments.resolve(definition, ids))
            ids[name] = created["id"]
        sampler = Sampler(platform_)
        sampler.start()
        t0 = time.monotonic()
        files = []
        accepted_total = 0
        for entry in manifest["files"]:
            started = time.monotonic()
            batch = platform_.cli("ingest", str(dataset / entry["path"]), "--entity", entry["entity"],
                                  "--source", entry["source"], "--format", "canonical")
            seconds = time.monotonic() - started
            accepted = int(batch["counts"].get("accepted", 0))
            if batch["state"] != "BATCH_STATE_COMPLETED" or accepted != entry["records"]:
                raise RuntimeError(f"{entry['path']}: {batch['state']}, accepted {accepted} of {entry['records']}: "
                                   f"{batch.get('failure', '')}")
            accepted_total += accepted
            files.append((entry["path"], entry["records"], seconds))
            log(f"ingested {entry['path']}: {accepted:,} records in {seconds:.1f}s")
        t_acked = time.monotonic() - t0
        log("all batches acknowledged; waiting for every state change to reach segmentation")
        final = wait_drained(platform_, accepted_total, args.drain_timeout)
        t_drained = time.monotonic() - t0
        log("every state change taken by segmentation; evaluating the twenty segments")
        started = time.monotonic()
        job = platform_.cli("segment", "evaluate", *ids.values(), "--as-of", manifest["end"], timeout=7200)
        evaluation_seconds = time.monotonic() - started
        t_segments = time.monotonic() - t0
        counts = {}
        for name, segment_id in ids.items():
            members = platform_.cli("segment", "members", segment_id)
            counts[name] = sum(1 for m in members if m["status"] == "realized")
        sampler.halt.set()
        sampler.join()

        say("# Pipeline benchmark")
        say()
        say(f"machine: {os.cpu_count()} cores, {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, "
            f"{platform.platform()}; binaries: {args.bin_dir}")
        say(f"dataset: seed {manifest['seed']}, sizes {manifest['sizes']}, {manifest['records']['total']:,} records; "
            f"truth: {manifest['truth']['persons']:,} persons, {manifest['truth']['accounts']:,} accounts"
            + (f"; generated in {generation_seconds:.1f}s" if generation_seconds is not None else ""))
        say()
        say("| file | records | upload s | records/s |")
        say("|---|---:|---:|---:|")
        for path, n, seconds in files:
            say(f"| {path} | {n:,} | {seconds:.1f} | {n / seconds:,.0f} |")
        say()
        say(f"all batches acknowledged after {t_acked:.1f}s ({accepted_total / t_acked:,.0f} records/s)")
        say(f"every state change taken by segmentation after {t_drained:.1f}s "
            f"({accepted_total / t_drained:,.0f} records/s end to end)")
        say(f"twenty segments evaluated ({job.get('state', '?')}) in {evaluation_seconds:.1f}s; "
            f"all done after {t_segments:.1f}s")
        say()
        say("| stage | counter | count | active s | per second |")
        say("|---|---|---:|---:|---:|")
        for stage, key in (("ingestion → identity", "ingestion_forwarded"),
                           ("identity → profile", "identity_forwarded"),
                           ("profile applies", "profile_applied"),
                           ("profile → segmentation (state changes)", "profile_sent_changes")):
            count, seconds, per = sampler.rate(key, t0)
            say(f"| {stage} | {key} | {count:,.0f} | {seconds:.1f} | {per:,.0f} |")
        say()
        last = sampler.samples[-1][2] if sampler.samples else {}
        say("| service | peak RSS MB | CPU s |")
        say("|---|---:|---:|")
        for name in SERVICES:
            say(f"| {name} | {sampler.peak_rss[name]:.0f} | {last.get(name, 0):.1f} |")
        say()
        say("segment members (realized): " + ", ".join(f"{n} {c:,}" for n, c in counts.items()))
        say(f"final counters: {final}")

        # Streaming.
        receiver = WebhookReceiver()
        # Multi-entity, the Bodea shape: the won amount across all the person's accounts (every person
        # qualifies on it: the sum is never negative, but it is computed on every evaluation) and a visit
        # of the probe page within a day.
        # With --wait: the segment's first evaluation over every person (a job as long as a fifth of the
        # twenty segments' one) ends before the stream starts, so the steps measure streaming alone.
        probe_started = time.monotonic()
        probe = platform_.cli("segment", "create", "--wait", "--name", "stream-probe", "--pql",
                              "(sum O.amount over O from person.accounts.opportunities where (O.isClosed = true "
                              "and O.isWon = true)) >= 0 and "
                              f'exists E from xEvent where (E.url = "{PROBE_URL}" and E.timestamp occurs <= 1 days '
                              "before now)")
        hook = platform_.cli("destination", "create", "--type", "webhook", "--name", "probe-hook",
                             "--set", f"url={receiver.url}", "--set", "batch_size=1000",
                             "--set", "calls_per_minute=60000", "--set", "secret=bench",
                             # Opted-out persons too: every streamed person must arrive.
                             "--set", "include_opted_out=true")
        probe_seconds = time.monotonic() - probe_started
        platform_.cli("activate", probe["id"], "--destination", hook["id"])
        truth = ground_truth.load_truth(dataset, events=False)
        seen: set[str] = set()
        targets: list[tuple[str, str]] = []  # (true person, one of its emails), each person once
        for key, person in truth.persons.items():
            email = truth.person_emails.get(key)
            if email and person not in seen:
                seen.add(person)
                targets.append((person, email))
        say()
        say(f"the probe segment created and evaluated over every person in {probe_seconds:.1f}s; then:")
        say()
        say("| step | achieved/s | events | ack→member p50 ms | p99 ms | max ms | ack→webhook p50 ms | p99 ms "
            "| most pending: ingestion / identity / profile / segmentation |")
        say("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        failures = []
        cpu_notes: list[str] = []

        def measure_step(rate: int, seconds: float, prefix: str, label: str) -> bool:
            """One step at `rate` for `seconds`: a row of the table; False if too few persons were left."""
            if len(targets) < rate * seconds:
                say(f"(stopped before {label}: not enough distinct persons left)")
                return False
            backlog = Sampler(platform_, interval=0.2)
            backlog.start()
            chosen, acked, achieved = stream_step(platform_, targets, rate, seconds, prefix,
                                                  args.stream_tick_ms / 1000)
            deadline = time.monotonic() + 300
            members: dict[str, tuple[int, float]] = {}
            while time.monotonic() < deadline:
                members = probe_members(platform_, probe["id"], truth.persons)
                if all(p in members and members[p][0] in receiver.arrivals for p in chosen):
                    break
                time.sleep(0.5)
            backlog.halt.set()
            backlog.join()
            most = {k: max((c[k] for _, c, _ in backlog.samples), default=0) for k in
                    ("ingestion_pending", "identity_pending", "profile_pending", "segmentation_pending")}
            if len(backlog.samples) >= 2:
                (t_a, _, cpu_a), (t_b, _, cpu_b) = backlog.samples[0], backlog.samples[-1]
                cpu_notes.append(f"{label}: " + ", ".join(
                    f"{name} {100 * (cpu_b[name] - cpu_a[name]) / (t_b - t_a):.0f}%" for name in SERVICES))
            missing = [e for e in chosen if e not in members]
            if missing:
                failures.append(f"{len(missing)} of {len(chosen)} persons streamed at {label} never entered the "
                                f"probe segment, e.g. {missing[:3]}")
            to_member = [1000 * (members[p][1] - acked[p]) for p in chosen if p in members]
            to_hook = [1000 * (receiver.arrivals[members[p][0]] - acked[p]) for p in chosen
                       if p in members and members[p][0] in receiver.arrivals]
            say(f"| {label} | {achieved:,.0f} | {len(chosen):,} | {percentile(to_member, 50):.1f} | "
                f"{percentile(to_member, 99):.1f} | {max(to_member, default=float('nan')):.1f} | "
                f"{percentile(to_hook, 50):.1f} | {percentile(to_hook, 99):.1f} | "
                + " / ".join(f"{most[k]:,}" for k in most) + " |")
            return True

        rates = [int(r) for r in args.rates.split(",")]
        for step, rate in enumerate(rates):
            if not measure_step(rate, args.stream_seconds, f"s{step}", f"{rate:,}/s"):
                break
        # Streaming while a batch job runs: the twenty segments evaluated again (as a nightly run would),
        # and the first rate streamed for most of the time the first evaluation took, so that the whole
        # step falls within the job (which started a second before).
        rerun = subprocess.Popen([str(platform_.cdp), "segment", "evaluate", *ids.values(), "--as-of",
                                  manifest["end"], "--json"], env=platform_.env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
        time.sleep(1)
        measure_step(rates[0], max(1.0, 0.7 * evaluation_seconds - 1), "job", f"{rates[0]:,}/s during a job")
        _, rerun_errors = rerun.communicate(timeout=7200)
        if rerun.returncode != 0:
            failures.append(f"the twenty segments' second evaluation failed: {rerun_errors.strip()[:300]}")
        receiver.close()
        say()
        say("CPU of each service while streaming (% of one core, from the first event to the last member): "
            + "; ".join(cpu_notes))
        for failure in failures:
            say(f"FAILED: {failure}")
        status = 1 if failures else 0
    except Exception as error:  # noqa: BLE001 - reported, the services stopped, exit 1
        print(f"pipeline-benchmark: {error}", file=sys.stderr)
        for service_log in sorted((work / "data" / "logs").glob("*.log")):
            print(f"--- {service_log}:\n{service_log.read_text()[-1500:]}", file=sys.stderr)
    finally:
        if platform_ is not None:
            platform_.stop()
        if args.report and report:
            Path(args.report).write_text("\n".join(report) + "\n")
        if args.keep_data:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())

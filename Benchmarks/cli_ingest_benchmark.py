"""The `cdp` CLI end to end: generated canonical files (the ingestion benchmark's generator) uploaded
with `cdp ingest --wait` to the five release services started by `cdp up`.

For each file: the time from starting `cdp ingest` to its answer with --wait, i.e. until the batch's
records were committed by ingestion, linked by identity, applied by profile and their views taken by
segmentation; records per second over that time. Then the whole run and each service's peak RSS.

Usage: .venv/bin/python Benchmarks/cli_ingest_benchmark.py [--records N] [--seed S] [--bin-dir DIR] [--keep-data]
Exit status 1 if a batch failed or a command did not succeed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "Benchmarks"))
sys.path.insert(0, str(REPO_ROOT / "Tests" / "Ingestion"))
import ingestion_benchmark  # noqa: E402  (its generator; the canonical files of the ingestion benchmark)
from pipeline_benchmark import free_base, proc_stats  # noqa: E402

FORMAT = {ingestion_benchmark.ingestion_pb2.FORMAT_CANONICAL_CSV: "canonical",
          ingestion_benchmark.ingestion_pb2.FORMAT_CANONICAL_NDJSON: "canonical"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=200_000, help="records in all (default 200,000)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--bin-dir", default=str(REPO_ROOT / ".build" / "release"))
    ap.add_argument("--keep-data", action="store_true")
    args = ap.parse_args()
    cdp = Path(args.bin_dir) / "cdp"
    work = Path(tempfile.mkdtemp(prefix="cdp-cli-bench-"))
    files = work / "files"
    files.mkdir()
    print(f"generating {args.records:,} records in {files}", flush=True)
    plan = ingestion_benchmark.generate(files, args.records, args.seed)
    base = free_base()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDP_")} | {"CDP_PORT_BASE": str(base)}
    up = subprocess.Popen([str(cdp), "up", "--data-dir", str(work / "data"), "--bin-dir", args.bin_dir, "--json",
                           "--log-level", "warning"], stdout=subprocess.PIPE, text=True, env=env,
                          start_new_session=True)
    status = 1
    try:
        announced = json.loads(up.stdout.readline())
        pids = {s["name"]: s["pid"] for s in announced["services"]}

        def run(*argv: str) -> dict:
            out = subprocess.run([str(cdp), *argv, "--json"], capture_output=True, text=True, env=env)
            if out.returncode != 0:
                raise RuntimeError(f"cdp {' '.join(argv)}: {out.stderr.strip()}")
            return json.loads(out.stdout)

        source = f"{ingestion_benchmark.SOURCE.type}:{ingestion_benchmark.SOURCE.instance}"
        run("source", "create", "--type", ingestion_benchmark.SOURCE.type,
            "--instance", ingestion_benchmark.SOURCE.instance)
        rows, total_start = [], time.monotonic()
        for entity, fmt, path, n in plan:
            start = time.monotonic()
            batch = run("ingest", str(path), "--entity", entity, "--source", source, "--format", FORMAT[fmt],
                        "--wait", "--wait-timeout", "3600")
            seconds = time.monotonic() - start
            accepted = int(batch["counts"].get("accepted", 0))
            if batch["state"] != "BATCH_STATE_COMPLETED":
                raise RuntimeError(f"{path.name}: {batch['state']} {batch.get('failure', '')}")
            rows.append((path.name, n, accepted, path.stat().st_size / 1e6, seconds))
        total = time.monotonic() - total_start
        print(f"\n{'file':<18} {'records':>9} {'accepted':>9} {'MB':>7} {'seconds':>8} {'records/s':>10}")
        for name, n, accepted, mb, seconds in rows:
            print(f"{name:<18} {n:>9,} {accepted:>9,} {mb:>7.1f} {seconds:>8.2f} {accepted / seconds:>10,.0f}")
        accepted = sum(r[2] for r in rows)
        print(f"{'all':<18} {sum(r[1] for r in rows):>9,} {accepted:>9,} {sum(r[3] for r in rows):>7.1f} "
              f"{total:>8.2f} {accepted / total:>10,.0f}")
        stats = {name: proc_stats(pid) for name, pid in pids.items()}
        print("\npeak RSS: " + ", ".join(f"{name} {hwm:.0f} MB" for name, (_, _, hwm) in stats.items()))
        print("CPU seconds: " + ", ".join(f"{name} {cpu:.1f}" for name, (cpu, _, _) in stats.items()))
        status = 0
    except Exception as error:  # noqa: BLE001 — report and stop the services
        print(f"cli-ingest-benchmark: {error}", file=sys.stderr)
        for log in sorted((work / "data" / "logs").glob("*.log")):
            print(f"--- {log}:\n{log.read_text()[-2000:]}", file=sys.stderr)
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        up.wait(timeout=60)
        if not args.keep_data:
            shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())

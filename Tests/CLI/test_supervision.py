"""`cdp up` supervises its services (issue 18, item 5), through the CLI against the real binaries.

1. SIGKILL each of the five services in turn while uploads run: `cdp up` says so, starts it again, the
   uploads complete (each retried by the uploader until it is answered, as a user would), and nothing
   acknowledged is lost: every person uploaded is in profile and counted by a segment.
2. A second `cdp up` on the same data directory is refused, naming the first; one whose ports another
   process answers is refused, naming the port, instead of reporting five services running.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

from cli_support import (
    SERVICES, CdpUp, assert_cli_error, cdp_json, cdp_ok, describe, free_port_base, num, require_cdp, run_cdp,
)

FILES = 12
PERSONS_PER_FILE = 400


def service_pid(name: str, port: int) -> int | None:
    """The pid of the running cdp-`name` that listens on `port` (from /proc: its command line names both)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        args = [a.decode(errors="replace") for a in cmdline]
        if args and args[0].endswith(f"cdp-{name}") and "--port" in args and state not in ("Z", "X"):
            if args[args.index("--port") + 1] == str(port):
                return int(entry.name)
    return None


def wait_for_new_pid(name: str, port: int, old: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = service_pid(name, port)
        if pid is not None and pid != old:
            return pid
        time.sleep(0.1)
    raise AssertionError(f"cdp-{name} on port {port} was not started again within {timeout} s")


def test_killed_services_come_back_and_nothing_acknowledged_is_lost(tmp_path):
    require_cdp()
    up = CdpUp(tmp_path / "data", free_port_base())
    up.start()
    base = up.port_base
    try:
        cdp_ok(["source", "create", "--type", "Test", "--instance", "supervised"], base)
        files = []
        for f in range(FILES):
            path = tmp_path / f"persons-{f}.csv"
            rows = [f"sup-{f}-{n},p{f}-{n}@supervised.example,Sup,Person {f}-{n}" for n in range(PERSONS_PER_FILE)]
            path.write_text("personId,email,firstName,lastName\n" + "\n".join(rows) + "\n")
            files.append(path)

        # The uploader: each file until it is answered COMPLETED (a failed call is retried, as a user would).
        results: dict[Path, dict] = {}
        attempts: list[str] = []

        def upload_all() -> None:
            for path in files:
                deadline = time.monotonic() + 180
                while time.monotonic() < deadline:
                    res = run_cdp(["ingest", path, "--entity", "person", "--source", "Test:supervised", "--wait", "--json"],
                                  base, timeout=120)
                    attempts.append(f"{path.name}: {res.returncode}")
                    if res.returncode == 0:
                        results[path] = json.loads(res.stdout)
                        break
                    time.sleep(0.5)

        uploader = threading.Thread(target=upload_all)
        uploader.start()
        # Kill every service once while the uploads run; each must come back with a new pid.
        for i, name in enumerate(SERVICES):
            time.sleep(0.7)
            pid = service_pid(name, base + i)
            assert pid is not None, f"cdp-{name} is not running\n{up.logs()}"
            os.kill(pid, signal.SIGKILL)
            wait_for_new_pid(name, base + i, pid)
        uploader.join(timeout=300)
        assert not uploader.is_alive(), f"the uploads did not finish; attempts: {attempts}"
        assert sorted(results) == sorted(files), f"not every file was acknowledged; attempts: {attempts}"
        for path, batch in results.items():
            counts = batch.get("counts", {})
            assert batch.get("state") == "BATCH_STATE_COMPLETED", batch
            assert num(counts, "accepted") + num(counts, "duplicates") == PERSONS_PER_FILE, batch

        # cdp up said what happened to each service, and that it restarted it.
        stderr = up.err_path.read_text()
        for name in SERVICES:
            assert f"cdp-{name} was killed by signal 9 (SIGKILL)" in stderr, stderr
            assert f"cdp-{name} restarted" in stderr, stderr
            log = (up.data_dir / "logs" / f"{name}.log").read_text(errors="replace")
            assert "started again by cdp up" in log, f"{name}.log does not mark the restart"

        # Nothing acknowledged was lost: every person reaches profile and the segments.
        segment = cdp_json(["segment", "create", "--name", "supervised", "--pql",
                            'person.email.endsWith("@supervised.example")', "--wait"], base, timeout=300)
        deadline = time.monotonic() + 120
        while True:
            estimate = cdp_json(["segment", "estimate", "--pql", 'person.email.endsWith("@supervised.example")'],
                                base)
            if num(estimate, "matched") == FILES * PERSONS_PER_FILE or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert num(estimate, "matched") == FILES * PERSONS_PER_FILE, f"{estimate}\n{up.logs()}"
        assert num(cdp_json(["segment", "get", segment["id"]], base), "realized") == FILES * PERSONS_PER_FILE
        status = run_cdp(["status"], base)
        assert status.returncode == 0, describe(["status"], status)
    finally:
        rc, _ = up.terminate() if up.proc and up.proc.poll() is None else (up.proc.returncode, 0)
        up.kill()
    assert rc == 0, f"cdp up exited with {rc} after SIGTERM\n{up.logs()}"


def test_one_cdp_up_per_data_directory_and_port(tmp_path):
    require_cdp()
    first = CdpUp(tmp_path / "data", free_port_base())
    first.start()
    try:
        # The same data directory, other ports: refused, naming the holder.
        args = ["up", "--data-dir", first.data_dir, "--port-base", free_port_base()]
        res = run_cdp(args, None, timeout=60)
        assert_cli_error(args, res, str(first.data_dir), "in use", f"pid {first.proc.pid}")
        # Another data directory, the same ports: refused, naming the port (not "five services running").
        args = ["up", "--data-dir", tmp_path / "other", "--port-base", first.port_base]
        res = run_cdp(args, None, timeout=90)
        assert_cli_error(args, res, any_of=(f"127.0.0.1:{first.port_base}", "another process", "in use"))
        assert "five services running" not in res.stdout, describe(args, res)
        # The first one still runs all five.
        assert all(service_pid(name, first.port_base + i) for i, name in enumerate(SERVICES)), first.logs()
    finally:
        first.terminate()
        first.kill()


def test_services_stop_by_themselves_when_cdp_up_is_killed(tmp_path):
    """A SIGKILL of `cdp up` alone (not its process group) cannot stop its services: each notices its parent
    is gone and shuts down gracefully, saying why."""
    require_cdp()
    up = CdpUp(tmp_path / "data", free_port_base())
    up.start()
    try:
        assert len(up.left_running(grace=0)) == len(SERVICES), (up.info, up.logs())
        up.proc.send_signal(signal.SIGKILL)
        up.proc.wait()
        left = up.left_running(grace=15)
        assert not left, f"still running 15 s after `cdp up` was killed: {left}\n{up.logs()}"
        log = (tmp_path / "data" / "logs" / "profile.log").read_text()
        assert "is gone: stopping" in log, log[-2000:]
    finally:
        up.kill()

"""Helpers for the `cdp` CLI acceptance test (Tests/CLI/test_cli.py).

The test drives the platform through the `cdp` executable only (no gRPC from Python):

* ``BIN_DIR`` / ``CDP``: the binaries, ``.build/debug`` unless ``CDP_BIN_DIR`` names another directory
  (e.g. ``.build-static/release``); ``cdp up`` finds the five services there (``--bin-dir``);
* ``free_port_base``: the first of five consecutive ports that are free right now (the services listen on
  N..N+4 in the order ingestion, identity, profile, segmentation, destination);
* ``run_cdp`` / ``cdp_json``: one `cdp …` command with ``CDP_PORT_BASE`` set and every other ``CDP_…``
  variable of the caller's environment removed (so that a stray address or token cannot redirect it);
  ``cdp_json`` requires exit status 0 and exactly one line of JSON on stdout;
* ``assert_cli_error``: a failed command as the spec wants it (exit status 1..127 and not a signal, stderr
  starting ``cdp: error:``, naming what was wrong, no Swift crash report or stack trace);
* ``CdpUp``: ``cdp up --data-dir DIR --port-base N --json`` as a subprocess in its own session, its one JSON
  line (within 60 s; otherwise the logs under DIR/logs are in the failure message), SIGTERM and the check that
  it exits 0 and leaves none of its five services running;
* ``manifest``, ``read_csv_rows``, ``wait_for_files``, ``hashed``, and the Bodea expectations of
  Examples/bodea/README.md (``MARKETO_ROWS``, ``LINKEDIN_ROWS``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BODEA = REPO_ROOT / "Examples" / "bodea"
BIN_DIR = Path(os.environ.get("CDP_BIN_DIR") or REPO_ROOT / ".build" / "debug").resolve()
CDP = BIN_DIR / "cdp"
DESTINATION_BIN = BIN_DIR / "cdp-destination"
SERVICES = ("ingestion", "identity", "profile", "segmentation", "destination")

# The story's "now" and the Bodea segment (Examples/bodea/README.md, ARCHITECTURE.md §5).
AS_OF = "2026-05-01T00:00:00Z"
BODEA_PQL = """\
(sum O.amount over O from person.accounts.opportunities where (O.isClosed = true and O.isWon = true)) > 1000000
and exists E from xEvent where (E.eventType = "web.webpagedetails.pageViews"
    and E.url = "https://bodea.example/new-product" and E.timestamp occurs <= 1 months before now)"""
P2 = "p2@townsend.com"
OPPORTUNITY_1 = "0065g00000TwO01AAA@mkto-1.Marketo"
OPPORTUNITY_2 = "0067Q00000TwO02AAA@mkto-2.Marketo"
P2_VISIT = "9100001@mkto-1.Marketo"


def hashed(email: str) -> str:
    """SHA-256 of the trimmed, lower-cased email, lower-case hex (LinkedIn's hashed email)."""
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()


# The file connector writes `op`, `identity`, then the mapped attributes in name order.
MARKETO_ROWS = [["op", "identity", "firstName", "lastName", "title"],
                ["add", P2, "Paul", "Okafor", "Director, Procurement"]]
LINKEDIN_ROWS = [["op", "identity"], ["add", hashed(P2)]]

CALL_TIMEOUT = 120  # one `cdp …` command (ingest --wait and evaluate wait for the pipeline)
UP_TIMEOUT = 60     # `cdp up` until its JSON line
STOP_TIMEOUT = 20   # `cdp up` after SIGTERM


@dataclass
class Line:
    """One line of Examples/bodea/ingest.tsv."""
    file: Path
    entity: str
    source: str
    format: str


def manifest() -> list[Line]:
    with open(BODEA / "ingest.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert rows, f"{BODEA / 'ingest.tsv'} lists no files"
    return [Line(BODEA / r["file"], r["entity"], r["source"], r["format"]) for r in rows]


def require_cdp() -> None:
    assert CDP.is_file() and os.access(CDP, os.X_OK), (
        f"no cdp executable at {CDP} (build it with `swift build`, or point CDP_BIN_DIR at the directory "
        f"that holds cdp and the five cdp-* services)")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_base(count: int = 5) -> int:
    """The first of `count` consecutive ports free on 127.0.0.1 right now, below Linux's ephemeral range
    (32768-60999) so that ports handed out with --port 0 or to outgoing connections do not take them."""
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(20000, 32000 - count)
        if all(_port_free(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports found between 20000 and 32000")


def cdp_env(port_base: int | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDP_")}
    env["CDP_BIN_DIR"] = str(BIN_DIR)
    if port_base is not None:
        env["CDP_PORT_BASE"] = str(port_base)
    env.update(extra)
    return env


def run_cdp(args: list[str], port_base: int | None, timeout: float = CALL_TIMEOUT,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`cdp ARGS` with CDP_PORT_BASE=port_base; stdout and stderr captured as text."""
    try:
        return subprocess.run([str(CDP), *map(str, args)], env=cdp_env(port_base), cwd=cwd or REPO_ROOT,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"`cdp {' '.join(map(str, args))}` did not finish within {timeout} s\n"
                             f"stdout: {_text(e.stdout)[-2000:]}\nstderr: {_text(e.stderr)[-2000:]}") from None


def _text(b) -> str:
    if b is None:
        return ""
    return b.decode(errors="replace") if isinstance(b, bytes) else b


def describe(args: list[str], res: subprocess.CompletedProcess) -> str:
    return (f"`cdp {' '.join(map(str, args))}`: exit status {res.returncode}\n"
            f"--- stdout ---\n{res.stdout[-4000:]}\n--- stderr ---\n{res.stderr[-4000:]}")


def cdp_ok(args: list[str], port_base: int | None, **kw) -> subprocess.CompletedProcess:
    res = run_cdp(args, port_base, **kw)
    assert res.returncode == 0, describe(args, res)
    assert_no_crash(args, res)
    return res


def cdp_json(args: list[str], port_base: int | None, **kw):
    """`cdp ARGS --json`: exit status 0 and exactly one line of JSON on stdout, parsed."""
    args = [*args, "--json"]
    res = cdp_ok(args, port_base, **kw)
    lines = res.stdout.splitlines()
    assert len(lines) == 1, f"--json printed {len(lines)} lines on stdout, expected one:\n{describe(args, res)}"
    try:
        return json.loads(lines[0])
    except json.JSONDecodeError as e:
        raise AssertionError(f"--json printed no valid JSON ({e}):\n{describe(args, res)}") from None


def num(obj: dict, key: str) -> int:
    """A protobuf-JSON number: 64-bit integers are strings, and a zero is left out."""
    value = obj.get(key, 0)
    return int(value) if value not in (None, "") else 0


def id_of(doc) -> str:
    """The id a create command printed with --json: the message's `id` (or the bare id string)."""
    if isinstance(doc, str):
        return doc
    assert isinstance(doc, dict) and doc.get("id"), f"expected a JSON object with an id, got {doc!r}"
    return doc["id"]


# What a crash or an uncaught Swift error looks like: the runtime's messages and backtraces.
CRASH_MARKERS = ("Fatal error", "fatal error:", "Stack dump", "Current stack trace", "Backtrace",
                 "Program crashed", "💣", "Thread 0 crashed", "Segmentation fault", "Illegal instruction",
                 "Trace/breakpoint trap", "Swift runtime failure", "*** Signal ")


def assert_no_crash(args: list[str], res: subprocess.CompletedProcess) -> None:
    both = res.stdout + res.stderr
    found = [m for m in CRASH_MARKERS if m in both]
    assert not found, f"crash report ({', '.join(found)}) in the output of {describe(args, res)}"
    assert 0 <= res.returncode < 128, f"killed by a signal or a crash: {describe(args, res)}"


def assert_cli_error(args: list[str], res: subprocess.CompletedProcess, *names: str,
                     any_of: tuple[str, ...] = (), exit_status: int | None = None,
                     names_in_output: bool = False) -> None:
    """A clean failure: exit status != 0 (and `exit_status` when given), no crash, stderr's first line starts
    `cdp: error:`, and stderr names each of `names` and at least one of `any_of` (with `names_in_output`
    stdout + stderr)."""
    what = describe(args, res)
    assert res.returncode != 0, f"expected a failure: {what}"
    if exit_status is not None:
        assert res.returncode == exit_status, f"expected exit status {exit_status}: {what}"
    assert_no_crash(args, res)
    first = next((line for line in res.stderr.splitlines() if line.strip()), "")
    assert first.startswith("cdp: error:"), f"stderr does not start with 'cdp: error:': {what}"
    where = res.stdout + res.stderr if names_in_output else res.stderr
    for name in names:
        assert name in where, f"the message does not name {name!r}: {what}"
    if any_of:
        assert any(n in where for n in any_of), f"the message names none of {list(any_of)}: {what}"


def read_csv_rows(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text(), newline="")))


def exported(directory: Path, suffix: str = ".csv") -> list[Path]:
    """The export files of a file destination's directory (not the temporary files being written)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.rglob("*" + suffix) if not p.name.startswith("."))


def wait_for_files(directories: list[Path], timeout: float = 60) -> dict[Path, list[Path]]:
    deadline = time.monotonic() + timeout
    while True:
        found = {d: exported(d) for d in directories}
        if all(found.values()) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------------
# cdp up
# ---------------------------------------------------------------------------------------------------

def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def service_running(pid: int, name: str) -> bool:
    """The process `pid` exists, is not a zombie and runs cdp-`name`."""
    return f"cdp-{name}" in _cmdline(pid) and _state(pid) not in ("", "Z", "X")


@dataclass
class CdpUp:
    """`cdp up --data-dir DATA --port-base BASE --bin-dir BIN_DIR --json`, in its own session."""
    data_dir: Path
    port_base: int
    proc: subprocess.Popen | None = None
    info: dict = field(default_factory=dict)

    @property
    def out_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.up.out"

    @property
    def err_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.up.err"

    def pids(self) -> dict[str, int]:
        return {s["name"]: int(s["pid"]) for s in self.info.get("services", []) if s.get("pid")}

    def logs(self, chars: int = 3000) -> str:
        parts = []
        for path in [self.out_path, self.err_path, *sorted((self.data_dir / "logs").glob("*.log"))]:
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            parts.append(f"--- {path} ---\n{text[-chars:]}")
        return "\n".join(parts) or "(no output and no logs)"

    def start(self) -> dict:
        """Starts it and returns its JSON line; fails with its output and the services' logs otherwise."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        args = [str(CDP), "up", "--data-dir", str(self.data_dir), "--port-base", str(self.port_base),
                "--bin-dir", str(BIN_DIR), "--json"]
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(args, env=cdp_env(None), cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err, start_new_session=True)
        deadline = time.monotonic() + UP_TIMEOUT
        while True:
            first, nl, _ = self.out_path.read_bytes().partition(b"\n")
            if nl:
                break
            if self.proc.poll() is not None:
                raise AssertionError(f"`{' '.join(args)}` exited with status {self.proc.returncode} before printing "
                                     f"its JSON line\n{self.logs()}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"`{' '.join(args)}` printed no line within {UP_TIMEOUT} s\n{self.logs()}")
            time.sleep(0.05)
        try:
            self.info = json.loads(first)
        except json.JSONDecodeError as e:
            self.kill()
            raise AssertionError(f"`cdp up --json` printed {first!r}, not JSON ({e})\n{self.logs()}") from None
        return self.info

    def terminate(self) -> tuple[int | None, float]:
        """SIGTERM to `cdp up` alone; its exit status (None if it did not exit within STOP_TIMEOUT) and the
        seconds it took."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            return None, time.monotonic() - t0
        return rc, time.monotonic() - t0

    def left_running(self, grace: float = 3.0) -> dict[str, int]:
        """The services of the JSON line still running `grace` seconds after `cdp up` exited."""
        deadline = time.monotonic() + grace
        while True:
            left = {name: pid for name, pid in self.pids().items() if service_running(pid, name)}
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.1)

    def kill(self) -> None:
        """Last resort (teardown): SIGKILL to `cdp up`'s process group and to any of its services still running."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        for name, pid in self.pids().items():
            if service_running(pid, name):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

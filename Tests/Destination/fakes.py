"""Local HTTP fakes of the three HTTP destinations of cdp-destination, for Tests/Destination/test_connectors.py.

* ``FakeMarketo``: Marketo Engage's identity endpoint and the REST calls a static-list connector makes
  (leads upsert and lookup by email, static list add and remove), with tokens that expire or are
  invalidated, the instance's limits (calls in any 20 s window, requests in flight) and Marketo's error
  model (HTTP 200 with ``success:false`` and string codes; per-record ``skipped`` with ``reasons``).
* ``FakeLinkedIn``: the versioned DMP segment API (create a segment; BATCH_CREATE of users / companies).
* ``FakeWebhook``: a Standard Webhooks 1.0 receiver (signature, timestamp tolerance, idempotency by id).

The documented behaviour they follow is in .git/destination-apis.md (sections 1 to 3) and what the
connectors must send in .git/briefs/connectors-contract.md. Each fake is a ThreadingHTTPServer (HTTP/1.1,
keep-alive) on 127.0.0.1 with a free port, started and stopped by the test; all state is behind one lock.

Every request is checked. Anything that breaks the documented API or the contract (path, method, a missing
or wrong header, the body's shape, more elements than allowed, an access token in a query string, a hash
that is not 64 lower-case hex digits, a webhook signature that does not verify, ...) is appended to
``violations`` (with the request) and answered with an error the connector must treat as permanent (HTTP 400,
or 404 for an unknown path), so a test that asserts ``fake.violations == []`` fails loudly. A wrong
credential is not a violation (the tests configure one on purpose): it goes to ``auth_failures`` and is
answered as the real API does (Marketo identity: HTTP 401; LinkedIn: HTTP 401).

Faults (seeded RNG; ``fail_rate`` of the eligible requests, a kind drawn by weight from the fake's
``faults``; ``forced`` names kinds to inject first, in order, one per eligible request):

* ``http429`` / ``http500`` / ``http503`` / ``http408``: that status, nothing applied (429 sometimes with
  ``Retry-After: 1``);
* ``delay=(lo, hi)``: every request waits a random time before the fake takes it (a client that gives up
  or dies meanwhile has it not processed at all);
* ``timeout_before``: the request is held (nothing applied) until the client gives up (it closes the
  connection) or ``client_timeout + 1`` s passed, then the connection is closed without an answer;
* ``timeout_after``: the change is applied, then held the same way: the answer is lost, the client retries
  something already applied;
* Marketo only: ``err606`` / ``err615`` / ``err604`` / ``err607`` / ``err608`` / ``err611`` / ``err614`` /
  ``err713`` / ``err502`` (HTTP 200, success:false with that code, nothing applied),
  ``token_invalid`` (every token is forgotten: this call and later ones with it get 601),
  ``token_expire`` (the token in use expires now: 602);
* LinkedIn only: ``not_ready404`` on users / companies (a segment not ready yet).

Retry-After: a call that arrives before the ``Retry-After: 1`` of an answer has passed is noted in
``early_retries`` (the contract honours Retry-After).

Duplicate adds: an add of a member that is already a member, where the earlier add of it was acknowledged
to the client (its answer fully written) and no removal came in between, is a broken promise ("no
duplicates": the service records what it delivered) and is appended to ``duplicate_adds``. Retries after a
lost answer are fine. ``new_epoch()`` tells the fake that the client process was SIGKILLed: the one batch in
flight then may be delivered again (the contract's "a SIGKILL repeats at most that batch's calls"), so a
re-add whose earlier acknowledged add was the last acknowledged add call of an earlier epoch goes to
``restart_readds`` instead (the webhook fake needs no such exemption: a redelivered batch carries the same
webhook-id and is deduplicated).

``go_down()`` closes the listening socket and every open connection (connections are refused);
``go_up()`` listens again on the same port.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import re
import select
import socket
import threading
import time
import traceback
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

HEX64 = re.compile(r"^[0-9a-f]{64}$")
DIGITS = re.compile(r"^[0-9]+$")


# ---------------------------------------------------------------------------------------------------
# The common part: server, request records, faults, holds, the down switch
# ---------------------------------------------------------------------------------------------------

@dataclass
class Request:
    no: int
    epoch: int
    t: float
    method: str
    target: str                      # path and query as sent
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]          # lower-cased names (the last value of a repeated header)
    body: bytes
    counted: bool = False            # counted in the limits (Marketo: every REST call, not identity)
    window: int = 0                  # counted calls in the 20 s window up to this one (itself included)
    inflight: int = 0                # counted requests in flight when it arrived (itself included)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def q(self, name: str) -> list[str]:
        return [v for k, v in self.query if k == name]

    def describe(self, body_chars: int = 300) -> str:
        body = self.body[:body_chars].decode("utf-8", "replace")
        more = f"... ({len(self.body)} bytes)" if len(self.body) > body_chars else ""
        hdrs = {k: v for k, v in self.headers.items() if k not in ("host", "user-agent", "content-length",
                                                                     "connection", "accept")}
        return f"#{self.no} {self.method} {self.target} headers {hdrs} body {body!r}{more}"


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str | None = "application/json"
    hold: bool = False               # hold, then close without answering (timeout faults)
    on_ack: object = None            # called (under the lock) once the answer was fully written
    fault: str | None = None
    note: str = ""


def json_reply(status: int, obj, headers=(), on_ack=None, fault=None, note="") -> Reply:
    return Reply(status, json.dumps(obj).encode(), list(headers), on_ack=on_ack, fault=fault, note=note)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        # a client that resets its connection (a timeout, a SIGKILL) is expected; anything else is loud
        import sys
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError, TimeoutError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def setup(self):
        super().setup()
        self.server.fake._connection_opened(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.fake._connection_closed(self.connection)

    def _any(self):
        self.server.fake._serve(self)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = do_HEAD = do_OPTIONS = _any


def _client_gone(sock: socket.socket) -> bool:
    """True when the peer closed the connection (or it broke)."""
    try:
        r, _, _ = select.select([sock], [], [], 0)
        if not r:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


class FakeHTTP:
    """The common machinery of the three fakes; subclasses implement ``handle(req) -> Reply``."""

    name = "fake"
    FAULTS: dict[str, float] = {}

    def __init__(self, fail_rate: float = 0.0, seed: int = 0, faults: dict[str, float] | None = None,
                 forced=(), client_timeout: float = 2.0, delay: tuple[float, float] = (0.0, 0.0),
                 retry_after_share: float = 0.5):
        self.lock = threading.RLock()
        self.rng = random.Random(seed)
        self.fail_rate = fail_rate
        self.faults = dict(faults if faults is not None else self.FAULTS)
        self.forced = list(forced)
        self.client_timeout = client_timeout
        self.delay = delay
        self.retry_after_share = retry_after_share
        self.port = 0
        self.server: _Server | None = None
        self.thread: threading.Thread | None = None
        self.is_down = True
        self.stopped = False
        self._connections: set[socket.socket] = set()
        # records
        self.violations: list[str] = []
        self.auth_failures: list[str] = []
        self.duplicate_adds: list[str] = []
        self.restart_readds: list[str] = []
        self.requests: list[dict] = []          # a short record of every request, in arrival order
        self.fault_counts: Counter = Counter()
        self.statuses: Counter = Counter()
        self.count = 0
        self.epoch = 0
        self.holding = 0                        # requests being held or delayed right now
        self.inflight = 0                       # counted requests in flight
        self.max_inflight = 0
        self.lost_answers = 0                   # answers not written (held, or the client was gone)
        self.retry_after_until = 0.0            # a Retry-After answered: no call expected before this time
        self.retry_after_from = 0               # ... asked by this request
        self.early_retries: list[str] = []      # calls that came before the Retry-After had passed

    # --- lifecycle ---

    def start(self) -> "FakeHTTP":
        self.go_up()
        return self

    def go_up(self) -> None:
        with self.lock:
            if not self.is_down:
                return
            server = _Server(("127.0.0.1", self.port), _Handler)
            server.fake = self
            self.port = server.server_address[1]
            self.server = server
            self.is_down = False
        self.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                       name=f"{self.name}-{self.port}", daemon=True)
        self.thread.start()

    def go_down(self) -> None:
        """Closes the listening socket (new connections are refused) and every open connection."""
        with self.lock:
            if self.is_down:
                return
            self.is_down = True
            server, self.server = self.server, None
            conns = list(self._connections)
        server.shutdown()
        server.server_close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self.thread is not None:
            self.thread.join(timeout=5)

    def stop(self) -> None:
        self.stopped = True
        self.go_down()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def new_epoch(self) -> None:
        """The client was SIGKILLed: what it was told before may not have been recorded."""
        with self.lock:
            self.epoch += 1

    def set_fail_rate(self, rate: float) -> None:
        with self.lock:
            self.fail_rate = rate

    def _connection_opened(self, sock):
        with self.lock:
            self._connections.add(sock)

    def _connection_closed(self, sock):
        with self.lock:
            self._connections.discard(sock)

    # --- records ---

    def violation(self, req: Request, text: str) -> None:
        with self.lock:
            if len(self.violations) < 200:
                self.violations.append(f"{self.name}: {text} -- request {req.describe()}")

    def bad(self, req: Request, text: str, status: int = 400) -> Reply:
        """A violation, answered with a permanent error."""
        self.violation(req, text)
        return json_reply(status, {"error": f"fake {self.name}: {text}"}, note=f"violation: {text}")

    def fault(self, allowed) -> str | None:
        """The fault for an eligible request, if any (call with the lock held)."""
        if self.forced:
            if self.forced[0] in allowed:
                k = self.forced.pop(0)
                self.fault_counts[k] += 1
                return k
            return None
        allowed = [k for k in allowed if self.faults.get(k, 0) > 0]
        if self.fail_rate <= 0 or not allowed or self.rng.random() >= self.fail_rate:
            return None
        weights = [self.faults.get(k, 0) for k in allowed]
        if sum(weights) <= 0:
            return None
        k = self.rng.choices(allowed, weights=weights)[0]
        self.fault_counts[k] += 1
        return k

    def status_fault(self, kind: str, req: Request | None = None) -> Reply:
        status = int(kind.removeprefix("http"))
        headers = []
        if status in (429, 503) and self.rng.random() < self.retry_after_share:
            headers.append(("Retry-After", "1"))
            if req is not None:
                # 50 ms of tolerance between the client's clock and the arrival here
                self.retry_after_until = time.monotonic() + 1.0 - 0.05
                self.retry_after_from = req.no
        return json_reply(status, {"message": f"fake {self.name}: injected HTTP {status}"}, headers, fault=kind)

    def retry_after_applies(self, req: Request) -> bool:
        """Whether a pending Retry-After binds this request (Marketo: not its identity calls)."""
        return True

    def hold_reply(self, kind: str) -> Reply:
        return Reply(0, hold=True, fault=kind)

    def counts_in_limits(self, req: Request) -> bool:
        return False

    def on_counted_arrival(self, req: Request) -> None:
        pass

    def summary(self) -> str:
        with self.lock:
            return (f"{self.name} on port {self.port}: {self.count} requests, statuses {dict(self.statuses)}, "
                    f"faults {dict(self.fault_counts)}, {self.lost_answers} answers lost, "
                    f"{len(self.violations)} violations, {len(self.duplicate_adds)} duplicate adds, "
                    f"{len(self.restart_readds)} re-adds after a restart, {len(self.auth_failures)} auth failures, "
                    f"{len(self.early_retries)} calls before a Retry-After passed, max in flight {self.max_inflight}")

    def request_log(self, last: int = 40) -> str:
        with self.lock:
            return "\n".join(f"  {r}" for r in self.requests[-last:])

    # --- serving ---

    def _read_body(self, h: _Handler) -> bytes:
        te = (h.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            out = bytearray()
            while True:
                line = h.rfile.readline()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += h.rfile.read(size)
                h.rfile.readline()
        n = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(n) if n else b""

    def _wait(self, sock, seconds: float) -> bool:
        """Sleeps up to `seconds`; False as soon as the client is gone."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.stopped or _client_gone(sock):
                return False
            time.sleep(0.02)
        return True

    def _serve(self, h: _Handler) -> None:
        try:
            body = self._read_body(h)
        except (OSError, ValueError):
            h.close_connection = True
            return
        split = urlsplit(h.path)
        with self.lock:
            if self.is_down:
                h.close_connection = True
                return
            self.count += 1
            req = Request(no=self.count, epoch=self.epoch, t=time.monotonic(), method=h.command, target=h.path,
                          path=split.path, query=parse_qsl(split.query, keep_blank_values=True),
                          headers={k.lower(): v for k, v in h.headers.items()}, body=body)
            req.counted = self.counts_in_limits(req)
            if req.t < self.retry_after_until and self.retry_after_applies(req):
                self.early_retries.append(f"{self.name}: #{req.no} came {self.retry_after_until + 0.05 - req.t:.2f}s "
                                          f"before the 'Retry-After: 1' of #{self.retry_after_from} had passed")
            if req.counted:
                self.inflight += 1
                self.max_inflight = max(self.max_inflight, self.inflight)
                req.inflight = self.inflight
                self.on_counted_arrival(req)
            record = {"no": req.no, "epoch": req.epoch, "at": round(req.t, 3), "method": req.method,
                      "target": req.target[:200], "body": body[:200].decode("utf-8", "replace")}
            self.requests.append(record)
        sock = h.connection
        released = [not req.counted]

        def release():
            # a counted request stops being in flight once its answer is ready (before it is written: the
            # client may send its next call as soon as it has read it) or once the client gave up on it
            if not released[0]:
                released[0] = True
                with self.lock:
                    self.inflight -= 1

        try:
            lo, hi = self.delay
            if hi > 0:
                with self.lock:
                    d = self.rng.uniform(lo, hi)
                    self.holding += 1
                try:
                    present = self._wait(sock, d)
                finally:
                    with self.lock:
                        self.holding -= 1
                if not present:  # the client gave up (or died) before the server took the request
                    with self.lock:
                        self.lost_answers += 1
                    record["status"] = 0
                    record["note"] = "client gone while delayed: not processed"
                    h.close_connection = True
                    return
            try:
                reply = self.handle(req)
            except Exception:  # noqa: BLE001 - a bug of the fake: loud
                reply = self.bad(req, "the fake failed on this request: " + traceback.format_exc(limit=3))
            record["status"] = reply.status
            if reply.fault:
                record["fault"] = reply.fault
            if reply.note:
                record["note"] = reply.note[:200]
            if reply.hold:
                with self.lock:
                    self.holding += 1
                try:
                    self._wait(sock, self.client_timeout + 1.0)
                finally:
                    release()
                    with self.lock:
                        self.holding -= 1
                        self.lost_answers += 1
                h.close_connection = True
                return
            release()
            if _client_gone(sock):
                with self.lock:
                    self.lost_answers += 1
                record["lost"] = True
                h.close_connection = True
                return
            try:
                # Written under the lock, and acknowledged before it is released: the client may send its
                # next request the moment it has this answer, and that request must see the acknowledgement.
                with self.lock:
                    h.send_response(reply.status)
                    for k, v in reply.headers:
                        h.send_header(k, v)
                    if reply.body and reply.content_type:
                        h.send_header("Content-Type", reply.content_type)
                    h.send_header("Content-Length", str(len(reply.body)))
                    h.end_headers()
                    if reply.body:
                        h.wfile.write(reply.body)
                    h.wfile.flush()
                    self.statuses[reply.status] += 1
                    if reply.on_ack is not None:
                        reply.on_ack()
            except OSError:
                with self.lock:
                    self.lost_answers += 1
                record["lost"] = True
                h.close_connection = True
                return
        finally:
            release()

    def handle(self, req: Request) -> Reply:  # pragma: no cover - overridden
        raise NotImplementedError


def _json_body(req: Request):
    try:
        return json.loads(req.body.decode("utf-8")), None
    except (UnicodeDecodeError, ValueError) as e:
        return None, f"the body is not JSON ({e})"


def _is_json_type(value: str | None) -> bool:
    return value is not None and value.split(";")[0].strip().lower() == "application/json"


class _AddTracker:
    """Members of one collection (a Marketo list, a LinkedIn segment, a webhook activation) with the
    duplicate-add rule of the module docstring."""

    def __init__(self, fake: FakeHTTP, what: str):
        self.fake = fake
        self.what = what
        self.members: set = set()
        self.last_add: dict = {}             # member -> [request no, epoch, acknowledged]
        self.last_acked_add_call: dict[int, int] = {}   # epoch -> request no
        self.ever_added: list = []           # (member, request no), every add applied
        self.removes: Counter = Counter()    # member -> removals applied (of a member)
        self.remove_ops: Counter = Counter() # member -> remove operations received (member or not)

    def add(self, member, req: Request, label=None) -> None:
        label = label if label is not None else member
        prev = self.last_add.get(member)
        if member in self.members and prev is not None and prev[2]:
            if prev[1] == req.epoch:
                self.fake.duplicate_adds.append(
                    f"{self.fake.name}: {self.what}: {label} added again by #{req.no} (epoch {req.epoch}); the "
                    f"add of #{prev[0]} was acknowledged and no removal came between")
            elif self.last_acked_add_call.get(prev[1]) == prev[0]:
                self.fake.restart_readds.append(
                    f"{self.fake.name}: {self.what}: {label} added again by #{req.no} after a restart (the "
                    f"last acknowledged add call #{prev[0]} of epoch {prev[1]} had added it)")
            else:
                self.fake.duplicate_adds.append(
                    f"{self.fake.name}: {self.what}: {label} added again by #{req.no} (epoch {req.epoch}); the "
                    f"add of #{prev[0]} (epoch {prev[1]}) was acknowledged, no removal came between, and it "
                    f"was not the last add call acknowledged before the restart")
        self.members.add(member)
        self.last_add[member] = [req.no, req.epoch, False]
        self.ever_added.append((member, req.no))

    def remove(self, member) -> bool:
        self.remove_ops[member] += 1
        if member in self.members:
            self.members.discard(member)
            self.last_add.pop(member, None)
            self.removes[member] += 1
            return True
        return False

    def acked(self, members, req: Request) -> None:
        """The answer of add call `req` was written: its adds are acknowledged."""
        any_ = False
        for m in members:
            la = self.last_add.get(m)
            if la is not None and la[0] == req.no:
                la[2] = True
                any_ = True
        if any_:
            self.last_acked_add_call[req.epoch] = req.no


# ---------------------------------------------------------------------------------------------------
# Marketo
# ---------------------------------------------------------------------------------------------------

@dataclass
class Lead:
    id: int
    email: str
    fields: dict
    created_no: int


class FakeMarketo(FakeHTTP):
    """Marketo Engage: ``/identity/oauth/token`` and ``/rest/v1/leads.json`` (POST createOrUpdate by email,
    GET by email filter) and ``/rest/v1/lists/{id}/leads.json`` (POST add, DELETE remove).

    ``lists``: the static lists that exist (others answer 1013). ``bad_emails``: emails the upsert answers
    ``skipped`` with 1003. ``token_lifetime``: seconds a token lives (``expires_in`` reports
    ``reported_expires_in`` if given, else the time left). ``rate_limit`` calls in any 20 s window and
    ``concurrency_limit`` requests in flight (REST calls; identity calls are not counted): over them, 606 /
    615, and ``rate_exceeded`` notes it; ``max_calls_20s`` and ``max_inflight`` are the maxima seen."""

    name = "marketo"
    FAULTS = {"http429": 2, "http500": 2, "timeout_before": 1, "timeout_after": 2, "err606": 1, "err615": 1,
              "err604": 1, "token_invalid": 1, "token_expire": 1, "err608": 0.2, "err611": 0.2, "err614": 0.2,
              "err713": 0.2, "err502": 0.2}
    # in-body codes the fake can inject (all but 607 are retried with backoff by the contract; 607 after
    # the next midnight in Chicago)
    CODES = {"502": "Bad Gateway", "604": "Request timed out", "606": "Max rate limit '100' exceeded with in '20' secs",
             "607": "Daily quota reached", "608": "API Temporarily Unavailable", "611": "System error",
             "614": "Invalid Subscription", "615": "Concurrent access limit reached", "713": "Transient Error"}
    MAX_URL = 8192

    def __init__(self, client_id: str = "cdp-client", client_secret: str = "cdp-secret", lists=(1001,),
                 bad_emails=(), token_lifetime: float = 3600, reported_expires_in: int | None = None,
                 rate_limit: int = 100, concurrency_limit: int = 10, identity_faults: bool = True, **kw):
        super().__init__(**kw)
        self.client_id = client_id
        self.client_secret = client_secret
        self.lists: dict[int, _AddTracker] = {int(x): _AddTracker(self, f"list {x}") for x in lists}
        self.bad_emails = {e.lower() for e in bad_emails}
        self.token_lifetime = token_lifetime
        self.reported_expires_in = reported_expires_in
        self.rate_limit = rate_limit
        self.concurrency_limit = concurrency_limit
        self.identity_faults = identity_faults
        self.tokens: dict[str, tuple[float, str]] = {}   # token -> (expiry, state: valid | expired | invalid)
        self.issued: set[str] = set()
        self.current: str | None = None
        self.token_requests = 0
        self.leads: dict[str, Lead] = {}                 # lower-cased email -> lead
        self.leads_by_id: dict[int, Lead] = {}
        self.next_id = 50
        self.upserts: list[tuple[int, str, dict]] = []   # (request no, email, input object)
        self.skipped: list[tuple[int, str, str]] = []    # (request no, email or id, code)
        self.window: deque = deque()
        self.max_calls_20s = 0
        self.rate_exceeded: list[str] = []
        self.api_calls = 0

    # limits
    def counts_in_limits(self, req: Request) -> bool:
        return req.path.startswith("/rest/")

    def retry_after_applies(self, req: Request) -> bool:
        return req.path.startswith("/rest/")

    def on_counted_arrival(self, req: Request) -> None:
        self.api_calls += 1
        self.window.append(req.t)
        # a 50 ms tolerance for the time between the client's send and the arrival here
        while self.window and self.window[0] <= req.t - 19.95:
            self.window.popleft()
        req.window = len(self.window)
        self.max_calls_20s = max(self.max_calls_20s, req.window)

    # helpers for the tests
    def list_emails(self, list_id: int = 1001) -> set[str]:
        with self.lock:
            return {self.leads_by_id[i].email for i in self.lists[list_id].members}

    def ever_added_emails(self, list_id: int = 1001) -> list[str]:
        with self.lock:
            return [self.leads_by_id[i].email for i, _ in self.lists[list_id].ever_added]

    def removals(self, email: str, list_id: int = 1001) -> int:
        with self.lock:
            lead = self.leads.get(email.lower())
            return self.lists[list_id].removes[lead.id] if lead else 0

    def remove_ops(self, email: str, list_id: int = 1001) -> int:
        with self.lock:
            lead = self.leads.get(email.lower())
            return self.lists[list_id].remove_ops[lead.id] if lead else 0

    def lead(self, email: str) -> dict | None:
        with self.lock:
            lead = self.leads.get(email.lower())
            return dict(lead.fields, id=lead.id, email=lead.email) if lead else None

    def delete_lead(self, email: str) -> None:
        """Someone deletes the lead in Marketo (and so from every list)."""
        with self.lock:
            lead = self.leads.pop(email.lower())
            del self.leads_by_id[lead.id]
            for t in self.lists.values():
                t.members.discard(lead.id)
                t.last_add.pop(lead.id, None)

    def remove_from_list(self, email: str, list_id: int = 1001) -> None:
        """Someone takes the lead out of the list in Marketo."""
        with self.lock:
            lead = self.leads[email.lower()]
            self.lists[list_id].members.discard(lead.id)
            self.lists[list_id].last_add.pop(lead.id, None)

    def invalidate_tokens(self) -> None:
        with self.lock:
            for t, (exp, _) in list(self.tokens.items()):
                self.tokens[t] = (exp, "invalid")
            self.current = None

    def summary(self) -> str:
        with self.lock:
            lists = {k: len(v.members) for k, v in self.lists.items()}
            return (super().summary() + f"; {len(self.leads)} leads, list members {lists}, {self.token_requests} "
                    f"token requests, {self.api_calls} API calls, max calls in 20 s {self.max_calls_20s}")

    # --- requests ---

    def handle(self, req: Request) -> Reply:
        if req.path == "/identity/oauth/token":
            return self._token(req)
        if not req.path.startswith("/rest/v1/"):
            return self.bad(req, f"unknown path {req.path}", 404)
        if any(k == "access_token" for k, _ in req.query):
            return self.bad(req, "access_token in the query string (the token must go in the Authorization "
                                 "header only)")
        auth = req.header("Authorization")
        if auth is None or not auth.startswith("Bearer ") or not auth[7:].strip():
            return self.bad(req, f"no 'Authorization: Bearer <token>' header (got {auth!r})")
        if len(req.target) > self.MAX_URL:
            return self.bad(req, f"URI of {len(req.target)} bytes, over Marketo's 8 KB (414)", 414)
        if len(req.body) > 1 << 20:
            return self.bad(req, f"payload of {len(req.body)} bytes, over 1 MB (413)", 413)
        m_list = re.fullmatch(r"/rest/v1/lists/([^/]+)/leads\.json", req.path)
        if req.path == "/rest/v1/leads.json":
            if req.method == "POST":
                check = self._check_upsert(req)
            elif req.method == "GET":
                check = self._check_lookup(req)
            else:
                return self.bad(req, f"{req.method} on /rest/v1/leads.json (POST or GET)", 405)
        elif m_list:
            if req.method not in ("POST", "DELETE"):
                return self.bad(req, f"{req.method} on a list's leads (POST to add, DELETE to remove)", 405)
            check = self._check_list_call(req, m_list.group(1))
        else:
            return self.bad(req, f"unknown path {req.path}", 404)
        if isinstance(check, Reply):
            return check
        with self.lock:
            token = auth[7:].strip()
            state = self.tokens.get(token)
            if state is None:
                self.violation(req, "a token identity never issued")
                return self._error("601", "Access token invalid")
            expiry, status = state
            if status == "valid" and time.monotonic() >= expiry:
                status = "expired"
                self.tokens[token] = (expiry, status)
                if self.current == token:
                    self.current = None
            if status == "invalid":
                return self._error("601", "Access token invalid")
            if status == "expired":
                return self._error("602", "Access token expired")
            if req.window > self.rate_limit:
                self.rate_exceeded.append(f"#{req.no}: {req.window} calls in 20 s")
                return self._error("606", f"Max rate limit '{self.rate_limit}' exceeded with in '20' secs")
            if req.inflight > self.concurrency_limit:
                self.rate_exceeded.append(f"#{req.no}: {req.inflight} requests in flight")
                return self._error("615", "Concurrent access limit reached")
            mutating = req.method in ("POST", "DELETE")
            kinds = ["http429", "http500", "timeout_before", "err606", "err615", "err604", "err607", "err608",
                     "err611", "err614", "err713", "err502", "token_invalid", "token_expire"] + \
                (["timeout_after"] if mutating else [])
            kind = self.fault(kinds)
            if kind in ("http429", "http500"):
                return self.status_fault(kind, req)
            if kind == "timeout_before":
                return self.hold_reply(kind)
            if kind is not None and kind.startswith("err"):
                return self._error(kind[3:], self.CODES[kind[3:]], fault=kind)
            if kind == "token_invalid":
                self.invalidate_tokens()
                return self._error("601", "Access token invalid", fault=kind)
            if kind == "token_expire":
                self.tokens[token] = (time.monotonic(), "expired")
                if self.current == token:
                    self.current = None
                return self._error("602", "Access token expired", fault=kind)
            reply = check(req)
            if kind == "timeout_after":
                return Reply(0, hold=True, fault=kind, note=f"applied: {reply.body[:150]!r}")
            return reply

    def _error(self, code: str, message: str, fault=None) -> Reply:
        return json_reply(200, {"requestId": f"{uuid.uuid4().hex[:4]}#{uuid.uuid4().hex[:11]}", "success": False,
                                "errors": [{"code": code, "message": message}]}, fault=fault,
                          note=f"in-body {code}")

    def _ok(self, result: list, on_ack=None) -> Reply:
        return json_reply(200, {"requestId": f"{uuid.uuid4().hex[:4]}#{uuid.uuid4().hex[:11]}", "result": result,
                                "success": True}, on_ack=on_ack)

    def _token(self, req: Request) -> Reply:
        if req.method != "GET":
            return self.bad(req, f"{req.method} to the identity endpoint (the contract: GET with query parameters)",
                            405)
        names = [k for k, _ in req.query]
        want = {"client_id", "client_secret", "grant_type"}
        if set(names) != want or len(names) != 3:
            return self.bad(req, f"identity query parameters {sorted(names)}, expected client_id, client_secret "
                                 f"and grant_type once each")
        if req.q("grant_type") != ["client_credentials"]:
            return self.bad(req, f"grant_type {req.q('grant_type')}, expected client_credentials")
        if req.body:
            return self.bad(req, "a body on the identity GET")
        with self.lock:
            self.token_requests += 1
            if self.identity_faults:
                kind = self.fault(["http500", "timeout_before"])
                if kind == "http500":
                    return self.status_fault(kind, req)
                if kind == "timeout_before":
                    return self.hold_reply(kind)
            if req.q("client_id") != [self.client_id] or req.q("client_secret") != [self.client_secret]:
                self.auth_failures.append(f"#{req.no}: identity with client_id {req.q('client_id')} and a wrong "
                                          f"client id or secret")
                return json_reply(401, {"error": "unauthorized", "error_description": "Bad client credentials"},
                                  note="bad credentials")
            now = time.monotonic()
            tok = self.current
            if tok is None or self.tokens[tok][1] != "valid" or self.tokens[tok][0] <= now:
                tok = f"{uuid.uuid4()}:ab"
                self.tokens[tok] = (now + self.token_lifetime, "valid")
                self.issued.add(tok)
                self.current = tok
            left = self.tokens[tok][0] - now
            expires_in = self.reported_expires_in if self.reported_expires_in is not None else int(left)
            return json_reply(200, {"access_token": tok, "token_type": "bearer", "expires_in": expires_in,
                                    "scope": "apis@cdp.example"})

    # --- upsert ---

    def _check_upsert(self, req: Request):
        if not _is_json_type(req.header("Content-Type")):
            return self.bad(req, f"Content-Type {req.header('Content-Type')!r}, expected application/json")
        if req.query:
            return self.bad(req, f"query parameters {req.query} on the leads upsert")
        body, err = _json_body(req)
        if err:
            return self.bad(req, err)
        if not isinstance(body, dict):
            return self.bad(req, "the body is not a JSON object")
        extra = set(body) - {"action", "lookupField", "input", "partitionName", "asyncProcessing"}
        if extra:
            return self.bad(req, f"unknown keys {sorted(extra)} in the upsert body")
        if body.get("action") != "createOrUpdate":
            return self.bad(req, f"action {body.get('action')!r}, the contract says createOrUpdate")
        if body.get("lookupField") != "email":
            return self.bad(req, f"lookupField {body.get('lookupField')!r}, the contract says email")
        items = body.get("input")
        if not isinstance(items, list) or not 1 <= len(items) <= 300:
            return self.bad(req, f"input must be a list of 1 to 300 leads, got "
                                 f"{len(items) if isinstance(items, list) else type(items).__name__}")
        seen = set()
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                return self.bad(req, f"input[{i}] is not an object")
            email = item.get("email")
            if not isinstance(email, str) or not email or not email.isascii() or "@" not in email:
                return self.bad(req, f"input[{i}] has no valid ASCII email: {email!r}")
            if "id" in item:
                return self.bad(req, f"input[{i}] has an id (only with updateOnly)")
            for k, v in item.items():
                if not isinstance(k, str) or not k or (v is not None and not isinstance(v, (str, int, float, bool))):
                    return self.bad(req, f"input[{i}] field {k!r} has a non-scalar value {v!r}")
            if email.lower() in seen:
                return self.bad(req, f"input has {email} twice")
            seen.add(email.lower())
        return self._apply_upsert

    def _apply_upsert(self, req: Request) -> Reply:
        body = json.loads(req.body)
        result = []
        for item in body["input"]:
            email = item["email"].strip().lower()
            if email in self.bad_emails:
                self.skipped.append((req.no, email, "1003"))
                result.append({"status": "skipped", "reasons": [{"code": "1003",
                                                                 "message": "Invalid value for field email"}]})
                continue
            fields = {k: v for k, v in item.items() if k != "email"}
            self.upserts.append((req.no, email, dict(item)))
            lead = self.leads.get(email)
            if lead is None:
                lead = Lead(self.next_id, email, fields, req.no)
                self.next_id += 1
                self.leads[email] = lead
                self.leads_by_id[lead.id] = lead
                result.append({"id": lead.id, "status": "created"})
            else:
                lead.fields.update(fields)
                result.append({"id": lead.id, "status": "updated"})
        return self._ok(result)

    # --- lookup ---

    def _check_lookup(self, req: Request):
        if req.body:
            return self.bad(req, "a body on GET leads.json")
        names = Counter(k for k, _ in req.query)
        extra = set(names) - {"filterType", "filterValues", "fields", "batchSize", "nextPageToken"}
        if extra:
            return self.bad(req, f"unknown query parameters {sorted(extra)} on GET leads.json")
        if any(n > 1 for n in names.values()):
            return self.bad(req, f"a repeated query parameter on GET leads.json: {dict(names)}")
        if req.q("filterType") != ["email"]:
            return self.bad(req, f"filterType {req.q('filterType')}, expected email")
        values = (req.q("filterValues") or [""])[0].split(",")
        if not values or any(not v.strip() for v in values):
            return self.bad(req, f"filterValues {req.q('filterValues')} has empty values")
        if len(values) > 300:
            return self.bad(req, f"{len(values)} filterValues, at most 300")
        if req.q("batchSize") and not (DIGITS.match(req.q("batchSize")[0]) and
                                       1 <= int(req.q("batchSize")[0]) <= 300):
            return self.bad(req, f"batchSize {req.q('batchSize')}")
        return self._apply_lookup

    def _apply_lookup(self, req: Request) -> Reply:
        values = [v.strip().lower() for v in req.q("filterValues")[0].split(",")]
        fields = req.q("fields")[0].split(",") if req.q("fields") else ["id", "email", "updatedAt", "createdAt",
                                                                          "firstName", "lastName"]
        result = []
        for v in dict.fromkeys(values):
            lead = self.leads.get(v)
            if lead is None:
                continue
            row = {}
            for f in fields:
                if f == "id":
                    row["id"] = lead.id
                elif f == "email":
                    row["email"] = lead.email
                elif f in ("updatedAt", "createdAt"):
                    row[f] = "2026-05-01T00:00:00Z"
                else:
                    row[f] = lead.fields.get(f)
            result.append(row)
        return self._ok(result)

    # --- list membership ---

    def _check_list_call(self, req: Request, list_id: str):
        if not DIGITS.match(list_id):
            return self.bad(req, f"list id {list_id!r} is not a number")
        names = {k for k, _ in req.query}
        if names - {"id"}:
            return self.bad(req, f"unknown query parameters {sorted(names - {'id'})} on a list call")
        ids = req.q("id")
        if req.body:
            if req.method == "DELETE" or ids:
                return self.bad(req, "a body on a list call that also has query ids (the contract: query ids, "
                                     "no body)")
            body, err = _json_body(req)
            if err or not isinstance(body, dict) or set(body) != {"input"} or not isinstance(body["input"], list) \
                    or any(not isinstance(x, dict) or set(x) != {"id"} or not isinstance(x["id"], int)
                           for x in body["input"]):
                return self.bad(req, f"a list call body that is not {{'input':[{{'id':n}}]}}: {err or body!r}")
            ids = [str(x["id"]) for x in body["input"]]
        if not 1 <= len(ids) <= 300:
            return self.bad(req, f"{len(ids)} lead ids on a list call, 1 to 300 expected")
        bad = [i for i in ids if not DIGITS.match(i)]
        if bad:
            return self.bad(req, f"lead ids that are not numbers (repeat the id parameter once per lead): {bad[:5]}")
        if len(set(ids)) != len(ids):
            return self.bad(req, f"a lead id twice on one list call: {ids}")
        return lambda r: self._apply_list_call(r, int(list_id), [int(i) for i in ids])

    def _apply_list_call(self, req: Request, list_id: int, ids: list[int]) -> Reply:
        tracker = self.lists.get(list_id)
        if tracker is None:
            return self._error("1013", "Static list not found")
        result = []
        added = []
        for i in ids:
            lead = self.leads_by_id.get(i)
            if lead is None:
                self.skipped.append((req.no, str(i), "1004"))
                result.append({"id": i, "status": "skipped", "reasons": [{"code": "1004",
                                                                          "message": "Lead not found"}]})
                continue
            if req.method == "POST":
                tracker.add(i, req, label=f"lead {i} ({lead.email})")
                added.append(i)
                result.append({"id": i, "status": "added"})
            else:
                if tracker.remove(i):
                    result.append({"id": i, "status": "removed"})
                else:
                    result.append({"id": i, "status": "skipped", "reasons": [{"code": "1015",
                                                                              "message": "Lead not in list"}]})
        on_ack = (lambda: tracker.acked(added, req)) if added else None
        return self._ok(result, on_ack=on_ack)


# ---------------------------------------------------------------------------------------------------
# LinkedIn
# ---------------------------------------------------------------------------------------------------

@dataclass
class DmpSegment:
    id: int
    body: dict
    created_no: int
    created_at: float
    tracker: _AddTracker


class FakeLinkedIn(FakeHTTP):
    """LinkedIn's versioned DMP segment API: ``POST /rest/dmpSegments`` (201, id in ``x-restli-id``),
    ``POST /rest/dmpSegments/{id}/users`` and ``/companies`` with ``X-RestLi-Method: BATCH_CREATE``.

    ``access_token``: the one that works (another: HTTP 401, in ``auth_failures``). ``version``: the
    LinkedIn-Version expected (None: any YYYYMM). ``max_elements``: elements per call (the destination's
    batch_size). ``not_ready_seconds``: users / companies of a segment younger than that answer 404.
    ``reject``: member keys (hashes, company domains) whose elements are answered with status 400.
    ``id_header`` / ``urn_ids``: how the created segment's id is answered."""

    name = "linkedin"
    FAULTS = {"http429": 2, "http500": 2, "http503": 1, "timeout_before": 1, "timeout_after": 2}
    USER_KEYS = {"action", "userIds", "firstName", "lastName", "title", "company", "country"}
    COMPANY_KEYS = {"action", "companyName", "companyWebsiteDomain", "companyEmailDomain", "organizationUrn",
                    "companyPageUrl", "industries", "city", "state", "postalCode", "country", "stockSymbol"}

    def __init__(self, access_token: str = "li-token", version: str | None = None, max_elements: int = 500,
                 not_ready_seconds: float = 0.0, id_header: str = "x-restli-id", urn_ids: bool = False,
                 reject=(), lossy_create: bool = False, **kw):
        super().__init__(**kw)
        self.reject = set(reject)           # member keys whose elements LinkedIn answers with status 400
        self.lossy_create = lossy_create    # allow timeout_after on segment creation (the answer lost)
        self.id_header = id_header          # x-restli-id (what LinkedIn sends) or x-linkedin-id (older APIs)
        self.urn_ids = urn_ids              # the id as urn:li:dmpSegment:<id>
        self.access_token = access_token
        self.version = version
        self.max_elements = max_elements
        self.not_ready_seconds = not_ready_seconds
        self.segments: dict[int, DmpSegment] = {}
        self.next_id = 7001
        self.create_calls = 0
        self.find_calls = 0
        self.element_calls = 0

    def precreate(self, name: str = "made in Campaign Manager", type_: str = "USER") -> int:
        """A segment that exists before the test (for the `segment_id` setting)."""
        with self.lock:
            sid = self.next_id
            self.next_id += 1
            body = {"name": name, "sourcePlatform": "MANUAL", "account": "urn:li:sponsoredAccount:1", "type": type_,
                    "destinations": [{"destination": "LINKEDIN"}]}
            self.segments[sid] = DmpSegment(sid, body, 0, time.monotonic() - 3600, _AddTracker(self, f"segment {sid}"))
            return sid

    def segment_list(self) -> list[DmpSegment]:
        with self.lock:
            return list(self.segments.values())

    def members(self, segment_id: int | None = None) -> set:
        """The members of a segment (the only one when not given)."""
        with self.lock:
            if segment_id is None:
                if len(self.segments) != 1:
                    raise AssertionError(f"{len(self.segments)} DMP segments exist: "
                                         f"{[(s.id, s.body.get('name')) for s in self.segments.values()]}")
                segment_id = next(iter(self.segments))
            return set(self.segments[segment_id].tracker.members)

    def summary(self) -> str:
        with self.lock:
            segs = {s.id: (s.body.get("name"), len(s.tracker.members)) for s in self.segments.values()}
            return super().summary() + f"; segments {segs}, {self.create_calls} create calls"

    def handle(self, req: Request) -> Reply:
        if not req.path.startswith("/rest/"):
            return self.bad(req, f"unknown path {req.path} (versioned calls go to /rest/...)", 404)
        if req.query and not (req.method == "GET" and req.path == "/rest/dmpSegments"):
            return self.bad(req, f"query parameters {req.query}")
        auth = req.header("Authorization")
        if auth is None or not auth.startswith("Bearer ") or not auth[7:].strip():
            return self.bad(req, f"no 'Authorization: Bearer <token>' header (got {auth!r})")
        version = req.header("LinkedIn-Version")
        if version is None or not re.fullmatch(r"20[0-9]{2}(0[1-9]|1[0-2])", version):
            return self.bad(req, f"LinkedIn-Version {version!r}, expected YYYYMM")
        if self.version is not None and version != self.version:
            return self.bad(req, f"LinkedIn-Version {version}, configured {self.version}")
        if req.header("X-Restli-Protocol-Version") != "2.0.0":
            return self.bad(req, f"X-Restli-Protocol-Version {req.header('X-Restli-Protocol-Version')!r}, "
                                 f"expected 2.0.0")
        if req.method == "GET" and req.path == "/rest/dmpSegments":
            return self._find(req, auth)
        if req.method != "POST":
            return self.bad(req, f"{req.method} {req.path} (only POSTs and the finder GET are expected)", 405)
        if not _is_json_type(req.header("Content-Type")):
            return self.bad(req, f"Content-Type {req.header('Content-Type')!r}, expected application/json")
        if auth[7:].strip() != self.access_token:
            with self.lock:
                self.auth_failures.append(f"#{req.no}: a wrong access token")
            return json_reply(401, {"status": 401, "serviceErrorCode": 65600, "code": "INVALID_ACCESS_TOKEN",
                                    "message": "Invalid access token"}, note="bad token")
        body, err = _json_body(req)
        if err:
            return self.bad(req, err)
        if req.path == "/rest/dmpSegments":
            return self._create(req, body)
        m = re.fullmatch(r"/rest/dmpSegments/([^/]+)/(users|companies)", req.path)
        if not m:
            return self.bad(req, f"unknown path {req.path}", 404)
        return self._elements(req, body, m.group(1), m.group(2))

    def _find(self, req: Request, auth: str) -> Reply:
        """``GET /rest/dmpSegments?q=account&account=<urn>&start=S&count=C``: the account's segments, paged
        (LinkedIn's "find DMP segments by account")."""
        if auth[7:].strip() != self.access_token:
            with self.lock:
                self.auth_failures.append(f"#{req.no}: a wrong access token")
            return json_reply(401, {"status": 401, "code": "INVALID_ACCESS_TOKEN", "message": "Invalid access token"},
                              note="bad token")
        names = [k for k, _ in req.query]
        if req.q("q") != ["account"] or len(req.q("account")) != 1 or len(names) != len(set(names)):
            return self.bad(req, f"finder query {req.query}, expected q=account&account=<urn>[&start&count]")
        account = req.q("account")[0]
        if not re.fullmatch(r"urn:li:sponsoredAccount:[0-9]+", account):
            return self.bad(req, f"account {account!r} (URL-decoded) is not urn:li:sponsoredAccount:<id>")
        if "%3A" not in req.target and "%3a" not in req.target:
            return self.bad(req, f"the account URN is not URL-encoded in {req.target}")
        try:
            start = int((req.q("start") or ["0"])[0])
            count = int((req.q("count") or ["10"])[0])
        except ValueError:
            return self.bad(req, f"start / count not numbers: {req.query}")
        if start < 0 or not 1 <= count <= 1000:
            return self.bad(req, f"start {start}, count {count}")
        with self.lock:
            self.find_calls += 1
            kind = self.fault(["http429", "http500", "http503", "timeout_before"])
            if kind in ("http429", "http500", "http503"):
                return self.status_fault(kind, req)
            if kind == "timeout_before":
                return self.hold_reply(kind)
            mine = [seg for seg in sorted(self.segments.values(), key=lambda g: g.id)
                    if seg.body.get("account") == account]
            page = [{"id": seg.id, "name": seg.body.get("name"), "description": seg.body.get("description"),
                     "account": account, "type": seg.body.get("type"), "status": "READY"}
                    for seg in mine[start:start + count]]
            return json_reply(200, {"elements": page, "paging": {"start": start, "count": count,
                                                                 "total": len(mine)}})

    def _create(self, req: Request, body) -> Reply:
        method = req.header("X-RestLi-Method")
        if method not in (None, "CREATE"):
            return self.bad(req, f"X-RestLi-Method {method!r} on a segment create")
        if not isinstance(body, dict):
            return self.bad(req, "the segment body is not an object")
        extra = set(body) - {"name", "sourcePlatform", "account", "type", "destinations", "description",
                             "sourceSegmentId"}
        if extra:
            return self.bad(req, f"unknown keys {sorted(extra)} in the segment body (accessPolicy was removed "
                                 f"in 202406)")
        for k in ("name", "sourcePlatform"):
            if not isinstance(body.get(k), str) or not body[k].strip():
                return self.bad(req, f"segment {k} missing or empty: {body.get(k)!r}")
        if not isinstance(body.get("account"), str) or not re.fullmatch(r"urn:li:sponsoredAccount:[0-9]+",
                                                                        body["account"]):
            return self.bad(req, f"segment account {body.get('account')!r}, expected urn:li:sponsoredAccount:<id>")
        if body.get("type") not in ("USER", "COMPANY"):
            return self.bad(req, f"segment type {body.get('type')!r}, expected USER or COMPANY")
        if body.get("destinations") != [{"destination": "LINKEDIN"}]:
            return self.bad(req, f"destinations {body.get('destinations')!r}, expected [{{'destination': "
                                 f"'LINKEDIN'}}]")
        with self.lock:
            self.create_calls += 1
            # no faults after creating unless asked (lossy_create): the client then has to find the segment it
            # created (GET /rest/dmpSegments?q=account, by the description naming the activation)
            kind = self.fault(["http429", "http500", "http503", "timeout_before"] +
                              (["timeout_after"] if self.lossy_create else []))
            if kind in ("http429", "http500", "http503"):
                return self.status_fault(kind, req)
            if kind == "timeout_before":
                return self.hold_reply(kind)
            sid = self.next_id
            self.next_id += 1
            self.segments[sid] = DmpSegment(sid, body, req.no, time.monotonic(),
                                            _AddTracker(self, f"segment {sid} ({body['name']})"))
            if kind == "timeout_after":
                return Reply(0, hold=True, fault=kind, note=f"created segment {sid}, answer lost")
            value = f"urn:li:dmpSegment:{sid}" if self.urn_ids else str(sid)
            return Reply(201, b"", [(self.id_header, value), ("Location", f"/dmpSegments/{sid}")],
                         content_type=None, note=f"created segment {sid}")

    def _elements(self, req: Request, body, sid: str, kind_path: str) -> Reply:
        if req.header("X-RestLi-Method") != "BATCH_CREATE":
            return self.bad(req, f"X-RestLi-Method {req.header('X-RestLi-Method')!r}, expected BATCH_CREATE")
        if not DIGITS.match(sid):
            return self.bad(req, f"segment id {sid!r} is not a number (a URN must be reduced to its id)")
        with self.lock:
            seg = self.segments.get(int(sid))
        if seg is None:
            return self.bad(req, f"segment {sid} was never created")
        want_type = "USER" if kind_path == "users" else "COMPANY"
        if seg.body["type"] != want_type:
            return self.bad(req, f"{kind_path} of a {seg.body['type']} segment")
        if not isinstance(body, dict) or set(body) != {"elements"} or not isinstance(body["elements"], list):
            return self.bad(req, "the body is not {'elements': [...]}")
        elements = body["elements"]
        if not 1 <= len(elements) <= self.max_elements:
            return self.bad(req, f"{len(elements)} elements, 1 to {self.max_elements} (batch_size) expected")
        keys = []
        statuses = []
        for i, el in enumerate(elements):
            key, problem = self._element_key(el, kind_path)
            if problem:
                self.violation(req, f"elements[{i}]: {problem}")
                statuses.append(400)
            else:
                statuses.append(201)
            keys.append(key)
        ok_keys = [k for k, s in zip(keys, statuses) if s == 201]
        if len(set(ok_keys)) != len(ok_keys):
            self.violation(req, "the same member twice in one call")
        with self.lock:
            self.element_calls += 1
            if self.not_ready_seconds and time.monotonic() - seg.created_at < self.not_ready_seconds:
                return json_reply(404, {"status": 404, "message": "segment not ready"}, note="not ready")
            kind = self.fault(["http429", "http500", "http503", "timeout_before", "timeout_after",
                               "not_ready404"])
            if kind in ("http429", "http500", "http503"):
                return self.status_fault(kind, req)
            if kind == "not_ready404":
                return json_reply(404, {"status": 404, "message": "fake: segment not ready (injected)"}, fault=kind)
            if kind == "timeout_before":
                return self.hold_reply(kind)
            added = []
            for i, key in enumerate(keys):
                if statuses[i] == 201 and key in self.reject:
                    statuses[i] = 400
            for el, key, st in zip(elements, keys, statuses):
                if st != 201:
                    continue
                if el["action"] == "ADD":
                    seg.tracker.add(key, req)
                    added.append(key)
                else:
                    seg.tracker.remove(key)
            if kind == "timeout_after":
                return Reply(0, hold=True, fault=kind, note="applied")
            on_ack = (lambda: seg.tracker.acked(added, req)) if added else None
            return json_reply(200, {"elements": [{"status": s} if s == 201 else
                                                 {"status": s, "batchIndex": i, "message": "invalid element"}
                                                 for i, s in enumerate(statuses)]}, on_ack=on_ack)

    def _element_key(self, el, kind_path: str):
        if not isinstance(el, dict):
            return None, "not an object"
        if el.get("action") not in ("ADD", "REMOVE"):
            return None, f"action {el.get('action')!r}, expected ADD or REMOVE"
        if kind_path == "users":
            extra = set(el) - self.USER_KEYS
            if extra:
                return None, f"unknown keys {sorted(extra)}"
            ids = el.get("userIds")
            if not isinstance(ids, list) or not ids:
                return None, f"userIds {ids!r}, expected a non-empty list"
            sha = []
            for u in ids:
                if not isinstance(u, dict) or set(u) != {"idType", "idValue"}:
                    return None, f"userId {u!r} is not {{idType, idValue}}"
                if u["idType"] not in ("SHA256_EMAIL", "SHA512_EMAIL", "GOOGLE_AID"):
                    return None, f"idType {u['idType']!r}"
                if u["idType"] == "SHA256_EMAIL":
                    if not isinstance(u["idValue"], str) or not HEX64.match(u["idValue"]):
                        return None, f"SHA256_EMAIL idValue {u['idValue']!r} is not 64 lower-case hex digits"
                    sha.append(u["idValue"])
            if len(sha) != 1:
                return None, f"{len(sha)} SHA256_EMAIL ids in one element, expected 1"
            return sha[0], None
        extra = set(el) - self.COMPANY_KEYS
        if extra:
            return None, f"unknown keys {sorted(extra)}"
        name, domain = el.get("companyName"), el.get("companyWebsiteDomain")
        if not (isinstance(name, str) and name.strip()) and not (isinstance(domain, str) and domain.strip()):
            return None, "neither companyName nor companyWebsiteDomain"
        if domain is not None and (not isinstance(domain, str) or "://" in domain or "/" in domain):
            return None, f"companyWebsiteDomain {domain!r} is not a bare domain"
        return (domain or "").lower() or f"name:{name}", None


# ---------------------------------------------------------------------------------------------------
# Webhook receiver (Standard Webhooks 1.0)
# ---------------------------------------------------------------------------------------------------

def webhook_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: the base64 after `whsec_`, else the UTF-8 bytes."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_"):])
    return secret.encode()


def webhook_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(webhook_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


class FakeWebhook(FakeHTTP):
    """A Standard Webhooks receiver at ``path``: verifies the signature (``webhook-signature: v1,<base64>``,
    space-separated candidates, constant-time compare), the timestamp (within ``tolerance`` seconds), the
    body's shape (``type: audience.changes``, ``id`` equal to the webhook-id, members with op (add, update,
    remove) / entity /
    cluster / version / identity / attributes; at most ``batch_size``), and deduplicates by webhook-id: a
    repeated id is answered 200 without applying, and must carry byte for byte the body of its first
    delivery. State: members per activation (by identity)."""

    name = "webhook"
    FAULTS = {"http500": 2, "http503": 1, "http429": 1, "http408": 1, "timeout_before": 1, "timeout_after": 2}
    MEMBER_KEYS = {"op", "entity", "cluster", "version", "identity", "attributes"}

    def __init__(self, secret: str, path: str = "/hooks/cdp", batch_size: int = 100, tolerance: int = 300,
                 **kw):
        super().__init__(**kw)
        self.secret = secret
        self.path = path
        self.batch_size = batch_size
        self.tolerance = tolerance
        self.first_body: dict[str, bytes] = {}      # webhook-id -> the body of its first delivery
        self.applied_ids: set[str] = set()
        self.attempts: Counter = Counter()          # webhook-id -> deliveries received (signature ok)
        self.attempt_epochs: dict[str, set] = {}    # webhook-id -> the client epochs it was delivered in
        self.activations: dict[str, _AddTracker] = {}
        self.member_info: dict[tuple[str, str], dict] = {}   # (activation, identity) -> the member as added
        self.batches: list[dict] = []               # applied bodies, in order
        self.stray_updates: list[str] = []          # updates of members the activation does not hold

    def members(self, activation: str) -> set[str]:
        with self.lock:
            t = self.activations.get(activation)
            return set(t.members) if t else set()

    def redelivered_ids(self) -> list[str]:
        with self.lock:
            return [i for i, n in self.attempts.items() if n > 1]

    def summary(self) -> str:
        with self.lock:
            acts = {a: len(t.members) for a, t in self.activations.items()}
            return (super().summary() + f"; {len(self.applied_ids)} batches applied, members per activation {acts}, "
                    f"{len(self.redelivered_ids())} ids delivered more than once")

    def handle(self, req: Request) -> Reply:
        if req.path != self.path or req.query:
            return self.bad(req, f"POST to {req.target}, expected {self.path}", 404)
        if req.method != "POST":
            return self.bad(req, f"{req.method}, expected POST", 405)
        if not _is_json_type(req.header("Content-Type")):
            return self.bad(req, f"Content-Type {req.header('Content-Type')!r}, expected application/json")
        msg_id, ts, sig = req.header("webhook-id"), req.header("webhook-timestamp"), req.header("webhook-signature")
        if not msg_id or not ts or not sig:
            return self.bad(req, f"missing Standard Webhooks headers: webhook-id {msg_id!r}, webhook-timestamp "
                                 f"{ts!r}, webhook-signature {sig!r}")
        if not DIGITS.match(ts):
            return self.bad(req, f"webhook-timestamp {ts!r} is not unix seconds")
        if abs(time.time() - int(ts)) > self.tolerance:
            return self.bad(req, f"webhook-timestamp {ts} is {time.time() - int(ts):.0f} s off (tolerance "
                                 f"{self.tolerance} s)")
        expected = webhook_signature(self.secret, msg_id, ts, req.body)
        candidates = sig.split(" ")
        if any(not c.startswith("v1,") for c in candidates if c):
            return self.bad(req, f"webhook-signature {sig!r}: every signature is 'v1,<base64>'")
        if not any(hmac.compare_digest(c, expected) for c in candidates):
            return self.bad(req, f"webhook-signature {sig!r} does not verify (expected {expected} over "
                                 f"'{msg_id}.{ts}.<body>')", 401)
        body, err = _json_body(req)
        if err:
            return self.bad(req, err)
        problem = self._check_body(body, msg_id)
        if problem:
            return self.bad(req, problem)
        with self.lock:
            self.attempts[msg_id] += 1
            self.attempt_epochs.setdefault(msg_id, set()).add(req.epoch)
            first = self.first_body.setdefault(msg_id, req.body)
            if first != req.body:
                same_json = json.loads(first) == body
                self.violation(req, f"webhook-id {msg_id} delivered again with another body "
                                    f"({'the same JSON, other bytes' if same_json else 'other content'}); first "
                                    f"{first[:300]!r}")
                return json_reply(409, {"error": "webhook-id reused with another body"}, note="id reused")
            if msg_id in self.applied_ids:
                return json_reply(200, {"status": "duplicate"}, note="duplicate id")
            kind = self.fault(["http500", "http503", "http429", "http408", "timeout_before", "timeout_after"])
            if kind in ("http500", "http503", "http429", "http408"):
                return self.status_fault(kind, req)
            if kind == "timeout_before":
                return self.hold_reply(kind)
            act = body["activation"]
            tracker = self.activations.setdefault(act, _AddTracker(self, f"activation {act}"))
            added = []
            for m in body["members"]:
                if m["op"] == "add":
                    tracker.add(m["identity"], req)
                    self.member_info[(act, m["identity"])] = m
                    added.append(m["identity"])
                elif m["op"] == "update":
                    # The member stays; its attributes change.
                    if m["identity"] not in tracker.members:
                        self.stray_updates.append(f"{msg_id}: update of {m['identity']}, not a member of {act}")
                    self.member_info[(act, m["identity"])] = m
                else:
                    tracker.remove(m["identity"])
            self.applied_ids.add(msg_id)
            self.batches.append(body)
            if kind == "timeout_after":
                return Reply(0, hold=True, fault=kind, note="applied")
            on_ack = (lambda: tracker.acked(added, req)) if added else None
            return json_reply(200, {"status": "ok"}, on_ack=on_ack)

    def _check_body(self, body, msg_id: str) -> str | None:
        if not isinstance(body, dict):
            return "the body is not an object"
        want = {"type", "id", "activation", "segment", "destination", "members"}
        if set(body) != want:
            return f"body keys {sorted(body)}, expected {sorted(want)}"
        if body["type"] != "audience.changes":
            return f"type {body['type']!r}, expected audience.changes"
        if body["id"] != msg_id:
            return f"body id {body['id']!r} differs from the webhook-id {msg_id!r}"
        for k in ("activation", "segment", "destination"):
            if not isinstance(body[k], str) or not body[k]:
                return f"{k} {body[k]!r} is not a non-empty string"
        if not msg_id.startswith(body["activation"] + "-") or msg_id == body["activation"] + "-":
            return f"webhook-id {msg_id!r} is not '<activation>-<run>' (activation {body['activation']!r})"
        members = body["members"]
        if not isinstance(members, list) or not 1 <= len(members) <= self.batch_size:
            return f"members must be a list of 1 to {self.batch_size} (batch_size)"
        seen = set()
        for i, m in enumerate(members):
            if not isinstance(m, dict):
                return f"members[{i}] is not an object"
            missing = {"op", "entity", "cluster", "version", "identity"} - set(m)
            extra = set(m) - self.MEMBER_KEYS
            if missing or extra:
                return f"members[{i}]: missing {sorted(missing)}, unknown {sorted(extra)}"
            if m["op"] not in ("add", "update", "remove"):
                return f"members[{i}].op {m['op']!r}"
            if m["entity"] not in ("person", "account"):
                return f"members[{i}].entity {m['entity']!r}"
            for k in ("cluster", "version"):
                if not isinstance(m[k], int) or isinstance(m[k], bool) or m[k] <= 0:
                    return f"members[{i}].{k} {m[k]!r} is not a positive integer"
            if not isinstance(m["identity"], str) or not m["identity"]:
                return f"members[{i}].identity {m['identity']!r}"
            attrs = m.get("attributes", {})
            if not isinstance(attrs, dict) or any(not isinstance(v, (str, int, float, bool)) and v is not None
                                                  for v in attrs.values()):
                return f"members[{i}].attributes {attrs!r} is not an object of scalars"
            if m["identity"] in seen:
                return f"members[{i}]: {m['identity']} twice in one batch"
            seen.add(m["identity"])
        return None

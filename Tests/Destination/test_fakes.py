"""Self-test of the HTTP fakes of Tests/Destination/fakes.py (pure Python, no binaries; about 10 s).

Each fake is driven with urllib: correct requests (as .git/briefs/connectors-contract.md describes them)
are accepted and change its state; requests that break the documented API land in ``violations`` and get
a permanent error; wrong credentials land in ``auth_failures``; injected faults answer as documented;
duplicate adds are told from retries after a lost answer; the down switch refuses connections and comes
back on the same port.

Run: .venv/bin/python -m pytest Tests/Destination/test_fakes.py -q -p no:cacheprovider
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fakes import FakeLinkedIn, FakeMarketo, FakeWebhook, webhook_signature  # noqa: E402


def call(method: str, url: str, headers=None, body=None, timeout: float = 5.0):
    """(status, headers, parsed JSON or raw bytes); raises on no answer."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, hdrs, raw = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        status, hdrs, raw = e.code, dict(e.headers), e.read()
    try:
        return status, {k.lower(): v for k, v in hdrs.items()}, json.loads(raw) if raw else None
    except ValueError:
        return status, {k.lower(): v for k, v in hdrs.items()}, raw


@pytest.fixture
def fakes():
    started = []

    def make(cls, **kw):
        f = cls(**kw).start()
        started.append(f)
        return f

    yield make
    for f in started:
        f.stop()


# ---------------------------------------------------------------------------------------------------
# Marketo
# ---------------------------------------------------------------------------------------------------

def token(m: FakeMarketo, secret: str | None = None) -> str:
    status, _, body = call("GET", f"{m.url}/identity/oauth/token?grant_type=client_credentials&client_id="
                                  f"{m.client_id}&client_secret={secret or m.client_secret}")
    assert status == 200, body
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"} and body["token_type"] == "bearer"
    return body["access_token"]


def api(m: FakeMarketo, method: str, path: str, tok: str, body=None, **kw):
    headers = {"Authorization": f"Bearer {tok}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    return call(method, f"{m.url}{path}", headers, body, **kw)


def upsert(m, tok, *emails, timeout: float = 5.0, **fields):
    return api(m, "POST", "/rest/v1/leads.json", tok, {"action": "createOrUpdate", "lookupField": "email",
                                                        "input": [{"email": e, **fields} for e in emails]},
               timeout=timeout)


def test_marketo_accepts_the_contract_calls(fakes):
    m = fakes(FakeMarketo, bad_emails={"bad@x.example"})
    tok = token(m)
    assert token(m) == tok, "identity must hand out the same token while it is valid"
    status, _, body = upsert(m, tok, "a@x.example", "bad@x.example", "b@x.example", firstName="A", title="CTO")
    assert status == 200 and body["success"], body
    r = body["result"]
    assert [x["status"] for x in r] == ["created", "skipped", "created"] and r[1]["reasons"][0]["code"] == "1003"
    a, b = r[0]["id"], r[2]["id"]
    status, _, body = upsert(m, tok, "A@x.example", firstName="Ann")
    assert body["result"] == [{"id": a, "status": "updated"}]
    assert m.lead("a@x.example")["firstName"] == "Ann" and m.lead("a@x.example")["title"] == "CTO"

    status, _, body = api(m, "POST", f"/rest/v1/lists/1001/leads.json?id={a}&id={b}&id=999", tok)
    assert [x["status"] for x in body["result"]] == ["added", "added", "skipped"], body
    assert body["result"][2]["reasons"][0]["code"] == "1004"
    assert m.list_emails(1001) == {"a@x.example", "b@x.example"}

    status, _, body = api(m, "GET", "/rest/v1/leads.json?filterType=email&filterValues=a%40x.example,"
                                    "nobody%40x.example&fields=id,email", tok)
    assert body["result"] == [{"id": a, "email": "a@x.example"}], body

    status, _, body = api(m, "DELETE", f"/rest/v1/lists/1001/leads.json?id={a}", tok)
    assert body["result"] == [{"id": a, "status": "removed"}]
    status, _, body = api(m, "DELETE", f"/rest/v1/lists/1001/leads.json?id={a}", tok)
    assert body["result"][0]["status"] == "skipped" and body["result"][0]["reasons"][0]["code"] == "1015"
    status, _, body = api(m, "POST", f"/rest/v1/lists/4242/leads.json?id={a}", tok)
    assert status == 200 and not body["success"] and body["errors"][0]["code"] == "1013"
    assert m.removals("a@x.example") == 1 and m.remove_ops("a@x.example") == 2
    assert m.violations == [] and m.duplicate_adds == [] and m.auth_failures == []
    assert m.max_calls_20s == 7 and m.max_inflight == 1


def test_marketo_flags_what_breaks_the_api(fakes):
    m = fakes(FakeMarketo)
    tok = token(m)
    ids = "&".join(f"id={i}" for i in range(1, 302))
    cases = [
        ("GET", f"/rest/v1/leads.json?filterType=email&filterValues=a%40x.example&access_token={tok}", None,
         {"Authorization": f"Bearer {tok}"}, "access_token in the query"),
        ("POST", "/rest/v1/leads.json", {"action": "createOrUpdate", "lookupField": "email",
                                         "input": [{"email": "a@x.example"}]}, {"Content-Type": "application/json"},
         "no Authorization"),
        ("POST", "/rest/v1/leads.json", {"action": "createOrUpdate", "lookupField": "email",
                                         "input": [{"email": "a@x.example"}]},
         {"Authorization": f"Bearer {tok}", "Content-Type": "text/plain"}, "Content-Type"),
        ("POST", "/rest/v1/leads.json", {"action": "createOrUpdate", "lookupField": "email",
                                         "input": [{"email": f"p{i}@x.example"} for i in range(301)]},
         {"Authorization": f"Bearer {tok}", "Content-Type": "application/json"}, "301 leads"),
        ("POST", "/rest/v1/leads.json", {"input": [{"email": "a@x.example", "address": {"city": "x"}}],
                                         "action": "createOrUpdate", "lookupField": "email"},
         {"Authorization": f"Bearer {tok}", "Content-Type": "application/json"}, "non-scalar field"),
        ("POST", f"/rest/v1/lists/1001/leads.json?{ids}", None, {"Authorization": f"Bearer {tok}"}, "301 ids"),
        ("POST", "/rest/v1/lists/1001/leads.json?id=1,2", None, {"Authorization": f"Bearer {tok}"}, "comma ids"),
        ("GET", "/rest/v1/leads.json?filterType=id&filterValues=1", None, {"Authorization": f"Bearer {tok}"},
         "filterType id"),
        ("GET", "/rest/v1/leads.json?filterType=email&filterValues=" + ",".join(f"p{i}%40x" for i in range(301)),
         None, {"Authorization": f"Bearer {tok}"}, "301 filterValues"),
        ("PUT", "/rest/v1/lists/1001/leads.json?id=1", None, {"Authorization": f"Bearer {tok}"}, "PUT"),
        ("POST", "/identity/oauth/token?grant_type=client_credentials&client_id=cdp-client&client_secret=cdp-secret",
         None, {}, "POST identity"),
        ("GET", "/rest/v2/leads.json", None, {"Authorization": f"Bearer {tok}"}, "unknown path"),
    ]
    for method, path, body, headers, what in cases:
        n = len(m.violations)
        status, _, resp = call(method, f"{m.url}{path}", headers,
                               json.dumps(body).encode() if body is not None else None)
        assert 400 <= status < 500, f"{what}: answered {status} {resp}"
        assert len(m.violations) == n + 1, f"{what}: not recorded as a violation ({m.violations[n:]})"
    assert m.leads == {} and all(not t.members for t in m.lists.values())


def test_marketo_credentials_and_tokens(fakes):
    m = fakes(FakeMarketo, token_lifetime=0.3)
    status, _, body = call("GET", f"{m.url}/identity/oauth/token?grant_type=client_credentials&client_id="
                                  f"cdp-client&client_secret=wrong")
    assert status == 401 and len(m.auth_failures) == 1 and m.violations == []
    tok = token(m)
    time.sleep(0.4)
    status, _, body = upsert(m, tok, "a@x.example")
    assert status == 200 and body["errors"] == [{"code": "602", "message": "Access token expired"}], body
    tok2 = token(m)
    assert tok2 != tok
    m.invalidate_tokens()
    status, _, body = upsert(m, tok2, "a@x.example")
    assert body["errors"][0]["code"] == "601"
    assert m.violations == []
    status, _, body = upsert(m, "never-issued", "a@x.example")
    assert body["errors"][0]["code"] == "601" and len(m.violations) == 1
    assert m.leads == {}


def test_marketo_limits(fakes):
    m = fakes(FakeMarketo, rate_limit=3, concurrency_limit=2, delay=(0.3, 0.3))
    tok = token(m)
    results = []

    def one(i):
        results.append(upsert(m, tok, f"c{i}@x.example")[2])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r["errors"][0]["code"] for r in results if not r["success"])
    assert m.max_inflight == 4 and m.max_calls_20s == 4, m.summary()
    assert "615" in codes and len(codes) >= 2, codes
    assert m.rate_exceeded, m.summary()


def test_marketo_faults_and_duplicate_adds(fakes):
    m = fakes(FakeMarketo, client_timeout=0.5, forced=["err606", "http429", "timeout_before", "timeout_after"])
    tok = token(m)
    _, _, body = upsert(m, tok, "a@x.example")
    assert body["errors"][0]["code"] == "606" and not m.leads
    status, _, _ = upsert(m, tok, "a@x.example")
    assert status == 429 and not m.leads
    with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
        upsert(m, tok, "a@x.example", timeout=0.5)
    assert not m.leads
    with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
        upsert(m, tok, "a@x.example", timeout=0.5)  # applied, answer lost
    lead = m.lead("a@x.example")["id"]
    m.forced = ["timeout_after"]
    with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
        api(m, "POST", f"/rest/v1/lists/1001/leads.json?id={lead}", tok, timeout=0.5)
    assert m.list_emails() == {"a@x.example"}
    api(m, "POST", f"/rest/v1/lists/1001/leads.json?id={lead}", tok)  # a retry after a lost answer: fine
    assert m.duplicate_adds == []
    api(m, "POST", f"/rest/v1/lists/1001/leads.json?id={lead}", tok)  # the previous add was acknowledged
    assert len(m.duplicate_adds) == 1, m.duplicate_adds
    # after a restart of the client, repeating the last acknowledged add call is allowed once ...
    m.new_epoch()
    api(m, "POST", f"/rest/v1/lists/1001/leads.json?id={lead}", tok)
    assert len(m.restart_readds) == 1 and len(m.duplicate_adds) == 1
    # ... an add acknowledged before it, not the last one, is not
    _, _, body = upsert(m, tok, "b@x.example")
    b = body["result"][0]["id"]
    api(m, "POST", f"/rest/v1/lists/1001/leads.json?id={b}", tok)
    api(m, "POST", f"/rest/v1/lists/1001/leads.json?id={lead}", tok)  # a duplicate (epoch 1)
    assert len(m.duplicate_adds) == 2
    m.new_epoch()
    api(m, "POST", f"/rest/v1/lists/1001/leads.json?id={b}", tok)      # b's add was not the last call
    assert len(m.duplicate_adds) == 3, m.duplicate_adds
    api(m, "DELETE", f"/rest/v1/lists/1001/leads.json?id={b}", tok)
    api(m, "POST", f"/rest/v1/lists/1001/leads.json?id={b}", tok)      # after a removal: fine
    assert len(m.duplicate_adds) == 3 and m.violations == [], m.violations
    assert m.fault_counts == {"err606": 1, "http429": 1, "timeout_before": 1, "timeout_after": 2}


def test_marketo_random_faults_are_seeded(fakes):
    def run():
        m = fakes(FakeMarketo, fail_rate=0.5, seed=9, client_timeout=0.2, identity_faults=False,
                  faults={"http500": 1, "err604": 1, "token_invalid": 1})
        tok = token(m)
        out = []
        for i in range(20):
            status, _, body = upsert(m, tok, f"s{i}@x.example")
            out.append(status if status != 200 else body.get("errors", [{"code": "ok"}])[0]["code"])
            if out[-1] == "601":
                tok = token(m)
        return out, m

    first, m = run()
    second, _ = run()
    assert first == second and {"500", "604", "601", "ok"} <= {str(x) for x in first}, first
    assert m.violations == []


def test_down_switch(fakes):
    m = fakes(FakeMarketo)
    port = m.port
    token(m)
    m.go_down()
    with pytest.raises(urllib.error.URLError) as e:
        token(m)
    assert isinstance(e.value.reason, ConnectionRefusedError), e.value
    m.go_up()
    assert m.port == port
    token(m)


# ---------------------------------------------------------------------------------------------------
# LinkedIn
# ---------------------------------------------------------------------------------------------------

LI_HEADERS = {"Authorization": "Bearer li-token", "LinkedIn-Version": "202610", "X-Restli-Protocol-Version": "2.0.0",
              "Content-Type": "application/json"}
SEGMENT = {"name": "CDP s1", "sourcePlatform": "CDP", "account": "urn:li:sponsoredAccount:507",
           "type": "USER", "destinations": [{"destination": "LINKEDIN"}]}


def sha(email: str) -> str:
    return hashlib.sha256(email.encode()).hexdigest()


def users(li, sid, elements, headers=None, **kw):
    return call("POST", f"{li.url}/rest/dmpSegments/{sid}/users", {**LI_HEADERS, "X-RestLi-Method": "BATCH_CREATE",
                                                                   **(headers or {})},
                json.dumps({"elements": elements}).encode(), **kw)


def el(action, email, value=None):
    return {"action": action, "userIds": [{"idType": "SHA256_EMAIL", "idValue": value or sha(email)}]}


def test_linkedin_accepts_the_contract_calls(fakes):
    li = fakes(FakeLinkedIn, version="202610", max_elements=3)
    status, hdrs, _ = call("POST", f"{li.url}/rest/dmpSegments", LI_HEADERS, json.dumps(SEGMENT).encode())
    assert status == 201 and hdrs["x-restli-id"].isdigit(), (status, hdrs)
    sid = int(hdrs["x-restli-id"])
    status, _, body = users(li, sid, [el("ADD", "a@x"), el("ADD", "b@x"), el("REMOVE", "c@x")])
    assert status == 200 and body == {"elements": [{"status": 201}] * 3}, body
    status, _, body = users(li, sid, [el("REMOVE", "a@x")])
    assert li.members() == {sha("b@x")} and li.violations == [] and li.duplicate_adds == []
    users(li, sid, [el("ADD", "b@x")])
    assert len(li.duplicate_adds) == 1


def test_linkedin_flags_what_breaks_the_api(fakes):
    li = fakes(FakeLinkedIn, max_elements=2)
    _, hdrs, _ = call("POST", f"{li.url}/rest/dmpSegments", LI_HEADERS, json.dumps(SEGMENT).encode())
    sid = int(hdrs["x-restli-id"])
    cases = [
        (lambda: users(li, sid, [el("ADD", "a@x", sha("a@x").upper())]), 200, "upper-case hex"),
        (lambda: users(li, sid, [el("ADD", "a@x", "abc")]), 200, "short hash"),
        (lambda: users(li, sid, [el("ADD", "a@x"), el("ADD", "b@x"), el("ADD", "c@x")]), 400, "over batch_size"),
        (lambda: users(li, sid, [el("ADD", "a@x")], {"X-RestLi-Method": "CREATE"}), 400, "X-RestLi-Method"),
        (lambda: users(li, sid, [el("ADD", "a@x")], {"X-Restli-Protocol-Version": "1.0.0"}), 400, "protocol"),
        (lambda: users(li, sid, [el("ADD", "a@x")], {"LinkedIn-Version": "2026-10"}), 400, "version"),
        (lambda: users(li, sid, [{"action": "ADD", "userId": {"idType": "SHA256_EMAIL", "idValue": sha("a")}}]),
         200, "singular userId"),
        (lambda: users(li, 999, [el("ADD", "a@x")]), 400, "unknown segment"),
        (lambda: users(li, f"urn:li:dmpSegment:{sid}", [el("ADD", "a@x")]), 400, "a URN as id"),
        (lambda: call("POST", f"{li.url}/rest/dmpSegments", LI_HEADERS,
                      json.dumps({**SEGMENT, "accessPolicy": "PRIVATE"}).encode()), 400, "accessPolicy"),
        (lambda: call("POST", f"{li.url}/rest/dmpSegments", LI_HEADERS,
                      json.dumps({**SEGMENT, "account": "507"}).encode()), 400, "account"),
        (lambda: call("POST", f"{li.url}/v2/dmpSegments", LI_HEADERS, json.dumps(SEGMENT).encode()), 404, "v2"),
    ]
    for fn, want, what in cases:
        n = len(li.violations)
        status, _, body = fn()
        assert status == want, f"{what}: {status} {body}"
        if status == 200:
            assert body["elements"][0]["status"] == 400, f"{what}: {body}"
        assert len(li.violations) == n + 1, f"{what}: {li.violations[n:]}"
    assert li.members(sid) == set() and len(li.segment_list()) == 1
    status, _, _ = users(li, sid, [el("ADD", "a@x")], {"Authorization": "Bearer other"})
    assert status == 401 and len(li.auth_failures) == 1


def test_linkedin_faults(fakes):
    li = fakes(FakeLinkedIn, client_timeout=0.5, forced=["http429", "not_ready404", "timeout_after"],
               retry_after_share=1.0)
    status, hdrs, _ = call("POST", f"{li.url}/rest/dmpSegments", LI_HEADERS, json.dumps(SEGMENT).encode())
    assert status == 429 and hdrs.get("retry-after") == "1" and li.segment_list() == []
    status, hdrs, _ = call("POST", f"{li.url}/rest/dmpSegments", LI_HEADERS, json.dumps(SEGMENT).encode())
    assert status == 201, status
    sid = int(hdrs["x-restli-id"])
    status, _, _ = users(li, sid, [el("ADD", "a@x")])
    assert status == 404 and li.members(sid) == set()
    with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
        users(li, sid, [el("ADD", "a@x")], timeout=0.5)
    assert li.members(sid) == {sha("a@x")}
    assert users(li, sid, [el("ADD", "a@x")])[0] == 200  # a retry after a lost answer
    assert li.duplicate_adds == [] and li.violations == [] and li.create_calls == 2


# ---------------------------------------------------------------------------------------------------
# Webhook
# ---------------------------------------------------------------------------------------------------

SECRET = "whsec_" + __import__("base64").b64encode(b"0123456789abcdef0123456789abcdef").decode()


def hook_body(msg_id, *members, activation="a1"):
    return json.dumps({"type": "audience.changes", "id": msg_id, "activation": activation, "segment": "s1",
                       "destination": "d3", "members": [
                           {"op": op, "entity": "person", "cluster": c, "version": v, "identity": ident,
                            "attributes": {"firstName": "X"}} for op, c, v, ident in members]}).encode()


def post_hook(w, msg_id, body, secret=SECRET, ts=None, sig=None, **kw):
    ts = str(int(time.time())) if ts is None else str(ts)
    headers = {"Content-Type": "application/json", "webhook-id": msg_id, "webhook-timestamp": ts,
               "webhook-signature": sig or webhook_signature(secret, msg_id, ts, body)}
    return call("POST", f"{w.url}/hooks/cdp", headers, body, **kw)


def test_webhook_signatures_and_idempotency(fakes):
    w = fakes(FakeWebhook, secret=SECRET, batch_size=3)
    b1 = hook_body("a1-1", ("add", 7, 1, "a@x"), ("add", 8, 1, "b@x"))
    assert post_hook(w, "a1-1", b1)[0] == 200
    assert post_hook(w, "a1-1", b1)[0] == 200  # a repeated id: acknowledged, not applied again
    assert w.members("a1") == {"a@x", "b@x"} and w.duplicate_adds == [] and w.violations == []
    # rotation: several signatures, one of them valid
    b2 = hook_body("a1-2", ("remove", 7, 2, "a@x"))
    ts = str(int(time.time()))
    sig = "v1,AAAA " + webhook_signature(SECRET, "a1-2", ts, b2)
    assert post_hook(w, "a1-2", b2, ts=ts, sig=sig)[0] == 200
    assert w.members("a1") == {"b@x"} and w.redelivered_ids() == ["a1-1"]
    # a plain (non-whsec_) secret is its UTF-8 bytes
    w2 = fakes(FakeWebhook, secret="plain-secret")
    assert post_hook(w2, "a2-1", hook_body("a2-1", ("add", 1, 1, "c@x"), activation="a2"),
                     secret="plain-secret")[0] == 200
    assert w2.members("a2") == {"c@x"} and w2.violations == []
    # a second add of b@x under another id after the first was acknowledged: a duplicate add
    assert post_hook(w, "a1-3", hook_body("a1-3", ("add", 8, 1, "b@x")))[0] == 200
    assert len(w.duplicate_adds) == 1


def test_webhook_flags_what_breaks_the_contract(fakes):
    w = fakes(FakeWebhook, secret=SECRET, batch_size=2)
    good = hook_body("a1-1", ("add", 7, 1, "a@x"))
    cases = [
        (lambda: post_hook(w, "a1-1", good, secret="whsec_" + "QUJD"), "wrong key"),
        (lambda: post_hook(w, "a1-1", good, ts=int(time.time()) - 600), "old timestamp"),
        (lambda: post_hook(w, "a1-1", good, sig="v2,abc"), "v2 signature"),
        (lambda: post_hook(w, "a1-9", good), "id differs from the body's"),
        (lambda: post_hook(w, "x-1", hook_body("x-1", ("add", 7, 1, "a@x"))), "id not <activation>-<run>"),
        (lambda: post_hook(w, "a1-2", hook_body("a1-2", ("add", 7, 1, "a@x"), ("add", 8, 1, "b@x"),
                                                ("add", 9, 1, "c@x"))), "over batch_size"),
        (lambda: post_hook(w, "a1-3", hook_body("a1-3", ("upsert", 7, 1, "a@x"))), "op"),
        (lambda: post_hook(w, "a1-4", hook_body("a1-4", ("add", 0, 1, "a@x"))), "cluster 0"),
        (lambda: call("PUT", f"{w.url}/hooks/cdp", {"Content-Type": "application/json"}, good), "PUT"),
    ]
    for fn, what in cases:
        n = len(w.violations)
        status, _, body = fn()
        assert 400 <= status < 500 and status not in (408, 429), f"{what}: {status} {body}"
        assert len(w.violations) == n + 1, f"{what}: {w.violations[n:]}"
    assert w.members("a1") == set()
    assert post_hook(w, "a1-5", hook_body("a1-5", ("add", 7, 1, "a@x")))[0] == 200
    other = hook_body("a1-5", ("add", 7, 1, "a@x"), ("add", 8, 1, "b@x"))
    n = len(w.violations)
    assert post_hook(w, "a1-5", other)[0] == 409 and len(w.violations) == n + 1
    assert w.members("a1") == {"a@x"}


def test_webhook_faults(fakes):
    w = fakes(FakeWebhook, secret="s", client_timeout=0.5, forced=["http503", "timeout_after"],
              retry_after_share=1.0)
    body = hook_body("a1-1", ("add", 7, 1, "a@x"))
    status, hdrs, _ = post_hook(w, "a1-1", body, secret="s")
    assert status == 503 and hdrs.get("retry-after") == "1" and w.members("a1") == set()
    with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
        post_hook(w, "a1-1", body, secret="s", timeout=0.5)
    assert w.members("a1") == {"a@x"}
    assert post_hook(w, "a1-1", body, secret="s")[0] == 200
    assert w.members("a1") == {"a@x"} and w.duplicate_adds == [] and w.violations == []
    assert w.attempts["a1-1"] == 3


def test_early_retries_are_noted(fakes):
    li = fakes(FakeLinkedIn, forced=["http429"], retry_after_share=1.0)
    status, hdrs, _ = call("POST", f"{li.url}/rest/dmpSegments", LI_HEADERS, json.dumps(SEGMENT).encode())
    assert status == 429 and hdrs["retry-after"] == "1"
    call("POST", f"{li.url}/rest/dmpSegments", LI_HEADERS, json.dumps(SEGMENT).encode())
    assert len(li.early_retries) == 1, li.early_retries
    time.sleep(1.0)
    call("POST", f"{li.url}/rest/dmpSegments", LI_HEADERS, json.dumps(SEGMENT).encode())
    assert len(li.early_retries) == 1 and li.violations == []

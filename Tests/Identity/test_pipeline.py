"""Ingestion -> identity -> (fake) profile, end to end over gRPC, against the real binaries.

Tests (about 20 s in all with the debug builds on 2 cores):

* test_running_example_with_flaky_profile: the Bodea story (two Marketo instances sharing a person by
  email, one account in each, an MDM crosswalk saying both accounts are one company, an opportunity on
  each) through cdp-ingestion and cdp-identity to a fake profile that fails ~30% of its calls (half
  of them after applying, so the answer is lost and identity re-sends). Checks identity's Resolve
  (p2's email cluster holds both source keys; A1 and A2 are one account cluster; p1 and p3 are separate
  persons) and what profile got: sequences 1..N, every stored record exactly once as an
  AnnotatedRecord, and each person's / opportunity's `account` reference, moved through the later
  MERGED changes of the ACCOUNT graph, equals the account cluster Resolve answers. Both services must
  then stop on SIGTERM with status 0.
* test_identity_sigkill_during_forwarding: a synthetic dataset (default 14,000 persons, ~28,000
  person records across three sources, sharing emails and ecids so that clusters merge when a record
  holding both arrives late; 400 accounts per source; an MDM crosswalk joining 75% of them across the
  sources) ingested in 11 batches while cdp-identity is SIGKILLed three times at random points of
  the forwarding (seeded) and restarted on the same data directory and port (picked up front). The
  fake profile fails 10% of calls meanwhile. At the end: sequences 1..N; every (key, version)
  ingestion stored reached profile exactly once; identity's forwarded count equals N; the clusters in
  the stream (record cluster ids moved through the MERGED changes) partition the records exactly as
  the generator's ground truth; every person's `account` reference ends in its account's cluster and
  never names a cluster that was already merged away; a sample of Resolve calls (persons by email or
  ecid, accounts by MDM master id or source key) answers exactly the generator's source keys, with
  the cluster id the stream ends in.
* test_identity_unhappy_paths: Resolve of an unknown identity (NOT_FOUND), of a graph that has none
  (EVENT, UNSPECIFIED: INVALID_ARGUMENT naming the valid types), without a namespace; AcceptRecords
  with a record lacking its key or its entity (INVALID_ARGUMENT naming records[i], nothing taken);
  ListConflicts with bad page tokens (INVALID_ARGUMENT).

Run (Tests/python-env.sh first; the debug binaries must exist):
    .venv/bin/python -m pytest Tests/Identity -q -p no:cacheprovider

Environment:
    CDP_IDENTITY_BIN / CDP_INGESTION_BIN   the binaries (default .build/debug/cdp-identity, cdp-ingestion)
    IDENTITY_CRASH_PERSONS                 persons in the crash test (default 14000)
    IDENTITY_CRASH_KILLS                   SIGKILLs of cdp-identity (default 3)
    IDENTITY_CRASH_SEED                    seed of the data, the kill points and the fake's failures (default 7)
    IDENTITY_CRASH_FAIL_RATE               the fake profile's failure rate in the crash test (default 0.1)
    IDENTITY_EXAMPLE_FAIL_RATE             ... in the running example (default 0.3)
"""

from __future__ import annotations

import os
import random
import sqlite3
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_support import (  # noqa: E402
    ACCOUNT_COLUMNS, E, ENTITY_NAME, MDM_COLUMNS, OPPORTUNITY_COLUMNS, PERSON_COLUMNS, FakeProfile,
    MergeFollower, Service, call_with_retry, channel, check_contiguous, csv_text, diagnostics, free_port,
    identity_pb2, identity_pb2_grpc, ingest, ingestion_pb2, ingestion_pb2_grpc, ingestion_store_versions, log,
    model_pb2, service_binary, source, source_key, wait_drained,
)


def _env(name: str, default, conv=int):
    v = os.environ.get(name)
    return conv(v) if v not in (None, "") else default


IDENTITY_BIN = service_binary("cdp-identity", "CDP_IDENTITY_BIN")
INGESTION_BIN = service_binary("cdp-ingestion", "CDP_INGESTION_BIN")


def _require_binaries():
    for b, env in ((IDENTITY_BIN, "CDP_IDENTITY_BIN"), (INGESTION_BIN, "CDP_INGESTION_BIN")):
        if not b.exists():
            pytest.fail(f"{b.name} not found at {b} (build it, or set {env})", pytrace=False)


def sk(key: str) -> identity_pb2.IdentityValue:
    return identity_pb2.IdentityValue(namespace="sourceKey", value=key)


def ident(namespace: str, value: str) -> identity_pb2.IdentityValue:
    return identity_pb2.IdentityValue(namespace=namespace, value=value)


def resolve(stub, entity_type, identity, timeout=10.0):
    return stub.Resolve(identity_pb2.ResolveRequest(entity_type=entity_type, identity=identity), timeout=timeout)


def source_keys(resp) -> set[str]:
    return {i.value for i in resp.identities if i.namespace == "sourceKey"}


class Pipeline:
    """fake profile <- cdp-identity <- cdp-ingestion, each on its own data directory under tmp_path."""

    def __init__(self, tmp_path: Path, fake: FakeProfile, identity_args=(), ingestion_args=(),
                 identity_port: int = 0):
        self.fake = fake
        self.identity_port = identity_port
        self.identity = Service("identity", IDENTITY_BIN, "CDP_IDENTITY_BIN", tmp_path / "identity-data", tmp_path,
                                ["--profile", fake.address, *identity_args])
        self.ingestion_args = list(ingestion_args)
        self.ingestion = Service("ingestion", INGESTION_BIN, "CDP_INGESTION_BIN", tmp_path / "ingestion-data",
                                 tmp_path, [])
        self.channels: list[grpc.Channel] = []

    def start(self):
        self.identity.start(self.identity_port)
        self.identity_port = self.identity.port
        self.ingestion.args = ["--identity", self.identity.address, *self.ingestion_args]
        self.ingestion.start(0)
        return self

    def ingestion_stub(self):
        ch = channel(self.ingestion.address)
        self.channels.append(ch)
        return ingestion_pb2_grpc.IngestionStub(ch)

    def identity_stub(self):
        ch = channel(self.identity.address)
        self.channels.append(ch)
        return identity_pb2_grpc.IdentityStub(ch)

    def drain(self, timeout: float):
        def alive():
            for s in (self.identity, self.ingestion):
                if not s.alive():
                    raise AssertionError(f"{s.name} died while the outboxes drained: {s.exit_description()}")
        return wait_drained(lambda: self.ingestion.address, lambda: self.identity.address, timeout, self.fake,
                            on_poll=alive)

    def diagnostics(self) -> str:
        return diagnostics([self.identity, self.ingestion], self.fake)

    def close(self):
        for ch in self.channels:
            ch.close()
        for s in (self.ingestion, self.identity):
            if s.alive():
                s.kill()
        self.fake.stop()


def record_updates(updates) -> list:
    return [u for u in updates if u.WhichOneof("update") == "record"]


def check_exactly_once(updates, stored: dict[str, set[int]]) -> list[str]:
    """Every (key, version) ingestion stored arrived exactly once as an AnnotatedRecord, nothing else did."""
    problems = []
    counts: dict[tuple[str, int], int] = {}
    for u in record_updates(updates):
        st = u.record.stored
        pair = (st.record.key, st.version)
        counts[pair] = counts.get(pair, 0) + 1
    expected = {(k, v) for k, vs in stored.items() for v in vs}
    missing = sorted(expected - counts.keys())
    extra = sorted(counts.keys() - expected)
    twice = sorted((p, n) for p, n in counts.items() if n > 1)
    if missing:
        problems.append(f"{len(missing)} of {len(expected)} stored records never reached profile, e.g. {missing[:5]}")
    if extra:
        problems.append(f"{len(extra)} records reached profile that ingestion did not store, e.g. {extra[:5]}")
    if twice:
        problems.append(f"{len(twice)} records reached profile more than once (as new sequences), e.g. {twice[:5]}")
    return problems


# ---------------------------------------------------------------------------------------------------
# 1. The running example, with a flaky profile
# ---------------------------------------------------------------------------------------------------

MKTO1, MKTO2, MDM1 = source("Marketo:mkto-1"), source("Marketo:mkto-2"), source("MDM:mdm-1")
TS = "2026-04-18T10:00:00Z"


def test_running_example_with_flaky_profile(tmp_path):
    _require_binaries()
    fail_rate = _env("IDENTITY_EXAMPLE_FAIL_RATE", 0.3, float)
    # The first two calls fail (before applying, then after applying); then ~30% at random.
    fake = FakeProfile(fail_rate=fail_rate, seed=11, after_apply_share=0.5, forced_failures=2).start()
    # Small forwarding batches on both hops: many calls, so that failures land between updates.
    pipe = Pipeline(tmp_path, fake, identity_args=["--forward-batch-size", "1"],
                    ingestion_args=["--forward-batch-size", "3"])
    problems: list[str] = []
    try:
        pipe.start()
        ing = pipe.ingestion_stub()
        for src, what in ((MKTO1, "Marketo instance 1"), (MKTO2, "Marketo instance 2"), (MDM1, "MDM crosswalk")):
            ing.CreateSource(ingestion_pb2.CreateSourceRequest(source=src, description=what), timeout=10)

        # Persons first (their account references create the account nodes), then the accounts and
        # opportunities, then the crosswalk that merges A1's and A2's clusters.
        ingest(ing, MKTO1, "person", csv_text(PERSON_COLUMNS, [
            ("101", "p1@townsend.com", "Pat", "One", "Contact", "A1", None, TS),
            ("102", "p2@townsend.com", "Paul", "Okafor", "Contact", "A1", None, TS),
        ]), key="m1-persons", expect_records=2)
        ingest(ing, MKTO2, "person", csv_text(PERSON_COLUMNS, [
            ("2102", "p2@townsend.com", "Paul", "Okafor", "Contact", "A2", None, TS),
            ("2103", "p3@townsend.com", "Mei", "Tanaka", "Contact", "A2", None, TS),
        ]), key="m2-persons", expect_records=2)
        ingest(ing, MKTO1, "account", csv_text(ACCOUNT_COLUMNS, [("A1", "Townsend, Inc.", "townsend.com", TS)]),
               key="m1-accounts", expect_records=1)
        ingest(ing, MKTO2, "account", csv_text(ACCOUNT_COLUMNS, [("A2", "Townsend Inc", "townsend.com", TS)]),
               key="m2-accounts", expect_records=1)
        ingest(ing, MKTO1, "opportunity", csv_text(OPPORTUNITY_COLUMNS, [
            ("O1", "A1", "Townsend - Rollout", "Closed Won", "200000", "USD", "true", "true", "2026-03-31", TS)]),
            key="m1-opps", expect_records=1)
        ingest(ing, MKTO2, "opportunity", csv_text(OPPORTUNITY_COLUMNS, [
            ("O2", "A2", "Townsend - Expansion", "Negotiation", "900000", "USD", "false", "false", "2026-09-30", TS)]),
            key="m2-opps", expect_records=1)
        ingest(ing, MDM1, "identityLink", csv_text(MDM_COLUMNS, [
            ("M-ACC-TOWNSEND", "account", "Marketo:mkto-1", "A1"),
            ("M-ACC-TOWNSEND", "account", "Marketo:mkto-2", "A2"),
        ]), fmt=ingestion_pb2.FORMAT_MDM_CSV, key="mdm-crosswalk", expect_records=2)

        t0 = time.monotonic()
        _, idn_status = pipe.drain(timeout=60)
        log(f"running example drained in {time.monotonic() - t0:.1f}s; {fake.summary()}")

        keys = {
            "p1": source_key("101", MKTO1), "p2a": source_key("102", MKTO1),
            "p2b": source_key("2102", MKTO2), "p3": source_key("2103", MKTO2),
            "A1": source_key("A1", MKTO1), "A2": source_key("A2", MKTO2),
            "O1": source_key("O1", MKTO1), "O2": source_key("O2", MKTO2),
        }

        # --- identity's answers ---
        idn = pipe.identity_stub()
        p2 = resolve(idn, E.ENTITY_TYPE_PERSON, ident("email", "p2@townsend.com"))
        if source_keys(p2) != {keys["p2a"], keys["p2b"]}:
            problems.append(f"p2@townsend.com's cluster {p2.cluster_id} holds source keys {sorted(source_keys(p2))}, "
                            f"expected {keys['p2a']} and {keys['p2b']}")
        a1 = resolve(idn, E.ENTITY_TYPE_ACCOUNT, sk(keys["A1"]))
        a2 = resolve(idn, E.ENTITY_TYPE_ACCOUNT, sk(keys["A2"]))
        master = resolve(idn, E.ENTITY_TYPE_ACCOUNT, ident("mdm", "M-ACC-TOWNSEND"))
        if not (a1.cluster_id == a2.cluster_id == master.cluster_id):
            problems.append(f"A1 is in account cluster {a1.cluster_id}, A2 in {a2.cluster_id}, the master id in "
                            f"{master.cluster_id}: expected one cluster")
        if source_keys(a1) != {keys["A1"], keys["A2"]}:
            problems.append(f"the account cluster holds source keys {sorted(source_keys(a1))}, expected A1 and A2")
        p1 = resolve(idn, E.ENTITY_TYPE_PERSON, ident("email", "p1@townsend.com"))
        p3 = resolve(idn, E.ENTITY_TYPE_PERSON, ident("email", "p3@townsend.com"))
        if len({p1.cluster_id, p2.cluster_id, p3.cluster_id}) != 3:
            problems.append(f"p1, p2, p3 are in person clusters {p1.cluster_id}, {p2.cluster_id}, {p3.cluster_id}: "
                            f"expected three different ones")
        if source_keys(p1) != {keys["p1"]} or source_keys(p3) != {keys["p3"]}:
            problems.append(f"p1's cluster holds {sorted(source_keys(p1))}, p3's {sorted(source_keys(p3))}")
        person_cluster = {k: resolve(idn, E.ENTITY_TYPE_PERSON, sk(keys[k])).cluster_id
                          for k in ("p1", "p2a", "p2b", "p3")}

        # --- what profile got ---
        updates = fake.snapshot()
        problems += [f"fake profile: {p}" for p in fake.problems]
        problems += check_contiguous(updates)
        stored = ingestion_store_versions(pipe.ingestion.data_dir)
        if set(stored) != set(keys.values()) | {
                f"M-ACC-TOWNSEND/{keys['A1']}@mdm-1.MDM", f"M-ACC-TOWNSEND/{keys['A2']}@mdm-1.MDM"}:
            problems.append(f"ingestion stored keys {sorted(stored)}")
        problems += check_exactly_once(updates, stored)
        if idn_status.forwarded_updates != fake.highest:
            problems.append(f"identity says it forwarded {idn_status.forwarded_updates} updates, profile applied "
                            f"{fake.highest}")
        if fail_rate > 0 and not (fake.failed_before and fake.failed_after and fake.skipped):
            problems.append(f"the retry paths did not all run: {fake.summary()}")

        by_key = {u.record.stored.record.key: u for u in record_updates(updates)}
        expected_type = {"p1": E.ENTITY_TYPE_PERSON, "p2a": E.ENTITY_TYPE_PERSON, "p2b": E.ENTITY_TYPE_PERSON,
                         "p3": E.ENTITY_TYPE_PERSON, "A1": E.ENTITY_TYPE_ACCOUNT, "A2": E.ENTITY_TYPE_ACCOUNT,
                         "O1": E.ENTITY_TYPE_OPPORTUNITY, "O2": E.ENTITY_TYPE_OPPORTUNITY}
        for name, key in keys.items():
            u = by_key.get(key)
            if u is None:
                continue  # reported above
            if u.record.entity_type != expected_type[name] or u.record.cluster_id == 0:
                problems.append(f"{key}: annotated as {ENTITY_NAME[u.record.entity_type]} cluster "
                                f"{u.record.cluster_id}, expected {ENTITY_NAME[expected_type[name]]} with a cluster")
        persons = MergeFollower(updates, E.ENTITY_TYPE_PERSON)
        accounts = MergeFollower(updates, E.ENTITY_TYPE_ACCOUNT)
        if persons.others or accounts.others:
            problems.append(f"unexpected cluster changes other than MERGED: {persons.others + accounts.others}")
        if not accounts.merges:
            problems.append("no MERGED change of the ACCOUNT graph reached profile (the crosswalk should join the "
                            "clusters of A1 and A2)")
        for name in ("p1", "p2a", "p2b", "p3"):
            u = by_key.get(keys[name])
            if u is None:
                continue
            got = persons.after(u.record.cluster_id, u.sequence)
            if got != person_cluster[name]:
                problems.append(f"{keys[name]}: annotated with person cluster {u.record.cluster_id} (seq "
                                f"{u.sequence}), {got} after the later merges; Resolve says {person_cluster[name]}")
        moved = 0
        for name in ("p1", "p2a", "p2b", "p3", "O1", "O2"):
            u = by_key.get(keys[name])
            if u is None:
                continue
            refs = [r for r in u.record.references if r.role == "account"]
            if len(refs) != 1 or refs[0].entity_type != E.ENTITY_TYPE_ACCOUNT:
                problems.append(f"{keys[name]}: account references {list(refs)}, expected one to an ACCOUNT")
                continue
            final = accounts.after(refs[0].cluster_id, u.sequence)
            moved += final != refs[0].cluster_id
            if final != a1.cluster_id:
                problems.append(f"{keys[name]} (seq {u.sequence}) names account cluster {refs[0].cluster_id}, "
                                f"{final} after the later ACCOUNT merges; Resolve says {a1.cluster_id}")
        if moved == 0:
            problems.append("no account reference was moved by a merge: the example does not exercise merges")
        # The surviving id names the cluster; a merged-away id no longer does (profile learnt of the merge
        # from the stream).
        got = idn.GetCluster(identity_pb2.GetClusterRequest(entity_type=E.ENTITY_TYPE_ACCOUNT, id=a1.cluster_id),
                             timeout=10)
        if got.id != a1.cluster_id or {i.value for i in got.identities} != {i.value for i in a1.identities}:
            problems.append(f"GetCluster(ACCOUNT, id={a1.cluster_id}) answered {got}, expected Resolve's cluster")
        for _, froms, into in accounts.merges:
            for gone in froms:
                try:
                    got = idn.GetCluster(identity_pb2.GetClusterRequest(entity_type=E.ENTITY_TYPE_ACCOUNT, id=gone),
                                         timeout=10)
                    problems.append(f"GetCluster(ACCOUNT, id={gone}) (merged into {into}) answered cluster {got.id}, "
                                    "expected NOT_FOUND")
                except grpc.RpcError as error:
                    if error.code() != grpc.StatusCode.NOT_FOUND:
                        problems.append(f"GetCluster(ACCOUNT, id={gone}) failed with {error.code()}, expected NOT_FOUND")
        if idn_status.last_error:
            problems.append(f"identity's outbox is empty but last_error is still {idn_status.last_error!r}")
        log(f"{len(updates)} updates; account merges {accounts.merges}; {moved} account references moved by them")

        for s in (pipe.ingestion, pipe.identity):
            if not s.stop():
                problems.append(f"{s.name} did not exit with status 0 on SIGTERM ({s.exit_description()})")
        if problems:
            pytest.fail(f"{len(problems)} problem(s):\n- " + "\n- ".join(problems) +
                        f"\n{pipe.diagnostics()}\n(data and logs in {tmp_path})", pytrace=False)
    except pytest.fail.Exception:
        raise  # the message has the diagnostics
    except BaseException:
        log(pipe.diagnostics())
        raise
    finally:
        pipe.close()


# ---------------------------------------------------------------------------------------------------
# 2. SIGKILL of cdp-identity during forwarding
# ---------------------------------------------------------------------------------------------------

CRASH_SOURCES = [source("Marketo:mkto-1"), source("Marketo:mkto-2"), source("Salesforce:sf-1")]
CRASH_MDM = source("MDM:mdm-1")
ID_PREFIX = ["m1-", "m2-", "sf-"]


class Dataset:
    """The synthetic data and its ground truth.

    Person i appears in 1-3 of the sources (record id ``{prefix}{i}``). Each record carries the
    person's email (E), ecid (C) or both (EC); a person whose records have E and C also has an EC
    record, so its records are connected, and clusters merge when the EC record arrives after the
    others. Every record of person i names account ACC{i % accounts} of its own source. Accounts
    with j % 4 != 3 are one company in all three sources (crosswalk rows to master M-{j})."""

    def __init__(self, persons: int, seed: int, accounts: int = 400):
        rng = random.Random(seed)
        self.accounts = accounts
        self.person_keys: list[list[str]] = []  # person -> its source keys
        self.person_lookup: list[tuple[str, str]] = []  # person -> (namespace, value) to Resolve it by
        self.person_account: dict[str, str] = {}  # person record key -> its account's source key
        rows: list[list[list]] = [[] for _ in CRASH_SOURCES]  # per source, person rows
        for i in range(persons):
            k = rng.choices([1, 2, 3], weights=[25, 40, 35])[0]
            srcs = rng.sample(range(len(CRASH_SOURCES)), k)
            variants = [rng.choice(["E", "E", "C", "EC"]) for _ in srcs]
            if "E" in variants and "C" in variants and "EC" not in variants:
                variants[variants.index("C")] = "EC"
            email = f"person{i}.s{seed}@co{i % 211}.example"
            ecid = f"ECID-{seed}-{i:08d}"
            keys = []
            for s, v in zip(srcs, variants):
                pid = f"{ID_PREFIX[s]}{i}"
                acct = f"ACC{i % accounts}"
                rows[s].append([pid, email if "E" in v else None, "First", f"Last{i}", "Contact", acct,
                                ecid if "C" in v else None, "2026-03-01T00:00:00Z"])
                key = source_key(pid, CRASH_SOURCES[s])
                keys.append(key)
                self.person_account[key] = source_key(acct, CRASH_SOURCES[s])
            self.person_keys.append(keys)
            self.person_lookup.append(("email", email) if any("E" in v for v in variants) else ("ecid", ecid))
        for r in rows:
            rng.shuffle(r)
        self.person_rows = rows
        self.account_rows = [[[f"ACC{j}", f"Company {j}", f"company{j}.example", "2026-02-01T00:00:00Z"]
                              for j in range(accounts)] for _ in CRASH_SOURCES]
        self.linked = [j for j in range(accounts) if j % 4 != 3]
        xw = [[f"M-{j}", "account", f"{s.type}:{s.instance}", f"ACC{j}"] for j in self.linked for s in CRASH_SOURCES]
        rng.shuffle(xw)
        self.crosswalk_rows = xw
        self.total_records = sum(len(r) for r in rows) + accounts * len(CRASH_SOURCES) + len(xw)

    def account_groups(self) -> list[tuple[str | None, list[str]]]:
        """(master id or None, the account source keys that must be one cluster)."""
        out = []
        for j in range(self.accounts):
            keys = [source_key(f"ACC{j}", s) for s in CRASH_SOURCES]
            if j % 4 != 3:
                out.append((f"M-{j}", keys))
            else:
                out.extend((None, [k]) for k in keys)
        return out

    def batches(self):
        """(source, entity, format, csv text, idempotency key, records) in upload order: persons part 1
        of each source, accounts of source 1, crosswalk part 1; persons part 2, accounts of sources 2 and
        3, crosswalk part 2."""
        out = []
        half_x = len(self.crosswalk_rows) // 2
        for part in (0, 1):
            for s, src in enumerate(CRASH_SOURCES):
                r = self.person_rows[s]
                half = len(r) // 2
                chunk = r[:half] if part == 0 else r[half:]
                out.append((src, "person", ingestion_pb2.FORMAT_CANONICAL_CSV, csv_text(PERSON_COLUMNS, chunk),
                            f"persons-{s}-{part}", len(chunk)))
            for s in ([0] if part == 0 else [1, 2]):
                out.append((CRASH_SOURCES[s], "account", ingestion_pb2.FORMAT_CANONICAL_CSV,
                            csv_text(ACCOUNT_COLUMNS, self.account_rows[s]), f"accounts-{s}", self.accounts))
            xw = self.crosswalk_rows[:half_x] if part == 0 else self.crosswalk_rows[half_x:]
            out.append((CRASH_MDM, "identityLink", ingestion_pb2.FORMAT_MDM_CSV, csv_text(MDM_COLUMNS, xw),
                        f"crosswalk-{part}", len(xw)))
        return out


def test_identity_sigkill_during_forwarding(tmp_path):
    _require_binaries()
    persons = _env("IDENTITY_CRASH_PERSONS", 14000)
    kills = _env("IDENTITY_CRASH_KILLS", 3)
    seed = _env("IDENTITY_CRASH_SEED", 7)
    fail_rate = _env("IDENTITY_CRASH_FAIL_RATE", 0.1, float)
    rng = random.Random(seed)
    data = Dataset(persons, seed)
    total = data.total_records
    # Kill points: fractions of all records applied at profile, spread over the run.
    fractions = sorted(rng.uniform(0.05 + 0.85 * i / kills, 0.05 + 0.85 * (i + 1) / kills) for i in range(kills))
    kill_at = [int(f * total) for f in fractions]
    port = free_port()
    log(f"seed {seed}: {persons} persons, {total} records in all; identity on port {port}; SIGKILL when profile "
        f"has applied {kill_at} records; fake profile fails {fail_rate:.0%} of calls")

    fake = FakeProfile(fail_rate=fail_rate, seed=seed, after_apply_share=0.5, forced_failures=2).start()
    pipe = Pipeline(tmp_path, fake, identity_args=["--forward-batch-size", "250"],
                    ingestion_args=["--forward-batch-size", "500"], identity_port=port)
    problems: list[str] = []
    kill_log: list[str] = []
    killer_errors: list[str] = []
    stop = threading.Event()

    def killer():
        krng = random.Random(seed + 1)
        try:
            for n, target in enumerate(kill_at, 1):
                while fake.records_applied < target:
                    if stop.wait(0.005):
                        return
                time.sleep(krng.uniform(0, 0.03))
                was_alive = pipe.identity.alive()
                applied = fake.records_applied
                pipe.identity.kill()
                kill_log.append(f"kill {n} at {time.monotonic() - t_start:.1f}s: profile had applied {applied} "
                                f"records (highest seq {fake.highest}), identity generation "
                                f"{pipe.identity.generation} {'running' if was_alive else 'ALREADY DEAD'}, "
                                f"{pending_after_kill()}")
                if not was_alive:
                    killer_errors.append(f"identity was not running at kill {n}: {pipe.identity.exit_description()}")
                time.sleep(krng.uniform(0.05, 0.4))  # ingestion's calls fail meanwhile
                pipe.identity.start(port)
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            killer_errors.append(f"killer: {e!r}")

    def pending_after_kill() -> str:
        """What was still to forward on both hops when identity died (for the log)."""
        parts = []
        try:
            db = sqlite3.connect(f"file:{pipe.identity.data_dir / 'identity.sqlite'}?mode=ro", uri=True, timeout=5)
            try:
                n, lo, hi = db.execute("SELECT count(*), min(sequence), max(sequence) FROM outbox").fetchone()
            finally:
                db.close()
            parts.append(f"identity's outbox held {n} unacknowledged updates ({lo}..{hi})")
        except sqlite3.Error as e:
            parts.append(f"identity's outbox unreadable ({e})")
        try:
            with grpc.insecure_channel(pipe.ingestion.address) as ch:
                st = ingestion_pb2_grpc.IngestionStub(ch).GetOutboxStatus(ingestion_pb2.GetOutboxStatusRequest(),
                                                                         timeout=5)
            parts.append(f"ingestion had {st.pending_records} records to forward")
        except grpc.RpcError as e:
            parts.append(f"ingestion's status unavailable ({e.code().name})")
        return ", ".join(parts)

    thread = threading.Thread(target=killer, name="killer", daemon=True)
    t_start = time.monotonic()
    try:
        pipe.start()
        ing = pipe.ingestion_stub()
        for src in [*CRASH_SOURCES, CRASH_MDM]:
            ing.CreateSource(ingestion_pb2.CreateSourceRequest(source=src), timeout=10)
        thread.start()
        batches = data.batches()
        for src, entity, fmt, text, key, n in batches:
            ingest(ing, src, entity, text, fmt=fmt, key=key, expect_records=n)
        log(f"uploaded {len(batches)} batches in {time.monotonic() - t_start:.1f}s; "
            f"profile has {fake.records_applied} records so far")
        thread.join(timeout=90)
        if thread.is_alive():
            stop.set()
            thread.join(5)
            raise AssertionError(f"the kill points were not all reached within 90 s: {kill_log}; {fake.summary()}")
        if killer_errors:
            raise AssertionError("; ".join(killer_errors))
        for k in kill_log:
            log(k)
        _, idn_status = pipe.drain(timeout=90)
        log(f"drained {time.monotonic() - t_start:.1f}s after the start; {fake.summary()}")

        # --- the stream ---
        updates = fake.snapshot()
        problems += [f"fake profile: {p}" for p in fake.problems]
        problems += check_contiguous(updates)
        stored = ingestion_store_versions(pipe.ingestion.data_dir)
        if sum(len(v) for v in stored.values()) != total:
            problems.append(f"ingestion stored {sum(len(v) for v in stored.values())} records, generated {total}")
        problems += check_exactly_once(updates, stored)
        if idn_status.forwarded_updates != fake.highest or idn_status.pending_updates:
            problems.append(f"identity's outbox status {idn_status} vs {fake.highest} updates applied at profile")

        persons_f = MergeFollower(updates, E.ENTITY_TYPE_PERSON)
        accounts_f = MergeFollower(updates, E.ENTITY_TYPE_ACCOUNT)
        if persons_f.others or accounts_f.others:
            problems.append(f"unexpected non-MERGED cluster changes: {(persons_f.others + accounts_f.others)[:5]}")
        recs = {u.record.stored.record.key: u for u in record_updates(updates)}
        final_cluster = {}  # record key -> final cluster id from the stream
        stale_refs = []
        for key, u in recs.items():
            f = persons_f if u.record.entity_type == E.ENTITY_TYPE_PERSON else accounts_f
            if not f.alive_at(u.record.cluster_id, u.sequence):
                stale_refs.append(f"{key} annotated with cluster {u.record.cluster_id} merged away at seq "
                                  f"{f.dead_at[u.record.cluster_id]} <= {u.sequence}")
            final_cluster[key] = f.final(u.record.cluster_id)

        # Persons: the stream's final clusters partition the records exactly like the generator.
        owner: dict[int, int] = {}
        split_persons, shared = [], []
        for i, keys in enumerate(data.person_keys):
            clusters = {final_cluster.get(k) for k in keys}
            if len(clusters) != 1 or None in clusters:
                split_persons.append((i, keys, sorted(c or 0 for c in clusters)))
                continue
            c = clusters.pop()
            if c in owner:
                shared.append((owner[c], i, c))
            owner[c] = i
        if split_persons:
            problems.append(f"{len(split_persons)} generated persons are not one cluster in the stream, e.g. "
                            f"{split_persons[:3]}")
        if shared:
            problems.append(f"{len(shared)} clusters hold records of two generated persons, e.g. {shared[:3]}")
        # Accounts: each company one cluster, different companies different clusters.
        acct_cluster: dict[str, int] = {}
        seen_acct: dict[int, str] = {}
        bad_accounts = []
        for master, keys in data.account_groups():
            clusters = {final_cluster.get(k) for k in keys}
            if master is not None:
                x = next((final_cluster.get(f"{master}/{k}@mdm-1.MDM") for k in keys), None)
                clusters.add(x)
            if len(clusters) != 1 or None in clusters:
                bad_accounts.append((master, keys, sorted(c or 0 for c in clusters)))
                continue
            c = clusters.pop()
            if c in seen_acct:
                bad_accounts.append((master, keys, f"cluster {c} shared with {seen_acct[c]}"))
            seen_acct[c] = master or keys[0]
            for k in keys:
                acct_cluster[k] = c
        if bad_accounts:
            problems.append(f"{len(bad_accounts)} account groups wrong in the stream, e.g. {bad_accounts[:3]}")
        # Person -> account references, moved through the later ACCOUNT merges.
        bad_refs = []
        for key, acct_key in data.person_account.items():
            u = recs.get(key)
            if u is None:
                continue
            refs = [r for r in u.record.references if r.role == "account"]
            if len(refs) != 1:
                bad_refs.append(f"{key}: account references {list(refs)}")
                continue
            ref = refs[0].cluster_id
            if not accounts_f.alive_at(ref, u.sequence):
                stale_refs.append(f"{key} (seq {u.sequence}) names account cluster {ref}, merged away at seq "
                                  f"{accounts_f.dead_at[ref]}")
            if accounts_f.final(ref) != acct_cluster.get(acct_key):
                bad_refs.append(f"{key} (seq {u.sequence}) names account cluster {ref} -> "
                                f"{accounts_f.final(ref)}, its account {acct_key} is in {acct_cluster.get(acct_key)}")
        if bad_refs:
            problems.append(f"{len(bad_refs)} person account references end in the wrong cluster, e.g. {bad_refs[:3]}")
        if stale_refs:
            problems.append(f"{len(stale_refs)} annotations name clusters that no longer existed, e.g. "
                            f"{stale_refs[:3]}")
        log(f"stream: {len(updates)} updates, {len(recs)} records, {len(persons_f.merges)} person merges, "
            f"{len(accounts_f.merges)} account merges, {len(owner)} person clusters for {persons} persons")
        if not persons_f.merges or not accounts_f.merges:
            problems.append("the data did not make both graphs merge; the test lost its point")

        # --- identity's answers for a sample ---
        idn = pipe.identity_stub()
        srng = random.Random(seed + 2)
        bad_resolve = []
        for i in srng.sample(range(persons), min(150, persons)):
            ns, value = data.person_lookup[i]
            resp = call_with_retry(lambda: resolve(idn, E.ENTITY_TYPE_PERSON, ident(ns, value)), 20,
                                   f"Resolve person {ns}:{value}")
            want = set(data.person_keys[i])
            stream_c = final_cluster.get(data.person_keys[i][0])
            if source_keys(resp) != want or resp.cluster_id != stream_c:
                bad_resolve.append(f"{ns}:{value} -> cluster {resp.cluster_id} with {sorted(source_keys(resp))}; "
                                   f"expected {sorted(want)} in the stream's cluster {stream_c}")
        groups = data.account_groups()
        for master, keys in srng.sample(groups, min(60, len(groups))):
            what = ident("mdm", master) if master else sk(keys[0])
            resp = call_with_retry(lambda: resolve(idn, E.ENTITY_TYPE_ACCOUNT, what), 20, f"Resolve account {what}")
            if source_keys(resp) != set(keys) or resp.cluster_id != acct_cluster.get(keys[0]):
                bad_resolve.append(f"account {what.namespace}:{what.value} -> cluster {resp.cluster_id} with "
                                   f"{sorted(source_keys(resp))}; expected {sorted(keys)} in the stream's cluster "
                                   f"{acct_cluster.get(keys[0])}")
        if bad_resolve:
            problems.append(f"{len(bad_resolve)} Resolve answers differ from the ground truth, e.g. {bad_resolve[:4]}")

        for s in (pipe.ingestion, pipe.identity):
            if not s.stop():
                problems.append(f"{s.name} did not exit with status 0 on SIGTERM ({s.exit_description()})")
        log(f"crash test total {time.monotonic() - t_start:.1f}s")
        if problems:
            pytest.fail(f"{len(problems)} problem(s):\n- " + "\n- ".join(problems) + "\nkills: " +
                        "; ".join(kill_log) + f"\n{pipe.diagnostics()}\n(data and logs in {tmp_path})",
                        pytrace=False)
    except pytest.fail.Exception:
        raise  # the message has the diagnostics
    except BaseException:
        stop.set()
        log("kills: " + "; ".join(kill_log))
        log(pipe.diagnostics())
        raise
    finally:
        stop.set()
        pipe.close()


# ---------------------------------------------------------------------------------------------------
# 3. Unhappy paths against cdp-identity
# ---------------------------------------------------------------------------------------------------

def _expect_error(fn, code, what: str) -> str:
    try:
        resp = fn()
    except grpc.RpcError as e:
        assert e.code() == code, f"{what}: expected {code.name}, got {e.code().name}: {e.details()}"
        return e.details() or ""
    raise AssertionError(f"{what}: expected {code.name}, got an answer: {resp}")


def test_identity_unhappy_paths(tmp_path):
    _require_binaries()
    svc = Service("identity", IDENTITY_BIN, "CDP_IDENTITY_BIN", tmp_path / "identity-data", tmp_path, [])
    ch = None
    try:
        svc.start(0)
        ch = channel(svc.address)
        stub = identity_pb2_grpc.IdentityStub(ch)
        INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND

        # One known person, so that "unknown" is not just "empty graph".
        rec = model_pb2.Record(key="1@mkto-1.Marketo", source=MKTO1,
                               person=model_pb2.Person(person_id="1", email="known@townsend.com"))
        ok = stub.AcceptRecords(identity_pb2.AcceptRecordsRequest(
            sender="test", records=[identity_pb2.StoredRecord(sequence=1, batch_id="b1", version=42, record=rec)]),
            timeout=10)
        assert (ok.accepted, ok.duplicates) == (1, 0), f"AcceptRecords of one valid record answered {ok}"
        resolve(stub, E.ENTITY_TYPE_PERSON, ident("email", "known@townsend.com"))

        msg = _expect_error(lambda: resolve(stub, E.ENTITY_TYPE_PERSON, ident("email", "nobody@nowhere.example")),
                            NOT_FOUND, "Resolve of an unknown email")
        assert "nobody@nowhere.example" in msg, f"NOT_FOUND message does not name the identity: {msg!r}"
        _expect_error(lambda: resolve(stub, E.ENTITY_TYPE_ACCOUNT, sk("1@mkto-1.Marketo")), NOT_FOUND,
                      "Resolve of a person's source key in the ACCOUNT graph")

        for et in (E.ENTITY_TYPE_EVENT, E.ENTITY_TYPE_UNSPECIFIED, E.ENTITY_TYPE_CAMPAIGN_MEMBER):
            msg = _expect_error(lambda: resolve(stub, et, ident("email", "known@townsend.com")), INVALID,
                                f"Resolve in entity type {ENTITY_NAME[et]}")
            flat = msg.lower().replace("_", "").replace(" ", "")
            missing = [n for n in ("PERSON", "ACCOUNT", "OPPORTUNITY", "CAMPAIGN", "MARKETING_LIST")
                       if n.lower().replace("_", "") not in flat]
            assert not missing, f"INVALID_ARGUMENT for {ENTITY_NAME[et]} does not name the valid types {missing}: {msg!r}"
        _expect_error(lambda: resolve(stub, E.ENTITY_TYPE_PERSON, ident("", "known@townsend.com")), INVALID,
                      "Resolve without a namespace")

        # AcceptRecords: records[1] has no key -> INVALID_ARGUMENT naming records[1], nothing taken.
        good = model_pb2.Record(key="7@mkto-1.Marketo", source=MKTO1,
                                person=model_pb2.Person(person_id="7", email="seven@townsend.com"))
        nokey = model_pb2.Record(source=MKTO1, person=model_pb2.Person(person_id="8", email="eight@townsend.com"))
        noentity = model_pb2.Record(key="9@mkto-1.Marketo", source=MKTO1)
        for bad, what in ((nokey, "no key"), (noentity, "no entity")):
            req = identity_pb2.AcceptRecordsRequest(sender="test", records=[
                identity_pb2.StoredRecord(sequence=10, batch_id="b2", version=7, record=good),
                identity_pb2.StoredRecord(sequence=11, batch_id="b2", version=8, record=bad)])
            msg = _expect_error(lambda: stub.AcceptRecords(req, timeout=10), INVALID, f"AcceptRecords with {what}")
            assert "records[1]" in msg, f"AcceptRecords with {what}: the message does not name records[1]: {msg!r}"
            _expect_error(lambda: resolve(stub, E.ENTITY_TYPE_PERSON, sk("7@mkto-1.Marketo")), NOT_FOUND,
                          f"the valid record of the refused call ({what}) must not be taken")
        missing_record = identity_pb2.AcceptRecordsRequest(sender="test", records=[
            identity_pb2.StoredRecord(sequence=12, batch_id="b3", version=9)])
        msg = _expect_error(lambda: stub.AcceptRecords(missing_record, timeout=10), INVALID,
                            "AcceptRecords with a stored record without its record")
        assert "records[0]" in msg, f"the message does not name records[0]: {msg!r}"
        status = stub.GetOutboxStatus(identity_pb2.GetOutboxStatusRequest(), timeout=10)
        assert status.pending_updates == 1, (f"only the one valid record should have produced an update (no "
                                             f"profile configured, so it stays pending): {status}")

        # ListConflicts: bad page tokens.
        stub.ListConflicts(identity_pb2.ListConflictsRequest(), timeout=10)
        for token in ("not-a-token", "-5", "0", "1.5", "99999999999999999999999"):
            msg = _expect_error(lambda: stub.ListConflicts(identity_pb2.ListConflictsRequest(page_token=token),
                                                           timeout=10),
                                INVALID, f"ListConflicts with page_token {token!r}")
            assert "page_token" in msg, f"the message does not name page_token: {msg!r}"
        _expect_error(lambda: stub.ListConflicts(identity_pb2.ListConflictsRequest(
            entity_type=E.ENTITY_TYPE_EVENT), timeout=10), INVALID, "ListConflicts of the EVENT graph")
        assert svc.alive(), f"identity died during the unhappy paths: {svc.exit_description()}"
    except BaseException:
        log(diagnostics([svc]))
        raise
    finally:
        if ch is not None:
            ch.close()
        if svc.alive():
            svc.kill()

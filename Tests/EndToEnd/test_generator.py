"""Tests of Benchmarks/b2b_generator.py and Benchmarks/ground_truth.py.compare_clusters (no services).

Run: .venv/bin/python -m pytest Tests/EndToEnd -q -p no:cacheprovider
"""

from __future__ import annotations

import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "Benchmarks"))
import b2b_generator  # noqa: E402
from ground_truth import compare_clusters, load_truth  # noqa: E402

SIZES = {"persons": 2000, "accounts": 400, "opportunities": 1000, "events": 10000}
PLACEHOLDERS = {"", "null", "nil", "n/a", "na", "none", "unknown", "-1", "0", "undefined"}
SUFFIX = {"Salesforce:sfdc-1": "@sfdc-1.Salesforce", "Marketo:mkto-1": "@mkto-1.Marketo",
          "Marketo:mkto-2": "@mkto-2.Marketo"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("b2b") / "a"
    b2b_generator.generate(out, seed=42, **SIZES)
    return out


def _tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _rows(directory: Path, manifest: dict, entity: str):
    """(source, row dict) for every record of `entity` over all its files."""
    for f in manifest["files"]:
        if f["entity"] != entity:
            continue
        with open(directory / f["path"], newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                yield f["source"], row


def test_determinism(dataset: Path, tmp_path: Path) -> None:
    b2b_generator.generate(tmp_path / "b", seed=42, **SIZES)
    b2b_generator.generate(tmp_path / "c", seed=43, **SIZES)
    first, same, other = _tree(dataset), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert first == same
    assert first.keys() == other.keys()
    assert all(first[name] != other[name] for name in first if name.endswith("person.csv"))


def test_sizes_and_manifest_counts(dataset: Path) -> None:
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["sizes"] == SIZES
    records = manifest["records"]
    # Persons, accounts, opportunities and events are exact; the rest follow documented ratios.
    assert (records["person"], records["account"], records["opportunity"], records["event"]) == (
        SIZES["persons"], SIZES["accounts"], SIZES["opportunities"], SIZES["events"])
    assert abs(records["campaignMember"] - 0.3 * SIZES["persons"]) <= 0.05 * SIZES["persons"]
    assert abs(records["marketingListMember"] - 0.2 * SIZES["persons"]) <= 0.05 * SIZES["persons"]
    per_entity: dict[str, int] = defaultdict(int)
    for f in manifest["files"]:
        lines = (dataset / f["path"]).read_bytes().count(b"\n")
        header = 0 if f["format"] == "ndjson" else 1
        assert lines - header == f["records"], f["path"]
        per_entity[f["entity"]] += f["records"]
    assert {**per_entity, "total": sum(per_entity.values())} == records
    assert [f["entity"] for f in manifest["files"]][-1] == "event"
    assert manifest["files"][0]["entity"] == "account"
    truth = load_truth(dataset)
    assert len(truth.persons) == SIZES["persons"]
    assert len(set(truth.persons.values())) == manifest["truth"]["persons"]
    assert len(set(truth.accounts.values())) == manifest["truth"]["accounts"]
    assert len(set(truth.opportunities.values())) == manifest["truth"]["opportunities"]
    assert len(truth.events) == SIZES["events"]


def test_identities_never_shared_between_true_entities(dataset: Path) -> None:
    manifest = json.loads((dataset / "manifest.json").read_text())
    truth = load_truth(dataset)
    owners: dict[tuple[str, str], set[str]] = defaultdict(set)
    for source, row in _rows(dataset, manifest, "person"):
        person = truth.persons[row["personId"] + SUFFIX[source]]
        assert row["email"].strip().lower() == truth.person_emails[row["personId"] + SUFFIX[source]]
        for field in ("email", "crmId", "ecid"):
            value = row[field].strip().lower()
            if value:
                owners[(field, value)].add(person)
        assert row["personId"]
        for field in ("personId", "crmId", "ecid", "email"):
            assert not row[field] or row[field].strip().lower() not in PLACEHOLDERS
    for source, row in _rows(dataset, manifest, "account"):
        account = truth.accounts[row["accountId"] + SUFFIX[source]]
        for field in ("dunsNumber", "crmId"):
            if row[field]:
                owners[("account " + field, row[field])].add(account)
    for source, row in _rows(dataset, manifest, "opportunity"):
        if row["crmId"]:
            owners[("opportunity crmId", row["crmId"])].add(truth.opportunities[row["opportunityId"] + SUFFIX[source]])
        assert row["isWon"] != "true" or row["isClosed"] == "true"
        assert (row["stage"] == "Closed Won") == (row["isWon"] == "true")
        assert row["stage"].startswith("Closed") == (row["isClosed"] == "true")
    shared = {k: v for k, v in owners.items() if len(v) > 1}
    assert not shared
    # Crosswalk master ids are per true entity too.
    masters: dict[str, set[str]] = defaultdict(set)
    for _, row in _rows(dataset, manifest, "identityLink"):
        key = row["id"] + "@" + row["source"].split(":")[1] + "." + row["source"].split(":")[0]
        masters[row["masterId"]].add((truth.persons if row["entity"] == "person" else truth.accounts)[key])
    assert masters and all(len(v) == 1 for v in masters.values())


def test_references_resolve(dataset: Path) -> None:
    manifest = json.loads((dataset / "manifest.json").read_text())
    truth = load_truth(dataset)
    ids = {"campaign": set(), "marketingList": set()}
    for source, row in _rows(dataset, manifest, "campaign"):
        ids["campaign"].add(row["campaignId"] + SUFFIX[source])
    for source, row in _rows(dataset, manifest, "marketingList"):
        ids["marketingList"].add(row["listId"] + SUFFIX[source])

    def resolve(value: str, source: str) -> str:
        return value if value.endswith((".Salesforce", ".Marketo")) else value + SUFFIX[source]

    checks = [("person", "accountId", truth.accounts), ("opportunity", "accountId", truth.accounts),
              ("accountPersonRelation", "accountId", truth.accounts),
              ("accountPersonRelation", "personId", truth.persons),
              ("opportunityPersonRelation", "opportunityId", truth.opportunities),
              ("opportunityPersonRelation", "personId", truth.persons),
              ("campaignMember", "campaignId", ids["campaign"]), ("campaignMember", "personId", truth.persons),
              ("marketingListMember", "listId", ids["marketingList"]),
              ("marketingListMember", "personId", truth.persons)]
    for entity, field, targets in checks:
        seen = 0
        for source, row in _rows(dataset, manifest, entity):
            if row[field]:
                assert resolve(row[field], source) in targets, (entity, field, row)
                seen += 1
        assert seen, (entity, field)
    # A person names an account of its own true account (accounts.csv maps fragments to true accounts).
    people_accounts = defaultdict(set)
    for source, row in _rows(dataset, manifest, "person"):
        if row["accountId"]:
            people_accounts[truth.persons[row["personId"] + SUFFIX[source]]].add(
                truth.accounts[resolve(row["accountId"], source)])
    assert all(len(v) == 1 for v in people_accounts.values())


def test_events_name_existing_identities(dataset: Path) -> None:
    manifest = json.loads((dataset / "manifest.json").read_text())
    truth = load_truth(dataset)
    by_identity: dict[tuple[str, str], set[str]] = defaultdict(set)
    for source, row in _rows(dataset, manifest, "person"):
        key = row["personId"] + SUFFIX[source]
        person = truth.persons[key]
        by_identity[("personId", key)].add(person)
        if row["email"]:
            by_identity[("email", row["email"].strip().lower())].add(person)
        if row["ecid"]:
            by_identity[("ecid", row["ecid"])].add(person)
    kinds = defaultdict(int)
    with open(dataset / "web-1/event.ndjson", encoding="utf-8") as f:
        for line in f:
            event = json.loads(line)
            named = [k for k in ("personId", "email", "ecid") if k in event]
            assert len(named) == 1, event
            kinds[named[0]] += 1
            owners = by_identity[(named[0], event[named[0]])]
            assert owners == {truth.events[event["eventId"] + "@web-1.Web"]}, event
            assert event["timestamp"] < manifest["end"] and event["url"] in manifest["vocabulary"]["urls"]
    assert (kinds["ecid"], kinds["email"], kinds["personId"]) == (
        manifest["truth"]["events_by_ecid"], manifest["truth"]["events_by_email"],
        manifest["truth"]["events_by_person_key"])


def test_compare_clusters_catches_split_merge_missing_and_duplicate() -> None:
    truth = {"a@s.T": "P1", "b@s.T": "P1", "c@s.T": "P2", "d@s.T": "P3"}
    assert compare_clusters([["a@s.T", "b@s.T"], ["c@s.T"], ["d@s.T"]], truth) == []
    split = compare_clusters([["a@s.T"], ["b@s.T"], ["c@s.T"], ["d@s.T"]], truth)
    assert len(split) == 1 and "P1 is split" in split[0]
    merged = compare_clusters([["a@s.T", "b@s.T", "c@s.T"], ["d@s.T"]], truth)
    assert len(merged) == 1 and "merges 2 true entities" in merged[0]
    missing = compare_clusters([["a@s.T", "b@s.T"], ["c@s.T"]], truth)
    assert missing == ["fragment d@s.T of P3 is in no cluster"]
    twice = compare_clusters([["a@s.T", "b@s.T"], ["c@s.T", "a@s.T"], ["d@s.T"]], truth)
    assert any("in clusters #0 and #1" in line for line in twice)
    many = compare_clusters([[f"{i}@s.T"] for i in range(50)], {f"{i}@s.T": f"P{i // 2}" for i in range(50)})
    assert len(many) == 21 and many[-1].startswith("... ")

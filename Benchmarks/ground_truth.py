"""Compare what profile unified against the ground truth of a b2b_generator.py data set.

Usage:
    .venv/bin/python Benchmarks/ground_truth.py --profile HOST:PORT --truth DIR [--timeout 600]

As a module:

* ``load_truth(dir) -> Truth``: the truth files (fragment source key -> true person / account /
  opportunity, event key -> true person, fragment -> normalised email) and the manifest;
* ``scan_person_views(address)`` / ``scan_account_views(address)``: every person (account) cluster's
  fragment keys, from ``cdp.profile.v1.Profile/ScanPersonViews`` (``ScanAccountViews``) with
  ``as_of`` = the data set's end, so the event window matches the data (views cap their events, so
  they are no check of event exactly-once);
* ``compare_clusters(clusters, truth_map)``: the discrepancies between clusters and the truth, as
  readable lines (at most ~20 plus a total); an empty list is an exact match.

The CLI prints the comparison for persons and accounts and exits 1 on any mismatch. A bearer token
is taken from $CDP_TOKEN when set.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import grpc

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 20
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0), ("grpc.max_receive_message_length", 256 << 20)]


@dataclass
class Truth:
    """A data set's ground truth: source key -> true entity id, per kind, plus its manifest."""

    persons: dict[str, str] = field(default_factory=dict)
    person_emails: dict[str, str] = field(default_factory=dict)
    accounts: dict[str, str] = field(default_factory=dict)
    opportunities: dict[str, str] = field(default_factory=dict)
    events: dict[str, str] = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)


def _read_pairs(path: Path) -> dict[str, str]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        next(rows)
        return {row[0]: row[1] for row in rows}


def load_truth(directory: Path | str, *, events: bool = True) -> Truth:
    """Reads DIR/manifest.json and DIR/truth/*.csv. `events=False` skips the (large) event truth."""
    directory = Path(directory)
    truth = Truth(manifest=json.loads((directory / "manifest.json").read_text()))
    with open(directory / "truth/persons.csv", newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        next(rows)
        for key, person, email in rows:
            truth.persons[key] = person
            truth.person_emails[key] = email
    truth.accounts = _read_pairs(directory / "truth/accounts.csv")
    truth.opportunities = _read_pairs(directory / "truth/opportunities.csv")
    if events:
        truth.events = _read_pairs(directory / "truth/events.csv")
    return truth


def _profile_modules():
    """profile_pb2 and profile_pb2_grpc, generated on import by Tests/Ingestion/protos.py."""
    sys.path.insert(0, str(REPO_ROOT / "Tests" / "Ingestion"))
    import protos  # noqa: F401  (generates the proto modules and puts them on sys.path)
    return (importlib.import_module("cdp.profile.v1.profile_pb2"),
            importlib.import_module("cdp.profile.v1.profile_pb2_grpc"))


def _scan(profile_address: str, method: str, as_of: str | None, timeout: float) -> list[list[str]]:
    profile_pb2, profile_pb2_grpc = _profile_modules()
    request = profile_pb2.ScanRequest(partition=0, partitions=1)
    if as_of:
        request.as_of.FromDatetime(datetime.fromisoformat(as_of.replace("Z", "+00:00")))
    token = os.environ.get("CDP_TOKEN")
    metadata = [("authorization", f"Bearer {token}")] if token else None
    with grpc.insecure_channel(profile_address, options=CHANNEL_OPTIONS) as channel:
        stub = profile_pb2_grpc.ProfileStub(channel)
        views = getattr(stub, method)(request, timeout=timeout, metadata=metadata)
        if method == "ScanPersonViews":
            return [list(view.person.fragment_keys) for view in views]
        return [list(view.account.fragment_keys) for view in views]


def scan_person_views(profile_address: str, *, as_of: str | None = None, timeout: float = 600.0) -> list[list[str]]:
    """The fragment keys of every person cluster profile holds (as_of: RFC 3339, e.g. the manifest's end)."""
    return _scan(profile_address, "ScanPersonViews", as_of, timeout)


def scan_account_views(profile_address: str, *, as_of: str | None = None, timeout: float = 600.0) -> list[list[str]]:
    """The fragment keys of every account cluster profile holds."""
    return _scan(profile_address, "ScanAccountViews", as_of, timeout)


def compare_clusters(clusters: list[list[str]], truth_map: dict[str, str]) -> list[str]:
    """Discrepancies between `clusters` (fragment keys per cluster) and `truth_map` (fragment key -> true
    entity): unknown fragments, fragments in two clusters, missing fragments, true entities split over
    clusters and clusters merging true entities. At most MAX_LINES lines plus one with the total;
    empty when the clusters are exactly the true entities."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    entity_clusters: dict[str, set[int]] = defaultdict(set)
    for index, keys in enumerate(clusters):
        entities: dict[str, list[str]] = defaultdict(list)
        for key in keys:
            if key in seen:
                problems.append(f"fragment {key} is in clusters #{seen[key]} and #{index}")
                continue
            seen[key] = index
            entity = truth_map.get(key)
            if entity is None:
                problems.append(f"fragment {key} (cluster #{index}) is not in the truth")
                continue
            entities[entity].append(key)
            entity_clusters[entity].add(index)
        if len(entities) > 1:
            described = "; ".join(f"{e}: {', '.join(sorted(k))}" for e, k in sorted(entities.items()))
            problems.append(f"cluster #{index} merges {len(entities)} true entities ({described})")
    for entity, indexes in sorted(entity_clusters.items()):
        if len(indexes) > 1:
            named = ", ".join(f"#{i}" for i in sorted(indexes)[:10]) + (", ..." if len(indexes) > 10 else "")
            problems.append(f"true entity {entity} is split over {len(indexes)} clusters ({named})")
    missing = sorted(key for key in truth_map if key not in seen)
    for key in missing:
        problems.append(f"fragment {key} of {truth_map[key]} is in no cluster")
    if len(problems) > MAX_LINES:
        return problems[:MAX_LINES] + [f"... {len(problems) - MAX_LINES} more, {len(problems)} discrepancies in all"]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", required=True, help="profile service address HOST:PORT")
    parser.add_argument("--truth", required=True, type=Path, help="the generator's output directory")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per scan (default %(default)s)")
    args = parser.parse_args(argv)
    truth = load_truth(args.truth, events=False)
    end = truth.manifest.get("end")
    ok = True
    for label, scan, truth_map in (("persons", scan_person_views, truth.persons),
                                   ("accounts", scan_account_views, truth.accounts)):
        clusters = scan(args.profile, as_of=end, timeout=args.timeout)
        problems = compare_clusters(clusters, truth_map)
        expected = len(set(truth_map.values()))
        if problems:
            ok = False
            print(f"{label}: MISMATCH - {len(clusters)} clusters, {expected} true, {len(truth_map)} fragments")
            for line in problems:
                print("  " + line)
        else:
            print(f"{label}: exact match - {len(clusters)} clusters = {expected} true, {len(truth_map)} fragments")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

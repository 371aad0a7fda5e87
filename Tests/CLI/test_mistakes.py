"""Mistakes a new user makes, and failures they must be able to see (issue 18, item 8), through the `cdp` CLI
against the real binaries.

* A typo in a destination setting (`--set fromat=csv`) or an attribute mapping (`--attribute title=jobTitel`)
  is refused, naming the valid ones and the nearest; a relative file directory is refused (the service,
  not the caller, would resolve it).
* An unreachable webhook: `cdp deliveries` shows the pending members and the last error before any
  delivery, and `cdp status` lists the destination with its error.
* A service that answers but refuses the token shows as UNAUTHENTICATED, not DOWN.
* `cdp destination update` fixes the webhook's URL: the delivery being retried is made again with it.
* `cdp segment delete` of an activated segment is refused (its members would be removed from the
  destination) unless `--force`; `cdp deactivate` stops the activation and `cdp activations` lists them;
  `cdp destination delete` is refused while the destination has an active activation.
"""

from __future__ import annotations

import socket
import time

import sys
from pathlib import Path

from cli_support import (DESTINATION_BIN, assert_cli_error, cdp_json, cdp_ok, describe, id_of, run_cdp)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "Tests" / "Destination"))
from fakes import FakeWebhook  # noqa: E402


def test_typos_in_settings_and_mappings_are_refused(stack, tmp_path):
    base = stack.port_base
    args = ["destination", "create", "--type", "file", "--name", "typo", "--set", f"directory={tmp_path}",
            "--set", "fromat=csv"]
    assert_cli_error(args, run_cdp(args, base), "unknown setting fromat", "did you mean format",
                     "directory, format, mode")
    args = ["destination", "create", "--type", "file", "--name", "relative", "--set", "directory=exports"]
    assert_cli_error(args, run_cdp(args, base), "directory must be an absolute path", "exports")
    args = ["destination", "create", "--type", "webhook", "--name", "hook", "--set", "url=http://127.0.0.1:9/x",
            "--set", "secret=s", "--set", "batchsize=5"]
    assert_cli_error(args, run_cdp(args, base), "unknown setting batchsize", "did you mean batch_size")

    destination = id_of(cdp_json(["destination", "create", "--type", "file", "--name", "mapped", "--set",
                                  f"directory={tmp_path / 'out'}"], base))
    segment = cdp_ok(["segment", "create", "--name", "typos", "--pql", 'person.email.endsWith("@typo.example")'],
                     base).stdout.strip()
    args = ["activate", segment, "--destination", destination, "--attribute", "title=jobTitel"]
    assert_cli_error(args, run_cdp(args, base), "jobTitel is not a profile field", "did you mean jobTitle",
                     "attributes.NAME")
    listed = cdp_json(["activations", "--segment", segment], base)
    assert listed == {"activations": []}, f"a refused activation was kept: {listed}"
    # Custom attributes are named as attributes.NAME.
    cdp_ok(["activate", segment, "--destination", destination, "--attribute", "title=jobTitle", "--attribute",
            "tier=attributes.tier"], base)


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_webhook_is_visible_before_any_delivery(stack, tmp_path):
    base = stack.port_base
    cdp_ok(["source", "create", "--type", "Test", "--instance", "hook"], base)
    people = tmp_path / "people.csv"
    people.write_text("personId,email\nh-1,una@hook.example\nh-2,vic@hook.example\n")
    cdp_ok(["ingest", people, "--entity", "person", "--source", "Test:hook", "--wait"], base)
    segment = cdp_ok(["segment", "create", "--name", "hook", "--wait", "--pql",
                      'person.email.endsWith("@hook.example")'], base).stdout.strip()
    # Nothing listens there: every attempt fails and is retried.
    hook = id_of(cdp_json(["destination", "create", "--type", "webhook", "--name", "nobody home", "--set",
                           f"url=http://127.0.0.1:{unused_port()}/hook", "--set", "secret=whsec_c2VjcmV0",
                           "--set", "timeout_seconds=1"], base))
    activation = cdp_ok(["activate", segment, "--destination", hook], base).stdout.strip()
    deadline = time.monotonic() + 30
    while True:
        res = run_cdp(["deliveries", hook], base)
        if "last error" in res.stderr or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert res.returncode == 0, describe(["deliveries", hook], res)
    assert f"{hook}: 2 members pending" in res.stderr and "last error" in res.stderr, describe(["deliveries"], res)
    assert "no delivery yet" in res.stderr, describe(["deliveries", hook], res)
    status = run_cdp(["status"], base)
    assert f"destination {hook} (nobody home): 2 members pending; last error:" in status.stdout, (
        describe(["status"], status))

    # The right URL: the delivery being retried goes there, once.
    receiver = FakeWebhook("whsec_c2VjcmV0").start()
    try:
        args = ["destination", "update", hook, "--set", f"url={receiver.url}{receiver.path}", "--set",
                "timeout_seconds=5"]
        res = run_cdp(args, base)
        assert res.returncode == 0 and f"updated {hook}" in res.stdout, describe(args, res)
        deadline = time.monotonic() + 60
        while receiver.members(activation) != {"una@hook.example", "vic@hook.example"}:
            assert time.monotonic() < deadline, (
                f"the webhook holds {receiver.members(activation)} 60 s after the fix\n{stack.logs()}")
            time.sleep(0.2)
        assert not receiver.violations and not receiver.duplicate_adds, (receiver.violations, receiver.duplicate_adds)
    finally:
        receiver.stop()
    args = ["destination", "update", hook, "--set", "url=ftp://nowhere"]
    assert_cli_error(args, run_cdp(args, base), "url must be an http or https URL")
    args = ["destination", "delete", hook]
    assert_cli_error(args, run_cdp(args, base), "active activations", activation)

    # Deleting the activated segment is refused; after deactivating it, it is not.
    args = ["segment", "delete", segment]
    assert_cli_error(args, run_cdp(args, base), f"{segment} is activated to {hook} ({activation})",
                     f"cdp deactivate {activation}", "--force")
    res = run_cdp(["deactivate", activation], base)
    assert res.returncode == 0 and f"deactivated {activation}" in res.stdout, describe(["deactivate"], res)
    listed = run_cdp(["activations", "--destination", hook], base)
    assert "deactivated" in listed.stdout, describe(["activations"], listed)
    res = run_cdp(args, base)
    assert res.returncode == 0 and f"deleted {segment}" in res.stdout, describe(args, res)
    res = run_cdp(["destination", "delete", hook], base)
    assert res.returncode == 0 and f"deleted {hook}" in res.stdout, describe(["destination", "delete"], res)
    assert hook not in run_cdp(["destination", "list"], base).stdout


def test_a_service_refusing_the_token_is_unauthenticated_not_down(stack, tmp_path):
    """A destination started with a token, and `cdp status` pointed at it without one."""
    import subprocess

    port = unused_port()
    proc = subprocess.Popen([str(DESTINATION_BIN), "--port", str(port), "--data-dir", str(tmp_path / "d"),
                             "--auth-token", "s3cret"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert "listening on" in proc.stdout.readline()
        args = ["status", "--destination-addr", f"127.0.0.1:{port}"]
        res = run_cdp(args, stack.port_base)
        assert res.returncode == 1, describe(args, res)
        row = next(line for line in res.stdout.splitlines() if line.startswith("destination "))
        assert "UNAUTHENTICATED" in row and "DOWN" not in row, describe(args, res)
        assert "refuses calls without a token" in res.stderr and "--token" in res.stderr, describe(args, res)
        res = run_cdp([*args, "--token", "s3cret"], stack.port_base)
        assert res.returncode == 0, describe(args, res)
    finally:
        proc.kill()
        proc.wait()

"""The `stack` fixture of the CLI tests: `cdp up` on a fresh data directory, one per test module."""

from __future__ import annotations

import pytest

from cli_support import CdpUp, free_port_base, require_cdp


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """`cdp up` on a fresh data directory and five free consecutive ports; stopped (SIGKILL if need be) at the
    end of the module unless a test stopped it with SIGTERM."""
    require_cdp()
    work = tmp_path_factory.mktemp("cli")
    up = CdpUp(work / "data", free_port_base())
    try:
        up.start()
        yield up
    finally:
        if up.proc is not None and up.proc.poll() is None:
            rc, _ = up.terminate()
            if rc is None:
                print(f"cdp up did not stop within 20 s of SIGTERM at teardown\n{up.logs()}")
        up.kill()

"""A short soak of the reference server (the 1,000,000-connection run is
``python scripts/soak.py``; its figures are in the hardening notes):
connections opened, used once and closed; the server's descriptors must
come back to the baseline and its RSS stay within 5% of the warm value."""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[2] / "scripts" / "soak.py"

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"),
                       reason="reads /proc/PID"),
    pytest.mark.skipif(not any(shutil.which(c) for c in ("cc", "gcc", "clang")),
                       reason="the soak client is C"),
]


def _soak_module():
    spec = importlib.util.spec_from_file_location("pyepoll_soak", SOAK)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)                 # type: ignore[union-attr]
    return mod


@pytest.mark.parametrize("protocol,linger0,n", [
    ("http", False, 20000),        # FIN from the client, 16 source addresses
    ("echo", True, 10000),         # RST from the client
])
def test_short_soak(protocol, linger0, n, capsys):
    soak = _soak_module()
    r = soak.soak(connections=n, concurrency=64, protocol=protocol,
                  warmup=n // 2, sources=16, linger0=linger0,
                  server_args=[], time_limit=150, rss_tolerance=0.05)
    brief = {k: v for k, v in r.items() if k != "samples"}
    with capsys.disabled():
        print("\nsoak:", brief)
    assert r["done"] == n and r["errors"] == 0, brief
    assert r["server_alive"], brief
    assert r["end_fds"] == r["baseline_fds"], brief
    assert r["max_fds"] > r["baseline_fds"], "no connection was ever open?"
    assert r["rss_ok"], brief

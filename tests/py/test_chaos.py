"""The chaos test, short (issue 11): random clients against every model,
trigger, backend and overflow policy of the reference server for a few
seconds each; the server never exits, answers a fresh client correctly at
the end, and its descriptors return to the baseline.  The long run is
``python scripts/chaos.py --seconds 1800``.  The seed is printed; set
PYEPOLL_CHAOS_SEED to replay one."""
from __future__ import annotations

import importlib.util
import os
import random
import sys
from pathlib import Path

import pytest

import pyepoll

CHAOS = Path(__file__).resolve().parents[2] / "scripts" / "chaos.py"
SECONDS = float(os.environ.get("PYEPOLL_CHAOS_SECONDS", "2.5"))
SEED = int(os.environ.get("PYEPOLL_CHAOS_SEED") or random.randrange(1 << 30))

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not sys.platform.startswith("linux"),
                       reason="counts the server's descriptors in /proc"),
]


def _chaos_module():
    spec = importlib.util.spec_from_file_location("pyepoll_chaos", CHAOS)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod                 # dataclass-free, but tidy
    spec.loader.exec_module(mod)                 # type: ignore[union-attr]
    return mod


chaos = _chaos_module()
CONFIGS = chaos.configurations(pyepoll.available_backends())


@pytest.mark.parametrize("index", range(len(CONFIGS)),
                         ids=[chaos.name_of(c) for c in CONFIGS])
def test_chaos(index, capsys):
    cfg = CONFIGS[index]
    r = chaos.chaos(cfg, SECONDS, SEED + index)
    with capsys.disabled():
        print(f"\nchaos {r['config']} seed {r['seed']}: {r.get('actions')}")
    detail = (f"seed {r['seed']} (PYEPOLL_CHAOS_SEED={SEED}): "
              f"{r['failures']}\n{r.get('server_log', '')}")
    assert r["server_alive"], detail
    assert r["fresh_client_ok"], detail
    assert r["end_fds"] == r["base_fds"], detail
    assert r["passed"], detail
    actions = r["actions"]
    assert actions.get("ok", 0) > 0, f"no request was answered: {actions}"

"""CPython's own asyncio tests (the installed test.test_asyncio package)
with pyepoll's loop as the loop under test, through tests/cpython_asyncio.py:
every test that passes on the stdlib loop must pass on pyepoll's.  Each
module runs in a child process per loop.  Skipped where the interpreter
ships no test.test_asyncio (Debian's PyPy, say)."""
from __future__ import annotations

import importlib.util
import os
import pathlib
import sys

import pytest

import pyepoll

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import cpython_asyncio  # noqa: E402

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(importlib.util.find_spec("test.test_asyncio") is None,
                       reason="no test.test_asyncio in this Python"),
]


def compare(module: str) -> None:
    # The children import this very pyepoll (a source tree or the wheel).
    root = os.path.dirname(os.path.dirname(os.path.abspath(pyepoll.__file__)))
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = root + (os.pathsep + old if old else "")
    try:
        stdlib = cpython_asyncio.child(module, "stdlib", 600)
        ours = cpython_asyncio.child(module, "pyepoll", 600)
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    assert "__module__" not in stdlib, stdlib
    assert "__module__" not in ours, ours
    passed = {t for t, o in stdlib.items() if o == "pass"}
    assert passed, f"{module}: nothing passed on the stdlib loop"
    differ = sorted(t for t in passed if ours.get(t) != "pass")
    assert differ == [], f"{module}: pass on stdlib, not on pyepoll: {differ}"


@pytest.mark.parametrize("module", ["test_streams", "test_buffered_proto",
                                    "test_server", "test_protocols"])
def test_module_passes_as_on_the_stdlib_loop(module):
    compare(module)


@pytest.mark.slow
@pytest.mark.parametrize("module", ["test_events", "test_sock_lowlevel",
                                    "test_sendfile", "test_ssl",
                                    "test_sslproto", "test_subprocess",
                                    "test_unix_events", "test_base_events"])
def test_slow_module_passes_as_on_the_stdlib_loop(module):
    compare(module)

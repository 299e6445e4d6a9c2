"""Shared fixtures.  With PYEPOLL_REQUIRE_INSTALLED=1 (the CI wheel run) the
suite refuses to test a pyepoll imported from the source tree.  With
PYEPOLL_DEFAULT_BACKEND=name (the kqueue-over-libkqueue run) everything that
picks the default backend (Poller(), Loop(), DefaultSelector, the server)
uses that one, and the suite refuses to run if it is not compiled in."""
from __future__ import annotations

import os
import pathlib
import re
import socket
import sys
import threading
import time
from typing import Callable, Optional

import pytest

import pyepoll

SOURCE_TREE = pathlib.Path(__file__).resolve().parents[2]

if os.environ.get("PYEPOLL_REQUIRE_INSTALLED") == "1":
    imported = pathlib.Path(pyepoll.__file__).resolve()
    if SOURCE_TREE in imported.parents:
        raise RuntimeError(f"pyepoll imported from the source tree: {imported}")

BACKENDS = pyepoll.available_backends()

_wanted = os.environ.get("PYEPOLL_DEFAULT_BACKEND")
if _wanted and pyepoll.best_backend() != _wanted:
    raise RuntimeError(f"PYEPOLL_DEFAULT_BACKEND={_wanted} but this pyepoll "
                       f"has {BACKENDS}: the run would not test {_wanted}")

# No kernel of Linux has kqueue: there it is libkqueue's emulation.
OVER_LIBKQUEUE = sys.platform.startswith("linux") and "kqueue" in BACKENDS


def _named(item: pytest.Item, names: set) -> set:
    """Which of `names` the test's parameters name (ids like "kqueue",
    "kqueue-edge", "KqueueSelector", "pyepoll.KqueueSelector",
    "threads-queue-echo")."""
    callspec = getattr(item, "callspec", None)
    words = re.split(r"[^a-z]+", callspec.id.lower()) if callspec else []
    return {w[:-len("selector")] if w.endswith("selector") else w
            for w in words} & names


def _backends_named(item: pytest.Item) -> set:
    return _named(item, {"epoll", "kqueue", "poll", "select"})


def _runs_on_kqueue(item: pytest.Item) -> bool:
    """Whether the test uses the kqueue backend: the one its parameters
    name, else the default one."""
    named = _backends_named(item)
    return "kqueue" in named if named else pyepoll.best_backend() == "kqueue"


# scripts/test.sh's later stages run the part of the suite their build
# changes; a test whose parameters name something else is deselected (not
# run, and reported so), as it runs in the wheel stage:
# PYEPOLL_TEST_ONLY_BACKEND=kqueue (the libkqueue stage): the tests of the
# other backends, whose code is the same in that build as in the wheel's;
# PYEPOLL_TEST_LOOP_MODEL_ONLY=1 (the ASan and libkqueue stages): the
# server's thread models, which do their I/O with blocking sockets and the
# stdlib's select.poll, not the C loop (their one C part, the HTTP parser,
# meets the same requests under the event-loop model, and is fuzzed).
_ONLY = os.environ.get("PYEPOLL_TEST_ONLY_BACKEND")
if _ONLY and _ONLY not in BACKENDS:
    raise RuntimeError(f"PYEPOLL_TEST_ONLY_BACKEND={_ONLY} but this pyepoll "
                       f"has {BACKENDS}")
_LOOP_MODEL_ONLY = os.environ.get("PYEPOLL_TEST_LOOP_MODEL_ONLY") == "1"


def _elsewhere(item: pytest.Item) -> bool:
    """Whether the item is one this stage leaves to another (above)."""
    if _ONLY:
        named = _backends_named(item)
        if named and _ONLY not in named:
            return True
    return _LOOP_MODEL_ONLY and bool(_named(item, {"threadpool", "threads"}))


def pytest_collection_modifyitems(config, items):
    """The stages' deselection (above); and
    @pytest.mark.libkqueue(reason, strict=True, trigger=None): on kqueue
    over libkqueue (with that trigger, if given) the test is expected to
    fail for that libkqueue behaviour (strict: passing fails the run, so a
    fixed libkqueue is noticed); elsewhere nothing changes."""
    if _ONLY or _LOOP_MODEL_ONLY:
        keep, other = [], []
        for item in items:
            (other if _elsewhere(item) else keep).append(item)
        if other:
            config.hook.pytest_deselected(items=other)
            items[:] = keep
    if not OVER_LIBKQUEUE:
        return
    for item in items:
        mark = item.get_closest_marker("libkqueue")
        trigger = mark.kwargs.get("trigger") if mark else None
        callspec = getattr(item, "callspec", None)
        if trigger and (not callspec or trigger not in callspec.id.split("-")):
            continue
        if mark and _runs_on_kqueue(item):
            item.add_marker(pytest.mark.xfail(
                reason="libkqueue: " + mark.args[0],
                strict=mark.kwargs.get("strict", True)))


# PyPy-only differences, each a skip with this one reason, so a PyPy run
# says what it did not check.  The drop-ins promise CPython's behaviour and
# are checked side by side against the stdlib; on PyPy the stdlib's select
# module is PyPy's own, which differs from CPython's (select.epoll has no
# EPOLLRDHUP and blocks for ever on poll(-1e-7); large timeouts raise
# OverflowError where CPython waits; poll() returns [] after a signal
# instead of retrying, PEP 475), so a comparison with it, or a behaviour
# test run on the stdlib class, would test PyPy, not pyepoll.  pyepoll's
# side of those tests still runs wherever a test checks it alone.
IS_PYPY = sys.implementation.name == "pypy"
PYPY_NO_CPYTHON_REFERENCE = (
    "PyPy: the stdlib select module here is PyPy's, not the CPython "
    "behaviour the drop-ins are checked against")
cpython_reference = pytest.mark.skipif(IS_PYPY,
                                       reason=PYPY_NO_CPYTHON_REFERENCE)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def poller(backend: str):
    with pyepoll.Poller(backend) as p:
        yield p


@pytest.fixture
def sockpair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def features_of(backend: str) -> frozenset:
    """What the backend honours, as pyepoll reports it."""
    with pyepoll.Poller(backend) as p:
        return p.features


def split_at(data: bytes, cuts) -> list:
    """`data` cut at the sorted offsets `cuts` (empty pieces kept): how a
    stream may arrive in reads."""
    pieces, last = [], 0
    for c in cuts:
        pieces.append(data[last:c])
        last = c
    pieces.append(data[last:])
    return pieces


class RoundTrips(threading.Thread):
    """A blocking client thread on ``sock``: round i sends ``ask(i)`` and
    reads back ``answer(i)`` (``ask(i)`` again without it: an echo),
    checked; ``rounds`` rounds then a half-close, or (None) rounds until
    :meth:`stop` or :meth:`finish`.  ``done`` counts the answers, ``error``
    keeps what went wrong (an answer the server lost leaves recv waiting
    out its 10 s)."""

    def __init__(self, sock: socket.socket, ask: Callable[[int], bytes],
                 answer: Optional[Callable[[int], bytes]] = None,
                 rounds: Optional[int] = None) -> None:
        super().__init__(daemon=True)
        self.sock, self.rounds = sock, rounds
        self.ask, self.answer = ask, answer or ask
        self.done = 0
        self.stopping = False
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            self.sock.setblocking(True)
            self.sock.settimeout(10)
            while not self.stopping and self.done != self.rounds:
                want = self.answer(self.done)
                self.sock.sendall(self.ask(self.done))
                got = b""
                while len(got) < len(want):
                    chunk = self.sock.recv(len(want) - len(got))
                    assert chunk, "closed"
                    got += chunk
                assert got == want
                self.done += 1
            if self.done == self.rounds:
                self.sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:            # reported by the test
            self.error = exc

    def finish(self) -> None:
        """Stop at once: the answer under way fails."""
        self.stopping = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.join(10)
        self.sock.close()

    def stop(self, serve: Callable[[], None]) -> None:
        """Stop after the answer under way, ``serve()`` called until then."""
        self.stopping = True
        until = time.monotonic() + 10
        while self.is_alive() and time.monotonic() < until:
            serve()
        self.join(1)
        self.sock.close()


# The asyncio loop's two paths (pyepoll.asyncio_loop): the C one
# (pyepoll._speedups, CPython only) and the pure Python one
# (PYEPOLL_SPEEDUPS=0, PyPy).  Tests that use this fixture (test_aio_loop.py
# and test_asyncio.py through their pytestmark) run on each path there is.
def _paths(have_c: bool) -> list:
    """The paths to test: both where the C one exists; with
    PYEPOLL_TEST_PATHS=c only the C one (scripts/test.sh's ASan and libkqueue
    stages: the Python path runs in its wheel and PyPy stages)."""
    if not have_c:
        return ["py"]
    return ["c"] if os.environ.get("PYEPOLL_TEST_PATHS") == "c" else ["c", "py"]


def _aio_paths() -> list:
    from pyepoll import asyncio_loop
    return _paths(asyncio_loop._sp_module is not None)


@pytest.fixture(params=_aio_paths())
def aio_path(request: pytest.FixtureRequest):
    from pyepoll import asyncio_loop
    was = asyncio_loop.SPEEDUPS
    asyncio_loop._use_speedups(request.param == "c")
    yield request.param
    asyncio_loop._use_speedups(was)


# pyepoll.Loop's two paths: wait/recv/wait_batch/send/reply in C (LoopCalls,
# CPython only) and the pure Python ones (PYEPOLL_SPEEDUPS=0, PyPy).  Loops made
# under the fixture take its path; subprocesses get the environment switch.
# The Loop test files (test_loop.py, test_loop_hypothesis.py, test_errors.py,
# test_faults.py, test_signals.py) run on each path there is through their
# pytestmark.
def _loop_paths() -> list:
    from pyepoll import loop
    return _paths(loop._sp is not None)


@pytest.fixture(params=_loop_paths())
def loop_path(request: pytest.FixtureRequest,
              monkeypatch: pytest.MonkeyPatch):
    from pyepoll import loop
    if request.param == "py":
        monkeypatch.setattr(loop, "_LoopCalls", None)
        monkeypatch.setenv("PYEPOLL_SPEEDUPS", "0")
    else:
        monkeypatch.setattr(loop, "_LoopCalls", loop._sp.LoopCalls)
    yield request.param

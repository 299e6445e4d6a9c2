"""EventLoop.time/get_debug/create_task and CTransport.is_closing (C:
csrc/cpython/aio_methods.c, get_debug and is_closing aio_iter.c; Python:
the stdlib's methods, EventLoop._get_debug_py, CTransport._is_closing_py) against the stdlib's loop, on both paths (the
aio_path fixture); and the no-socket aiohttp floor of the bench
(pyepoll.bench._inproc) that scripts/wakeup_cost.py measures."""
from __future__ import annotations

import asyncio
import contextvars
import gc
import socket
import sys
import time
import types
import warnings

import pytest

from pyepoll import asyncio_loop
from pyepoll.asyncio_loop import CTransport, EventLoop
from test_aio_iter import on_both

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("aio_path")]

# The stdlib's create_task takes context= from 3.11 on.
HAS_CONTEXT = sys.version_info >= (3, 11)
VAR: contextvars.ContextVar = contextvars.ContextVar("VAR", default="unset")


async def answer(x):
    await asyncio.sleep(0)
    return x


def test_the_path_under_test_is_the_one_asked(aio_path):
    kinds = {type(EventLoop.__dict__[n]).__name__
             for n in ("time", "get_debug", "create_task")}
    kinds.add(type(CTransport.__dict__["is_closing"]).__name__)
    assert kinds == ({"method_descriptor"} if aio_path == "c"
                     else {"function"})


def test_time_is_the_monotonic_clock_and_follows_a_patched_one(monkeypatch):
    loop = EventLoop()
    try:
        before = time.monotonic()
        now = loop.time()
        assert type(now) is float and before <= now <= time.monotonic()
        # The stdlib's time() looks time.monotonic up at each call.
        monkeypatch.setattr(time, "monotonic", lambda: 1234.5)
        assert loop.time() == 1234.5
        monkeypatch.undo()
        assert loop.time() >= now
        # base_events' `time` replaced by something not a module, and a
        # module whose monotonic comes from its __getattr__.
        from asyncio import base_events
        monkeypatch.setattr(base_events, "time",
                            types.SimpleNamespace(monotonic=lambda: 7.25))
        assert loop.time() == 7.25
        lazy = types.ModuleType("lazy_time")
        lazy.__getattr__ = lambda name: (lambda: 8.5)
        monkeypatch.setattr(base_events, "time", lazy)
        assert loop.time() == 8.5
        monkeypatch.undo()
        # The real clock again, read as time.monotonic reads it.
        a, b, c = time.monotonic(), loop.time(), time.monotonic()
        assert a <= b <= c
    finally:
        loop.close()


def test_get_debug_follows_set_debug():
    def scenario(loop):
        seen = [loop.get_debug()]
        loop.set_debug(True)
        seen.append(loop.get_debug())
        loop._debug = 0             # whatever the attribute holds
        seen.append(loop.get_debug())
        return seen
    stdlib, ours = on_both(scenario)
    assert stdlib == ours == [False, True, 0]


def test_create_task_plain_named_and_with_context():
    def scenario(loop):
        ctx = contextvars.copy_context()
        ctx.run(VAR.set, "mine")

        async def var():
            return VAR.get()
        tasks = [loop.create_task(answer(1)),
                 loop.create_task(answer(2), name="two")]
        if HAS_CONTEXT:
            tasks += [loop.create_task(var(), context=ctx),
                      loop.create_task(var(), name=None, context=None)]
        else:
            # Before 3.11 the stdlib's create_task has no context=: the
            # same TypeError from both loops.
            coro = var()
            with pytest.raises(TypeError, match="context"):
                loop.create_task(coro, context=ctx)
            coro.close()
        got = loop.run_until_complete(asyncio.gather(*tasks))
        return (got, [type(t) is asyncio.Task for t in tasks],
                tasks[1].get_name(), [t.get_loop() is loop for t in tasks],
                tasks[0].get_name().startswith("Task-"))
    stdlib, ours = on_both(scenario)
    assert stdlib == ours
    assert ours[0] == ([1, 2, "mine", "unset"] if HAS_CONTEXT else [1, 2])


def test_create_task_gives_each_task_its_own_loop(monkeypatch):
    # The running loop's Tasks get its shared {"loop": loop} keywords; a
    # Task class that changes the keywords it got changes no later Task's,
    # and a second loop's create_task (not the one bound last) gets itself.
    from asyncio import tasks as asyncio_tasks
    seen = []

    class Meddling(asyncio.Task):
        def __init__(self, coro, **kw):
            seen.append(kw["loop"])
            kw["loop"] = None
            super().__init__(coro, loop=seen[-1])

    monkeypatch.setattr(asyncio_tasks, "Task", Meddling)
    loop, other = EventLoop(), EventLoop()
    try:
        async def main():
            made = [loop.create_task(answer(i)) for i in range(3)]
            made.append(other.create_task(answer(3)))
            return made
        made = loop.run_until_complete(main())     # main's Task first
        assert seen == [loop, loop, loop, loop, other]
        assert [t.get_loop() for t in made] == seen[1:]
        assert loop.run_until_complete(asyncio.gather(*made[:3])) == [0, 1, 2]
        assert other.run_until_complete(made[3]) == 3
    finally:
        loop.close()
        other.close()

def test_create_task_uses_the_task_factory():
    def scenario(loop):
        made = []

        def factory(lp, coro, **kw):
            made.append((lp is loop, sorted(kw)))
            return asyncio.Task(coro, loop=lp, **kw)
        loop.set_task_factory(factory)
        t = loop.create_task(answer(5))
        t2 = loop.create_task(answer(6), name="n")
        got = loop.run_until_complete(asyncio.gather(t, t2))
        return got, made, t2.get_name()
    stdlib, ours = on_both(scenario)
    assert stdlib == ours
    assert ours[1] == [(True, []), (True, [])]


def test_create_task_refuses_as_the_stdlib():
    def scenario(loop):
        out = []
        # Closed at the end: a refused call never awaits its coroutine, and
        # one left to the garbage collector warns whenever it goes (on PyPy
        # long after this test).
        coros = [answer(1) for _ in range(4)]
        for args, kw in (((), {}), ((coros[0], 2), {}),
                         ((coros[1],), {"bogus": None}),
                         ((42,), {}),
                         # a TypeError before 3.11, whose create_task has
                         # no context parameter
                         ((coros[2],), {"context": None})):
            try:
                t = loop.create_task(*args, **kw)
                out.append(("made", loop.run_until_complete(t)))
            except TypeError as exc:
                out.append(type(exc).__name__)
        loop.close()
        try:
            loop.create_task(coros[3])
        except RuntimeError as exc:
            out.append(str(exc))
        for coro in coros:
            coro.close()
        return out
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stdlib, ours = on_both(scenario)
        gc.collect()                    # PyPy: finalizers run here
    assert not [w for w in caught if "never awaited" in str(w.message)]
    assert stdlib == ours
    assert ours[:4] == ["TypeError"] * 4
    assert ours[5] == "Event loop is closed"


def test_create_task_in_debug_mode_trims_the_traceback_as_the_stdlib():
    def scenario(loop):
        loop.set_debug(True)
        t = loop.create_task(answer(3))
        tb = t._source_traceback
        last = (tb[-1].name, tb[-1].filename == __file__) if tb else None
        return loop.run_until_complete(t), last
    stdlib, ours = on_both(scenario)
    assert stdlib == ours == (3, ("scenario", True))


def test_create_task_calls_an_overridden_check_closed():
    class Guarded(EventLoop):
        checks = 0

        def _check_closed(self):
            type(self).checks += 1
            super()._check_closed()

    loop = Guarded()
    try:
        loop.run_until_complete(loop.create_task(answer(1)))
        assert Guarded.checks >= 1
    finally:
        loop.close()


def test_is_closing_follows_the_transport(aio_path):
    async def main():
        a, b = socket.socketpair()
        loop = asyncio.get_running_loop()
        t, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
        seen = [type(t) is CTransport, t.is_closing()]
        t.close()
        seen.append(t.is_closing())
        await asyncio.sleep(0.01)
        seen.append(t.is_closing())
        b.close()
        return seen

    loop = EventLoop()
    try:
        assert loop.run_until_complete(main()) == [True, False, True, True]
    finally:
        loop.close()


def test_speedups_small_methods_checks_its_arguments():
    sp = asyncio_loop._sp_module
    if sp is None:
        pytest.skip("pyepoll._speedups is not built here")
    with pytest.raises(TypeError):
        sp.small_methods(1, asyncio.base_events, True)
    with pytest.raises(TypeError):
        sp.small_methods(EventLoop, 42, True)
    with pytest.raises(AttributeError):
        sp.small_methods(EventLoop, types.ModuleType("empty"), True)


# -- the aiohttp floor (pyepoll.bench._inproc) -----------------------------------


@pytest.mark.parametrize("runtime", ["pyepollaio", "asyncio"])
def test_inproc_aiohttp_serves_on_the_socket_runs_path(runtime):
    pytest.importorskip("aiohttp")
    from pyepoll.bench import _inproc

    # Every request answered, each found the connection waiting for it.
    assert _inproc.run(runtime, 50) == 0


def test_inproc_aiohttp_transport_sees_each_response():
    pytest.importorskip("aiohttp")
    from pyepoll.bench import _inproc

    seen = []
    real = _inproc.IdealTransport.write

    def write(self, data):
        seen.append(bytes(data))
        real(self, data)

    _inproc.IdealTransport.write = write
    try:
        assert _inproc.run("pyepollaio", 3) == 0
    finally:
        _inproc.IdealTransport.write = real
    assert len(seen) == 3
    for data in seen:
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")
        assert data.endswith(b"\r\n\r\n" + _inproc.BODY)


def _wakeup_cost():
    """scripts/wakeup_cost.py as a module."""
    import os
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..",
                                    "scripts"))
    try:
        import wakeup_cost
    finally:
        sys.path.pop(0)
    return wakeup_cost


def test_wakeup_cost_knows_the_aiohttp_targets():
    wakeup_cost = _wakeup_cost()
    assert wakeup_cost.argv_for("aio-aiohttp", 8080)[-2:] == [
        "pyepollaio-aiohttp", "8080"]
    assert wakeup_cost.argv_for("uvloop-aiohttp", 1)[-2] == "uvloop-aiohttp"
    assert wakeup_cost.argv_for("floor-aio-aiohttp", 0, 700)[-3:] == [
        "pyepoll.bench._inproc", "pyepollaio", "700"]


def test_wakeup_cost_drives_k_connections_a_round_at_a_time():
    # drive(conns=K): one round trip alone, then each round one message on
    # every connection before any answer is read (a batch of K per wakeup).
    import threading
    wakeup_cost = _wakeup_cost()
    got = []            # (connection number, bytes) in arrival order
    loop = EventLoop()

    class Echo(asyncio.Protocol):
        def connection_made(self, t):
            self.t, self.n = t, len(conns)
            conns.append(self)

        def data_received(self, data):
            got.append((self.n, len(data)))
            self.t.write(data)

    conns = []
    server = loop.run_until_complete(
        loop.create_server(Echo, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    th = threading.Thread(target=loop.run_forever)
    th.start()
    try:
        wakeup_cost.drive(port, 4, False, 0.0, 3)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        th.join(10)
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()
    assert len(conns) == 3
    # 64 B messages (a read may split one): the first alone on connection
    # 0, then 4 rounds on each of the three.
    per = {n: sum(b for m, b in got if m == n) for n in range(3)}
    assert per == {0: 64 * 5, 1: 64 * 4, 2: 64 * 4}
    assert got[0][0] == 0

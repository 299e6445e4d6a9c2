"""A signal whose handler raises ends every pyepoll wait at once (PEP 475),
on CPython and on PyPy: Poller.wait, the selectors, the epoll drop-in,
Loop.wait and wait_batch, and the asyncio loop.

The signal comes from a thread that goes on running Python code: on PyPy
that thread's periodic check tends to take the signal first and leave it
pending for the main thread, the case where a wait retried after EINTR used
to block until its timeout before the handler ran (seen in the full PyPy
suite).  The waits' timeout is WAIT; an interruption counts as prompt well
under it.  Blocking waits get a waker at WAIT, so a regression fails the
test instead of hanging it.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time

import pytest

import pyepoll
from pyepoll import EV_DATA, EV_OPEN, Loop, Poller, READ
from pyepoll import selectors as pesel
from pyepoll.asyncio_loop import EventLoop

from conftest import BACKENDS, RoundTrips

pytestmark = [
    pytest.mark.skipif(not hasattr(signal, "pthread_kill"),
                       reason="needs pthread_kill"),
    pytest.mark.timeout(60),
    pytest.mark.usefixtures("loop_path"),   # both Loop paths (conftest)
]

# Not SIGALRM: pytest-timeout's signal method owns that one.
SIG = getattr(signal, "SIGUSR1", None)
WAIT = 10.0
PROMPT = 2.0
ROUNDS = 3          # each round a new race between the two threads


class Interrupt(Exception):
    pass


@pytest.fixture
def raising_handler():
    def handler(signum, frame):
        raise Interrupt

    old = signal.signal(SIG, handler)
    yield
    signal.signal(SIG, old)


@pytest.fixture
def sockpair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


@contextlib.contextmanager
def signal_after_go(delay: float = 0.05):
    """Yields go(): delay seconds after it is called, SIG goes to the main
    thread from a thread that then keeps running Python code for 20 ms
    (see the module's docstring).  The thread is started before, so its
    slow start on a loaded machine cannot send the signal before the code
    under test runs."""
    main = threading.main_thread().ident
    started = threading.Event()
    abort = []

    def send():
        started.wait()
        if abort:
            return
        time.sleep(delay)
        signal.pthread_kill(main, SIG)
        end = time.monotonic() + 0.02
        while time.monotonic() < end:
            pass

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        yield started.set
    finally:
        if not started.is_set():
            abort.append(True)
            started.set()
        thread.join()


def call_signalled(fn):
    """fn()'s result, and the seconds it took, SIG sent while it runs."""
    with signal_after_go() as go:
        t0 = time.monotonic()
        go()
        result = fn()
        return result, time.monotonic() - t0


def assert_interrupted_promptly(wait, exc=Interrupt, waker=None):
    """wait() raises exc within PROMPT seconds when signalled, ROUNDS
    times; waker(), if given, is called at WAIT to end a blocking wait
    that missed the signal."""
    for _ in range(ROUNDS):
        timer = threading.Timer(WAIT, waker) if waker else None
        with signal_after_go() as go:
            if timer:
                timer.start()
            try:
                with pytest.raises(exc):
                    t0 = time.monotonic()
                    go()
                    wait()
                elapsed = time.monotonic() - t0
            finally:
                if timer:
                    timer.cancel()
        assert elapsed < PROMPT, f"the handler ran after {elapsed:.2f} s"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("timeout", [WAIT, None])
def test_poller_wait(raising_handler, sockpair, backend, timeout):
    a, b = sockpair
    with Poller(backend) as poller:
        poller.register(a.fileno(), READ)
        assert_interrupted_promptly(lambda: poller.wait(timeout),
                                    waker=lambda: b.send(b"x"))
        assert poller.wait(0) == []     # still usable, nothing consumed


@pytest.mark.parametrize("name", [n for n in (
    "EpollSelector", "KqueueSelector", "PollSelector", "SelectSelector",
    "DefaultSelector") if hasattr(pesel, n)])
@pytest.mark.parametrize("timeout", [WAIT, None])
def test_selector_select(raising_handler, sockpair, name, timeout):
    a, b = sockpair
    with getattr(pesel, name)() as sel:
        sel.register(a, pesel.EVENT_READ)
        assert_interrupted_promptly(lambda: sel.select(timeout),
                                    waker=lambda: b.send(b"x"))
        assert sel.select(0) == []


@pytest.mark.skipif(not hasattr(pyepoll, "epoll"), reason="epoll only")
@pytest.mark.parametrize("timeout", [WAIT, -1])
def test_epoll_poll(raising_handler, sockpair, timeout):
    a, b = sockpair
    with pyepoll.epoll() as ep:
        ep.register(a.fileno(), pyepoll.EPOLLIN)
        assert_interrupted_promptly(lambda: ep.poll(timeout),
                                    waker=lambda: b.send(b"x"))
        assert ep.poll(0) == []


@pytest.mark.parametrize("timeout", [WAIT, None])
@pytest.mark.parametrize("method", ["wait", "wait_batch"])
def test_loop_wait(raising_handler, method, timeout):
    loop = Loop()
    try:
        wait = getattr(loop, method)
        assert_interrupted_promptly(lambda: list(wait(timeout)),
                                    waker=loop.wakeup)
        assert list(wait(0)) == []
    finally:
        loop.close()


def _sleep_on(loop):
    """Run a WAIT-second sleep on loop; the task is cancelled whatever
    ends the run, so no interrupted round leaves one pending."""
    task = loop.create_task(asyncio.sleep(WAIT))
    try:
        loop.run_until_complete(task)
    finally:
        task.cancel()


@pytest.mark.parametrize("timeout", [WAIT, None])
def test_handler_that_wakes_the_loop_ends_its_wait(timeout):
    """A handler that returns after loop.wakeup() (the reference server's
    SIGTERM drain) ends the wait at once: it ran before the wait was
    retried, whose first event is then the wakeup."""
    loop = Loop()
    old = signal.signal(SIG, lambda signum, frame: loop.wakeup())
    try:
        for _ in range(ROUNDS):
            events, elapsed = call_signalled(lambda: loop.wait(timeout))
            assert events == [(pyepoll.EV_WAKEUP, 0, 0)]
            assert elapsed < PROMPT, f"woken after {elapsed:.2f} s"
    finally:
        signal.signal(SIG, old)
        loop.close()


@pytest.mark.parametrize("name", [n for n in (
    "EpollSelector", "KqueueSelector", "PollSelector", "SelectSelector",
    "DefaultSelector") if hasattr(pesel, n)])
def test_handler_that_writes_ends_a_select(sockpair, name):
    """A handler that returns after making a watched socket readable (a
    wakeup-fd pattern) ends select() with that event at once."""
    a, b = sockpair
    old = signal.signal(SIG, lambda signum, frame: b.send(b"x"))
    try:
        with getattr(pesel, name)() as sel:
            key = sel.register(a, pesel.EVENT_READ)
            for _ in range(ROUNDS):
                ready, elapsed = call_signalled(lambda: sel.select(WAIT))
                assert ready == [(key, pesel.EVENT_READ)]
                assert elapsed < PROMPT, f"woken after {elapsed:.2f} s"
                assert a.recv(16) == b"x"
    finally:
        signal.signal(SIG, old)


def test_asyncio_run_signal_handler_raises(raising_handler):
    """A signal.signal handler's exception ends run_until_complete while
    the loop sleeps in its wait, and the loop goes on working."""
    loop = EventLoop()
    try:
        assert_interrupted_promptly(lambda: _sleep_on(loop))
        assert loop.run_until_complete(asyncio.sleep(0, "ok")) == "ok"
    finally:
        loop.close()


def test_asyncio_add_signal_handler_keyboard_interrupt():
    """A loop.add_signal_handler callback raising KeyboardInterrupt (as a
    server's Ctrl-C handler may) ends the loop's run promptly."""
    def interrupt():
        raise KeyboardInterrupt

    loop = EventLoop()
    try:
        loop.add_signal_handler(SIG, interrupt)
        try:
            assert_interrupted_promptly(lambda: _sleep_on(loop),
                                        exc=KeyboardInterrupt)
        finally:
            assert loop.remove_signal_handler(SIG)
        assert loop.run_until_complete(asyncio.sleep(0, "ok")) == "ok"
    finally:
        loop.close()


# -- Loop.wake_on_signals: a signal another thread takes ---------------------

CONFIGS = [(b, t) for b in BACKENDS
           for t in (("level", "edge") if b in ("epoll", "kqueue")
                     else ("level",))]


@contextlib.contextmanager
def signal_to_other_thread(delay: float = 0.05):
    """Yields go(): delay seconds after it is called, SIG goes to a thread
    other than the main one, which takes it (pthread_kill on itself), as
    the kernel may give a kill() to any thread of the process.  The main
    thread's blocked call is not interrupted by it."""
    started = threading.Event()

    def send():
        started.wait()
        time.sleep(delay)
        signal.pthread_kill(threading.get_ident(), SIG)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        yield started.set
    finally:
        started.set()
        thread.join()


def elapsed_until_interrupt(call) -> float:
    """Seconds from go() until call() raised Interrupt (the signal's
    handler), the signal taken by another thread."""
    with signal_to_other_thread() as go:
        t0 = time.monotonic()
        go()
        with pytest.raises(Interrupt):
            call()
            # Returned without the handler having run yet: it runs at the
            # interpreter's next check (CPython) or on this call (PyPy).
            pyepoll._binding.run_signal_handlers()
        return time.monotonic() - t0


def test_without_wake_on_signals_another_threads_signal_waits():
    """What wake_on_signals is for (and proof that the signal really goes
    to the other thread): without it the wait sleeps through the signal
    until its timeout."""
    loop = Loop()
    old = signal.signal(SIG, lambda s, f: (_ for _ in ()).throw(Interrupt))
    try:
        elapsed = elapsed_until_interrupt(lambda: loop.wait(1.0))
        assert elapsed >= 0.9, f"interrupted after {elapsed:.2f} s"
    finally:
        signal.signal(SIG, old)
        loop.close()


@pytest.mark.parametrize("backend,trigger", CONFIGS)
@pytest.mark.parametrize("method", ["wait", "wait_batch", "wait_batch_echo",
                                    "serve"])
@pytest.mark.parametrize("timeout", [WAIT, None])
def test_wake_on_signals_ends_a_wait(raising_handler, backend, trigger,
                                     method, timeout):
    loop = Loop(backend=backend, trigger=trigger)
    try:
        loop.wake_on_signals()
        if method == "serve":
            def call():
                loop.serve(lambda h, d: d, timeout=timeout)
        else:
            wait = getattr(loop, method)

            def call():
                list(wait(timeout))
        for _ in range(ROUNDS):
            # A waker at WAIT ends a blocking wait that missed the signal.
            timer = threading.Timer(WAIT, loop.stop if method == "serve"
                                    else loop.wakeup)
            timer.start()
            try:
                elapsed = elapsed_until_interrupt(call)
            finally:
                timer.cancel()
            assert elapsed < PROMPT, f"the handler ran after {elapsed:.2f} s"
        assert list(loop.wait(0)) == []   # still usable, nothing left
    finally:
        loop.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_wake_on_signals_handler_that_stops_serve(backend):
    """The reference server's drain: a handler that returns after
    Loop.stop() ends serve at once, the signal taken by another thread."""
    loop = Loop(backend=backend)
    old = signal.signal(SIG, lambda s, f: loop.stop())
    try:
        loop.wake_on_signals()
        for _ in range(ROUNDS):
            timer = threading.Timer(WAIT, loop.stop)
            timer.start()
            try:
                with signal_to_other_thread() as go:
                    t0 = time.monotonic()
                    go()
                    loop.serve(lambda h, d: d)
                    elapsed = time.monotonic() - t0
            finally:
                timer.cancel()
            assert elapsed < PROMPT, f"stopped after {elapsed:.2f} s"
    finally:
        signal.signal(SIG, old)
        loop.close()


@pytest.mark.parametrize("backend,trigger", CONFIGS)
@pytest.mark.parametrize("method", ["wait_batch_echo", "wait_batch"])
def test_wake_on_signals_during_round_trips(raising_handler, loop_path,
                                            backend, trigger, method):
    """With wake_on_signals on, the C loop answers round trip after round
    trip without coming back to Python (echoes, canned answers): a signal
    taken by another thread meanwhile still runs its handler at once, and
    no answer is lost to the exception (the echoes of the interrupted
    batch go out with the next wait).  That last part holds where the
    loop between two waits is C's (LoopCalls) or the answers are: a Python
    loop (PyPy, PYEPOLL_SPEEDUPS=0) can take the handler's exception
    between a wait and the echoes of its batch."""
    lossless = loop_path == "c" or method == "wait_batch"
    loop = Loop(backend=backend, trigger=trigger)
    try:
        loop.wake_on_signals()
        addr = loop.sockname(loop.listen())
        sock = socket.create_connection(addr, timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        [h] = [h for kind, h, _, _ in loop.wait_batch(5) if kind == EV_OPEN]
        if method == "wait_batch":
            ask, answer = b"ping\n", b"pong\n"
            loop.set_canned(ask, answer, until=time.time() + 3600)
            loop.canned_mark(h)
        else:
            ask = answer = b"x" * 64
        client = RoundTrips(sock, lambda i: ask, lambda i: answer)

        def serve(timeout=0.05):
            # A data-only batch comes back when the time is up.
            for kind, hh, _, _ in getattr(loop, method)(timeout):
                assert (kind, method) == (EV_DATA, "wait_batch_echo")
                loop.queue_echo(hh)

        def serve_until_raised():
            until = time.monotonic() + WAIT
            while time.monotonic() < until:
                serve(WAIT)
        client.start()
        try:
            for _ in range(ROUNDS if lossless else 1):
                elapsed = elapsed_until_interrupt(serve_until_raised)
                assert elapsed < PROMPT, \
                    f"the handler ran after {elapsed:.2f} s"
                assert client.done > 0 and client.error is None
                if not lossless:
                    break
                # Serving goes on, with every answer: the client waits for
                # each one before it asks again.
                done = client.done
                until = time.monotonic() + 5
                while client.done < done + 20:
                    assert time.monotonic() < until, client.error
                    serve()
            assert client.error is None and client.is_alive()
        finally:
            if lossless:
                client.stop(serve)
            else:
                client.finish()
        if lossless:
            assert client.error is None and not client.is_alive()
    finally:
        loop.close()


def _pipes() -> set:
    """(fd, pipe) of this process's descriptors that are pipes: counting
    all descriptors would also count what another thread opens meanwhile
    (libkqueue's own)."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("pipe:"):
            out.add((int(fd), link))
    return out


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="Linux /proc")
def test_wake_on_signals_on_off_close_restore_the_wakeup_fd():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    before = signal.set_wakeup_fd(a.fileno())
    try:
        loop = Loop()
        pipes = _pipes()
        loop.wake_on_signals()
        loop.wake_on_signals()                  # again: nothing more
        new = _pipes() - pipes
        assert len(new) == 2 and len({link for fd, link in new}) == 1
        ours = signal.set_wakeup_fd(a.fileno())
        assert ours not in (-1, a.fileno())
        signal.set_wakeup_fd(ours)
        loop.wake_on_signals(False)
        assert signal.set_wakeup_fd(a.fileno()) == a.fileno()  # put back
        assert not _pipes() & new               # the pipe closed
        loop.wake_on_signals(False)             # off twice: nothing
        loop.wake_on_signals()
        loop.close()
        assert signal.set_wakeup_fd(a.fileno()) == a.fileno()
        new = _pipes() - pipes
        assert len(new) == 0                    # the pipe closed with it
        with pytest.raises(ValueError, match="closed"):
            loop.wake_on_signals()
        # A wakeup fd set after it is left alone by off.
        loop = Loop()
        loop.wake_on_signals()
        signal.set_wakeup_fd(b.fileno())
        loop.wake_on_signals(False)
        assert signal.set_wakeup_fd(a.fileno()) == b.fileno()
        loop.close()
    finally:
        signal.set_wakeup_fd(before)
        a.close()
        b.close()


def test_wake_on_signals_off_when_the_old_wakeup_fd_is_gone():
    """close() puts back no wakeup fd that was closed meanwhile (an
    asyncio loop's, say), and raises nothing: the wakeup fd is unset."""
    a, b = socket.socketpair()
    a.setblocking(False)
    before = signal.set_wakeup_fd(a.fileno())
    try:
        loop = Loop()
        loop.wake_on_signals()
        a.close()
        loop.close()
        assert signal.set_wakeup_fd(-1) == -1
    finally:
        signal.set_wakeup_fd(before)
        b.close()


def test_wake_on_signals_off_the_main_thread_is_refused():
    """As signal.set_wakeup_fd refuses: ValueError, and nothing is left
    watched or open."""
    loop = Loop()
    out = {}

    def other():
        try:
            loop.wake_on_signals()
        except ValueError as exc:
            out["exc"] = exc

    try:
        pipes = _pipes() if os.path.isdir("/proc/self/fd") else None
        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert "main thread" in str(out["exc"])
        if pipes is not None:
            assert not _pipes() - pipes         # no pipe left open
        assert loop.wait(0) == []
    finally:
        loop.close()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="Linux /proc")
def test_close_off_the_main_thread_keeps_the_pipe_a_signal_writes_to():
    """Only the main thread may change the wakeup fd: closed from another
    thread, the loop leaves it and its pipe as they are (a signal still
    writes there), and raises nothing."""
    before = signal.set_wakeup_fd(-1)
    try:
        loop = Loop()
        loop.wake_on_signals()
        w = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(w)
        t = threading.Thread(target=loop.close)
        t.start()
        t.join()
        assert loop.closed
        assert signal.set_wakeup_fd(-1) == w        # still the loop's pipe
        link = os.readlink(f"/proc/self/fd/{w}")    # and still open
        assert link.startswith("pipe:")
        for fd, other in _pipes():
            if other == link:
                os.close(fd)                        # both ends
    finally:
        signal.set_wakeup_fd(before)

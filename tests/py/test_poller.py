"""The Poller contract on every compiled backend, through the Python API."""
from __future__ import annotations

import errno
import io
import os
import pathlib
import resource
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import pyepoll
from pyepoll import EDGE, ERR, HUP, ONESHOT, RDHUP, READ, WRITE

from conftest import BACKENDS, features_of

HAS_EPOLL = "epoll" in BACKENDS


def events_of(poller, timeout=0.0):
    return dict(poller.wait(timeout))


# -- basics ---------------------------------------------------------------------


def test_available_backends_best_first():
    names = pyepoll.available_backends()
    if not os.environ.get("PYEPOLL_DEFAULT_BACKEND"):
        assert names[0] == pyepoll.best_backend()
    assert "poll" in names and "select" in names
    if sys.platform.startswith("linux"):
        assert names[0] == "epoll"
    elif sys.platform == "darwin" or "bsd" in sys.platform:
        assert names[0] == "kqueue"


def test_default_backend_is_best():
    with pyepoll.Poller() as p:
        assert p.backend == pyepoll.best_backend()


@pytest.mark.parametrize("wanted", ["poll", "select", "kqueue", "iocp", ""])
def test_default_backend_from_environment(wanted):
    """PYEPOLL_DEFAULT_BACKEND, read at import, picks the default of
    Poller(), Loop() and DefaultSelector when it names a compiled backend;
    any other value leaves the first one."""
    code = ("import pyepoll, pyepoll.selectors as s\n"
            "print(pyepoll.best_backend(), pyepoll.Poller().backend,"
            " pyepoll.Loop().backend, s.DefaultSelector.__name__)")
    env = dict(os.environ, PYEPOLL_DEFAULT_BACKEND=wanted)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(pathlib.Path(pyepoll.__file__).parents[1])]
        + [p for p in [os.environ.get("PYTHONPATH")] if p])
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    names = pyepoll.available_backends()
    want = wanted if wanted in names else names[0]
    selector = {"epoll": "EpollSelector", "kqueue": "KqueueSelector",
                "poll": "PollSelector", "select": "SelectSelector"}[want]
    assert out.split() == [want, want, want, selector]


def test_unknown_backend_rejected():
    with pytest.raises(ValueError, match="unknown backend"):
        pyepoll.Poller("iocp")
    with pytest.raises(TypeError):
        pyepoll.Poller(5)  # type: ignore[arg-type]


def test_level_triggered_repeats(poller, sockpair):
    a, b = sockpair
    poller.register(a, READ)
    assert events_of(poller) == {}
    b.send(b"x")
    assert events_of(poller, 1.0) == {a.fileno(): READ}
    # Still unread: reported again.
    assert events_of(poller) == {a.fileno(): READ}
    a.recv(10)
    assert events_of(poller) == {}


def test_edge_triggered_once(poller, sockpair):
    if "edge" not in poller.features:
        with pytest.raises(ValueError, match="EDGE is not supported"):
            poller.register(sockpair[0], READ | EDGE)
        return
    a, b = sockpair
    poller.register(a, READ | EDGE)
    b.send(b"x")
    assert events_of(poller, 1.0) == {a.fileno(): READ}
    assert events_of(poller) == {}          # unread, but no new edge
    b.send(b"y")
    assert events_of(poller, 1.0) == {a.fileno(): READ}


def test_oneshot_until_rearmed(poller, sockpair):
    if "oneshot" not in poller.features:
        with pytest.raises(ValueError, match="ONESHOT is not supported"):
            poller.register(sockpair[0], READ | ONESHOT)
        return
    a, b = sockpair
    poller.register(a, READ | ONESHOT)
    b.send(b"x")
    assert events_of(poller, 1.0) == {a.fileno(): READ}
    b.send(b"y")
    assert events_of(poller) == {}
    poller.modify(a, READ | ONESHOT)
    assert events_of(poller, 1.0) == {a.fileno(): READ}


def test_write_ready_and_modify(poller, sockpair):
    a, _ = sockpair
    poller.register(a, WRITE)
    assert events_of(poller, 1.0) == {a.fileno(): WRITE}
    poller.modify(a, READ)
    assert events_of(poller) == {}
    poller.modify(a, READ | WRITE)
    assert events_of(poller, 1.0) == {a.fileno(): WRITE}


def test_read_and_write_merged_into_one_event(poller, sockpair):
    a, b = sockpair
    poller.register(a, READ | WRITE)
    b.send(b"x")
    got = poller.wait(1.0)
    assert got == [(a.fileno(), READ | WRITE)]


def test_peer_close_reports_hangup(poller, sockpair):
    a, b = sockpair
    mask = READ | (RDHUP if "rdhup" in poller.features else 0)
    poller.register(a, mask)
    b.close()
    ev = events_of(poller, 1.0)[a.fileno()]
    assert ev & READ
    if "rdhup" in poller.features:
        assert ev & RDHUP
    assert a.recv(10) == b""


def test_peer_shutdown_write_reports_rdhup(poller, sockpair):
    if "rdhup" not in poller.features:
        pytest.skip(f"{poller.backend} does not report RDHUP")
    a, b = sockpair
    poller.register(a, READ | RDHUP)
    b.shutdown(socket.SHUT_WR)
    ev = events_of(poller, 1.0)[a.fileno()]
    assert ev & RDHUP and ev & READ
    assert not ev & HUP                  # only one direction is shut


def test_unregister_stops_events(poller, sockpair):
    a, b = sockpair
    poller.register(a, READ)
    b.send(b"x")
    poller.unregister(a)
    assert events_of(poller) == {}
    assert len(poller) == 0


def test_fd_closed_and_reused_gets_no_stale_event(poller):
    a, b = socket.socketpair()
    poller.register(a, READ)
    b.send(b"x")
    fd = a.fileno()
    if poller.backend in ("poll", "select"):
        poller.unregister(a)  # user space tables need an explicit unregister
    b.close()
    c, d = socket.socketpair()
    # The same fd number, now a different socket. dup2 closes a's socket and
    # puts c's in its place at once: waiting for the kernel to hand the
    # number out again is a race with any other fd closed meanwhile (a CI
    # run got a lower number back).
    os.dup2(c.fileno(), fd)
    a.detach()  # fd is c's socket now; a must not close it
    c.close()
    c = socket.socket(fileno=fd)
    try:
        poller.register(c, READ)
        assert events_of(poller) == {}
        d.send(b"z")
        assert events_of(poller, 1.0) == {fd: READ}
    finally:
        c.close()
        d.close()


def test_full_batch_loses_nothing(poller):
    pairs = [socket.socketpair() for _ in range(100)]
    try:
        for a, b in pairs:
            poller.register(a, READ)
            b.send(b"x")
        want = {a.fileno() for a, _ in pairs}
        seen = set()
        for _ in range(40):
            batch = poller.wait(1.0, maxevents=7)
            assert 0 < len(batch) <= 7
            seen.update(fd for fd, _ in batch)
            if seen == want:
                break
        assert seen == want
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_one_event_results_for_many_fds_and_event_sets(poller):
    """One ready fd comes back through the C result itself (a small int
    mapped to a shared tuple); every fd and event set must map right,
    including fds above 16383 (the fd's bits start at bit 14)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    pairs = [socket.socketpair() for _ in range(20)]
    fds = [a.fileno() for a, _ in pairs]
    ends = [b for _, b in pairs]
    extra = []
    try:
        if poller.backend != "select" and soft > 16_400 + 2 * 300:
            # Registered alone: the dup is the only descriptor of its file
            # this poller watches.
            for i in range(3):
                x, y = socket.socketpair()
                extra += [x, y]
                fds.append(os.dup2(x.fileno(), 16_390 + 300 * i))
                ends.append(y)
        for fd in fds:
            poller.register(fd, READ | WRITE)
            poller.modify(fd, READ)
        assert poller.wait(0) == []
        for fd, end in zip(fds, ends):
            end.send(b"x")
            assert poller.wait(0) == [(fd, READ)]
            assert poller.wait(None) == [(fd, READ)]
            assert poller.wait(0.5) == [(fd, READ)]
            os.read(fd, 1)
            assert poller.wait(0) == []
        # Another event set of the same fd maps to another pair.
        fd, end = fds[-1], ends[-1]
        poller.modify(fd, READ | WRITE)
        assert poller.wait(0) == [(fd, WRITE)]
        end.send(b"x")
        assert poller.wait(0) == [(fd, READ | WRITE)]
    finally:
        for fd in fds[len(pairs):]:
            os.close(fd)
        for s in extra:
            s.close()
        for a, b in pairs:
            a.close()
            b.close()


def test_batches_of_read_events_and_mixed_batches(poller):
    """A batch whose events are all READ is mapped from fds alone (C sets
    all_read); one other event in it takes the unpacking path.  Both must
    give exactly the kernel's answer."""
    pairs = [socket.socketpair() for _ in range(40)]
    try:
        for a, b in pairs:
            poller.register(a, READ)
            b.send(b"x")
        want = sorted((a.fileno(), READ) for a, _ in pairs)
        assert sorted(poller.wait(0)) == want
        assert sorted(poller.wait(None)) == want
        assert sorted(poller.wait(0.5)) == want
        assert sorted(poller.wait(0, maxevents=1 << 20)) == want
        got = poller.wait(0, maxevents=20)
        assert len(got) == 20 and set(got) <= set(want)
        a, b = pairs[7]
        poller.modify(a, READ | WRITE)
        mixed = sorted(want[:7] + [(a.fileno(), READ | WRITE)] + want[8:])
        assert sorted(poller.wait(0)) == mixed
        assert sorted(poller.wait(None)) == mixed
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_wait_works_while_the_shared_waiter_is_held(poller, sockpair):
    """A waiter stays claimed while its events are read; a wait() finding
    it claimed (another thread reading, or waiting) uses one of its own."""
    from pyepoll._binding import lib
    a, b = sockpair
    c, d = socket.socketpair()
    try:
        poller.register(a, READ)
        poller.register(c, READ)
        b.send(b"x")
        d.send(b"x")
        want = sorted([(a.fileno(), READ), (c.fileno(), READ)])
        # Two events land in the array: the waiter stays claimed...
        assert lib.pe_waiter_poll(poller._w) == 2
        assert lib.pe_waiter_poll(poller._w) == -errno.EBUSY
        # ...and every kind of wait still answers, from its own waiter.
        assert sorted(poller.wait(0)) == want
        assert sorted(poller.wait(None)) == want
        assert sorted(poller.wait(0.01)) == want
        assert sorted(poller.wait(0, maxevents=1 << 30)) == want
        a.recv(1)
        assert poller.wait(0) == [(c.fileno(), READ)]
        lib.pe_waiter_release(poller._w)
        # Released: the shared waiter answers again, one event in the result.
        assert lib.pe_waiter_poll(poller._w) == (
            lib.PE_WAIT_READ_BASE + c.fileno())
        assert poller.wait(0) == [(c.fileno(), READ)]
    finally:
        c.close()
        d.close()


def test_event_not_encodable_in_the_result(monkeypatch, poller):
    """A single event the C result cannot carry (fd >= 65535) comes back
    as a count with the event in the array (faked: raising RLIMIT_NOFILE
    that far is not allowed everywhere)."""
    import pyepoll._poller as mod
    from pyepoll._binding import lib

    def fake_wait(w):
        w.out[0].fd = 70_000
        w.out[0].events = READ | HUP
        w.busy = 1                     # claimed, as C leaves it
        return 1

    monkeypatch.setattr(mod, "_wait_poll", fake_wait)
    assert poller.wait(0) == [(70_000, READ | HUP)]
    # Released after reading: the real call claims it again.
    monkeypatch.undo()
    assert lib.pe_waiter_poll(poller._w) == 0
    assert poller.wait(0) == []


def test_concurrent_waits_on_one_poller(backend, sockpair):
    """While one thread blocks in wait(None), another's wait(0) answers
    (epoll, kqueue) or fails with EBUSY (poll, select: one waiter at a
    time, as select.poll); the blocked one still gets its event."""
    a, b = sockpair
    with pyepoll.Poller(backend) as p:
        p.register(a, READ)
        got = []
        t = threading.Thread(target=lambda: got.append(p.wait(None)))
        t.start()
        try:
            time.sleep(0.05)
            if backend in ("epoll", "kqueue"):
                for _ in range(100):
                    assert p.wait(0) == []
            else:
                with pytest.raises(OSError) as info:
                    p.wait(0)
                assert info.value.errno == errno.EBUSY
        finally:
            b.send(b"x")
            t.join(5)
        assert got == [[(a.fileno(), READ)]]


def test_maxevents_beyond_capacity_uses_the_shared_waiter(poller, sockpair):
    a, b = sockpair
    poller.register(a, READ)
    b.send(b"x")
    assert poller.wait(0, maxevents=1 << 40) == [(a.fileno(), READ)]
    assert poller.wait(0, maxevents=1) == [(a.fileno(), READ)]


# -- errors: the exceptions CPython's select.epoll raises ------------------------


def test_register_twice_file_exists(poller, sockpair):
    poller.register(sockpair[0], READ)
    with pytest.raises(FileExistsError):
        poller.register(sockpair[0], READ)


def test_modify_unregister_unknown_file_not_found(poller, sockpair):
    with pytest.raises(FileNotFoundError):
        poller.modify(sockpair[0], READ)
    with pytest.raises(FileNotFoundError):
        poller.unregister(sockpair[0])


@pytest.mark.parametrize("bad", [-1, -100])
def test_negative_fd_value_error(poller, bad):
    with pytest.raises(ValueError, match="negative"):
        poller.register(bad, READ)


def test_not_a_file_type_error(poller, sockpair):
    with pytest.raises(TypeError):
        poller.register("nope", READ)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        poller.register(sockpair[0], "READ")  # type: ignore[arg-type]


@pytest.mark.parametrize("bits", [0x100000, 1 << 40, -1])
def test_bad_event_bits_value_error(poller, sockpair, bits):
    with pytest.raises(ValueError, match="invalid event mask"):
        poller.register(sockpair[0], bits)


def test_exclusive_only_where_supported(poller, sockpair):
    if "exclusive" in poller.features:
        poller.register(sockpair[0], READ | pyepoll.EXCLUSIVE)
    else:
        with pytest.raises(ValueError, match="EXCLUSIVE is not supported"):
            poller.register(sockpair[0], READ | pyepoll.EXCLUSIVE)


@pytest.mark.skipif(not HAS_EPOLL, reason="epoll only")
def test_regular_file_on_epoll_permission_error():
    with tempfile.TemporaryFile() as f, pyepoll.Poller("epoll") as p:
        with pytest.raises(PermissionError):
            p.register(f, READ)


@pytest.mark.parametrize("call", [
    lambda p, s: p.register(s, READ),
    lambda p, s: p.modify(s, READ),
    lambda p, s: p.unregister(s),
    lambda p, s: p.wait(0),
    lambda p, s: p.fileno(),
    lambda p, s: len(p),
])
def test_use_after_close_value_error(backend, sockpair, call):
    p = pyepoll.Poller(backend)
    p.close()
    p.close()  # idempotent
    assert p.closed
    with pytest.raises(ValueError, match="closed"):
        call(p, sockpair[0])


def test_maxevents_validation(poller):
    with pytest.raises(ValueError, match="maxevents"):
        poller.wait(0, maxevents=0)
    with pytest.raises(ValueError, match="maxevents"):
        poller.wait(0, maxevents=-5)


def test_timeout_type_errors(poller):
    with pytest.raises(TypeError):
        poller.wait("1")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        poller.wait(float("nan"))
    with pytest.raises(OverflowError):
        poller.wait(1e12)


@pytest.mark.skipif(not HAS_EPOLL, reason="compares with select.epoll")
@pytest.mark.parametrize("case", ["twice", "unknown-mod", "unknown-unreg",
                                  "negative", "closed", "regular-file"])
def test_errors_match_select_epoll(case):
    """Same mistake, same exception type as CPython's select.epoll."""
    def run(make):
        a, b = socket.socketpair()
        p = make()
        tmp = tempfile.TemporaryFile()
        try:
            if case == "twice":
                p.register(a, select.EPOLLIN)
                p.register(a, select.EPOLLIN)
            elif case == "unknown-mod":
                p.modify(a, select.EPOLLIN)
            elif case == "unknown-unreg":
                p.unregister(a)
            elif case == "negative":
                p.register(-1, select.EPOLLIN)
            elif case == "closed":
                p.close()
                p.register(a, select.EPOLLIN)
            elif case == "regular-file":
                p.register(tmp, select.EPOLLIN)
        except Exception as exc:  # noqa: BLE001 - the type is the result
            return type(exc)
        finally:
            tmp.close()
            a.close()
            b.close()
            p.close()
        return None

    assert run(lambda: pyepoll.Poller("epoll")) is run(select.epoll)


# -- fileno, cloexec, repr --------------------------------------------------------


def test_fileno_and_cloexec(poller):
    if "fileno" in poller.features:
        fd = poller.fileno()
        assert fd >= 0
        assert not os.get_inheritable(fd)
    else:
        with pytest.raises(io.UnsupportedOperation):
            poller.fileno()
    assert poller.backend in repr(poller)


# -- timeouts, signals, GIL -------------------------------------------------------


def test_timeout_zero_returns_at_once(poller):
    t0 = time.monotonic()
    assert poller.wait(0) == []
    assert time.monotonic() - t0 < 0.5


def test_timeout_waits_at_least_requested(poller):
    t0 = time.monotonic()
    assert poller.wait(0.05) == []
    assert time.monotonic() - t0 >= 0.049
    # A tiny timeout is rounded up, never down to a busy poll of 0.
    t0 = time.monotonic()
    poller.wait(0.0001)
    assert time.monotonic() - t0 >= 0.0001


def test_signal_during_wait_retried_pep475(poller):
    hits = []
    old = signal.signal(signal.SIGALRM, lambda *a: hits.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        t0 = time.monotonic()
        assert poller.wait(0.3) == []
        elapsed = time.monotonic() - t0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert hits == [1]
    assert 0.28 <= elapsed < 2.0   # resumed with the remaining time


@pytest.mark.parametrize("timeout", [None, -1])
def test_signal_during_blocking_wait_retried(poller, sockpair, timeout):
    """A blocking wait interrupted by a signal whose handler returns goes
    on waiting and returns the event that comes later."""
    a, b = sockpair
    poller.register(a, READ)
    hits = []
    old = signal.signal(signal.SIGALRM, lambda *a: hits.append(1))
    timer = threading.Timer(0.3, b.send, (b"x",))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        timer.start()
        assert poller.wait(timeout) == [(a.fileno(), READ)]
    finally:
        timer.join()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert hits == [1]


@pytest.mark.parametrize("timeout", [5.0, None])
def test_signal_handler_exception_ends_wait(poller, timeout):
    """A signal handler's exception ends a timed or blocking wait and
    propagates (PEP 475); the Poller stays usable."""
    class Interrupted(Exception):
        pass

    def handler(*args):
        raise Interrupted

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        t0 = time.monotonic()
        with pytest.raises(Interrupted):
            poller.wait(timeout)
        assert time.monotonic() - t0 < 2.0
        assert poller.wait(0) == []    # the shared waiter was released
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_gil_released_while_waiting(poller):
    counter = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            counter[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        time.sleep(0.02)
        before = counter[0]
        poller.wait(0.3)
        progressed = counter[0] - before
    finally:
        stop.set()
        t.join()
    # With the GIL held for 300 ms the thread could not count at all.
    assert progressed > 10000


def test_wait_wakes_for_another_thread(poller, sockpair):
    a, b = sockpair
    poller.register(a, READ)
    threading.Timer(0.05, lambda: b.send(b"x")).start()
    t0 = time.monotonic()
    assert poller.wait(5.0) == [(a.fileno(), READ)]
    assert time.monotonic() - t0 < 2.0


# -- scale ------------------------------------------------------------------------


@pytest.fixture
def many_fds():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 10_000 + 200
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {want}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    pairs = [socket.socketpair() for _ in range(5_000)]
    yield pairs
    for a, b in pairs:
        a.close()
        b.close()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.libkqueue("one kevent() returns at most 512 events "
                        "(tests/libkqueue/repro_event_cap.c)")
def test_ten_thousand_fds(backend, many_fds):
    socks = [s for pair in many_fds for s in pair]
    with pyepoll.Poller(backend) as p:
        if backend == "select":
            high = max(socks, key=lambda s: s.fileno())
            with pytest.raises(ValueError, match="out of range"):
                p.register(high, READ)
            return
        for s in socks:
            p.register(s, READ)
        assert len(p) == 10_000
        assert p.wait(0) == []
        a, b = many_fds[-1]
        b.send(b"x")
        assert p.wait(1.0) == [(a.fileno(), READ)]
        # Every one ready at once comes back from one call: both ends of
        # every pair get a byte, so all 10,000 registrations are readable.
        for a2, b2 in many_fds:
            a2.send(b"y")
            b2.send(b"y")
        got = p.wait(1.0)
        assert len(got) == 10_000
        assert sorted(fd for fd, _ in got) == sorted(s.fileno() for s in socks)
        assert {ev for _, ev in got} == {READ}


# -- fork ---------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_child_gets_clear_error(backend, sockpair):
    p = pyepoll.Poller(backend)
    a, b = sockpair
    p.register(a, READ)
    pid = os.fork()
    if pid == 0:  # child: report through the exit code, never return
        code = 0
        try:
            kernel = backend in ("epoll", "kqueue")
            try:
                p.wait(0)
                code = 10 if kernel else 0
            except pyepoll.ForkError:
                code = 0 if kernel else 11
            if kernel:
                # Documented: every use raises ForkError, and the poller
                # reads as closed; a new Poller in the child works.
                if not p.closed:
                    code = 13
                for call in (lambda: p.register(b, READ),
                             lambda: p.modify(a, READ),
                             lambda: p.unregister(a), p.fileno):
                    try:
                        call()
                        code = 14
                    except pyepoll.ForkError:
                        pass
                with pyepoll.Poller(backend) as fresh:
                    fresh.register(a, READ)
                    if fresh.wait(0) != []:
                        code = 15
            p.close()          # must not close an unrelated fd
            os.fstat(a.fileno())
        except BaseException:  # noqa: BLE001
            code = 12
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's poller is untouched by the child's close().
    b.send(b"x")
    assert p.wait(1.0) == [(a.fileno(), READ)]
    p.close()

"""pyepoll.epoll against select.epoll, side by side.

Every behaviour test runs on both classes; every argument case runs on both
and the results (or the exception types) must be equal.
"""
from __future__ import annotations

import decimal
import fractions
import gc
import os
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

from conftest import IS_PYPY, PYPY_NO_CPYTHON_REFERENCE, cpython_reference

pytestmark = [
    pytest.mark.skipif(
        not hasattr(select, "epoll")
        or "epoll" not in pyepoll.available_backends(),
        reason="epoll is Linux only"),
    # Both implementations warn alike for these cases (3.9's __int__
    # fallback, 3.13's bool as fd); the warnings are part of the behaviour
    # compared, not noise to show.
    pytest.mark.filterwarnings("ignore:an integer is required"),
    pytest.mark.filterwarnings("ignore:bool is used as a file descriptor"),
]

if hasattr(select, "epoll"):
    from pyepoll import epoll as pe_epoll

    IMPLS = [select.epoll, pe_epoll]
else:  # pragma: no cover - collected but skipped
    IMPLS = []


def impl_params():
    """IMPLS as parameters: select.epoll's skipped where it is not the
    CPython reference (PyPy)."""
    return [pytest.param(c, marks=cpython_reference) if c is select.epoll
            else c for c in IMPLS]

EPOLL_NAMES = [
    "EPOLLIN", "EPOLLOUT", "EPOLLPRI", "EPOLLERR", "EPOLLHUP", "EPOLLRDHUP",
    "EPOLLET", "EPOLLONESHOT", "EPOLLEXCLUSIVE", "EPOLLRDNORM", "EPOLLRDBAND",
    "EPOLLWRNORM", "EPOLLWRBAND", "EPOLLMSG", "EPOLL_CLOEXEC",
]


@pytest.fixture(params=impl_params(), ids=lambda c: c.__module__)
def impl(request):
    return request.param


@pytest.fixture
def ep(impl):
    e = impl()
    yield e
    e.close()


def outcome(fn, *args, **kwargs):
    """("ok", result) or ("raises", exception type): what a call does."""
    try:
        return ("ok", fn(*args, **kwargs))
    except Exception as exc:  # noqa: BLE001 - the type is the result
        return ("raises", type(exc))


def both(scenario):
    """Run scenario(cls) on select.epoll and on pyepoll.epoll; return the two
    outcomes (they must be equal)."""
    if IS_PYPY:
        pytest.skip(PYPY_NO_CPYTHON_REFERENCE)
    return [outcome(scenario, cls) for cls in IMPLS]


def assert_same(scenario):
    std, ours = both(scenario)
    assert ours == std
    return std


# -- module surface -----------------------------------------------------------


@cpython_reference
def test_constants_match_select():
    for name in EPOLL_NAMES:
        assert getattr(pyepoll, name) == getattr(select, name), name


def test_import_pyepoll_as_select_works():
    import pyepoll as sel
    with sel.epoll() as e:
        a, b = socket.socketpair()
        try:
            e.register(a.fileno(), sel.EPOLLOUT)
            assert e.poll(1) == [(a.fileno(), sel.EPOLLOUT)]
        finally:
            a.close()
            b.close()


def test_is_a_class_with_select_epoll_methods():
    for name in ("register", "modify", "unregister", "poll", "close",
                 "fileno", "fromfd", "__enter__", "__exit__", "closed"):
        assert hasattr(pe_epoll, name), name


def test_subclassable():
    # select.epoll refuses subclasses; allowing them breaks no caller.
    class Sub(pe_epoll):
        pass

    with Sub() as e:
        assert isinstance(e, pe_epoll)
        with Sub.fromfd(os.dup(e.fileno())) as e2:
            assert isinstance(e2, Sub)


def test_dotted_name_resolves_to_the_class_as_select_epoll_does():
    """Plugin systems and tools resolve "pyepoll.epoll" as a dotted name;
    it must give the drop-in class, as "select.epoll" gives select's, and
    the class must name itself by that path."""
    import importlib
    import pkgutil

    assert pkgutil.resolve_name("select.epoll") is select.epoll
    assert pkgutil.resolve_name("pyepoll.epoll") is pe_epoll
    assert pkgutil.resolve_name("pyepoll:epoll") is pe_epoll
    assert isinstance(pe_epoll, type)
    assert f"{pe_epoll.__module__}.{pe_epoll.__qualname__}" == "pyepoll.epoll"
    # No submodule shadows the name: importing it as a module fails the
    # way `import select.epoll` does.
    for dotted in ("select.epoll", "pyepoll.epoll"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(dotted)


# -- constructor ----------------------------------------------------------------


@pytest.mark.parametrize("sizehint", [
    -1, 1, 5, 2**31 - 1, 0, -2, -2**31, 2**31, -2**31 - 1, 2**64, 1.5, 1.0,
    "1", None, True, False, decimal.Decimal(3)])
def test_constructor_sizehint(sizehint):
    assert_same(lambda cls: cls(sizehint).close())
    assert_same(lambda cls: cls(sizehint=sizehint).close())


@pytest.mark.parametrize("flags", [
    0, select.EPOLL_CLOEXEC if hasattr(select, "EPOLL_CLOEXEC") else 0,
    1, -1, 2**31, 2**40, 1.0, None, "0", True, False])
def test_constructor_flags(flags):
    assert_same(lambda cls: cls(-1, flags).close())
    assert_same(lambda cls: cls(flags=flags).close())


def test_constructor_bad_sizehint_checked_before_flags():
    # sizehint=0 and bad flags: ValueError, not OSError.
    assert assert_same(lambda cls: cls(0, 12345)) == ("raises", ValueError)
    assert assert_same(lambda cls: cls(1.5, 12345)) == ("raises", TypeError)


def test_constructor_extra_arguments():
    assert_same(lambda cls: cls(1, 0, 0))
    assert_same(lambda cls: cls(bogus=1))


def test_close_on_exec(ep):
    assert not os.get_inheritable(ep.fileno())


def test_descriptor_not_inherited_by_exec(ep):
    code = (f"import os\ntry:\n    os.fstat({ep.fileno()})\n    print('open')\n"
            f"except OSError:\n    print('closed')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=30, close_fds=False)
    assert out.stdout.strip() == "closed"


# -- register / modify / unregister argument conversions --------------------------


class FilenoObj:
    def __init__(self, value):
        self.value = value

    def fileno(self):
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value


class IndexObj:
    def __init__(self, value):
        self.value = value

    def __index__(self):
        return self.value


def fd_cases(sock):
    fd = sock.fileno()
    return {
        "int": fd, "socket": sock, "fileno-obj": FilenoObj(fd),
        "int-subclass": type("I", (int,), {})(fd),
        "minus-1": -1, "minus-big": -2**31 - 1, "int-min": -2**31,
        "above-int": 2**31, "huge": 2**70, "float": float(fd), "str": str(fd),
        "none": None, "object": object(), "index-obj": IndexObj(fd),
        "fileno-str": FilenoObj(str(fd)), "fileno-negative": FilenoObj(-3),
        "fileno-huge": FilenoObj(2**40), "fileno-float": FilenoObj(float(fd)),
        "fileno-raises": FilenoObj(OSError("nope")),
        "fileno-raises-attr": FilenoObj(AttributeError("inner")),
        "fileno-bool": FilenoObj(True), "unused-fd": 19999,
    }


FD_CASE_NAMES = list(fd_cases(FilenoObj(3)).keys())


@pytest.mark.parametrize("case", FD_CASE_NAMES)
def test_register_fd_conversion(case, sockpair):
    def scenario(cls):
        with cls() as e:
            e.register(fd_cases(sockpair[0])[case], select.EPOLLOUT)
            return e.poll(0)
    assert_same(scenario)


@pytest.mark.parametrize("case", FD_CASE_NAMES)
def test_modify_and_unregister_fd_conversion(case, sockpair):
    def modify(cls):
        with cls() as e:
            e.register(sockpair[0], select.EPOLLIN)
            e.modify(fd_cases(sockpair[0])[case], select.EPOLLOUT)
            return e.poll(0)

    def unregister(cls):
        with cls() as e:
            e.register(sockpair[0], select.EPOLLOUT)
            e.unregister(fd_cases(sockpair[0])[case])
            return e.poll(0)
    assert_same(modify)
    assert_same(unregister)


@pytest.mark.parametrize("mask", [
    0, 1, 4, 7, -1, -2**31, -2**40, 2**31, 2**32 - 1, 2**32, 2**32 + 4,
    2**64 + 1, 2**100 + 4, 1.0, "1", None, True, IndexObj(4),
    0x80000004, 0x40000004, 0x10000005, 0x50000001, 0x2001, 0x400,
])
def test_register_eventmask_conversion(mask, sockpair):
    def scenario(cls):
        with cls() as e:
            e.register(sockpair[0], mask)
            return e.poll(0)

    def modify(cls):
        with cls() as e:
            e.register(sockpair[0], select.EPOLLIN)
            e.modify(sockpair[0], mask)
            return e.poll(0)
    assert_same(scenario)
    assert_same(modify)


def test_register_default_mask(ep, sockpair):
    ep.register(sockpair[0])
    sockpair[1].send(b"x")
    assert ep.poll(1) == [
        (sockpair[0].fileno(), select.EPOLLIN | select.EPOLLOUT)]


def test_register_keywords(ep, sockpair):
    ep.register(fd=sockpair[0].fileno(), eventmask=select.EPOLLOUT)
    ep.modify(fd=sockpair[0].fileno(), eventmask=select.EPOLLIN)
    ep.unregister(fd=sockpair[0].fileno())
    assert ep.poll(timeout=0, maxevents=4) == []


def test_missing_arguments():
    assert_same(lambda cls: cls().register())
    assert_same(lambda cls: cls().modify(0))
    assert_same(lambda cls: cls().unregister())
    assert_same(lambda cls: cls().register(0, 1, 2))
    assert_same(lambda cls: cls().poll(0, 1, 2))


def test_register_twice_file_exists(ep, sockpair):
    ep.register(sockpair[0])
    with pytest.raises(FileExistsError):
        ep.register(sockpair[0])


def test_modify_unregister_unknown_file_not_found(ep, sockpair):
    with pytest.raises(FileNotFoundError):
        ep.modify(sockpair[0], select.EPOLLIN)
    with pytest.raises(FileNotFoundError):
        ep.unregister(sockpair[0])


def test_unregister_twice(ep, sockpair):
    ep.register(sockpair[0])
    ep.unregister(sockpair[0])
    with pytest.raises(FileNotFoundError):
        ep.unregister(sockpair[0])


def test_register_regular_file_permission_error(ep):
    with tempfile.TemporaryFile() as f:
        with pytest.raises(PermissionError):
            ep.register(f, select.EPOLLIN)


def test_register_closed_fd_bad_descriptor(ep):
    a, b = socket.socketpair()
    fd = a.fileno()
    a.close()
    b.close()
    with pytest.raises(OSError) as info:
        ep.register(fd, select.EPOLLIN)
    assert info.value.errno == 9


def test_register_itself_refused():
    def scenario(cls):
        with cls() as e:
            e.register(e.fileno(), select.EPOLLIN)
    assert_same(scenario)


@cpython_reference
def test_error_messages_match(sockpair):
    def scenario(cls):
        with cls() as e:
            e.register(sockpair[0])
            e.register(sockpair[0])
    std, ours = [], []
    for cls, out in zip(IMPLS, (std, ours)):
        try:
            scenario(cls)
        except OSError as exc:
            out.append((type(exc), exc.errno, exc.strerror, str(exc)))
    assert std == ours


# -- poll argument conversions ----------------------------------------------------


TIMEOUTS = [
    None, 0, 0.0, -0.0, 1, 1.0, 0.001, 1e-9, -1e-7, True, False, 2**20,
    -1, -1.0, -1.5, -2**20, float("nan"), float("inf"), float("-inf"),
    1e300, -1e300, 2**62, 2**63, -2**63, 2**64, 2**31 - 1, 2.2e6, -2.2e6,
    9.2e9, -9.2e9, 2147483.647, 2147483.648, "1", b"1", decimal.Decimal("0.5"),
    fractions.Fraction(1, 2), IndexObj(0), IndexObj(2**70), [], complex(1, 0),
]


@pytest.mark.parametrize("timeout", TIMEOUTS, ids=repr)
def test_poll_timeout_conversion(timeout, sockpair):
    # Something is always ready, so a valid timeout returns at once.
    def scenario(cls):
        with cls() as e:
            e.register(sockpair[0], select.EPOLLOUT)
            return e.poll(timeout)
    assert_same(scenario)


@pytest.mark.parametrize("maxevents", [
    -1, 1, 2, 1023, 1024, 5000, 0, -2, -2**31, 2**31, -2**31 - 1, 2**64,
    1.0, "1", None, True, False, IndexObj(1), decimal.Decimal(1)], ids=repr)
def test_poll_maxevents_conversion(maxevents, sockpair):
    def scenario(cls):
        with cls() as e:
            e.register(sockpair[0], select.EPOLLOUT)
            e.register(sockpair[1], select.EPOLLOUT)
            return sorted(e.poll(0, maxevents))
    assert_same(scenario)
    assert_same(lambda cls: sorted(cls().poll(timeout=0, maxevents=maxevents)))


def test_poll_maxevents_sequence_on_one_object(sockpair):
    """poll() remembers the last maxevents it was given (its fast path
    compares by identity): equal values of other types must still be
    refused, and equal ints that are other objects still accepted."""
    def scenario(cls):
        out = []
        with cls() as e:
            e.register(sockpair[0], select.EPOLLOUT)
            e.register(sockpair[1], select.EPOLLOUT)
            for maxevents in [1, 1.0, True, 1, decimal.Decimal(1), 1,
                              10**3 + 23, int("1023"), -1, -1.0, -1, 1,
                              IndexObj(2), 2, 0]:
                try:
                    out.append(sorted(e.poll(0, maxevents)))
                except Exception as exc:  # noqa: BLE001
                    out.append(type(exc))
        return out
    assert_same(scenario)


def test_poll_while_its_waiter_is_held(sockpair):
    """The waiter that poll() shares stays claimed while another thread
    reads its events; a poll() meanwhile uses one of its own."""
    from pyepoll._binding import lib
    a, b = sockpair
    with pe_epoll() as e:
        e.register(a, select.EPOLLOUT)
        e.register(b, select.EPOLLOUT)
        want = sorted([(a.fileno(), select.EPOLLOUT),
                       (b.fileno(), select.EPOLLOUT)])
        shared = e._wm[1]
        assert lib.pe_waiter_poll(shared) == 2     # claimed until released
        assert sorted(e.poll(0)) == want
        assert sorted(e.poll(None)) == want
        assert sorted(e.poll(0.01)) == want
        lib.pe_waiter_release(shared)
        assert sorted(e.poll(0)) == want
        e.unregister(b)
        assert e.poll(0) == [(a.fileno(), select.EPOLLOUT)]


def test_poll_argument_order_on_closed_object():
    def closed(cls):
        e = cls()
        e.close()
        return e
    # maxevents is converted before the closed check ...
    assert assert_same(lambda cls: closed(cls).poll(0, 1.5)) == \
        ("raises", TypeError)
    assert assert_same(lambda cls: closed(cls).poll(0, 2**40)) == \
        ("raises", OverflowError)
    # ... its value checked after it; and so is the timeout.
    assert assert_same(lambda cls: closed(cls).poll(0, 0)) == \
        ("raises", ValueError)
    assert assert_same(lambda cls: closed(cls).poll("x")) == \
        ("raises", ValueError)
    # Bad arguments of register are reported before the closed object.
    assert assert_same(lambda cls: closed(cls).register("x")) == \
        ("raises", TypeError)
    assert assert_same(lambda cls: closed(cls).register(0, 1.5)) == \
        ("raises", TypeError)
    assert assert_same(lambda cls: closed(cls).unregister(-1)) == \
        ("raises", ValueError)
    assert assert_same(lambda cls: closed(cls).modify(2**40, 1)) == \
        ("raises", OverflowError)


def test_poll_bad_timeout_checked_before_maxevents():
    assert assert_same(lambda cls: cls().poll("x", 0)) == ("raises", TypeError)
    assert assert_same(lambda cls: cls().poll(float("nan"), 0)) == \
        ("raises", ValueError)


def test_default_maxevents_is_fd_setsize_minus_one():
    # select.epoll.poll() with maxevents=-1 returns at most 1023 events; the
    # rest come with the next call.
    base, other = socket.socketpair()
    fds = [os.dup(base.fileno()) for _ in range(1100)]
    try:
        def scenario(cls):
            with cls() as e:
                for fd in fds:
                    e.register(fd, select.EPOLLOUT)
                first = e.poll(0)
                big = e.poll(0, 2000)
                return len(first), len(big), len(e.poll(0, 1))
        assert assert_same(scenario) == ("ok", (1023, 1100, 1))
    finally:
        for fd in fds:
            os.close(fd)
        base.close()
        other.close()


# -- closed objects -------------------------------------------------------------


def test_closed_object(impl, sockpair):
    e = impl()
    fd = e.fileno()
    assert not e.closed
    e.close()
    assert e.closed
    e.close()                                   # idempotent
    with pytest.raises(OSError):
        os.fstat(fd)                            # the descriptor is gone
    for call in (lambda: e.fileno(), lambda: e.poll(0),
                 lambda: e.register(sockpair[0]),
                 lambda: e.modify(sockpair[0], 1),
                 lambda: e.unregister(sockpair[0]),
                 lambda: e.__enter__()):
        with pytest.raises(ValueError, match="closed epoll object"):
            call()


def test_context_manager(impl):
    with impl() as e:
        assert isinstance(e, impl)
        assert not e.closed
    assert e.closed
    with pytest.raises(ValueError):
        with e:
            pass


def test_exit_calls_close_method():
    closed = []

    class Sub(pe_epoll):
        def close(self):
            closed.append(True)
            super().close()

    with Sub():
        pass
    assert closed == [True]


def test_exit_arguments(impl):
    e = impl()
    assert e.__exit__() is None
    assert e.closed
    e = impl()
    assert e.__exit__(None, None, None) is None
    with pytest.raises(TypeError):
        e.__exit__(None, None, None, None)


def test_gc_closes_descriptor(impl):
    e = impl()
    fd = e.fileno()
    del e
    gc.collect()
    with pytest.raises(OSError):
        os.fstat(fd)


# -- fromfd --------------------------------------------------------------------


def test_fromfd_wraps_without_dup(impl, sockpair):
    with impl() as e:
        e2 = impl.fromfd(e.fileno())
        assert e2.fileno() == e.fileno()
        e2.register(sockpair[0], select.EPOLLOUT)
        assert e.poll(1) == [(sockpair[0].fileno(), select.EPOLLOUT)]
        e2.close()
        with pytest.raises(OSError):
            e.poll(0)                          # the shared descriptor is closed


@pytest.mark.parametrize("maker", impl_params(),
                         ids=lambda c: "made-by-" + c.__module__)
@pytest.mark.parametrize("user", impl_params(),
                         ids=lambda c: "used-by-" + c.__module__)
def test_fromfd_across_implementations(maker, user, sockpair):
    """Registrations made by one implementation are seen by the other."""
    with maker() as e:
        e.register(sockpair[0], select.EPOLLIN)
        e.register(sockpair[1], select.EPOLLOUT)
        with user.fromfd(os.dup(e.fileno())) as other:
            sockpair[1].send(b"x")
            assert sorted(other.poll(1)) == sorted([
                (sockpair[0].fileno(), select.EPOLLIN),
                (sockpair[1].fileno(), select.EPOLLOUT)])
            other.modify(sockpair[1], select.EPOLLIN)
            assert e.poll(1) == [(sockpair[0].fileno(), select.EPOLLIN)]
            other.unregister(sockpair[0])
            assert e.poll(0) == []
            with pytest.raises(FileExistsError):
                other.register(sockpair[1])


@pytest.mark.parametrize("fd", [-1, -2, 2**31, 1.0, "3", None], ids=repr)
def test_fromfd_argument(fd):
    std, ours = both(lambda cls: cls.fromfd(fd).close())
    if std[0] == "raises" and issubclass(std[1], OSError):
        # The errno CPython reports here is whatever errno held.
        assert ours[0] == "raises" and issubclass(ours[1], OSError)
    else:
        assert ours == std


def test_fromfd_keyword_refused():
    assert assert_same(lambda cls: cls.fromfd(fd=3)) == ("raises", TypeError)


# -- events ---------------------------------------------------------------------


def test_poll_result_types(ep, sockpair):
    ep.register(sockpair[0], select.EPOLLIN | select.EPOLLOUT)
    sockpair[1].send(b"x")
    result = ep.poll(1)
    assert type(result) is list
    assert result == [(sockpair[0].fileno(), select.EPOLLIN | select.EPOLLOUT)]
    fd, events = result[0]
    assert type(result[0]) is tuple and type(fd) is int and type(events) is int


def test_level_triggered(ep, sockpair):
    a, b = sockpair
    ep.register(a, select.EPOLLIN)
    assert ep.poll(0) == []
    b.send(b"x")
    assert ep.poll(1) == [(a.fileno(), select.EPOLLIN)]
    assert ep.poll(0) == [(a.fileno(), select.EPOLLIN)]
    a.recv(1)
    assert ep.poll(0) == []


def test_edge_triggered(ep, sockpair):
    a, b = sockpair
    ep.register(a, select.EPOLLIN | select.EPOLLET)
    b.send(b"x")
    assert ep.poll(1) == [(a.fileno(), select.EPOLLIN)]
    assert ep.poll(0) == []
    b.send(b"y")
    assert ep.poll(1) == [(a.fileno(), select.EPOLLIN)]


def test_oneshot(ep, sockpair):
    a, b = sockpair
    ep.register(a, select.EPOLLIN | select.EPOLLONESHOT)
    b.send(b"x")
    assert ep.poll(1) == [(a.fileno(), select.EPOLLIN)]
    assert ep.poll(0) == []
    ep.modify(a, select.EPOLLIN | select.EPOLLONESHOT)
    assert ep.poll(1) == [(a.fileno(), select.EPOLLIN)]


def test_hangup_and_rdhup(ep, sockpair):
    # pyepoll's constants (equal to select's, test_constants_match_select):
    # PyPy's select has no EPOLLRDHUP.
    pe = pyepoll
    a, b = sockpair
    ep.register(a, pe.EPOLLIN | pe.EPOLLRDHUP)
    b.shutdown(socket.SHUT_WR)
    assert ep.poll(1) == [(a.fileno(), pe.EPOLLIN | pe.EPOLLRDHUP)]
    b.close()
    assert ep.poll(1) == [(a.fileno(), pe.EPOLLIN | pe.EPOLLRDHUP
                           | pe.EPOLLHUP)]


def test_zero_mask_still_reports_hangup(ep, sockpair):
    a, b = sockpair
    ep.register(a, 0)
    assert ep.poll(0) == []
    b.close()
    assert ep.poll(1) == [(a.fileno(), select.EPOLLHUP)]


def test_error_reported(ep):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()                        # nobody listens: refused
    s = socket.socket()
    s.setblocking(False)
    try:
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        except ConnectionRefusedError:
            pytest.skip("refused synchronously")
        ep.register(s, select.EPOLLOUT)
        (fd, events), = ep.poll(2)
        assert fd == s.fileno()
        assert events & select.EPOLLERR and events & select.EPOLLHUP
    finally:
        s.close()


def test_rdnorm_wrnorm_bits_pass_through(ep, sockpair):
    a, b = sockpair
    ep.register(a, select.EPOLLRDNORM | select.EPOLLWRNORM)
    b.send(b"x")
    assert ep.poll(1) == [(a.fileno(), select.EPOLLRDNORM | select.EPOLLWRNORM)]


def test_unregister_drops_pending_events(ep, sockpair):
    a, b = sockpair
    ep.register(a, select.EPOLLIN)
    b.send(b"x")
    ep.unregister(a)
    assert ep.poll(0) == []


def test_maxevents_batches_lose_nothing(ep):
    pairs = [socket.socketpair() for _ in range(50)]
    try:
        for a, _ in pairs:
            ep.register(a, select.EPOLLOUT)
        seen = set()
        for _ in range(20):
            batch = ep.poll(1, 7)
            assert 0 < len(batch) <= 7
            seen.update(fd for fd, _ in batch)
        assert seen == {a.fileno() for a, _ in pairs}
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_fd_closed_and_reused(ep):
    a, b = socket.socketpair()
    ep.register(a, select.EPOLLIN)
    b.send(b"x")
    fd = a.fileno()
    a.close()
    b.close()
    c, d = socket.socketpair()
    try:
        assert c.fileno() == fd
        assert ep.poll(0) == []           # the kernel dropped it on close
        ep.register(c, select.EPOLLIN)    # no FileExistsError
        d.send(b"z")
        assert ep.poll(1) == [(fd, select.EPOLLIN)]
    finally:
        c.close()
        d.close()


def test_high_event_bits_come_back_unsigned(monkeypatch):
    """Events are returned as C unsigned ints: a set bit 31 is 2**31, not a
    negative number (the kernel reports no such bit today, so the C core's
    output is faked here)."""
    mod = sys.modules["pyepoll._epoll"]
    fake = [(7, 0x80000001), (8, 0xFFFFFFFF)]

    def fake_wait(w):
        # A pe_waiter result: a count, the events in its array (an event
        # with such bits never travels in the result itself).
        for i, (fd, events) in enumerate(fake):
            w.out[i].fd = fd
            w.out[i].events = events
        return len(fake)

    monkeypatch.setattr(mod, "_wait_poll", fake_wait)
    with pe_epoll() as e:
        assert e.poll(0) == fake
        fake[1:] = []
        assert e.poll(0) == [(7, 0x80000001)]


# -- timeouts -------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [0.05, 0.0501, 0.0005])
def test_timeout_waits_at_least(ep, timeout):
    t0 = time.monotonic()
    assert ep.poll(timeout) == []
    assert time.monotonic() - t0 >= timeout


@pytest.mark.parametrize("timeout", [-1, -0.5, None])
def test_negative_timeout_blocks(ep, sockpair, timeout):
    a, b = sockpair
    ep.register(a, select.EPOLLIN)
    timer = threading.Timer(0.2, b.send, (b"x",))
    t0 = time.monotonic()
    timer.start()
    try:
        assert ep.poll(timeout) == [(a.fileno(), select.EPOLLIN)]
    finally:
        timer.join()
    assert time.monotonic() - t0 >= 0.15


def test_tiny_negative_timeout_polls():
    # -1e-7 s rounds to 0 ms in CPython: it does not block.
    def scenario(cls):
        with cls() as e:
            t0 = time.monotonic()
            result = e.poll(-1e-7)
            return result, time.monotonic() - t0 < 0.5
    assert assert_same(scenario) == ("ok", ([], True))


def test_poll_releases_the_gil(ep, sockpair):
    a, b = sockpair
    ep.register(a, select.EPOLLIN)
    result = []
    t = threading.Thread(target=lambda: result.append(ep.poll(5)))
    t.start()
    time.sleep(0.1)
    b.send(b"x")                    # runs while the other thread waits
    t.join(5)
    assert result == [[(a.fileno(), select.EPOLLIN)]]


def test_threads_polling_one_object_get_their_own_events(ep):
    """Several threads in poll() on one object at once (each with
    EPOLLONESHOT registrations): every event goes to exactly one thread and
    comes back intact."""
    pairs = [socket.socketpair() for _ in range(16)]
    try:
        for a, _ in pairs:
            ep.register(a, select.EPOLLIN | select.EPOLLONESHOT)
        for round_ in range(5):
            results = []
            barrier = threading.Barrier(4)

            def worker():
                barrier.wait()
                got = []
                while len(got) < 4:
                    got += ep.poll(5, 1)
                results.append(got)

            threads = [threading.Thread(target=worker) for _ in range(4)]
            for t in threads:
                t.start()
            time.sleep(0.05)            # all four blocked in poll()
            for _, b in pairs:
                b.send(b"x")
            for t in threads:
                t.join(10)
            seen = sorted(fd for got in results for fd, _ in got)
            assert seen == sorted(a.fileno() for a, _ in pairs)
            assert all(ev == select.EPOLLIN for got in results for _, ev in got)
            for a, _ in pairs:
                a.recv(1)
                ep.modify(a, select.EPOLLIN | select.EPOLLONESHOT)
    finally:
        for a, b in pairs:
            a.close()
            b.close()


# -- signals (PEP 475) ------------------------------------------------------------


needs_itimer = pytest.mark.skipif(not hasattr(signal, "setitimer"),
                                  reason="needs setitimer")


@pytest.fixture
def alarm_handler():
    """Install a SIGALRM handler; fire it with signal.setitimer."""
    installed = []

    def install(handler):
        installed.append(signal.signal(signal.SIGALRM, handler))

    yield install
    signal.setitimer(signal.ITIMER_REAL, 0)
    if installed:
        signal.signal(signal.SIGALRM, installed[0])


@needs_itimer
def test_signal_without_exception_retries_with_remaining_time(ep, alarm_handler):
    calls = []
    alarm_handler(lambda *args: calls.append(1))
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    t0 = time.monotonic()
    assert ep.poll(0.4) == []
    elapsed = time.monotonic() - t0
    assert calls == [1]
    assert 0.4 <= elapsed < 1.5


@needs_itimer
@pytest.mark.timeout(30)
def test_signal_without_exception_blocking_poll_continues(ep, sockpair, alarm_handler):
    a, b = sockpair
    ep.register(a, select.EPOLLIN)
    calls = []
    alarm_handler(lambda *args: calls.append(1))
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    timer = threading.Timer(0.3, b.send, (b"x",))
    timer.start()
    try:
        assert ep.poll() == [(a.fileno(), select.EPOLLIN)]
    finally:
        timer.join()
    assert calls == [1]


class Interrupt(Exception):
    pass


def _raise_interrupt(*args):
    raise Interrupt


@needs_itimer
@pytest.mark.timeout(30)
@pytest.mark.parametrize("timeout", [None, 5, -1])
def test_signal_exception_propagates_promptly(ep, alarm_handler, timeout):
    alarm_handler(_raise_interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    t0 = time.monotonic()
    with pytest.raises(Interrupt):
        ep.poll(timeout)
    assert time.monotonic() - t0 < 2.0


@needs_itimer
def test_repeated_signals_do_not_extend_the_wait(ep, alarm_handler):
    calls = []
    alarm_handler(lambda *args: calls.append(1))
    signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
    t0 = time.monotonic()
    assert ep.poll(0.3) == []
    elapsed = time.monotonic() - t0
    signal.setitimer(signal.ITIMER_REAL, 0)
    assert len(calls) >= 5
    assert 0.3 <= elapsed < 1.5

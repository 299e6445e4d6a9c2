"""pyepoll.bench: smoke runs produce well-formed tables and reports, and the
correctness checks that guard every timing really reject wrong answers."""
from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from pyepoll.bench import _proc, _servers
from pyepoll.bench._report import Section, Table, check_line, ratio_line

linux = pytest.mark.skipif(not sys.platform.startswith("linux"),
                           reason="the network scenarios are Linux only")
# Under the preloaded ASan runtime every child (the C client, nginx, wrk)
# would inherit it; benchmarks are run against the plain wheel instead.
plain = pytest.mark.skipif(os.environ.get("PYEPOLL_SANITIZED") == "1",
                           reason="benchmarks are not run under sanitizers")
need_cc = pytest.mark.skipif(_proc.compiler() is None, reason="no C compiler")

WITHOUT = "uvloop,httptools,wrk,nginx,matplotlib"
# --python's interpreter imports its own installed pyepoll; this one has
# none when the suite runs on a source tree with an in-place build only.
installed = pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import pyepoll"], cwd="/",
                   capture_output=True, timeout=60).returncode != 0,
    reason="pyepoll is not installed for this Python (only the source "
           "tree has it), and --python runs servers on an installed one")


def bench(*args: str, without: str = "", timeout: float = 60) -> str:
    env = dict(os.environ)
    if without:
        env["PYEPOLL_BENCH_WITHOUT"] = without
    res = subprocess.run([sys.executable, "-m", "pyepoll.bench", *args],
                         capture_output=True, text=True, timeout=timeout, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res.stdout


def rows(text: str, title: str) -> dict:
    """Rows of the table titled `title` in rendered output: name -> cells."""
    block = text.split(title, 1)[1].split("\n\n", 1)[0].splitlines()
    header = block[1].split()
    out = {}
    for line in block[3:]:
        if line.startswith("note:"):
            continue
        name = re.split(r"\s{2,}", line.strip())[0]
        out[name] = line[len(name):].strip()
    assert header, block
    return out


# -- tables ------------------------------------------------------------------------


def test_table_median_range_and_ratio() -> None:
    t = Table("t", "us", [10, 20], reference="ref")
    for v in (1.0, 3.0, 2.0):
        t.add("ref", 10, v)
    for v in (4.0, 8.0, 6.0):
        t.add("other", 10, v)
    assert t.cell("other", 10).median == 6.0
    assert (t.cell("other", 10).low, t.cell("other", 10).high) == (4.0, 8.0)
    assert t.ratio("other", 10) == 3.0
    assert t.ratio("other", 20) is None
    text = t.render()
    assert "6.00 [4.00-8.00] 3.00x" in text
    assert "n/a" in text                      # the point nobody measured
    md = t.markdown()
    assert "| other | 6.00 [4.00-8.00] **3.00x** | n/a |" in md


def test_echo_floor_lines_name_an_unreachable_uvloop_target() -> None:
    from pyepoll.bench.echo import floor_lines
    # The C server itself misses both uvloop targets: both get a reason.
    out = floor_lines(0.91, 0.97)
    assert out[0] == "floor: plain C epoll (no Python) vs uvloop: CPU/msg 0.91x, msg/s 0.97x"
    assert len(out) == 3 and "0.9x uvloop CPU/msg" in out[1] and "1.1x uvloop msg/s" in out[2]
    # Where the C server clears them, nothing is excused.
    assert floor_lines(0.8, 1.3) == [out[0].replace("0.91x", "0.80x").replace("0.97x", "1.30x")]
    assert floor_lines(None, 1.0) == []


def test_paired_ratio_is_the_median_of_per_repeat_ratios() -> None:
    from pyepoll.bench.echo import low_label, paired_ratio

    def run(cpu_us: float) -> _proc.Run:
        # 1,000 operations: cpu_per_op_us = seconds * 1e3
        return _proc.Run(1000, 1.0, 0, 0, 1.0, 2.0, 3.0, cpu_us / 1e3, 0.0, 0.0, 1.0)
    # The machine's speed drifts over the repeats: the per-repeat ratios
    # are 2, 3 and 2, while the medians taken apart would give 30 / 10.
    results = {"a": {(64, 1): [run(4), run(30), run(200)]},
               "b": {(64, 1): [run(2), run(10), run(100)]}}
    cpu = lambda r: r.cpu_per_op_us       # noqa: E731
    assert paired_ratio(results, "a", "b", (64, 1), cpu) == pytest.approx(2.0)
    assert paired_ratio(results, "a", "c", (64, 1), cpu) is None
    assert low_label((64, 1)) == "64 B x 1" and low_label((1024, 4)) == "1 KiB x 4"


@linux
def test_sleeps_counts_a_threads_voluntary_switches() -> None:
    import time
    before = _proc.sleeps(os.getpid())
    for _ in range(20):
        time.sleep(0.001)
    assert _proc.sleeps(os.getpid()) - before >= 20


def test_check_line_says_met_or_missed() -> None:
    assert check_line("a", 0.8, 1.0, "<=").endswith("met")
    assert check_line("a", 1.2, 1.0, "<=").endswith("MISSED")
    assert check_line("a", 1.6, 1.5, ">=").endswith("met")
    assert check_line("a", None, 1.5, ">=").endswith("not measured")


def test_ratio_line_says_the_ratio_or_not_measured() -> None:
    assert ratio_line("a vs b", 0.876) == "a vs b: 0.88x"
    assert ratio_line("a vs b", None) == "a vs b: not measured"
    assert ratio_line("a vs b", float("nan")) == "a vs b: not measured"


def test_section_markdown_lists_skips_and_charts() -> None:
    t = Table("tt", "x", [1])
    t.add("a", 1, 1.0)
    sec = Section("s", intro=["hello"], tables=[t], summary=["c: met"],
                  skipped=["nginx: not installed"])
    md = sec.markdown({"s.png": "s.png"})
    assert "## s" in md and "![s.png](s.png)" in md
    assert "- nginx: not installed" in md and "- c: met" in md


# -- the checks guard the timings ---------------------------------------------------


class _Serve:
    """A throwaway server on a thread: `answer(data) -> bytes`."""

    def __init__(self, answer) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.answer = answer
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(self.answer(data))

    def close(self) -> None:
        self.sock.close()


def _corrupt(data: bytes) -> bytes:
    return bytes([data[0] ^ 1]) + data[1:]


def test_check_echo_rejects_a_wrong_byte() -> None:
    good, bad = _Serve(lambda d: d), _Serve(_corrupt)
    try:
        _servers.check_echo(good.port)
        with pytest.raises(AssertionError):
            _servers.check_echo(bad.port)
    finally:
        good.close()
        bad.close()


def test_echo_low_summary_puts_the_latency_floor_beside_each_check() -> None:
    """Issue 15's latency targets are checked against uvloop with the plain
    C server's own ratio beside each: the floor of a server that sleeps."""
    from pyepoll.bench.echo import REF_ECHO, low_summary

    def run(p50: float, p99: float) -> _proc.Run:
        return _proc.Run(ops=1000, rate=1.0, bad=0, closed=0, p50=p50,
                         p99=p99, p999=p99, server_user=0.01,
                         server_sys=0.01, client_cpu=0.0, wall=1.0)
    point = (1024, 4)
    results = {_servers.C_ECHO: {point: [run(22.0, 66.0)] * 3},
               _servers.UVLOOP_ECHO: {point: [run(20.0, 60.0)] * 3},
               REF_ECHO: {point: [run(19.0, 63.0)] * 3}}
    out = low_summary(results, [point])
    i = out.index("floor: plain C epoll p99 vs uvloop, 1 KiB x 4: 1.10x")
    assert out[i + 1] == check_line(f"{REF_ECHO} p99 vs uvloop, 1 KiB x 4",
                                    1.05, 1.0, "<=")
    assert "floor: plain C epoll p50 vs uvloop, 1 KiB x 4: 1.10x" in out
    assert check_line(f"{REF_ECHO} p50 vs uvloop, 1 KiB x 4", 0.95, 1.0,
                      "<=") in out
    # No plain C run: no floor line, the check still there.
    del results[_servers.C_ECHO]
    out = low_summary(results, [point])
    assert not [line for line in out if line.startswith("floor")]
    assert len(out) == 2


def test_steal_time_is_counted_and_named_in_the_client_note() -> None:
    """A VM's host may take its CPUs for tens of ms (seen: 100 ms stalls
    with the client and server each on a core): a run that saw steal time
    says so, beside the client's saturation."""
    from pyepoll.bench import _cli

    a = _proc.steal_ms()
    assert a >= 0.0 and _proc.steal_ms() >= a    # a counter: never back

    def run(steal: float) -> _proc.Run:
        return _proc.Run(ops=1000, rate=1.0, bad=0, closed=0, p50=1.0,
                         p99=2.0, p999=3.0, server_user=0.01,
                         server_sys=0.0, client_cpu=0.2, wall=1.0,
                         steal_ms=steal)
    quiet = {"x": {1: [run(0.0), run(10.0)]}}
    assert _proc.steal_note([run(0.0), run(10.0)]) is None
    assert _cli.client_note(quiet) == _proc.saturation_note(quiet["x"][1])
    stalled = {"x": {1: [run(0.0), run(110.0)]}, "y": {1: [run(1500.0)]}}
    note = _cli.client_note(stalled)
    sat, steal = note.split("; host steal time")
    assert sat == "load client not saturated: at most 20% of its core in every run"
    assert steal.startswith(" (the hypervisor ran something else")
    assert "in 2 of 3 runs kept, up to 1,500 ms in one" in steal


def test_runs_stolen_by_the_host_are_measured_again() -> None:
    """A run during which the host stole 20 ms or more is measured again,
    up to twice; the least stolen run is kept and says how many were
    thrown away, and the client note counts them."""
    from pyepoll.bench import _cli

    def runs(*steals: float, bad: int = 0):
        made = []

        def measure(name: str, point: int) -> _proc.Run:
            assert (name, point) == ("x", 1)
            made.append(_proc.Run(ops=1000, rate=1.0, bad=bad, closed=0,
                                  p50=1.0, p99=2.0, p999=3.0,
                                  server_user=0.01, server_sys=0.0,
                                  client_cpu=0.2, wall=1.0,
                                  steal_ms=steals[len(made)]))
            return made[-1]
        return measure, made

    measure, made = runs(0.0)
    run = _cli._measure_unstolen("x", 1, measure, False)
    assert (len(made), run.steal_ms, run.remeasured) == (1, 0.0, 0)
    measure, made = runs(150.0, 19.0)
    run = _cli._measure_unstolen("x", 1, measure, False)
    assert (len(made), run.steal_ms, run.remeasured) == (2, 19.0, 1)
    measure, made = runs(150.0, 300.0, 40.0)
    run = _cli._measure_unstolen("x", 1, measure, False)
    assert (len(made), run.steal_ms, run.remeasured) == (3, 40.0, 2)
    measure, made = runs(150.0, 30.0, 300.0, 0.0)      # at most 2 more
    run = _cli._measure_unstolen("x", 1, measure, False)
    assert (len(made), run.steal_ms, run.remeasured) == (3, 30.0, 2)
    measure, made = runs(150.0, 0.0, bad=1)
    with pytest.raises(AssertionError, match="wrong bytes"):
        _cli._measure_unstolen("x", 1, measure, False)
    kept = [_cli._measure_unstolen("x", 1, runs(*s)[0], False)
            for s in ((0.0,), (150.0, 0.0), (150.0, 30.0, 40.0))]
    note = _proc.steal_note(kept)
    assert note.startswith("2 of 3 runs were measured again (3 runs thrown "
                           "away) because the host stole 20 ms or more")
    assert "; host steal time" in note and "in 1 of 3 runs kept, up to 30 ms" in note
    assert _proc.steal_note(kept[:2]).endswith("CPU time during them")


@linux
@need_cc
def test_c_http_floor_answers_split_and_pipelined_heads() -> None:
    # The HTTP floor server must be right to be a floor: a head split
    # inside its blank line, then three pipelined heads in one write.
    proc = subprocess.Popen([str(_proc.build("http_server")), "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(get[:-3])
            time.sleep(0.05)
            s.sendall(get[-3:])
            got = b""
            while got.count(b"Hello, World!\n") < 1:
                got += s.recv(4096)
            s.sendall(get * 3)
            while got.count(b"Hello, World!\n") < 4:
                chunk = s.recv(4096)
                assert chunk, got
                got += chunk
        answers = got.split(b"HTTP/1.1 200 OK\r\n")[1:]
        assert len(answers) == 4
        for a in answers:
            assert b"\r\nContent-Length: 14\r\n\r\nHello, World!\n" in a
            assert a.startswith(b"Server: bench\r\nDate: ")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@linux
@plain
@need_cc
@pytest.mark.skipif(platform.python_implementation() != "CPython",
                    reason="the handler floor is a CPython extension")
def test_handler_floor_calls_the_handler_per_message_and_sends_its_reply() -> None:
    """The floor under Loop.serve must serve Loop.serve's bench handler
    right to be a floor: every message of several connections, bytes
    intact, a closed connection forgotten and its fd number reused."""
    spec = _servers.echo_servers()[_servers.HANDLER_FLOOR]
    try:
        proc = spec.start()
    except _proc.Skip as e:             # no Python.h to build it against
        pytest.skip(str(e))
    try:
        for rounds in (1, 2):             # the second reuses closed fds
            socks = [socket.create_connection(("127.0.0.1", proc.port), timeout=5)
                     for _ in range(3)]
            for i in range(50):
                for k, s in enumerate(socks):
                    msg = bytes([65 + k]) * (1 + (i * 37 + k) % 200)
                    s.sendall(msg)
                    got = b""
                    while len(got) < len(msg):
                        chunk = s.recv(4096)
                        assert chunk, (rounds, i, k)
                        got += chunk
                    assert got == msg
            for s in socks:
                s.close()
        assert proc.alive()
    finally:
        proc.stop()


def test_handler_floor_is_skipped_off_this_cpython(tmp_path) -> None:
    exe = tmp_path / "python"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    exe.chmod(0o755)
    spec = _servers.echo_servers()[_servers.HANDLER_FLOOR]
    _servers._server_python = str(exe)      # as --python sets it
    try:
        with pytest.raises(_proc.Skip, match="CPython extension"):
            spec.argv()
    finally:
        _servers._server_python = None


def test_echo_low_summary_sets_serve_beside_its_handler_floor() -> None:
    from pyepoll.bench.echo import LOW_SERVE, low_summary

    def run(user: float) -> _proc.Run:
        return _proc.Run(ops=1000, rate=1.0, bad=0, closed=0, p50=20.0,
                         p99=40.0, p999=40.0, server_user=user * 1e-3,
                         server_sys=0.01, client_cpu=0.0, wall=1.0)
    one = (64, 1)
    results = {_servers.C_ECHO: {one: [run(1.0)] * 3},
               _servers.HANDLER_FLOOR: {one: [run(1.4)] * 3},
               LOW_SERVE: {one: [run(1.8)] * 3}}
    out = low_summary(results, [one])
    # CPU per round trip: 11, 11.4 and 11.8 ms over 1000 round trips.
    assert f"floor: {_servers.HANDLER_FLOOR} vs plain C CPU/round trip 1.04x" in out
    assert "Loop py serve(handler) CPU/round trip vs that floor 1.04x" in out
    line = [ln for ln in out if "user-space CPU/round trip (medians)" in ln]
    assert "handler floor 1.40 us" in line[0] and "plain C 1.00 us" in line[0]
    del results[_servers.HANDLER_FLOOR]
    out = low_summary(results, [one])
    assert not [ln for ln in out if _servers.HANDLER_FLOOR in ln]


def test_check_http_rejects_non_200() -> None:
    def answer(status: bytes):
        def f(data: bytes) -> bytes:
            n = data.count(b"\r\n\r\n")
            return (b"HTTP/1.1 " + status + b"\r\nContent-Length: 14\r\n\r\n"
                    b"Hello, World!\n") * n
        return f
    good, bad = _Serve(answer(b"200 OK")), _Serve(answer(b"404 Not Found"))
    try:
        _servers.check_http(good.port)
        with pytest.raises(AssertionError, match="404"):
            _servers.check_http(bad.port)
    finally:
        good.close()
        bad.close()


@linux
@plain
@need_cc
def test_load_client_counts_wrong_bytes() -> None:
    exe = _proc.loadgen()
    good, bad = _Serve(lambda d: d), _Serve(_corrupt)
    try:
        ok = subprocess.run([str(exe), "echo", str(good.port), "2", "0.2", "100"],
                            capture_output=True, text=True, timeout=20)
        wrong = subprocess.run([str(exe), "echo", str(bad.port), "2", "0.2", "100"],
                               capture_output=True, text=True, timeout=20)
    finally:
        good.close()
        bad.close()
    ops, _, nbad, closed = ok.stdout.split()[:4]
    assert ok.returncode == 0 and int(ops) > 0 and nbad == "0" and closed == "0"
    assert wrong.returncode == 1 and int(wrong.stdout.split()[2]) > 0


# -- smoke runs --------------------------------------------------------------------


@linux
@plain
@need_cc
def test_echo_low_points_are_chosen_with_low(capsys) -> None:
    """--low picks the low-concurrency points (each once, in order), so a
    long run of the issue 15 checks at 64 B x 1 runs that point alone;
    --no-low drops them; a malformed point is refused by the parser."""
    from pyepoll.bench import echo
    ap = echo.build()
    args = ap.parse_args(["--sizes", "64", "--conns", "1",
                          "--low", "64x1", "1024X4", "64x1"])
    assert echo.points_of(args) == ([(64, 1), (1024, 4)], [(64, 1), (1024, 4)])
    assert echo.points_of(ap.parse_args([]))[1] == echo.LOW
    assert echo.points_of(ap.parse_args(["--no-low"]))[1] == []
    assert echo.points_of(ap.parse_args(["--smoke"]))[1] == [(64, 1), (64, 4)]
    for bad in ("64", "x1", "64x0", "0x1", "ax1", "64x1x2"):
        with pytest.raises(SystemExit):
            ap.parse_args(["--low", bad])
        assert "expected SIZExCONNS" in capsys.readouterr().err


def test_echo_smoke_tables() -> None:
    out = bench("echo", "--smoke", "--servers", "Loop C echo")
    assert out.startswith("# ") and "== echo" in out
    thr = rows(out, "echo throughput, 8 connections")
    assert set(thr) >= {"plain C epoll", "pyepoll Loop C echo"}
    for name in ("plain C epoll", "pyepoll Loop C echo"):
        assert "n/a" not in thr[name]
    # A ratio to the named reference on every other row.
    assert re.search(r"\d\.\d\dx", thr["pyepoll Loop C echo"])
    assert "load client" in out and ("not saturated" in out or "saturated" in out)
    assert "latency percentiles" in out and "summary:" in out
    # Low concurrency (issue 15): CPU per round trip with p50/p99 beside it.
    for title in ("echo at low concurrency: server CPU per round trip",
                  "echo at low concurrency: latency p50",
                  "echo at low concurrency: latency p99"):
        block = out.split(title, 1)[1].split("\n\n", 1)[0]
        assert block.splitlines()[1].split() == ["64", "B", "x", "1", "64", "B", "x", "4"]
        low = rows(out, title)
        for name in ("plain C epoll", "pyepoll Loop C echo"):
            cells = re.findall(r"[\d,.]+(?: \[[^]]*\])?(?: [\d.]+x)?", low[name])
            assert len(cells) == 2 and "n/a" not in low[name], low[name]
    assert "at 64 B x 1 connection (medians of per-repeat ratios):" in out


@installed
def test_server_python_is_what_python_servers_run_with(tmp_path) -> None:
    """--python: the Python servers (handlers and the reference server) are
    started with that interpreter, which imports its own pyepoll (no
    PYTHONPATH pointing at this process's); the C servers are unchanged."""
    exe = tmp_path / "python"                     # another path, same Python
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    exe.chmod(0o755)
    try:
        desc = _servers.set_server_python(str(exe))
        assert desc == (f"{platform.python_implementation()} "
                        f"{platform.python_version()} {sys.executable}"), desc
        assert _servers._serve("loop-py-level")()[0] == str(exe)
        assert _servers._reference("echo", "eventloop")()[0] == str(exe)
        assert _servers._c_echo("level")()[0] != str(exe)
        assert _servers._env().get("PYTHONPATH") == os.environ.get("PYTHONPATH")
    finally:
        _servers.set_server_python(None)
    assert _servers._serve("loop-py-level")()[0] == sys.executable
    assert _servers.PKG_PARENT in _servers._env()["PYTHONPATH"]
    with pytest.raises(ValueError, match="cannot run pyepoll there"):
        _servers.set_server_python(str(tmp_path / "no-such-python"))
    assert _servers.server_python() == sys.executable


@linux
@plain
@need_cc
@installed
def test_echo_smoke_with_python_option() -> None:
    out = bench("echo", "--smoke", "--servers", "Loop py wait", "ref server eventloop",
                "--python", sys.executable)
    assert f"Python servers run on: {platform.python_implementation()} " \
           f"{platform.python_version()} {sys.executable}" in out
    thr = rows(out, "echo throughput, 8 connections")
    assert "n/a" not in thr["pyepoll Loop py wait/recv/send"]
    # User space apart at low concurrency, and in the summary for the
    # servers of the line that ran, beside plain C (uvloop may be missing).
    user = rows(out, "echo at low concurrency: server user-space CPU per round trip")
    assert "n/a" not in user["pyepoll Loop py wait/recv/send"]
    line = [ln for ln in out.splitlines() if "user-space CPU/round trip (medians)" in ln]
    assert len(line) == (1 if "plain C epoll" in user else 0)
    if line:
        assert "Loop py " in line[0] and "ref server " in line[0]
        assert ("uvloop " in line[0]) == ("uvloop Protocol" in user)
    res = subprocess.run([sys.executable, "-m", "pyepoll.bench", "echo",
                          "--smoke", "--python", "/no/such/python"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "--python /no/such/python: cannot run pyepoll there" in res.stderr


@linux
@plain
@need_cc
def test_http_smoke_without_optional_tools() -> None:
    out = bench("http", "--smoke", "--servers", "ref server eventloop", "nginx",
                without=WITHOUT)
    thr = rows(out, "HTTP hello throughput")
    # The plain C floor always runs beside the reference row.
    assert list(thr) == ["plain C epoll HTTP", "ref server eventloop"]
    assert "n/a" not in thr["ref server eventloop"]
    assert "n/a" not in thr["plain C epoll HTTP"]
    assert "skipped: uvloop+httptools: uvloop not installed" in out
    assert "skipped: nginx 1 worker: nginx not installed" in out
    assert "skipped: wrk not installed" in out
    # Keep-alive at 1 and 4 connections beside --conns (8 in smoke), with
    # p50 latency (issue 15); without uvloop the ratios are not measured.
    block = out.split("HTTP hello server CPU per request", 1)[1].split("\n\n", 1)[0]
    assert block.splitlines()[1].split() == [
        "keep-alive", "1c", "keep-alive", "4c", "keep-alive", "8c", "pipelined", "x4"]
    assert "n/a" not in rows(out, "HTTP hello server CPU per request")["ref server eventloop"]
    assert "n/a" not in rows(out, "HTTP latency p50")["ref server eventloop"]
    assert ("ref server eventloop CPU/request vs uvloop+httptools, keep-alive 1c "
            "(per-repeat ratios): not measured") in out
    # One connection, one request in flight: about every request wakes the
    # server.  A server slower than the client's round trip finds the next
    # request there when it comes back to wait (PyPy on a loaded machine
    # measured 1.79), so the upper bound is loose.
    per_sleep = rows(out, "HTTP requests per server sleep")["ref server eventloop"]
    assert 0.5 <= float(per_sleep.split()[0].replace(",", "")) <= 3.0, per_sleep


@linux
@plain
def test_plot_without_matplotlib_is_refused(tmp_path) -> None:
    env = dict(os.environ, PYEPOLL_BENCH_WITHOUT="matplotlib")
    res = subprocess.run([sys.executable, "-m", "pyepoll.bench", "wait-scaling",
                          "--smoke", "--plot", str(tmp_path / "w.png")],
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 2 and "matplotlib not installed" in res.stderr
    assert not (tmp_path / "w.png").exists()


@linux
@plain
def test_all_smoke_writes_report(tmp_path) -> None:
    out = bench("all", "--smoke", "--only", "wait-scaling", "--out", str(tmp_path))
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# pyepoll benchmarks (smoke run)")
    assert "- machine: " in report and "## wait-scaling" in report
    assert re.search(r"\| select\.epoll \| [\d.]+", report)
    try:
        import matplotlib  # noqa: F401
        assert (tmp_path / "wait-scaling.png").stat().st_size > 1000
        assert "![wait-scaling.png](wait-scaling.png)" in report
    except ImportError:
        assert "charts skipped: matplotlib not installed" in report
    assert "report: " in out


@linux
@plain
@need_cc
@pytest.mark.slow
def test_idle_clients_smoke_shows_threadpool_starvation() -> None:
    out = bench("idle-clients", "--smoke", "--servers", "eventloop", "threadpool",
                timeout=120)
    ttfr = rows(out, "idle-clients: fresh client's time to first echo")
    assert set(ttfr) == {"eventloop (pyepoll)", "threadpool 5+20"}
    assert "answered only after an idle client left" in out
    assert "memory per idle connection" in out


@linux
@plain
@pytest.mark.slow
def test_dropins_and_poller_in_the_report(tmp_path) -> None:
    bench("all", "--smoke", "--only", "dropins", "poller", "--out", str(tmp_path),
          timeout=180)
    report = (tmp_path / "report.md").read_text()
    assert "## dropins" in report and "## poller" in report
    assert "selectors.EpollSelector" in report      # the dropins table
    assert "select.epoll.poll" in report and "pyepoll.Poller.wait" in report
    assert "FAILED" not in report


# -- asyncio: frameworks, the loop's share, memory ----------------------------------


def _have(*modules: str) -> bool:
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in modules)


def test_sampler_parts_follow_the_innermost_package() -> None:
    from pyepoll.bench import _serve
    site = "/usr/lib/python3/site-packages"
    assert _serve._part(f"{site}/uvicorn/protocols/http/httptools_impl.py") == "framework"
    assert _serve._part(f"{site}/aiohttp/web_protocol.py") == "framework"
    assert _serve._part("/usr/lib/python3.11/asyncio/base_events.py") == "asyncio"
    # A checkout under a folder named like another part still counts as pyepoll.
    assert _serve._part("/src/asyncio/pyepoll/asyncio_loop.py") == "pyepoll"
    assert _serve._part("/usr/lib/python3.11/email/utils.py") == "other"
    assert _serve._part(_serve.__file__) == "app"


def _sampled(tmp_path, body: str) -> tuple:
    """Run body (Python source) between SIGUSR1 (the bench's sampler
    starts) and SIGUSR2 (it writes profile.json); (profile, total samples)."""
    code = ("import os, re, signal, time\n"
            "from pyepoll.bench import _serve\n"
            "_serve._Sampler()\n" + body +
            "os.kill(os.getpid(), signal.SIGUSR1)\n"
            "run()\n"
            "os.kill(os.getpid(), signal.SIGUSR2)\n")
    env = dict(os.environ, PYTHONPATH=_servers.PKG_PARENT)
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                   check=True, timeout=60)
    import json
    prof = json.loads((tmp_path / "profile.json").read_text())
    total = sum(prof["parts"].values())
    assert total >= 50, prof              # ~300 at 1 ms; ticks may coarsen
    return prof, total


@linux
def test_sampler_counts_the_function_that_spends_the_cpu(tmp_path) -> None:
    # 0.3 s of CPU in one function must come out as (nearly) all of that
    # function's.
    prof, total = _sampled(tmp_path, (
        "def run():\n"
        "    t = time.process_time()\n"
        "    while time.process_time() - t < 0.3: pass\n"))
    assert prof["functions"].get("other|<string>:run", 0) >= 0.8 * total, prof


@linux
@pytest.mark.skipif(sys.version_info < (3, 11), reason="RESUME is 3.11's")
def test_sampler_counts_c_code_to_the_caller_not_to_its_callback(tmp_path) -> None:
    # C code that calls back into Python (as the C loop calls
    # data_received): a signal landing in the C part is handled at the
    # callback's first instruction, and counts to the frame that called
    # the C code.  re.sub scanning 2 MB in C, its callback called once per scan.
    prof, total = _sampled(tmp_path, (
        "def cb(m):\n"
        "    return 'y'\n"
        "def run():\n"
        "    s = 'a' * 2_000_000 + 'b'\n"
        "    t = time.process_time()\n"
        "    while time.process_time() - t < 0.3:\n"
        "        re.sub('b', cb, s)\n"))
    funcs = prof["functions"]
    assert funcs.get("other|<string>:cb", 0) <= 0.1 * total, prof
    # re.sub's Python wrapper called the C scan; run itself builds s.
    assert (funcs.get("other|__init__.py:sub", 0) +
            funcs.get("other|<string>:run", 0)) >= 0.8 * total, prof

@linux
@plain
def test_fleet_rejects_a_server_on_the_wrong_loop() -> None:
    # The stdlib-loop Protocol server, told to be on pyepoll's loop.
    spec = _servers.asyncio_servers()["asyncio Protocol"]
    wrong = _servers.Spec("claims pyepoll loop", "echo", spec.argv,
                          loop=_servers.LOOP_CLASSES["pyepollaio"])
    with pytest.raises(AssertionError, match="_UnixSelectorEventLoop"):
        _servers.Fleet({wrong.name: wrong})
    fleet = _servers.Fleet({spec.name: spec})     # the true claim passes
    try:
        assert _servers.running_loop(fleet.procs[spec.name]) == spec.loop
    finally:
        fleet.stop()


@linux
@plain
@need_cc
@pytest.mark.skipif(not (_have("uvicorn", "httptools", "aiohttp", "uvloop")
                         and _proc.wrk_path()),
                    reason="needs uvicorn, httptools, aiohttp, uvloop and wrk")
def test_asyncio_smoke_frameworks_share_and_memory() -> None:
    out = bench("asyncio", "--smoke", "--servers", "pyepoll loop", timeout=120)
    cpu = rows(out, "asyncio frameworks hello (wrk, keep-alive) server CPU per request")
    # Rows are loops, one column per framework, each a ratio to uvloop.
    assert set(cpu) >= {"pyepoll loop", "uvloop"}, cpu
    assert "n/a" not in cpu["pyepoll loop"] + cpu["uvloop"], cpu
    assert len(re.findall(r"\d\.\d\dx", cpu["pyepoll loop"])) == 2, cpu
    mem = rows(out, "asyncio memory per idle connection")
    assert set(mem) >= {"pyepoll loop Protocol", "uvloop Protocol"}
    assert re.search(r"\d\.\d\dx", mem["pyepoll loop Protocol"])
    for fw in ("uvicorn", "aiohttp"):
        assert re.search(rf"pyepoll loop {fw}\+?\w* vs uvloop \(CPU/request, wrk 8 "
                         rf"conns\): \d+\.\d\dx", out), out
        line = re.search(rf"^  pyepoll loop {fw}: loop (\d+)% .*framework (\d+)%, "
                         rf"app (\d+)%, other Python (\d+)%; kernel (\d+)%, loop - "
                         rf"kernel (-?\d+)% \((\d+) samples", out, re.M)
        assert line, out
        loop, framework, app, other, kernel, own, samples = map(int, line.groups())
        # Every sample lands in one part; the kernel's share is a part of
        # the whole, measured apart (/proc).
        assert 97 <= loop + framework + app + other <= 103, line.group(0)
        assert loop > 0 and framework > 0 and 0 < kernel < 100 and samples > 0
        assert abs(own - (loop - kernel)) <= 1, line.group(0)
        # The loop's costliest functions are the loop's own code.
        top = re.search(rf"^  pyepoll loop {fw}, the loop's top functions: (.+)$",
                        out, re.M)
        assert top and re.match(r"(\w+\.py:\w+ \d+%(, |$))+", top.group(1)), out
        if _proc.wrk_path() and shutil.which("perf"):
            # perf's split by binary, from a second window of the same run
            # (or why perf could not record here).
            perf = re.search(rf"^  pyepoll loop {fw}, perf: (?:failed: .+|kernel (\d+)%, "
                             rf"interpreter (\d+)%, pyepoll C core (\d+)%, other C "
                             rf"extensions (\d+)%)$", out, re.M)
            assert perf, out
            if perf.group(1):
                assert 95 <= sum(int(g) for g in perf.groups()) <= 105, perf.group(0)
    assert "pyepoll loop memory per idle connection vs uvloop (200 idle)" in out
    wake = rows(out, "asyncio call_soon_threadsafe round trip")
    # --servers picks pyepoll's row; uvloop's is the reference.
    assert set(wake) == {"pyepoll loop", "uvloop"}, wake
    assert re.search(r"\d\.\d\dx", wake["pyepoll loop"]), wake
    assert re.search(r"pyepoll loop call_soon_threadsafe round trip vs uvloop: "
                     r"\d+\.\d\dx", out), out


@linux
@plain
@need_cc
def test_asyncio_smoke_skips_frameworks_that_are_absent() -> None:
    out = bench("asyncio", "--smoke", "--servers", "pyepoll loop Protocol",
                "pyepoll loop uvicorn", "pyepoll loop aiohttp",
                without="uvloop,uvicorn,wrk", timeout=120)
    assert "skipped: pyepoll loop uvicorn: uvicorn not installed" in out
    assert ("skipped: pyepoll loop aiohttp: aiohttp not installed" in out
            or "skipped: pyepoll loop aiohttp: wrk not installed" in out)
    assert "skipped: uvloop Protocol: uvloop not installed" in out
    assert "pyepoll loop uvicorn+httptools vs uvloop (CPU/request, wrk 8 conns): " \
           "not measured" in out
    # Memory still measured on the loops that are here, without a ratio.
    mem = rows(out, "asyncio memory per idle connection")
    assert "n/a" not in mem["pyepoll loop Protocol"]
    # So are the call_soon_threadsafe round trips.  Their reference is
    # uvloop on CPython (here absent), the stdlib loop on PyPy.
    wake = rows(out, "asyncio call_soon_threadsafe round trip")
    if sys.implementation.name == "pypy":
        assert set(wake) == {"asyncio", "pyepoll loop"}, wake
    else:
        assert "skipped: uvloop (call_soon_threadsafe): uvloop not installed" in out
        assert set(wake) == {"pyepoll loop"}, wake
    assert re.match(r"\d+(\.\d+)? ", wake["pyepoll loop"] + " "), wake

"""idle-clients: the long-lived-connection problem.  K idle connections are
held open against a server (K from 0 up to 15,000, as far as each model
survives); then a fresh client's time to its first echo is measured, the
throughput of 64 active connections (1 KiB echo, compiled C client), and
the server's resident memory per idle connection.

Models: the reference server's event loop (pyepoll), its thread pool (5
threads, a queue of 20: the classic design whose workers are held by idle
connections) and thread-per-connection; asyncio and uvloop (if installed);
and, for the memory figures of the loop itself, pyepoll.Loop with a Python
handler and with its C echo path, and a plain C epoll server.

When the fresh client is not answered within --release seconds, one idle
client leaves: a starved thread pool answers then (or never, when the
queue holds more idle connections than that)."""
from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

from . import _cli
from ._proc import Run, ServerProc, Skip, nfds, raise_nofile, rss_bytes, run_loadgen, saturation_note
from ._report import Chart, Section, Table, check_line
from ._servers import CECHO, PY_HANDLERS, Spec, _c_echo, _serve, check_echo, idle_servers

KS = [0, 5, 100, 1000, 5000, 15000]
ALL_ARGS = ["--seconds", "0.5", "--repeats", "3"]
EVENTLOOP = "eventloop (pyepoll)"
MSG = b"x" * 64
FRESH = 11


def build() -> argparse.ArgumentParser:
    ap = _cli.parser("idle-clients", __doc__, seconds=1.0, repeats=3)
    ap.add_argument("--k", type=int, nargs="+", default=KS,
                    help="idle connections held (default: %(default)s)")
    ap.add_argument("--release", type=float, default=1.0,
                    help="seconds a fresh client waits before one idle "
                         "client leaves (default: %(default)s)")
    ap.add_argument("--give-up", type=float, default=3.0,
                    help="seconds after which a fresh client counts as "
                         "not answered (default: %(default)s)")
    ap.add_argument("--servers", nargs="+",
                    help="substrings of model names to run")
    return ap


def _models() -> Dict[str, Spec]:
    specs = dict(idle_servers())
    extra = [*[Spec(name, "echo", _serve(f"{kind}-level")) for name, kind in PY_HANDLERS],
             Spec(CECHO, "echo", _serve("loop-c-level")),
             Spec("plain C epoll", "echo", _c_echo("level"))]
    specs.update((s.name, s) for s in extra)
    return specs


# Linux picks a connect()'s ephemeral port by searching the range for one
# free for the (source, destination) pair: with 15,000 connections to one
# port from 127.0.0.1 that search alone costs the *client* milliseconds.
# Idle clients therefore come from 127.0.0.2 and up, PER_SOURCE each, so the
# fresh client (from 127.0.0.1) measures the server, not the port search.
PER_SOURCE = 2000
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


class Idle:
    """K idle client connections to one port, opened by this process."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.socks: List[socket.socket] = []
        self.opened = 0

    def _connect(self, timeout: float) -> socket.socket:
        s = socket.socket()
        try:
            s.settimeout(timeout)
            if hasattr(socket, "IP_BIND_ADDRESS_NO_PORT") or sys.platform.startswith("linux"):
                # Port chosen at connect(), per destination, not at bind().
                s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                s.bind((f"127.0.0.{2 + self.opened // PER_SOURCE}", 0))
            s.connect(("127.0.0.1", self.port))
        except OSError:
            s.close()
            raise
        self.opened += 1
        return s

    def grow(self, k: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while len(self.socks) < k and time.monotonic() < deadline:
            try:
                s = self._connect(max(0.1, deadline - time.monotonic()))
            except OSError:
                break
            self.socks.append(s)
        return len(self.socks)

    def release_one(self) -> None:
        if self.socks:
            self.socks.pop(0).close()

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.socks.clear()


def fresh_client(port: int, idle: Idle, release: float, give_up: float
                 ) -> Tuple[Optional[float], bool]:
    """(seconds to the first echo or None, whether an idle client had to
    leave first)."""
    done = threading.Event()
    result: List[Optional[float]] = [None]

    def client() -> None:
        t0 = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=give_up) as s:
                s.sendall(MSG)
                got = b""
                while len(got) < len(MSG):
                    chunk = s.recv(len(MSG) - len(got))
                    if not chunk:
                        break
                    got += chunk
                if got == MSG:
                    result[0] = time.perf_counter() - t0
        except OSError:
            pass
        done.set()

    t = threading.Thread(target=client, daemon=True)
    t.start()
    released = False
    if not done.wait(release):
        idle.release_one()
        released = True
        done.wait(max(0.0, give_up - release))
    t.join(0.5)
    return result[0], released


def stable_fds(pid: int, quiet: float = 0.3, timeout: float = 5.0) -> int:
    """The server's descriptor count once it has not changed for `quiet`
    seconds."""
    deadline = time.monotonic() + timeout
    last, since = nfds(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = nfds(pid)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def settle(pid: int, want: int, timeout: float) -> int:
    """Wait until the server holds `want` descriptors; returns what it holds."""
    deadline = time.monotonic() + timeout
    while True:
        have = nfds(pid)
        if have >= want or time.monotonic() > deadline:
            return have
        time.sleep(0.05)


def run_model(name: str, spec: Spec, args: argparse.Namespace,
              tables: Dict[str, Table], notes: List[str], runs: List[Run]) -> None:
    try:
        proc: ServerProc = spec.start()
    except Skip as e:
        notes.append(f"skipped {name}: {e}")
        return
    idle = Idle(proc.port)
    try:
        check_echo(proc.port)
        run_loadgen(proc, "echo", 64, min(0.3, args.seconds), 1024)   # warm up
        # The server closes the warm-up's connections after the client has
        # gone: count its descriptors once that is done.
        base_fds, base_rss = stable_fds(proc.pid), rss_bytes(proc.pid)
        for k in args.k:
            if idle.grow(k, timeout=max(10.0, k / 500)) < k:
                notes.append(f"{name}: stopped at K={k}: only {len(idle.socks)} "
                             f"connections could be opened")
                break
            have = settle(proc.pid, base_fds + k, timeout=3.0 if k else 0.5)
            accepted = have - base_fds
            time.sleep(0.2 + k / 30000)     # let the server finish settling in
            if not proc.alive():
                notes.append(f"{name}: died at K={k}")
                break
            if k:
                tables["mem"].add(name, k, (rss_bytes(proc.pid) - base_rss) / k)
            # Fresh clients: repeat only while answers come promptly (a
            # starved model would cost give_up seconds per try).
            # Eleven: one costs well under a millisecond, and the machine's
            # scheduling hiccups (several ms) must not make the median.
            for i in range(FRESH if not args.smoke else 3):
                ttfr, released = fresh_client(proc.port, idle, args.release, args.give_up)
                if released:
                    idle.grow(k, timeout=5.0)       # back to K held
                if ttfr is None:
                    tables["ttfr"].add(name, k, args.give_up * 1e3)
                    notes.append(f"{name}, K={k}: fresh client not answered within "
                                 f"{args.give_up:g} s, even after an idle client left "
                                 f"at {args.release:g} s (shown as {args.give_up:g} s)")
                    break
                tables["ttfr"].add(name, k, ttfr * 1e3)
                if released:
                    notes.append(f"{name}, K={k}: fresh client answered only after an "
                                 f"idle client left at {args.release:g} s "
                                 f"({ttfr * 1e3:,.0f} ms)")
                    break
            for _ in range(args.repeats):
                r = run_loadgen(proc, "echo", 64, args.seconds, 1024)
                if r.bad:
                    raise AssertionError(f"{name}: {r.bad} wrong bytes under load")
                tables["thr"].add(name, k, r.rate)
                if r.ops:                   # a starved server has no per-message cost
                    tables["cpu"].add(name, k, r.cpu_per_op_us)
                runs.append(r)
            if k and accepted < k:
                notes.append(f"{name}: K={k}: the server accepted {accepted} of the "
                             f"{k} idle connections (the rest wait in the backlog); "
                             f"larger K not tried")
                break
            print(f"  {name:26} K={k:>6}: ttfr {tables['ttfr'].cell(name, k).median:8.2f} ms  "  # type: ignore[union-attr]
                  f"64-conn {tables['thr'].cell(name, k).median:10,.0f} msg/s",  # type: ignore[union-attr]
                  flush=True, file=sys.stderr)
    finally:
        idle.close()
        proc.stop()


def run(args: argparse.Namespace) -> Section:
    if args.smoke:
        args.k, args.seconds, args.repeats = [0, 5, 40], 0.2, 1
        args.release, args.give_up = 0.3, 0.8
    raise_nofile(max(args.k) + 1024)
    ks = args.k
    tables = {
        "ttfr": Table("idle-clients: fresh client's time to first echo (11 clients), K idle held",
                      "ms", ks, reference=EVENTLOOP),
        "thr": Table("idle-clients: throughput of 64 active connections, K idle held",
                     "messages/s (1 KiB)", ks, reference=EVENTLOOP, lower_is_better=False),
        "cpu": Table("idle-clients: server CPU per message, 64 active, K idle held",
                     "us user+sys", ks, reference=EVENTLOOP),
        "mem": Table("idle-clients: server memory per idle connection",
                     "bytes RSS", [k for k in ks if k], reference=EVENTLOOP),
    }
    notes: List[str] = []
    runs: List[Run] = []
    for name, spec in _models().items():
        if args.servers and not any(w in name for w in args.servers):
            continue
        run_model(name, spec, args, tables, notes, runs)
    sec = Section("idle-clients", intro=_cli.standard_intro(
        args, "idle clients are opened by the benchmark process; every server "
              "first echoed 7 B and 200 KB byte-exact"))
    sec.intro.append("memory: growth of the server's RSS (with its child "
                     "processes) over its RSS after a warm-up, divided by K; "
                     "one sample per K; kernel socket buffers are not in RSS")
    sec.intro.append(f"idle clients connect from 127.0.0.2 and up ({PER_SOURCE} per "
                     f"address), the fresh client from 127.0.0.1: its time includes "
                     f"connect() without the client-side ephemeral port search")
    note = saturation_note(runs)
    if note:
        tables["thr"].notes.append(note)
    sec.tables = [tables["ttfr"], tables["thr"], tables["cpu"], tables["mem"]]
    sec.charts = [Chart(tables["ttfr"], "ttfr", logx=True, logy=True,
                        xlabel="idle connections (K)"),
                  Chart(tables["thr"], "throughput", logx=True,
                        xlabel="idle connections (K)"),
                  Chart(tables["mem"], "memory", logx=True, logy=True,
                        xlabel="idle connections (K)")]
    sec.summary = summary(tables, ks, args)
    sec.skipped = [n[len("skipped "):] for n in notes if n.startswith("skipped")]
    sec.summary += [n for n in notes if not n.startswith("skipped")]
    return sec


def summary(tables: Dict[str, Table], ks: List[int], args: argparse.Namespace) -> List[str]:
    ttfr, thr, mem = tables["ttfr"], tables["thr"], tables["mem"]
    big = max(ks)
    out = []
    cell = ttfr.cell(EVENTLOOP, big)
    if cell and cell.samples:
        out.append(check_line(f"eventloop: fresh client answered with K={big} idle held",
                              cell.median, 2.0, "<=", " ms"))
    pool = next((r for r in ttfr.rows if r.startswith("threadpool")), None)
    if pool and 5 in ks:
        c = ttfr.cell(pool, 5)
        if c and c.samples:
            waited = c.median >= args.release * 1e3 * 0.9
            out.append(f"{pool}: fresh client with 5 idle held waited {c.median:,.0f} ms "
                       f"({'starved until an idle client left' if waited else 'NOT starved'})")
    for name, limit in (*[(n, 128) for n, _ in PY_HANDLERS], (CECHO, 128),
                        (EVENTLOOP, 512)):
        c = mem.cell(name, big)
        if c and c.samples:
            out.append(check_line(f"{name}: memory per idle connection at K={big}",
                                  c.median, limit, "<=", " B"))
        a, b = thr.cell(name, 0), thr.cell(name, big)
        if a and b and a.samples and b.samples and a.median:
            out.append(check_line(f"{name}: 64-connection throughput with K={big} idle "
                                  f"vs none", b.median / a.median, 0.97, ">="))
        # Throughput swings with the machine's load; CPU per message is the
        # steadier view of the same cost.
        a, b = tables["cpu"].cell(name, 0), tables["cpu"].cell(name, big)
        if a and b and a.samples and b.samples and a.median:
            out.append(check_line(f"{name}: server CPU per message with K={big} idle "
                                  f"vs none", b.median / a.median, 1.03, "<="))
    for name in ("uvloop Protocol", "asyncio Protocol", "plain C epoll", "threads"):
        c = mem.cell(name, big)
        if c and c.samples:
            out.append(f"{name}: {c.median:,.0f} B per idle connection at K={big}")
    return out


def main(argv: Optional[List[str]] = None) -> int:
    return _cli.main("idle-clients", build, run, argv)

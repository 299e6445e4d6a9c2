"""Per-wakeup cost of one round trip with one connection (issue 15).

Runs a server under callgrind (user-space instructions, deterministic
whatever the machine's load) or strace -c (syscalls), drives it with one
connection doing N round trips of a 64 B echo or a keep-alive GET, and
prints the cost of one round trip: the difference between a run of N2 and
a run of N1 round trips, divided by N2 - N1, so start-up and shutdown
cancel out.

    python scripts/wakeup_cost.py [--tool callgrind|strace] [--top 15] TARGET...

TARGET: c (pyepoll/bench/c/echo_server.c), loop-py, loop-batch,
loop-queue, loop-fn, loop-serve (pyepoll.bench._serve kinds),
handler-floor (c/handler_floor.c: the least a loop calling loop-serve's
handler per message must do), server-echo,
server-http (pyepoll-server, eventloop model, as the benchmarks start it;
server-echo-w2: with --workers 2, for --tool strace: callgrind here
records the supervisor, not the worker; server-echo-stats: with a stats
interval, so every wait has a timeout),
uvloop-echo, uvloop-http, aio-echo, aio-http (pyepoll's asyncio loop),
asyncio-echo, asyncio-http (the stdlib's loop); -streams instead of
-echo: the echo on asyncio.start_server; -aiohttp instead of -http: the
bench's aiohttp.web hello server (keep-alive GET).  floor-uvloop-aiohttp
(also floor-aio-, floor-asyncio-): that app with no socket under it
(pyepoll.bench._inproc: an in-process transport, the loop only running
the tasks), aiohttp's own cost per request that no loop can avoid; give
the socket targets --gap 4 to compare loops (see --help).  --top N also
lists the N functions whose own (--inclusive: with callees) instructions
per round trip grew most between the two runs.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pyepoll.bench._proc import (build, free_port, handler_floor,  # noqa: E402
                                 wait_listening)

GET = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def argv_for(target: str, port: int, n: int = 0) -> list:
    py = [sys.executable, "-X", "frozen_modules=on"]
    if target.startswith("floor-"):
        # floor-uvloop-aiohttp: n requests in-process, no server to drive
        runtime = target.split("-")[1]
        runtime = {"aio": "pyepollaio"}.get(runtime, runtime)
        return py + ["-m", "pyepoll.bench._inproc", runtime, str(n)]
    if target == "c":
        return [str(build("echo_server")), str(port), "level"]
    if target == "handler-floor":
        handler_floor()                   # built here: the server finds it
        return py + ["-m", "pyepoll.bench._serve", "floor-handler", str(port)]
    if target.startswith("loop-"):
        return py + ["-m", "pyepoll.bench._serve", f"{target}-level", str(port)]
    if target.split("-")[0] in ("uvloop", "aio", "asyncio"):
        # An asyncio Protocol server: uvloop-echo, aio-echo (pyepoll's
        # asyncio loop), asyncio-echo (the stdlib's); -http: httptools,
        # -aiohttp: aiohttp.web.
        runtime, what = target.split("-")
        runtime = {"aio": "pyepollaio"}.get(runtime, runtime)
        what = {"echo": "protocol", "http": "httptools"}.get(what, what)
        return py + ["-m", "pyepoll.bench._serve", f"{runtime}-{what}", str(port)]
    if target.startswith("server-"):
        # server-echo-w2: two worker processes (a supervisor watching them)
        extra = ["--workers", target.split("-w")[1]] if "-w" in target else []
        if target.endswith("-stats"):
            # server-echo-stats: a stats line (never due in the run), so
            # every wait has a timeout, as with --workers' parent watch.
            extra += ["--stats-interval", "3600"]
            target = target[:-len("-stats")]
        return py + ["-m", "pyepoll.server", "--port", str(port), "--protocol",
                     target.split("-")[1], "--model", "eventloop",
                     "--log-level", "warning", "--idle-timeout", "0",
                     "--max-connections", "30000", *extra]
    raise SystemExit(f"unknown target {target}")


def drive(port: int, n: int, http: bool, gap: float = 0.0,
          conns: int = 1) -> None:
    """n round trips on each of `conns` connections: every round sends one
    request on each connection, then reads every answer, so a server that
    is slower than this client (callgrind) finds them in one batch."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(conns)]
    try:
        for s in socks:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        msg = GET if http else b"x" * 64
        if conns > 1:
            # One round trip alone first, as the bench's check_http does: on
            # CPython 3.11 a class's shared attribute keys stop growing after
            # some 20 instances, so K first requests handled side by side can
            # leave aiohttp's StreamWriter with a dict per request for the
            # rest of the process (the same in both runs, but not what a
            # checked bench server pays).
            socks[0].sendall(msg)
            _answer(socks[0], http)
        for _ in range(n):
            if gap:
                time.sleep(gap)
            for s in socks:
                s.sendall(msg)
            for s in socks:
                _answer(s, http)
    finally:
        for s in socks:
            s.close()


def _answer(s: socket.socket, http: bool) -> None:
    if http:
        buf = b""
        while not buf.endswith(b"Hello, World!\n"):
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit("closed")
            buf += chunk
    else:
        got = 0
        while got < 64:
            chunk = s.recv(64 - got)
            if not chunk:
                raise SystemExit("closed")
            got += len(chunk)


def one_run(target: str, tool: str, n: int, tmp: str, gap: float = 0.0,
            conns: int = 1) -> str:
    port = free_port()
    out = os.path.join(tmp, f"{target}-{n}.out")
    if tool == "callgrind":
        pre = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    else:
        pre = ["strace", "-f", "-c", "-o", out]
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=ROOT)
    # A floor target runs all the requests itself: n on each of conns.
    # SIGINT back to its default for the server: started from a shell's
    # background job it inherits SIGINT ignored, Python then installs no
    # KeyboardInterrupt handler, and the stop below would never end it.
    proc = subprocess.Popen(pre + argv_for(target, port, n * conns), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                             signal.SIG_DFL))
    if target.startswith("floor-"):
        if proc.wait(timeout=600) != 0:
            raise SystemExit(f"{target} failed")
        return out
    try:
        # Slow under callgrind; its one connect costs the same in both runs.
        wait_listening(port, proc, timeout=120.0)
        drive(port, n, target.endswith(("http", "aiohttp")), gap, conns)
        time.sleep(0.5)
    finally:
        # SIGINT: Python exits through KeyboardInterrupt, the C server on
        # its handler; pyepoll-server drains on SIGTERM.
        sig = signal.SIGTERM if target.startswith("server-") else signal.SIGINT
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return out


def callgrind_total(path: str, inclusive: bool = False) -> tuple:
    """(total Ir, {function: self Ir})"""
    res = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100",
                          f"--inclusive={'yes' if inclusive else 'no'}", path],
                         capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"^([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", res, re.M)
                .group(1).replace(",", ""))
    funcs = collections.Counter()
    for line in res.splitlines():
        m = re.match(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S.*)$", line)
        if m and "PROGRAM TOTALS" not in line:
            funcs[m.group(2).split(" [")[0]] += int(m.group(1).replace(",", ""))
    return total, funcs


def strace_counts(path: str) -> collections.Counter:
    counts = collections.Counter()
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                counts[parts[-1]] += int(parts[3])
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("targets", nargs="+")
    ap.add_argument("--tool", choices=("callgrind", "strace"), default="callgrind")
    ap.add_argument("--n1", type=int, default=500)
    ap.add_argument("--n2", type=int, default=2500)
    ap.add_argument("--top", type=int, default=0)
    ap.add_argument("--gap", type=float, default=0.0, metavar="MS",
                    help="wait MS milliseconds before each request, so the "
                    "server is idle when it comes (a loop that sends the "
                    "response sooner must not get a different framework "
                    "path: aiohttp skips its wait for the next request "
                    "when that is already in)")
    ap.add_argument("--conns", type=int, default=1, metavar="K",
                    help="K connections, each round one request on every "
                    "one before any answer is read (a batch of K events "
                    "per wakeup, as under wrk); figures are per request")
    ap.add_argument("--inclusive", action="store_true",
                    help="--top lists inclusive costs (callees counted)")
    args = ap.parse_args()
    dn = (args.n2 - args.n1) * args.conns
    with tempfile.TemporaryDirectory() as tmp:
        for target in args.targets:
            gap = args.gap / 1000.0
            a = one_run(target, args.tool, args.n1, tmp, gap, args.conns)
            b = one_run(target, args.tool, args.n2, tmp, gap, args.conns)
            if args.tool == "callgrind":
                (ta, fa), (tb, fb) = (callgrind_total(a, args.inclusive),
                                      callgrind_total(b, args.inclusive))
                print(f"{target}: {(tb - ta) / dn:,.0f} instructions per round trip")
                diff = fb.copy()
                diff.subtract(fa)
                for name, v in diff.most_common(args.top):
                    print(f"    {v / dn:9,.0f}  {name[:110]}")
            else:
                ca, cb = strace_counts(a), strace_counts(b)
                per = {k: (cb[k] - ca[k]) / dn for k in cb}
                per = {k: v for k, v in per.items() if abs(v) >= 0.01}
                print(f"{target}: {sum(per.values()):.2f} syscalls per round trip: "
                      + ", ".join(f"{k} {v:.2f}" for k, v in
                                  sorted(per.items(), key=lambda kv: -kv[1])))
            sys.stdout.flush()


if __name__ == "__main__":
    main()

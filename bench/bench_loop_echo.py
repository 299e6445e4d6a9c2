"""Echo servers side by side: pyepoll.Loop with a Python handler, pyepoll's
C echo mode, a plain C epoll server, uvloop and asyncio.

The Python handler is written three ways: wait() + recv() + send() per
event ("py-handler"), wait_batch() + reply() (each DATA brings its bytes in
one shared buffer: "batch+reply"), and wait_batch() + queue_echo() (the
replies of a batch go out in the next wait_batch's single C call:
"batch+queue_echo"); "batch+handler fn" calls a Python function per
message, handler(handle, memoryview) -> reply, and queues the reply with
queue_echo when it is the input itself.

Every server runs in its own process pinned to CPU 0; the C load client
(bench/c_echo_client.c: N connections, one SIZE-byte message in flight on
each, every byte checked) runs pinned to CPU 1.  Servers alternate within
each repeat.  Reported: median throughput, and the server's CPU time per
message (user + sys, read from /proc/PID/stat around the client's run),
with ratios to the plain C server and to uvloop.

A second part holds 15,000 idle connections on the pyepoll servers and
reports the resident memory they cost per connection, and the throughput
of the 64 active connections with and without them (alternating).

    python bench/bench_loop_echo.py [--seconds 3] [--runs 3] [--conns 64]
                                    [--size 1024] [--idle 15000]

Linux only (the client uses epoll; CPU and RSS come from /proc).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

ROOT = pathlib.Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")

# name -> how to start it (the "serve" kinds run this script in a child).
SERVERS: Dict[str, Tuple[str, ...]] = {
    "plain C epoll": ("c",),
    "pyepoll py-handler level": ("serve", "py", "level"),
    "pyepoll py-handler edge": ("serve", "py", "edge"),
    "pyepoll batch+reply edge": ("serve", "batch-reply", "edge"),
    "pyepoll batch+handler fn edge": ("serve", "batch-fn", "edge"),
    "pyepoll batch+queue_echo level": ("serve", "batch-queue", "level"),
    "pyepoll batch+queue_echo edge": ("serve", "batch-queue", "edge"),
    "pyepoll C echo level": ("serve", "cecho", "level"),
    "pyepoll C echo edge": ("serve", "cecho", "edge"),
    "uvloop Protocol": ("serve", "uvloop", "-"),
    "asyncio Protocol": ("serve", "asyncio", "-"),
}
BASE = "plain C epoll"
UV = "uvloop Protocol"
PY_HANDLERS = ("pyepoll py-handler level", "pyepoll py-handler edge",
               "pyepoll batch+reply edge", "pyepoll batch+handler fn edge",
               "pyepoll batch+queue_echo level",
               "pyepoll batch+queue_echo edge")


# -- servers (child side) ---------------------------------------------------------


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and cpu < os.cpu_count():
        os.sched_setaffinity(0, {cpu})


def _ready(port: int) -> None:
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve_pyepoll(kind: str, trigger: str) -> None:
    from pyepoll import EV_DATA, EV_EOF, Loop

    _raise_nofile()
    loop = Loop(trigger=trigger, echo=(kind == "cecho"), max_connections=32768)
    lid = loop.listen("127.0.0.1", 0, backlog=4096)
    _ready(loop.sockname(lid)[1])
    if kind.startswith("batch-"):
        serve_batch(loop, kind)
        return
    wait, recv, send = loop.wait, loop.recv, loop.send
    close = loop.close_connection
    # The handler a user writes: one event at a time, recv + send.
    while True:
        for kind_, h, arg in wait():
            if kind_ == EV_DATA:
                try:
                    send(h, recv(h))
                except ConnectionError:
                    pass
            elif kind_ == EV_EOF:
                close(h)


def serve_batch(loop, kind: str) -> None:
    from pyepoll import EV_DATA, EV_EOF

    wait_batch, reply = loop.wait_batch, loop.reply
    push, close = loop.queue_echo, loop.close_connection
    view = loop.batch_view

    def handler(h: int, data: memoryview):
        return data                       # an echo: the reply is the input

    while True:
        for kind_, h, n, off in wait_batch():
            if kind_ == EV_DATA:
                if kind == "batch-queue":
                    push(h)
                    continue
                try:
                    if kind == "batch-reply":
                        reply(h, off, n)
                        continue
                    data = view[off:off + n]
                    out = handler(h, data)
                    if out is data:
                        push(h)           # echo-like: no conversion
                    elif out is not None:
                        loop.send(h, out)
                except ConnectionError:
                    pass
            elif kind_ == EV_EOF:
                close(h)


def serve_asyncio(use_uvloop: bool) -> None:
    import asyncio

    _raise_nofile()

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):  # type: ignore[override]
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=4096)
        _ready(server.sockets[0].getsockname()[1])
        await asyncio.Future()

    if use_uvloop:
        import uvloop
        uvloop.install()
    asyncio.run(main())


def serve(argv: List[str]) -> None:
    _pin(0)
    kind, trigger = argv
    if kind in ("py", "cecho") or kind.startswith("batch-"):
        serve_pyepoll(kind, trigger)
    else:
        serve_asyncio(kind == "uvloop")


# -- the driver (parent side) -------------------------------------------------------


def build(out: pathlib.Path) -> Dict[str, pathlib.Path]:
    cc = os.environ.get("CC", "gcc" if shutil.which("gcc") else "cc")
    bins = {}
    for name in ("c_echo_server", "c_echo_client"):
        bins[name] = out / name
        subprocess.run([cc, "-O2", "-o", str(bins[name]),
                        str(ROOT / "bench" / f"{name}.c")], check=True)
    return bins


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> Tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK   # utime, stime


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def nfds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Server:
    def __init__(self, name: str, bins: Dict[str, pathlib.Path]) -> None:
        spec = SERVERS[name]
        if spec[0] == "c":
            self.port = free_port()
            self.proc = subprocess.Popen(
                [str(bins["c_echo_server"]), str(self.port)],
                stdout=subprocess.DEVNULL, preexec_fn=lambda: _pin(0))
            time.sleep(0.2)
        else:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "--serve", *spec[1:]],
                stdout=subprocess.PIPE, text=True)
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{name}: server did not start")
            self.port = int(line)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


def run_client(bins, port: int, args, seconds: Optional[float] = None,
               conns: Optional[int] = None) -> Tuple[int, float]:
    cmd = [str(bins["c_echo_client"]), str(port), str(conns or args.conns),
           str(seconds or args.seconds), str(args.size)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         preexec_fn=lambda: _pin(1)).stdout
    msgs, rate, bad = out.split()
    if int(bad):
        raise SystemExit(f"{bad} bytes echoed wrong")
    return int(msgs), float(rate)


def measure(server: Server, bins, args) -> Tuple[float, float, float]:
    """(messages per second, server CPU seconds per message, of which
    user-space)."""
    u0, s0 = cpu_seconds(server.proc.pid)
    msgs, rate = run_client(bins, server.port, args)
    u1, s1 = cpu_seconds(server.proc.pid)
    msgs = max(msgs, 1)
    return rate, (u1 - u0 + s1 - s0) / msgs, (u1 - u0) / msgs


def part_throughput(bins, args) -> None:
    names = [n for n in SERVERS if (n != UV or _has_uvloop()) and
             (not args.servers or n in (BASE, UV) or
              any(w in n for w in args.servers.split(",")))]
    results: Dict[str, List[Tuple[float, float, float]]] = {
        n: [] for n in names}
    for r in range(args.runs):
        for name in names:
            server = Server(name, bins)
            try:
                results[name].append(measure(server, bins, args))
            finally:
                server.stop()
            print(f"  run {r + 1} {name:31} {results[name][-1][0]:10.0f} msg/s "
                  f"{results[name][-1][1] * 1e6:7.2f} us/msg", flush=True)
    med = {n: (statistics.median(x for x, _, _ in rs),
               statistics.median(c for _, c, _ in rs),
               statistics.median(u for _, _, u in rs))
           for n, rs in results.items()}
    b_rate, b_cpu, _ = med[BASE]
    uv = med.get(UV)
    print()
    print(f"{args.conns} connections x 1 message of {args.size} B in flight, "
          f"{args.seconds:g} s x {args.runs} alternating runs; server on "
          f"CPU 0, client on CPU 1; medians")
    head = (f"{'server':31} {'msg/s':>9} {'/C':>6} {'/uv':>6} "
            f"{'CPU us/msg':>10} {'/C':>6} {'/uv':>6} {'user us':>8}")
    print(head)
    print("-" * len(head))
    for name, (rate, cpu, user) in med.items():
        uvr = f"{rate / uv[0]:6.3f}" if uv else "     -"
        uvc = f"{cpu / uv[1]:6.3f}" if uv else "     -"
        print(f"{name:31} {rate:9.0f} {rate / b_rate:6.3f} {uvr} "
              f"{cpu * 1e6:10.3f} {cpu / b_cpu:6.3f} {uvc} {user * 1e6:8.3f}")
    print()
    checks = []
    for name in PY_HANDLERS:
        py = med.get(name)
        if not py:
            continue
        short = name[len("pyepoll "):]
        checks.append((f"{short}: CPU/msg <= 1.1 x plain C", py[1] / b_cpu,
                       1.1, "le"))
        if uv:
            checks += [
                (f"{short}: CPU/msg <= 0.9 x uvloop", py[1] / uv[1], 0.9,
                 "le"),
                (f"{short}: msg/s >= 1.1 x uvloop", py[0] / uv[0], 1.1,
                 "ge"),
            ]
    for name in ("pyepoll C echo level", "pyepoll C echo edge"):
        ce = med.get(name)
        if ce:
            short = name[len("pyepoll "):]
            checks += [
                (f"{short}: CPU/msg <= 1.05 x plain C", ce[1] / b_cpu, 1.05,
                 "le"),
                (f"{short}: msg/s >= 0.98 x plain C", ce[0] / b_rate, 0.98,
                 "ge"),
            ]
    for what, value, target, op in checks:
        ok = value <= target if op == "le" else value >= target
        print(f"  {what:50} {value:6.3f}  {'met' if ok else 'MISSED'}")


def open_idle(port: int, n: int) -> List[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.connect(("127.0.0.1", port))
        socks.append(s)
    return socks


def settled_fds(pid: int, timeout: float = 30) -> int:
    """The server's descriptor count once the load client's connections
    have all been closed on its side (unchanged for 0.3 s)."""
    deadline = time.monotonic() + timeout
    last, since = nfds(pid), time.monotonic()
    while time.monotonic() - since < 0.3:
        if time.monotonic() > deadline:
            raise RuntimeError("server descriptor count does not settle")
        time.sleep(0.05)
        now = nfds(pid)
        if now != last:
            last, since = now, time.monotonic()
    return last


def wait_fds(pid: int, want: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while nfds(pid) != want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"server holds {nfds(pid)} fds, want {want}")
        time.sleep(0.05)


def part_idle(bins, args) -> None:
    _raise_nofile()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.idle + 200:
        print(f"\nidle part skipped: RLIMIT_NOFILE {soft} < {args.idle + 200}")
        return
    print()
    print(f"{args.idle} idle connections held by another process; "
          f"{args.conns} active; {args.seconds:g} s x {args.runs} runs, "
          f"alternating without/with")
    head = (f"{'server':31} {'B/idle':>7} {'msg/s':>9} {'msg/s':>9} "
            f"{'drop':>7} {'us/msg':>7} {'us/msg':>7} {'CPU+':>7}")
    print(head)
    print(f"{'':31} {'conn':>7} {'no idle':>9} {'idle':>9} {'':>7} "
          f"{'no idle':>7} {'idle':>7}")
    print("-" * len(head))
    for name in [n for n in ("pyepoll batch+queue_echo level",
                             "pyepoll batch+queue_echo edge",
                             "pyepoll py-handler edge",
                             "pyepoll C echo level", "pyepoll C echo edge")
                 if not args.servers or
                 any(w in n for w in args.servers.split(","))]:
        server = Server(name, bins)
        pid = server.proc.pid
        try:
            run_client(bins, server.port, args, seconds=0.5)   # warm up
            base_fds = settled_fds(pid)
            without, with_idle, per_conn = [], [], []
            for _ in range(args.runs):
                without.append(measure(server, bins, args))
                wait_fds(pid, base_fds)
                rss0 = rss_bytes(pid)
                idle = open_idle(server.port, args.idle)
                wait_fds(pid, base_fds + args.idle)
                time.sleep(0.3)
                per_conn.append((rss_bytes(pid) - rss0) / args.idle)
                with_idle.append(measure(server, bins, args))
                for s in idle:
                    s.close()
                wait_fds(pid, base_fds)
        finally:
            server.stop()
        a = statistics.median(r for r, _, _ in without)
        b = statistics.median(r for r, _, _ in with_idle)
        ca = statistics.median(c for _, c, _ in without)
        cb = statistics.median(c for _, c, _ in with_idle)
        # The first round is the one that pays: later rounds reuse the
        # memory the first one left behind in the process.
        print(f"{name:31} {per_conn[0]:7.1f} {a:9.0f} "
              f"{b:9.0f} {(a - b) / a * 100:6.2f}% {ca * 1e6:7.2f} "
              f"{cb * 1e6:7.2f} {(cb - ca) / ca * 100:6.2f}%", flush=True)
    print("  targets: <= 128 B per idle connection, <= 3% throughput drop "
          "(CPU+: change of server CPU per message)")


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--idle", type=int, default=15000)
    ap.add_argument("--only", choices=("throughput", "idle"))
    ap.add_argument("--servers", default="",
                    help="comma-separated substrings of server names to run "
                         "(plain C and uvloop always run)")
    args = ap.parse_args()
    if not sys.platform.startswith("linux"):
        raise SystemExit("Linux only (epoll client, /proc)")
    if not _has_uvloop():
        print("uvloop not installed: its column is left out", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="pyepoll-bench-") as tmp:
        bins = build(pathlib.Path(tmp))
        if args.only != "idle":
            part_throughput(bins, args)
        if args.only != "throughput":
            part_idle(bins, args)


if __name__ == "__main__":
    main()

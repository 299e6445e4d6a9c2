"""Compare pyepoll's C loop in echo mode with a plain C epoll echo server.

Builds bench/c_echo_server.c, bench/loop_echo_server.c (against the core
library built by CMake) and bench/c_echo_client.c, then runs each server
pinned to CPU 0 with the client pinned to CPU 1, alternating servers, and
prints medians of throughput and of server CPU time per message (user +
sys from the server's own getrusage), with ratios to the plain C server.

    python3 bench/loop_vs_c_echo.py [--runs 3] [--seconds 5] [--conns 64]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True)


def build(out: pathlib.Path) -> dict[str, pathlib.Path]:
    cc = os.environ.get("CC", "cc")
    core = out / "core"
    sh("cmake", "-S", str(ROOT), "-B", str(core), "-G", "Ninja",
       "-DCMAKE_BUILD_TYPE=Release", "-DPYEPOLL_TESTS=OFF",
       "-DPYEPOLL_PYTHON=OFF")
    sh("cmake", "--build", str(core), "--target", "pyepoll_core")
    bins = {name: out / name for name in
            ("c_echo_server", "loop_echo_server", "c_echo_client")}
    sh(cc, "-O2", "-o", str(bins["c_echo_server"]),
       str(ROOT / "bench/c_echo_server.c"))
    sh(cc, "-O2", "-o", str(bins["c_echo_client"]),
       str(ROOT / "bench/c_echo_client.c"))
    sh(cc, "-O2", "-I", str(ROOT / "csrc"), "-o",
       str(bins["loop_echo_server"]), str(ROOT / "bench/loop_echo_server.c"),
       str(core / "libpyepoll_core.a"))
    return bins


def run_one(server: list[str], client: list[str]) -> tuple[float, float]:
    """Return (messages per second, server CPU seconds per message)."""
    pin = ["taskset", "-c"] if shutil.which("taskset") else None
    srv = subprocess.Popen((pin + ["0"] if pin else []) + server,
                           stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    out = subprocess.run((pin + ["1"] if pin else []) + client,
                         check=True, capture_output=True, text=True).stdout
    srv.send_signal(signal.SIGTERM)
    usage = srv.communicate(timeout=10)[0].split()
    msgs, rate, bad = out.split()
    if int(bad):
        sys.exit(f"{server[0]}: {bad} bytes echoed wrong")
    cpu = float(usage[0]) + float(usage[1])
    return float(rate), cpu / int(msgs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--port", type=int, default=19100)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="pyepoll-bench-") as tmp:
        bins = build(pathlib.Path(tmp))
        servers = {
            "plain C epoll (level)": [str(bins["c_echo_server"])],
            "pe_loop echo, epoll level": [str(bins["loop_echo_server"]),
                                          "PORT", "level", "epoll"],
            "pe_loop echo, epoll edge": [str(bins["loop_echo_server"]),
                                         "PORT", "edge", "epoll"],
        }
        results: dict[str, list[tuple[float, float]]] = {k: [] for k in servers}
        port = args.port
        for _ in range(args.runs):
            for name, cmd in servers.items():   # alternate servers every run
                port += 1
                server = [str(port) if a == "PORT" else a for a in cmd]
                if len(server) == 1:
                    server.append(str(port))
                client = [str(bins["c_echo_client"]), str(port),
                          str(args.conns), str(args.seconds), str(args.size)]
                results[name].append(run_one(server, client))

    base = "plain C epoll (level)"
    b_rate = statistics.median(r for r, _ in results[base])
    b_cpu = statistics.median(c for _, c in results[base])
    print(f"{args.conns} connections, {args.size} B messages, "
          f"{args.seconds:g} s x {args.runs} runs, server CPU 0, client CPU 1")
    print(f"{'server':28} {'msg/s':>10} {'ratio':>6} "
          f"{'CPU us/msg':>11} {'ratio':>6}   runs (msg/s)")
    for name, rs in results.items():
        rate = statistics.median(r for r, _ in rs)
        cpu = statistics.median(c for _, c in rs)
        runs = " ".join(f"{r:.0f}" for r, _ in rs)
        print(f"{name:28} {rate:10.0f} {rate / b_rate:6.3f} "
              f"{cpu * 1e6:11.3f} {cpu / b_cpu:6.3f}   {runs}")


if __name__ == "__main__":
    main()

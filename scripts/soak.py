#!/usr/bin/env python3
"""Soak the reference server: open, use once and close many connections
(1,000,000 by default) and watch the server's descriptors and memory.

    python scripts/soak.py                         # 1M connections, HTTP
    python scripts/soak.py --connections 20000 --json out.json

The server is ``python -m pyepoll.server`` started here on a free
loopback port (extra settings after ``--``).  The load is
scripts/soak_client.c (compiled once with $CC or cc/gcc/clang into
~/.cache/pyepoll-soak), CONCURRENCY connections at a time, each one
request and its answer checked, then closed by the client.

Ephemeral ports: a client close leaves TIME_WAIT on the client side.  By
default the client binds its sockets to --sources loopback addresses
127.1.x.y (the port is picked at connect time for the whole 4-tuple), so
the 60 s of TIME_WAIT spread over sources x 28,000 ports; Linux also
reuses loopback TIME_WAIT entries (net.ipv4.tcp_tw_reuse = 2).
--linger0 closes with an RST instead (no TIME_WAIT at all; the server
sees ECONNRESET instead of EOF).

Measured from /proc/PID: open descriptors (fd/) and VmRSS (status), at
start (baseline), once --warmup connections are done (the warm value),
every 0.5 s during the run, and after the client finishes (descriptors
are given a few seconds to come back).  Passes when the descriptors are
back to the baseline and RSS never exceeds the warm value by more than
--rss-tolerance (5%).  Exit status 0 on a pass, 1 on a fail, 2 on a setup
error; the figures are printed and, with --json, written out.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent
CLIENT_SRC = HERE / "soak_client.c"
STARTED = re.compile(r"INFO: serving (\S+) on (\S+):(\d+) ")


def build_client() -> str:
    src = CLIENT_SRC.read_bytes()
    tag = hashlib.sha256(src).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    out = cache / "pyepoll-soak" / f"soak_client-{tag}"
    if out.exists():
        return str(out)
    cc = os.environ.get("CC") or next(
        (c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if cc is None:
        raise RuntimeError("no C compiler (set CC) to build the soak client")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    subprocess.run([cc, "-O2", "-o", str(tmp), str(CLIENT_SRC)], check=True)
    tmp.replace(out)
    return str(out)


def nfds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Server:
    def __init__(self, args: List[str]) -> None:
        cmd = [sys.executable, "-m", "pyepoll.server", "--host", "127.0.0.1",
               "--port", "0"] + args
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.pid = self.proc.pid
        self.lines: List[str] = []
        self.port: Optional[int] = None
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.proc.stdout:                  # type: ignore[union-attr]
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            m = STARTED.search(line)
            if m and self.port is None:
                self.port = int(m.group(3))
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = 20) -> int:
        if not self._ready.wait(timeout) or self.port is None:
            raise RuntimeError("server did not start:\n" + "\n".join(self.lines))
        return self.port

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(10)


def soak(connections: int, concurrency: int, protocol: str, warmup: int,
         sources: int, linger0: bool, server_args: List[str],
         time_limit: float, rss_tolerance: float,
         out=sys.stdout) -> dict:
    client = build_client()
    srv = Server(["--protocol", protocol] + server_args)
    samples = []
    try:
        port = srv.wait_ready()
        time.sleep(0.5)                      # let start-up allocations settle
        base_fds, base_rss = nfds(srv.pid), rss_kib(srv.pid)
        print(f"server pid {srv.pid} port {port}: baseline {base_fds} fds, "
              f"{base_rss} KiB RSS", file=out, flush=True)
        cmd = [client, "127.0.0.1", str(port), str(connections),
               str(concurrency), protocol, "linger0" if linger0 else "fin",
               str(0 if linger0 else sources)]
        t0 = time.monotonic()
        cl = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        warm_rss = None
        warm_done = 0
        next_sample = 0.0
        final = None
        for line in cl.stdout:                        # type: ignore[union-attr]
            parts = line.split()
            if parts[0] == "final":
                final = (int(parts[1]), int(parts[2]), float(parts[3]))
                break
            done = int(parts[1])
            now = time.monotonic() - t0
            if now > time_limit:
                cl.kill()
                raise RuntimeError(f"over the {time_limit:.0f} s limit at "
                                   f"{done} connections")
            if now >= next_sample or (warm_rss is None and done >= warmup):
                next_sample = now + 0.5
                s = dict(t=round(now, 2), done=done, errors=int(parts[2]),
                         fds=nfds(srv.pid), rss_kib=rss_kib(srv.pid))
                samples.append(s)
                if warm_rss is None and done >= warmup:
                    warm_rss, warm_done = s["rss_kib"], done
                    print(f"warm at {done}: {warm_rss} KiB RSS, {s['fds']} fds",
                          file=out, flush=True)
                if len(samples) % 20 == 0:
                    print(f"  {s}", file=out, flush=True)
        rc = cl.wait()
        if final is None:
            raise RuntimeError(f"client exited {rc} without a final line")
        # The server closes its side once it sees our close: give it time.
        deadline = time.monotonic() + 10
        while nfds(srv.pid) > base_fds and time.monotonic() < deadline:
            time.sleep(0.1)
        end_fds, end_rss = nfds(srv.pid), rss_kib(srv.pid)
        after = [s["rss_kib"] for s in samples if s["done"] >= warm_done]
        max_rss = max(after + [end_rss])
        if warm_rss is None:
            warm_rss = base_rss
        rss_ok = max_rss <= warm_rss * (1 + rss_tolerance)
        result = dict(
            connections=connections, concurrency=concurrency,
            protocol=protocol, close="linger0 (RST)" if linger0 else
            f"FIN from {sources} source addresses",
            done=final[0], errors=final[1], seconds=final[2],
            rate_per_s=round(final[0] / final[2]) if final[2] else None,
            baseline_fds=base_fds, end_fds=end_fds,
            max_fds=max(s["fds"] for s in samples) if samples else end_fds,
            baseline_rss_kib=base_rss, warm_rss_kib=warm_rss,
            warm_at=warm_done, max_rss_after_warm_kib=max_rss,
            end_rss_kib=end_rss,
            rss_growth_after_warm=round(max_rss / warm_rss - 1, 4),
            fds_ok=end_fds == base_fds, rss_ok=rss_ok,
            errors_ok=final[1] == 0, server_alive=srv.proc.poll() is None,
            samples=samples)
        result["passed"] = (result["fds_ok"] and result["rss_ok"] and
                            result["errors_ok"] and result["server_alive"])
        return result
    finally:
        code = srv.stop()
        if code not in (0, -signal.SIGTERM):
            print("server exit status", code, file=out)
            print("\n".join(srv.lines[-30:]), file=out)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=1_000_000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--protocol", choices=["http", "echo"], default="http")
    p.add_argument("--warmup", type=int, default=None,
                   help="connections before the warm RSS is taken "
                        "(default 5%% of --connections, at least 2000)")
    p.add_argument("--sources", type=int, default=16,
                   help="client source addresses 127.1.x.y (default 16)")
    p.add_argument("--linger0", action="store_true",
                   help="close with an RST instead (no TIME_WAIT)")
    p.add_argument("--time-limit", type=float, default=1800)
    p.add_argument("--rss-tolerance", type=float, default=0.05)
    p.add_argument("--json", help="write the figures here")
    p.add_argument("server_args", nargs="*",
                   help="extra pyepoll.server settings (after --)")
    a = p.parse_args(argv)
    warmup = a.warmup if a.warmup is not None else max(2000, a.connections // 20)
    try:
        r = soak(a.connections, a.concurrency, a.protocol, warmup, a.sources,
                 a.linger0, a.server_args, a.time_limit, a.rss_tolerance)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        print("soak: setup error:", exc, file=sys.stderr)
        return 2
    brief = {k: v for k, v in r.items() if k != "samples"}
    print(json.dumps(brief, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=2))
    return 0 if r["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

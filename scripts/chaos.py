#!/usr/bin/env python3
"""Chaos against the reference server: many clients doing random things at
random moments, while the server must stay up.

    python scripts/chaos.py                          # every configuration, 60 s each
    python scripts/chaos.py --model eventloop --seconds 1800 --seed 7
    python scripts/chaos.py --list                   # the configurations

Each configuration is one ``python -m pyepoll.server`` process (a model,
and for the event loop a backend and a trigger; an overflow policy; a
protocol) on a free loopback port with a small --max-connections, so that
the clients, more than it serves, keep the overflow path busy, and a short
--idle-timeout.  Client threads, each with its own random generator drawn
from the seed, pick actions: whole requests checked byte for byte,
pipelines, partial requests, half-closes, resets (SO_LINGER 0) before,
during and after an answer, readers that stop reading, clients idle past
the timeout, garbage, bare connects.  A wrong answer (bytes that are not
the expected echo or HTTP answer) fails the run at once; resets, timeouts
and 503s are the server's right under this load and are only counted.

It passes when the server never exits, a fresh client is answered
correctly at the end, and once every client has gone the server's
descriptors return to their count before the first client (read from
/proc/PID/fd).  The seed is printed first: the same seed replays the same
choices (the timing of threads and the kernel is not replayed).  Exit
status 0 on a pass, 1 on a failure.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

STARTED = re.compile(r"INFO: serving (\S+) on (\S+):(\d+) ")
HELLO = b"Hello, World!\n"
IDLE = 1.5                  # --idle-timeout of every configuration
MAX_CONNECTIONS = 6
CLIENTS = 16


class WrongAnswer(AssertionError):
    """The server answered, and the answer was wrong."""


# ------------------------------------------------------------ configurations

def configurations(backends: List[str]) -> List[Dict[str, str]]:
    """Every model under both overflow policies; the event loop on every
    backend and, where it has edge triggering, both triggers; the two
    protocols alternate along the list."""
    out: List[Dict[str, str]] = []
    for backend in backends:
        triggers = ["edge", "level"] if backend in ("epoll", "kqueue") \
            else ["level"]
        for trigger in triggers:
            out.append({"model": "eventloop", "backend": backend,
                        "trigger": trigger})
    out += [{"model": "threadpool"}, {"model": "threads"}]
    full = []
    for i, cfg in enumerate(out):
        for j, overflow in enumerate(("queue", "reject")):
            full.append(dict(cfg, overflow=overflow,
                             protocol=("http", "echo")[(i + j) % 2]))
    return full


def name_of(cfg: Dict[str, str]) -> str:
    return "-".join(cfg[k] for k in ("model", "backend", "trigger",
                                     "overflow", "protocol") if k in cfg)


# ------------------------------------------------------------------- server

class Server:
    def __init__(self, cfg: Dict[str, str]) -> None:
        args = [sys.executable, "-m", "pyepoll.server", "--port", "0",
                "--model", cfg["model"], "--protocol", cfg["protocol"],
                "--overflow", cfg["overflow"],
                "--max-connections", str(MAX_CONNECTIONS),
                "--idle-timeout", str(IDLE)]
        if cfg["overflow"] == "queue" or cfg["model"] == "eventloop":
            args += ["--queue-size", str(MAX_CONNECTIONS)]
        if cfg["model"] == "eventloop":
            args += ["--backend", cfg["backend"], "--trigger", cfg["trigger"]]
        if cfg["model"] == "threadpool":
            args += ["--pool-threads", str(MAX_CONNECTIONS)]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.lines: List[str] = []
        self._started = threading.Event()
        self.addr: Tuple[str, int] = ("127.0.0.1", 0)
        threading.Thread(target=self._read, daemon=True).start()
        until = time.monotonic() + 20
        while not self._started.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > until:
                break
        if not self._started.is_set():
            self.stop()
            raise RuntimeError("server did not start:\n" + self.log())

    def _read(self) -> None:
        for raw in self.proc.stdout:                  # type: ignore[union-attr]
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            m = STARTED.search(line)
            if m and not self._started.is_set():
                self.addr = (m.group(2).strip("[]"), int(m.group(3)))
                self._started.set()

    def log(self, last: int = 40) -> str:
        return "\n".join(self.lines[-last:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


# ------------------------------------------------------------------ clients

def reset(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def read_http(s: socket.socket, buf: bytearray) -> Tuple[int, bytes]:
    """One response from s (bytes already read in buf): (status, body)."""
    while b"\r\n\r\n" not in buf:
        data = s.recv(65536)
        if not data:
            raise ConnectionError("closed before an answer")
        buf += data
    i = buf.index(b"\r\n\r\n")
    head = bytes(buf[:i]).decode("latin-1")
    del buf[:i + 4]
    lines = head.split("\r\n")
    if not lines[0].startswith("HTTP/1.1 "):
        raise WrongAnswer(f"not an HTTP/1.1 status line: {lines[0]!r}")
    status = int(lines[0].split(" ")[1])
    length = 0
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v)
    while len(buf) < length:
        data = s.recv(65536)
        if not data:
            raise ConnectionError("closed in a body")
        buf += data
    body = bytes(buf[:length])
    del buf[:length]
    return status, body


def request(rng: random.Random) -> Tuple[bytes, bytes]:
    """A random valid HTTP request and the body its 200 answer carries."""
    if rng.random() < 0.5:
        return b"GET /%d HTTP/1.1\r\nHost: chaos\r\n\r\n" % rng.randrange(99), HELLO
    body = rng.randbytes(rng.choice((1, 100, 5000, 70000)))
    return (b"POST / HTTP/1.1\r\nHost: chaos\r\nContent-Length: %d\r\n\r\n"
            % len(body) + body, body)


def check_http(s: socket.socket, buf: bytearray, want: bytes) -> str:
    status, body = read_http(s, buf)
    if status == 503:
        return "refused"
    if status != 200:
        raise WrongAnswer(f"status {status} for a valid request")
    if body != want:
        raise WrongAnswer(f"body of {len(body)} bytes, wanted {len(want)}")
    return "ok"


def check_echo(s: socket.socket, sent: bytes) -> str:
    got = bytearray()
    while len(got) < len(sent):
        data = s.recv(65536)
        if not data:
            if not got:
                return "refused"        # closed at once: over capacity
            raise ConnectionError("closed in the middle of an echo")
        got += data
        if bytes(got) != sent[:len(got)]:
            raise WrongAnswer("echo differs from what was sent")
    return "ok"


class Client(threading.Thread):
    """One client thread: random actions until the deadline."""

    def __init__(self, addr, protocol: str, seed: int, deadline: float,
                 fail: List[str]) -> None:
        super().__init__(daemon=True)
        self.addr, self.http = addr, protocol == "http"
        self.rng = random.Random(seed)
        self.deadline, self.fail = deadline, fail
        self.counts: Dict[str, int] = {}

    def run(self) -> None:
        actions = [a for a in dir(self) if a.startswith("act_")]
        while time.monotonic() < self.deadline and not self.fail:
            action = self.rng.choice(actions)
            try:
                s = socket.create_connection(self.addr, timeout=IDLE + 5)
            except OSError:
                self.count("connect_failed")
                continue
            try:
                self.count(getattr(self, action)(s) or action[4:])
            except WrongAnswer as exc:
                self.fail.append(f"{action}: {exc}")
            except OSError:
                self.count("reset_or_timeout")
            finally:
                s.close()

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def payload(self) -> Tuple[bytes, bytes]:
        if self.http:
            return request(self.rng)
        data = self.rng.randbytes(self.rng.choice((1, 700, 20000)))
        return data, data

    def act_whole(self, s: socket.socket) -> str:
        raw, want = self.payload()
        s.sendall(raw)
        if self.http:
            return check_http(s, bytearray(), want)
        return check_echo(s, raw)

    def act_pipeline(self, s: socket.socket) -> str:
        reqs = [self.payload() for _ in range(self.rng.randrange(2, 9))]
        s.sendall(b"".join(r for r, _ in reqs))
        if not self.http:
            return check_echo(s, b"".join(r for r, _ in reqs))
        buf = bytearray()
        for _, want in reqs:
            if check_http(s, buf, want) == "refused":
                return "refused"
        return "ok"

    def act_half_close(self, s: socket.socket) -> str:
        raw, want = self.payload()
        s.sendall(raw)
        s.shutdown(socket.SHUT_WR)
        if self.http:
            return check_http(s, bytearray(), want)
        return check_echo(s, raw)

    def act_partial_then_close(self, s: socket.socket) -> None:
        raw, _ = self.payload()
        s.sendall(raw[:self.rng.randrange(1, max(2, len(raw)))])
        time.sleep(self.rng.random() * 0.05)
        if self.rng.random() < 0.5:
            reset(s)

    def act_reset_around_answer(self, s: socket.socket) -> None:
        raw, _ = self.payload()
        s.sendall(raw)
        time.sleep(self.rng.choice((0, 0.0005, 0.005, 0.05)))
        if self.rng.random() < 0.5:
            s.recv(self.rng.choice((1, 1024)))
        reset(s)

    def act_stop_reading(self, s: socket.socket) -> None:
        # A large answer nobody reads: the server's output backs up.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        big = self.rng.randbytes(1 << 20)
        if self.http:
            big = (b"POST / HTTP/1.1\r\nHost: chaos\r\nContent-Length: %d\r\n"
                   b"\r\n" % len(big)) + big
        s.settimeout(0.3)
        try:
            s.sendall(big)
        except socket.timeout:
            pass
        time.sleep(self.rng.random() * 0.5)
        if self.rng.random() < 0.5:
            reset(s)

    def act_idle_past_timeout(self, s: socket.socket) -> str:
        if self.rng.random() < 0.7:     # keep most threads busy elsewhere
            return "idle_skipped"
        s.settimeout(IDLE + 5)
        data = s.recv(100)              # the server closes it (or 408)
        if self.http and data and not data.startswith(b"HTTP/1.1 408") \
                and not data.startswith(b"HTTP/1.1 503"):
            raise WrongAnswer(f"idle client got {data[:40]!r}")
        if not self.http and data:
            raise WrongAnswer(f"idle echo client got {data[:40]!r}")
        return "idle_closed"

    def act_pipeline_then_reset(self, s: socket.socket) -> None:
        s.sendall(b"".join(self.payload()[0] for _ in range(20)))
        reset(s)

    def act_garbage(self, s: socket.socket) -> None:
        s.sendall(self.rng.randbytes(self.rng.randrange(1, 3000)))
        if self.rng.random() < 0.5:
            reset(s)

    def act_slow_drip(self, s: socket.socket) -> None:
        raw, _ = self.payload()
        for b in raw[:self.rng.randrange(1, 20)]:
            s.send(bytes([b]))
            time.sleep(0.01)

    def act_bare_connect(self, s: socket.socket) -> None:
        if self.rng.random() < 0.5:
            reset(s)


# --------------------------------------------------------------------- run

def fresh_client_ok(addr, protocol: str) -> bool:
    try:
        with socket.create_connection(addr, timeout=10) as s:
            if protocol == "http":
                s.sendall(b"GET / HTTP/1.1\r\nHost: fresh\r\n\r\n")
                return read_http(s, bytearray()) == (200, HELLO)
            s.sendall(b"fresh client")
            return check_echo(s, b"fresh client") == "ok"
    except (OSError, WrongAnswer):
        return False


def chaos(cfg: Dict[str, str], seconds: float, seed: int,
          clients: int = CLIENTS) -> Dict[str, object]:
    """One configuration for `seconds`; returns what happened."""
    srv = Server(cfg)
    result: Dict[str, object] = {"config": name_of(cfg), "seed": seed}
    try:
        time.sleep(0.2)
        base = srv.fds()
        fail: List[str] = []
        deadline = time.monotonic() + seconds
        threads = [Client(srv.addr, cfg["protocol"], seed * 1000 + i,
                          deadline, fail) for i in range(clients)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            if not srv.alive():
                fail.append("server exited")
                break
            time.sleep(0.1)
        for t in threads:
            t.join(IDLE + 10)
        counts: Dict[str, int] = {}
        for t in threads:
            for k, v in t.counts.items():
                counts[k] = counts.get(k, 0) + v
        result["actions"] = counts
        # Every client is gone: the server's descriptors come back (a
        # connection nobody closes goes at the idle timeout).
        until = time.monotonic() + IDLE + 10
        fds = srv.fds() if srv.alive() else -1
        while fds != base and time.monotonic() < until and srv.alive():
            time.sleep(0.2)
            fds = srv.fds()
        result.update(base_fds=base, end_fds=fds)
        fresh = srv.alive() and fresh_client_ok(srv.addr, cfg["protocol"])
        result["fresh_client_ok"] = fresh
        result["server_alive"] = srv.alive()
        if fds != base:
            fail.append(f"descriptors {base} -> {fds}")
        if not fresh:
            fail.append("a fresh client was not answered correctly")
        result["failures"] = fail
        result["passed"] = not fail and srv.alive()
        if not result["passed"]:
            result["server_log"] = srv.log()
    finally:
        srv.stop()
    return result


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0,
                    help="per configuration (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=None,
                    help="default: a random one (printed)")
    ap.add_argument("--model", choices=("eventloop", "threadpool", "threads"),
                    help="only this model's configurations")
    ap.add_argument("--clients", type=int, default=CLIENTS)
    ap.add_argument("--list", action="store_true",
                    help="print the configurations and exit")
    args = ap.parse_args(argv)
    import pyepoll
    cfgs = configurations(pyepoll.available_backends())
    if args.model:
        cfgs = [c for c in cfgs if c["model"] == args.model]
    if args.list:
        print("\n".join(name_of(c) for c in cfgs))
        return 0
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    print(f"chaos: seed {seed}, {len(cfgs)} configuration(s), "
          f"{args.seconds:g} s each, {args.clients} clients", flush=True)
    failed = 0
    for i, cfg in enumerate(cfgs):
        r = chaos(cfg, args.seconds, seed + i, args.clients)
        actions = r.get("actions", {})
        print(f"{r['config']}: seed {r['seed']}, "
              f"{sum(actions.values())} actions {actions}, "            # type: ignore
              f"fds {r.get('base_fds')} -> {r.get('end_fds')}, "
              f"{'PASS' if r['passed'] else 'FAIL ' + str(r['failures'])}",
              flush=True)
        if not r["passed"]:
            failed += 1
            print(r.get("server_log", ""), flush=True)
    print(f"chaos: {len(cfgs) - failed} passed, {failed} failed "
          f"(seed {seed})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

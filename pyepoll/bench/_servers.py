"""Every server the network scenarios compare: how to start it, whether it
can run here, and the check that it answers correctly before it is timed
(byte-exact echo, HTTP 200 with the expected body)."""
from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from ._proc import ServerProc, Skip, build, disabled, handler_floor

# Not resolved: a symlinked package must find its own parent.
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# The interpreter the Python servers run on (--python): None for this one.
# Another one (a PyPy venv's python, say) imports its own installed pyepoll:
# this process's compiled core would not load there.
_server_python: Optional[str] = None
_server_desc: Optional[str] = None


def set_server_python(path: Optional[str]) -> str:
    """Run the Python servers with the interpreter at ``path`` (None: this
    one); return how it describes itself. ValueError if it cannot run
    pyepoll."""
    global _server_python, _server_desc
    if path is None:
        _server_python = _server_desc = None
        return server_python_description()
    exe = shutil.which(path) or path
    try:
        described = _describe(exe)
    except (OSError, subprocess.SubprocessError, RuntimeError) as e:
        raise ValueError(f"--python {path}: cannot run pyepoll there: {e}") from None
    _server_python, _server_desc = os.path.abspath(exe), described
    return described


def server_python_description() -> str:
    """"IMPLEMENTATION VERSION PATH" of the servers' interpreter."""
    if _server_desc is not None:
        return _server_desc
    import platform
    return (f"{platform.python_implementation()} {platform.python_version()} "
            f"{sys.executable}")


def _describe(exe: str) -> str:
    probe = ("import platform, sys, pyepoll; print(platform.python_implementation(),"
             " platform.python_version(), sys.executable)")
    res = subprocess.run([exe, "-c", probe], capture_output=True, text=True,
                         timeout=60, cwd="/")
    if res.returncode != 0:
        raise RuntimeError((res.stderr.strip().splitlines() or ["failed"])[-1])
    return res.stdout.strip()


def server_python() -> str:
    return _server_python or sys.executable


def _env() -> Dict[str, str]:
    """Children import the same pyepoll as this process (a source tree or
    the installed wheel), or, on another interpreter, that one's own."""
    env = dict(os.environ)
    if _server_python is None:
        env["PYTHONPATH"] = PKG_PARENT + (os.pathsep + env["PYTHONPATH"]
                                          if env.get("PYTHONPATH") else "")
    return env


def _has_module(name: str) -> bool:
    if _server_python is None:
        return importlib.util.find_spec(name) is not None
    res = subprocess.run(
        [_server_python, "-c",
         f"import importlib.util, sys; sys.exit(importlib.util.find_spec({name!r}) is None)"],
        capture_output=True, timeout=60, cwd="/")
    return res.returncode == 0


def _need_module(name: str) -> None:
    if disabled(name) or not _has_module(name):
        where = "" if _server_python is None else f" for {_server_python}"
        raise Skip(f"{name} not installed{where} (pip install pyepoll-io[bench])")


@dataclass
class Spec:
    name: str
    protocol: str                               # "echo" or "http"
    argv: Callable[[], List[str]]               # may raise Skip
    files: Dict[str, str] = field(default_factory=dict)
    stop_signal: int = signal.SIGTERM
    # The asyncio loop class the server must report at start-up
    # ("MODULE.CLASS"), checked before it is timed; None: not an asyncio one.
    loop: Optional[str] = None
    load: str = "loadgen"                       # or "wrk"

    def start(self) -> ServerProc:
        """Start and wait until it listens; raises Skip or RuntimeError."""
        proc = ServerProc(self.name, self.argv(), env=_env(),
                          stop_signal=self.stop_signal, files=self.files)
        return proc.ready()


# What each asyncio runtime of pyepoll.bench._serve must report as its loop
# (pyepoll's selector loop is the stdlib class on pyepoll's selector).
LOOP_CLASSES = {"asyncio": "asyncio.unix_events._UnixSelectorEventLoop",
                "pyepollsel": "asyncio.unix_events._UnixSelectorEventLoop",
                "pyepollaio": "pyepoll.asyncio_loop.EventLoop",
                "uvloop": "uvloop.Loop"}


def running_loop(proc: ServerProc) -> Optional[str]:
    """The loop class an asyncio server printed at start-up, if it did."""
    from ._serve import LOOP_LINE
    try:
        with open(proc.log.name) as f:
            for line in f:
                if line.startswith(LOOP_LINE):
                    return line[len(LOOP_LINE):].strip()
    except OSError:
        pass
    return None


def _need_wrk() -> None:
    from ._proc import wrk_path
    if wrk_path() is None:
        raise Skip("wrk not installed (apt-get install wrk)")


def _serve(kind: str, needs: Sequence[str] = ()) -> Callable[[], List[str]]:
    def argv() -> List[str]:
        for mod in needs:
            _need_module(mod)
        need = {"loop-batch": "wait_batch", "loop-queue": "queue_echo",
                "loop-fn": "queue_echo"}
        for prefix, method in need.items():
            from pyepoll import Loop
            if kind.startswith(prefix) and not hasattr(Loop, method):
                raise Skip(f"this pyepoll.Loop has no {method}()")
        return [server_python(), "-m", "pyepoll.bench._serve", kind, "{port}"]
    return argv


def _handler_floor() -> List[str]:
    # A CPython extension, built here (Skip if it cannot be) for the server,
    # which runs this interpreter and finds it built.
    import platform
    if _server_python is not None or platform.python_implementation() != "CPython":
        raise Skip("the handler floor is a CPython extension: CPython only")
    handler_floor()
    return _serve("floor-handler")()


def _c_echo(trigger: str) -> Callable[[], List[str]]:
    return lambda: [str(build("echo_server")), "{port}", trigger]


def _c_http() -> List[str]:
    return [str(build("http_server")), "{port}"]


def _reference(protocol: str, model: str, *extra: str) -> Callable[[], List[str]]:
    def argv() -> List[str]:
        return [server_python(), "-m", "pyepoll.server", "--port", "{port}",
                "--protocol", protocol, "--model", model, "--log-level", "warning",
                "--idle-timeout", "0", "--max-connections", "30000", *extra]
    return argv


NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 32768; }}
http {{
  access_log off;
  client_body_temp_path {dir};
  proxy_temp_path {dir};
  fastcgi_temp_path {dir};
  uwsgi_temp_path {dir};
  scgi_temp_path {dir};
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      default_type "text/plain; charset=utf-8";
      return 200 "Hello, World!\\n";
    }}
  }}
}}
"""


def _nginx() -> List[str]:
    if disabled("nginx"):
        raise Skip("nginx not installed")
    exe = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None)
    if exe is None:
        raise Skip("nginx not installed")
    return [exe, "-p", "{dir}", "-c", "{dir}/nginx.conf", "-e", "{dir}/error.log"]


def csrc() -> pathlib.Path:
    """The C core's sources, present in a source checkout (not in a
    wheel): the pure-C loop driver and the parser benchmark build on them."""
    path = pathlib.Path(PKG_PARENT) / "csrc"
    if not (path / "include" / "pyepoll.h").exists():
        raise Skip("needs a source checkout (csrc/ beside the pyepoll package)")
    return path


def _pure_c_loop(trigger: str) -> Callable[[], List[str]]:
    def argv() -> List[str]:
        src = csrc()
        # Every core file (not csrc/cpython/, the CPython accelerator), as
        # CMake builds it, but the backends this OS lacks.
        skip = set() if "bsd" in sys.platform or sys.platform == "darwin" else {"kqueue.c"}
        exe = build("loop_echo_server",
                    sorted(p for d in ("poller", "loop", "http")
                           for p in (src / d).glob("*.c") if p.name not in skip),
                    ["-I", str(src / "include")])
        return [str(exe), "{port}", trigger]
    return argv


# Reference rows of the ratio columns.
C_ECHO = "plain C epoll"
UVLOOP_ECHO = "uvloop Protocol"
UVLOOP_HTTP = "uvloop+httptools"
# The reference server with --busy-poll: its waits poll this long before
# they sleep, while the traffic is that dense (no "eventloop" in the name,
# so --servers "ref server eventloop" does not pick it).
BUSY_POLL_US = "50"
REF_BUSY = f"ref server busy-poll {BUSY_POLL_US}us"
C_HTTP = "plain C epoll HTTP"
CECHO = "pyepoll Loop C echo"
# The least any loop calling a Python function per message must spend (the
# GIL around its wait, a bytes object, the call): Loop.serve's floor.
HANDLER_FLOOR = "Python handler floor (C epoll)"
# pyepoll.Loop with Python code per message, five ways (name, kind): what a
# first handler looks like, a handler function Loop.serve calls, the batch
# API's two replies, and a handler function returning its reply on the
# batch API.
PY_HANDLERS = [("pyepoll Loop py wait/recv/send", "loop-py"),
               ("pyepoll Loop py serve(handler)", "loop-serve"),
               ("pyepoll Loop py batch+reply", "loop-batch"),
               ("pyepoll Loop py batch+queue_echo", "loop-queue"),
               ("pyepoll Loop py batch+handler fn", "loop-fn")]


def echo_servers(pool_threads: int = 64) -> Dict[str, Spec]:
    """The echo comparison.  The threadpool gets one thread per load
    connection: here it measures per-message cost, not starvation (that is
    idle-clients)."""
    specs = [
        Spec(C_ECHO, "echo", _c_echo("level")),
        *[Spec(name, "echo", _serve(f"{kind}-level")) for name, kind in PY_HANDLERS],
        Spec(HANDLER_FLOOR, "echo", _handler_floor),
        Spec(CECHO, "echo", _serve("loop-c-level")),
        Spec("pyepoll C loop, C driver", "echo", _pure_c_loop("level")),
        Spec("ref server eventloop", "echo", _reference("echo", "eventloop")),
        Spec(REF_BUSY, "echo", _reference("echo", "eventloop",
                                          "--busy-poll", BUSY_POLL_US)),
        Spec("ref server threadpool", "echo", _reference(
            "echo", "threadpool", "--pool-threads", str(pool_threads))),
        Spec("ref server threads", "echo", _reference("echo", "threads")),
        Spec("asyncio Protocol", "echo", _serve("asyncio-protocol")),
        Spec("asyncio streams", "echo", _serve("asyncio-streams")),
        Spec("asyncio on pyepoll loop", "echo", _serve("pyepollaio-protocol")),
        Spec(UVLOOP_ECHO, "echo", _serve("uvloop-protocol", ["uvloop"])),
        Spec("uvloop streams", "echo", _serve("uvloop-streams", ["uvloop"])),
    ]
    return {s.name: s for s in specs}


def asyncio_servers() -> Dict[str, Spec]:
    """The asyncio loops side by side (issue 14): each echo flavour on the
    stdlib loop, pyepoll's selector loop, pyepoll's C-connection loop and
    uvloop, with the plain C server as the floor."""
    loops = [("asyncio", "asyncio"), ("pyepoll selector", "pyepollsel"),
             ("pyepoll loop", "pyepollaio"), ("uvloop", "uvloop")]
    specs = [Spec(C_ECHO, "echo", _c_echo("level"))]
    for flavour, what in (("Protocol", "protocol"),
                          ("BufferedProtocol", "buffered"),
                          ("streams", "streams")):
        for label, runtime in loops:
            needs = ["uvloop"] if runtime == "uvloop" else []
            specs.append(Spec(f"{label} {flavour}", "echo",
                              _serve(f"{runtime}-{what}", needs),
                              loop=LOOP_CLASSES[runtime]))
    # HTTP hello, httptools parsing: the usual fast Python stack's share.
    for label, runtime in loops:
        needs = ["httptools"] + (["uvloop"] if runtime == "uvloop" else [])
        specs.append(Spec(f"{label} httptools", "http",
                          _serve(f"{runtime}-httptools", needs),
                          loop=LOOP_CLASSES[runtime]))
    specs += framework_servers()
    return {s.name: s for s in specs}


FRAMEWORKS = {"uvicorn": ["uvicorn", "httptools"], "aiohttp": ["aiohttp"]}


def framework_servers() -> List[Spec]:
    """uvicorn (httptools) with an ASGI hello and aiohttp.web's hello, each
    on the stdlib loop, pyepoll's loop and uvloop, loaded by wrk."""
    loops = [("asyncio", "asyncio"), ("pyepoll loop", "pyepollaio"),
             ("uvloop", "uvloop")]
    specs = []
    for fw, mods in FRAMEWORKS.items():
        for label, runtime in loops:
            needs = mods + (["uvloop"] if runtime == "uvloop" else [])
            serve = _serve(f"{runtime}-{fw}", needs)

            def argv(serve=serve) -> List[str]:
                cmd = serve()           # Skip when a module is missing
                _need_wrk()
                return cmd
            specs.append(Spec(f"{label} {fw}", "http", argv,
                              loop=LOOP_CLASSES[runtime], load="wrk"))
    return specs


def http_servers() -> Dict[str, Spec]:
    specs = [
        # The floor: the same answer from a few lines of C (kernel + ~0).
        Spec(C_HTTP, "http", _c_http),
        Spec("ref server eventloop", "http", _reference("http", "eventloop")),
        Spec(REF_BUSY, "http", _reference("http", "eventloop",
                                          "--busy-poll", BUSY_POLL_US)),
        Spec("ref server threads", "http", _reference("http", "threads")),
        Spec(UVLOOP_HTTP, "http", _serve("uvloop-httptools", ["uvloop", "httptools"])),
        Spec("asyncio hand parser", "http", _serve("asyncio-http")),
        Spec("nginx 1 worker", "http", _nginx, files={"nginx.conf": NGINX_CONF},
             stop_signal=signal.SIGQUIT),
    ]
    return {s.name: s for s in specs}


def trigger_servers() -> Dict[str, Spec]:
    """Level and edge side by side for every loop that offers both."""
    specs = []
    for trig in ("level", "edge"):
        specs += [
            Spec(f"plain C epoll {trig}", "echo", _c_echo(trig)),
            *[Spec(f"{name} {trig}", "echo", _serve(f"{kind}-{trig}"))
              for name, kind in PY_HANDLERS],
            Spec(f"{CECHO} {trig}", "echo", _serve(f"loop-c-{trig}")),
            Spec(f"ref server echo {trig}", "echo",
                 _reference("echo", "eventloop", "--trigger", trig)),
            Spec(f"ref server http {trig}", "http",
                 _reference("http", "eventloop", "--trigger", trig)),
        ]
    return {s.name: s for s in specs}


def idle_servers(pool_threads: int = 5, queue: int = 20) -> Dict[str, Spec]:
    """The concurrency models under idle connections (echo protocol)."""
    specs = [
        Spec("eventloop (pyepoll)", "echo", _reference("echo", "eventloop")),
        Spec(f"threadpool {pool_threads}+{queue}", "echo", _reference(
            "echo", "threadpool", "--pool-threads", str(pool_threads),
            "--queue-size", str(queue))),
        Spec("threads", "echo", _reference("echo", "threads")),
        Spec("asyncio Protocol", "echo", _serve("asyncio-protocol")),
        Spec("uvloop Protocol", "echo", _serve("uvloop-protocol", ["uvloop"])),
    ]
    return {s.name: s for s in specs}


# -- correctness -------------------------------------------------------------------


def check_echo(port: int, timeout: float = 5.0) -> None:
    """Byte-exact echo of a small and a large message (the large one
    arrives in pieces); raises AssertionError."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        for size in (7, 200_000):
            msg = os.urandom(size)
            s.sendall(msg)
            got = bytearray()
            while len(got) < size:
                chunk = s.recv(size - len(got))
                if not chunk:
                    raise AssertionError(f"closed after {len(got)} of {size} bytes")
                got += chunk
            if bytes(got) != msg:
                raise AssertionError(f"echo of {size} bytes differs")


def _read_response(s: socket.socket, buf: bytearray) -> bytes:
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError("connection closed before a response")
        buf += chunk
    end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:end]).decode("latin-1")
    length = 0
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(buf) < end + length:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError("connection closed inside a body")
        buf += chunk
    status = head.split("\r\n", 1)[0]
    body = bytes(buf[end:end + length])
    del buf[:end + length]
    if not status.startswith("HTTP/1.1 200"):
        raise AssertionError(f"status line {status!r}")
    return body


def check_http(port: int, timeout: float = 5.0) -> None:
    """One GET, then three pipelined ones on the same connection: each a
    200 with the body "Hello, World!\\n"."""
    req = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        buf = bytearray()
        for batch in (1, 3):
            s.sendall(req * batch)
            for _ in range(batch):
                body = _read_response(s, buf)
                if body != b"Hello, World!\n":
                    raise AssertionError(f"body {body!r}")


def check(spec: Spec, port: int) -> None:
    (check_http if spec.protocol == "http" else check_echo)(port)


class Fleet:
    """The servers of one scenario, started together (idle ones cost no
    CPU), each checked before anything is timed.  A server that cannot run
    here is skipped with the reason; one that answers wrongly fails the
    run."""

    def __init__(self, specs: Dict[str, Spec], only: Optional[Sequence[str]] = None,
                 always: Sequence[str] = ()) -> None:
        self.procs: Dict[str, ServerProc] = {}
        self.skipped: Dict[str, str] = {}
        self.specs = specs
        try:
            for name, spec in specs.items():
                if only and name not in always and not any(w in name for w in only):
                    continue
                try:
                    proc = spec.start()
                except Skip as e:
                    self.skipped[name] = str(e)
                    continue
                self.procs[name] = proc
                if spec.loop is not None and running_loop(proc) != spec.loop:
                    raise AssertionError(
                        f"{name} runs on loop {running_loop(proc)!r}, not "
                        f"{spec.loop!r}: {proc.tail()[-300:]}")
                try:
                    check(spec, proc.port)
                except (AssertionError, OSError) as e:
                    raise AssertionError(f"{name} answered wrongly: {e}") from None
        except BaseException:
            self.stop()
            raise

    def checked(self) -> List[str]:
        return list(self.procs)

    def skip_notes(self) -> List[str]:
        return [f"{n}: {why}" for n, why in self.skipped.items()]

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()

"""README.md's code runs as printed.

Every ```python block is a complete program (the README's convention: no
fragments), run here as it is, in a subprocess outside the source tree,
and its output checked.  The servers among them listen on ``$PORT``
(9000 when unset): each is started on a free loopback port, spoken to as a
client, and terminated by its pid.  A block with no check here fails the
test, so a new example cannot go untested.

The command lines of the ```sh blocks are checked too: every
``pyepoll-server`` line parses (the CLI refuses options a model cannot
honour), every ``pip install`` names the clone and extras that exist, every
``python -m pyepoll.bench`` line names a scenario and options it has, every
script exists.
"""
from __future__ import annotations

import contextlib
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from typing import Callable, Dict, Iterator, List

import pytest

import pyepoll
from conftest import SOURCE_TREE

pytestmark = pytest.mark.timeout(120)

README = SOURCE_TREE / "README.md"
if not README.exists():              # a test run from an unpacked wheel
    pytest.skip("README.md is not beside these tests",
                allow_module_level=True)
TEXT = README.read_text(encoding="utf-8")
PYTHON_BLOCKS = re.findall(r"^```python\n(.*?)^```", TEXT, re.S | re.M)
SH_BLOCKS = re.findall(r"^```sh\n(.*?)^```", TEXT, re.S | re.M)


# ------------------------------------------------------------------ running

def _write(tmp_path, code: str):
    path = tmp_path / "readme_example.py"
    path.write_text(code, encoding="utf-8")
    return path


def _run(tmp_path, code: str) -> str:
    out = subprocess.run([sys.executable, str(_write(tmp_path, code))],
                         cwd=str(tmp_path), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _server(tmp_path, code: str) -> Iterator[socket.socket]:
    """Run a server block on a free port; yield a client connected to it;
    terminate the server by its pid afterwards."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(_write(tmp_path, code))],
                            cwd=str(tmp_path),
                            env=dict(os.environ, PORT=str(port)),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError("the example exited:\n"
                                     + proc.stdout.read().decode())
            try:
                sock = socket.create_connection(("127.0.0.1", port), 10)
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with sock:
            yield sock
        assert proc.poll() is None, "the server exited by itself"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        got = sock.recv(n - len(data))
        if not got:
            break
        data += got
    return data


def _closed(sock: socket.socket) -> bool:
    return sock.recv(100) == b""


# ------------------------------------------------------------ the examples

def check_api_tour(tmp_path, code: str) -> None:
    assert re.fullmatch(r"\d+ b'ping'\n", _run(tmp_path, code))


def check_dropins(tmp_path, code: str) -> None:
    if "epoll" not in pyepoll.available_backends():
        pytest.skip("the drop-ins example imports pyepoll.epoll (Linux)")
    lines = _run(tmp_path, code).splitlines()
    runs = 2 if sys.version_info >= (3, 12) else 1
    # DefaultSelector is the default backend's (kqueue in the libkqueue stage)
    default = {"epoll": "EpollSelector", "kqueue": "KqueueSelector",
               "poll": "PollSelector", "select": "SelectSelector"}
    assert lines == ["True b'x'", default[pyepoll.best_backend()]] \
        + ["b'hello\\n'"] * runs


def check_loop_echo(tmp_path, code: str) -> None:
    with _server(tmp_path, code) as s:
        s.sendall(b"hello, loop")
        assert _recv_exactly(s, 11) == b"HELLO, LOOP"
        s.shutdown(socket.SHUT_WR)          # EOF: the server closes
        assert _closed(s)


def check_serve_echo(tmp_path, code: str) -> None:
    with _server(tmp_path, code) as s:
        s.sendall(b"hello, serve")
        assert _recv_exactly(s, 12) == b"HELLO, SERVE"
        s.sendall(b"quit")
        assert _closed(s)


def check_batch_echo(tmp_path, code: str) -> None:
    with _server(tmp_path, code) as s:
        s.sendall(b"batch ping")
        assert _recv_exactly(s, 10) == b"batch ping"
        s.sendall(b"quit")
        assert _closed(s)


def check_shout(tmp_path, code: str) -> None:
    with _server(tmp_path, code) as s:
        assert _recv_exactly(s, 6) == b"hello\n"
        s.sendall(b"abc\nsecond\n")
        assert _recv_exactly(s, 11) == b"ABC\nSECOND\n"
        s.sendall(b"last\nquit\n")          # the pool's reply, then the close
        assert _recv_exactly(s, 5) == b"LAST\n"
        assert _closed(s)


# What identifies each block, and its check.
EXAMPLES: Dict[str, Callable] = {
    "pyepoll.Poller()": check_api_tour,
    "pyepoll.run(main())": check_dropins,
    "loop.wait():": check_loop_echo,
    "loop.wait_batch():": check_batch_echo,
    "loop.serve(on_data)": check_serve_echo,
    "serve(Shout": check_shout,
}


def _block_ids() -> List[str]:
    ids = []
    for code in PYTHON_BLOCKS:
        keys = [k for k in EXAMPLES if k in code]
        ids.append(keys[0] if len(keys) == 1 else f"unknown: {code[:40]!r}")
    return ids


def test_every_python_block_has_a_check():
    ids = _block_ids()
    assert sorted(ids) == sorted(EXAMPLES), ids


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)),
                         ids=_block_ids())
def test_python_block_runs(tmp_path, index):
    code = PYTHON_BLOCKS[index]
    key = _block_ids()[index]
    if key not in EXAMPLES:
        pytest.fail(f"README python block {index} has no check here")
    EXAMPLES[key](tmp_path, code)


# ------------------------------------------------------------ shell blocks

def _commands() -> List[List[str]]:
    """Every command of the sh blocks, as argv lists (``&&`` and ``&``
    split off, comments dropped)."""
    out = []
    for block in SH_BLOCKS:
        for line in block.splitlines():
            argv: List[str] = []
            for word in shlex.split(line, comments=True) + ["&&"]:
                if word in ("&&", "&"):
                    if argv:
                        out.append(argv)
                    argv = []
                else:
                    argv.append(word)
    return out


def _extras() -> set:
    text = (SOURCE_TREE / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[project.optional-dependencies]", 1)[1]
    section = section.split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+)\s*=", section, re.M))


def test_sh_blocks_commands_are_true(tmp_path):
    from pyepoll.server.__main__ import parse_args
    cmds = _commands()
    seen = set()
    for argv in cmds:
        name = argv[0]
        seen.add(name)
        if name == "pyepoll-server":
            try:
                parse_args(argv[1:])
            except SystemExit as e:             # argparse refused it
                pytest.fail(f"{shlex.join(argv)}: exit {e.code}")
        elif name == "pip":
            assert argv[1] == "install"
            for target in argv[2:]:
                if target.startswith("-"):
                    continue
                m = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", target)
                if m is None:
                    # A tool from PyPI (the build's own requirements), never
                    # pyepoll itself: it is installed from the clone.
                    req = re.match(r"[A-Za-z0-9._-]+", target)
                    assert req and req.group(0).lower() not in (
                        "pyepoll", "pyepoll-io", "pyepoll_io"), \
                        f"{shlex.join(argv)}: pyepoll is not on PyPI"
                    continue
                for extra in (m.group(1) or "").split(","):
                    assert not extra or extra in _extras(), extra
        elif name == "bash":
            assert (SOURCE_TREE / argv[1]).is_file(), argv
        elif argv[:3] == ["python", "-m", "pyepoll.bench"]:
            help_text = subprocess.run(
                [sys.executable, "-m", "pyepoll.bench", argv[3], "--help"],
                capture_output=True, text=True, timeout=60,
                cwd=str(tmp_path)).stdout
            for word in argv[4:]:
                if word.startswith("--"):
                    assert word in help_text, (argv, word)
    assert {"pip", "pyepoll-server", "bash", "python"} <= seen

"""asyncio programs on pyepoll's event loops, side by side with asyncio's own.

Each program runs on asyncio's default loop, on
pyepoll.new_selector_event_loop() (the stdlib loop on pyepoll's selector)
and on pyepoll.new_event_loop() (the loop on the C connection loop); the
results must be equal, and each pyepoll run must really use its own
selector.  Loopback only; every wait is bounded.
"""
from __future__ import annotations

import asyncio
import datetime
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import warnings

import pytest

import pyepoll
from pyepoll import aio
from pyepoll import asyncio_loop
from pyepoll import selectors as pesel

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("aio_path")]

LIMIT = 20.0          # seconds any single program may take


def stdlib_loop() -> asyncio.AbstractEventLoop:
    return asyncio.SelectorEventLoop()


FACTORIES = {"asyncio": stdlib_loop,
             "pyepoll-selector": pyepoll.new_selector_event_loop,
             "pyepoll": pyepoll.new_event_loop}
SELECTORS = {"pyepoll-selector": pesel.DefaultSelector,
             "pyepoll": asyncio_loop._LoopSelector}


def run_on(factory, main):
    """Run main() to completion on a loop from factory; return its result
    and the selector class the loop used."""
    loop = factory()
    try:
        asyncio.set_event_loop(loop)
        result = loop.run_until_complete(asyncio.wait_for(main(), LIMIT))
        loop.run_until_complete(loop.shutdown_asyncgens())
        return result, type(loop._selector)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def side_by_side(main):
    """main() on every loop; the results must be equal.  Returns one."""
    results = {}
    for name, factory in FACTORIES.items():
        results[name], selector_cls = run_on(factory, main)
        if name in SELECTORS:
            assert selector_cls is SELECTORS[name]
        else:
            assert selector_cls.__module__ == "selectors"
    assert results["pyepoll-selector"] == results["asyncio"]
    assert results["pyepoll"] == results["asyncio"]
    return results["pyepoll"]


# -- entry points -----------------------------------------------------------------


def test_new_selector_event_loop_uses_pyepoll_selector():
    loop = pyepoll.new_selector_event_loop()
    try:
        assert type(loop) is asyncio.SelectorEventLoop
        assert isinstance(loop._selector, pesel.DefaultSelector)
    finally:
        loop.close()
    assert loop._selector is None or loop._selector.get_map() is None


def test_new_event_loop_is_the_c_loop():
    loop = pyepoll.new_event_loop()
    try:
        assert isinstance(loop, asyncio_loop.EventLoop)
        assert isinstance(loop, asyncio.SelectorEventLoop)
        assert isinstance(loop._selector, asyncio_loop._LoopSelector)
    finally:
        loop.close()
    assert loop._selector is None


def test_package_exports_asyncio_entry_points():
    assert pyepoll.new_event_loop is aio.new_event_loop
    assert pyepoll.new_selector_event_loop is aio.new_selector_event_loop
    assert pyepoll.run is aio.run


def test_run_returns_result_and_closes_loop():
    seen = {}

    async def main():
        loop = asyncio.get_running_loop()
        seen["loop"] = loop
        seen["selector"] = type(loop._selector)
        await asyncio.sleep(0.01)
        return 42

    assert pyepoll.run(main()) == 42
    assert seen["selector"] is asyncio_loop._LoopSelector
    assert seen["loop"].is_closed()


def test_run_debug_flag():
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert pyepoll.run(main(), debug=True) is True
    assert pyepoll.run(main(), debug=False) is False


def test_run_propagates_exception_and_cancels_leftover_tasks():
    cancelled = []

    async def sleeper():
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main():
        asyncio.ensure_future(sleeper())
        await asyncio.sleep(0.01)
        raise KeyError("boom")

    with pytest.raises(KeyError):
        pyepoll.run(main())
    assert cancelled == [True]


def test_run_refuses_non_coroutine_and_nesting():
    with pytest.raises((ValueError, TypeError)):
        pyepoll.run(lambda: None)  # type: ignore[arg-type]

    async def nested():
        coro = asyncio.sleep(0)
        try:
            pyepoll.run(coro)
        finally:
            coro.close()

    with pytest.raises(RuntimeError):
        pyepoll.run(nested())


def test_run_finalizes_async_generators():
    finalized = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            finalized.append(True)

    async def main():
        g = agen()
        assert await g.__anext__() == 1
        return "done"            # g left suspended

    assert pyepoll.run(main()) == "done"
    assert finalized == [True]


@pytest.mark.skipif(sys.version_info >= (3, 14),
                    reason="asyncio policies are deprecated from 3.14")
def test_event_loop_policy_without_warnings():
    old = asyncio.get_event_loop_policy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        policy = pyepoll.EventLoopPolicy()
        assert isinstance(policy, asyncio.DefaultEventLoopPolicy)
        asyncio.set_event_loop_policy(policy)
        try:
            loop = asyncio.new_event_loop()
            try:
                assert isinstance(loop, asyncio_loop.EventLoop)
                assert loop.run_until_complete(asyncio.sleep(0, "ok")) == "ok"
            finally:
                loop.close()

            async def main():
                return type(asyncio.get_running_loop())

            assert asyncio.run(main()) is asyncio_loop.EventLoop
        finally:
            asyncio.set_event_loop_policy(old)


@pytest.mark.skipif(sys.version_info < (3, 14), reason="3.14+ deprecation")
def test_event_loop_policy_deprecated_on_314():
    with pytest.warns(DeprecationWarning):
        policy_cls = aio.EventLoopPolicy
    assert issubclass(policy_cls, object)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner is 3.11+")
def test_runner_loop_factory():
    async def main():
        return type(asyncio.get_running_loop()._selector)

    with asyncio.Runner(loop_factory=pyepoll.new_event_loop) as runner:
        assert runner.run(main()) is asyncio_loop._LoopSelector


# -- TCP --------------------------------------------------------------------------


def test_tcp_echo_streams():
    async def main():
        async def handle(reader, writer):
            while True:
                line = await reader.readline()
                if not line:
                    break
                writer.write(line.upper())
                await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        async def client(i):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            got = []
            for j in range(20):
                writer.write(f"client {i} line {j}\n".encode())
                await writer.drain()
                got.append(await reader.readline())
            writer.write_eof()
            rest = await reader.read()
            writer.close()
            await writer.wait_closed()
            return got, rest

        results = await asyncio.gather(*(client(i) for i in range(50)))
        server.close()
        await server.wait_closed()
        return results

    results = side_by_side(main)
    assert results[3][0][5] == b"CLIENT 3 LINE 5\n"
    assert all(rest == b"" for _, rest in results)


def test_tcp_large_transfer_with_backpressure():
    payload = os.urandom(8 * 1024 * 1024)

    async def main():
        done = asyncio.get_running_loop().create_future()

        async def handle(reader, writer):
            writer.write(payload)          # far above the write buffer limit
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        received = bytearray()
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            received += chunk
            if len(received) % (1 << 20) < 65536:
                await asyncio.sleep(0)     # a slow reader, now and then
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        done.set_result(None)
        return len(received), bytes(received) == payload

    assert side_by_side(main) == (len(payload), True)


def test_tcp_protocol_echo():
    async def main():
        loop = asyncio.get_running_loop()

        class Echo(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport

            def data_received(self, data):
                self.transport.write(data[::-1])

            def eof_received(self):
                self.transport.close()

        class Client(asyncio.Protocol):
            def __init__(self):
                self.data = bytearray()
                self.closed = loop.create_future()

            def connection_made(self, transport):
                transport.write(b"hello world")
                transport.write_eof()

            def data_received(self, data):
                self.data += data

            def connection_lost(self, exc):
                self.closed.set_result(exc)

        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        results = []
        for _ in range(10):
            transport, proto = await loop.create_connection(
                Client, "127.0.0.1", port)
            exc = await proto.closed
            results.append((bytes(proto.data), exc))
        server.close()
        await server.wait_closed()
        return results

    assert side_by_side(main) == [(b"dlrow olleh", None)] * 10


def test_pause_and_resume_reading():
    async def main():
        loop = asyncio.get_running_loop()
        got = bytearray()
        log = []

        class Slow(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport

            def data_received(self, data):
                got.extend(data)
                if len(got) >= 1000 and not log:
                    self.transport.pause_reading()
                    log.append(self.transport.is_reading())

        a, b = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(Slow, a)
        b.sendall(b"x" * 1000)
        while len(got) < 1000:
            await asyncio.sleep(0.01)
        b.sendall(b"y" * 1000)
        await asyncio.sleep(0.1)
        while_paused = len(got)
        transport.resume_reading()
        log.append(transport.is_reading())
        while len(got) < 2000:
            await asyncio.sleep(0.01)
        transport.close()
        b.close()
        return log, while_paused, bytes(got) == b"x" * 1000 + b"y" * 1000

    assert side_by_side(main) == ([False, True], 1000, True)


# -- UDP --------------------------------------------------------------------------


def test_udp_echo():
    async def main():
        loop = asyncio.get_running_loop()

        class Server(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                self.transport.sendto(data * 2, addr)

        class Client(asyncio.DatagramProtocol):
            def __init__(self):
                self.replies = asyncio.Queue()

            def datagram_received(self, data, addr):
                self.replies.put_nowait(data)

        server, _ = await loop.create_datagram_endpoint(
            Server, local_addr=("127.0.0.1", 0))
        addr = server.get_extra_info("sockname")
        client, proto = await loop.create_datagram_endpoint(
            Client, remote_addr=addr)
        replies = []
        for i in range(20):
            client.sendto(f"ping{i}".encode())
            replies.append(await asyncio.wait_for(proto.replies.get(), 5))
        client.close()
        server.close()
        return replies

    assert side_by_side(main)[7] == b"ping7ping7"


# -- Unix sockets -------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs AF_UNIX")
def test_unix_socket_server(tmp_path):
    path = str(tmp_path / "echo.sock")

    async def main():
        if os.path.exists(path):
            os.unlink(path)

        async def handle(reader, writer):
            data = await reader.read()
            writer.write(b"got:" + data)
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_unix_server(handle, path)
        replies = []
        for i in range(5):
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(f"message {i}".encode())
            writer.write_eof()
            replies.append(await reader.read())
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return replies

    assert side_by_side(main) == [f"got:message {i}".encode() for i in range(5)]


# -- subprocesses and signals ---------------------------------------------------------


def test_subprocess_echo():
    code = "import sys; sys.stdout.write(sys.stdin.read().upper())"

    async def main():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate(b"echo me\n" * 1000)
        shell = await asyncio.create_subprocess_shell(
            "exit 3", stdout=asyncio.subprocess.DEVNULL)
        return out, proc.returncode, await shell.wait()

    out, rc, shell_rc = side_by_side(main)
    assert out == b"ECHO ME\n" * 1000 and rc == 0 and shell_rc == 3


def test_subprocess_stream_lines():
    code = ("import sys, time\n"
            "for i in range(5):\n"
            "    print(i, flush=True); time.sleep(0.01)\n")

    async def main():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE)
        lines = [line async for line in proc.stdout]
        return lines, await proc.wait()

    assert side_by_side(main) == ([b"%d\n" % i for i in range(5)], 0)


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1")
def test_add_signal_handler():
    async def main():
        loop = asyncio.get_running_loop()
        got = loop.create_future()
        count = []

        def handler(tag):
            count.append(tag)
            if len(count) == 3 and not got.done():
                got.set_result(list(count))

        loop.add_signal_handler(signal.SIGUSR1, handler, "usr1")
        try:
            for _ in range(3):
                os.kill(os.getpid(), signal.SIGUSR1)
                await asyncio.sleep(0.02)
            result = await asyncio.wait_for(got, 5)
        finally:
            assert loop.remove_signal_handler(signal.SIGUSR1)
        return result

    assert side_by_side(main) == ["usr1"] * 3


@pytest.mark.skipif(not hasattr(signal, "SIGUSR2"), reason="needs SIGUSR2")
def test_signal_wakes_a_blocked_loop():
    """Sent from another process while the loop sleeps in select()."""
    async def main():
        loop = asyncio.get_running_loop()
        got = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR2, got.set_result, "woken")
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c",
                f"import os, signal, time; time.sleep(0.1); "
                f"os.kill({os.getpid()}, signal.SIGUSR2)")
            result = await asyncio.wait_for(got, 10)
            await proc.wait()
        finally:
            loop.remove_signal_handler(signal.SIGUSR2)
        return result

    assert side_by_side(main) == "woken"


# -- sock_* and sendfile --------------------------------------------------------------


def test_sock_methods():
    async def main():
        loop = asyncio.get_running_loop()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        try:
            accept = asyncio.ensure_future(loop.sock_accept(listener))
            await loop.sock_connect(client, listener.getsockname())
            conn, _ = await accept
            conn.setblocking(False)
            payload = b"z" * 300_000
            send = asyncio.ensure_future(loop.sock_sendall(client, payload))
            received = bytearray()
            buf = bytearray(65536)
            while len(received) < len(payload):
                if len(received) % 2:
                    received += await loop.sock_recv(conn, 65536)
                else:
                    n = await loop.sock_recv_into(conn, buf)
                    received += buf[:n]
            await send
            await loop.sock_sendall(conn, b"back")
            back = await loop.sock_recv(client, 10)
            conn.close()
            return len(received), bytes(received) == payload, back
        finally:
            client.close()
            listener.close()

    assert side_by_side(main) == (300_000, True, b"back")


@pytest.mark.skipif(sys.version_info < (3, 11), reason="sock_recvfrom is 3.11+")
def test_sock_udp_methods():
    async def main():
        loop = asyncio.get_running_loop()
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for s in (a, b):
                s.bind(("127.0.0.1", 0))
                s.setblocking(False)
            await loop.sock_sendto(a, b"dgram", b.getsockname())
            data, addr = await loop.sock_recvfrom(b, 100)
            buf = bytearray(100)
            await loop.sock_sendto(b, b"reply", addr)
            n, _ = await loop.sock_recvfrom_into(a, buf)
            return data, addr == a.getsockname(), bytes(buf[:n])
        finally:
            a.close()
            b.close()

    assert side_by_side(main) == (b"dgram", True, b"reply")


def test_loop_sendfile(tmp_path):
    path = tmp_path / "blob"
    blob = os.urandom(3 * 1024 * 1024 + 17)
    path.write_bytes(blob)

    async def main():
        loop = asyncio.get_running_loop()
        received = bytearray()
        finished = loop.create_future()

        class Sink(asyncio.Protocol):
            def data_received(self, data):
                received.extend(data)

            def eof_received(self):
                finished.set_result(None)

        server = await loop.create_server(Sink, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(
            asyncio.Protocol, "127.0.0.1", port)
        with open(path, "rb") as f:
            sent = await loop.sendfile(transport, f, offset=5, count=2_000_000)
            sent2 = await loop.sendfile(transport, f, offset=2_000_005)
        transport.write_eof()
        await finished
        transport.close()
        server.close()
        await server.wait_closed()
        return sent, sent2, bytes(received) == blob[5:2_000_005] + blob[2_000_005:]

    assert side_by_side(main) == (2_000_000, len(blob) - 2_000_005, True)


def test_sock_sendfile(tmp_path):
    path = tmp_path / "blob"
    blob = os.urandom(1024 * 1024)
    path.write_bytes(blob)

    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        try:
            async def reader():
                got = bytearray()
                while len(got) < len(blob):
                    got += await loop.sock_recv(b, 65536)
                return bytes(got)

            task = asyncio.ensure_future(reader())
            with open(path, "rb") as f:
                sent = await loop.sock_sendfile(a, f)
            return sent, (await task) == blob
        finally:
            a.close()
            b.close()

    assert side_by_side(main) == (len(blob), True)


# -- SSL ------------------------------------------------------------------------------


def _cert_with_cryptography(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                       critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def _cert_with_openssl(tmp_path):
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
         "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key_path), "-out", str(cert_path)],
        check=True, capture_output=True, timeout=60)
    return str(cert_path), str(key_path)


@pytest.fixture
def self_signed(tmp_path):
    try:
        import cryptography  # noqa: F401
        return _cert_with_cryptography(tmp_path)
    except ImportError:
        pass
    if shutil.which("openssl"):
        return _cert_with_openssl(tmp_path)
    pytest.skip("neither the cryptography package nor the openssl CLI is "
                "available to make a test certificate")


def test_ssl_echo(self_signed):
    cert, key = self_signed

    async def main():
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(cert, key)
        client_ctx = ssl.create_default_context(cafile=cert)

        async def handle(reader, writer):
            data = await reader.readexactly(100_000)
            writer.write(data[::-1])
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0,
                                            ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        results = []
        for host in ("localhost", "127.0.0.1"):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx, server_hostname=host)
            payload = bytes(range(256)) * 390 + b"x" * 160
            writer.write(payload)
            await writer.drain()
            reply = await reader.read()
            version = writer.get_extra_info("ssl_object").version()
            writer.close()
            try:
                await writer.wait_closed()
            except (ssl.SSLError, ConnectionResetError):
                pass
            results.append((reply == payload[::-1], version.startswith("TLS")))
        server.close()
        await server.wait_closed()
        return results

    assert side_by_side(main) == [(True, True), (True, True)]


def test_ssl_bad_certificate_refused(self_signed):
    cert, key = self_signed

    async def main():
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(cert, key)

        async def handle(reader, writer):
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0,
                                            ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            # Default trust store: the self-signed certificate is unknown.
            await asyncio.open_connection("127.0.0.1", port,
                                          ssl=ssl.create_default_context(),
                                          server_hostname="localhost")
            outcome = "connected"
        except ssl.SSLCertVerificationError:
            outcome = "refused"
        server.close()
        await server.wait_closed()
        return outcome

    assert side_by_side(main) == "refused"


# -- loop plumbing --------------------------------------------------------------------


def test_timers_threads_and_cancellation():
    async def main():
        loop = asyncio.get_running_loop()
        order = []
        loop.call_soon(order.append, "soon")
        handle = loop.call_later(0.01, order.append, "cancelled")
        handle.cancel()
        threaded = await loop.run_in_executor(None, sum, [1, 2, 3])
        loop.call_soon_threadsafe(order.append, "threadsafe")
        # Scheduled after the executor returned: a slow executor (PyPy on
        # a loaded machine took over 30 ms) cannot reorder it.
        loop.call_later(0.03, order.append, "late")
        try:
            await asyncio.wait_for(asyncio.sleep(10), 0.05)
        except asyncio.TimeoutError:
            order.append("timeout")
        await asyncio.sleep(0.05)
        return order, threaded

    order, threaded = side_by_side(main)
    assert threaded == 6
    assert order[0] == "soon" and "cancelled" not in order
    assert sorted(order) == sorted(["soon", "threadsafe", "timeout", "late"])


def test_many_connections_register_and_unregister():
    async def main():
        async def handle(reader, writer):
            writer.write(await reader.read(100))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=512)
        port = server.sockets[0].getsockname()[1]

        async def client(i):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"%d" % i)
            reply = await reader.read()
            writer.close()
            await writer.wait_closed()
            return reply

        replies = []
        for batch in range(4):
            replies += await asyncio.gather(
                *(client(batch * 100 + i) for i in range(100)))
        server.close()
        await server.wait_closed()
        return replies

    assert side_by_side(main) == [b"%d" % i for i in range(400)]

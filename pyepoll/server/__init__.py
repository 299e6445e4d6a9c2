"""pyepoll's reference server: HTTP/1.1 and echo, and your own protocols.

Run it with ``pyepoll-server`` or ``python -m pyepoll.server`` (see
``--help``), or from Python::

    from pyepoll.server import Handler, serve

    class Echo(Handler):
        def on_data(self, conn, data):
            conn.send(data)

    serve(Echo, port=9000)

Concurrency models, for comparison on the same protocols: ``eventloop``
(pyepoll.Loop, the default), ``threadpool`` and ``threads``.
"""
from __future__ import annotations

from ._config import Config
from ._server import Server, serve
from .handler import Connection, Handler
from .protocols import EchoHandler, HttpHandler, HttpSession, Limits

__all__ = ["Server", "serve", "Config", "Handler", "Connection",
           "HttpHandler", "HttpSession", "EchoHandler", "Limits"]

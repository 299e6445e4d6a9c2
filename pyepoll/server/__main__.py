"""``pyepoll-server`` / ``python -m pyepoll.server``: the command line."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from ._config import LOG_LEVELS, MODELS, OVERFLOWS, PROTOCOLS, TRIGGERS, Config

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    d = Config()
    p = argparse.ArgumentParser(
        prog="pyepoll-server",
        description="pyepoll's reference TCP server: HTTP/1.1 (GET answers "
                    "a short text, a request with a body gets it echoed) or "
                    "echo.")
    p.add_argument("--host", default=d.host,
                   help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=d.port,
                   help="port (0: any free one; default: %(default)s)")
    p.add_argument("--protocol", choices=PROTOCOLS, default=d.protocol,
                   help="default: %(default)s")
    p.add_argument("--model", choices=MODELS, default=d.model,
                   help="concurrency model (default: %(default)s)")
    p.add_argument("--workers", type=int, default=d.workers, metavar="N",
                   help="worker processes sharing the port with SO_REUSEPORT "
                        "(default: %(default)s)")
    p.add_argument("--max-connections", type=int, default=d.max_connections,
                   metavar="N", help="connections served at once "
                   "(default: %(default)s)")
    p.add_argument("--overflow", choices=OVERFLOWS, default=d.overflow,
                   help="beyond capacity: wait in a FIFO, or answer 503 / "
                        "close (default: %(default)s)")
    p.add_argument("--queue-size", type=int, default=d.queue_size,
                   metavar="N", help="overflow FIFO length (the threadpool's "
                   "connection queue; with --overflow reject, connections "
                   "answered 503 at once); default: %(default)s")
    p.add_argument("--idle-timeout", type=float, default=d.idle_timeout,
                   metavar="SECONDS", help="close connections idle this long "
                   "(0: never); a request must also arrive within it, at "
                   "most 30 s (408 otherwise); default: %(default)s")
    p.add_argument("--pool-threads", type=int, default=d.pool_threads,
                   metavar="N", help="threadpool workers; in the eventloop "
                   "model, the pool for blocking handlers (default: "
                   "%(default)s)")
    p.add_argument("--trigger", choices=TRIGGERS, default=d.trigger,
                   help="readiness notification of the eventloop model "
                        "(default: %(default)s)")
    p.add_argument("--backend", default=None,
                   help="eventloop backend: epoll, kqueue, poll, select "
                        "(default: the best available)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default=d.log_level,
                   help="default: %(default)s")
    p.add_argument("--stats-interval", type=float, default=d.stats_interval,
                   metavar="SECONDS", help="log a stats line this often "
                   "(0: only at exit; default: %(default)s)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
        format="%(asctime)s pyepoll-server[%(process)d] %(levelname)s: "
               "%(message)s")
    from ._eventloop import LoopFailed
    from ._server import Server
    options = {k: v for k, v in vars(args).items()}
    try:
        server = Server(Config(**options))
    except ValueError as e:
        print(f"pyepoll-server: error: {e}", file=sys.stderr)
        return 2
    try:
        return server.serve()
    except ValueError as e:           # a setting this platform refuses
        print(f"pyepoll-server: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        logging.getLogger("pyepoll.server").error("cannot serve: %s", e)
        return 1
    except LoopFailed as e:           # not a client's doing: see run()
        logging.getLogger("pyepoll.server").critical("%s; stopping", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())

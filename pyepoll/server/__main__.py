"""``pyepoll-server`` / ``python -m pyepoll.server``: the command line."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from ._config import LOG_LEVELS, MODELS, OVERFLOWS, PROTOCOLS, TRIGGERS, Config

__all__ = ["main", "parser", "parse_args"]


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
                   metavar="N", help="connections served at once, in every "
                   "model (the threadpool serves at most --pool-threads at "
                   "once too); default: %(default)s")
    p.add_argument("--overflow", choices=OVERFLOWS, default=d.overflow,
                   help="beyond capacity: queue (wait in a FIFO, served in "
                        "order as slots free) or reject (answer 503 for "
                        "HTTP, close for echo, at once); default: "
                        "%(default)s")
    p.add_argument("--queue-size", type=int, default=None,
                   metavar="N", help="with --overflow queue, the FIFO "
                   "length (beyond it the kernel's listen backlog holds "
                   "them); with reject, in the eventloop model, how many "
                   "503 answers may be in flight at once (the thread "
                   f"models answer at once); default: {d.queue_size}")
    p.add_argument("--idle-timeout", type=float, default=d.idle_timeout,
                   metavar="SECONDS", help="close connections idle this long "
                   "(0: never), or not reading what they are sent; a "
                   "request must also arrive within it, at most 30 s (408 "
                   "otherwise); default: %(default)s")
    # None: not given (an option the model cannot honour is refused).
    p.add_argument("--pool-threads", type=int, default=None,
                   metavar="N", help="threadpool workers; in the eventloop "
                   "model, the pool for blocking handlers; not for the "
                   f"threads model (default: {d.pool_threads})")
    p.add_argument("--trigger", choices=TRIGGERS, default=None,
                   help="readiness notification; eventloop model only "
                        f"(default: {d.trigger})")
    p.add_argument("--busy-poll", type=int, default=None, dest="busy_poll_us",
                   metavar="USEC", help="eventloop model: poll this many "
                   "microseconds without sleeping before a wait would "
                   "sleep (at most 1000000): lower tail latency under "
                   "steady load, for the CPU spent polling (default: 0, "
                   "off)")
    p.add_argument("--backend", default=None,
                   help="epoll, kqueue, poll or select; eventloop model "
                        "only (default: the best available)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default=d.log_level,
                   help="debug adds a line per connection event: open "
                   "(served, queued, rejected), HTTP errors, EOF, close and "
                   "why; default: %(default)s")
    p.add_argument("--stats-interval", type=float, default=d.stats_interval,
                   metavar="SECONDS", help="log a stats line this often "
                   "(0: only at exit; default: %(default)s)")
    return p


# Options whose flag is not their Config name with dashes.
_FLAGS = {"busy_poll_us": "--busy-poll"}

# Options each model cannot honour, and why.
_NOT_FOR = {
    "threadpool": {"trigger": "it waits with blocking sockets",
                   "backend": "it waits with blocking sockets",
                   "busy_poll_us": "it waits with blocking sockets"},
    "threads": {"trigger": "it waits with blocking sockets",
                "backend": "it waits with blocking sockets",
                "busy_poll_us": "it waits with blocking sockets",
                "pool_threads": "it runs a thread per connection, and "
                                "blocking handler work runs on that thread"},
}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse the command line; exit 2 (argparse's error) for an option
    the chosen model cannot honour."""
    p = parser()
    args = p.parse_args(argv)
    refused = dict(_NOT_FOR.get(args.model, {}))
    if args.model != "eventloop" and args.overflow == "reject":
        refused["queue_size"] = ("with --overflow reject it answers at once "
                                 "and queues nothing")
    for name, why in refused.items():
        if getattr(args, name) is not None:
            flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
            p.error(f"{flag} does not apply to --model {args.model}: {why}")
    d = Config()
    for name in ("pool_threads", "trigger", "queue_size", "busy_poll_us"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(d, name))
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
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

"""`python -m bench.protocols`: CPU per request of the HTTP protocols the worker could use.

In process, on uvloop, no sockets: each protocol parses a keep-alive `GET` as wrk sends it, runs a
trivial ASGI application and writes the answer to a transport that only counts writes. Compared:
uvicorn's httptools protocol, coffee_payment/http_protocol.py's subclass with its header limits,
and uvicorn's h11 protocol with `h11_max_incomplete_event_size` (the alternative docs/architecture.md's
"Request limits" weighs). CPU time, best and median of the rounds: on a shared machine the best
round is the protocol's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import time
from typing import Any

import uvloop
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from coffee_payment.asgi_types import Receive, Scope, Send
from coffee_payment.http_protocol import LimitedHttpToolsProtocol

REQUEST = (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: wrk\r\nAccept: */*\r\n"
           b"Accept-Encoding: gzip\r\nConnection: keep-alive\r\n\r\n")
LIMIT = 32768  # GUNICORN_MAX_HEADER_BYTES's default, for both limited protocols
PROTOCOLS: dict[str, dict[str, Any]] = {
    "httptools (stock)": {"http": HttpToolsProtocol},
    "httptools + limits": {"http": functools.partial(LimitedHttpToolsProtocol, max_header_bytes=LIMIT,
                                                     header_timeout=10)},
    "h11 + event size limit": {"http": H11Protocol, "h11_max_incomplete_event_size": LIMIT},
}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"status": "ok"}'})


class CountingTransport:
    def __init__(self) -> None:
        self.writes = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def microseconds_per_request(options: dict[str, Any], *, requests: int) -> float:
    config = Config(app=app, server_header=False, log_config=None, **options)
    config.load()
    protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = CountingTransport()
    protocol.connection_made(transport)
    started = time.process_time()
    for _ in range(requests):
        writes = transport.writes
        protocol.data_received(REQUEST)
        while transport.writes == writes or not protocol.cycle.response_complete:
            await asyncio.sleep(0)
    elapsed = time.process_time() - started
    protocol.connection_lost(None)
    return elapsed / requests * 1e6


async def compare(*, rounds: int, requests: int) -> None:
    figures: dict[str, list[float]] = {name: [] for name in PROTOCOLS}
    for _ in range(rounds):  # interleaved, so a burst of load elsewhere hits every protocol alike
        for name, options in PROTOCOLS.items():
            figures[name].append(await microseconds_per_request(options, requests=requests))
    for name, values in figures.items():
        print(f"{name:24s} best {min(values):6.1f} µs  median {statistics.median(values):6.1f} µs per request")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--requests", type=int, default=10_000, help="per protocol and round")
    args = parser.parse_args()
    uvloop.run(compare(rounds=args.rounds, requests=args.requests))


if __name__ == "__main__":
    main()

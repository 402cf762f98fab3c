"""The HTTP API on a local port: uvicorn, with bounded queues and timeouts.

uvicorn parses HTTP with h11 (a ``Content-Length`` that is not a non-negative number is a 400
before the application sees it), answers 503 past ``limit_concurrency`` connections instead of
queueing without end, listens with a queue of ``backlog`` (the kernel's default of 5 or 128 drops
connections under a burst), closes idle keep-alive connections after five seconds, and names no
server or version in its answers. Each request's line and headers must arrive within 10 seconds
(``BoundedH11``), and the application reads each body within its own timeout.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from reconciler.server.access_log import LOGGER

BACKLOG = 2048
LIMIT_CONCURRENCY = 512
HEADER_LIMIT = 16 * 1024  # bytes of request line and headers h11 buffers
HEADER_TIMEOUT = 10.0  # seconds a connection has to send a request's line and headers


class BoundedH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's line and headers: a
    connection that sends them slowly, or a part and then nothing, is closed after
    ``header_timeout`` seconds instead of holding one of ``limit_concurrency`` slots for ever
    (uvicorn times out only idle keep-alive connections). Bodies have the application's own
    deadline."""

    header_timeout = HEADER_TIMEOUT
    _header_timer: asyncio.TimerHandle | None = None
    _waiting_from: object = None  # the cycle before the request being waited for

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm()

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and self.cycle is not self._waiting_from:
            self._disarm()  # the request's headers are in

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection has its deadline too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._waiting_from = self.cycle
        self._header_timer = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing() and self.cycle is self._waiting_from:
            self.transport.close()


def listen(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def server(
    app: Any,
    *,
    limit_concurrency: int = LIMIT_CONCURRENCY,
    header_timeout: float = HEADER_TIMEOUT,
) -> uvicorn.Server:
    protocol = type("Protocol", (BoundedH11,), {"header_timeout": header_timeout})
    config = uvicorn.Config(
        app,
        backlog=BACKLOG,
        limit_concurrency=limit_concurrency,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,
        h11_max_incomplete_event_size=HEADER_LIMIT,
        server_header=False,
        access_log=False,  # the application writes its own, redacted
        log_config=None,
        lifespan="off",
        proxy_headers=False,
        http=protocol,
        loop="asyncio",
    )
    return uvicorn.Server(config)


def log_access_to_stderr() -> None:
    if not LOGGER.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        LOGGER.addHandler(handler)
        LOGGER.setLevel(logging.INFO)
        LOGGER.propagate = False


def serve(app: Any, sock: socket.socket) -> None:
    """Serve until interrupted (SIGINT, SIGTERM: finish what is in flight, then stop)."""
    log_access_to_stderr()
    server(app).run(sockets=[sock])


@contextmanager
def serving(app: Any, host: str = "127.0.0.1", **options: Any) -> Iterator[int]:
    """The application served from a thread on an ephemeral port, for tests and drills."""
    sock = listen(host, 0)
    running = server(app, **options)
    thread = threading.Thread(target=running.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not running.started:
            if not thread.is_alive():
                raise RuntimeError("the server did not start")
            thread.join(0.01)
        yield int(sock.getsockname()[1])
    finally:
        running.should_exit = True
        thread.join(15)
        sock.close()

"""The HTTP API on a local port: uvicorn, with bounded queues and timeouts.

uvicorn parses HTTP with h11 (a ``Content-Length`` that is not a non-negative number is a 400
before the application sees it), answers 503 past ``limit_concurrency`` connections instead of
queueing without end, listens with a queue of ``backlog`` (the kernel's default of 5 or 128 drops
connections under a burst), closes idle keep-alive connections after five seconds, and names no
server or version in its answers. The application reads each body within its own timeout.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from reconciler.server.access_log import LOGGER

BACKLOG = 2048
LIMIT_CONCURRENCY = 512
HEADER_LIMIT = 16 * 1024  # bytes of request line and headers h11 buffers


def listen(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def server(app: Any, *, limit_concurrency: int = LIMIT_CONCURRENCY) -> uvicorn.Server:
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
        http="h11",
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

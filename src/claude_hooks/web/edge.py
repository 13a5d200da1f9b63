"""Connection limits at the edge: how many sockets, how long each may take to say what it wants.

uvicorn keeps a connection that sends nothing open forever and takes as many as the kernel
hands it, so a few slow clients could use up the file descriptors the agents need. The
protocol here, uvicorn's own with three rules added:

- headers must arrive within `server.read_timeout` of the connection (or of the end of the
  previous response), and a body within `server.read_timeout` of its headers (plus a second,
  so the webhook can answer 408 first); otherwise the connection is closed;
- at most `max_connections` are open (default: half the soft RLIMIT_NOFILE, at most 4096;
  never so many that fewer than a quarter of the descriptors are left);
- when full, a new connection replaces the one that has waited longest without a request in
  progress, so slow or idle clients cannot lock out `/healthz` or Forgejo. Only when every open
  connection is busy with a request is the new one refused, with a 503.

Idle keep-alive connections close after uvicorn's `timeout_keep_alive`.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

MAX_DEFAULT_CONNECTIONS = 4096
BODY_GRACE = 1.0
_REFUSED_BODY = b'{"error":"too many open connections, each busy with a request: retry shortly"}'
_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_REFUSED_BODY), _REFUSED_BODY)
)


def _soft_nofile() -> int | None:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def default_max_connections() -> int:
    """Half the soft file-descriptor limit: the other half stays for the database, the logs,
    git and the agents' pipes."""
    soft = _soft_nofile()
    if soft is None:
        return MAX_DEFAULT_CONNECTIONS
    return max(8, min(MAX_DEFAULT_CONNECTIONS, soft // 2))


def connection_ceiling() -> int | None:
    """The most connections that still leave descriptors for everything else (a quarter of the
    soft limit, at least 64): more would let clients make accept() fail, which the event loop
    reports once per waiting connection, and starve the agents."""
    soft = _soft_nofile()
    return None if soft is None else max(8, soft - max(64, soft // 4))


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with read deadlines and a connection cap (see the module).

    Made per server by `edge_protocol`, which sets the class attributes."""

    read_timeout: ClassVar[float] = 10.0
    max_connections: ClassVar[int] = MAX_DEFAULT_CONNECTIONS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_since = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections and not self._evict():
            transport.write(_REFUSED)
            transport.close()
            return
        super().connection_made(transport)
        self._waiting_since = self.loop.time()
        self._arm(self.read_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.transport is None:  # refused in connection_made: uvicorn never saw it
            return
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:
            self._arm(self.read_timeout)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        if not self.parser.should_upgrade() and self._has_body():
            self._arm(self.read_timeout + BODY_GRACE)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._waiting_since = self.loop.time()

    def _has_body(self) -> bool:
        for name, value in self.headers:
            if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
                return True
        return False

    def _waiting(self) -> bool:
        """No request in progress: idle, or its headers are still coming."""
        return self.cycle is None or self.cycle.response_complete

    def _evict(self) -> bool:
        """Close the connection that has waited longest without a request; False if none."""
        waiting = [
            other
            for other in self.connections
            if isinstance(other, EdgeProtocol) and other._waiting()
        ]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda other: other._waiting_since)
        self.connections.discard(oldest)
        oldest._close()
        return True

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._close)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _close(self) -> None:
        self._deadline = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def edge_protocol(read_timeout: float, max_connections: int) -> type[EdgeProtocol]:
    """A protocol class for one server, with its limits (`max_connections` 0: the default)."""
    limit = max_connections or default_max_connections()
    ceiling = connection_ceiling()
    if ceiling is not None and limit > ceiling:
        log.warning(
            "server.max_connections = %d leaves too few file descriptors (soft RLIMIT_NOFILE "
            "%d): using %d; raise the limit (ulimit -n) for more",
            limit,
            _soft_nofile(),
            ceiling,
        )
        limit = ceiling
    log.debug("at most %d connections, %g s to send a request", limit, read_timeout)
    return type(
        "ServerEdgeProtocol",
        (EdgeProtocol,),
        {"read_timeout": read_timeout, "max_connections": limit},
    )

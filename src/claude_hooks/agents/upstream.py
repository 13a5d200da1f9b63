"""The egress proxy's HTTP/1.1 client: what the relay and plain-HTTP forwarding send upstream.

Written for the relay's latency (`bench/proxy_overhead.py`): each request leaves in one write
(head and body together), Nagle off; an answer is read as it comes and handed on one read at a
time (every event h11 finds in a read, together), so a burst of server-sent events crosses
each process boundary once, not once an event; connections to an origin are kept alive and
reused (the Messages API's are HTTPS: one TLS handshake per connection, not per call). httpx
took 2.2-3.3 ms of the event loop's CPU a call here on a loaded host, in its layers and its
separate writes; this takes 0.8-1.0 ms (bench/history.md).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11
import httpx

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 600.0
IDLE_KEEP = 8  # kept-alive connections per origin
_CHUNK = 65536


class UpstreamError(Exception):
    """The upstream could not be reached, or broke the protocol before its answer's head."""


@dataclass(frozen=True, slots=True)
class _Origin:
    scheme: str
    host: str
    port: int


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)

    def close(self) -> None:
        self.writer.close()


class Answer:
    """An answer's head (`status`, `headers`) and, through `events`, its body as it comes."""

    def __init__(self, client: Upstream, origin: _Origin, connection: _Connection) -> None:
        self._client = client
        self._origin = origin
        self._connection = connection
        self._pending: list[Any] = []
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.complete = False

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    async def _head(self) -> None:
        while True:
            for event in await self._read():
                if isinstance(event, h11.Response):
                    self.status = event.status_code
                    self.headers = [
                        (k.decode().lower(), v.decode("latin-1")) for k, v in event.headers
                    ]
                elif isinstance(event, h11.ConnectionClosed) and not self.status:
                    raise ConnectionResetError("closed before it answered")
                elif not isinstance(event, h11.InformationalResponse):
                    self._pending.append(event)
            if self.status:
                return

    async def _read(self) -> list[Any]:
        """The events of the next read from the socket (at least one)."""
        conn = self._connection.h11
        events: list[Any] = []
        while not events:
            while (event := conn.next_event()) not in (h11.NEED_DATA, h11.PAUSED):
                events.append(event)
                if isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return events
            if events:
                return events
            if event is h11.PAUSED:
                raise h11.RemoteProtocolError("the upstream sent more than its answer")
            data = await asyncio.wait_for(self._connection.reader.read(_CHUNK), READ_TIMEOUT)
            conn.receive_data(data)
        return events

    @property
    def started(self) -> bool:
        """Part of the body came with the head (in the same read)."""
        return bool(self._pending)

    async def chunks(self) -> AsyncIterator[tuple[list[bytes], bool]]:
        """The body, one list of pieces per read from the upstream, and whether it ended
        there (what came with the head first)."""
        pending, self._pending = self._pending, []
        while True:
            events = pending or await self._read()
            pending = []
            pieces = [bytes(e.data) for e in events if isinstance(e, h11.Data)]
            ended = any(isinstance(e, h11.EndOfMessage) for e in events)
            if not ended and any(isinstance(e, h11.ConnectionClosed) for e in events):
                raise ConnectionResetError("the upstream closed mid-answer")
            self.complete = ended
            yield pieces, ended
            if ended:
                return

    def release(self) -> None:
        """Back to the pool if the exchange ended cleanly, else closed."""
        conn = self._connection.h11
        if self.complete and conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self._client.keep(self._origin, self._connection)
        else:
            self._connection.close()


class Upstream:
    """Kept-alive connections by origin; TLS verified as the forge client verifies."""

    def __init__(self) -> None:
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._tls: ssl.SSLContext | None = None

    async def request(
        self, method: str, url: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> Answer:
        """Send the request; its answer once its head has come. UpstreamError if it could not
        be sent or no head came (a kept-alive connection the server had closed is retried)."""
        parts = urlsplit(url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            port = 0
        if parts.scheme not in ("http", "https") or not parts.hostname or not port:
            raise UpstreamError(f"cannot send to {url!r}")
        origin = _Origin(parts.scheme, parts.hostname, port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = list(headers)
        if "host" not in {k.lower() for k, _ in headers}:
            head.append(("host", parts.netloc.rpartition("@")[2]))
        head.append(("content-length", str(len(body))))
        request = h11.Request(method=method, target=target, headers=head)
        connection = self._take(origin)
        while True:
            fresh = connection is None
            if connection is None:
                connection = await self._open(origin)
            answer = Answer(self, origin, connection)
            try:
                out = [connection.h11.send(request)]
                if body:
                    out.append(connection.h11.send(h11.Data(data=body)))
                out.append(connection.h11.send(h11.EndOfMessage()))
                connection.writer.write(b"".join(piece or b"" for piece in out))
                await connection.writer.drain()
                await answer._head()
            except TimeoutError:
                connection.close()
                raise UpstreamError(f"{origin.host}:{origin.port}: no answer in time") from None
            except (OSError, h11.ProtocolError) as exc:
                connection.close()
                if fresh:
                    raise UpstreamError(f"{origin.host}:{origin.port}: {exc}") from None
                connection = None  # the server had closed the kept-alive one: once more, fresh
                continue
            return answer

    def _take(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin, [])
        while idle:
            connection = idle.pop()
            if not connection.reader.at_eof() and not connection.writer.is_closing():
                return connection
            connection.close()
        return None

    def keep(self, origin: _Origin, connection: _Connection) -> None:
        idle = self._idle.setdefault(origin, [])
        if len(idle) < IDLE_KEEP:
            idle.append(connection)
        else:
            connection.close()

    async def _open(self, origin: _Origin) -> _Connection:
        tls: ssl.SSLContext | None = None
        if origin.scheme == "https":
            if self._tls is None:
                # httpx's, as the forge client's: its CA bundle, or SSL_CERT_FILE's.
                self._tls = httpx.create_ssl_context()
            tls = self._tls
        try:
            # asyncio's TCP transports turn Nagle's algorithm off themselves.
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(origin.host, origin.port, ssl=tls, limit=_CHUNK),
                CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(f"cannot connect to {origin.host}:{origin.port}: {exc}") from None
        return _Connection(reader, writer)

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()

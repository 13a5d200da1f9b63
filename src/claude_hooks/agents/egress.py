"""The service's egress proxy: a sandboxed agent's only way out of its network namespace.

Each sandboxed run gets a session (so a connection's task is known without trusting anything the
agent sends): a listener on 127.0.0.1 inside its sandbox that the service opened itself
(`sandbox_latch`, when it is root), else a Unix socket of its own, bound into the sandbox and
served on 127.0.0.1 there by `egress_bridge.py`. On it the proxy speaks HTTP/1.1 (h11) and
serves:

- `CONNECT host:port` (HTTPS and any TLS): a tunnel, if the type's `egress` allows it;
- absolute-form plain HTTP (`GET http://host/…`): forwarded, if allowed;
- origin-form (`POST /v1/messages`): the `claude` runner's Messages API relay (`api_relay`),
  which swaps the task's token for the real credential and meters the usage.

A refused host gets 403 and is logged and counted per task; the counts are stored within a
second and when the run ends (`Store.egress`). A listed name is resolved here and connected
to by the address checked (`claude_hooks.core.egress`), so a second lookup cannot differ.
Everything runs in the service's event loop; a session has at most `MAX_CONNECTIONS` open.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import shutil
import socket
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11

from claude_hooks.agents.api_relay import DEFAULT_BASE_URL, Credential, Relay, ResponseUsage
from claude_hooks.agents.credentials import (
    CREDENTIAL_VARIABLES,
    PROVIDER_SWITCHES,
    claude_credential,
)
from claude_hooks.agents.sandbox import BRIDGE_PORT, Account
from claude_hooks.agents.upstream import Upstream, UpstreamError
from claude_hooks.config import TypeConfig
from claude_hooks.core.egress import EgressPolicy, IPAddress, normalize
from claude_hooks.store.egress import EgressBlock

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
IDLE_TIMEOUT = 300.0  # a kept-alive connection waiting for its next request
CONNECT_TIMEOUT = 10.0
LOOKUP_TIMEOUT = 10.0
_CHUNK = 65536
BRIDGE_URL = f"http://127.0.0.1:{BRIDGE_PORT}"
NO_PROXY = "localhost,127.0.0.1,::1"
RECORD_SECONDS = 1.0
_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length",
}  # fmt: skip
_CREDENTIAL_HEADERS = {"x-api-key", "authorization"}


Recorder = Callable[["EgressSession"], Awaitable[None]]


class _Closed(Exception):
    """The client went away."""


class _LookupFailed(Exception):
    """A listed name does not resolve (answered 502: nothing was refused)."""


@dataclass(frozen=True, slots=True)
class _Target:
    host: str
    port: int


def _split_authority(authority: str, default_port: int) -> _Target | None:
    parsed = urlsplit(f"//{authority}")
    try:
        port = parsed.port or default_port
    except ValueError:
        return None
    return _Target(normalize(parsed.hostname), port) if parsed.hostname else None


class EgressSession:
    """One run's way out: its socket, its type's list, what it was refused, its relay."""

    def __init__(
        self,
        proxy: EgressProxy,
        task_id: str,
        agent_type: str,
        policy: EgressPolicy,
        relay: Relay | None,
        runner: str,
        recorder: Recorder | None = None,
        on_stop: Callable[[str], None] | None = None,
    ) -> None:
        self.proxy = proxy
        self.task_id = task_id
        self.agent_type = agent_type
        self.policy = policy
        self.relay = relay
        self.runner = runner
        self.socket = proxy.folder / f"{task_id}.sock"
        self.refused: Counter[tuple[str, int]] = Counter()
        self._server: asyncio.Server | None = None
        self._listeners: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._recorder = recorder
        self._recording: asyncio.Task[None] | None = None
        self._on_stop = on_stop

    async def start(self, account: Account | None) -> None:
        # Not serving yet: nothing is awaited between the socket's creation and keeping its
        # server, so a cancel here leaves no socket behind (`close` ends it).
        self._server = await asyncio.start_unix_server(
            self._accept, path=str(self.socket), limit=MAX_HEAD_BYTES, start_serving=False
        )
        # Only the agent's account may connect (the folder is the service's, 0700, outside).
        if account is not None:
            self.socket.chmod(0o600)
            os.chown(self.socket, account.uid, account.gid)
        await self._server.start_serving()

    async def serve(self, listener: socket.socket) -> None:
        """Serve `listener` too: a TCP socket the service opened inside the run's sandbox (its
        latch, `sandbox_latch`), which the agent reaches at 127.0.0.1:`BRIDGE_PORT` with no
        bridge program in between; it closes with the session."""
        server = await asyncio.start_server(self._accept, sock=listener, limit=MAX_HEAD_BYTES)
        self._listeners.append(server)

    def environment(self, env: dict[str, str]) -> dict[str, str]:
        """The agent's environment with the proxy set and, for the relay, the real
        credential replaced by the task's token."""
        env = dict(env)
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            env[name] = BRIDGE_URL
        env["NO_PROXY"] = env["no_proxy"] = NO_PROXY
        if self.runner == "claude":
            env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] = "1"
        if self.relay is not None:
            for name in CREDENTIAL_VARIABLES:
                env.pop(name, None)
            env.update(self.relay.agent_variables(BRIDGE_URL))
        return env

    def blocked(self) -> list[EgressBlock]:
        return [EgressBlock(h, p, n) for (h, p), n in sorted(self.refused.items())]

    def metered(self) -> dict[str, Any] | None:
        return self.relay.meter.summary() if self.relay is not None else None

    def stop(self, reason: str) -> None:
        """The run must end (its budget is spent): told to whoever ends it, once."""
        log.warning("task %s (%s): %s; stopping it", self.task_id, self.agent_type, reason)
        if self._on_stop is not None:
            self._on_stop(reason)
            self._on_stop = None

    def changed(self) -> None:
        """Something to keep: recorded within `RECORD_SECONDS`, so a running task shows what
        it was refused, and a crash loses at most that much; a refusal loop costs one write
        a second, not one a refusal."""
        if self._recorder is not None and self._recording is None:
            self._recording = asyncio.get_running_loop().create_task(self._record_soon())

    async def _record_soon(self) -> None:
        await asyncio.sleep(RECORD_SECONDS)
        self._recording = None
        assert self._recorder is not None
        try:
            await self._recorder(self)
        except Exception:
            log.exception("task %s: could not record its egress", self.task_id)

    async def close(self) -> None:
        """Stop accepting, end every connection (tunnels too), remove the socket: the task's
        token is worthless from here on. The caller records the final counts."""
        if self._recording is not None:
            self._recording.cancel()
            await asyncio.gather(self._recording, return_exceptions=True)
        servers = [*filter(None, [self._server]), *self._listeners]
        for server in servers:
            server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        for server in servers:
            await server.wait_closed()
        self.socket.unlink(missing_ok=True)

    # connections

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection in a task of its own, which `close` cancels. The stream
        server's own task must not end cancelled: Python 3.11's asyncio reports that as an
        unhandled error (`task.exception()` in its done-callback), so a cancel ends it here."""
        if len(self._connections) >= MAX_CONNECTIONS:
            writer.close()
            return
        serving = asyncio.create_task(self._serve(reader, writer))
        self._connections.add(serving)
        try:
            await asyncio.wait([serving])
        except asyncio.CancelledError:
            pass  # the loop is closing: the connection ends below
        finally:
            self._connections.discard(serving)
            serving.cancel()
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _Connection(self, reader, writer).serve()
        except (_Closed, ConnectionError, TimeoutError, h11.ProtocolError):
            pass  # either end went away or broke the protocol: the connection just ends
        except Exception:
            log.exception("task %s: the egress proxy failed on a connection", self.task_id)

    def refuse(self, target: _Target, why: str) -> str:
        self.refused[(target.host, target.port)] += 1
        self.changed()
        log.warning(
            "task %s (%s): egress to %s:%d refused: %s",
            self.task_id, self.agent_type, target.host, target.port, why,
        )  # fmt: skip
        return (
            f"claude-hooks: egress to {target.host}:{target.port} refused: {why} "
            f"(the hosts an agent may reach are [types.{self.agent_type}] egress)\n"
        )

    async def addresses(self, target: _Target) -> list[IPAddress]:
        """The addresses of a listed target it may connect to (none: every one it resolves
        to is loopback or private, and not listed); _LookupFailed if it does not resolve."""
        try:
            found: list[IPAddress] = [ipaddress.ip_address(target.host)]
        except ValueError:
            loop = asyncio.get_running_loop()
            try:
                infos = await asyncio.wait_for(
                    loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM),
                    LOOKUP_TIMEOUT,
                )
            except (OSError, TimeoutError) as exc:
                raise _LookupFailed(f"cannot resolve {target.host}: {exc}") from None
            found = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
        return self.policy.reachable(target.host, target.port, found)


class _Connection:
    """One client connection: HTTP/1.1 requests, one after another, or one tunnel."""

    def __init__(
        self, session: EgressSession, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.session = session
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)

    async def serve(self) -> None:
        while True:
            request = await self._next()
            if not isinstance(request, h11.Request):
                return
            if request.method == b"CONNECT":
                await self._tunnel(request)
                return
            body = await self._body()
            if body is not None:
                if request.target.startswith(b"/"):
                    await self._relay(request, body)
                else:
                    await self._forward(request, body)
            if h11.MUST_CLOSE in (self.conn.our_state, self.conn.their_state):
                return
            self.conn.start_next_cycle()

    async def _next(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await asyncio.wait_for(self.reader.read(_CHUNK), IDLE_TIMEOUT)
            self.conn.receive_data(data)

    async def _body(self) -> bytes | None:
        """The request's body; None (answered 413) if it is over `MAX_BODY_BYTES`."""
        body = bytearray()
        while True:
            event = await self._next()
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY_BYTES:
                    await self._answer(413, "claude-hooks: request body too large\n", close=True)
                    return None
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:
                raise _Closed

    async def _send(self, event: Any) -> None:
        await self._write(self.conn.send(event) or b"")

    async def _answer(
        self,
        status: int,
        text: str,
        close: bool = False,
        content_type: str = "text/plain; charset=utf-8",
    ) -> None:
        body = text.encode()
        headers = [
            ("content-type", content_type),
            ("content-length", str(len(body))),
        ]
        if status == 403:
            headers.append(("x-proxy-error", "blocked-by-allowlist"))
        if close:
            headers.append(("connection", "close"))
        reason = HTTPStatus(status).phrase.encode()
        await self._send(h11.Response(status_code=status, headers=headers, reason=reason))
        await self._send(h11.Data(data=body))
        await self._send(h11.EndOfMessage())

    async def _allowed(self, target: _Target) -> list[IPAddress] | None:
        """The addresses to try, or None once refused (403) or unresolvable (502)."""
        session = self.session
        if not session.policy.listed(target.host, target.port):
            await self._answer(403, session.refuse(target, "not on the list"))
            return None
        try:
            found = await session.addresses(target)
        except _LookupFailed as exc:
            await self._answer(502, f"claude-hooks: {exc}\n")
            return None
        if not found:
            why = "it resolves to a loopback or private address that is not listed"
            await self._answer(403, session.refuse(target, why))
            return None
        return found

    async def _tunnel(self, request: h11.Request) -> None:
        await self._body()
        target = _split_authority(request.target.decode("ascii", "replace"), 443)
        if target is None:
            await self._answer(400, "claude-hooks: CONNECT needs host:port\n", close=True)
            return
        addresses = await self._allowed(target)
        if addresses is None:
            return
        upstream = await _open(addresses, target.port)
        if upstream is None:
            await self._answer(502, f"claude-hooks: cannot connect to {target.host}\n")
            return
        up_reader, up_writer = upstream
        await self._send(h11.Response(status_code=200, headers=[]))
        leftover, _ = self.conn.trailing_data
        if leftover:
            up_writer.write(leftover)
        try:
            await asyncio.gather(_pipe(self.reader, up_writer), _pipe(up_reader, self.writer))
        finally:
            up_writer.close()

    async def _forward(self, request: h11.Request, body: bytes) -> None:
        """Absolute-form plain HTTP, sent to the address checked with the original Host."""
        url = urlsplit(request.target.decode("ascii", "replace"))
        if url.scheme != "http" or not url.hostname:
            await self._answer(400, "claude-hooks: send http:// URLs, or CONNECT for TLS\n")
            return
        target = _split_authority(url.netloc.rpartition("@")[2], 80)
        if target is None:
            await self._answer(400, "claude-hooks: a bad host or port\n")
            return
        addresses = await self._allowed(target)
        if addresses is None:
            return
        address = addresses[0]
        host = f"[{address}]" if address.version == 6 else str(address)
        path = url.path or "/"
        upstream = f"http://{host}:{target.port}{path}" + (f"?{url.query}" if url.query else "")
        headers = _headers(request.headers)
        headers.append(("host", url.netloc.rpartition("@")[2]))
        await self._exchange(request.method.decode(), upstream, headers, body, None)

    async def _relay(self, request: h11.Request, body: bytes) -> None:
        relay = self.session.relay
        if relay is None:
            await self._answer(
                400,
                "claude-hooks: this is an HTTP proxy: send absolute-form requests or CONNECT\n",
            )
            return
        sent = {k.decode().lower(): v.decode("latin-1") for k, v in request.headers}
        if not relay.authorized(sent):
            await self._answer(401, "claude-hooks: not this task's token\n")
            return
        spent = relay.over_budget()
        if spent is not None:
            error = {"type": "invalid_request_error", "message": f"claude-hooks: {spent}"}
            text = json.dumps({"type": "error", "error": error})
            await self._answer(400, text, content_type="application/json")
            return
        headers = [(k, v) for k, v in _headers(request.headers) if k not in _CREDENTIAL_HEADERS]
        headers = [(k, v) for k, v in headers if k != "accept-encoding"]
        headers += [relay.credential.header(), ("accept-encoding", "identity")]
        target = request.target.decode("ascii", "replace")
        metered = urlsplit(target).path.endswith("/v1/messages")
        await self._exchange(
            request.method.decode(),
            relay.base_url + target,
            headers,
            body,
            relay if metered else None,
        )

    async def _exchange(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
        relay: Relay | None,
    ) -> None:
        """Send upstream and pass the answer on as it comes: one write to the agent per read
        from the upstream (its head with what came along), so a burst of events wakes the
        agent's side once."""
        try:
            answer = await self.session.proxy.upstream.request(method, url, headers, body)
        except UpstreamError as exc:
            await self._answer(502, f"claude-hooks: the upstream failed: {exc}\n")
            return
        try:
            passed = [(k, v) for k, v in answer.headers if k not in _HOP]
            length = answer.header("content-length")
            if length is not None:
                passed.append(("content-length", length))
            head = self.conn.send(h11.Response(status_code=answer.status, headers=passed)) or b""
            if not answer.started:
                await self._write(head)
                head = b""
            metered = relay is not None and 200 <= answer.status < 300
            usage = ResponseUsage(answer.header("content-type") or "")
            spent: str | None = None
            counted = False

            def count() -> None:
                """Meter the answer once; before its end reaches the agent, which may then
                exit and have its session closed before this coroutine runs again."""
                nonlocal counted
                if counted or not metered or relay is None:
                    return
                counted = True
                found = usage.finish()
                if found is not None:
                    relay.meter.add(*found)
                    self.session.changed()

            async for pieces, ended in answer.chunks():
                out = [head]
                head = b""
                if pieces:
                    data = b"".join(pieces)
                    if metered:
                        usage.feed(data)
                    out.append(self.conn.send(h11.Data(data=data)) or b"")
                if relay is not None and metered:
                    spent = relay.over_budget(usage)
                    if spent is not None:
                        break  # not a byte more; closing the upstream ends the generation
                if ended:
                    out.append(self.conn.send(h11.EndOfMessage()) or b"")
                    count()
                await self._write(b"".join(out))
        finally:
            answer.release()
        count()
        if spent is not None:
            self.session.stop(spent)
            raise _Closed

    async def _write(self, data: bytes) -> None:
        if data:
            self.writer.write(data)
            await self.writer.drain()


def _headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [
        (name.decode().lower(), value.decode("latin-1"))
        for name, value in raw
        if name.decode().lower() not in _HOP
    ]


async def _open(
    addresses: list[IPAddress], port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    for address in addresses:
        with contextlib.suppress(OSError, TimeoutError):
            return await asyncio.wait_for(
                asyncio.open_connection(str(address), port), CONNECT_TIMEOUT
            )
    return None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


class EgressProxy:
    """The egress proxy of one service: sessions by run, one HTTP client for the upstreams;
    made at the first sandboxed run, so a service without one opens nothing."""

    def __init__(self) -> None:
        self._folder: Path | None = None
        self.upstream = Upstream()

    @property
    def folder(self) -> Path:
        if self._folder is None:
            # A short path of its own: a Unix socket's path is limited to 107 bytes.
            self._folder = Path(tempfile.mkdtemp(prefix="claude-hooks-egress-"))
        return self._folder

    async def open(
        self,
        task_id: str,
        agent_type: str,
        type_config: TypeConfig,
        env: dict[str, str],
        account: Account | None,
        recorder: Recorder | None = None,
        extra: Sequence[str] = (),
        on_stop: Callable[[str], None] | None = None,
    ) -> EgressSession:
        """A run's session, listening; `recorder` keeps its counts as they change; `extra`:
        hosts the repository's policy adds to the type's list; `on_stop` is told why the run
        must end (the relay's budget is spent)."""
        session = EgressSession(
            self,
            task_id,
            agent_type,
            EgressPolicy.of([*type_config.egress, *extra]),
            _relay(agent_type, type_config, env),
            type_config.runner,
            recorder,
            on_stop,
        )
        try:
            await session.start(account)
        except BaseException:
            # Cancelled or refused half-way: its socket goes with it.
            await asyncio.shield(session.close())
            raise
        return session

    async def aclose(self) -> None:
        await self.upstream.aclose()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
        self._folder = None


def _relay(agent_type: str, type_config: TypeConfig, env: dict[str, str]) -> Relay | None:
    """The claude runner's relay, unless it uses a cloud provider or has no credential."""
    if type_config.runner != "claude":
        return None
    found = claude_credential(agent_type, type_config)
    if found is None or found.what in PROVIDER_SWITCHES or not env.get(found.what):
        return None
    base = env.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL
    return Relay(Credential(found.what, env[found.what].strip()), base, type_config.max_budget_usd)

"""The egress proxy's upstream client against a real HTTP/1.1 server on 127.0.0.1: kept-alive
connections are reused, one the server closed is replaced, a close-delimited answer is read to
its end, HTTPS is verified, and an unreachable upstream is an UpstreamError; through the
proxy, a kept-alive Messages API's streams are relayed whole and metered."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from claude_hooks.agents.egress import EgressProxy
from claude_hooks.agents.upstream import Upstream, UpstreamError
from claude_hooks.config import TypeConfig
from tests.agents.test_egress_proxy import KEY, through
from tests.messages_standin import MessagesStandin, text


class Server:
    """Answers each request with a chunked body of three pieces, each written on its own;
    `close_after`: the request after that many answers on a connection finds it closed,
    unanswered (as a kept-alive connection the server timed out as the request left);
    `until_close` answers without a length, ending by closing."""

    def __init__(self, close_after: int = 0, until_close: bool = False) -> None:
        self.connections = 0
        self.heads: list[bytes] = []
        self.close_after = close_after
        self.until_close = until_close
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        answered = 0
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                if self.close_after and answered == self.close_after:
                    break
                self.heads.append(head)
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                if self.until_close:
                    writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                    for piece in (b"one ", b"two ", b"three"):
                        writer.write(piece)
                        await writer.drain()
                    break
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for piece in (b"one ", b"two ", b"three"):
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                answered += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    made = Upstream()
    yield made
    await made.aclose()


async def fetch(upstream: Upstream, port: int) -> tuple[int, bytes]:
    answer = await upstream.request(
        "POST", f"http://127.0.0.1:{port}/v1/messages", [("x-test", "1")], b"{}"
    )
    body = b""
    try:
        async for pieces, _ in answer.chunks():
            body += b"".join(pieces)
    finally:
        answer.release()
    return answer.status, body


async def test_a_kept_alive_connection_is_reused(upstream: Upstream) -> None:
    async with Server() as server:
        for _ in range(3):
            assert await fetch(upstream, server.port) == (200, b"one two three")
        assert server.connections == 1
        assert all(b"host: 127.0.0.1:" in head.lower() for head in server.heads)


async def test_a_connection_the_server_closed_is_replaced(upstream: Upstream) -> None:
    async with Server(close_after=1) as server:
        assert await fetch(upstream, server.port) == (200, b"one two three")
        assert await fetch(upstream, server.port) == (200, b"one two three")
        assert server.connections == 2
        assert len(server.heads) == 2


async def test_an_answer_that_ends_with_its_connection_is_read_whole(upstream: Upstream) -> None:
    async with Server(until_close=True) as server:
        assert await fetch(upstream, server.port) == (200, b"one two three")
        assert await fetch(upstream, server.port) == (200, b"one two three")
        assert server.connections == 2


async def test_an_unreachable_upstream_is_an_upstream_error(upstream: Upstream) -> None:
    async with Server() as server:
        port = server.port
    with pytest.raises(UpstreamError, match=r"cannot connect to 127\.0\.0\.1"):
        await fetch(upstream, port)


async def test_the_relay_streams_a_kept_alive_api_whole_and_meters_it() -> None:
    proxy = EgressProxy()
    try:
        with MessagesStandin(keep_alive=True) as api:
            env = {"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": api.url}
            session = await proxy.open("t1", "dev", TypeConfig(runner="claude", env=env), env, None)
            token = session.environment(env)["ANTHROPIC_API_KEY"]
            body = {"model": "claude-sonnet-4-5", "max_tokens": 8, "stream": True, "messages": []}
            async with through(session) as client:
                for n in range(3):
                    api.script(text(f"hello {n}"))
                    answer = await client.post(
                        "/v1/messages", json=body, headers={"x-api-key": token}
                    )
                    assert answer.status_code == 200
                    events = [
                        json.loads(line[5:])
                        for line in answer.text.splitlines()
                        if line.startswith("data:")
                    ]
                    assert events[-1] == {"type": "message_stop"}
                    deltas = [e for e in events if e["type"] == "content_block_delta"]
                    assert deltas[0]["delta"]["text"] == f"hello {n}"
            metered = session.metered()
            await session.close()
        assert metered is not None and metered["requests"] == 3
        assert all(r.headers.get("x-api-key") == KEY for r in api.message_requests())
    finally:
        await proxy.aclose()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, and its key."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_https_is_verified_against_the_trusted_certificates(
    upstream: Upstream, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TLS server with a certificate for 127.0.0.1: trusted through SSL_CERT_FILE, as a
    deployment adds its own CA; an upstream whose certificate is not trusted is an error."""
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    untrusted = Upstream()
    async with Server() as server:
        tls = await asyncio.start_server(
            lambda r, w: server._serve(r, w), "127.0.0.1", 0, ssl=context
        )
        port = tls.sockets[0].getsockname()[1]
        try:
            with pytest.raises(UpstreamError, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusted.request("POST", f"https://127.0.0.1:{port}/", [], b"")
            monkeypatch.setenv("SSL_CERT_FILE", str(cert))
            for _ in range(2):
                answer = await upstream.request("POST", f"https://127.0.0.1:{port}/", [], b"{}")
                body = b"".join([b"".join(p) async for p, _ in answer.chunks()])
                answer.release()
                assert (answer.status, body) == (200, b"one two three")
            assert server.connections == 1
        finally:
            await untrusted.aclose()
            tls.close()
            await tls.wait_closed()

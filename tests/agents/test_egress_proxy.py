"""The egress proxy on its own, spoken to over a run's Unix socket as the sandbox's bridge does:
the relay's token, its expiry with the run, and a listed name that resolves inward."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest

from claude_hooks.agents.egress import EgressProxy, EgressSession
from claude_hooks.config import TypeConfig
from tests.messages_standin import MessagesStandin, text

KEY = "sk-ant-egress-test-key"


@pytest.fixture
async def proxy() -> AsyncIterator[EgressProxy]:
    made = EgressProxy()
    yield made
    await made.aclose()


@pytest.fixture
def local_host() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


async def absolute(session: EgressSession, url: str) -> tuple[int, bytes]:
    """A plain-HTTP request through the proxy, in absolute form as a client sends it."""
    reader, writer = await asyncio.open_unix_connection(str(session.socket))
    host = url.split("/")[2]
    writer.write(f"GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def through(session: EgressSession) -> httpx.AsyncClient:
    """A client whose connections go to the run's socket, as the bridge forwards them."""
    transport = httpx.AsyncHTTPTransport(uds=str(session.socket))
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:3128")


async def test_the_relay_takes_only_the_task_token_and_sends_the_real_key(
    proxy: EgressProxy,
) -> None:
    with MessagesStandin() as api:
        env = {"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": api.url}
        config = TypeConfig(runner="claude", env=env)
        session = await proxy.open("t1", "dev", config, env, None)
        inside = session.environment(env)
        token = inside["ANTHROPIC_API_KEY"]
        assert token != KEY
        assert KEY not in inside.values()
        assert inside["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:3128"
        api.script(text("hello"))
        body = {"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": []}
        async with through(session) as client:
            wrong = await client.post("/v1/messages", json=body, headers={"x-api-key": KEY})
            assert wrong.status_code == 401
            assert api.message_requests() == []
            right = await client.post("/v1/messages", json=body, headers={"x-api-key": token})
            assert right.status_code == 200, right.text
        assert [r.headers.get("x-api-key") for r in api.message_requests()] == [KEY]
        metered = session.metered()
        assert metered is not None
        assert (metered["requests"], metered["input_tokens"], metered["output_tokens"]) == (
            1,
            1000,
            200,
        )
        await session.close()
        assert not session.socket.exists(), "the token dies with the run's socket"


async def test_a_listed_name_that_resolves_to_loopback_is_refused_unless_the_address_is(
    proxy: EgressProxy, local_host: int
) -> None:
    by_name = TypeConfig(runner="command", command=["true"], egress=[f"localhost:{local_host}"])
    session = await proxy.open("t2", "dev", by_name, {}, None)
    status, body = await absolute(session, f"http://localhost:{local_host}/")
    assert status == 403
    assert b"loopback or private address" in body
    assert [(b.host, b.port, b.count) for b in session.blocked()] == [("localhost", local_host, 1)]
    await session.close()
    listed = TypeConfig(
        runner="command",
        command=["true"],
        egress=[f"localhost:{local_host}", f"127.0.0.1:{local_host}"],
    )
    session = await proxy.open("t3", "dev", listed, {}, None)
    assert await absolute(session, f"http://localhost:{local_host}/") == (200, b"ok")
    assert session.blocked() == []
    await session.close()


async def test_connect_tunnels_to_a_listed_host_and_keeps_bytes_sent_with_the_request(
    proxy: EgressProxy, local_host: int
) -> None:
    config = TypeConfig(runner="command", command=["true"], egress=[f"127.0.0.1:{local_host}"])
    session = await proxy.open("t4", "dev", config, {}, None)
    reader, writer = await asyncio.open_unix_connection(str(session.socket))
    # The tunnelled request goes in the same write as the CONNECT, as eager clients do.
    writer.write(
        f"CONNECT 127.0.0.1:{local_host} HTTP/1.1\r\nHost: 127.0.0.1:{local_host}\r\n\r\n"
        "GET / HTTP/1.0\r\n\r\n".encode()
    )
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b"\r\n\r\nok")
    assert session.blocked() == []
    reader, writer = await asyncio.open_unix_connection(str(session.socket))
    writer.write(b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n")
    refused = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    assert refused.startswith(b"HTTP/1.1 403 Forbidden")
    assert [(b.host, b.port, b.count) for b in session.blocked()] == [("127.0.0.1", 22, 1)]
    await session.close()


async def test_the_relay_stops_an_answer_that_passes_the_budget_and_refuses_the_next(
    proxy: EgressProxy,
) -> None:
    """1M input tokens of Sonnet ($3) against a $1 budget: the stream stops at its
    `message_start`, the run is told why, and the next request never reaches the API."""
    with MessagesStandin() as api:
        env = {"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": api.url}
        config = TypeConfig(runner="claude", env=env, max_budget_usd=1.0)
        stops: list[str] = []
        session = await proxy.open("t5", "dev", config, env, None, on_stop=stops.append)
        token = session.environment(env)["ANTHROPIC_API_KEY"]
        api.script(replace(text("expensive"), input_tokens=1_000_000, stall=True))
        body = {"model": "claude-sonnet-4-5", "max_tokens": 8, "stream": True, "messages": []}
        reason = "budget $1 (max_budget_usd) reached: $3.00 metered by the proxy"
        async with through(session) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await asyncio.wait_for(
                    client.post("/v1/messages", json=body, headers={"x-api-key": token}), 10
                )
            assert stops == [reason]
            refused = await client.post("/v1/messages", json=body, headers={"x-api-key": token})
        assert refused.status_code == 400
        assert refused.json()["error"]["message"] == f"claude-hooks: {reason}"
        assert len(api.message_requests()) == 1
        metered = session.metered()
        assert metered is not None and metered["cost_usd"] == 3.000015  # and 1 output token
        await session.close()

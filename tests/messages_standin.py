"""A stand-in for the Anthropic Messages API on 127.0.0.1, for running the real Claude Code CLI.

It answers `POST /v1/messages` with server-sent events built from a script of replies (one per
request, in order), records every request with its arrival time, and can stall a stream or answer
with an HTTP error. Only the standard library: a real HTTP server in a thread.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

MODEL = "claude-sonnet-4-5"


@dataclass
class Reply:
    """One answer of the model: content blocks, or an HTTP error, optionally stalling."""

    blocks: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    error_type: str = "api_error"
    stall: bool = False  # stream the blocks, then hang until the client goes or the server stops
    input_tokens: int = 1000
    output_tokens: int = 200
    headers: dict[str, str] = field(default_factory=dict)  # sent with an HTTP error
    message: str = "stand-in error"

    @property
    def stop_reason(self) -> str:
        return "tool_use" if any(b["type"] == "tool_use" for b in self.blocks) else "end_turn"


def text(answer: str) -> Reply:
    return Reply([{"type": "text", "text": answer}])


_tool_ids = itertools.count(1)


def tool_use(name: str, tool_input: dict[str, Any], say: str = "") -> Reply:
    blocks: list[dict[str, Any]] = [{"type": "text", "text": say}] if say else []
    blocks.append(
        {
            "type": "tool_use",
            "id": f"toolu_{next(_tool_ids):06d}",
            "name": name,
            "input": tool_input,
        }
    )
    return Reply(blocks)


def error(
    status: int,
    error_type: str = "overloaded_error",
    headers: dict[str, str] | None = None,
    message: str = "stand-in error",
) -> Reply:
    return Reply(status=status, error_type=error_type, headers=headers or {}, message=message)


def usage_limit(resets_at: int, limit: str = "five_hour") -> Reply:
    """A subscription's usage limit, as the API answers it: 429 with the unified rate-limit
    headers (rejected, the reset time as epoch seconds, which window)."""
    return error(
        429,
        "rate_limit_error",
        {
            "anthropic-ratelimit-unified-status": "rejected",
            "anthropic-ratelimit-unified-reset": str(resets_at),
            "anthropic-ratelimit-unified-representative-claim": limit,
        },
        "This request would exceed your account's rate limit. Please try again later.",
    )


def stall(answer: str) -> Reply:
    return Reply([{"type": "text", "text": answer}], stall=True)


@dataclass(frozen=True)
class Request:
    at: float  # time.monotonic() on arrival
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    def last_user_text(self) -> str:
        """The text of the last user message (tool results included), as one string."""
        for message in reversed(self.body.get("messages", [])):
            if message.get("role") == "user":
                return _flatten(message.get("content"))
        return ""

    def all_text(self) -> str:
        return "\n".join(_flatten(m.get("content")) for m in self.body.get("messages", []))


def _flatten(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_flatten(part) for part in content)
    if isinstance(content, dict):
        if "text" in content:
            return str(content["text"])
        if "content" in content:
            return _flatten(content["content"])
    return ""


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


class MessagesStandin:
    """`with MessagesStandin() as api:` serves on `api.url` until the block ends."""

    def __init__(self, replies: list[Reply] | None = None, keep_alive: bool = False) -> None:
        """`keep_alive`: streamed answers are chunked on a kept-alive connection, as the real
        API's are (else each ends by closing its connection)."""
        self.replies: list[Reply] = list(replies or [])
        self.keep_alive = keep_alive
        self.requests: list[Request] = []
        self.first_stall = threading.Event()  # set when a stalled stream has sent its blocks
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._messages = itertools.count(1)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self.replies.extend(replies)

    def message_requests(self) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path.startswith("/v1/messages")]

    def __enter__(self) -> MessagesStandin:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _next_reply(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            if self.replies:
                return self.replies.pop(0)
        return text("Done.")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _read_body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length", "0")))

            def _json(
                self, status: int, document: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                body = json.dumps(document).encode()
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_HEAD(self) -> None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                self._json(404, {"type": "error", "error": {"type": "not_found_error"}})

            def do_POST(self) -> None:
                raw = self._read_body()
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                path = self.path.split("?")[0]
                request = Request(time.monotonic(), self.path, dict(self.headers.items()), body)
                if path == "/v1/messages/count_tokens":
                    with standin._lock:
                        standin.requests.append(request)
                    self._json(200, {"input_tokens": 1000})
                    return
                if path != "/v1/messages":
                    self._json(404, {"type": "error", "error": {"type": "not_found_error"}})
                    return
                reply = standin._next_reply(request)
                try:
                    self._answer(reply, body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def _answer(self, reply: Reply, body: dict[str, Any]) -> None:
                if reply.status != 200:
                    self._json(
                        reply.status,
                        {
                            "type": "error",
                            "error": {"type": reply.error_type, "message": reply.message},
                        },
                        reply.headers,
                    )
                    return
                message_id = f"msg_standin_{next(standin._messages):04d}"
                usage = {"input_tokens": reply.input_tokens, "output_tokens": 1}
                if not body.get("stream"):
                    self._json(
                        200,
                        {
                            "id": message_id,
                            "type": "message",
                            "role": "assistant",
                            "model": body.get("model", MODEL),
                            "content": reply.blocks,
                            "stop_reason": reply.stop_reason,
                            "stop_sequence": None,
                            "usage": {
                                "input_tokens": reply.input_tokens,
                                "output_tokens": reply.output_tokens,
                            },
                        },
                    )
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                if standin.keep_alive:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                send = self._send
                send(
                    "message_start",
                    {
                        "type": "message_start",
                        "message": {
                            "id": message_id,
                            "type": "message",
                            "role": "assistant",
                            "model": body.get("model", MODEL),
                            "content": [],
                            "stop_reason": None,
                            "stop_sequence": None,
                            "usage": usage,
                        },
                    },
                )
                for index, block in enumerate(reply.blocks):
                    self._stream_block(index, block)
                if reply.stall:
                    standin.first_stall.set()
                    standin._released.wait()
                    self.close_connection = True
                    return
                send(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                        "usage": {"output_tokens": reply.output_tokens},
                    },
                )
                send("message_stop", {"type": "message_stop"})
                if standin.keep_alive:
                    self.wfile.write(b"0\r\n\r\n")

            def _stream_block(self, index: int, block: dict[str, Any]) -> None:
                send = self._send
                if block["type"] == "text":
                    start = {"type": "text", "text": ""}
                    delta = {"type": "text_delta", "text": block["text"]}
                else:
                    start = {**block, "input": {}}
                    delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
                send(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": start},
                )
                send(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
                send("content_block_stop", {"type": "content_block_stop", "index": index})

            def _send(self, name: str, data: dict[str, Any]) -> None:
                event = _event(name, data)
                if standin.keep_alive:
                    event = b"%x\r\n%s\r\n" % (len(event), event)
                self.wfile.write(event)
                self.wfile.flush()

        return Handler


def cli_environment(
    api: MessagesStandin,
    monkeypatch: pytest.MonkeyPatch,
    home: Path | None = None,
    subscription: bool = False,
) -> None:
    """The service's own environment (which the agents' is built from) for the real CLI: the
    stand-in as the Messages API, an API key or a subscription login, a fresh HOME if given."""
    if home is not None:
        home.mkdir()
        monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
    if subscription:  # a login from `claude setup-token`: the CLI reads the usage-limit headers
        monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
        monkeypatch.setenv("CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat01-standin")
    else:
        monkeypatch.delenv("CLAUDE_CODE_OAUTH_TOKEN", raising=False)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-standin")
    monkeypatch.setenv("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")

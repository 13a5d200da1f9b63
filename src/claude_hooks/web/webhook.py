"""`POST /webhook` (Forgejo and Gitea deliveries), a plain ASGI handler, and the deliveries
API."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from claude_hooks.errors import NotFoundError
from claude_hooks.forge.webhook import BodyHmac, is_signed
from claude_hooks.service.history import delivery_rows
from claude_hooks.service.intake import Answer
from claude_hooks.service.runtime import Service
from claude_hooks.service.views import MAX_OFFSET, delivery_view
from claude_hooks.web.auth import require_token
from claude_hooks.web.body_budget import BodyBudget
from claude_hooks.web.headers import HEADERS

api = APIRouter(dependencies=[Depends(require_token)])


Headerlist = list[tuple[bytes, bytes]]


async def _answer(send: Send, answer: Answer, extra: Headerlist | None = None) -> None:
    """The JSON answer, with the security headers every other route gets from middleware."""
    content = orjson.dumps(answer.body)
    headers = [
        (b"content-length", str(len(content)).encode()),
        (b"content-type", b"application/json"),
        *(extra or []),
        *HEADERS,
    ]
    if answer.retry_after is not None:
        headers.append((b"retry-after", str(answer.retry_after).encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


def _busy(limit: int) -> Answer:
    return Answer(
        503,
        {
            "status": "rejected",
            "error": f"too many webhook bodies arriving at once (more than "
            f"server.max_pending_body_bytes, {limit} bytes, unchecked): retry shortly",
        },
    )


class _Disconnected(Exception):
    """The sender went away before its body was in: there is no one to answer."""


class _Full(Exception):
    """The budget of unchecked body bytes is spent."""


async def _body(
    receive: Receive, limit: int, pending: BodyBudget, body: bytearray, mac: BodyHmac | None
) -> int | None:
    """Read the body into `body`, taking its bytes from `pending` and updating `mac`; the size
    it reached if that exceeds `limit`, else None. Raises `_Disconnected` or `_Full`."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk: bytes = message.get("body", b"")
        if chunk:
            if len(body) + len(chunk) > limit:
                return len(body) + len(chunk)
            if not pending.take(len(chunk)):
                raise _Full
            body += chunk
            if mac is not None:
                mac.update(chunk)
        if not message.get("more_body", False):
            return None


class Webhook:
    """`POST /webhook` as a plain ASGI app: no routing, middleware or dependency injection on
    the hottest path (see `web.app.App`)."""

    def __init__(self, service: Service, pending: BodyBudget) -> None:
        self.service = service
        self.pending = pending

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await webhook(self.service, self.pending, scope, receive, send)


async def webhook(
    service: Service, pending: BodyBudget, scope: Scope, receive: Receive, send: Send
) -> None:
    """The body is read only from a signed request, within
    `server.read_timeout`, its HMAC computed as it arrives, its bytes held within
    `server.max_pending_body_bytes`; 413, 408 and 503 are answered as soon as they are known."""
    intake = service.intake
    server = service.config.server
    headers = Headers(scope=scope)
    client = scope.get("client")
    remote = client[0] if client else None
    if (intake.secret is None and not intake.insecure) or (
        intake.secret is not None and not is_signed(headers)
    ):
        # Refused without reading the body.
        await _answer(send, await intake.receive(headers, b"", remote))
        return
    limit = server.max_body_bytes
    too_large = f"body larger than server.max_body_bytes ({limit} bytes)"
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        await _answer(send, await intake.reject(413, too_large, headers, int(declared), remote))
        return
    mac = BodyHmac(intake.secret) if intake.secret is not None else None
    body = bytearray()
    try:
        try:
            async with asyncio.timeout(server.read_timeout):
                oversize = await _body(receive, limit, pending, body, mac)
        except TimeoutError:
            seconds = server.read_timeout
            reason = f"the body did not arrive within server.read_timeout ({seconds:g} s)"
            answer = await intake.reject(408, reason, headers, len(body), remote)
            await _answer(send, answer, [(b"connection", b"close")])
            return
        except _Full:
            await _answer(send, _busy(pending.limit), [(b"retry-after", b"5")])
            return
        except _Disconnected:
            return
        if oversize is not None:
            await _answer(send, await intake.reject(413, too_large, headers, oversize, remote))
            return
        answer = await intake.receive(
            headers, bytes(body), remote, mac.hexdigest() if mac is not None else None
        )
    finally:
        pending.give_back(len(body))
    await _answer(send, answer)


@api.get("/api/deliveries", summary="Recent webhook deliveries, newest first")
async def list_deliveries(
    request: Request,
    outcome: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any]:
    service: Service = request.app.state.service
    spooled = [entry.record for entry in service.intake.spool.waiting]
    total, rows = await delivery_rows(service.store, outcome, limit, offset, spooled)
    return {"total": total, "limit": limit, "offset": offset, "deliveries": rows}


@api.get("/api/deliveries/{delivery_id}", summary="One delivery, with its body")
async def get_delivery(delivery_id: str, request: Request) -> dict[str, Any]:
    service: Service = request.app.state.service
    record = await service.store.intake.get_delivery(delivery_id)
    if record is None:
        raise NotFoundError(f"no delivery with id {delivery_id!r}")
    return delivery_view(record, with_body=True)


@api.post("/api/deliveries/{delivery_id}/replay", summary="Run a delivery through the flows again")
async def replay_delivery(delivery_id: str, request: Request) -> JSONResponse:
    service: Service = request.app.state.service
    answer = await service.intake.replay(delivery_id)
    return JSONResponse(answer.body, status_code=answer.status)

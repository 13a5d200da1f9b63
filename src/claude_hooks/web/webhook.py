"""`POST /webhook` (Forgejo and Gitea deliveries) and the deliveries API."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from claude_hooks.errors import NotFoundError
from claude_hooks.forgejo.webhook import BodyHmac, is_signed
from claude_hooks.history import delivery_rows
from claude_hooks.service import Service
from claude_hooks.views import MAX_OFFSET, delivery_view
from claude_hooks.web.auth import require_token
from claude_hooks.web.pending import PendingBodies

router = APIRouter()
api = APIRouter(dependencies=[Depends(require_token)])


async def _too_large(service: Service, request: Request, size: int) -> JSONResponse:
    limit = service.config.server.max_body_bytes
    reason = f"body larger than server.max_body_bytes ({limit} bytes)"
    answer = await service.intake.reject(413, reason, request.headers, size, _remote(request))
    return JSONResponse(answer.body, status_code=answer.status)


def _remote(request: Request) -> str | None:
    return request.client.host if request.client is not None else None


def _busy(limit: int) -> JSONResponse:
    return JSONResponse(
        {
            "status": "rejected",
            "error": f"too many webhook bodies arriving at once (more than "
            f"server.max_pending_body_bytes, {limit} bytes, unchecked): retry shortly",
        },
        status_code=503,
        headers={"Retry-After": "5"},
    )


async def _slow(service: Service, request: Request, size: int) -> JSONResponse:
    seconds = service.config.server.read_timeout
    reason = f"the body did not arrive within server.read_timeout ({seconds:g} s)"
    answer = await service.intake.reject(408, reason, request.headers, size, _remote(request))
    return JSONResponse(answer.body, status_code=answer.status, headers={"Connection": "close"})


@router.post(
    "/webhook",
    summary="Receive a Forgejo or Gitea delivery",
    responses={202: {"description": "queued"}, 200: {"description": "ignored or duplicate"}},
)
async def webhook(request: Request) -> JSONResponse:
    """The body is read only from a signed request, within `server.read_timeout`, its HMAC
    computed as it arrives, its bytes held within `server.max_pending_body_bytes`."""
    service: Service = request.app.state.service
    intake = service.intake
    server = service.config.server
    if (intake.secret is None and not intake.insecure) or (
        intake.secret is not None and not is_signed(request.headers)
    ):
        # Refused without reading the body.
        answer = await intake.receive(request.headers, b"", _remote(request))
        return JSONResponse(answer.body, status_code=answer.status)
    limit = server.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return await _too_large(service, request, int(declared))
    pending: PendingBodies = request.app.state.pending_bodies
    body_hmac = BodyHmac(intake.secret) if intake.secret is not None else None
    body = bytearray()
    try:
        try:
            async with asyncio.timeout(server.read_timeout):
                async for chunk in request.stream():
                    if len(body) + len(chunk) > limit:
                        return await _too_large(service, request, len(body) + len(chunk))
                    if not pending.take(len(chunk)):
                        return _busy(pending.limit)
                    body += chunk
                    if body_hmac is not None:
                        body_hmac.update(chunk)
        except TimeoutError:
            return await _slow(service, request, len(body))
        answer = await intake.receive(
            request.headers,
            bytes(body),
            _remote(request),
            body_hmac.hexdigest() if body_hmac is not None else None,
        )
    finally:
        pending.give_back(len(body))
    return JSONResponse(answer.body, status_code=answer.status)


@api.get("/api/deliveries", summary="Recent webhook deliveries, newest first")
async def list_deliveries(
    request: Request,
    outcome: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any]:
    service: Service = request.app.state.service
    total, rows = await delivery_rows(service.store, outcome, limit, offset)
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

"""`POST /webhook` (Forgejo and Gitea deliveries) and the deliveries API."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from claude_hooks.errors import NotFoundError
from claude_hooks.history import delivery_rows
from claude_hooks.service import Service
from claude_hooks.views import MAX_OFFSET, delivery_view
from claude_hooks.web.auth import require_token

router = APIRouter()
api = APIRouter(dependencies=[Depends(require_token)])


async def _too_large(service: Service, request: Request, size: int) -> JSONResponse:
    limit = service.config.server.max_body_bytes
    reason = f"body larger than server.max_body_bytes ({limit} bytes)"
    answer = await service.intake.reject(413, reason, request.headers, size, _remote(request))
    return JSONResponse(answer.body, status_code=answer.status)


def _remote(request: Request) -> str | None:
    return request.client.host if request.client is not None else None


@router.post(
    "/webhook",
    summary="Receive a Forgejo or Gitea delivery",
    responses={202: {"description": "queued"}, 200: {"description": "ignored or duplicate"}},
)
async def webhook(request: Request) -> JSONResponse:
    service: Service = request.app.state.service
    limit = service.config.server.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return await _too_large(service, request, int(declared))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return await _too_large(service, request, size)
        chunks.append(chunk)
    answer = await service.intake.receive(request.headers, b"".join(chunks), _remote(request))
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

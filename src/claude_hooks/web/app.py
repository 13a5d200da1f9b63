"""The FastAPI application: routes, and errors turned into JSON with a message."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from claude_hooks import __version__
from claude_hooks.errors import (
    ClaudeHooksError,
    ConfigError,
    ConflictError,
    InvalidInputError,
    NoInstanceError,
    NotFoundError,
    PeerUnreachableError,
)
from claude_hooks.service.runtime import Service
from claude_hooks.service.storage_faults import RETRY_AFTER
from claude_hooks.store.faults import STORAGE_FAULTS, StorageUnavailable, fault_reason
from claude_hooks.web import api, dashboard, logs, metrics, spend, webhook
from claude_hooks.web.auth import require_token
from claude_hooks.web.body_budget import BodyBudget
from claude_hooks.web.headers import SecurityHeaders
from claude_hooks.web.relay_signature import Verifier, relay_key

log = logging.getLogger(__name__)

_STATUS: list[tuple[type[ClaudeHooksError], int]] = [
    (NotFoundError, 404),
    (ConflictError, 409),
    (NoInstanceError, 409),
    (InvalidInputError, 400),
    (ConfigError, 400),
    (PeerUnreachableError, 502),
]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _on_package_error(_request: Request, exc: Exception) -> JSONResponse:
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return _error(status, str(exc))
    log.error("request failed: %s", exc)
    return _error(500, str(exc))


async def _on_http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))


async def _on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "query")
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return _error(400, "invalid request: " + "; ".join(problems))


# What answers without the database: liveness, readiness, the metrics (in part), the login.
_WITHOUT_DATABASE = frozenset({"/healthz", "/readyz", "/metrics", "/login", "/logout"})


async def _database_answers(request: Request) -> None:
    """While the database does not answer (see `/readyz`), a request that needs it is refused
    at once with the reason, instead of waiting for its own timeout."""
    if request.url.path in _WITHOUT_DATABASE:
        return
    service: Service = request.app.state.service
    problem = service.readiness.database_problem()
    if problem is not None:
        raise StorageUnavailable(problem)


class App(FastAPI):
    """FastAPI, except that `POST /webhook` goes straight to its plain ASGI handler: the
    middleware, routing and dependency injection cost more than the delivery's own work."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/webhook" and scope["method"] == "POST":
            await self.state.webhook(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(service: Service) -> App:
    """The app serves a service that the caller starts and stops (the CLI, or a test)."""
    token = service.config.server.api_token
    # No /docs or /redoc: they load their scripts from a CDN, and the service works offline.
    app = App(
        title="claude-hooks",
        version=__version__,
        summary="Forgejo and Gitea webhooks in, pooled Claude Code agents out.",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(_database_answers)],
    )
    app.state.service = service
    app.state.api_token = token.get_secret_value() if token is not None else ""
    server = service.config.server
    app.state.relay_verifier = (
        None
        if token is None
        else Verifier(relay_key(app.state.api_token), server.node, lambda: server.node_url)
    )
    # Set by the server when it stops, so live streams (dashboard, log follow) end at once.
    app.state.closing = asyncio.Event()
    app.state.body_budget = BodyBudget(service.config.server.max_pending_body_bytes)
    app.state.webhook = webhook.Webhook(service, app.state.body_budget)
    # Reached through the middleware only by other methods, which it answers 405.
    app.router.routes.append(Route("/webhook", app.state.webhook, methods=["POST"]))
    app.add_exception_handler(ClaudeHooksError, _on_package_error)

    async def on_storage_fault(_request: Request, exc: Exception) -> JSONResponse:
        reason = fault_reason(exc)
        service.faults.note(reason)
        return _error(503, f"{reason}: retry shortly", {"Retry-After": str(RETRY_AFTER)})

    for fault in STORAGE_FAULTS:
        app.add_exception_handler(fault, on_storage_fault)

    async def on_unavailable(_request: Request, exc: Exception) -> JSONResponse:
        return _error(503, f"{exc}: retry shortly", {"Retry-After": str(RETRY_AFTER)})

    app.add_exception_handler(StorageUnavailable, on_unavailable)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)

    @app.get("/healthz", summary="Liveness: answers once the service has started")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "node": service.node.name,
            "leading": service.node.leading,
            "agents": len(service.pool.workers),
            "uptime_s": round(service.clock() - service.started_at, 3),
            # Still 200 while agents wait (webhooks are answered): why they wait, else null.
            "agents_paused": service.pool.low_disk(),
        }

    @app.get("/readyz", summary="Readiness: 503 with the reason while the database is away")
    async def readyz() -> JSONResponse:
        problem = service.readiness.database_problem()
        body: dict[str, Any] = {
            "status": "ready" if problem is None else "unready",
            "node": service.node.name,
            "spooled": len(service.intake.spool.waiting),
        }
        if problem is None:
            return JSONResponse(body)
        body["reason"] = problem
        return JSONResponse(body, 503, headers={"Retry-After": str(RETRY_AFTER)})

    @app.get(
        "/openapi.json",
        include_in_schema=False,
        dependencies=[Depends(require_token)],
    )
    async def openapi() -> dict[str, Any]:
        return app.openapi()

    app.include_router(webhook.api)
    app.include_router(api.router)
    app.include_router(logs.router)
    app.include_router(metrics.router)
    app.include_router(spend.router)
    dashboard.install(app, service.config.server)
    app.add_middleware(SecurityHeaders)
    return app

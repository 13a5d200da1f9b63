"""Bearer-token authentication for everything but the webhook and the health check."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request


def require_token(request: Request) -> None:
    expected: str = request.app.state.api_token
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(
            401,
            "missing api token: send 'Authorization: Bearer <server.api_token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise HTTPException(
            401, "wrong api token: use server.api_token", headers={"WWW-Authenticate": "Bearer"}
        )

"""Authentication for everything but the webhook and the health check.

Two ways in: the `Authorization: Bearer` header with `server.api_token` (API clients,
Prometheus), or the dashboard's HttpOnly cookie set by its login form; the log of a task is
also given to another node's signed relay (`web/relay_signature.py`). The cookie holds a
random session id, the session is kept by the service (`web/sessions.py`) and ends at logout
or on expiry. A cookie-authenticated request that changes state must also carry
`X-Requested-With: claude-hooks`, which another origin (another port on the same host is
"same-site" to the browser) cannot send without a CORS preflight this service never grants.
"""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request

from claude_hooks.web.relay_signature import HEADER as SIGNATURE_HEADER
from claude_hooks.web.relay_signature import Verifier
from claude_hooks.web.sessions import Sessions

COOKIE_NAME = "claude_hooks_session"
CSRF_HEADER = "x-requested-with"
CSRF_VALUE = "claude-hooks"
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def token_matches(given: str, expected: str) -> bool:
    return bool(expected) and hmac.compare_digest(given.strip().encode(), expected.encode())


def check_request(request: Request) -> tuple[int, str] | None:
    """None if the request is authenticated, else the status and the message to answer."""
    expected: str = request.app.state.api_token
    if not expected:
        return 401, "server.api_token is not set: nothing can be authenticated"
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return 401, "malformed Authorization header: send 'Authorization: Bearer <token>'"
        if not token_matches(token, expected):
            return 401, "wrong api token: use server.api_token"
        return None
    cookie = request.cookies.get(COOKIE_NAME)
    if cookie is None:
        return 401, "missing api token: send 'Authorization: Bearer <server.api_token>'"
    sessions: Sessions = request.app.state.sessions
    if not sessions.valid(cookie):
        return (
            401,
            "the dashboard session has ended (logout, expiry or restart): log in again",
        )
    if request.method not in _SAFE_METHODS and request.headers.get(CSRF_HEADER) != CSRF_VALUE:
        return (
            403,
            f"requests authenticated by cookie need the header 'X-Requested-With: {CSRF_VALUE}'",
        )
    return None


def require_token(request: Request) -> None:
    problem = check_request(request)
    if problem is not None:
        status, message = problem
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        raise HTTPException(status, message, headers=headers)


def require_token_or_signature(request: Request) -> None:
    """`require_token`, or a request another node relayed, signed for this one."""
    header = request.headers.get(SIGNATURE_HEADER)
    if header is None:
        require_token(request)
        return
    verifier: Verifier | None = request.app.state.relay_verifier
    if verifier is None:
        problem: str | None = "server.api_token is not set: nothing can be authenticated"
    else:
        raw = request.scope.get("raw_path") or request.url.path.encode()
        query = request.scope.get("query_string", b"")
        target = raw.split(b"?", 1)[0].decode("latin-1")
        if query:
            target += "?" + query.decode("latin-1")
        problem = verifier.check(request.method, target, header)
    if problem is not None:
        raise HTTPException(401, problem)

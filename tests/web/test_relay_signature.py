"""The signature of a request relayed between nodes: good once, for one node, one URL and a
short time; the key is derived from the API token and is not it."""

from __future__ import annotations

import pytest

from claude_hooks.web.relay_signature import WINDOW, Verifier, relay_key, sign

KEY = relay_key("shared-api-token")
URL = "http://node-b:8080"
TARGET = "/api/tasks/abc/log?follow=false&format=text&tail=5"


def verifier(now: float = 1000.0) -> Verifier:
    return Verifier(KEY, "node-b", lambda: URL, clock=lambda: now)


def test_a_signed_request_is_taken_once() -> None:
    header = sign(KEY, "GET", URL + TARGET, "node-b", now=1000.0)
    assert "shared-api-token" not in header and KEY.hex() not in header
    check = verifier()
    assert check.check("GET", TARGET, header) is None
    assert "already taken once" in (check.check("GET", TARGET, header) or "")


@pytest.mark.parametrize(
    ("method", "url", "node", "target", "signed_at", "expected"),
    [
        ("GET", URL, "node-a", TARGET, 1000.0, "signed for node 'node-a'"),
        ("GET", "http://127.0.0.1:18777", "node-b", TARGET, 1000.0, "does not match"),
        ("GET", URL, "node-b", "/api/tasks/other/log", 1000.0, "does not match"),
        ("POST", URL, "node-b", TARGET, 1000.0, "does not match"),
        ("GET", URL, "node-b", TARGET, 1000.0 - WINDOW - 1, "off this node's clock"),
        ("GET", URL, "node-b", TARGET, 1000.0 + WINDOW + 1, "off this node's clock"),
    ],
    ids=["other-node", "other-url", "other-path", "other-method", "old", "future"],
)
def test_a_signature_for_anything_else_is_refused(
    method: str, url: str, node: str, target: str, signed_at: float, expected: str
) -> None:
    header = sign(KEY, method, url + target, node, signed_at)
    assert expected in (verifier().check("GET", TARGET, header) or "")


def test_another_token_or_a_malformed_header_is_refused() -> None:
    other = sign(relay_key("another-token"), "GET", URL + TARGET, "node-b", now=1000.0)
    assert "does not match" in (verifier().check("GET", TARGET, other) or "")
    for header in ("", "v1", "v1 node=node-b at=x nonce=n mac=m", "Bearer shared-api-token"):
        assert "malformed" in (verifier().check("GET", TARGET, header) or "")
    unknown = sign(KEY, "GET", URL + TARGET, "node-b", now=1000.0).replace("v1", "v9", 1)
    assert "unknown scheme" in (verifier().check("GET", TARGET, unknown) or "")

"""Turn one webhook request (headers + raw body) into a verified, decoded `Delivery`.

Pure: no HTTP server and no database, so the web layer, replays and tests share one code path.
The signature is checked before any JSON is parsed, because an unauthenticated body is
attacker-controlled input. Facts (header names, what is signed) are in
`docs/forgejo-protocol.md` §1.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal
from urllib.parse import unquote_to_bytes

from claude_hooks.errors import ClaudeHooksError
from claude_hooks.forge.names import DELIVERY_ID_RULE, valid_delivery_id

# Forgejo sends every name of each header; Gitea lacks the X-Forgejo-* ones. First match wins.
_DELIVERY_HEADERS = (
    "x-forgejo-delivery",
    "x-gitea-delivery",
    "x-gogs-delivery",
    "x-github-delivery",
)
_EVENT_HEADERS = ("x-forgejo-event", "x-gitea-event", "x-gogs-event", "x-github-event")
_EVENT_TYPE_HEADERS = (
    "x-forgejo-event-type",
    "x-gitea-event-type",
    "x-gogs-event-type",
    "x-github-event-type",
)
_HEX_SIGNATURE_HEADERS = ("x-forgejo-signature", "x-gitea-signature", "x-gogs-signature")
_HUB_SIGNATURE_HEADER = "x-hub-signature-256"

_JSON = "application/json"
_FORM = "application/x-www-form-urlencoded"


class WebhookError(ClaudeHooksError):
    """A delivery that cannot be accepted; `status` is the HTTP status to answer with."""

    status: ClassVar[int]


class MalformedDeliveryError(WebhookError):
    """The request is not a well-formed delivery (headers, content type, JSON, fields)."""

    status = 400


class SignatureError(WebhookError):
    """The request is not signed with the configured secret."""

    status = 401


class PayloadTooLargeError(WebhookError):
    """The body is larger than the service accepts."""

    status = 413


@dataclass(frozen=True, slots=True)
class Delivery:
    """A verified webhook delivery.

    `body` is the exact JSON the signature covers: the HTTP body for `application/json`, the
    decoded `payload` field for form deliveries. Store and replay these bytes, never a
    re-serialisation, so a replay still verifies.
    """

    delivery_id: str
    flavor: Literal["forgejo", "gitea"]
    event: str
    event_type: str
    payload: dict[str, Any]
    body: bytes
    text: str  # `body` decoded (it is UTF-8: checked), as the deliveries table keeps it


def decode_delivery(
    headers: Mapping[str, str],
    body: bytes,
    secret: bytes | None,
    *,
    max_body_bytes: int | None = None,
    body_hmac: str | None = None,
) -> Delivery:
    """Verify and decode one delivery, or raise the `WebhookError` that says what is wrong.

    `secret=None` skips signature verification (the service's insecure mode).
    `max_body_bytes` bounds the raw body; the web layer should also refuse early on
    Content-Length, this check covers chunked bodies. `body_hmac` is the hex HMAC-SHA256 of
    `body` with `secret` if the caller computed it while the body arrived (`BodyHmac`).
    """
    if max_body_bytes is not None and len(body) > max_body_bytes:
        raise PayloadTooLargeError(
            f"body is {len(body)} bytes, more than the {max_body_bytes} accepted: "
            "raise server.max_body_bytes if such deliveries are expected"
        )
    lowered = {name.lower(): value for name, value in headers.items()}
    signed = _signed_bytes(lowered.get("content-type", ""), body)
    if secret is not None:
        streamed = body_hmac if signed is body else None
        _verify_signature(lowered, signed, secret, streamed)
    delivery_id = _first(lowered, _DELIVERY_HEADERS)
    if delivery_id is None:
        raise MalformedDeliveryError(
            "missing X-Forgejo-Delivery (or X-Gitea-Delivery) header: "
            "send deliveries from a Forgejo or Gitea webhook"
        )
    if not valid_delivery_id(delivery_id):
        raise MalformedDeliveryError(
            f"X-Forgejo-Delivery {delivery_id[:80]!r} is not a delivery id ({DELIVERY_ID_RULE}): "
            "send deliveries from a Forgejo or Gitea webhook"
        )
    event_type = _first(lowered, _EVENT_TYPE_HEADERS) or _first(lowered, _EVENT_HEADERS)
    if event_type is None:
        raise MalformedDeliveryError(
            "missing X-Forgejo-Event-Type (or X-Gitea-Event-Type) header: "
            "send deliveries from a Forgejo or Gitea webhook"
        )
    flavor: Literal["forgejo", "gitea"] = (
        "forgejo" if any(name.startswith("x-forgejo-") for name in lowered) else "gitea"
    )
    text = _utf8(signed)
    return Delivery(
        delivery_id=delivery_id,
        flavor=flavor,
        # Forgejo's `package` event has an empty coarse name: the fine type stands in for it.
        event=_first(lowered, _EVENT_HEADERS) or event_type,
        event_type=event_type,
        payload=_parse_object(text),
        body=signed,
        text=text,
    )


def _first(headers: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    """The first non-blank value among `names` (lower-case), stripped."""
    for name in names:
        value = headers.get(name, "").strip()
        if value:
            return value
    return None


def _signed_bytes(content_type: str, body: bytes) -> bytes:
    """The bytes the signature covers, which for form deliveries are not the HTTP body."""
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type in ("", _JSON):
        return body
    if media_type == _FORM:
        return _form_payload(body)
    raise MalformedDeliveryError(
        f"unsupported Content-Type {content_type!r}: set the webhook's content type to "
        f"{_JSON} (or {_FORM})"
    )


def _form_payload(body: bytes) -> bytes:
    """The raw bytes of the single `payload` field; decoded by hand to keep them exact."""
    values = [
        unquote_to_bytes(value.replace(b"+", b" "))
        for name, _, value in (pair.partition(b"=") for pair in body.split(b"&"))
        if name == b"payload"
    ]
    if len(values) != 1:
        raise MalformedDeliveryError(
            f"form body must have exactly one 'payload' field, found {len(values)}: "
            f"send it as payload=<urlencoded JSON>, or use {_JSON}"
        )
    return values[0]


def is_signed(headers: Mapping[str, str]) -> bool:
    """Whether the request carries a signature at all: one without is refused unread."""
    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        _signature(lowered)
    except SignatureError:
        return False
    return True


class BodyHmac:
    """The HMAC-SHA256 of a body, updated chunk by chunk as it arrives, so the signature check
    costs nothing once the last byte is in."""

    def __init__(self, secret: bytes) -> None:
        self._hmac = hmac.new(secret, digestmod=hashlib.sha256)

    def update(self, chunk: bytes) -> None:
        self._hmac.update(chunk)

    def hexdigest(self) -> str:
        return self._hmac.hexdigest()


def _verify_signature(
    headers: Mapping[str, str], signed: bytes, secret: bytes, streamed: str | None
) -> None:
    source, given = _signature(headers)
    digest = (
        streamed if streamed is not None else hmac.new(secret, signed, hashlib.sha256).hexdigest()
    )
    expected = digest.encode("ascii")
    # backslashreplace: a header can hold any text, and compare_digest needs bytes.
    if not hmac.compare_digest(expected, given.lower().encode("utf-8", "backslashreplace")):
        raise SignatureError(
            f"{source} does not match the body: make the webhook's secret equal "
            "claude-hooks' webhook_secret, and post the body unchanged"
        )


def _signature(headers: Mapping[str, str]) -> tuple[str, str]:
    """The header that carries the hex HMAC-SHA256, and that hex."""
    for name in _HEX_SIGNATURE_HEADERS:
        value = headers.get(name, "").strip()
        if value:
            return _display(name), value
    hub_value = headers.get(_HUB_SIGNATURE_HEADER, "").strip()
    if hub_value.lower() in ("", "sha256="):
        # Forgejo sends these headers empty (or `sha256=`) when the webhook has no secret.
        raise SignatureError(
            "missing X-Forgejo-Signature (or X-Gitea-Signature / X-Hub-Signature-256) "
            "header: set a secret on the webhook, the same as claude-hooks' webhook_secret"
        )
    algorithm, _, given = hub_value.partition("=")
    if algorithm.lower() != "sha256" or not given.strip():
        raise SignatureError(
            f"X-Hub-Signature-256 must be 'sha256=<hex>', got {hub_value[:80]!r}: "
            "send deliveries from a Forgejo or Gitea webhook"
        )
    return "X-Hub-Signature-256", given.strip()


def _display(name: str) -> str:
    """`x-gitea-signature` -> `X-Gitea-Signature`, for messages."""
    return "-".join(part.capitalize() for part in name.split("-"))


def _utf8(signed: bytes) -> str:
    try:
        return signed.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedDeliveryError(
            f"payload is not UTF-8 (bad byte at offset {exc.start}): send JSON in UTF-8"
        ) from None


def _parse_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedDeliveryError(
            f"payload is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): "
            "send the webhook's JSON body unchanged"
        ) from None
    except (ValueError, RecursionError) as exc:
        # Integers beyond Python's digit limit, or nesting deeper than the parser's stack.
        raise MalformedDeliveryError(
            f"payload JSON cannot be decoded ({exc}): send the webhook's JSON body unchanged"
        ) from None
    if "\\ud" in text or "\\uD" in text:
        # An escaped lone surrogate decodes to a string that can be neither stored nor sent on.
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise MalformedDeliveryError(
                "payload JSON holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff): "
                "send the webhook's JSON body unchanged"
            ) from None
    if not isinstance(value, dict):
        raise MalformedDeliveryError(
            f"payload must be a JSON object, got {_json_kind(value)}: "
            "send deliveries from a Forgejo or Gitea webhook"
        )
    return value


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"

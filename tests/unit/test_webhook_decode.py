"""Decoding real-shaped deliveries byte for byte, and refusing every kind of bad request."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any
from urllib.parse import quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claude_hooks.errors import ClaudeHooksError
from claude_hooks.forge.webhook import (
    Delivery,
    MalformedDeliveryError,
    PayloadTooLargeError,
    SignatureError,
    WebhookError,
    decode_delivery,
)
from tests.support import FIXTURES

INDEX: list[dict[str, Any]] = json.loads((FIXTURES / "INDEX.json").read_text())["fixtures"]
NAMES = [entry["name"] for entry in INDEX]
SECRET = b"fixture-secret"
FORM = "application/x-www-form-urlencoded"
SIGNATURE_HEADERS = (
    "X-Forgejo-Signature",
    "X-Gitea-Signature",
    "X-Gogs-Signature",
    "X-Hub-Signature-256",
    "X-Hub-Signature",
)


def fixture(name: str) -> tuple[dict[str, str], bytes]:
    headers: dict[str, str] = json.loads((FIXTURES / f"{name}.headers.json").read_text())
    return headers, (FIXTURES / f"{name}.json").read_bytes()


def sign(body: bytes, secret: bytes = SECRET) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def resigned(headers: dict[str, str], body: bytes) -> dict[str, str]:
    """`headers` with every signature replaced by one over `body` (for bodies the test built)."""
    digest = sign(body)
    out = {k: v for k, v in headers.items() if k not in SIGNATURE_HEADERS}
    return out | {"X-Forgejo-Signature": digest, "X-Hub-Signature-256": f"sha256={digest}"}


def without(headers: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in names}


ISSUE_HEADERS, ISSUE_BODY = fixture("issues_opened")


@pytest.mark.parametrize("entry", INDEX, ids=NAMES)
def test_every_fixture_decodes_byte_for_byte(entry: dict[str, Any]) -> None:
    headers, body = fixture(entry["name"])
    delivery = decode_delivery(headers, body, SECRET)
    assert delivery == Delivery(
        delivery_id=entry["delivery"],
        flavor=entry["flavor"],
        event=entry["event_header"],
        event_type=entry["event_type_header"],
        payload=json.loads(body),
        body=body,
        text=body.decode("utf-8"),
    )
    assert delivery.payload.get("action") == entry["action"]
    assert sign(body) == entry["sha256_hmac_hex"]


def test_error_classes_carry_http_status() -> None:
    assert issubclass(WebhookError, ClaudeHooksError)
    assert (MalformedDeliveryError.status, SignatureError.status) == (400, 401)
    assert PayloadTooLargeError.status == 413


@pytest.mark.parametrize(
    "headers",
    [
        without(ISSUE_HEADERS, *SIGNATURE_HEADERS),
        # What Forgejo sends for a webhook without a secret.
        ISSUE_HEADERS
        | {name: "" for name in SIGNATURE_HEADERS[:3]}
        | {"X-Hub-Signature-256": "sha256=", "X-Hub-Signature": "sha1="},
        without(ISSUE_HEADERS, *SIGNATURE_HEADERS) | {"X-Hub-Signature": "sha1=" + "0" * 40},
    ],
    ids=["absent", "empty", "sha1-only"],
)
def test_unsigned_delivery_is_401_and_says_to_set_a_secret(headers: dict[str, str]) -> None:
    with pytest.raises(SignatureError, match=r"missing X-Forgejo-Signature .*set a secret"):
        decode_delivery(headers, ISSUE_BODY, SECRET)


@pytest.mark.parametrize(
    "bad",
    ["0" * 64, sign(ISSUE_BODY)[:-1], sign(ISSUE_BODY) + "00", "not hex", "é" * 64],
    ids=["zeros", "short", "long", "garbage", "non-ascii"],
)
def test_wrong_signature_is_401(bad: str) -> None:
    headers = ISSUE_HEADERS | {name: bad for name in SIGNATURE_HEADERS[:3]}
    with pytest.raises(SignatureError, match="X-Forgejo-Signature does not match the body"):
        decode_delivery(headers, ISSUE_BODY, SECRET)


def test_wrong_secret_is_401() -> None:
    with pytest.raises(SignatureError, match="webhook_secret"):
        decode_delivery(ISSUE_HEADERS, ISSUE_BODY, b"another-secret")


def test_truncated_body_fails_the_signature_before_any_parsing() -> None:
    with pytest.raises(SignatureError):
        decode_delivery(ISSUE_HEADERS, ISSUE_BODY[:-1], SECRET)


def test_signature_is_checked_before_the_json() -> None:
    with pytest.raises(SignatureError):
        decode_delivery(ISSUE_HEADERS, b"{not json", SECRET)


def test_insecure_mode_skips_verification() -> None:
    headers = without(ISSUE_HEADERS, *SIGNATURE_HEADERS)
    assert decode_delivery(headers, ISSUE_BODY, None).payload["issue"]["number"] == 17
    wrong = ISSUE_HEADERS | {"X-Forgejo-Signature": "0" * 64}
    assert decode_delivery(wrong, ISSUE_BODY, None).body == ISSUE_BODY


def test_insecure_mode_still_rejects_a_truncated_body_as_malformed() -> None:
    with pytest.raises(MalformedDeliveryError, match=r"not valid JSON \(.* line \d+ column \d+\)"):
        decode_delivery(ISSUE_HEADERS, ISSUE_BODY[:-1], None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"action": "opened",', "payload is not valid JSON"),
        (b"", "payload is not valid JSON"),
        (b'\xef\xbb\xbf{"a": 1}', "payload is not valid JSON"),
        (b'{"title": "caf\xe9"}', r"payload is not UTF-8 \(bad byte at offset 14\)"),
        (b"[1, 2]", "payload must be a JSON object, got an array"),
        (b'"text"', "got a string"),
        (b"42", "got a number"),
        (b"true", "got a boolean"),
        (b"null", "got null"),
        (b"[" * 100_000 + b"]" * 100_000, "payload JSON cannot be decoded"),
        (b'{"n": ' + b"9" * 5000 + b"}", "payload JSON cannot be decoded"),
    ],
    ids=[
        "invalid",
        "empty",
        "bom",
        "latin-1",
        "array",
        "string",
        "number",
        "boolean",
        "null",
        "deep",
        "huge-int",
    ],
)
def test_signed_but_malformed_body_is_400(body: bytes, message: str) -> None:
    with pytest.raises(MalformedDeliveryError, match=message) as caught:
        decode_delivery(resigned(ISSUE_HEADERS, body), body, SECRET)
    assert caught.value.status == 400


@pytest.mark.parametrize("content_type", ["text/plain", "multipart/form-data; boundary=x"])
def test_unknown_content_type_is_400(content_type: str) -> None:
    headers = ISSUE_HEADERS | {"Content-Type": content_type}
    with pytest.raises(MalformedDeliveryError, match=r"unsupported Content-Type .*json"):
        decode_delivery(headers, ISSUE_BODY, SECRET)


@pytest.mark.parametrize(
    "content_type", [None, "", "application/json; charset=utf-8", "APPLICATION/JSON"]
)
def test_json_content_type_variants_and_absence_read_json(content_type: str | None) -> None:
    headers = without(ISSUE_HEADERS, "Content-Type")
    if content_type is not None:
        headers["Content-Type"] = content_type
    assert decode_delivery(headers, ISSUE_BODY, SECRET).body == ISSUE_BODY


def form_body(json_bytes: bytes) -> bytes:
    """What Forgejo sends for a "form" webhook: Go's url.Values{"payload": ...}.Encode()."""
    return b"payload=" + quote_plus(json_bytes).encode("ascii")


@pytest.mark.parametrize("name", NAMES)
def test_form_delivery_verifies_over_the_json_not_the_form(name: str) -> None:
    headers, body = fixture(name)
    delivery = decode_delivery(headers | {"Content-Type": FORM}, form_body(body), SECRET)
    assert delivery.body == body
    assert delivery.payload == json.loads(body)


def test_form_delivery_signed_over_the_form_body_is_401() -> None:
    form = form_body(ISSUE_BODY)
    headers = resigned(ISSUE_HEADERS, form) | {"Content-Type": FORM}
    with pytest.raises(SignatureError):
        decode_delivery(headers, form, SECRET)


@pytest.mark.parametrize(
    ("form", "found"),
    [(b"", 0), (b"other=1", 0), (b"payload=%7B%7D&payload=%7B%7D", 2)],
    ids=["empty", "no-payload", "two-payloads"],
)
def test_form_without_exactly_one_payload_field_is_400(form: bytes, found: int) -> None:
    headers = ISSUE_HEADERS | {"Content-Type": f"{FORM}; charset=utf-8"}
    with pytest.raises(MalformedDeliveryError, match=f"one 'payload' field, found {found}"):
        decode_delivery(headers, form, SECRET)


@pytest.mark.parametrize(
    "case", [str.lower, str.upper, str.swapcase], ids=["lower", "upper", "swap"]
)
def test_header_names_match_in_any_case(case: Any) -> None:
    headers, body = fixture("pull_request_review_approved")
    delivery = decode_delivery({case(k): v for k, v in headers.items()}, body, SECRET)
    assert (delivery.flavor, delivery.event, delivery.event_type) == (
        "forgejo",
        "pull_request_approved",
        "pull_request_review_approved",
    )


def test_gitea_only_headers() -> None:
    headers, body = fixture("issues_assigned_dev")
    gitea = {k: v for k, v in headers.items() if k.startswith(("Content-", "X-Gitea-"))}
    delivery = decode_delivery(gitea, body, SECRET)
    assert delivery.flavor == "gitea"
    assert delivery.delivery_id == headers["X-Gitea-Delivery"]
    assert (delivery.event, delivery.event_type) == ("issues", "issue_assign")


def test_hub_signature_256_alone_verifies() -> None:
    hub = {
        "X-GitHub-Delivery": "d-1",
        "X-GitHub-Event": "issues",
        "X-Hub-Signature-256": "SHA256=" + sign(ISSUE_BODY).upper(),
    }
    delivery = decode_delivery(hub, ISSUE_BODY, SECRET)
    assert (delivery.delivery_id, delivery.flavor, delivery.event_type) == (
        "d-1",
        "gitea",
        "issues",
    )


@pytest.mark.parametrize("value", ["sha1=" + "0" * 64, "sha256", "abc"])
def test_malformed_hub_signature_is_401(value: str) -> None:
    headers = without(ISSUE_HEADERS, *SIGNATURE_HEADERS) | {"X-Hub-Signature-256": value}
    with pytest.raises(SignatureError, match="must be 'sha256=<hex>'"):
        decode_delivery(headers, ISSUE_BODY, SECRET)


def test_wrong_hub_signature_names_its_header() -> None:
    headers = without(ISSUE_HEADERS, *SIGNATURE_HEADERS) | {"x-hub-signature-256": "sha256=00"}
    with pytest.raises(SignatureError, match="X-Hub-Signature-256 does not match"):
        decode_delivery(headers, ISSUE_BODY, SECRET)


def test_missing_delivery_id_is_400() -> None:
    headers = {k: v for k, v in ISSUE_HEADERS.items() if not k.endswith("-Delivery")}
    with pytest.raises(MalformedDeliveryError, match="missing X-Forgejo-Delivery"):
        decode_delivery(headers, ISSUE_BODY, SECRET)


def test_missing_event_headers_is_400() -> None:
    headers = {k: v for k, v in ISSUE_HEADERS.items() if "-Event" not in k}
    with pytest.raises(MalformedDeliveryError, match="missing X-Forgejo-Event-Type"):
        decode_delivery(headers, ISSUE_BODY, SECRET)


def test_event_type_falls_back_to_the_coarse_event() -> None:
    headers = {k: v for k, v in ISSUE_HEADERS.items() if not k.endswith("-Event-Type")}
    assert decode_delivery(headers, ISSUE_BODY, SECRET).event_type == "issues"


def test_empty_coarse_event_takes_the_event_type() -> None:
    """Forgejo's `package` event sends an empty X-Forgejo-Event."""
    headers = {k: v for k, v in ISSUE_HEADERS.items() if "-Event" not in k}
    headers |= {"X-Forgejo-Event": "", "X-Forgejo-Event-Type": "package"}
    delivery = decode_delivery(headers, ISSUE_BODY, SECRET)
    assert (delivery.event, delivery.event_type) == ("package", "package")


def test_body_over_the_limit_is_413() -> None:
    limit = len(ISSUE_BODY)
    assert decode_delivery(ISSUE_HEADERS, ISSUE_BODY, SECRET, max_body_bytes=limit).body
    with pytest.raises(PayloadTooLargeError, match="max_body_bytes") as caught:
        decode_delivery(ISSUE_HEADERS, ISSUE_BODY + b" ", SECRET, max_body_bytes=limit)
    assert caught.value.status == 413


@given(index=st.integers(0, len(ISSUE_BODY) - 1), flip=st.integers(1, 255))
def test_any_changed_byte_fails_verification(index: int, flip: int) -> None:
    mutated = bytearray(ISSUE_BODY)
    mutated[index] ^= flip
    with pytest.raises(SignatureError):
        decode_delivery(ISSUE_HEADERS, bytes(mutated), SECRET)


@given(cut=st.integers(0, len(ISSUE_BODY) - 1), extra=st.binary(max_size=8))
def test_any_truncation_or_extension_fails_verification(cut: int, extra: bytes) -> None:
    with pytest.raises(SignatureError):
        decode_delivery(ISSUE_HEADERS, ISSUE_BODY[:cut] + extra, SECRET)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@given(
    payload=st.dictionaries(st.text(), json_values, max_size=4),
    secret=st.binary(min_size=1, max_size=32),
    as_form=st.booleans(),
)
def test_any_signed_object_round_trips(
    payload: dict[str, Any], secret: bytes, as_form: bool
) -> None:
    body = json.dumps(payload, ensure_ascii=False, indent=2).encode()
    headers = {
        "X-Gitea-Delivery": "d",
        "X-Gitea-Event-Type": "issues",
        "X-Gitea-Signature": sign(body, secret),
        "Content-Type": FORM if as_form else "application/json",
    }
    delivery = decode_delivery(headers, form_body(body) if as_form else body, secret)
    assert (delivery.payload, delivery.body) == (payload, body)

"""Signed deliveries of any shape never make the intake answer 500 or lose what it acknowledged."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from claude_hooks.service.runtime import Service
from claude_hooks.web.app import create_app
from tests.conftest import ServiceFactory
from tests.support import GateRunner, fixture, forgejo_headers, make_config

EVENT_TYPES = [
    "issue_assign",
    "issues",
    "issue_comment",
    "pull_request_comment",
    "pull_request",
    "pull_request_assign",
    "pull_request_sync",
    "pull_request_review_request",
    "pull_request_review_approved",
    "pull_request_review_rejected",
    "pull_request_review_comment",
    "status",
    "action_run_failure",
    "action_run_success",
    "push",
    "wiki",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.text(max_size=20)
    | st.sampled_from(["\ud800", "a\udfffb"]),  # lone surrogates, as JSON escapes
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)


def mutated(name: str, path: list[str], value: Any) -> bytes:
    """A shared fixture with one field somewhere replaced by an arbitrary value."""
    data = json.loads(fixture(name)[0])
    node = data
    for key in path[:-1]:
        if not isinstance(node, dict) or key not in node:
            break
        node = node[key]
    if isinstance(node, dict) and path:
        node[path[-1]] = value
    return json.dumps(data).encode()


FIELDS = [
    ["action"],
    ["issue"],
    ["issue", "number"],
    ["issue", "assignees"],
    ["issue", "title"],
    ["sender"],
    ["sender", "login"],
    ["repository"],
    ["repository", "full_name"],
    ["pull_request"],
    ["pull_request", "head"],
    ["pull_request", "user"],
    ["review"],
    ["comment", "body"],
    ["requested_reviewer"],
    ["sha"],
    ["state"],
    ["run"],
]


@pytest.fixture
async def client(start_service: ServiceFactory, tmp_path: Path) -> AsyncIterator[Any]:
    config = make_config(
        tmp_path,
        agents=[{"name": "dev-alpha", "type": "dev"}, {"name": "boss-1", "type": "boss"}],
        security={"allowed_senders": ["alice", "bob"]},
    )
    service: Service = await start_service(config, runner=GateRunner())
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http, service


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    event_type=st.sampled_from(EVENT_TYPES),
    base=st.sampled_from(
        [
            "issues_assigned_dev",
            "pull_request_review_rejected",
            "issue_comment_created_mention",
            "status_failure",
            "action_run_failure",
            "pull_request_synchronized",
        ]
    ),
    field=st.sampled_from(FIELDS),
    value=json_values,
    delivery=st.uuids(),
)
async def test_no_signed_delivery_gets_a_500(
    client: Any, event_type: str, base: str, field: list[str], value: Any, delivery: Any
) -> None:
    http, service = client
    body = mutated(base, field, value)
    answer = await http.post(
        "/webhook", content=body, headers=forgejo_headers(event_type, body, str(delivery))
    )
    assert answer.status_code in (200, 202, 400, 503), answer.text
    payload = answer.json()
    if answer.status_code in (200, 202) and payload.get("status") != "duplicate":
        record = await service.store.intake.get_delivery(str(delivery))
        assert record is not None
        assert record.task_ids == [t["id"] for t in payload.get("tasks", [])]
        for task_id in record.task_ids:
            assert await service.store.get_task(task_id) is not None
    if answer.status_code == 400:
        assert payload["error"]

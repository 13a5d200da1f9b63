"""`GET /metrics`: the Prometheus text format, parsed back, after real deliveries and tasks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from claude_hooks.service.runtime import Service
from tests.conftest import ServiceFactory
from tests.support import fixture, forgejo_headers, wait_until
from tests.web.test_dashboard_api import AUTH, LoggingGate, dashboard_config, serve


@pytest.fixture
def runner() -> LoggingGate:
    return LoggingGate(cost=0.5)


@pytest.fixture
async def service(start_service: ServiceFactory, runner: LoggingGate, tmp_path: Path) -> Service:
    started: Service = await start_service(dashboard_config(tmp_path), runner=runner)
    return started


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(service) as url, httpx.AsyncClient(base_url=url) as client:
        yield client


async def scrape(client: httpx.AsyncClient) -> dict[str, list[Sample]]:
    answer = await client.get("/metrics", headers=AUTH)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=")
    samples: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    found = [s.value for s in samples.get(name, []) if s.labels == labels]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


async def test_metrics_need_the_token(client: httpx.AsyncClient) -> None:
    answer = await client.get("/metrics")
    assert answer.status_code == 401
    assert "api token" in answer.json()["error"]


async def test_metrics_of_an_idle_service(client: httpx.AsyncClient, service: Service) -> None:
    samples = await scrape(client)
    assert value(samples, "claude_hooks_instances", type="dev", state="idle") == 2
    assert value(samples, "claude_hooks_instances", type="dev", state="busy") == 0
    assert value(samples, "claude_hooks_busy_instances", type="boss") == 0
    assert value(samples, "claude_hooks_queue_depth", type="dev", agent="dev-alpha") == 0
    assert value(samples, "claude_hooks_waiting_beside_idle", type="dev") == 0
    assert value(samples, "claude_hooks_nodes", state="live") == 1
    assert value(samples, "claude_hooks_nodes", state="dead") == 0
    assert value(samples, "claude_hooks_instances_unheld", type="dev") == 0
    assert value(samples, "claude_hooks_node_leading", node=service.node.name) == 1
    assert "claude_hooks_queue_wait_seconds_count" not in samples
    assert value(samples, "claude_hooks_start_time_seconds") == service.started_at
    assert "claude_hooks_deliveries_total" not in samples
    assert value(samples, "claude_hooks_loop_failures_total", loop="node-heartbeat") == 0
    assert value(samples, "claude_hooks_loop_failures_total", loop="outbox") == 0


async def test_metrics_follow_deliveries_and_tasks(
    client: httpx.AsyncClient, service: Service, runner: LoggingGate
) -> None:
    for name in ["issues_assigned_dev", "push", "issues_opened"]:
        body, headers = fixture(name)
        assert (await client.post("/webhook", content=body, headers=headers)).is_success
    bad = b'{"action": "opened"}'
    rejected = forgejo_headers("issues", bad, "d-1", secret="wrong")
    assert (await client.post("/webhook", content=bad, headers=rejected)).status_code == 401
    queued = [
        (await client.post("/api/tasks", headers=AUTH, json=task)).json()["id"]
        for task in [
            {"type": "reviewer", "kind": "review_pr", "repo": "acme/widget", "number": 5},
            {"type": "reviewer", "kind": "review_pr", "repo": "acme/widget", "number": 6},
            {"type": "reviewer", "kind": "review_pr", "repo": "acme/widget", "number": 7},
        ]
    ]
    await wait_until(lambda: len(runner.started) == 2)
    samples = await scrape(client)
    delivered = "claude_hooks_deliveries_total"
    assert value(samples, delivered, event_type="issue_assign", outcome="queued") == 1
    assert value(samples, delivered, event_type="push", outcome="ignored") == 1
    assert value(samples, delivered, event_type="issues", outcome="ignored") == 1
    assert value(samples, "claude_hooks_webhooks_rejected_total", status="401") == 1
    assert value(samples, "claude_hooks_busy_instances", type="dev") == 1
    assert value(samples, "claude_hooks_busy_instances", type="reviewer") == 1
    assert value(samples, "claude_hooks_queue_depth", type="reviewer", agent="reviewer-1") == 2
    assert "claude_hooks_tasks_finished_total" not in samples

    await client.post(f"/api/tasks/{queued[2]}/cancel", headers=AUTH)
    runner.release_all()
    await wait_until(lambda: queued[1] in runner.started)
    runner.release_all()
    await wait_until(lambda: not any(w.current for w in service.pool.workers.values()))
    samples = await scrape(client)
    finished = "claude_hooks_tasks_finished_total"
    assert value(samples, finished, type="reviewer", kind="review_pr", outcome="succeeded") == 2
    assert value(samples, finished, type="reviewer", kind="review_pr", outcome="cancelled") == 1
    assert value(samples, finished, type="dev", kind="work_issue", outcome="succeeded") == 1
    durations = "claude_hooks_task_duration_seconds"
    assert value(samples, durations + "_count", type="reviewer", kind="review_pr") == 2
    assert value(samples, durations + "_bucket", type="reviewer", kind="review_pr", le="+Inf") == 2
    assert value(samples, durations + "_bucket", type="reviewer", kind="review_pr", le="5.0") == 2
    cost = "claude_hooks_agent_cost_usd_total"
    assert value(samples, cost, type="reviewer", agent="reviewer-1") == 1.0
    latency = "claude_hooks_delivery_to_start_seconds"
    assert value(samples, latency + "_count", type="dev") == 1
    assert 0 <= value(samples, latency + "_sum", type="dev") < 5
    assert value(samples, latency + "_bucket", type="dev", le="5.0") == 1
    waits = "claude_hooks_queue_wait_seconds"
    assert value(samples, waits + "_count", type="reviewer") == 2  # the cancelled one never ran
    assert value(samples, waits + "_bucket", type="reviewer", le="0.1") >= 1  # the first at once
    assert value(samples, waits + "_bucket", type="reviewer", le="+Inf") == 2
    assert value(samples, "claude_hooks_queue_depth", type="reviewer", agent="reviewer-1") == 0

"""The overview shows elastic types: their range, what the rule could not do, and its changes."""

from __future__ import annotations

from pathlib import Path

import httpx

from claude_hooks.service.runtime import Service
from tests.conftest import ServiceFactory
from tests.dashboard_fixtures import AUTH, serve
from tests.support import GateRunner, make_config, wait_until

AGENTS = [{"name": f"dev-{n}", "type": "dev"} for n in ("alpha", "bravo", "charlie")]


async def test_the_overview_says_what_the_elastic_rule_did_and_could_not_do(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    config = make_config(
        tmp_path,
        agents=AGENTS,
        server={"capacity": 3},  # the three declared instances fill the node
        types={
            "dev": {"runner": "command", "command": ["true"], "instances": "1..2"},
            "reviewer": {"runner": "command", "command": ["true"], "instances": 1},
        },
    )
    service: Service = await start_service(config, runner=GateRunner())

    async def added() -> bool:
        return bool(await service.store.elastic.changes(5))

    await wait_until(added)  # the leader's first pass: at once
    async with serve(service) as url, httpx.AsyncClient(base_url=url, headers=AUTH) as client:
        page = (await client.get("/")).text
        for words in [
            "elastic 1..2",
            "the 3 declared instances exceed the maximum 2: none are added",
            "elastic 1..1",
            "reviewer-auto-1",
            "added <b>reviewer-auto-1</b>: 0 instance(s), below the minimum 1",
            # The node's capacity is taken: the added instance waits for a node with room.
            "reviewer-auto-1: waiting for a node with room",
            "waiting for a node with room: no live node holds it",
        ]:
            assert words in page, words
        listed = {a["name"]: a["auto"] for a in (await client.get("/api/agents")).json()}
        assert listed == {"dev-alpha": False, "dev-bravo": False, "dev-charlie": False,
                          "reviewer-auto-1": True}  # fmt: skip

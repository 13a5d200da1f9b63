"""The tests' last resort for PostgreSQL: a throwaway cluster from Debian's binaries."""

from __future__ import annotations

import asyncio
import glob

import pytest
from sqlalchemy.engine import make_url

from claude_hooks.store.sql import SqlStore
from tests import pg


@pytest.mark.skipif(
    not glob.glob("/usr/lib/postgresql/*/bin/initdb"),
    reason="Debian's postgresql package is not installed (.ci/run installs it)",
)
def test_a_throwaway_cluster_serves_a_migrated_database_and_is_gone_after() -> None:
    with pg.throwaway_cluster() as server, pg.own_database(server) as url:
        socket_dir = str(make_url(url).query["host"])
        assert socket_dir.startswith("/")  # its own socket directory, no TCP port taken

        async def use() -> list[str]:
            store = await SqlStore.open(url)
            try:
                await store.add_agent("dev-a", "dev", 1.0)
                return [agent.name for agent in await store.list_agents()]
            finally:
                await store.close()

        assert asyncio.run(use()) == ["dev-a"]
    assert not glob.glob(f"{socket_dir}/*")

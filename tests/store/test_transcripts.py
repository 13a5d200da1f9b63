"""Transcripts in the database: the SDK's SessionStore conformance suite over each backend."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk.testing import run_session_store_conformance

from claude_hooks.agents.runners.transcripts import SessionTranscripts, materialize
from claude_hooks.store.schema import transcript_entries
from claude_hooks.store.sql import SqlStore


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    opened = await SqlStore.open(database_url)
    yield opened
    await opened.close()


def _emptied(store: SqlStore) -> Any:
    """A fresh store for each contract: the same database, emptied."""
    with store.engine.begin() as conn:
        conn.execute(transcript_entries.delete())
    return store.transcripts


async def test_the_store_passes_the_sdk_conformance_suite(store: SqlStore) -> None:
    await run_session_store_conformance(lambda: _emptied(store))


async def test_a_session_keys_view_passes_it_too_and_files_its_workdir_under_the_key(
    store: SqlStore, tmp_path: Path
) -> None:
    def view(workdir: Path) -> SessionTranscripts:
        return SessionTranscripts(store.transcripts, workdir, "dev:acme/widget:17")

    await run_session_store_conformance(lambda: (_emptied(store), view(tmp_path / "a"))[1])
    # Two nodes' workdirs of one session key: different paths, one transcript.
    on_a, on_b = view(tmp_path / "a" / "workdir"), view(tmp_path / "b" / "workdir")
    assert on_a.local != on_b.local
    entry: Any = {"type": "user", "uuid": "u1"}
    await on_a.append({"project_key": on_a.local, "session_id": "s"}, [entry])
    assert await on_b.load({"project_key": on_b.local, "session_id": "s"}) == [entry]
    assert await store.transcripts.load(
        {"project_key": "claude-hooks:dev:acme/widget:17", "session_id": "s"}
    ) == [entry]


async def test_an_entry_is_stored_once_and_entries_without_uuid_every_time(
    store: SqlStore,
) -> None:
    key: Any = {"project_key": "p", "session_id": "s"}
    first = [{"type": "user", "uuid": "u1", "n": 1}, {"type": "title", "title": "t"}]
    await store.transcripts.append(key, first)
    # A retried batch that had partly landed: u1 again, u2 new, the untagged entry again.
    await store.transcripts.append(key, [*first, {"type": "assistant", "uuid": "u2"}])
    assert await store.transcripts.load(key) == [
        first[0],
        first[1],
        first[1],
        {"type": "assistant", "uuid": "u2"},
    ]


async def test_a_resume_writes_the_stored_transcript_only_over_a_missing_or_older_copy(
    store: SqlStore, tmp_path: Path
) -> None:
    view = SessionTranscripts(store.transcripts, tmp_path / "workdir", "dev:acme/widget:17")
    key: Any = {"project_key": view.local, "session_id": "s"}
    config = tmp_path / "config"
    local = config / "projects" / view.local / "s.jsonl"
    assert not await materialize(view, config, "s", None), "nothing stored: nothing written"
    await view.append(key, [{"uuid": "u1", "type": "user"}, {"uuid": "u2", "type": "assistant"}])

    assert await materialize(view, config, "s", None)  # missing here
    lines = [json.loads(line) for line in local.read_text().splitlines()]
    assert lines == [{"type": "user", "uuid": "u1"}, {"type": "assistant", "uuid": "u2"}]
    assert local.read_text().startswith('{"type":"user"'), "type first, as the CLI writes"

    with local.open("a") as out:  # this node went on (mirroring failed, say)
        out.write('{"type":"user","uuid":"u3"}\n')
    assert not await materialize(view, config, "s", None), "a copy ahead is kept"
    assert "u3" in local.read_text()

    await view.append(key, [{"uuid": "u9", "type": "user"}])  # another node went on
    assert await materialize(view, config, "s", None)
    assert [json.loads(line)["uuid"] for line in local.read_text().splitlines()] == [
        "u1",
        "u2",
        "u9",
    ]


async def test_a_link_left_in_the_transcripts_place_is_replaced_not_followed(
    store: SqlStore, tmp_path: Path
) -> None:
    view = SessionTranscripts(store.transcripts, tmp_path / "workdir", "dev:acme/widget:17")
    await view.append({"project_key": view.local, "session_id": "s"}, [{"type": "user"}])
    config = tmp_path / "config"
    folder = config / "projects" / view.local
    folder.mkdir(parents=True)
    outside = tmp_path / "outside.txt"
    outside.write_text("not the agent's\n")
    (folder / "s.jsonl").symlink_to(outside)
    os.mkfifo(folder / "elsewhere")  # a FIFO is never read either
    assert await materialize(view, config, "s", None)
    assert outside.read_text() == "not the agent's\n"
    assert not (folder / "s.jsonl").is_symlink()
    assert (folder / "s.jsonl").read_text() == '{"type":"user"}\n'
    (folder / "s.jsonl").unlink()
    os.rename(folder / "elsewhere", folder / "s.jsonl")
    assert await materialize(view, config, "s", None)
    assert (folder / "s.jsonl").read_text() == '{"type":"user"}\n'

"""One session key's Claude transcripts in the database, as its runs see them.

The CLI names a transcript's project after its working directory (`projectKey`), and each
node has its own data dir, so the same session's workdir has a different path, hence a
different project key, on every node. `SessionTranscripts` files the workdir's project under
the session key instead (`claude-hooks:dev:acme/widget:17`, which no sanitised path can be),
so whichever node runs the key next finds the conversation; other keys pass through.

Before a resume, `materialize` writes the stored transcript where the CLI looks for it (the
session's own `CLAUDE_CONFIG_DIR`, which its sandbox sees) when this node's copy is missing
or behind the store's. The SDK's own materialisation is not used: it writes to the service's
`/tmp` (the sandbox has its own) and moves `CLAUDE_CONFIG_DIR` there for the run, so the
session's local transcript would fall behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from claude_agent_sdk import (
    SessionKey,
    SessionListSubkeysKey,
    SessionStore,
    SessionStoreEntry,
    SessionStoreListEntry,
    project_key_for_directory,
)

from claude_hooks.agents.sandbox import Sandbox
from claude_hooks.store.transcripts import SqlSessionStore

PREFIX = "claude-hooks:"


class SessionTranscripts(SessionStore):
    """The database's transcripts with this workdir's project filed under the session key."""

    def __init__(self, store: SqlSessionStore, workdir: Path, session_key: str) -> None:
        self.store = store
        self.local = project_key_for_directory(workdir)
        self.portable = PREFIX + session_key

    def _project(self, project_key: str) -> str:
        return self.portable if project_key == self.local else project_key

    def _key(self, key: SessionKey | SessionListSubkeysKey) -> Any:
        return {**key, "project_key": self._project(key["project_key"])}

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        await self.store.append(self._key(key), entries)

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        return await self.store.load(self._key(key))

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        return await self.store.list_sessions(self._project(project_key))

    async def delete(self, key: SessionKey) -> None:
        await self.store.delete(self._key(key))

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        return await self.store.list_subkeys(self._key(key))

    # Not implemented (the SDK's marker for that); the SDK lists sessions through `load`.
    list_session_summaries = SessionStore.list_session_summaries


def _uuids(lines: list[Any]) -> set[str]:
    return {e["uuid"] for e in lines if isinstance(e, dict) and isinstance(e.get("uuid"), str)}


def _read_local(path: Path) -> list[Any] | None:
    """The local transcript's entries; None unless it is a regular file (the agent may have
    left a link or a FIFO there, which is replaced, never read)."""
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return None
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    found: list[Any] = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            found.append(json.loads(line))
    return found


def _real_dir(path: Path) -> None:
    """`path` as a folder of its own: a link the agent left in its place is removed."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    path.mkdir(exist_ok=True)


async def materialize(
    transcripts: SessionTranscripts,
    config_dir: Path,
    session_id: str,
    sandbox: Sandbox | None,
) -> bool:
    """Write the stored main transcript to `<config_dir>/projects/<project>/<id>.jsonl` when
    the local copy is missing or lacks stored entries; True if it was written."""
    stored = await transcripts.load({"project_key": transcripts.local, "session_id": session_id})
    if not stored:
        return False
    folder = config_dir / "projects" / transcripts.local
    return _write_if_behind(folder, folder / f"{session_id}.jsonl", stored, sandbox)


def _write_if_behind(
    folder: Path, target: Path, stored: list[SessionStoreEntry], sandbox: Sandbox | None
) -> bool:
    local = _read_local(target)
    if local is not None and len(local) >= len(stored) and _uuids(stored) <= _uuids(local):
        return False
    for path in (folder.parent.parent, folder.parent, folder):
        _real_dir(path)
    handle, partial = tempfile.mkstemp(dir=folder, prefix=".materialize-", suffix=".jsonl")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            for entry in stored:
                first = {"type": entry["type"], **entry} if "type" in entry else entry
                out.write(json.dumps(first, separators=(",", ":"), ensure_ascii=False) + "\n")
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    if sandbox is not None:
        sandbox.give(folder.parent, folder, target)
    return True

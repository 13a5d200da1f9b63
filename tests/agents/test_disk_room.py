"""Room kept for the spool: below `server.min_free_disk` a task log stops after its head."""

from __future__ import annotations

from pathlib import Path

import pytest

from claude_hooks.agents.capped_log import CappedLog
from claude_hooks.agents.disk_room import DiskRoom
from claude_hooks.config import size_bytes


def test_the_disk_room_compares_the_free_space_with_the_minimum(tmp_path: Path) -> None:
    assert DiskRoom(tmp_path, 0).ok()
    assert not DiskRoom(tmp_path, size_bytes("1000T")).ok()


def test_a_task_log_stops_after_its_head_while_the_disk_is_short(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    short = [False]
    path = tmp_path / "task.log"
    with CappedLog(path, 1024 * 1024, room=lambda: not short[0]) as log:
        log.write(b"the head\n")
        short[0] = True  # the disk fills up
        log.write(b"more output\n")
        short[0] = False  # what was refused stays refused: the log is not patchy
        log.write(b"later output\n")
    assert path.read_bytes() == b"the head\n"
    assert "stops here: the disk is short of room" in caplog.text

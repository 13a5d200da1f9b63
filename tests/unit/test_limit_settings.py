"""The limits' settings: sizes as systemd and Docker write them, defaults, and one line
naming the key for a size that is not one."""

from __future__ import annotations

from pathlib import Path

import pytest

from claude_hooks.config import TypeConfig, load_config, size_bytes
from claude_hooks.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4G", 4 << 30), ("512M", 512 << 20), ("20GiB", 20 << 30), ("1.5k", 1536), ("100", 100)],
)
def test_sizes_are_powers_of_1024(text: str, expected: int) -> None:
    assert size_bytes(text) == expected


def test_the_defaults_and_a_number_of_bytes() -> None:
    config = TypeConfig(runner="command", command=["true"], max_memory=1 << 20)  # type: ignore[arg-type]
    assert (config.max_processes, config.max_memory, config.max_disk) == (512, "1048576", "20G")


def test_a_size_that_is_not_one_names_its_key(tmp_path: Path) -> None:
    path = tmp_path / "claude-hooks.toml"
    path.write_text('[server]\nmin_free_disk = "plenty"\n')
    with pytest.raises(ConfigError) as raised:
        load_config(path, {})
    assert "server.min_free_disk" in str(raised.value)
    assert "'plenty' is not a size: write a number of bytes or e.g. 512M, 4G" in str(raised.value)

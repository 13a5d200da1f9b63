"""The capacity plot: p90 wait against pool size, one line per policy, one panel per type."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from claude_hooks.capacity.report import Summary
from claude_hooks.errors import ClaudeHooksError, InvalidInputError


class PlotUnavailableError(ClaudeHooksError):
    def __init__(self) -> None:
        super().__init__(
            "--plot needs matplotlib, an optional dependency: "
            "pip install 'claude-hooks[plot]' (or matplotlib>=3.7)"
        )


def write_plot(summaries: Sequence[Summary], path: Path, title: str) -> None:
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailableError() from None
    matplotlib.use("Agg")
    from matplotlib import pyplot

    summaries = [s for s in summaries if not s.elastic]  # p90 against fixed sizes only
    types = sorted({s.type for s in summaries})
    figure, axes = pyplot.subplots(
        1, len(types), figsize=(6.4 * len(types), 4.2), squeeze=False, layout="constrained"
    )
    for axis, agent_type in zip(axes[0], types, strict=True):
        rows = [s for s in summaries if s.type == agent_type]
        for policy in dict.fromkeys(s.policy for s in rows):
            points = sorted((s.instances, s.wait_p90 / 60.0) for s in rows if s.policy == policy)
            axis.plot(*zip(*points, strict=True), marker="o", label=policy)
        axis.set_title(f"type {agent_type}")
        axis.set_xlabel("instances")
        axis.set_ylabel("p90 wait (minutes)")
        axis.set_xticks(sorted({s.instances for s in rows}))
        axis.set_yscale("symlog", linthresh=1.0)
        axis.set_ylim(bottom=0)
        axis.grid(True, alpha=0.3)
        axis.legend(title="policy")
    figure.suptitle(title, fontsize=10)
    try:
        figure.savefig(path, dpi=110)
    except OSError as exc:
        raise InvalidInputError(f"--plot {path}: cannot write it ({exc.strerror or exc})") from None
    finally:
        pyplot.close(figure)

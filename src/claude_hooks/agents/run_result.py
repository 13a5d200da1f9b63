"""How a run ended: the value a runner returns and the workspace amends after it.

Apart from the runner protocol (`runners.base`) because the workspace, which the runners
use, reads and amends it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RunResult:
    succeeded: bool
    exit_code: int | None = None
    result: str | None = None
    error: str | None = None
    cost_usd: float | None = None
    claude_session_id: str | None = None
    details: dict[str, object] = field(default_factory=dict)

"""The API breaker: a type whose runs keep failing for API reasons pauses until a probe succeeds.

Pure: the caller supplies the time. Closed → (N API failures in a row) → open until a time →
one probe run → closed on any answer from the API, open again with twice the delay on
another API failure. A usage limit that names its reset time opens the breaker until then.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

MAX_DELAY = 1800.0


class FailureKind(StrEnum):
    OVERLOADED = "overloaded"
    RATE_LIMIT = "rate_limit"
    USAGE_LIMIT = "usage_limit"
    NETWORK = "network"
    EXIT_CODE = "exit_code"


@dataclass(frozen=True, slots=True)
class ApiFailure:
    kind: FailureKind
    detail: str
    retry_at: float | None = None  # when the API said to come back, if it said


_HTTP = re.compile(r"Claude API error \(HTTP (\d{3})\)")
_USAGE_LIMIT = re.compile(r"usage limit reached\|(\d{9,11})", re.IGNORECASE)
_RESETS_AT = re.compile(r"usage limit resets at (\d{9,11})")
_LIMIT_REACHED = re.compile(r"\blimit reached\b.*\bresets\b|\bhit your\b.*\blimit\b", re.IGNORECASE)
_NETWORK = re.compile(
    r"ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENOTFOUND|EAI_AGAIN|Connection error|fetch failed"
    r"|socket hang up|network error",
    re.IGNORECASE,
)


def classify(
    runner: str, error: str | None, exit_code: int | None, exit_codes: list[int]
) -> ApiFailure | None:
    """Whether a failed run failed for an API reason (not the task's own), and which."""
    if runner == "command":
        if exit_code is not None and exit_code in exit_codes:
            return ApiFailure(FailureKind.EXIT_CODE, f"exit code {exit_code}")
        return None
    if runner != "claude" or not error:
        return None
    first = error.strip().splitlines()[0][:200] if error.strip() else error
    usage = _USAGE_LIMIT.search(error) or _RESETS_AT.search(error)
    if usage is not None:
        return ApiFailure(FailureKind.USAGE_LIMIT, first, float(usage.group(1)))
    if _LIMIT_REACHED.search(error):
        return ApiFailure(FailureKind.USAGE_LIMIT, first)
    status = _HTTP.search(error)
    if status is not None:
        code = int(status.group(1))
        if code == 429:
            return ApiFailure(FailureKind.RATE_LIMIT, first)
        if code in (500, 502, 503, 504, 529):
            return ApiFailure(FailureKind.OVERLOADED, first)
        return None
    if _NETWORK.search(error):
        return ApiFailure(FailureKind.NETWORK, first)
    return None


class Breaker:
    """One type's breaker."""

    def __init__(self, threshold: int, base_delay: float, probe_timeout: float) -> None:
        self.threshold = threshold
        self.base_delay = base_delay
        self.probe_timeout = probe_timeout
        self.failures = 0  # API failures in a row
        self.trips = 0  # openings since the last success: the backoff exponent
        self.open_until: float | None = None
        self.probe_since: float | None = None
        self.probe_task: str | None = None
        self.last: ApiFailure | None = None

    @property
    def is_open(self) -> bool:
        return self.open_until is not None

    def wait(self, now: float, task_id: str) -> float | None:
        """Seconds until a task may start, or None: start now (perhaps as the probe)."""
        if self.open_until is None:
            return None
        if now < self.open_until:
            return self.open_until - now
        if self.probe_since is not None and now < self.probe_since + self.probe_timeout:
            return self.probe_since + self.probe_timeout - now
        self.probe_since = now  # this start is the probe (a lost probe is replaced)
        self.probe_task = task_id
        return None

    def probe_lost(self, task_id: str) -> None:
        """The probe ended without a run (cancelled): another task may probe at once."""
        if self.probe_task == task_id:
            self.probe_since = None
            self.probe_task = None

    def failed(self, failure: ApiFailure, now: float) -> bool:
        """Count an API failure; True if it opened (or kept open) the breaker."""
        self.failures += 1
        self.last = failure
        probing = self.probe_since is not None
        self.probe_since = None
        self.probe_task = None
        if not probing and self.failures < self.threshold:
            return False
        self.trips += 1
        delay = min(self.base_delay * 2 ** (self.trips - 1), MAX_DELAY)
        self.open_until = max(now + delay, failure.retry_at or 0.0)
        return True

    def answered(self) -> None:
        """The API answered (the run succeeded, or failed for its own reasons): close."""
        self.failures = 0
        self.trips = 0
        self.open_until = None
        self.probe_since = None
        self.probe_task = None

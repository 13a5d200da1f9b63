"""At most `server.login_failures_per_minute` failed dashboard logins per remote address.

The api token is the only secret between a stranger and the dashboard; guessing it one form
post at a time would otherwise be free. Behind a reverse proxy every browser shares the
proxy's address, so the limit then applies to all of them together.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

WINDOW = 60.0
ADDRESSES = 10_000


class LoginLimit:
    def __init__(self, failures: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.clock = clock
        self._failed: dict[str, deque[float]] = {}

    def wait(self, address: str) -> float:
        """Seconds until `address` may try again; 0 if it may now."""
        times = self._recent(address)
        if times is None or len(times) < self.failures:
            return 0.0
        return max(0.0, times[0] + WINDOW - self.clock())

    def failed(self, address: str) -> None:
        times = self._recent(address)
        if times is None:
            while len(self._failed) >= ADDRESSES:
                del self._failed[next(iter(self._failed))]
            times = self._failed[address] = deque(maxlen=self.failures)
        times.append(self.clock())

    def succeeded(self, address: str) -> None:
        self._failed.pop(address, None)

    def _recent(self, address: str) -> deque[float] | None:
        times = self._failed.get(address)
        if times is None:
            return None
        while times and times[0] + WINDOW <= self.clock():
            times.popleft()
        return times

"""One log record, one line: fields from deliveries (names, titles, headers) cannot forge lines.

The service logs strings a stranger chose. A newline in one would start a line that looks like
the service's own; every control character in a message is written as an escape instead.
A traceback, which the service itself appends, keeps its lines.
"""

from __future__ import annotations

import logging
import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def escape(text: str) -> str:
    r"""`a\nb` -> `a\\nb`: control characters as Python escapes, everything else unchanged."""
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], text)


class OneLineFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)

"""The weekly outcome summary, posted as a comment on the issue `[report]` names.

A duty of the leading node: every few minutes it looks whether this week's summary is due
(`summary_weekday`, from `summary_hour`, in `server.timezone`) and, if so, puts the report by
type of the last seven days in the outbox (`OutcomeStore.post_summary`, once a week whatever
the nodes or restarts: the week is recorded with the letter).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from claude_hooks.config import WEEKDAYS, Config, zone_of
from claude_hooks.core.outcome_report import summarise, summary_markdown
from claude_hooks.service.loop import Loop
from claude_hooks.store.outcomes import OutcomeStore

log = logging.getLogger(__name__)

CHECK_INTERVAL = 300.0  # seconds between looks: the summary is due from an hour on
WEEK = 7 * 86400.0


class WeeklySummary(Loop):
    def __init__(
        self,
        config: Config,
        store: OutcomeStore,
        clock: Callable[[], float],
        wake_outbox: Callable[[], None],
    ) -> None:
        super().__init__("weekly-summary", CHECK_INTERVAL)
        self.config = config
        self.store = store
        self.clock = clock
        self.wake_outbox = wake_outbox

    def start(self) -> None:
        if self.config.report.summary_repository:
            super().start()

    def due(self, now: float) -> str | None:
        """This week's key (ISO year and week) when its summary is due at `now`, else None."""
        report = self.config.report
        local = dt.datetime.fromtimestamp(now, zone_of(self.config.server.timezone))
        if local.weekday() != WEEKDAYS.index(report.summary_weekday):
            return None
        if local.hour < report.summary_hour:
            return None
        year, week, _ = local.isocalendar()
        return f"{year}-W{week:02d}"

    async def run_once(self) -> None:
        await self.post()

    async def post(self) -> bool:
        """Post this week's summary if it is due and not posted yet; whether it was put."""
        now = self.clock()
        week = self.due(now)
        if week is None:
            return False
        reports = summarise(await self.store.report(now - WEEK, "type"), "type")
        zone = zone_of(self.config.server.timezone)
        first, last = (dt.datetime.fromtimestamp(t, zone).date() for t in (now - WEEK, now))
        body = summary_markdown(reports, first.isoformat(), last.isoformat())
        report = self.config.report
        poster = report.summary_as or self.config.flows.merge_type
        owner_repo = report.summary_repository
        put = await self.store.post_summary(
            week, poster, owner_repo, report.summary_issue, body, now
        )
        if put:
            log.info("weekly outcome summary %s put in the outbox for %s", week, owner_repo)
            self.wake_outbox()
        return put

"""Outages in the log as a story, not a flood: one line when it starts, one a minute while it
lasts (with counts), one when it ends.

During a CRM outage every card retry and every deferred upload used to log a line: 800 lines of
the same complaint hide the one line that matters. What each attempt says still goes to DEBUG.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

SUMMARY_INTERVAL = 60.0


class Outage:
    """One thing that can be down (an account's CRM, FreeSWITCH), logged through `logger`."""

    def __init__(self, logger: logging.Logger, what: str, consequence: str, *,
                 clock: Callable[[], float] = time.monotonic, interval: float | None = None):
        self._logger = logger
        self.what = what  # "shop: CRM"
        self._consequence = consequence  # what waits meanwhile, for the first line
        self._clock = clock
        self._interval = SUMMARY_INTERVAL if interval is None else interval
        self.since: float | None = None
        self._summarised_at = 0.0
        self.failures = 0
        self._last_reason = ""

    @property
    def ongoing(self) -> bool:
        return self.since is not None

    def failed(self, reason: str, waiting: Callable[[], str] | None = None) -> None:
        """One more failed attempt. `waiting` describes what waits (called only when a line is due)."""
        now = self._clock()
        self.failures += 1
        self._last_reason = reason
        if self.since is None:
            self.since = self._summarised_at = now
            self._logger.warning("%s unavailable (%s); %s", self.what, reason, self._consequence)
        elif now - self._summarised_at >= self._interval:
            self._summarised_at = now
            self._logger.warning("%s still unavailable after %.0f s, %d failed attempts%s (last: %s)", self.what,
                                 now - self.since, self.failures, "; " + waiting() if waiting else "", reason)
        else:
            self._logger.debug("%s unavailable: %s", self.what, reason)

    def recovered(self) -> None:
        if self.since is None:
            return
        self._logger.warning("%s available again after %.0f s and %d failed attempts", self.what,
                             self._clock() - self.since, self.failures)
        self.since = None
        self.failures = 0


def capped(ids, limit: int = 5) -> str:
    """Ids for a log line: the first few, then how many more (a list of 50 UUIDs is 2 kB)."""
    ids = list(ids)
    shown = ", ".join(ids[:limit])
    return shown if len(ids) <= limit else "%s and %d more" % (shown, len(ids) - limit)

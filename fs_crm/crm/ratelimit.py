"""retailCRM's two rate budgets (telephony, general): token buckets every client of one API key shares."""

from __future__ import annotations

import threading
import time
from typing import Callable

TELEPHONY = "telephony"
GENERAL = "general"


class _Window:
    """A bucket of `size` tokens where each spent token comes back exactly `window` seconds later.

    A classic continuously refilling bucket lets 2x the budget through across the edge of a
    1-second window, which retailCRM answers with 503; returning each token one window after it
    was spent means no window ever sees more than `size` requests.
    """

    def __init__(self, rps: float):
        if rps <= 0:
            raise ValueError("rate must be positive, got %r" % rps)
        self.size = max(1, int(rps))
        # Requests we send one window apart can still arrive closer together (network jitter),
        # so each token returns a little late.
        self.window = self.size / rps + 0.05
        # Tokens only urgent callers may take; never all of them, or background work would stall.
        self.reserve = min(max(1, round(self.size * 0.2)), self.size - 1)
        self.spent: list[float] = []  # times tokens were taken, oldest first
        self.urgent_waiting = 0

    def free(self, now: float) -> int:
        while self.spent and self.spent[0] + self.window <= now:
            self.spent.pop(0)
        return self.size - len(self.spent)


class RateLimiter:
    """Token buckets shared by every client that uses one API key.

    `telephony` (for /api/v5/telephony/*) and `general` (everything else) follow retailCRM's two
    budgets. Urgent callers (call cards, routing) are never queued behind background uploads:
    non-urgent callers only take a token while more than a reserve remains and nobody urgent
    is waiting. Waiting happens in `sleep`, which is gevent's once the process is patched.
    """

    def __init__(self, telephony_rps: float, general_rps: float,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self._buckets = {TELEPHONY: _Window(telephony_rps), GENERAL: _Window(general_rps)}
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()

    @staticmethod
    def route_of(path_or_name: str) -> str:
        """`telephony`/`general`, given a bucket name or an API path."""
        if path_or_name in (TELEPHONY, GENERAL):
            return path_or_name
        return TELEPHONY if path_or_name.startswith("/api/v5/telephony/") else GENERAL

    def acquire(self, route: str, urgent: bool) -> None:
        bucket = self._buckets[self.route_of(route)]
        with self._lock:
            bucket.urgent_waiting += urgent
        try:
            while True:
                with self._lock:
                    wait = self._take(bucket, urgent)
                if wait is None:
                    return
                self._sleep(wait)
        finally:
            with self._lock:
                bucket.urgent_waiting -= urgent

    def try_acquire(self, route: str, urgent: bool) -> bool:
        """A token if one is free right now, without waiting (for what may simply be skipped)."""
        bucket = self._buckets[self.route_of(route)]
        with self._lock:
            return self._take(bucket, urgent, waiting_self=False) is None

    def _take(self, bucket: _Window, urgent: bool, waiting_self: bool = True) -> float | None:
        """Take a token (None), or say how long to wait for one. Call with the lock held."""
        now = self._clock()
        free = bucket.free(now)
        others_urgent = bucket.urgent_waiting - (urgent and waiting_self)
        if free > (0 if urgent else bucket.reserve) and (urgent or not others_urgent):
            bucket.spent.append(now)
            return None
        # The oldest token is the next to come back; 1 ms floor so a waiter blocked only by an
        # urgent caller yields instead of spinning.
        return max(bucket.spent[0] + bucket.window - now if bucket.spent else 0.0, 0.001)

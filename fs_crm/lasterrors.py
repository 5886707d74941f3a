"""The last error per key (an account), with when it happened: /healthz shows both."""

from __future__ import annotations

import time
from typing import Callable


class LastErrors(dict):
    """A dict of key -> last error message that also remembers when each was set (`at`)."""

    def __init__(self, clock: Callable[[], float] = time.time):
        super().__init__()
        self._clock = clock
        self.at: dict[str, float] = {}

    def __setitem__(self, key: str, message: str) -> None:
        super().__setitem__(key, message)
        self.at[key] = self._clock()

    def pop(self, key: str, *default):
        self.at.pop(key, None)
        return super().pop(key, *default)

    def report(self, key: str) -> dict | None:
        """{"error": ..., "at": epoch seconds} or None."""
        if key not in self:
            return None
        return {"error": self[key], "at": self.at.get(key)}

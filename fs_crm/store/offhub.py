"""The outbox, worked on by one OS thread of its own: SQLite never runs on the gevent hub.

An fsync, a big query or a locked database takes milliseconds to seconds; on the hub that would
freeze cards, click-to-call and the ESL reader with it. A greenlet calling through `OffHubOutbox`
waits for its answer while the hub serves everyone else. One thread, so the file keeps a single
writer and calls run in the order they were made.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import gevent.event
from gevent.threadpool import ThreadPool

from fs_crm.store.outbox import Outbox, OutboxError


class OffHubOutbox:
    """Every method of `Outbox`, run in the store's thread; exceptions (OutboxError) come back to the caller.

    Call it from greenlets only: called from the hub itself (a loop callback) gevent runs the work
    right there, which is what this class exists to avoid.
    """

    def __init__(self, outbox: Outbox):
        self._outbox = outbox
        self._pool = ThreadPool(1)
        self.path = outbox.path

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._outbox, name)
        if not callable(method):
            return method

        def off_hub(*args: Any, **kwargs: Any) -> Any:
            return self._call(method, *args, **kwargs)

        off_hub.__name__ = name
        return off_hub

    def run(self, func: Callable[[Outbox], Any]) -> Any:
        """Several outbox calls in one trip to the store's thread."""
        return self._call(func, self._outbox)

    def _call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # The exception travels back as a value: raised inside the pool, gevent would also print
        # its traceback, and a full disk would print one per attempt.
        ok, value = self._pool.apply(_captured, (func, args, kwargs))
        if ok:
            return value
        raise value

    def close(self) -> None:
        try:
            self._call(self._outbox.close)
        finally:
            self._pool.kill()


def _captured(func: Callable[..., Any], args: tuple, kwargs: dict) -> tuple[bool, Any]:
    try:
        return True, func(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - re-raised in the calling greenlet
        return False, exc


class StatsCache:
    """The outbox's counts, read once a second by a greenlet of its own: /healthz and /metrics answer
    from here at once, even while the store's thread waits on a locked or failing database.

    The same look tells when another process changed the file (`fs-crm outbox --retry`, `fs-crm
    backfill`): `on_foreign_commit` then wakes the senders, so such a change goes out within a second."""

    REFRESH = 1.0

    def __init__(self, outbox: OffHubOutbox, on_foreign_commit: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic):
        self._outbox = outbox
        self._on_foreign_commit = on_foreign_commit
        self._version: int | None = None
        self._clock = clock
        self.stats = None  # OutboxStats of the last successful read
        self.read_at: float | None = None
        self.error: str | None = None
        self._stopping = gevent.event.Event()

    def refresh(self) -> None:
        try:
            self.stats, version = self._outbox.run(lambda outbox: (outbox.stats(), outbox.data_version()))
        except OutboxError as exc:
            self.error = str(exc)
            return
        self.read_at = self._clock()
        self.error = None
        if self._version is not None and version != self._version:
            self._on_foreign_commit()
        self._version = version

    def age(self) -> float | None:
        """Seconds since the counts were last read; None if never."""
        return None if self.read_at is None else self._clock() - self.read_at

    def run(self) -> None:
        while not self._stopping.wait(timeout=self.REFRESH):
            self.refresh()

    def stop(self) -> None:
        self._stopping.set()

"""Saving what the tracker knows: finished calls into the outbox, calls in progress row by row.

One greenlet does it, through the store's own thread (fs_crm.store.offhub), so neither an fsync
nor a full disk ever blocks the ESL reader. A finished call leaves memory only after the commit
that queued it succeeded. While the state disk fails (full, read-only, locked), cards still flow,
everything waits in memory and is retried with backoff, /healthz says why, and one line a minute
says what is waiting; it all goes to disk by itself once the disk is back. Nothing exits.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import gevent.event

from fs_crm.calls import CallTracker
from fs_crm.crm.client import CrmError
from fs_crm.crm.payloads import CallRecord
from fs_crm.outages import capped
from fs_crm.store.outbox import NewCall, OutboxError
from fs_crm.vocab import MAX_CALLS_PER_UPLOAD

logger = logging.getLogger(__name__)

# Calls in progress are saved at least this often, so a crash loses at most this much of their progress.
SAVE_INTERVAL = 1.0
# Calls in progress serialised per save (on the hub, about 10 us each): a flood of new calls is saved
# in slices, one after the other, so the hub never stalls for the whole set.
SAVE_SLICE = 1000
RETRY_MIN_DELAY = 0.2
# Short: a retry on a full disk costs one failed write, and space may come back any moment.
RETRY_MAX_DELAY = 5.0
# While the disk fails, one line this often says what waits.
REPORT_INTERVAL = 60.0
# Finished calls kept in memory while the disk fails. Beyond it (days of a full disk at a busy PBX)
# the oldest are written to the log in full, the last place left to keep them, and let go.
MAX_UNSAVED_FINISHED = 100_000


class StateSaver:
    def __init__(self, outbox, tracker: CallTracker, new_call: Callable[[CallRecord], NewCall],
                 on_queued: Callable[[], None], *, clock: Callable[[], float] = time.time,
                 max_unsaved: int = MAX_UNSAVED_FINISHED):
        self._outbox = outbox
        self._tracker = tracker
        self._new_call = new_call
        self._on_queued = on_queued
        self._clock = clock
        self._max_unsaved = max_unsaved
        self._finished: list[CallRecord] = []
        self._wanted = gevent.event.Event()
        self._stopping = gevent.event.Event()
        self._delay = 0.0
        self._rows_saved_at = 0.0  # when calls in progress were last saved (monotonic)
        self._slicing = False  # a flood of changed calls is being saved, one slice after the other
        # While the disk fails: since when, the last error, when it was last reported.
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self._reported_at = 0.0
        self.spilled = 0  # finished calls given to the log because memory was full

    # --- from the ESL side (the reader greenlet) ---------------------------------------------
    def add_finished(self, record: CallRecord) -> None:
        self._finished.append(record)
        if self.failing_since is not None and len(self._finished) > self._max_unsaved:
            self._spill(self._finished.pop(0), "more than %d finished calls wait for the failing state disk"
                        % self._max_unsaved)

    def save_soon(self) -> None:
        """After a socket read: the saver runs as soon as the reader waits, or yields, for more bytes."""
        if self._finished:
            self._wanted.set()

    @property
    def unsaved(self) -> int:
        return len(self._finished)

    # --- the saver greenlet ------------------------------------------------------------------------
    def run(self) -> None:
        while not self._stopping.is_set():
            if self.failing_since is None:
                self._wanted.wait(timeout=SAVE_INTERVAL)
            else:
                # Backing off: a call finishing meanwhile does not make the next attempt sooner.
                self._stopping.wait(timeout=self._delay)
            self._wanted.clear()
            self.save_once()

    def stop(self) -> None:
        """Stop the loop; the caller saves what is left with `save_all` after the last event."""
        self._stopping.set()
        self._wanted.set()

    def save_all(self) -> bool:
        """Slice after slice until nothing is left (at stop); False as soon as the disk refuses."""
        while True:
            if not self.save_once(rows=True):
                return False
            if not self._tracker.has_changes:
                return True

    def save_once(self, rows: bool | None = None) -> bool:
        """Save what changed since the last time; True when the disk took it (or nothing changed).

        Finished calls go every time (soon after each socket read); calls in progress (`rows`) at
        most once per SAVE_INTERVAL, or slice after slice while a flood is being saved: a call that
        starts and ends between two such saves is never written as in progress at all. A finished
        call whose in-progress row is deleted only by a later save is in both places meanwhile,
        which is safe: restored, it would be reported again, and the outbox skips its externalId."""
        now = time.monotonic()
        if rows is None:
            rows = self._slicing or now - self._rows_saved_at >= SAVE_INTERVAL
        records = self._finished[:]
        changed, gone = self._tracker.take_changes(SAVE_SLICE) if rows else ({}, [])
        if not records and not changed and not gone:
            if rows:
                self._rows_saved_at = now
            return True
        try:
            added = self._outbox.persist([self._new_call(r) for r in records], changed, gone)
        except OutboxError as exc:
            self._tracker.keep_changes([*changed, *gone])
            self._failed(exc)
            return False
        # Only now may they leave memory: new ones were appended during the commit, after these.
        del self._finished[:len(records)]
        self._recovered()
        if rows:
            self._slicing = len(changed) + len(gone) >= SAVE_SLICE and self._tracker.has_changes
            if self._slicing:
                self._wanted.set()  # the next slice right away
            else:
                self._rows_saved_at = now
        for record, new in zip(records, added, strict=True):
            if not new:
                logger.info("call %s account %s: already queued or delivered; not queued again",
                            record.external_id, record.account)
        if any(added):
            self._on_queued()
        return True

    # --- a failing disk ----------------------------------------------------------------------------
    def _failed(self, exc: OutboxError) -> None:
        now = self._clock()
        self.last_error = str(exc)
        self._delay = min(RETRY_MAX_DELAY, max(RETRY_MIN_DELAY, self._delay * 2))
        if self.failing_since is None:
            self.failing_since = now
            self._reported_at = now
            logger.error("state disk failing, nothing is lost: %d finished call(s) and the calls in progress wait "
                         "in memory and are retried (%s)", len(self._finished), exc)
        elif now - self._reported_at >= REPORT_INTERVAL:
            self._reported_at = now
            logger.error("state disk still failing for %.0f s: %d finished call(s) wait in memory (%s)",
                         now - self.failing_since, len(self._finished), exc)

    def _recovered(self) -> None:
        self._delay = 0.0
        if self.failing_since is not None:
            logger.warning("state disk works again after %.0f s; everything that waited is saved",
                           self._clock() - self.failing_since)
            self.failing_since = None
            self.last_error = None

    def rescue(self, upload: Callable[[str, list[dict]], None]) -> int:
        """At stop, with the disk still failing: what never reached the disk goes straight to the CRM
        (`upload(account, payloads)`, 50 at a time), and what the CRM does not take either is written
        to the log in full. Returns how many calls went to the log."""
        by_account: dict[str, list[CallRecord]] = {}
        for record in self._finished:
            by_account.setdefault(record.account, []).append(record)
        self._finished = []
        spilled = 0
        for account, records in by_account.items():
            for start in range(0, len(records), MAX_CALLS_PER_UPLOAD):
                batch = records[start:start + MAX_CALLS_PER_UPLOAD]
                try:
                    upload(account, [self._new_call(r).payload for r in batch])
                except CrmError as exc:
                    for record in batch:
                        self._spill(record, "stopping with the state disk failing and the CRM refusing it (%s)"
                                    % exc)
                    spilled += len(batch)
                    continue
                logger.warning("account %s: %d finished call(s) the failing state disk never took were uploaded "
                               "straight to the CRM at stop: %s", account, len(batch), capped(r.external_id for r in batch))
        return spilled

    def _spill(self, record: CallRecord, why: str) -> None:
        self.spilled += 1
        logger.critical("call %s account %s: %s; this call is kept only in this log line, to be entered by hand: "
                        "%s", record.external_id, record.account, why,
                        json.dumps(self._new_call(record).payload, ensure_ascii=False, separators=(",", ":")))

    def health(self) -> dict:
        return {"ok": self.failing_since is None, "failing_since": self.failing_since,
                "last_error": self.last_error, "unsaved_finished_calls": len(self._finished),
                "spilled_to_log": self.spilled}


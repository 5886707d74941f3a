"""Recording uploads: files FreeSWITCH finished writing go to the store, then their call's history
is released with its recordUrl.

The queue lives in the outbox (SQLite), so a restart resumes it. A file that cannot be read is
reported at once and its call goes without a recordUrl; a store that is down is retried with
backoff, and the call stops waiting after `storage.max_wait` (the service's housekeeping releases it).
The local file is removed only after the store confirmed the object's size.
"""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path
from typing import Callable

import gevent
import gevent.event

from fs_crm.config import DeliveryConfig, StorageConfig
from fs_crm.store.outbox import Outbox, OutboxError, RecordingJob
from recordings.base import RecordingNotFound, RecordingStore, StorageUnavailable
from recordings.tokens import RecordingLinks

logger = logging.getLogger(__name__)

IDLE_RECHECK = 30.0
STORE_RETRY = 5.0


class RecordingUploader:
    def __init__(self, outbox: Outbox, store: RecordingStore, links: RecordingLinks, storage: StorageConfig,
                 delivery: DeliveryConfig, on_released: Callable[[], None],
                 clock: Callable[[], float] = time.time, rand: Callable[[], float] = random.random):
        self.outbox = outbox
        self.store = store
        self.links = links
        self.storage = storage
        self.delivery = delivery
        self.on_released = on_released
        self.clock = clock
        self.rand = rand
        self.stored = 0
        self.last_error: str | None = None
        self._wake = gevent.event.Event()
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    def run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                for job in self.outbox.due_recordings():
                    if self._stopping:
                        return
                    self.upload(job)
                next_at = self.outbox.next_recording_due_at()
            except OutboxError as exc:
                # The state disk fails (the service's saver reports it); a file stored but not marked
                # is stored again, under the same name, next time.
                logger.debug("recording uploads pause, the outbox cannot be used: %s", exc)
                next_at = self.clock() + STORE_RETRY
            wait = IDLE_RECHECK if next_at is None else max(0.0, min(IDLE_RECHECK, next_at - self.clock()))
            self._wake.wait(timeout=wait)

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def upload(self, job: RecordingJob) -> None:
        metadata = {"call-id": job.external_id, "account": job.account}
        try:
            stored = self.store.put_file(Path(job.path), job.name, job.content_type, metadata)
        except RecordingNotFound as exc:
            logger.error("call %s account %s: recording %s cannot be read (%s); the call goes to the CRM without "
                         "a recording", job.external_id, job.account, job.path, exc)
            if self.outbox.finish_recording(job, {"recordUrl": None}):
                self.on_released()
            return
        except StorageUnavailable as exc:
            self.last_error = str(exc)
            delay = min(self.delivery.retry_max_delay, self.delivery.retry_min_delay * 2 ** min(job.attempts, 16))
            delay *= 1 - 0.5 * self.rand()
            logger.warning("call %s account %s: recording storage unavailable (%s); retrying in %.1fs",
                           job.external_id, job.account, exc, delay)
            self.outbox.defer_recording(job.id, delay, str(exc))
            return
        self.last_error = None
        self.stored += 1
        released = self.outbox.finish_recording(job, {"recordUrl": self.links.url(job.name)})
        if released:
            self.on_released()
            logger.info("call %s account %s: recording stored (%d bytes); history released with its recordUrl",
                        job.external_id, job.account, stored.size)
        else:
            logger.info("call %s account %s: recording stored (%d bytes) after the call had gone to the CRM; "
                        "its recordUrl plays from now on", job.external_id, job.account, stored.size)
        if self.storage.delete_local:
            try:
                os.remove(job.path)
            except OSError as exc:
                logger.warning("call %s: stored recording %s could not be removed locally: %s", job.external_id,
                               job.path, exc.strerror)

"""Calls held back until their recording is stored, and the recordings' upload jobs that release
them (recordings.uploads drains the jobs)."""

from __future__ import annotations

import json
import sqlite3

from fs_crm.store.outbox_db import ITEM_COLUMNS, MAX_ERROR_LEN, OutboxDb
from fs_crm.store.outbox_types import OutboxItem, RecordingJob


class HeldCalls(OutboxDb):
    """The outbox's held calls (state 'held') and its recordings table."""

    def release(self, account: str, external_id: str, updates: dict | None = None) -> bool:
        """A held call may go to the CRM now, with `updates` merged into it (a None value removes the key).
        False when it was not held (already released, or delivered)."""
        with self._write("release %s/%s" % (account, external_id)) as db:
            return self._release(db, account, external_id, updates)

    def _release(self, db: sqlite3.Connection, account: str, external_id: str, updates: dict | None) -> bool:
        row = db.execute("SELECT id, payload FROM outbox WHERE account = ? AND external_id = ? AND state = 'held'",
                         (account, external_id)).fetchone()
        if row is None:
            return False
        payload = json.loads(row[1])
        for key, value in (updates or {}).items():
            if value is None:
                payload.pop(key, None)  # e.g. the recordUrl of a recording that will never be stored
            else:
                payload[key] = value
        db.execute("UPDATE outbox SET state = 'pending', payload = ?, next_attempt_at = ? WHERE id = ?",
                   (json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True),
                    self._clock(), row[0]))
        return True

    def expired_holds(self) -> list[OutboxItem]:
        """Held calls whose wait for a recording is over."""
        with self._read("expired_holds") as db:
            rows = db.execute("SELECT %s FROM outbox WHERE state = 'held' AND next_attempt_at <= ? ORDER BY id"
                              % ITEM_COLUMNS, (self._clock(),)).fetchall()
        return [self._item(row) for row in rows]

    def due_recordings(self, limit: int = 10) -> list[RecordingJob]:
        with self._read("due_recordings") as db:
            rows = db.execute("SELECT id, account, external_id, path, name, content_type, attempts, created_at,"
                              " last_error FROM recordings WHERE next_attempt_at <= ? ORDER BY id LIMIT ?",
                              (self._clock(), limit)).fetchall()
        return [RecordingJob(*row) for row in rows]

    def next_recording_due_at(self) -> float | None:
        with self._read("next_recording_due_at") as db:
            return db.execute("SELECT MIN(next_attempt_at) FROM recordings").fetchone()[0]

    def defer_recording(self, job_id: int, delay: float, error: str) -> None:
        with self._write("defer_recording") as db:
            db.execute("UPDATE recordings SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?"
                       " WHERE id = ?", (self._clock() + max(0.0, delay), error[:MAX_ERROR_LEN], job_id))

    def finish_recording(self, job: RecordingJob, updates: dict | None = None) -> bool:
        """The job is over (stored, or the file is gone): drop it and release its call, in one
        transaction. Returns whether the call was still held (False: it already went without)."""
        with self._write("finish_recording %s/%s" % (job.account, job.external_id)) as db:
            db.execute("DELETE FROM recordings WHERE id = ?", (job.id,))
            return self._release(db, job.account, job.external_id, updates)

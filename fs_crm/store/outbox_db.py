"""The outbox's SQLite plumbing, shared by all its parts: the connection behind one lock, short
read and write transactions that turn sqlite3 errors into OutboxError, and how a call's row is
written and read back. fs_crm.store.outbox.Outbox opens the connection."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from fs_crm.store.outbox_types import NewCall, OutboxError, OutboxItem

PENDING = "pending"
HELD = "held"
FAILED = "failed"

# Error texts come from the CRM; keep a runaway one from bloating the database.
MAX_ERROR_LEN = 2000

# What `_item` reads, in its order.
ITEM_COLUMNS = "id, account, external_id, payload, attempts, created_at, last_error, state, next_attempt_at, facts"


class OutboxDb:
    """What every part of the outbox works through; Outbox.__init__ sets these attributes."""

    path: Path
    _clock: Callable[[], float]
    _lock: threading.RLock
    _db: sqlite3.Connection | None

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise OutboxError("%s: %s failed: %s" % (self.path, action, exc)) from exc

    @contextlib.contextmanager
    def _read(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors(action):
            yield self._conn()

    @contextlib.contextmanager
    def _write(self, action: str) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction, committed (and fsynced) before the block's caller goes on."""
        with self._lock, self._errors(action):
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT (disk full), so the next call can start afresh.
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError("%s: outbox is closed" % self.path)
        return self._db

    @staticmethod
    def _item(row: tuple) -> OutboxItem:
        id_, account, external_id, payload, attempts, created_at, last_error, state, next_at, facts = row
        return OutboxItem(id=id_, account=account, external_id=external_id, payload=json.loads(payload),
                          attempts=attempts, created_at=created_at, last_error=last_error, state=state,
                          next_attempt_at=next_at, facts=json.loads(facts) if facts else None)

    @staticmethod
    def _insert(db: sqlite3.Connection, call: NewCall, now: float) -> bool:
        """Queue one call, and its recording's upload job, in the caller's transaction; False if the
        call is already known (see Outbox.add)."""
        if db.execute("SELECT 1 FROM delivered WHERE account = ? AND external_id = ?",
                      (call.account, call.external_id)).fetchone():
            return False
        text = json.dumps(call.payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        held = call.recording is not None
        cur = db.execute(
            "INSERT INTO outbox (account, external_id, payload, state, created_at, next_attempt_at, facts)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (account, external_id) DO NOTHING",
            (call.account, call.external_id, text, HELD if held else PENDING, now,
             call.hold_until if held else now,
             json.dumps(call.facts, ensure_ascii=False, separators=(",", ":")) if call.facts else None))
        if cur.rowcount != 1:
            return False
        if held:
            rec = call.recording
            db.execute("INSERT INTO recordings (account, external_id, path, name, content_type, created_at,"
                       " next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (account, external_id) DO NOTHING",
                       (call.account, call.external_id, rec.path, rec.name, rec.content_type, now, now))
        return True

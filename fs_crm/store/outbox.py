"""The durable call-history queue (SQLite): with its parts (the outbox_* modules), the only user of
sqlite3 in fs-crm.

A finished call is committed here before anything is sent, so history survives a CRM outage, a
restart, kill -9 and power loss. `HistorySender` (fs_crm.crm.history) drains it into the CRM.

Per account the queue is strictly FIFO: `due()` stops at the first pending call whose next attempt
lies in the future, so a call deferred after an outage is never overtaken by a newer one.
Delivered external ids are remembered (until `prune_delivered`) so a call reported twice, for
example after an ESL reconnect or a restart, is uploaded once.

This module opens the file and owns the queue; the outbox's other jobs are the parts `Outbox` is
built from: `outbox_set_aside` (calls the CRM refused), `outbox_recordings` (calls held for their
recording, and the upload jobs), `outbox_state` (calls in progress, CDRs, service state), all over
the plumbing in `outbox_db`; the value types are in `outbox_types`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from fs_crm.filemodes import create_private_file, private_dir
from fs_crm.store.outbox_db import FAILED, HELD, ITEM_COLUMNS, MAX_ERROR_LEN, PENDING
from fs_crm.store.outbox_recordings import HeldCalls
from fs_crm.store.outbox_set_aside import SetAsideCalls
from fs_crm.store.outbox_state import ServiceState
from fs_crm.store.outbox_types import (
    NewCall,
    OutboxError,
    OutboxItem,
    OutboxStats,
    RecordingFile,
    RecordingJob,
)
from fs_crm.store.schema import MIGRATIONS, SCHEMA_VERSION

# What importers take from here: the value types live in outbox_types, the schema version in schema.
__all__ = ["BUSY_TIMEOUT_MS", "FILE_NAME", "SCHEMA_VERSION", "NewCall", "Outbox", "OutboxError", "OutboxItem",
           "OutboxStats", "RecordingFile", "RecordingJob", "probe"]

FILE_NAME = "outbox.sqlite3"

# How long a writer waits for the file lock before giving up; only fs-crm writes this file, so
# hitting it means something else holds the database (a stray sqlite3 shell, a second instance).
BUSY_TIMEOUT_MS = 10_000


class Outbox(HeldCalls, SetAsideCalls, ServiceState):
    """One SQLite connection guarded by a lock; every public method is one short transaction.

    No method does network I/O, so callers never hold the lock while talking to the CRM.
    """

    def __init__(self, path: Path, clock: Callable[[], float] = time.time):
        path = Path(path)
        if path.is_dir():
            path = path / FILE_NAME
        self.path = path
        self._clock = clock
        # gevent patches threading, so this lock also serialises greenlets.
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        try:
            # Undelivered history holds customers' phone numbers: only the service's user reads it.
            private_dir(path.parent)
            create_private_file(path)
        except OSError as exc:
            raise OutboxError("%s: cannot create the state directory or file: %s" % (path, exc.strerror)) from exc
        with self._errors("open"):
            # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves.
            db = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                 check_same_thread=False)
            try:
                self._setup(db)
            except BaseException:
                db.close()
                raise
            self._db = db

    # --- lifecycle ------------------------------------------------------------------------------

    def _setup(self, db: sqlite3.Connection) -> None:
        db.execute("PRAGMA busy_timeout = %d" % BUSY_TIMEOUT_MS)
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise OutboxError("%s: cannot switch to WAL journal mode (got %r)" % (self.path, mode))
        # FULL: every commit fsyncs the WAL, so a call is on disk once add() returned, even if
        # the power goes (NORMAL would only survive a process crash).
        db.execute("PRAGMA synchronous = FULL")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise OutboxError("%s: schema version %d is newer than this fs-crm understands (%d)"
                              % (self.path, version, SCHEMA_VERSION))
        for target in range(version + 1, SCHEMA_VERSION + 1):
            try:
                db.executescript("BEGIN IMMEDIATE;\n%s;\nPRAGMA user_version = %d;\nCOMMIT;"
                                 % (MIGRATIONS[target - 1], target))
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                with self._errors("close"):
                    self._db.close()
                self._db = None

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- queue ----------------------------------------------------------------------------------

    def add(self, account: str, external_id: str, payload: dict) -> bool:
        """Queue one call; True once it is on disk, False if this call is already known.

        Known means pending, failed, held, or delivered and not yet pruned: nothing changes then.
        """
        return self.add_calls([NewCall(account, external_id, payload)])[0]

    def add_with_recording(self, account: str, external_id: str, payload: dict, *, path: str, name: str,
                           content_type: str, hold_until: float) -> bool:
        """Queue a call held back until its recording is stored (or `hold_until` passes), and the
        recording's upload job, in one transaction: neither exists without the other."""
        return self.add_calls([NewCall(account, external_id, payload, RecordingFile(path, name, content_type),
                                       hold_until)])[0]

    def add_calls(self, calls: Sequence[NewCall]) -> list[bool]:
        """Queue several calls in one transaction (one fsync): the ESL reader hands over everything
        one socket read produced at once. Returns, per call, whether it was new."""
        for call in calls:
            if not call.account or not call.external_id:
                raise ValueError("account and external_id must not be empty")
        now = self._clock()
        with self._write("add %d call(s)" % len(calls)) as db:
            return [self._insert(db, call, now) for call in calls]

    def due(self, account: str, limit: int = 50) -> list[OutboxItem]:
        """Pending calls of one account that may be sent now, oldest first.

        Stops at the first pending call that is not due yet, so nothing overtakes a deferred call.
        """
        now = self._clock()
        with self._read("due") as db:
            rows = db.execute("SELECT %s FROM outbox WHERE account = ? AND state = 'pending'"
                              " ORDER BY id LIMIT ?" % ITEM_COLUMNS, (account, limit)).fetchall()
        items = []
        for row in rows:
            item = self._item(row)
            if item.next_attempt_at > now:
                break
            items.append(item)
        return items

    def _heads(self, db: sqlite3.Connection) -> list[tuple[str, float]]:
        # SQLite takes the bare column next_attempt_at from the row that holds MIN(id): the head
        # of each account's queue, which gates the whole account.
        return db.execute("SELECT account, next_attempt_at, MIN(id) FROM outbox WHERE state = 'pending'"
                          " GROUP BY account ORDER BY account").fetchall()

    def accounts_with_due(self) -> list[str]:
        now = self._clock()
        with self._read("accounts_with_due") as db:
            return [account for account, next_at, _ in self._heads(db) if next_at <= now]

    def next_due_at(self, account: str | None = None) -> float | None:
        """When the earliest account (or the given one) has something to send; None when idle."""
        with self._read("next_due_at") as db:
            if account is not None:
                # The head of the queue gates the account (see due()); the index finds it directly.
                row = db.execute("SELECT next_attempt_at FROM outbox WHERE account = ? AND state = 'pending'"
                                 " ORDER BY id LIMIT 1", (account,)).fetchone()
                return row[0] if row else None
            times = [next_at for _, next_at, _ in self._heads(db)]
        return min(times) if times else None

    def mark_delivered(self, ids: Iterable[int]) -> None:
        params = [(i,) for i in ids]
        if not params:
            return
        now = self._clock()
        with self._write("mark_delivered") as db:
            db.executemany(
                "INSERT INTO delivered (account, external_id, delivered_at)"
                " SELECT account, external_id, ? FROM outbox WHERE id = ?"
                " ON CONFLICT (account, external_id) DO UPDATE SET delivered_at = excluded.delivered_at",
                [(now, i) for (i,) in params])
            db.executemany("DELETE FROM outbox WHERE id = ?", params)

    def defer(self, ids: Iterable[int], delay: float, error: str) -> None:
        next_at = self._clock() + max(0.0, delay)
        params = [(next_at, error[:MAX_ERROR_LEN], i) for i in ids]
        if not params:
            return
        with self._write("defer") as db:
            db.executemany("UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?"
                           " WHERE id = ? AND state = 'pending'", params)

    def stats(self, recent: float = 3600.0) -> OutboxStats:
        since = self._clock() - recent
        with self._read("stats") as db:
            counts = db.execute("SELECT account, state, COUNT(*) FROM outbox GROUP BY account, state").fetchall()
            oldest_by_account = dict(db.execute("SELECT account, MIN(created_at) FROM outbox WHERE state = 'pending'"
                                                " GROUP BY account").fetchall())
            delivered = db.execute("SELECT COUNT(*) FROM delivered WHERE delivered_at >= ?",
                                   (since,)).fetchone()[0]
            recordings = db.execute("SELECT COUNT(*) FROM recordings").fetchone()[0]
        by_state: dict[str, dict[str, int]] = {PENDING: {}, FAILED: {}, HELD: {}}
        for account, state, count in counts:
            by_state[state][account] = count
        return OutboxStats(
            pending=sum(by_state[PENDING].values()), failed=sum(by_state[FAILED].values()),
            oldest_pending_at=min(oldest_by_account.values(), default=None), delivered_recently=delivered,
            pending_by_account=by_state[PENDING], failed_by_account=by_state[FAILED],
            held=sum(by_state[HELD].values()), recordings=recordings, held_by_account=by_state[HELD],
            oldest_pending_by_account=oldest_by_account)

    def prune_delivered(self, older_than: float) -> int:
        """Forget delivered ids whose delivery time (epoch seconds) is before `older_than`."""
        with self._write("prune_delivered") as db:
            return db.execute("DELETE FROM delivered WHERE delivered_at < ?", (older_than,)).rowcount

    def data_version(self) -> int:
        """Changes whenever another connection (`fs-crm outbox --retry`, `fs-crm backfill`) committed."""
        with self._read("data_version") as db:
            return db.execute("PRAGMA data_version").fetchone()[0]


def probe(path: Path) -> str:
    """`fs-crm check --offline`: whether an outbox can be used at `path`, leaving it as it is.

    An existing one is opened (never created or migrated) and read; without one, a throwaway
    database in the same directory shows that SQLite's WAL journal works on that file system (it
    does not over some network file systems). Returns what was seen; raises OutboxError."""
    path = Path(path)
    if not path.exists():
        scratch = path.with_name(".%s.check-%d" % (path.name, os.getpid()))
        try:
            db = sqlite3.connect(str(scratch), isolation_level=None)
            try:
                mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                db.execute("CREATE TABLE probe (x)")
            finally:
                db.close()
        except sqlite3.Error as exc:
            raise OutboxError("%s: no outbox yet, and SQLite cannot create one here: %s" % (path, exc)) from None
        finally:
            for leftover in (scratch, Path("%s-wal" % scratch), Path("%s-shm" % scratch)):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
        if str(mode).lower() != "wal":
            raise OutboxError("%s: no outbox yet, and SQLite's WAL journal does not work here (got %r)" % (path, mode))
        return "none yet; it can be created here"
    # SQLite would quietly open a write-protected file read-only; fs-crm run needs to write all three.
    for part in (path, Path("%s-wal" % path), Path("%s-shm" % path)):
        if part.exists() and not os.access(part, os.R_OK | os.W_OK):
            raise OutboxError("%s: not readable and writable by this user (uid %d)" % (part, os.geteuid()))
    try:
        # mode=rw: never creates the file; no migration runs (`fs-crm run` does that).
        db = sqlite3.connect("file:%s?mode=rw" % urllib.parse.quote(str(path)), uri=True, isolation_level=None,
                             timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            counts = dict(db.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall()) if version else {}
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise OutboxError("%s: cannot be opened: %s" % (path, exc)) from None
    if version > SCHEMA_VERSION:
        raise OutboxError("%s: schema version %d is newer than this fs-crm understands (%d)"
                          % (path, version, SCHEMA_VERSION))
    return "schema %d%s, %d pending, %d held, %d set aside" % (
        version, "" if version == SCHEMA_VERSION else " (upgraded to %d at the next start)" % SCHEMA_VERSION,
        counts.get(PENDING, 0), counts.get(HELD, 0), counts.get(FAILED, 0))

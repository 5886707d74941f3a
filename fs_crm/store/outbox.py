"""The durable call-history queue (SQLite): the only user of sqlite3 in fs-crm.

A finished call is committed here before anything is sent, so history survives a CRM outage, a
restart, kill -9 and power loss. `HistorySender` (fs_crm.crm.history) drains it into the CRM.

Per account the queue is strictly FIFO: `due()` stops at the first pending call whose next attempt
lies in the future, so a call deferred after an outage is never overtaken by a newer one.
Delivered external ids are remembered (until `prune_delivered`) so a call reported twice, for
example after an ESL reconnect or a restart, is uploaded once.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fs_crm.filemodes import create_private_file, private_dir
from fs_crm.store.schema import LEGACY_CALLS_IN_PROGRESS, MIGRATIONS, SCHEMA_VERSION

FILE_NAME = "outbox.sqlite3"
PENDING = "pending"
HELD = "held"
FAILED = "failed"

# How long a writer waits for the file lock before giving up; only fs-crm writes this file, so
# hitting it means something else holds the database (a stray sqlite3 shell, a second instance).
BUSY_TIMEOUT_MS = 10_000
# Error texts come from the CRM; keep a runaway one from bloating the database.
MAX_ERROR_LEN = 2000


_COLUMNS = "id, account, external_id, payload, attempts, created_at, last_error, state, next_attempt_at, facts"


@dataclass(frozen=True)
class RecordingFile:
    path: str  # where FreeSWITCH wrote it
    name: str  # object name in the store
    content_type: str


@dataclass(frozen=True)
class NewCall:
    account: str
    external_id: str
    payload: dict
    recording: RecordingFile | None = None  # when set, the call is held until it is stored
    hold_until: float = 0.0
    # The call's config-independent facts (CallRecord.facts): the sender renders the payload's
    # config-decided fields from them with the config in force when it sends.
    facts: dict | None = None


@dataclass(frozen=True)
class RecordingJob:
    id: int
    account: str
    external_id: str
    path: str
    name: str
    content_type: str
    attempts: int
    created_at: float
    last_error: str | None


class OutboxError(Exception):
    """The outbox file cannot be used (disk full, corrupt, unreadable); the message names the file."""


@dataclass(frozen=True)
class OutboxItem:
    id: int
    account: str
    external_id: str
    payload: dict
    attempts: int
    created_at: float
    last_error: str | None
    state: str
    next_attempt_at: float = 0.0
    facts: dict | None = None


@dataclass(frozen=True)
class OutboxStats:
    pending: int
    failed: int
    oldest_pending_at: float | None
    # Calls delivered within the last `recent` seconds given to `stats()` (one hour by default).
    delivered_recently: int
    pending_by_account: dict[str, int] = field(default_factory=dict)
    failed_by_account: dict[str, int] = field(default_factory=dict)
    held: int = 0  # calls waiting for their recording to be stored
    recordings: int = 0  # recording files not yet confirmed by the store
    held_by_account: dict[str, int] = field(default_factory=dict)
    oldest_pending_by_account: dict[str, float] = field(default_factory=dict)


class Outbox:
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

    # --- plumbing -------------------------------------------------------------------------------

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

    @staticmethod
    def _insert(db: sqlite3.Connection, call: NewCall, now: float) -> bool:
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

    def due(self, account: str, limit: int = 50) -> list[OutboxItem]:
        """Pending calls of one account that may be sent now, oldest first.

        Stops at the first pending call that is not due yet, so nothing overtakes a deferred call.
        """
        now = self._clock()
        with self._read("due") as db:
            rows = db.execute("SELECT %s FROM outbox WHERE account = ? AND state = 'pending'"
                              " ORDER BY id LIMIT ?" % _COLUMNS, (account, limit)).fetchall()
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

    def set_aside(self, id: int, error: str) -> None:
        """Park one call the CRM refuses: kept and visible, never retried until `retry_failed`."""
        with self._write("set_aside") as db:
            db.execute("UPDATE outbox SET state = 'failed', attempts = attempts + 1, last_error = ?"
                       " WHERE id = ?", (error[:MAX_ERROR_LEN], id))

    def retry_failed(self, account: str | None = None, ids: Sequence[str] | None = None) -> int:
        """Set-aside calls pending again, due now: all (of `account`), or those named in `ids` (row
        ids or externalIds). Returns how many."""
        now = self._clock()
        where, args = self._selection(account, ids)
        with self._write("retry_failed") as db:
            cur = db.execute("UPDATE outbox SET state = 'pending', next_attempt_at = ?"
                             " WHERE state = 'failed'" + where, (now, *args))
            return cur.rowcount

    def drop_failed(self, ids: Sequence[str]) -> list[OutboxItem]:
        """Forget set-aside calls for good (row ids or externalIds); returns what was dropped."""
        if not ids:
            return []
        where, args = self._selection(None, ids)
        with self._write("drop_failed") as db:
            rows = db.execute("SELECT %s FROM outbox WHERE state = 'failed'%s" % (_COLUMNS, where), args).fetchall()
            db.execute("DELETE FROM outbox WHERE state = 'failed'" + where, args)
        return [self._item(row) for row in rows]

    @staticmethod
    def _selection(account: str | None, ids: Sequence[str] | None) -> tuple[str, tuple]:
        where, args = "", ()
        if account is not None:
            where, args = " AND account = ?", (account,)
        if ids is not None:
            marks = ", ".join("?" * len(ids)) or "NULL"
            where += " AND (CAST(id AS TEXT) IN (%s) OR external_id IN (%s))" % (marks, marks)
            args += tuple(ids) + tuple(ids)
        return where, args

    def failed(self, limit: int = -1) -> list[OutboxItem]:
        """Set-aside calls, oldest first (limit -1: all)."""
        with self._read("failed") as db:
            rows = db.execute("SELECT %s FROM outbox WHERE state = 'failed' ORDER BY id LIMIT ?"
                              % _COLUMNS, (limit,)).fetchall()
        return [self._item(row) for row in rows]

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

    # --- calls in progress and finished calls, saved together ----------------------------------------

    def persist(self, calls: Sequence[NewCall], changed: dict[str, dict], gone: Iterable[str]) -> list[bool]:
        """In one transaction: queue finished calls, save calls in progress that changed, forget
        those gone. A finished call leaves the saved calls in progress in the very commit that
        queues it, so after any crash it is in one place or the other, never in neither.
        Returns, per finished call, whether it was new (see add_calls)."""
        for call in calls:
            if not call.account or not call.external_id:
                raise ValueError("account and external_id must not be empty")
        now = self._clock()
        gone = [(call_id,) for call_id in gone]
        rows = [(call_id, json.dumps(data, ensure_ascii=False, separators=(",", ":")))
                for call_id, data in changed.items()]
        with self._write("save %d finished and %d changed call(s)" % (len(calls), len(rows) + len(gone))) as db:
            added = [self._insert(db, call, now) for call in calls]
            if gone:
                db.executemany("DELETE FROM calls_in_progress WHERE id = ?", gone)
            if rows:
                db.executemany("INSERT INTO calls_in_progress (id, value) VALUES (?, ?)"
                               " ON CONFLICT (id) DO UPDATE SET value = excluded.value", rows)
            db.execute("DELETE FROM state WHERE name = ?", (LEGACY_CALLS_IN_PROGRESS,))
            return added

    def calls_in_progress(self) -> list[dict]:
        """The saved calls in progress (rows of reconcile.call_data), with those of a pre-5 document."""
        with self._read("calls_in_progress") as db:
            rows = db.execute("SELECT value FROM calls_in_progress").fetchall()
        calls = []
        for (text,) in rows:
            try:
                value = json.loads(text)
            except ValueError:
                continue
            if isinstance(value, dict):
                calls.append(value)
        legacy = self.load_state(LEGACY_CALLS_IN_PROGRESS)
        if legacy and isinstance(legacy.get("calls"), list):
            known = {call.get("id") for call in calls}
            calls.extend(c for c in legacy["calls"] if isinstance(c, dict) and c.get("id") not in known)
        return calls

    # --- CDRs posted by mod_json_cdr ------------------------------------------------------------

    def add_cdr_leg(self, uuid: str, body: str) -> bool:
        """Keep one leg's CDR; False when that leg's CDR is already kept (a retried post)."""
        with self._write("add_cdr_leg %s" % uuid) as db:
            return db.execute("INSERT INTO cdr_legs (uuid, body, received_at) VALUES (?, ?, ?)"
                              " ON CONFLICT (uuid) DO NOTHING", (uuid, body, self._clock())).rowcount == 1

    def cdr_legs(self) -> list[tuple[str, str, float]]:
        """(uuid, body, received_at) of every kept CDR, oldest first."""
        with self._read("cdr_legs") as db:
            return db.execute("SELECT uuid, body, received_at FROM cdr_legs ORDER BY received_at").fetchall()

    def queue_from_cdrs(self, calls: Sequence[NewCall], uuids: Iterable[str]) -> list[bool]:
        """Queue the calls rebuilt from CDRs and forget those CDRs, in one transaction."""
        now = self._clock()
        with self._write("queue %d call(s) from CDRs" % len(calls)) as db:
            added = [self._insert(db, call, now) for call in calls]
            db.executemany("DELETE FROM cdr_legs WHERE uuid = ?", [(uuid,) for uuid in uuids])
            return added

    def data_version(self) -> int:
        """Changes whenever another connection (`fs-crm outbox --retry`, `fs-crm backfill`) committed."""
        with self._read("data_version") as db:
            return db.execute("PRAGMA data_version").fetchone()[0]

    # --- service state ----------------------------------------------------------------------------

    def save_state(self, name: str, value: dict) -> None:
        """Keep a JSON document (e.g. the calls in progress) so a restart after a crash can resume it."""
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        with self._write("save_state %s" % name) as db:
            db.execute("INSERT INTO state (name, value, saved_at) VALUES (?, ?, ?)"
                       " ON CONFLICT (name) DO UPDATE SET value = excluded.value, saved_at = excluded.saved_at",
                       (name, text, self._clock()))

    def load_state(self, name: str) -> dict | None:
        with self._read("load_state %s" % name) as db:
            row = db.execute("SELECT value FROM state WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        try:
            value = json.loads(row[0])
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    # --- calls waiting for their recording ----------------------------------------------------

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
                              % _COLUMNS, (self._clock(),)).fetchall()
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

    # --- CRM user statuses ----------------------------------------------------------------------

    def set_user_status(self, account: str, extension: str, user_id: int | None, status: str) -> None:
        with self._write("set_user_status %s/%s" % (account, extension)) as db:
            db.execute("INSERT INTO user_status (account, extension, user_id, status, updated_at) VALUES (?, ?, ?, ?, ?)"
                       " ON CONFLICT (account, extension) DO UPDATE SET user_id = excluded.user_id,"
                       " status = excluded.status, updated_at = excluded.updated_at",
                       (account, extension, user_id, status, self._clock()))

    def user_statuses(self) -> dict[tuple[str, str], str]:
        """(account, extension) -> last status the CRM sent."""
        with self._read("user_statuses") as db:
            rows = db.execute("SELECT account, extension, status FROM user_status").fetchall()
        return {(account, extension): status for account, extension, status in rows}


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

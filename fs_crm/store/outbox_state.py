"""What the service keeps in the outbox file besides the history queue, so that a restart resumes
where it stopped: the calls in progress, CDRs posted by mod_json_cdr, named JSON documents, the
user statuses the CRM last sent, and which customers got a missed-call task."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from fs_crm.store.outbox_db import OutboxDb
from fs_crm.store.outbox_types import NewCall
from fs_crm.store.schema import LEGACY_CALLS_IN_PROGRESS


class ServiceState(OutboxDb):
    """The outbox's tables of service state: calls_in_progress, cdr_legs, state, user_status and
    missed_task_marks."""

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

    # --- missed-call tasks: one per customer an hour, across restarts --------------------------------

    def mark_missed_task(self, account: str, phone: str, call_at: float, keep_for: float) -> None:
        """The customer got a task for the call that started at call_at; marks older than keep_for
        seconds before it go."""
        with self._write("mark_missed_task %s" % account) as db:
            db.execute("INSERT INTO missed_task_marks (account, phone, call_at) VALUES (?, ?, ?)"
                       " ON CONFLICT (account, phone) DO UPDATE SET call_at = MAX(call_at, excluded.call_at)",
                       (account, phone, call_at))
            db.execute("DELETE FROM missed_task_marks WHERE call_at < ?", (call_at - keep_for,))

    def missed_task_marks(self, limit: int) -> list[tuple[str, str, float]]:
        """(account, phone, call start) of the newest tasks, oldest first."""
        with self._read("missed_task_marks") as db:
            rows = db.execute("SELECT account, phone, call_at FROM missed_task_marks ORDER BY call_at DESC LIMIT ?",
                              (limit,)).fetchall()
        return [(account, phone, call_at) for account, phone, call_at in reversed(rows)]


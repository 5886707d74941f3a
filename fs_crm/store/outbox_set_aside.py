"""Calls the CRM refused, set aside by the outbox: kept and visible, never retried until the
operator says so (`fs-crm outbox --retry / --drop / --export`, fs_crm.store.outbox_cli)."""

from __future__ import annotations

from collections.abc import Sequence

from fs_crm.store.outbox_db import ITEM_COLUMNS, MAX_ERROR_LEN, OutboxDb
from fs_crm.store.outbox_types import OutboxItem


class SetAsideCalls(OutboxDb):
    """The outbox's set-aside calls (state 'failed')."""

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
            rows = db.execute("SELECT %s FROM outbox WHERE state = 'failed'%s" % (ITEM_COLUMNS, where), args).fetchall()
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
                              % ITEM_COLUMNS, (limit,)).fetchall()
        return [self._item(row) for row in rows]

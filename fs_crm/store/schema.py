"""The outbox's SQLite schema: one migration a version, applied in order when the file is opened."""

from __future__ import annotations

# Each entry moves the schema from version N to N+1; applied in one transaction on open.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids never reused, so id order is FIFO
        account TEXT NOT NULL,
        external_id TEXT NOT NULL,
        payload TEXT NOT NULL,                 -- JSON, exactly what calls/upload receives
        state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        next_attempt_at REAL NOT NULL,
        last_error TEXT,
        UNIQUE (account, external_id)
    );
    CREATE INDEX outbox_queue ON outbox (account, state, id);
    CREATE TABLE delivered (
        account TEXT NOT NULL,
        external_id TEXT NOT NULL,
        delivered_at REAL NOT NULL,
        PRIMARY KEY (account, external_id)
    ) WITHOUT ROWID;
    CREATE INDEX delivered_age ON delivered (delivered_at);
    """,
    # 2: small named documents the service must not lose on a crash (the calls in progress).
    """
    CREATE TABLE state (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL,                   -- JSON
        saved_at REAL NOT NULL
    ) WITHOUT ROWID
    """,
    # 3: calls held back while their recording is stored ('held'), and the recording upload queue.
    # SQLite cannot widen a CHECK constraint in place, so the queue table is rebuilt.
    """
    CREATE TABLE outbox_v3 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        account TEXT NOT NULL,
        external_id TEXT NOT NULL,
        payload TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'failed', 'held')),
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        next_attempt_at REAL NOT NULL,         -- for 'held': when to give up waiting for the recording
        last_error TEXT,
        UNIQUE (account, external_id)
    );
    INSERT INTO outbox_v3 SELECT id, account, external_id, payload, state, attempts, created_at,
        next_attempt_at, last_error FROM outbox;
    DROP TABLE outbox;
    ALTER TABLE outbox_v3 RENAME TO outbox;
    CREATE INDEX outbox_queue ON outbox (account, state, id);
    CREATE TABLE recordings (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        account TEXT NOT NULL,
        external_id TEXT NOT NULL,             -- the call whose history waits for this file
        path TEXT NOT NULL,                    -- where FreeSWITCH wrote it
        name TEXT NOT NULL,                    -- object name in the store
        content_type TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        next_attempt_at REAL NOT NULL,
        last_error TEXT,
        UNIQUE (account, external_id)
    )
    """,
    # 4: CRM user statuses (free / busy / dinner / break), remembered across restarts.
    """
    CREATE TABLE user_status (
        account TEXT NOT NULL,
        extension TEXT NOT NULL,
        user_id INTEGER,
        status TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (account, extension)
    ) WITHOUT ROWID
    """,
    # 5: calls in progress one row each, so a save writes what changed, never the whole set.
    """
    CREATE TABLE calls_in_progress (
        id TEXT PRIMARY KEY,
        value TEXT NOT NULL                    -- JSON, fs_crm.calls.reconcile.call_data
    ) WITHOUT ROWID
    """,
    # 6: legs' CDRs posted by mod_json_cdr, kept until their call is complete and queued (or known).
    """
    CREATE TABLE cdr_legs (
        uuid TEXT PRIMARY KEY,
        body TEXT NOT NULL,                    -- as posted
        received_at REAL NOT NULL
    ) WITHOUT ROWID
    """,
    # 7: what the call was before the config shaped it, so its payload is rendered at send time
    # (JSON, fs_crm.calls.history_mapping.config_fields). No SQL comment on the line: SQLite copies
    # the column's text into the table's CREATE statement, where it would swallow the ")".
    "ALTER TABLE outbox ADD COLUMN facts TEXT",
    # 8: the customers who got a missed-call task, by the start of the call that made it, so a
    # restart does not make a second task within the hour.
    """
    CREATE TABLE missed_task_marks (
        account TEXT NOT NULL,
        phone TEXT NOT NULL,
        call_at REAL NOT NULL,
        PRIMARY KEY (account, phone)
    ) WITHOUT ROWID
    """,
)
# Until schema 5 the calls in progress were one document in `state`; it is read once and dropped.
LEGACY_CALLS_IN_PROGRESS = "calls-in-progress"
SCHEMA_VERSION = len(MIGRATIONS)

"""The outbox's value types: what goes in (NewCall, RecordingFile), what comes out (OutboxItem,
RecordingJob, OutboxStats), and OutboxError, the one error fs_crm.store.outbox raises."""

from __future__ import annotations

from dataclasses import dataclass, field


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

"""Finished calls as outbox entries: the one shape in which the daemon (calls seen over ESL) and
`fs-crm backfill` (calls rebuilt from CDRs) queue history, recording included."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from pathlib import Path

from fs_crm.config import Config
from fs_crm.crm.payloads import CallRecord
from fs_crm.store.outbox import NewCall, RecordingFile
from recordings.base import content_type_of
from recordings.tokens import RecordingLinks, TokenCodec, load_secret, recording_name

logger = logging.getLogger(__name__)


def recording_links(config: Config) -> RecordingLinks | None:
    """The recordUrl maker of a config with a [storage] section (None without: recordings are
    ignored). The secret is the daemon's: configured, or the one kept in the state dir (made on
    first use, as `fs-crm run` makes it)."""
    if not config.storage.backend:
        return None
    codec = TokenCodec(load_secret(config.storage.url_secret, config.state.dir))
    return RecordingLinks(config.http.public_url, codec)


def new_calls(records: Iterable[CallRecord], links: RecordingLinks | None, hold_until: float) -> list[NewCall]:
    return [new_call(record, links, hold_until) for record in records]


def new_call(record: CallRecord, links: RecordingLinks | None, hold_until: float) -> NewCall:
    """A finished call as the outbox keeps it. With `links` (recordings are stored), a call with a
    recording waits (held) until the recording is stored, at most until `hold_until`. Its recordUrl
    is decided now: a pure function of the object name and the secret, so a recording stored after
    the wait still plays."""
    payload = record.to_api()
    name = recording_object_name(record) if links is not None else None
    if not name or links is None or not record.recording_path:
        return NewCall(record.account, record.external_id, payload, facts=record.facts)
    payload["recordUrl"] = links.url(name)
    return NewCall(record.account, record.external_id, payload,
                   RecordingFile(record.recording_path, name, content_type_of(record.recording_path)), hold_until,
                   facts=record.facts)


def recording_object_name(record: CallRecord) -> str | None:
    """The store's name for the call's recording, or None (no recording, or not one we can store)."""
    if not record.recording_path:
        return None
    try:
        return recording_name(record.account, record.external_id, dt.date.fromisoformat(record.date[:10]),
                              Path(record.recording_path).suffix)
    except ValueError:
        logger.warning("call %s account %s: recording %s is not mp3, wav, ogg or opus; the call goes without it",
                       record.external_id, record.account, record.recording_path)
        return None

"""Typed retailCRM telephony payloads with their exact wire form (pure).

`to_api()` writes retailCRM's camelCase keys, leaves out fields we do not know instead of sending
nulls, and always writes booleans explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fs_crm import vocab


@dataclass(frozen=True)
class CallEvent:
    """One `POST /api/v5/telephony/call/event` (a call card or its end)."""

    account: str
    type: str  # in | out | hangup
    phone: str
    codes: tuple[str, ...]
    call_id: str  # callExternalId: the same id the history record carries
    # Event-Date-Timestamp of the FreeSWITCH event that caused it, seconds since the epoch; the
    # sender drops cards older than the configured age.
    created_at: float
    external_phone: str | None = None
    site: str | None = None
    hangup_status: str | None = None
    # CRM user ids of the managers in `codes` that the account's extension map knows. Sent next to
    # the codes: either one tells the CRM whose screen shows the card, and a code the CRM does not
    # know (an extension changed on one side only) still reaches the user by id.
    user_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.type not in vocab.EVENT_TYPES:
            raise ValueError("unknown call event type %r" % self.type)
        if self.hangup_status is not None and self.hangup_status not in vocab.HANGUP_STATUSES:
            raise ValueError("unknown hangupStatus %r" % self.hangup_status)

    def to_api(self) -> dict:
        out: dict = {"phone": self.phone, "type": self.type, "codes": list(self.codes),
                     "callExternalId": self.call_id}
        if self.user_ids:
            out["userIds"] = list(self.user_ids)
        if self.external_phone:
            out["externalPhone"] = self.external_phone
        if self.site:
            out["site"] = self.site
        if self.type == vocab.EVENT_HANGUP and self.hangup_status:
            out["hangupStatus"] = self.hangup_status
        return out


@dataclass(frozen=True)
class CallRecord:
    """One finished external call for `POST /api/v5/telephony/calls/upload`."""

    account: str
    external_id: str
    date: str  # "Y-m-d H:i:s" in the account's time zone
    type: str  # in | out
    phone: str
    result: str
    duration: int  # talk time, seconds
    duration_waiting: int
    code: str | None = None
    user_id: int | None = None
    external_phone: str | None = None
    site: str | None = None
    record_url: str | None = None
    # Where FreeSWITCH wrote the call's recording; not sent to the CRM (recordUrl is, once stored).
    recording_path: str | None = None
    # Call tracking: retailCRM's source object (source, medium, campaign, keyword, content) of the
    # company number the call was on, as (field, value) pairs.
    source: tuple[tuple[str, str], ...] = ()
    # What the call was before the config shaped it (fs_crm.calls.history_mapping.config_fields):
    # kept in the outbox so the payload is rendered from the config in force when it is sent.
    facts: dict | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.type not in vocab.UPLOAD_TYPES:
            raise ValueError("unknown call type %r" % self.type)
        if self.result not in vocab.UPLOAD_RESULTS:
            raise ValueError("unknown call result %r" % self.result)

    def to_api(self) -> dict:
        out: dict = {
            "date": self.date, "type": self.type, "phone": self.phone, "result": self.result,
            "duration": self.duration, "durationWaiting": self.duration_waiting,
            "externalId": self.external_id,
        }
        optional = {"code": self.code, "userId": self.user_id, "externalPhone": self.external_phone,
                    "site": self.site, "recordUrl": self.record_url}
        out.update({k: v for k, v in optional.items() if v is not None and v != ""})
        if self.source:
            out["source"] = dict(self.source)
        return out


@dataclass(frozen=True)
class CrmTask:
    """One `POST /api/v5/tasks/create` (form field `task`), fields named as in the PHP client's Task model."""

    account: str
    text: str
    performer_id: int
    # The call it is about: for logs only, retailCRM's task has no such field.
    call_id: str
    phone: str | None = None
    commentary: str | None = None
    # The CRM's customer id (the manager lookup's customer.id).
    customer_id: int | None = None
    # "Y-m-d H:i" in the account's time zone: when the task is due.
    datetime: str | None = None

    def to_api(self) -> dict:
        out: dict = {"text": self.text, "performerId": self.performer_id}
        if self.commentary:
            out["commentary"] = self.commentary
        if self.datetime:
            out["datetime"] = self.datetime
        if self.phone:
            out["phone"] = self.phone
        if self.customer_id is not None:
            out["customer"] = {"id": self.customer_id}
        return out

"""Call tracking and mapping (pure): FreeSWITCH channel events in, CRM call cards and history out.

No I/O and no clock: time comes from event headers (or is passed in by the caller). Everything
here was checked against the real streams in fs_crm/sim/captures/pbx/, whose traps shape it:
- Call-Direction is per leg: a customer's call is an inbound carrier leg plus outbound legs to
  phones; a manager's call is an inbound phone leg plus an outbound carrier leg; a click-to-call
  is two outbound legs.
- Channel-Call-UUID of a leg can change to the leg's own UUID by CHANNEL_HANGUP_COMPLETE, so a
  leg keeps the call it joined when first seen; originating_leg_uuid keeps pointing at the first leg.
- `dialed_user` also appears on the *calling* leg once it bridges to user/..., so only an
  outbound leg's dialed_user names that leg's extension.
- A caller's leg gets early media from record_session before any phone picks up: that is not an
  answer. Who answered is on the phone legs.
- billsec/duration first appear on CHANNEL_HANGUP_COMPLETE.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields

from fs_crm import vocab
from fs_crm.config import AccountConfig
from fs_crm.eslparse import Event
from fs_crm.payloads import CallEvent, CallRecord
from fs_crm.phones import clean_phone

logger = logging.getLogger(__name__)

ROLE_EXTENSION = "extension"  # a manager's phone: a user of the PBX directory
ROLE_EXTERNAL = "external"  # the carrier side: the customer
ROLE_OTHER = "other"  # loopback and other helper channels; never a party of the CRM call

_RINGING_EVENTS = frozenset({vocab.CHANNEL_PROGRESS, vocab.CHANNEL_PROGRESS_MEDIA, vocab.CHANNEL_ANSWER})
_CHANNEL_EVENTS = frozenset(vocab.TRACKED_EVENTS)
_US = 1_000_000
FINISHED_LEGS_REMEMBERED = 50_000


@dataclass
class Leg:
    uuid: str
    call_id: str
    role: str = ROLE_OTHER
    extension: str | None = None
    domain: str | None = None
    direction: str = ""  # Call-Direction of this leg
    channel_name: str = ""
    caller_number: str = ""
    destination: str = ""
    created_us: int = 0
    answered_us: int = 0
    bridged_us: int = 0
    hangup_us: int = 0
    hangup_cause: str | None = None
    billsec: int | None = None
    duration: int | None = None
    crm_direction: str | None = None
    crm_phone: str | None = None
    crm_external_phone: str | None = None
    company_candidates: tuple[str, ...] = ()
    recording: str | None = None
    discarded_recordings: tuple[str, ...] = ()
    hung_up: bool = False
    complete: bool = False  # CHANNEL_HANGUP_COMPLETE seen (or the leg was found gone)
    carded: bool = False  # an `in` card named this leg's extension
    card_closed: bool = False  # ...and a `hangup` card closed it

    @property
    def answered(self) -> bool:
        return self.answered_us > 0 or (self.billsec or 0) > 0


@dataclass
class Call:
    id: str
    legs: dict[str, Leg] = field(default_factory=dict)
    out_card_sent: bool = False
    out_hangup_sent: bool = False
    last_event_us: int = 0
    # Set by reconcile when legs vanished while we were not listening; finalised after a grace time.
    orphaned_at_us: int = 0

    def of_role(self, role: str) -> list[Leg]:
        return [leg for leg in self.legs.values() if leg.role == role]

    @property
    def root(self) -> Leg | None:
        leg = self.legs.get(self.id)
        if leg is not None:
            return leg
        known = [leg for leg in self.legs.values() if leg.created_us]
        return min(known, key=lambda leg: leg.created_us) if known else None

    @property
    def complete(self) -> bool:
        return bool(self.legs) and all(leg.complete for leg in self.legs.values())


@dataclass(frozen=True)
class LiveChannel:
    """One row of `show channels as json`, reduced to what reconciliation needs."""

    uuid: str
    call_uuid: str
    direction: str
    name: str
    cid_num: str
    dest: str
    created_epoch: int
    callstate: str
    presence_id: str


class CallTracker:
    def __init__(self, accounts: tuple[AccountConfig, ...]):
        if not accounts:
            raise ValueError("at least one account is needed")
        self.accounts = accounts
        self._by_domain = {a.domain.lower(): a for a in accounts}
        self.calls: dict[str, Call] = {}
        self._leg_call: dict[str, str] = {}
        # Legs of calls already reported: their straggling events (a DESTROY after the last
        # HANGUP_COMPLETE, a repeat after a reconnect) must not open a second call.
        self._finished_legs: OrderedDict[str, None] = OrderedDict()
        # Bumped on every change of tracked state, so the service saves a snapshot only when needed.
        self.changes = 0

    # --- event intake ---------------------------------------------------------------------
    def handle(self, event: Event) -> list[CallEvent | CallRecord]:
        name = event.name
        if name not in _CHANNEL_EVENTS:
            logger.debug("ignoring %s event", name)
            return []
        uuid = event.get(vocab.H_UNIQUE_ID)
        if not uuid:
            logger.warning("%s event without Unique-ID ignored", name)
            return []
        if uuid in self._finished_legs:
            return []
        self.changes += 1
        call, leg = self._leg_for(uuid, event)
        self._update_leg(leg, event, name)
        call.last_event_us = max(call.last_event_us, _event_time_us(event))
        effects: list[CallEvent | CallRecord] = []
        account = self._account_of(call)
        if account is None:
            logger.debug("call %s: no account matches yet", call.id)
        else:
            effects.extend(self._cards(call, leg, name, event, account))
        if call.complete:
            effects.extend(self._finish(call, account))
        return effects

    def _leg_for(self, uuid: str, event: Event) -> tuple[Call, Leg]:
        call_id = self._leg_call.get(uuid)
        if call_id is not None:
            call = self.calls[call_id]
            return call, call.legs[uuid]
        call = None
        candidates = [event.get(vocab.V_ORIGINATING_LEG)]
        if event.get(vocab.H_OTHER_TYPE) == "originator":
            candidates.append(event.get(vocab.H_OTHER_LEG_UUID))
        candidates.append(event.get(vocab.H_CALL_UUID))
        for candidate in candidates:
            if not candidate or candidate == uuid:
                continue
            known = self._leg_call.get(candidate)
            if known is not None:
                call = self.calls[known]
                break
            if candidate in self.calls:
                call = self.calls[candidate]
                break
        if call is None:
            # The first leg of a call names the call. A leg seen before its first leg (we came
            # in late) files itself under the first leg's id so both end up together.
            root = next((c for c in candidates if c and c != uuid), None) or uuid
            call = self.calls.get(root) or self.calls.setdefault(root, Call(root))
        leg = Leg(uuid=uuid, call_id=call.id)
        call.legs[uuid] = leg
        self._leg_call[uuid] = call.id
        return call, leg

    def _update_leg(self, leg: Leg, event: Event, name: str) -> None:
        # Channel variables are read only where they matter (first sight of a leg, its end, a
        # recording): parsing them is most of the cost of an event (see eslparse.Event).
        first_sight = not leg.channel_name
        if first_sight:
            leg.channel_name = event.get(vocab.H_CHANNEL_NAME) or ""
            leg.direction = event.get(vocab.H_CALL_DIRECTION) or ""
            leg.caller_number = event.get(vocab.H_CALLER_NUMBER) or ""
            leg.destination = event.get(vocab.H_DESTINATION) or ""
            self._classify(leg, event)
            leg.company_candidates = _company_candidates(leg, event)
        if first_sight:
            # Our originate sets these as origination variables: they are there from CHANNEL_CREATE on.
            for attr, var in (("crm_direction", vocab.V_CRM_DIRECTION), ("crm_phone", vocab.V_CRM_PHONE),
                              ("crm_external_phone", vocab.V_CRM_EXTERNAL_PHONE)):
                setattr(leg, attr, event.get(var))
        if name == vocab.RECORD_STOP or (name == vocab.CHANNEL_HANGUP_COMPLETE and leg.uuid == leg.call_id
                                         and leg.recording is None):
            self._note_recording(leg, event, name)
        created = event.int(vocab.H_CREATED_TIME)
        if created:
            leg.created_us = created
        elif not leg.created_us and name == vocab.CHANNEL_CREATE:
            leg.created_us = _event_time_us(event)
        answered = event.int(vocab.H_ANSWERED_TIME)
        if answered:
            leg.answered_us = answered
        elif name == vocab.CHANNEL_ANSWER and not leg.answered_us:
            leg.answered_us = _event_time_us(event)
        bridged = event.int(vocab.H_BRIDGED_TIME)
        if bridged:
            leg.bridged_us = bridged
        if name in (vocab.CHANNEL_HANGUP, vocab.CHANNEL_HANGUP_COMPLETE, vocab.CHANNEL_DESTROY):
            leg.hung_up = True
            leg.hangup_cause = event.get(vocab.H_HANGUP_CAUSE) or leg.hangup_cause
            leg.hangup_us = event.int(vocab.H_HANGUP_TIME) or leg.hangup_us or _event_time_us(event)
        if name == vocab.CHANNEL_HANGUP_COMPLETE or (name == vocab.CHANNEL_DESTROY and not leg.complete):
            leg.complete = True
            if leg.created_us and leg.hangup_us:
                return  # durations come from the microsecond stamps (see _durations)
            billsec = event.get(vocab.V_BILLSEC)
            duration = event.get(vocab.V_DURATION)
            if billsec is not None and billsec.isdigit():
                leg.billsec = int(billsec)
            if duration is not None and duration.isdigit():
                leg.duration = int(duration)

    @staticmethod
    def _note_recording(leg: Leg, event: Event, name: str) -> None:
        if name == vocab.RECORD_STOP:
            path = event.get(vocab.H_RECORD_FILE_PATH)
            if not path:
                return
            if (event.get(vocab.V_RECORD_DISCARDED) == "true"
                    or event.get(vocab.H_RECORD_COMPLETION_CAUSE) in vocab.RECORD_DISCARD_CAUSES):
                # FreeSWITCH deleted the file (empty or too short): there is nothing to upload.
                leg.discarded_recordings += (path,)
                if leg.recording == path:
                    leg.recording = None
            elif leg.recording is None:
                leg.recording = path
            return
        path = event.get(vocab.V_CRM_RECORDING)
        if path and leg.recording is None and path not in leg.discarded_recordings:
            leg.recording = path

    def _classify(self, leg: Leg, event: Event) -> None:
        if event.get(vocab.V_IS_LOOPBACK) or leg.channel_name.startswith("loopback/"):
            return
        dialed = event.get(vocab.V_DIALED_USER)
        user = event.get(vocab.V_USER_NAME)
        # Only an outbound leg's dialed_user is its own: the inbound leg that bridges to
        # user/<ext> gets the same variable (see the module docstring).
        if dialed and leg.direction != "inbound":
            leg.role, leg.extension = ROLE_EXTENSION, dialed
            leg.domain = event.get(vocab.V_DIALED_DOMAIN) or event.get(vocab.V_DOMAIN_NAME)
        elif user and leg.direction != "outbound":
            leg.role, leg.extension = ROLE_EXTENSION, user
            leg.domain = event.get(vocab.V_DOMAIN_NAME) or event.get(vocab.V_DIALED_DOMAIN)
        elif leg.channel_name:
            leg.role = ROLE_EXTERNAL

    # --- accounts ---------------------------------------------------------------------------
    def _account_of(self, call: Call) -> AccountConfig | None:
        if len(self.accounts) == 1:
            return self.accounts[0]
        for leg in call.legs.values():
            if leg.role == ROLE_EXTENSION and leg.domain:
                account = self._by_domain.get(leg.domain.lower())
                if account is not None:
                    return account
        for leg in call.of_role(ROLE_EXTERNAL):
            for number in leg.company_candidates:
                for account in self.accounts:
                    if account.site_of(number):
                        return account
        return None

    # --- what kind of call is it ----------------------------------------------------------
    @staticmethod
    def _direction(call: Call) -> str | None:
        """'in', 'out', or None for a call that is not a CRM call (internal, or not yet known)."""
        externals = call.of_role(ROLE_EXTERNAL)
        if not externals:
            return None
        for leg in call.legs.values():
            if leg.crm_direction in (vocab.EVENT_IN, vocab.EVENT_OUT):
                return leg.crm_direction
        root = call.root
        if root is not None and root.role == ROLE_EXTENSION:
            return vocab.EVENT_OUT
        if root is not None and root.role == ROLE_EXTERNAL:
            return vocab.EVENT_IN
        return vocab.EVENT_IN if any(leg.direction == "inbound" for leg in externals) else vocab.EVENT_OUT

    @staticmethod
    def _customer_leg(call: Call, direction: str) -> Leg | None:
        externals = call.of_role(ROLE_EXTERNAL)
        if not externals:
            return None
        root = call.root
        if direction == vocab.EVENT_IN and root is not None and root.role == ROLE_EXTERNAL:
            return root
        answered = [leg for leg in externals if leg.answered]
        return (answered or sorted(externals, key=lambda leg: leg.created_us))[0]

    @staticmethod
    def _customer_phone(call: Call, direction: str, customer: Leg) -> str:
        for leg in call.legs.values():
            if leg.crm_phone:
                return clean_phone(leg.crm_phone)
        if direction == vocab.EVENT_IN:
            return clean_phone(customer.caller_number)
        return clean_phone(customer.destination)

    @staticmethod
    def _company_number(call: Call, customer: Leg, account: AccountConfig) -> tuple[str | None, str | None]:
        """(externalPhone, site): the configured number and its store when one matches."""
        marked = [leg.crm_external_phone for leg in call.legs.values() if leg.crm_external_phone]
        candidates = tuple(marked) + customer.company_candidates
        for number in candidates:
            match = account.site_of(number)
            if match is not None:
                return match[1], match[0]
        return (clean_phone(candidates[0]) if candidates else None), None

    def _manager_codes(self, call: Call, account: AccountConfig) -> list[Leg]:
        return [leg for leg in call.of_role(ROLE_EXTENSION)
                if leg.extension and account.has_extension(leg.extension)]

    # --- call cards -------------------------------------------------------------------------
    @staticmethod
    def _may_card(call: Call, leg: Leg, name: str) -> bool:
        """Cheap test before the card logic: most events cannot produce a card."""
        if name == vocab.CHANNEL_HANGUP:
            return True
        if name == vocab.CHANNEL_CREATE:
            return leg.role == ROLE_EXTERNAL and not call.out_card_sent
        return name in _RINGING_EVENTS and leg.role == ROLE_EXTENSION and not leg.carded

    def _cards(self, call: Call, leg: Leg, name: str, event: Event,
               account: AccountConfig) -> list[CallEvent]:
        if not self._may_card(call, leg, name):
            return []
        direction = self._direction(call)
        if direction is None:
            return []
        customer = self._customer_leg(call, direction)
        if customer is None:
            return []
        at = _event_time_us(event) / _US
        phone = self._customer_phone(call, direction, customer)
        external_phone, site = self._company_number(call, customer, account)

        def card(kind: str, codes: list[str], status: str | None = None) -> CallEvent:
            return CallEvent(account=account.name, type=kind, phone=phone, codes=tuple(codes), call_id=call.id,
                             created_at=at, external_phone=external_phone, site=site, hangup_status=status)

        if direction == vocab.EVENT_IN:
            return self._incoming_cards(call, leg, name, account, card)
        return self._outgoing_cards(call, leg, name, account, card)

    def _incoming_cards(self, call, leg, name, account, card) -> list[CallEvent]:
        cards: list[CallEvent] = []
        managers = self._manager_codes(call, account)
        if name in _RINGING_EVENTS and leg.role == ROLE_EXTENSION:
            # One card for every phone of a ring group: by the first ringing event all legs the
            # bridge forked have been created, so they go out together.
            fresh = [m for m in managers if not m.carded and not m.hung_up]
            if fresh:
                for m in fresh:
                    m.carded = True
                cards.append(card(vocab.EVENT_IN, _unique(m.extension for m in fresh)))
        if name == vocab.CHANNEL_HANGUP and leg.role == ROLE_EXTENSION and leg.carded and not leg.card_closed:
            leg.card_closed = True
            cards.append(card(vocab.EVENT_HANGUP, [leg.extension], _leg_hangup_status(leg)))
        elif name == vocab.CHANNEL_HANGUP and leg.role == ROLE_EXTERNAL and leg is call.root:
            # The caller hung up: every card still showing closes at once with the call's outcome,
            # in one event, rather than one by one as FreeSWITCH tears the phone legs down.
            still = [m for m in managers if m.carded and not m.card_closed]
            if still:
                status = vocab.HANGUP_ANSWERED if any(m.answered for m in managers) else vocab.HANGUP_NO_ANSWER
                for m in still:
                    m.card_closed = True
                cards.append(card(vocab.EVENT_HANGUP, _unique(m.extension for m in still), status))
        return cards

    def _outgoing_cards(self, call, leg, name, account, card) -> list[CallEvent]:
        managers = self._manager_codes(call, account)
        if not managers:
            return []
        codes = _unique(m.extension for m in managers[:1])
        if not call.out_card_sent and leg.role == ROLE_EXTERNAL and name == vocab.CHANNEL_CREATE:
            call.out_card_sent = True
            return [card(vocab.EVENT_OUT, codes)]
        if call.out_card_sent and not call.out_hangup_sent and name == vocab.CHANNEL_HANGUP:
            call.out_hangup_sent = True
            externals = call.of_role(ROLE_EXTERNAL)
            if any(x.answered for x in externals):
                status = vocab.HANGUP_ANSWERED
            elif leg.role == ROLE_EXTERNAL:
                status = vocab.HANGUP_STATUS_BY_RESULT[_unanswered_result([leg.hangup_cause])]
            else:
                status = vocab.HANGUP_NO_ANSWER  # the manager gave up before the customer answered
            return [card(vocab.EVENT_HANGUP, codes, status)]
        return []

    # --- history ----------------------------------------------------------------------------
    def _finish(self, call: Call, account: AccountConfig | None) -> list[CallRecord]:
        del self.calls[call.id]
        for uuid in call.legs:
            self._leg_call.pop(uuid, None)
            self._finished_legs[uuid] = None
        while len(self._finished_legs) > FINISHED_LEGS_REMEMBERED:
            self._finished_legs.popitem(last=False)
        direction = self._direction(call)
        if direction is None:
            logger.debug("call %s finished: internal, not a CRM call", call.id)
            return []
        if account is None:
            logger.warning("call %s finished but matches no account (domains %s); not reported", call.id,
                           sorted({leg.domain for leg in call.legs.values() if leg.domain}))
            return []
        record = self.record_of(call, direction, account)
        if record is None:
            return []
        logger.info("call %s account %s finished: %s %s %s, talk %ss, waited %ss", call.id, account.name,
                    record.type, record.result, record.code or "-", record.duration, record.duration_waiting)
        return [record]

    def record_of(self, call: Call, direction: str, account: AccountConfig) -> CallRecord | None:
        customer = self._customer_leg(call, direction)
        if customer is None:
            return None
        managers = self._manager_codes(call, account)
        if direction == vocab.EVENT_IN:
            answered_by = sorted((m for m in managers if m.answered), key=lambda m: m.answered_us)
            answered = bool(answered_by)
            if answered_by:
                handler = answered_by[0]
            else:
                rang = _unique(m.extension for m in managers)
                handler = next((m for m in managers), None) if len(rang) == 1 else None
            failed_legs = managers or [customer]
        else:
            answered = customer.answered
            handler = next((m for m in managers if m.uuid == call.id), None) or (managers[0] if managers else None)
            failed_legs = [customer]
        if answered:
            result = vocab.RESULT_ANSWERED
        else:
            result = _unanswered_result([leg.hangup_cause for leg in failed_legs])
        talk, waited = _durations(customer, answered)
        root = call.root or customer
        external_phone, site = self._company_number(call, customer, account)
        code = handler.extension if handler else None
        recordings = [leg.recording for leg in sorted(call.legs.values(), key=lambda x: x.uuid != call.id)
                      if leg.recording]
        return CallRecord(
            account=account.name, external_id=call.id, date=_local_time(root.created_us, account),
            type=direction, phone=self._customer_phone(call, direction, customer), result=result,
            duration=talk, duration_waiting=waited, code=code,
            user_id=account.user_id_of(code) if code else None, external_phone=external_phone, site=site,
            recording_path=recordings[0] if recordings else None,
        )

    # --- after a reconnect ------------------------------------------------------------------
    def reconcile(self, live: list[LiveChannel], now_us: int, idle_us: int | None = None) -> None:
        """Align tracked calls with what FreeSWITCH says is alive right now.

        Legs we track that are gone ended while we were not listening: they are marked orphaned
        and finished by `expire_orphans` after a grace time, unless their late events still arrive.
        Live legs we do not know are adopted, so their later events complete a proper record.

        With `idle_us` (a periodic sweep while connected, whose channel list may race the event
        stream) only calls silent for that long are considered, and nothing is adopted.
        """
        self.changes += 1
        alive = {ch.uuid for ch in live}
        for call in list(self.calls.values()):
            if idle_us is not None and now_us - call.last_event_us < idle_us:
                continue
            if any(uuid not in alive and not leg.complete for uuid, leg in call.legs.items()):
                call.orphaned_at_us = call.orphaned_at_us or now_us
        if idle_us is not None:
            return
        for ch in live:
            if ch.uuid in self._leg_call:
                continue
            root = ch.call_uuid if ch.call_uuid and ch.call_uuid != ch.uuid else ch.uuid
            root = self._leg_call.get(root, root)
            call = self.calls.setdefault(root, Call(root))
            leg = Leg(uuid=ch.uuid, call_id=root, direction=ch.direction, channel_name=ch.name,
                      caller_number=ch.cid_num, destination=ch.dest, created_us=ch.created_epoch * _US)
            if ch.presence_id and "@" in ch.presence_id and not ch.name.startswith("loopback/"):
                leg.role = ROLE_EXTENSION
                leg.extension, leg.domain = ch.presence_id.split("@", 1)
            elif not ch.name.startswith("loopback/"):
                leg.role = ROLE_EXTERNAL
            leg.company_candidates = (ch.dest,) if ch.direction == "inbound" else (ch.cid_num,)
            if ch.callstate in ("ACTIVE", "HELD"):
                leg.answered_us = leg.created_us
            # Cards for calls picked up midway would be stale or duplicates: only history follows.
            leg.carded = leg.card_closed = True
            call.out_card_sent = call.out_hangup_sent = True
            call.legs[ch.uuid] = leg
            self._leg_call[ch.uuid] = root
            logger.info("call %s: adopted live leg %s after reconnect", root, ch.uuid)

    def expire_orphans(self, now_us: int, grace_us: int) -> list[CallRecord]:
        """Finish calls whose legs vanished during a disconnect, with what is known of them."""
        records: list[CallRecord] = []
        for call in list(self.calls.values()):
            if not call.orphaned_at_us or now_us - call.orphaned_at_us < grace_us:
                continue
            for leg in call.legs.values():
                if not leg.complete:
                    leg.complete = leg.hung_up = True
                    # When it really ended is unknown: the last event seen is what we can vouch for.
                    leg.hangup_us = leg.hangup_us or call.last_event_us or call.orphaned_at_us
            logger.warning("call %s: its legs ended without us seeing the end (disconnected, or events lost); "
                           "reporting it with the times known, ending at the last event seen", call.id)
            for effect in self._finish(call, self._account_of(call)):
                records.append(effect)
        return records

    def active_calls(self) -> int:
        return len(self.calls)

    # --- surviving a restart ----------------------------------------------------------------
    SNAPSHOT_VERSION = 1

    def snapshot(self) -> dict:
        """The calls in progress as plain JSON-able data."""
        calls = []
        for call in self.calls.values():
            data = {f.name: getattr(call, f.name) for f in fields(Call) if f.name != "legs"}
            data["legs"] = [asdict(leg) for leg in call.legs.values()]
            calls.append(data)
        return {"version": self.SNAPSHOT_VERSION, "calls": calls}

    def restore(self, snapshot: dict) -> int:
        """Take back the calls a previous run was tracking; the first reconcile then tells which
        of them ended while fs-crm was down. Returns how many calls were restored."""
        if snapshot.get("version") != self.SNAPSHOT_VERSION:
            logger.warning("ignoring saved calls in progress: snapshot version %r", snapshot.get("version"))
            return 0
        leg_names = {f.name for f in fields(Leg)}
        call_names = {f.name for f in fields(Call)} - {"legs"}
        restored = 0
        for data in snapshot.get("calls", []):
            try:
                call = Call(**{k: v for k, v in data.items() if k in call_names})
                for leg_data in data.get("legs", []):
                    leg_data = {k: v for k, v in leg_data.items() if k in leg_names}
                    for name in ("company_candidates", "discarded_recordings"):
                        leg_data[name] = tuple(leg_data.get(name, ()))
                    leg = Leg(**leg_data)
                    call.legs[leg.uuid] = leg
                    self._leg_call[leg.uuid] = call.id
            except (TypeError, AttributeError) as exc:
                logger.warning("skipping an unreadable saved call: %s", exc)
                continue
            self.calls[call.id] = call
            restored += 1
        return restored


def parse_live_channels(rows: list[dict]) -> list[LiveChannel]:
    """Rows of `show channels as json` ({"row_count": N, "rows": [...]}) into LiveChannel values."""
    out = []
    for row in rows:
        if not isinstance(row, dict) or not row.get("uuid"):
            continue
        epoch = str(row.get("created_epoch") or "0")
        out.append(LiveChannel(
            uuid=str(row["uuid"]), call_uuid=str(row.get("call_uuid") or ""),
            direction=str(row.get("direction") or ""), name=str(row.get("name") or ""),
            cid_num=str(row.get("cid_num") or ""), dest=str(row.get("dest") or ""),
            created_epoch=int(epoch) if epoch.isdigit() else 0, callstate=str(row.get("callstate") or ""),
            presence_id=str(row.get("presence_id") or ""),
        ))
    return out


# --- small pure helpers -------------------------------------------------------------------------
def _event_time_us(event: Event) -> int:
    return event.int(vocab.H_EVENT_TIMESTAMP)


def _unique(values) -> list[str]:
    seen: list[str] = []
    for v in values:
        if v and v not in seen:
            seen.append(v)
    return seen


def _company_candidates(leg: Leg, event: Event) -> tuple[str, ...]:
    """Numbers that may be the company's: the number dialled on a call coming in from the
    carrier, the caller id presented on a call going out to it."""
    if leg.role != ROLE_EXTERNAL:
        return ()
    if leg.direction == "inbound":
        names = (vocab.H_DESTINATION, "variable_sip_to_user", "variable_sip_req_user")
    else:
        names = (vocab.H_CALLER_NUMBER, "variable_sip_from_user", "variable_effective_caller_id_number",
                 "variable_origination_caller_id_number")
    return tuple(_unique(event.get(n) for n in names))


def _unanswered_result(causes: list[str | None]) -> str:
    results = {vocab.UNANSWERED_RESULT_BY_CAUSE.get(c or "", vocab.RESULT_UNKNOWN) for c in causes}
    for result in vocab.RESULT_PRIORITY:
        if result in results:
            return result
    return vocab.RESULT_UNKNOWN


def _leg_hangup_status(leg: Leg) -> str:
    if leg.answered:
        return vocab.HANGUP_ANSWERED
    if leg.hangup_cause in vocab.CAUSES_ANSWERED_ELSEWHERE:
        return vocab.HANGUP_CANCEL
    return vocab.HANGUP_STATUS_BY_RESULT[_unanswered_result([leg.hangup_cause])]


def _durations(customer: Leg, answered: bool) -> tuple[int, int]:
    """(talk seconds, waiting seconds) seen from the customer's leg.

    FreeSWITCH's billsec counts from the leg's answer, which for a caller answered by an IVR or
    a recorder is long before a manager speaks, so talk time counts from the bridge when there is one.
    """
    # Differences of the microsecond stamps, rounded, are closer to the truth than FreeSWITCH's own
    # billsec/duration, which subtract epoch seconds truncated separately (off by one either way).
    if customer.created_us and customer.hangup_us:
        total = max(0, round((customer.hangup_us - customer.created_us) / _US))
    else:
        total = customer.duration or 0
    if not answered:
        return 0, total
    start_us = customer.bridged_us or customer.answered_us
    if start_us and customer.hangup_us:
        talk = round((customer.hangup_us - start_us) / _US)
    else:
        talk = customer.billsec or 0
    talk = max(0, min(talk, total)) if total else max(0, talk)
    return talk, max(0, total - talk)


def _local_time(epoch_us: int, account: AccountConfig) -> str:
    moment = dt.datetime.fromtimestamp(epoch_us / _US, tz=dt.timezone.utc).astimezone(account.zone)
    return moment.strftime("%Y-%m-%d %H:%M:%S")

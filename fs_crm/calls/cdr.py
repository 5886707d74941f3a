"""mod_json_cdr's call detail records into history (pure): the legs of a call (read by
fs_crm.calls.cdr_legs) back into the channel events FreeSWITCH fired, then the history records the
ESL path makes of them.

mod_json_cdr writes one CDR per leg when the leg ends, posts it, and spools it to its
`err-log-dir` when the post fails (conf/freeswitch/json_cdr.conf.xml). A call fs-crm never saw
over the event socket (it was down) must still reach the CRM, and as the very record the ESL path
would have made: same grouping of legs, same mapping, same externalId. So nothing here maps a CDR
to a record by itself: `events_of` turns the legs of a call back into the channel events FreeSWITCH
fired (CHANNEL_CREATE, ANSWER, BRIDGE, UNBRIDGE, RECORD_STOP, HANGUP_COMPLETE, as far as the
CDR's times tell), and `records_from_cdrs` feeds them in time order through a fresh CallTracker.

Values at the end of a leg are not always those the leg started with, and the ESL path classifies
a leg at first sight. The traps found on the real captures (fs_crm/sim/captures/cdr/):
an inbound leg that a uuid_bridge made the "originatee" shows the other party as its caller
(pickup, valet retrieval, att_xfer: `caller_id_number` of even the oldest profile is rewritten;
`ani` keeps the caller); an outbound leg whose caller id was flipped keeps the first one in
`pre_transfer_caller_id_number`; an outbound leg that dialled others itself (att_xfer) ends with
the last user it dialled as `dialed_user`, its own user stays in `presence_id`; sofia's
`sip_from_user`/`sip_to_user`/`sip_req_user` of an outbound leg and `dialed_user`/`dialed_domain`
of an inbound one appear only later in the call.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from fs_crm import vocab
from fs_crm.calls.cdr_legs import (
    SAME_BRIDGE_US,
    V_CID_FLIPPED,
    V_CRM_RECORDING,
    V_DIALED_DOMAIN,
    V_DIALED_USER,
    V_HANGUP_CAUSE,
    V_LAST_BRIDGE_ROLE,
    V_ORIGINATED_LEGS,
    V_PRE_TRANSFER_CID,
    V_PRESENCE_ID,
    V_RECORD_COMPLETION,
    VAR_PREFIX,
    CdrError,
    CdrLeg,
    bridge_partner,
    cdr_document,
    group_calls,
    leg_of,
    missing_legs,
    parse_cdr,
)
from fs_crm.calls.tracker import CallTracker
from fs_crm.config import AccountConfig
from fs_crm.crm.payloads import CallRecord
from fs_crm.freeswitch.eslparse import DictEvent, Event

# The CDR's legs come from here too, with what is made of them.
__all__ = ["CdrError", "CdrLeg", "cdr_document", "events_of", "group_calls", "leg_of", "missing_legs", "parse_cdr",
           "records_from_cdrs"]

logger = logging.getLogger(__name__)

# Variables the leg did not have yet when FreeSWITCH fired its CHANNEL_CREATE (see the docstring).
_LATER_VARIABLES = {
    "inbound": frozenset({V_DIALED_USER, V_DIALED_DOMAIN}),
    "outbound": frozenset({"sip_from_user", "sip_to_user", "sip_req_user"}),
}
# Synthetic events at the same microsecond go in this order: a leg exists before anything happens
# to it; a transfer leaves the old bridge before it enters the new one; a leg ends last.
_ORDER = {vocab.CHANNEL_CREATE: 0, vocab.CHANNEL_ANSWER: 1, vocab.CHANNEL_UNBRIDGE: 2, vocab.CHANNEL_BRIDGE: 3,
          vocab.RECORD_STOP: 4, vocab.CHANNEL_HANGUP_COMPLETE: 5}


# --- back to channel events -----------------------------------------------------------------------
def records_from_cdrs(cdrs: Iterable[CdrLeg | Mapping], accounts: Sequence[AccountConfig]) -> list[CallRecord]:
    """The history records of these legs (one call's, or a pile of them): their events replayed
    through a fresh CallTracker, so grouping and mapping are the ESL path's. Cards are dropped."""
    once: dict[str, CdrLeg] = {}
    for cdr in cdrs:
        leg = cdr if isinstance(cdr, CdrLeg) else leg_of(cdr)
        once.setdefault(leg.uuid, leg)  # a leg reported twice (a retried post) counts once
    legs = sorted(once.values(), key=lambda leg: leg.start_us)
    tracker = CallTracker(tuple(accounts))
    records = [effect for event in events_of(legs) for effect in tracker.handle(event)
               if isinstance(effect, CallRecord)]
    if tracker.active_calls():  # cannot happen: every leg of a CDR has ended
        logger.warning("CDR replay left %d call(s) unfinished: %s", tracker.active_calls(), sorted(tracker.calls))
    return records


def events_of(legs: Sequence[CdrLeg]) -> list[Event]:
    """The channel events the legs' CDRs tell of, in the order FreeSWITCH fired them."""
    by_uuid = {leg.uuid: leg for leg in legs}
    timeline: list[tuple[int, int, int, Event]] = []

    def add(at_us: int, event: DictEvent) -> None:
        timeline.append((at_us, _ORDER[event.name], len(timeline), event))

    for leg in legs:
        add(leg.start_us, _event(vocab.CHANNEL_CREATE, leg, leg.start_us, _first_sight(leg, by_uuid)))
        if leg.answer_us:
            add(leg.answer_us, _event(vocab.CHANNEL_ANSWER, leg, leg.answer_us))
        if leg.variables.get(V_RECORD_COMPLETION) and leg.variables.get(V_CRM_RECORDING):
            # record_session stopped with the leg; FreeSWITCH's RECORD_STOP, its cause and its
            # RECORD_DISCARDED are in the variables (the last recording's, should there be several).
            add(leg.end_us, _record_stop(leg))
        add(leg.end_us, _event(vocab.CHANNEL_HANGUP_COMPLETE, leg, leg.end_us, _final(leg)))
    bridges = _bridges(legs, by_uuid)
    for bridge in bridges:
        a = by_uuid[bridge.a]
        add(bridge.start, _bridge_event(vocab.CHANNEL_BRIDGE, a, bridge.b, bridge.start))
        if bridge.end < a.end_us:
            # The B side may have moved on to another bridge by now (its CDR is missing, or it
            # left first): then only the A side leaves, as its own hangup would have it.
            moved = bridge.b and any(other is not bridge and bridge.b in (other.a, other.b)
                                     and bridge.start < other.start <= bridge.end for other in bridges)
            add(bridge.end, _bridge_event(vocab.CHANNEL_UNBRIDGE, a, None if moved else bridge.b, bridge.end))
    timeline.sort(key=lambda item: item[:3])
    return [event for *_, event in timeline]


def _event(name: str, leg: CdrLeg, at_us: int, headers: Mapping[str, str] | None = None) -> DictEvent:
    """An event of `leg` at `at_us`, with the channel headers FreeSWITCH puts on every event."""
    first = leg.profiles[0]
    created = name == vocab.CHANNEL_CREATE  # nothing has happened to a leg yet when it is created
    bridged = 0 if created else max((p.time("bridged_time") for p in leg.profiles
                                     if 0 < p.time("bridged_time") <= at_us), default=0)
    answered = leg.answer_us if not created and 0 < leg.answer_us <= at_us else 0
    raw = {
        vocab.H_EVENT_NAME: name, vocab.H_UNIQUE_ID: leg.uuid, vocab.H_EVENT_TIMESTAMP: str(at_us),
        vocab.H_CHANNEL_NAME: first.caller.get("chan_name") or leg.variables.get("channel_name", ""),
        vocab.H_CALL_DIRECTION: leg.direction,
        vocab.H_CALLER_NUMBER: _first_caller_number(leg), vocab.H_DESTINATION: first.caller.get("destination_number", ""),
        vocab.H_CREATED_TIME: str(leg.start_us),
        vocab.H_ANSWERED_TIME: str(answered),
        vocab.H_BRIDGED_TIME: str(bridged),
        vocab.H_HANGUP_TIME: str(leg.end_us if name == vocab.CHANNEL_HANGUP_COMPLETE else 0),
    }
    raw.update(headers or {})
    return DictEvent(raw, decoded=True)


def _first_sight(leg: CdrLeg, by_uuid: Mapping[str, CdrLeg]) -> dict[str, str]:
    """What a CHANNEL_CREATE carries beyond the channel headers: who originated the leg, and its
    variables as far as they were known then."""
    later = _LATER_VARIABLES.get(leg.direction, frozenset())
    headers = {VAR_PREFIX + k: v for k, v in leg.variables.items() if k not in later}
    originator = _originator(leg)
    if originator:
        headers[vocab.H_OTHER_TYPE] = "originator"
        headers[vocab.H_OTHER_LEG_UUID] = originator
    headers[vocab.H_CALL_UUID] = _first_call_uuid(leg, by_uuid)
    dialed = _own_dialed_user(leg)
    if dialed:
        headers[vocab.V_DIALED_USER] = dialed
    return headers


def _originator(leg: CdrLeg) -> str | None:
    return next(iter(leg.profiles[0].originators), None)


def _first_call_uuid(leg: CdrLeg, by_uuid: Mapping[str, CdrLeg]) -> str:
    """Channel-Call-UUID when the leg was created: its originator's at that moment, so the first
    leg of a chain of originates (a consultation call dialled from a phone leg names the customer);
    bridges and hangups move it later (see legs.py)."""
    seen = {leg.uuid}
    uuid = _originator(leg) or leg.uuid
    while uuid in by_uuid and uuid not in seen:
        seen.add(uuid)
        uuid = _originator(by_uuid[uuid]) or uuid
    return uuid


def _final(leg: CdrLeg) -> dict[str, str]:
    headers = {VAR_PREFIX + k: v for k, v in leg.variables.items()}
    headers[vocab.H_HANGUP_CAUSE] = leg.variables.get(V_HANGUP_CAUSE, "")
    return headers


def _record_stop(leg: CdrLeg) -> DictEvent:
    """fs-crm's recording of the leg ended with it (record_session stops at hangup)."""
    headers = {VAR_PREFIX + k: v for k, v in leg.variables.items()}
    headers[vocab.H_RECORD_FILE_PATH] = leg.variables[V_CRM_RECORDING]
    headers[vocab.H_RECORD_COMPLETION_CAUSE] = leg.variables[V_RECORD_COMPLETION]
    return _event(vocab.RECORD_STOP, leg, leg.end_us, headers)


def _first_caller_number(leg: CdrLeg) -> str:
    first = leg.profiles[0].caller
    if leg.variables.get(V_CID_FLIPPED) == "yes" and leg.variables.get(V_PRE_TRANSFER_CID):
        return leg.variables[V_PRE_TRANSFER_CID]
    if leg.direction == "inbound" and leg.variables.get(V_LAST_BRIDGE_ROLE) == "originatee" and first.get("ani"):
        # Bridged in as the other side (pickup, valet retrieval, uuid_bridge): FreeSWITCH rewrote
        # the caller id to show the party it was bridged to, in every profile; the ANI is the caller's.
        return first["ani"]
    return first.get("caller_id_number", "")


def _own_dialed_user(leg: CdrLeg) -> str | None:
    """An outbound leg that dialled users itself (att_xfer) ends with the last of them as its
    dialed_user; its own user is the one its presence_id names."""
    if leg.direction != "outbound" or not leg.variables.get(V_ORIGINATED_LEGS) or not leg.variables.get(V_DIALED_USER):
        return None
    user, _, domain = leg.variables.get(V_PRESENCE_ID, "").partition("@")
    if user and domain == leg.variables.get(V_DIALED_DOMAIN, domain):
        return user
    return leg.profiles[0].caller.get("destination_number") or None


# --- bridges ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Side:
    """One leg's record of a bridge: a profile's last bridge, until the profile was transferred
    away or the leg ended."""

    leg: CdrLeg
    partner: str | None
    start: int
    end: int
    a_side: bool | None  # whether this leg was the bridge's A side (its CHANNEL_BRIDGE); None: unknown


@dataclass(frozen=True)
class _Bridge:
    a: str
    b: str | None
    start: int
    end: int


def _bridges(legs: Sequence[CdrLeg], by_uuid: Mapping[str, CdrLeg]) -> list[_Bridge]:
    """Every bridge the legs were in, once. Both legs' records of one bridge are one bridge, which
    ends when either side leaves it; a bridge only one record tells of lasts as that record says."""
    sides = []
    for leg in legs:
        for i, profile in enumerate(leg.profiles):
            start = profile.time("bridged_time")
            if start:
                end = min(profile.time("transfer_time") or leg.end_us, leg.end_us)
                partner = bridge_partner(leg, i, by_uuid)
                sides.append(_Side(leg, partner, start, max(start, end), _a_side(leg, i, partner)))
    bridges = []
    paired: set[int] = set()
    for i, side in enumerate(sides):
        if i in paired:
            continue
        twin = next((j for j, other in enumerate(sides) if j > i and j not in paired
                     and other.leg.uuid == side.partner and other.partner == side.leg.uuid
                     and abs(other.start - side.start) <= SAME_BRIDGE_US), None)
        start, end, a = side.start, side.end, side
        if twin is not None:
            paired.add(twin)
            other = sides[twin]
            start, end = min(start, other.start), min(end, other.end)
            if side.a_side is False or (side.a_side is None and (
                    other.a_side or (other.a_side is None and other.leg.start_us < side.leg.start_us))):
                a = other
        b = by_uuid.get(a.partner or "")
        start = max(start, a.leg.start_us, b.start_us if b else 0)
        bridges.append(_Bridge(a.leg.uuid, a.partner, start, max(start, end)))
    return bridges




def _a_side(leg: CdrLeg, index: int, partner: str | None) -> bool | None:
    """Whether `leg` was the A side of its profile `index`'s bridge: the side FreeSWITCH fires
    CHANNEL_BRIDGE on, whose call is kept when two customers' calls are bridged."""
    profile = leg.profiles[index]
    if index == len(leg.profiles) - 1:
        role = leg.variables.get(V_LAST_BRIDGE_ROLE)
        if role in ("originator", "originatee"):
            return role == "originator"
    if partner and partner in profile.originatees:
        return True
    if partner and partner in profile.originators:
        return False
    return None


def _bridge_event(name: str, a: CdrLeg, b: str | None, at_us: int) -> DictEvent:
    headers = {vocab.H_BRIDGE_A: a.uuid}
    if b:
        headers.update({vocab.H_BRIDGE_B: b, vocab.H_OTHER_LEG_UUID: b})
    return _event(name, a, at_us, headers)

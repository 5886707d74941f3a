"""mod_json_cdr's call detail records (pure): a CDR body in, the legs of a call, then the history
records the ESL path makes of them.

mod_json_cdr writes one CDR per leg when the leg ends, posts it, and spools it to its
`err-log-dir` when the post fails (conf/freeswitch/json_cdr.conf.xml). A call fs-crm never saw
over the event socket (it was down) must still reach the CRM, and as the very record the ESL path
would have made: same grouping of legs, same mapping, same externalId. So nothing here maps a CDR
to a record by itself: `events_of` turns the legs of a call back into the channel events FreeSWITCH
fired (CHANNEL_CREATE, ANSWER, BRIDGE, UNBRIDGE, RECORD_STOP, HANGUP_COMPLETE, as far as the
CDR's times tell), and `records_from_cdrs` feeds them in time order through a fresh CallTracker.

What a CDR holds (mod_json_cdr.c and switch_ivr_generate_json_cdr at FS@cc93a68):
- `variables`: the channel variables as they were at the end of the leg, URL-encoded unless
  `encode-values` is false; `start_uepoch`, `answer_uepoch`, `end_uepoch` (microseconds).
- `callflow`: one entry per caller profile, newest first. A transfer (`transfer`, uuid_bridge,
  mod_callcenter's bridge, valet parking) starts a new profile; each has its own `times`
  (`bridged_time` is the profile's last bridge, `transfer_time` when the next profile took over)
  and names the legs it originated (`originatee`) or was originated by (`originator`).
- Values at the end are not always those the leg started with, and the ESL path classifies a leg
  at first sight. The traps found on the real captures (fs_crm/sim/captures/cdr/):
  an inbound leg that a uuid_bridge made the "originatee" shows the other party as its caller
  (pickup, valet retrieval, att_xfer: `caller_id_number` of even the oldest profile is rewritten;
  `ani` keeps the caller); an outbound leg whose caller id was flipped keeps the first one in
  `pre_transfer_caller_id_number`; an outbound leg that dialled others itself (att_xfer) ends with
  the last user it dialled as `dialed_user`, its own user stays in `presence_id`; sofia's
  `sip_from_user`/`sip_to_user`/`sip_req_user` of an outbound leg and `dialed_user`/`dialed_domain`
  of an inbound one appear only later in the call.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from fs_crm import vocab
from fs_crm.calls.tracker import CallTracker
from fs_crm.config import AccountConfig
from fs_crm.crm.payloads import CallRecord
from fs_crm.freeswitch.eslparse import DictEvent, Event

logger = logging.getLogger(__name__)

# The channel variables and profile fields read here (mod_json_cdr's names, without `variable_`).
V_UUID = "uuid"
V_DIRECTION = "direction"
V_START = "start_uepoch"
V_ANSWER = "answer_uepoch"
V_END = "end_uepoch"
V_START_STAMP = "start_stamp"  # "2026-12-02 00:05:45": its space and colons tell URL-encoded values
V_HANGUP_CAUSE = "hangup_cause"
V_BRIDGE_UUID = "bridge_uuid"
V_LAST_BRIDGE_TO = "last_bridge_to"
V_SIGNAL_BOND = "signal_bond"
V_LAST_BRIDGE_ROLE = "last_bridge_role"
V_ORIGINATED_LEGS = "originated_legs"
V_PRESENCE_ID = "presence_id"
V_CID_FLIPPED = "channel_cid_flipped"
V_PRE_TRANSFER_CID = "pre_transfer_caller_id_number"
V_RECORD_COMPLETION = "record_completion_cause"
_VAR = "variable_"  # what an event calls a channel variable
V_ORIGINATING_LEG = vocab.V_ORIGINATING_LEG.removeprefix(_VAR)
V_CC_MEMBER_SESSION = vocab.V_CC_MEMBER_SESSION.removeprefix(_VAR)
V_CRM_RECORDING = vocab.V_CRM_RECORDING.removeprefix(_VAR)
V_DIALED_USER = vocab.V_DIALED_USER.removeprefix(_VAR)
V_DIALED_DOMAIN = vocab.V_DIALED_DOMAIN.removeprefix(_VAR)
# Variables the leg did not have yet when FreeSWITCH fired its CHANNEL_CREATE (see the docstring).
_LATER_VARIABLES = {
    "inbound": frozenset({V_DIALED_USER, V_DIALED_DOMAIN}),
    "outbound": frozenset({"sip_from_user", "sip_to_user", "sip_req_user"}),
}
# Two legs' records of one bridge start within this of each other (FreeSWITCH stamps both at once).
SAME_BRIDGE_US = 1_000_000
# Synthetic events at the same microsecond go in this order: a leg exists before anything happens
# to it; a transfer leaves the old bridge before it enters the new one; a leg ends last.
_ORDER = {vocab.CHANNEL_CREATE: 0, vocab.CHANNEL_ANSWER: 1, vocab.CHANNEL_UNBRIDGE: 2, vocab.CHANNEL_BRIDGE: 3,
          vocab.RECORD_STOP: 4, vocab.CHANNEL_HANGUP_COMPLETE: 5}


class CdrError(ValueError):
    """A CDR body that cannot be read; the message says what is wrong with it (and where it came from)."""


# --- one leg --------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Profile:
    """One caller profile of a leg's callflow."""

    caller: Mapping[str, str]  # the profile's own fields: chan_name, caller_id_number, ani, destination_number...
    times: Mapping[str, int]  # microseconds since the epoch, 0 when not reached
    originators: tuple[str, ...] = ()  # the leg that originated this one (uuids)
    originatees: tuple[str, ...] = ()  # the legs this profile originated

    def time(self, name: str) -> int:
        return self.times.get(name, 0)


@dataclass(frozen=True, eq=False)
class CdrLeg:
    """One leg as mod_json_cdr reported it."""

    uuid: str
    variables: Mapping[str, str]  # decoded
    profiles: tuple[Profile, ...]  # oldest first
    source: str = ""  # where it came from (a file name), for messages
    start_us: int = 0
    answer_us: int = 0
    end_us: int = 0

    @property
    def direction(self) -> str:
        return self.variables.get(V_DIRECTION, "")

    def links(self) -> list[str]:
        """Every other leg this one names: the legs it may share a call with."""
        names = [self.variables.get(n) for n in (V_ORIGINATING_LEG, V_CC_MEMBER_SESSION, V_BRIDGE_UUID,
                                                  V_LAST_BRIDGE_TO, V_SIGNAL_BOND, "call_uuid", "originator")]
        for profile in self.profiles:
            names.extend(profile.originators + profile.originatees)
        names.extend(_array_uuids(self.variables.get(V_ORIGINATED_LEGS, "")))
        return [n for n in dict.fromkeys(names) if n and n != self.uuid]

    def parents(self) -> list[str]:
        """The legs without whose CDR this one's call is not complete: the one that originated it,
        the queue caller it rang for, the legs it was bridged to."""
        names = [self.variables.get(V_ORIGINATING_LEG), self.variables.get(V_CC_MEMBER_SESSION)]
        names.extend(_partner(self, i, {}) for i, profile in enumerate(self.profiles) if profile.time("bridged_time"))
        for profile in self.profiles:
            names.extend(profile.originators)
        return [n for n in dict.fromkeys(names) if n and n != self.uuid]


def parse_cdr(body: bytes | str, source: str = "") -> CdrLeg:
    """A CDR as mod_json_cdr posts or spools it (any `encode` setting), as one leg."""
    return leg_of(cdr_document(body, source), source)


def cdr_document(body: bytes | str, source: str = "") -> dict:
    """The JSON object of a CDR body: plain JSON (encode=false), URL-encoded JSON (encode=true),
    base64 JSON (encode=base64), each also as the form field `cdr=` that mod_json_cdr posts when
    it encodes. The spool files hold the same text without `cdr=`."""
    where = " (%s)" % source if source else ""
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CdrError("CDR%s is not UTF-8 text (byte %d)" % (where, exc.start)) from None
    else:
        text = body
    text = text.strip()
    if text.startswith("cdr="):
        text = text[len("cdr="):]
    if not text:
        raise CdrError("CDR%s is empty" % where)
    if text[:3].upper() == "%7B":
        # FreeSWITCH's URL encoding (%XX, spaces as %20): not form encoding, so no '+' for space.
        text = unquote(text)
    elif not text.startswith(("{", "[")):
        try:
            text = base64.b64decode(text, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise CdrError("CDR%s is neither JSON, URL-encoded JSON nor base64 JSON (it starts %r)"
                           % (where, text[:20])) from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise CdrError("CDR%s is not valid JSON: %s" % (where, exc)) from None
    if not isinstance(document, dict):
        raise CdrError("CDR%s is a JSON %s, not an object" % (where, type(document).__name__))
    return document


def leg_of(cdr: Mapping, source: str = "") -> CdrLeg:
    """One leg from a CDR's JSON object, checked: the parts the replay reads must be there."""
    where = " (%s)" % source if source else ""
    raw_vars = cdr.get("variables")
    if not isinstance(raw_vars, dict):
        raise CdrError("CDR%s has no `variables` object" % where)
    variables = {str(k): str(v) for k, v in raw_vars.items() if isinstance(v, (str, int, float))}
    if "%20" in variables.get(V_START_STAMP, "") or "%3A" in variables.get(V_START_STAMP, ""):
        # encode-values=true: every value went through FreeSWITCH's URL encoding.
        variables = {k: unquote(v) for k, v in variables.items()}
    uuid = variables.get(V_UUID, "")
    if not uuid:
        raise CdrError("CDR%s has no variables.uuid" % where)
    where = " %s%s" % (uuid, where)
    callflow = cdr.get("callflow")
    if isinstance(callflow, dict):  # a leg with one profile, as some versions print it
        callflow = [callflow]
    if not isinstance(callflow, list) or not callflow:
        raise CdrError("CDR%s has no `callflow` list" % where)
    profiles = tuple(reversed([_profile(entry, where, i) for i, entry in enumerate(callflow)]))
    if variables.get(V_DIRECTION) not in ("inbound", "outbound"):
        raise CdrError("CDR%s: variables.direction is %r, not inbound or outbound" % (where, variables.get(V_DIRECTION)))
    start = _stamp(variables, V_START, where) or profiles[0].time("created_time")
    end = _stamp(variables, V_END, where) or profiles[-1].time("hangup_time")
    if not start or not end:
        raise CdrError("CDR%s has no start or end time (variables.start_uepoch, end_uepoch)" % where)
    answer = _stamp(variables, V_ANSWER, where) or profiles[-1].time("answered_time")
    return CdrLeg(uuid=uuid, variables=variables, profiles=profiles, source=source, start_us=start,
                  answer_us=answer, end_us=max(end, start))


def _profile(entry, where: str, index: int) -> Profile:
    if not isinstance(entry, dict) or not isinstance(entry.get("caller_profile"), dict):
        raise CdrError("CDR%s: callflow[%d] has no caller_profile" % (where, index))
    raw_times = entry.get("times") if isinstance(entry.get("times"), dict) else {}
    times = {}
    for name, value in raw_times.items():
        text = str(value)
        if not text.isdigit():
            raise CdrError("CDR%s: callflow[%d].times.%s is %r, not microseconds" % (where, index, name, value))
        times[name] = int(text)
    caller = entry["caller_profile"]

    def uuids(key: str, inner: str) -> tuple[str, ...]:
        block = caller.get(key)
        rows = block.get(inner) if isinstance(block, dict) else None
        return tuple(dict.fromkeys(str(r["uuid"]) for r in rows or () if isinstance(r, dict) and r.get("uuid")))

    return Profile(caller={k: str(v) for k, v in caller.items() if isinstance(v, str)}, times=times,
                   originators=uuids("originator", "originator_caller_profiles"),
                   originatees=uuids("originatee", "originatee_caller_profiles"))


def _stamp(variables: Mapping[str, str], name: str, where: str) -> int:
    value = variables.get(name, "0") or "0"
    if not value.isdigit():
        raise CdrError("CDR%s: variables.%s is %r, not microseconds" % (where, name, value))
    return int(value)


def _array_uuids(value: str) -> list[str]:
    """The uuids of an ARRAY::uuid;name;number|:uuid;... variable (originated_legs)."""
    if not value.startswith("ARRAY::"):
        return []
    return [item.split(";", 1)[0] for item in value[len("ARRAY::"):].split("|:") if item]


# --- which legs make a call -----------------------------------------------------------------------
def group_calls(legs: Iterable[CdrLeg]) -> list[list[CdrLeg]]:
    """The legs that may belong to one call, together: every leg with the legs it names (the one
    that originated it, mod_callcenter's caller, the legs it was bridged to...), transitively.

    Groups are generous on purpose: the tracker the group is replayed through splits what is not
    one call (two customers' calls bridged together), as it does on the ESL path, but legs kept
    apart here could never be joined again. Legs and groups come out in order of start."""
    parent: dict[str, str] = {}

    def root(uuid: str) -> str:
        parent.setdefault(uuid, uuid)
        while parent[uuid] != uuid:
            parent[uuid] = parent[parent[uuid]]
            uuid = parent[uuid]
        return uuid

    by_uuid: dict[str, CdrLeg] = {}
    for leg in legs:
        if leg.uuid in by_uuid:
            logger.debug("leg %s: second CDR ignored (%s)", leg.uuid, leg.source)
            continue
        by_uuid[leg.uuid] = leg
        for other in leg.links():
            parent[root(other)] = root(leg.uuid)
    groups: dict[str, list[CdrLeg]] = {}
    for leg in by_uuid.values():
        groups.setdefault(root(leg.uuid), []).append(leg)
    ordered = [sorted(group, key=lambda leg: (leg.start_us, leg.uuid)) for group in groups.values()]
    return sorted(ordered, key=lambda group: (group[0].start_us, group[0].uuid))


def missing_legs(legs: Sequence[CdrLeg]) -> set[str]:
    """Legs a group's legs name as their originator, queue caller or bridge partner, whose CDR is
    not in the group: the call is not complete yet (or their CDR was lost)."""
    have = {leg.uuid for leg in legs}
    return {uuid for leg in legs for uuid in leg.parents() if uuid not in have}


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
    headers = {_VAR + k: v for k, v in leg.variables.items() if k not in later}
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
    headers = {_VAR + k: v for k, v in leg.variables.items()}
    headers[vocab.H_HANGUP_CAUSE] = leg.variables.get(V_HANGUP_CAUSE, "")
    return headers


def _record_stop(leg: CdrLeg) -> DictEvent:
    """fs-crm's recording of the leg ended with it (record_session stops at hangup)."""
    headers = {_VAR + k: v for k, v in leg.variables.items()}
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
                partner = _partner(leg, i, by_uuid)
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


def _partner(leg: CdrLeg, index: int, by_uuid: Mapping[str, CdrLeg]) -> str | None:
    """The leg that `leg`'s profile `index` was last bridged to: of the legs it names (the latest
    profile's bridge variables, the profile's originatees and originator), the one with a bridge
    starting at the same moment, else the first one whose CDR is there, else the first one."""
    profile = leg.profiles[index]
    start = profile.time("bridged_time")
    latest = index == len(leg.profiles) - 1
    named = [leg.variables.get(n) for n in (V_BRIDGE_UUID, V_LAST_BRIDGE_TO, V_SIGNAL_BOND)] if latest else []
    candidates = [c for c in dict.fromkeys(named + list(profile.originatees + profile.originators))
                  if c and c != leg.uuid]
    for candidate in candidates:
        other = by_uuid.get(candidate)
        if other is not None and any(p.time("bridged_time") and abs(p.time("bridged_time") - start) <= SAME_BRIDGE_US
                                     for p in other.profiles):
            return candidate
    known = [c for c in candidates if c in by_uuid]
    return (known or candidates or [None])[0]


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

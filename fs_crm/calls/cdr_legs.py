"""mod_json_cdr's call detail records as legs (pure): a CDR body read and checked into a `CdrLeg`,
and the legs that may make one call grouped together. fs_crm.calls.cdr replays them into history.

What a CDR holds (mod_json_cdr.c and switch_ivr_generate_json_cdr at FS@cc93a68):
- `variables`: the channel variables as they were at the end of the leg, URL-encoded unless
  `encode-values` is false; `start_uepoch`, `answer_uepoch`, `end_uepoch` (microseconds).
- `callflow`: one entry per caller profile, newest first. A transfer (`transfer`, uuid_bridge,
  mod_callcenter's bridge, valet parking) starts a new profile; each has its own `times`
  (`bridged_time` is the profile's last bridge, `transfer_time` when the next profile took over)
  and names the legs it originated (`originatee`) or was originated by (`originator`).
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

logger = logging.getLogger(__name__)

# The channel variables and profile fields read of a leg, here and in fs_crm.calls.cdr (mod_json_cdr's
# names, without `variable_`).
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
VAR_PREFIX = "variable_"  # what an event calls a channel variable
V_ORIGINATING_LEG = vocab.V_ORIGINATING_LEG.removeprefix(VAR_PREFIX)
V_CC_MEMBER_SESSION = vocab.V_CC_MEMBER_SESSION.removeprefix(VAR_PREFIX)
V_FIFO_BRIDGE_UUID = vocab.V_FIFO_BRIDGE_UUID.removeprefix(VAR_PREFIX)
V_CRM_RECORDING = vocab.V_CRM_RECORDING.removeprefix(VAR_PREFIX)
V_DIALED_USER = vocab.V_DIALED_USER.removeprefix(VAR_PREFIX)
V_DIALED_DOMAIN = vocab.V_DIALED_DOMAIN.removeprefix(VAR_PREFIX)
# Two legs' records of one bridge start within this of each other (FreeSWITCH stamps both at once).
SAME_BRIDGE_US = 1_000_000


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
        names = [self.variables.get(n) for n in (V_ORIGINATING_LEG, V_CC_MEMBER_SESSION, V_FIFO_BRIDGE_UUID,
                                                  V_BRIDGE_UUID, V_LAST_BRIDGE_TO, V_SIGNAL_BOND, "call_uuid",
                                                  "originator")]
        for profile in self.profiles:
            names.extend(profile.originators + profile.originatees)
        names.extend(_array_uuids(self.variables.get(V_ORIGINATED_LEGS, "")))
        return [n for n in dict.fromkeys(names) if n and n != self.uuid]

    def parents(self) -> list[str]:
        """The legs without whose CDR this one's call is not complete: the one that originated it,
        the queue caller it rang for, the legs it was bridged to."""
        names = [self.variables.get(n) for n in (V_ORIGINATING_LEG, V_CC_MEMBER_SESSION, V_FIFO_BRIDGE_UUID)]
        names.extend(bridge_partner(self, i, {}) for i, profile in enumerate(self.profiles)
                     if profile.time("bridged_time"))
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


# With the leg rather than with the bridges (fs_crm.calls.cdr): a leg's parents include its partners.
def bridge_partner(leg: CdrLeg, index: int, by_uuid: Mapping[str, CdrLeg]) -> str | None:
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

"""Legs and calls (pure): which call a new leg joins, what kind of leg it is, what its events tell.

No I/O and no clock: time comes from event headers (or is passed in by the caller). Everything
in fs_crm/calls/ was checked against the real streams in fs_crm/sim/captures/pbx/, whose traps shape it:
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

import logging
from dataclasses import dataclass, field

from fs_crm import vocab
from fs_crm.freeswitch.eslparse import Event

logger = logging.getLogger(__name__)

ROLE_EXTENSION = "extension"  # a manager's phone: a user of the PBX directory
ROLE_EXTERNAL = "external"  # the carrier side: the customer
ROLE_OTHER = "other"  # loopback and other helper channels; never a party of the CRM call

US = 1_000_000  # FreeSWITCH stamps times in microseconds since the epoch
# Channels that are never a party of the call: loopback halves, the `pickup/<group>` leg a ring
# group forks so a colleague can take the call, error/ legs of a failed dial string.
HELPER_ENDPOINTS = ("loopback/", "pickup/", "error/")
# Events that carry a leg's channel variables, so crm_recording_path once the snippet set it (on
# the leg that runs the dialplan: the customer's coming in, the manager's phone going out).
_MARK_EVENTS = frozenset({vocab.CHANNEL_ANSWER, vocab.CHANNEL_BRIDGE, vocab.CHANNEL_PROGRESS_MEDIA,
                          vocab.CHANNEL_HANGUP, vocab.CHANNEL_HANGUP_COMPLETE})


# slots: a flood of calls in progress costs memory per leg; a slotted leg is a third of a dict-backed one.
@dataclass(slots=True)
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
    # The file fs-crm's recording snippet named (crm_recording_path), known before its RECORD_STOP:
    # the recording of a call whose end we never saw (FreeSWITCH killed, events lost).
    recording_mark: str | None = None
    # [start, end] microseconds of each bridge of this leg (end 0 while bridged): talk time is their
    # sum, so a customer passed from one manager to another keeps every conversation.
    bridges: list[list[int]] = field(default_factory=list)
    hung_up: bool = False
    complete: bool = False  # CHANNEL_HANGUP_COMPLETE seen (or the leg was found gone)
    carded: bool = False  # an `in` card named this leg's extension
    card_closed: bool = False  # ...and a `hangup` card closed it

    @property
    def answered(self) -> bool:
        return self.answered_us > 0 or (self.billsec or 0) > 0


@dataclass(slots=True)
class Call:
    id: str
    legs: dict[str, Leg] = field(default_factory=dict)
    out_card_sent: bool = False
    out_hangup_sent: bool = False
    last_event_us: int = 0
    # Set by reconcile when legs vanished while we were not listening; finalised after a grace time.
    orphaned_at_us: int = 0
    # The call was alive at least until then: when the ESL connection carrying its events broke.
    alive_until_us: int = 0

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


# --- which call a new leg joins -------------------------------------------------------------------
def leg_for(calls: dict[str, Call], leg_call: dict[str, str], uuid: str, event: Event) -> tuple[Call, Leg]:
    """The call and leg an event belongs to, opening them on first sight (`leg_call`: leg uuid -> call id)."""
    call_id = leg_call.get(uuid)
    if call_id is not None:
        call = calls[call_id]
        return call, call.legs[uuid]
    call = None
    # mod_callcenter and mod_fifo ring agents with originates of their own: those legs name the caller
    # only in cc_member_session_uuid or fifo_bridge_uuid (until the bridge).
    candidates = [event.get(vocab.V_ORIGINATING_LEG), event.get(vocab.V_CC_MEMBER_SESSION),
                  event.get(vocab.V_FIFO_BRIDGE_UUID)]
    if event.get(vocab.H_OTHER_TYPE) == "originator":
        candidates.append(event.get(vocab.H_OTHER_LEG_UUID))
    candidates.append(event.get(vocab.H_CALL_UUID))
    for candidate in candidates:
        if not candidate or candidate == uuid:
            continue
        known = leg_call.get(candidate)
        if known is not None:
            call = calls[known]
            break
        if candidate in calls:
            call = calls[candidate]
            break
    if call is None:
        # The first leg of a call names the call. A leg seen before its first leg (we came
        # in late) files itself under the first leg's id so both end up together.
        root = next((c for c in candidates if c and c != uuid), None) or uuid
        call = calls.get(root) or calls.setdefault(root, Call(root))
    leg = Leg(uuid=uuid, call_id=call.id)
    call.legs[uuid] = leg
    leg_call[uuid] = call.id
    return call, leg


def note_bridge(calls: dict[str, Call], leg_call: dict[str, str], call: Call, leg: Leg, event: Event,
                name: str, dropped: set[str]) -> Call:
    """A CHANNEL_BRIDGE or CHANNEL_UNBRIDGE (fired on one side, naming the other): opens or closes the
    talk span on both legs. A bridge to a leg of another call (a colleague picking the call up, an
    attended transfer, a queue agent we could not link) makes them one call: the one whose customer
    it is. Returns the call the leg belongs to afterwards; a call merged away goes into `dropped`."""
    at = event_time_us(event)
    other_uuid = event.get(vocab.H_BRIDGE_B) if event.get(vocab.H_BRIDGE_A) == leg.uuid else None
    other_uuid = other_uuid or event.get(vocab.H_OTHER_LEG_UUID)
    other_call_id = leg_call.get(other_uuid or "")
    if name == vocab.CHANNEL_BRIDGE and other_call_id is not None and other_call_id != call.id:
        call = _merge(calls, leg_call, call, calls[other_call_id], dropped)
    legs = [leg] + ([call.legs[other_uuid]] if other_uuid in call.legs else [])
    for bridged in legs:
        (start_bridge if name == vocab.CHANNEL_BRIDGE else end_bridge)(bridged, at)
    return call


def _merge(calls: dict[str, Call], leg_call: dict[str, str], one: Call, other: Call, dropped: set[str]) -> Call:
    """Join two calls whose legs were bridged. The call with the customer keeps its id (the id its
    cards went out with); two calls that both have a customer stay apart (two customers talking)."""
    one_external = bool(one.of_role(ROLE_EXTERNAL))
    other_external = bool(other.of_role(ROLE_EXTERNAL))
    if one_external and other_external:
        return one
    keep, gone = (other, one) if other_external and not one_external else (one, other)
    for uuid, moved in gone.legs.items():
        moved.call_id = keep.id
        keep.legs[uuid] = moved
        leg_call[uuid] = keep.id
    keep.last_event_us = max(keep.last_event_us, gone.last_event_us)
    calls.pop(gone.id, None)
    dropped.add(gone.id)
    logger.info("call %s: joined with call %s, whose leg was bridged to it", keep.id, gone.id)
    return keep


# --- what an event tells about its leg ------------------------------------------------------------
def update_leg(leg: Leg, event: Event, name: str) -> None:
    # Channel variables are read only where they matter (first sight of a leg, its end, a
    # recording): parsing them is most of the cost of an event (see eslparse.Event).
    first_sight = not leg.channel_name
    if first_sight:
        leg.channel_name = event.get(vocab.H_CHANNEL_NAME) or ""
        leg.direction = event.get(vocab.H_CALL_DIRECTION) or ""
        leg.caller_number = event.get(vocab.H_CALLER_NUMBER) or ""
        leg.destination = event.get(vocab.H_DESTINATION) or ""
        classify(leg, event)
        leg.company_candidates = company_candidates(leg, event)
    if first_sight:
        # Our originate sets these as origination variables: they are there from CHANNEL_CREATE on.
        for attr, var in (("crm_direction", vocab.V_CRM_DIRECTION), ("crm_phone", vocab.V_CRM_PHONE),
                          ("crm_external_phone", vocab.V_CRM_EXTERNAL_PHONE)):
            setattr(leg, attr, event.get(var))
    if name == vocab.RECORD_STOP:
        note_recording(leg, event)
    elif leg.recording_mark is None and name in _MARK_EVENTS:
        leg.recording_mark = event.get(vocab.V_CRM_RECORDING)
    created = event.int(vocab.H_CREATED_TIME)
    if created:
        leg.created_us = created
    elif not leg.created_us and name == vocab.CHANNEL_CREATE:
        leg.created_us = event_time_us(event)
    answered = event.int(vocab.H_ANSWERED_TIME)
    if answered:
        leg.answered_us = answered
    elif name == vocab.CHANNEL_ANSWER and not leg.answered_us:
        leg.answered_us = event_time_us(event)
    bridged = event.int(vocab.H_BRIDGED_TIME)
    if bridged:
        leg.bridged_us = bridged
    if name in (vocab.CHANNEL_HANGUP, vocab.CHANNEL_HANGUP_COMPLETE, vocab.CHANNEL_DESTROY):
        leg.hung_up = True
        leg.hangup_cause = event.get(vocab.H_HANGUP_CAUSE) or leg.hangup_cause
        leg.hangup_us = event.int(vocab.H_HANGUP_TIME) or leg.hangup_us or event_time_us(event)
        end_bridge(leg, leg.hangup_us)
    if name == vocab.CHANNEL_HANGUP_COMPLETE or (name == vocab.CHANNEL_DESTROY and not leg.complete):
        leg.complete = True
        if leg.created_us and leg.hangup_us:
            return  # durations come from the microsecond stamps (see history_mapping.durations)
        billsec = event.get(vocab.V_BILLSEC)
        duration = event.get(vocab.V_DURATION)
        if billsec is not None and billsec.isdigit():
            leg.billsec = int(billsec)
        if duration is not None and duration.isdigit():
            leg.duration = int(duration)


def note_recording(leg: Leg, event: Event) -> None:
    """A RECORD_STOP: the call's recording when fs-crm's snippet asked for that file."""
    path = event.get(vocab.H_RECORD_FILE_PATH)
    if not path:
        return
    if path != event.get(vocab.V_CRM_RECORDING):
        # A voicemail message, a recording another application made: fs-crm uploads and then
        # deletes files, so it touches only those its own snippet named.
        logger.debug("call %s: recording %s is not fs-crm's (crm_recording_path differs); left alone",
                     leg.call_id, path)
        return
    leg.recording_mark = path
    if (event.get(vocab.V_RECORD_DISCARDED) == "true"
            or event.get(vocab.H_RECORD_COMPLETION_CAUSE) in vocab.RECORD_DISCARD_CAUSES):
        # FreeSWITCH deleted the file (empty or too short): there is nothing to upload.
        leg.discarded_recordings += (path,)
        if leg.recording == path:
            leg.recording = None
    elif leg.recording is None:
        leg.recording = path


def recording_of(leg: Leg) -> str | None:
    """The file to upload for this leg: the one RECORD_STOP named, else (its end never seen) the
    one the snippet announced, unless FreeSWITCH discarded it."""
    if leg.recording:
        return leg.recording
    mark = leg.recording_mark
    return mark if mark and mark not in leg.discarded_recordings else None


def start_bridge(leg: Leg, at_us: int) -> None:
    if not leg.bridges or leg.bridges[-1][1]:
        leg.bridges.append([at_us, 0])


def end_bridge(leg: Leg, at_us: int) -> None:
    if leg.bridges and not leg.bridges[-1][1]:
        leg.bridges[-1][1] = max(at_us, leg.bridges[-1][0])


def talk_us(leg: Leg, until_us: int) -> int:
    """Microseconds this leg spent bridged (an open bridge counts until `until_us`)."""
    return sum((end or until_us) - start for start, end in leg.bridges if (end or until_us) > start)


def classify(leg: Leg, event: Event) -> None:
    """A manager's phone (extension), the customer's side (external), or a helper channel (other)."""
    if event.get(vocab.V_IS_LOOPBACK) or leg.channel_name.startswith(HELPER_ENDPOINTS):
        return
    marked = event.get(vocab.V_CRM_EXTENSION)
    if marked:
        # The dialplan says whose phone this is: a manager's mobile reached through the carrier.
        leg.role, leg.extension = ROLE_EXTENSION, marked
        leg.domain = event.get(vocab.V_DIALED_DOMAIN) or event.get(vocab.V_DOMAIN_NAME)
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


def company_candidates(leg: Leg, event: Event) -> tuple[str, ...]:
    """Numbers that may be the company's: the number dialled on a call coming in from the
    carrier, the caller id presented on a call going out to it."""
    if leg.role != ROLE_EXTERNAL:
        return ()
    if leg.direction == "inbound":
        names = (vocab.H_DESTINATION, "variable_sip_to_user", "variable_sip_req_user")
    else:
        names = (vocab.H_CALLER_NUMBER, "variable_sip_from_user", "variable_effective_caller_id_number",
                 "variable_origination_caller_id_number")
    return tuple(unique(event.get(n) for n in names))


# --- small pure helpers ---------------------------------------------------------------------------
def event_time_us(event: Event) -> int:
    return event.int(vocab.H_EVENT_TIMESTAMP)


def unique(values) -> list[str]:
    """The non-empty values, first occurrence first."""
    seen: list[str] = []
    for v in values:
        if v and v not in seen:
            seen.append(v)
    return seen

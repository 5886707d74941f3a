"""Tracked calls against what FreeSWITCH says is alive (pure): live channels, orphans, snapshots."""

from __future__ import annotations

import logging
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass, fields

from fs_crm.calls.legs import ROLE_EXTENSION, ROLE_EXTERNAL, US, Call, Leg, end_bridge

logger = logging.getLogger(__name__)


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


# --- after a reconnect ------------------------------------------------------------------------------
def mark_orphans(calls: dict[str, Call], live: list[LiveChannel], now_us: int, idle_us: int | None,
                 alive_until_us: int = 0) -> list[str]:
    """Mark orphaned the calls with a leg that is neither complete nor alive (with `idle_us`, only
    calls silent for that long). `alive_until_us`: when the connection that was carrying their
    events broke; they were alive at least until then (FreeSWITCH killed mid-call). Returns the
    ids of the calls marked.

    `calls` is kept in order of last activity (see CallTracker.handle), so with `idle_us` the scan
    stops at the first call heard from recently: a sweep costs the silent calls, not all of them."""
    alive = {ch.uuid for ch in live}
    marked = []
    for call in list(calls.values()):
        if idle_us is not None and now_us - call.last_event_us < idle_us:
            break
        if any(uuid not in alive and not leg.complete for uuid, leg in call.legs.items()):
            call.orphaned_at_us = call.orphaned_at_us or now_us
            call.alive_until_us = max(call.alive_until_us, alive_until_us)
            marked.append(call.id)
    return marked


def adopt_live(calls: dict[str, Call], leg_call: dict[str, str], live: list[LiveChannel],
               finished_legs: Container[str] = ()) -> list[str]:
    """Track the live legs we do not know, so their later events complete a proper record; returns
    the ids of the calls that got legs.

    `show channels` lags the event stream: a leg whose CHANNEL_HANGUP_COMPLETE we already handled
    can still be listed. Such a leg (in `finished_legs`) is never adopted: it would open a phantom
    call that nothing ever ends, reported at last with hours of talk."""
    adopted = []
    for ch in live:
        if ch.uuid in leg_call or ch.uuid in finished_legs:
            continue
        root = ch.call_uuid if ch.call_uuid and ch.call_uuid != ch.uuid else ch.uuid
        root = leg_call.get(root, root)
        call = calls.setdefault(root, Call(root))
        leg = Leg(uuid=ch.uuid, call_id=root, direction=ch.direction, channel_name=ch.name,
                  caller_number=ch.cid_num, destination=ch.dest, created_us=ch.created_epoch * US)
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
        leg_call[ch.uuid] = root
        adopted.append(root)
        logger.info("call %s: adopted live leg %s after reconnect", root, ch.uuid)
    return adopted


def expired_orphans(calls: dict[str, Call], orphans: Iterable[str], now_us: int, grace_us: int) -> Iterator[Call]:
    """The orphaned calls (of the ids in `orphans`) past their grace time, each with its unfinished
    legs ended at the last moment it was seen alive.

    Lazy, so the caller can finish (and drop) each call before the next one is looked at."""
    for call_id in list(orphans):
        call = calls.get(call_id)
        if call is None or not call.orphaned_at_us or now_us - call.orphaned_at_us < grace_us:
            continue
        end_unseen_legs(call)
        logger.warning("call %s: its legs ended without us seeing the end (disconnected, or events lost); "
                       "reporting it with the times known, ending at the last moment it was seen alive", call.id)
        yield call


def end_unseen_legs(call: Call) -> None:
    """End the legs whose end we never saw. When they really ended is unknown: the last moment we can
    vouch for is the last event seen, or the moment the connection carrying its events broke."""
    end_us = max(call.last_event_us, call.alive_until_us) or call.orphaned_at_us
    for leg in call.legs.values():
        if not leg.complete:
            leg.complete = leg.hung_up = True
            leg.hangup_us = leg.hangup_us or end_us
            end_bridge(leg, leg.hangup_us)


# --- surviving a restart ----------------------------------------------------------------------------
_CALL_FIELDS = tuple(f.name for f in fields(Call) if f.name != "legs")
_LEG_FIELDS = tuple(f.name for f in fields(Leg) if f.name != "bridges")


def call_data(call: Call) -> dict:
    """One call in progress as plain JSON-able data (a row of the saved calls). A copy: it is
    serialised in the store's thread while the hub goes on changing the call. (dataclasses.asdict
    did the same at three times the cost.)"""
    data = {name: getattr(call, name) for name in _CALL_FIELDS}
    legs = []
    for leg in call.legs.values():
        leg_data = {name: getattr(leg, name) for name in _LEG_FIELDS}
        leg_data["bridges"] = [list(span) for span in leg.bridges]
        legs.append(leg_data)
    data["legs"] = legs
    return data


def snapshot_calls(calls: dict[str, Call], version: int) -> dict:
    """The calls in progress as plain JSON-able data."""
    return {"version": version, "calls": [call_data(call) for call in calls.values()]}


def restore_calls(snapshot: dict, version: int, calls: dict[str, Call], leg_call: dict[str, str]) -> int:
    """Put the calls of a snapshot back into `calls` and `leg_call`; returns how many were restored."""
    if snapshot.get("version") != version:
        logger.warning("ignoring saved calls in progress: snapshot version %r", snapshot.get("version"))
        return 0
    leg_names = {f.name for f in fields(Leg)}
    call_names = {f.name for f in fields(Call)} - {"legs"}
    restored = 0
    rows = [data for data in snapshot.get("calls", []) if isinstance(data, dict)]
    # Oldest activity first, as CallTracker keeps its calls.
    rows.sort(key=lambda data: data.get("last_event_us") if isinstance(data.get("last_event_us"), int) else 0)
    for data in rows:
        try:
            call = Call(**{k: v for k, v in data.items() if k in call_names})
            for leg_data in data.get("legs", []):
                leg_data = {k: v for k, v in leg_data.items() if k in leg_names}
                for name in ("company_candidates", "discarded_recordings"):
                    leg_data[name] = tuple(leg_data.get(name, ()))
                leg = Leg(**leg_data)
                call.legs[leg.uuid] = leg
                leg_call[leg.uuid] = call.id
        except (TypeError, AttributeError) as exc:
            logger.warning("skipping an unreadable saved call: %s", exc)
            continue
        calls[call.id] = call
        restored += 1
    return restored

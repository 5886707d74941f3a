"""The call tracker (pure): FreeSWITCH channel events in, CRM call cards and history records out.

It owns the state (calls in progress, which call each leg joined, legs already reported) and ties
the jobs together: legs, card_policy, history_mapping, reconcile. The traps of the real streams
that shape it all are listed in fs_crm/calls/legs.py.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict

from fs_crm import vocab
from fs_crm.calls import card_policy, history_mapping, reconcile
from fs_crm.calls.legs import (
    ROLE_EXTENSION,
    ROLE_EXTERNAL,
    Call,
    event_time_us,
    leg_for,
    note_bridge,
    update_leg,
)
from fs_crm.calls.reconcile import LiveChannel
from fs_crm.config import AccountConfig
from fs_crm.crm.payloads import CallEvent, CallRecord
from fs_crm.freeswitch.eslparse import Event

logger = logging.getLogger(__name__)

_CHANNEL_EVENTS = frozenset(vocab.TRACKED_EVENTS)
_BRIDGE_EVENTS = frozenset({vocab.CHANNEL_BRIDGE, vocab.CHANNEL_UNBRIDGE})
FINISHED_LEGS_REMEMBERED = 50_000


class CallTracker:
    def __init__(self, accounts: tuple[AccountConfig, ...]):
        if not accounts:
            raise ValueError("at least one account is needed")
        self.accounts = accounts
        self._by_domain = {a.domain.lower(): a for a in accounts}
        # In order of last activity, oldest first (an event moves its call to the end): the silent
        # calls are a prefix, so the sweep and the cap on calls in progress never scan them all.
        self.calls: dict[str, Call] = {}
        self._leg_call: dict[str, str] = {}
        # Legs of calls already reported: their straggling events (a DESTROY after the last
        # HANGUP_COMPLETE, a repeat after a reconnect) must not open a second call.
        self._finished_legs: OrderedDict[str, None] = OrderedDict()
        # Ids of calls changed (or gone) since the service last took them to save (take_changes).
        self._dirty: set[str] = set()
        # Calls reconcile found legs of gone: expire_orphans looks at these only.
        self._orphans: set[str] = set()

    # --- event intake ---------------------------------------------------------------------------
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
        call, leg = leg_for(self.calls, self._leg_call, uuid, event)
        update_leg(leg, event, name)
        if name in _BRIDGE_EVENTS:
            call = note_bridge(self.calls, self._leg_call, call, leg, event, name, self._dirty)
        call.last_event_us = max(call.last_event_us, event_time_us(event))
        self._dirty.add(call.id)
        self.calls[call.id] = self.calls.pop(call.id)  # to the end: the most recently active
        effects: list[CallEvent | CallRecord] = []
        account = self._account_of(call)
        if account is None:
            logger.debug("call %s: no account matches yet", call.id)
        else:
            effects.extend(card_policy.cards(call, leg, name, event, account))
        if call.complete:
            effects.extend(self._finish(call, account))
        return effects

    # --- accounts -------------------------------------------------------------------------------
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

    # --- history --------------------------------------------------------------------------------
    def _finish(self, call: Call, account: AccountConfig | None) -> list[CallRecord]:
        del self.calls[call.id]
        self._dirty.add(call.id)
        self._orphans.discard(call.id)
        for uuid in call.legs:
            self._leg_call.pop(uuid, None)
            self._finished_legs[uuid] = None
        while len(self._finished_legs) > FINISHED_LEGS_REMEMBERED:
            self._finished_legs.popitem(last=False)
        direction = history_mapping.call_direction(call)
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
        return history_mapping.record_of(call, direction, account)

    # --- after a reconnect ----------------------------------------------------------------------
    def reconcile(self, live: list[LiveChannel], now_us: int, idle_us: int | None = None,
                  alive_until_us: int = 0) -> None:
        """Align tracked calls with what FreeSWITCH says is alive right now.

        Legs we track that are gone ended while we were not listening: they are marked orphaned
        and finished by `expire_orphans` after a grace time, unless their late events still arrive.
        Live legs we do not know are adopted, so their later events complete a proper record.

        With `idle_us` (a periodic sweep while connected, whose channel list may race the event
        stream) only calls silent for that long are considered, and nothing is adopted.
        `alive_until_us`: when the previous connection broke (the calls lived at least that long).
        """
        marked = reconcile.mark_orphans(self.calls, live, now_us, idle_us, alive_until_us)
        self._orphans.update(marked)
        self._dirty.update(marked)
        if idle_us is not None:
            return
        self._dirty.update(reconcile.adopt_live(self.calls, self._leg_call, live, self._finished_legs))

    def expire_orphans(self, now_us: int, grace_us: int) -> list[CallEvent | CallRecord]:
        """Finish calls whose legs vanished during a disconnect, with what is known of them."""
        effects: list[CallEvent | CallRecord] = []
        for call in reconcile.expired_orphans(self.calls, self._orphans, now_us, grace_us):
            effects.extend(self._finish_unseen(call, now_us))
        return effects

    def shed_excess(self, limit: int, now_us: int) -> list[CallEvent | CallRecord]:
        """Beyond `limit` calls in progress (a flood of calls that never end, hangups FreeSWITCH never
        sent), finish the longest-silent ones as orphans: reported with what is known, never dropped."""
        effects: list[CallEvent | CallRecord] = []
        excess = len(self.calls) - limit
        if excess <= 0:
            return effects
        victims = [self.calls[call_id] for call_id in itertools.islice(self.calls, excess)]
        logger.warning("%d calls in progress, more than the %d allowed ([state] max_calls_in_progress): "
                       "finishing the %d silent longest as if their end had been seen (oldest: %s)",
                       len(self.calls), limit, excess, victims[0].id)
        for call in victims:
            call.orphaned_at_us = call.orphaned_at_us or now_us
            reconcile.end_unseen_legs(call)
            effects.extend(self._finish_unseen(call, now_us))
        return effects

    def _finish_unseen(self, call: Call, now_us: int) -> list[CallEvent | CallRecord]:
        """Every card still open is closed, then the call goes to history."""
        effects: list[CallEvent | CallRecord] = []
        account = self._account_of(call)
        if account is not None:
            effects.extend(card_policy.closing_cards(call, account, call.last_event_us or now_us))
        effects.extend(self._finish(call, account))
        return effects

    def active_calls(self) -> int:
        return len(self.calls)

    def knows_leg(self, uuid: str) -> bool:
        """The leg is part of a call in progress, or of one already reported (lately)."""
        return uuid in self._leg_call or uuid in self._finished_legs

    def extension_on_call(self, extension: str, domain: str) -> bool:
        """Whether a phone of extension@domain has a leg in a call in progress: ringing, talking or
        holding, taking a call or making one. A leg the dialplan marked as the manager's (his mobile
        through the carrier) names no domain, and counts too."""
        domain = domain.lower()
        return any(leg.role == ROLE_EXTENSION and not leg.hung_up and leg.extension == extension
                   and (not leg.domain or leg.domain.lower() == domain)
                   for call in self.calls.values() for leg in call.legs.values())

    # --- surviving a restart --------------------------------------------------------------------
    SNAPSHOT_VERSION = 1

    def take_changes(self, limit: int | None = None) -> tuple[dict[str, dict], list[str]]:
        """What changed since the last call (at most `limit` calls of it), to save: (call id -> row
        data) for calls in progress, and the ids of calls gone (finished, merged). After a failed
        save, `keep_changes` them. Serialising is work on the hub: a flood of new calls is taken
        in slices, never all at once."""
        if limit is None or len(self._dirty) <= limit:
            dirty, self._dirty = self._dirty, set()
        else:
            dirty = {self._dirty.pop() for _ in range(limit)}
        rows = {call_id: reconcile.call_data(self.calls[call_id]) for call_id in dirty if call_id in self.calls}
        return rows, [call_id for call_id in dirty if call_id not in self.calls]

    @property
    def has_changes(self) -> bool:
        return bool(self._dirty)

    def keep_changes(self, call_ids) -> None:
        """The save failed: these are saved next time (with whatever they look like by then)."""
        self._dirty.update(call_ids)

    def snapshot(self) -> dict:
        """The calls in progress as plain JSON-able data."""
        return reconcile.snapshot_calls(self.calls, self.SNAPSHOT_VERSION)

    def restore(self, snapshot: dict) -> int:
        """Take back the calls a previous run was tracking; the first reconcile then tells which
        of them ended while fs-crm was down. Returns how many calls were restored."""
        restored = reconcile.restore_calls(snapshot, self.SNAPSHOT_VERSION, self.calls, self._leg_call)
        self._orphans.update(call.id for call in self.calls.values() if call.orphaned_at_us)
        return restored

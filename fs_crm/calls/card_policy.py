"""Which call cards an event produces (pure): `in` and `out` cards, and the `hangup` cards that close them."""

from __future__ import annotations

import logging

from fs_crm import vocab
from fs_crm.calls.history_mapping import (
    call_direction,
    company_number,
    customer_leg,
    customer_phone,
    manager_legs,
    unanswered_result,
)
from fs_crm.calls.legs import ROLE_EXTENSION, ROLE_EXTERNAL, US, Call, Leg, event_time_us, unique
from fs_crm.config import AccountConfig
from fs_crm.crm.payloads import CallEvent
from fs_crm.freeswitch.eslparse import Event

logger = logging.getLogger(__name__)

RINGING_EVENTS = frozenset({vocab.CHANNEL_PROGRESS, vocab.CHANNEL_PROGRESS_MEDIA, vocab.CHANNEL_ANSWER})


def may_card(call: Call, leg: Leg, name: str) -> bool:
    """Cheap test before the card logic: most events cannot produce a card."""
    if name == vocab.CHANNEL_HANGUP:
        return True
    if name == vocab.CHANNEL_BRIDGE:
        # Only a phone that joined without ringing needs a card now (see _incoming_cards).
        return any(m.role == ROLE_EXTENSION and not m.carded and not m.hung_up for m in call.legs.values())
    if name == vocab.CHANNEL_CREATE:
        return leg.role == ROLE_EXTERNAL and not call.out_card_sent
    return name in RINGING_EVENTS and leg.role == ROLE_EXTENSION and not leg.carded


def cards(call: Call, leg: Leg, name: str, event: Event, account: AccountConfig) -> list[CallEvent]:
    """The cards `event` (named `name`, about `leg`) produces; marks on the call and legs what was sent."""
    if not may_card(call, leg, name):
        return []
    made = _card_maker(call, account, event_time_us(event))
    if made is None:
        return []
    direction, card = made
    if direction == vocab.EVENT_IN:
        return _incoming_cards(call, leg, name, account, card)
    return _outgoing_cards(call, leg, name, account, card)


def closing_cards(call: Call, account: AccountConfig, at_us: int) -> list[CallEvent]:
    """`hangup` cards for every card still open on a call that ended unseen (FreeSWITCH killed or
    events lost): a manager's screen must not keep showing a call that is over."""
    made = _card_maker(call, account, at_us)
    if made is None:
        return []
    direction, card = made
    out: list[CallEvent] = []
    managers = manager_legs(call, account)
    if direction == vocab.EVENT_IN:
        for m in managers:
            if m.carded and not m.card_closed:
                m.card_closed = True
                out.append(card(vocab.EVENT_HANGUP, [m.extension],
                                vocab.HANGUP_ANSWERED if m.answered else vocab.HANGUP_NO_ANSWER))
    elif call.out_card_sent and not call.out_hangup_sent and managers:
        call.out_hangup_sent = True
        answered = any(x.answered for x in call.of_role(ROLE_EXTERNAL))
        out.append(card(vocab.EVENT_HANGUP, [managers[0].extension],
                        vocab.HANGUP_ANSWERED if answered else vocab.HANGUP_NO_ANSWER))
    return out


def _card_maker(call: Call, account: AccountConfig, at_us: int):
    """(direction, a function making this call's cards), or None when the call is not a CRM call yet."""
    direction = call_direction(call)
    if direction is None:
        return None
    customer = customer_leg(call, direction)
    if customer is None:
        return None
    phone = customer_phone(call, direction, customer, account)
    external_phone, site = company_number(call, customer, account)

    def card(kind: str, codes: list[str], status: str | None = None) -> CallEvent:
        # The extension map is where fs-crm knows a manager's CRM user id (registration sends the
        # same pairs as additionalCodes); a code without a user there goes by code alone.
        user_ids = dict.fromkeys(uid for uid in map(account.user_id_of, codes) if uid is not None)
        return CallEvent(account=account.name, type=kind, phone=phone, codes=tuple(codes), call_id=call.id,
                         created_at=at_us / US, external_phone=external_phone, site=site, hangup_status=status,
                         user_ids=tuple(user_ids))

    return direction, card


def _incoming_cards(call, leg, name, account, card) -> list[CallEvent]:
    out: list[CallEvent] = []
    managers = manager_legs(call, account)
    # A bridge can bring in a phone that never rang for this call: a colleague taking a parked call,
    # the manager an attended transfer puts the customer through to. His screen shows the customer too.
    if (name in RINGING_EVENTS and leg.role == ROLE_EXTENSION) or name == vocab.CHANNEL_BRIDGE:
        # Every phone that starts ringing gets its `in` card at once. Phones of a ring group whose
        # legs are already known go out together in one card; FreeSWITCH does not promise that all
        # forked legs are created before the first one rings, so a late one gets a card of its own.
        fresh = [m for m in managers if not m.carded and not m.hung_up]
        if fresh:
            for m in fresh:
                m.carded = True
            out.append(card(vocab.EVENT_IN, unique(m.extension for m in fresh)))
    if name == vocab.CHANNEL_HANGUP and leg.role == ROLE_EXTENSION and leg.carded and not leg.card_closed:
        leg.card_closed = True
        out.append(card(vocab.EVENT_HANGUP, [leg.extension], leg_hangup_status(leg)))
    elif name == vocab.CHANNEL_HANGUP and leg.role == ROLE_EXTERNAL and leg is call.root:
        # The caller hung up: every card still showing closes at once with the call's outcome,
        # in one event, rather than one by one as FreeSWITCH tears the phone legs down.
        still = [m for m in managers if m.carded and not m.card_closed]
        if still:
            status = vocab.HANGUP_ANSWERED if any(m.answered for m in managers) else vocab.HANGUP_NO_ANSWER
            for m in still:
                m.card_closed = True
            out.append(card(vocab.EVENT_HANGUP, unique(m.extension for m in still), status))
    return out


def _outgoing_cards(call, leg, name, account, card) -> list[CallEvent]:
    managers = manager_legs(call, account)
    if not managers:
        return []
    codes = unique(m.extension for m in managers[:1])
    if not call.out_card_sent and leg.role == ROLE_EXTERNAL and name == vocab.CHANNEL_CREATE:
        call.out_card_sent = True
        return [card(vocab.EVENT_OUT, codes)]
    if call.out_card_sent and not call.out_hangup_sent and name == vocab.CHANNEL_HANGUP:
        call.out_hangup_sent = True
        externals = call.of_role(ROLE_EXTERNAL)
        if any(x.answered for x in externals):
            status = vocab.HANGUP_ANSWERED
        elif leg.role == ROLE_EXTERNAL:
            status = vocab.HANGUP_STATUS_BY_RESULT[unanswered_result([leg.hangup_cause])]
        else:
            status = vocab.HANGUP_NO_ANSWER  # the manager gave up before the customer answered
        return [card(vocab.EVENT_HANGUP, codes, status)]
    return []


def leg_hangup_status(leg: Leg) -> str:
    """The status of the `hangup` card closing one phone's `in` card."""
    if leg.answered:
        return vocab.HANGUP_ANSWERED
    if leg.hangup_cause in vocab.CAUSES_ANSWERED_ELSEWHERE:
        return vocab.HANGUP_CANCEL
    return vocab.HANGUP_STATUS_BY_RESULT[unanswered_result([leg.hangup_cause])]

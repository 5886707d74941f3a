"""What a call is for the CRM (pure): direction, customer, numbers, managers, and its history record."""

from __future__ import annotations

import datetime as dt
import logging

from fs_crm import vocab
from fs_crm.calls.legs import ROLE_EXTENSION, ROLE_EXTERNAL, US, Call, Leg, recording_of, talk_us, unique
from fs_crm.config import AccountConfig
from fs_crm.payloads import CallRecord

logger = logging.getLogger(__name__)


# --- what kind of call is it ----------------------------------------------------------------------
def call_direction(call: Call) -> str | None:
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


def customer_leg(call: Call, direction: str) -> Leg | None:
    externals = call.of_role(ROLE_EXTERNAL)
    if not externals:
        return None
    root = call.root
    if direction == vocab.EVENT_IN and root is not None and root.role == ROLE_EXTERNAL:
        return root
    answered = [leg for leg in externals if leg.answered]
    return (answered or sorted(externals, key=lambda leg: leg.created_us))[0]


def customer_phone(call: Call, direction: str, customer: Leg, account: AccountConfig) -> str:
    """The customer's number in the one canonical form every CRM request uses."""
    for leg in call.legs.values():
        if leg.crm_phone:
            return account.canonical_phone(leg.crm_phone)
    if direction == vocab.EVENT_IN:
        return account.canonical_phone(customer.caller_number)
    return account.canonical_phone(customer.destination)


def company_number(call: Call, customer: Leg, account: AccountConfig) -> tuple[str | None, str | None]:
    """(externalPhone, site): the configured number and its store when one matches."""
    marked = [leg.crm_external_phone for leg in call.legs.values() if leg.crm_external_phone]
    candidates = tuple(marked) + customer.company_candidates
    for number in candidates:
        match = account.site_of(number)
        if match is not None:
            return match[1], match[0]
    return (account.canonical_phone(candidates[0]) if candidates else None), None


def manager_legs(call: Call, account: AccountConfig) -> list[Leg]:
    """The phone legs of the account's managers (extensions it knows)."""
    return [leg for leg in call.of_role(ROLE_EXTENSION)
            if leg.extension and account.has_extension(leg.extension)]


# --- history ----------------------------------------------------------------------------------------
def record_of(call: Call, direction: str, account: AccountConfig) -> CallRecord | None:
    customer = customer_leg(call, direction)
    if customer is None:
        return None
    managers = manager_legs(call, account)
    if direction == vocab.EVENT_IN:
        answered_by = sorted((m for m in managers if m.answered), key=lambda m: m.answered_us)
        answered = bool(answered_by)
        if answered_by:
            # After a transfer the call belongs to the manager the customer talked to last.
            handler = answered_by[-1]
        else:
            rang = unique(m.extension for m in managers)
            handler = next((m for m in managers), None) if len(rang) == 1 else None
        failed_legs = managers or [customer]
    else:
        answered = customer.answered
        handler = next((m for m in managers if m.uuid == call.id), None) or (managers[0] if managers else None)
        failed_legs = [customer]
    if answered:
        result = vocab.RESULT_ANSWERED
    else:
        result = unanswered_result([leg.hangup_cause for leg in failed_legs])
    talk, waited = durations(customer, answered)
    root = call.root or customer
    external_phone, site = company_number(call, customer, account)
    code = handler.extension if handler else None
    recordings = [path for path in (recording_of(leg) for leg in sorted(call.legs.values(),
                                                                       key=lambda x: x.uuid != call.id)) if path]
    return CallRecord(
        account=account.name, external_id=call.id, date=local_time(root.created_us, account),
        type=direction, phone=customer_phone(call, direction, customer, account), result=result,
        duration=talk, duration_waiting=waited, code=code,
        user_id=account.user_id_of(code) if code else None, external_phone=external_phone, site=site,
        recording_path=recordings[0] if recordings else None,
    )


def unanswered_result(causes: list[str | None]) -> str:
    """The CRM result of legs that were not answered, from their hangup causes (worst first)."""
    results = {vocab.UNANSWERED_RESULT_BY_CAUSE.get(c or "", vocab.RESULT_UNKNOWN) for c in causes}
    for result in vocab.RESULT_PRIORITY:
        if result in results:
            return result
    return vocab.RESULT_UNKNOWN


def durations(customer: Leg, answered: bool) -> tuple[int, int]:
    """(talk seconds, waiting seconds) seen from the customer's leg.

    FreeSWITCH's billsec counts from the leg's answer, which for a caller answered by an IVR or
    a recorder is long before a manager speaks, so talk time is the time the customer's leg spent
    bridged (all its bridges: a transferred customer talks to several managers).
    """
    # Differences of the microsecond stamps, rounded, are closer to the truth than FreeSWITCH's own
    # billsec/duration, which subtract epoch seconds truncated separately (off by one either way).
    if customer.created_us and customer.hangup_us:
        total = max(0, round((customer.hangup_us - customer.created_us) / US))
    else:
        total = customer.duration or 0
    if not answered:
        return 0, total
    start_us = customer.bridged_us or customer.answered_us
    if customer.bridges and customer.hangup_us:
        # Every conversation counts, however many managers the customer was passed through.
        talk = round(talk_us(customer, customer.hangup_us) / US)
    elif start_us and customer.hangup_us:
        talk = round((customer.hangup_us - start_us) / US)
    else:
        talk = customer.billsec or 0
    talk = max(0, min(talk, total)) if total else max(0, talk)
    return talk, max(0, total - talk)


def local_time(epoch_us: int, account: AccountConfig) -> str:
    moment = dt.datetime.fromtimestamp(epoch_us / US, tz=dt.timezone.utc).astimezone(account.zone)
    return moment.strftime("%Y-%m-%d %H:%M:%S")

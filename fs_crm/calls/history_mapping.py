"""What a call is for the CRM (pure): direction, customer, numbers, managers, and its history record."""

from __future__ import annotations

import datetime as dt
import logging

from fs_crm import vocab
from fs_crm.calls.legs import ROLE_EXTENSION, ROLE_EXTERNAL, US, Call, Leg, recording_of, talk_us, unique
from fs_crm.config import AccountConfig
from fs_crm.crm.payloads import CallRecord

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


def customer_number(call: Call, direction: str, customer: Leg) -> str:
    """The customer's number as FreeSWITCH (or our click-to-call) had it."""
    for leg in call.legs.values():
        if leg.crm_phone:
            return leg.crm_phone
    return customer.caller_number if direction == vocab.EVENT_IN else customer.destination


def customer_phone(call: Call, direction: str, customer: Leg, account: AccountConfig) -> str:
    """The customer's number in the one canonical form every CRM request uses."""
    return account.canonical_phone(customer_number(call, direction, customer))


def company_numbers(call: Call, customer: Leg) -> tuple[str, ...]:
    """Numbers that may be the company's, best first: what our click-to-call marked, then the leg's."""
    marked = [leg.crm_external_phone for leg in call.legs.values() if leg.crm_external_phone]
    return tuple(marked) + customer.company_candidates


def company_number(call: Call, customer: Leg, account: AccountConfig) -> tuple[str | None, str | None]:
    """(externalPhone, site): the configured number and its store when one matches."""
    return company_number_of(company_numbers(call, customer), account)


def company_number_of(candidates, account: AccountConfig) -> tuple[str | None, str | None]:
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
    recordings = [path for path in (recording_of(leg) for leg in sorted(call.legs.values(),
                                                                       key=lambda x: x.uuid != call.id)) if path]
    # What the call was, before the account's config turned it into CRM fields: kept with the call
    # in the outbox, so the payload is rendered again from the config in force when it is sent (a
    # call the CRM refused goes out right after the operator fixed the config).
    facts = {"started_us": root.created_us, "customer": customer_number(call, direction, customer),
             "extension": handler.extension if handler else None,
             "company_numbers": list(company_numbers(call, customer))}
    return CallRecord(
        account=account.name, external_id=call.id, type=direction, result=result,
        duration=talk, duration_waiting=waited, recording_path=recordings[0] if recordings else None,
        facts=facts, **config_fields(facts, account),
    )


def config_fields(facts: dict, account: AccountConfig) -> dict:
    """The CallRecord fields the account's config decides: time zone, number format, the extension
    map, company numbers and their stores and sources."""
    external_phone, site = company_number_of(facts.get("company_numbers") or (), account)
    code = facts.get("extension")
    return {"date": local_time(facts["started_us"], account), "phone": account.canonical_phone(facts["customer"]),
            "code": code, "user_id": account.user_id_of(code) if code else None,
            "external_phone": external_phone, "site": site, "source": call_source(external_phone, site, account)}


def rendered(payload: dict, facts: dict | None, account: AccountConfig) -> dict:
    """A queued call's calls/upload object with its config-decided fields rendered from `account` now.
    Without facts (queued by an older fs-crm) the payload goes as it was queued."""
    if not facts:
        return payload
    fields = config_fields(facts, account)
    out = dict(payload)
    for key, value in (("date", fields["date"]), ("phone", fields["phone"]), ("code", fields["code"]),
                       ("userId", fields["user_id"]), ("externalPhone", fields["external_phone"]),
                       ("site", fields["site"]), ("source", dict(fields["source"]) or None)):
        if value is None or value == "":
            out.pop(key, None)
        else:
            out[key] = value
    return out


def call_source(external_phone: str | None, site: str | None,
                account: AccountConfig) -> tuple[tuple[str, str], ...]:
    """Call tracking: the source configured for the company number, only when it matched one of
    external_phones (`site` is set then); another number the call carried has none."""
    if site is None:
        return ()
    source = account.source_of(external_phone)
    return tuple(source.items()) if source else ()


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

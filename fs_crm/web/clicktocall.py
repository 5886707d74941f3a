"""Click-to-call: the CRM asks for a call, the manager's phone rings first (showing the customer's
number), and once answered the customer is dialled with the company number as caller ID.

Nothing from the request is escaped-and-hoped into the originate command: the phone must parse as
a phone number (fs_crm.phones, in the account's country) and only its canonical digits
("79121234567") are used, the extension must be one of the account's, and every other part comes
from the validated config.

The manager's phone shows the customer's name when the CRM knows the number: the make-call request
carries no name, so the CRM is asked (the routing's manager lookup, which gives the customer) for
at most CUSTOMER_LOOKUP_TIMEOUT; a slow or failing CRM only means the phone shows the number. The
name goes into the command only as fs_crm.freeswitch.callerid made it safe.
"""

from __future__ import annotations

import hmac
import logging
import re
import uuid
from dataclasses import dataclass, replace
from typing import Callable, Mapping

from fs_crm.config import AccountConfig
from fs_crm.crm.client import CrmClient, CrmError
from fs_crm.freeswitch import callerid
from fs_crm.freeswitch.commands import FreeswitchCommands
from fs_crm.freeswitch.eslsession import EslCommandError, EslError
from fs_crm.phones import parse_phone

logger = logging.getLogger(__name__)

# What parse_phone gives (E.164 digits without +), checked again before it nears a command.
PHONE = re.compile(r"[0-9]{7,15}")
USER_ID = re.compile(r"[0-9]{1,12}")
MAX_PARAM = 256
# Seconds the make-call answer may wait for the CRM to name the customer (the CRM's own request
# waits on it); after that the phone shows the number.
CUSTOMER_LOOKUP_TIMEOUT = 1.0


class CallbackError(Exception):
    """A CRM callback that cannot be served; `status` is the HTTP answer, the message its short reason."""

    status = 500


class Forbidden(CallbackError):
    status = 403


class BadRequest(CallbackError):
    status = 400


class NotRegistered(CallbackError):
    status = 409


class PbxUnavailable(CallbackError):
    status = 503


class PbxRefused(CallbackError):
    status = 502


def account_for_client_id(accounts: Mapping[str, AccountConfig], client_id: str | None) -> AccountConfig:
    """The account whose clientId this is, compared in constant time against every account."""
    if not client_id or len(client_id) > MAX_PARAM:
        raise Forbidden("unknown clientId")
    given = client_id.encode("utf-8", "surrogateescape")
    found = None
    for account in accounts.values():
        if hmac.compare_digest(given, account.client_id.encode("utf-8")) and found is None:
            found = account
    if found is None:
        raise Forbidden("unknown clientId")
    return found


def manager_extension(account: AccountConfig, code: str | None, user_id: str | None) -> tuple[str, int | None]:
    """(extension, CRM user id): `code` must be one of the account's extensions and belong to
    `userId` when the map knows that user."""
    if not code or not account.has_extension(code):
        raise BadRequest("code is not an extension of this account")
    uid = None
    if user_id:
        if not USER_ID.fullmatch(user_id):
            raise BadRequest("userId must be a number")
        uid = int(user_id)
        mapped = account.extension_of(uid)
        if mapped is not None and mapped != code:
            raise BadRequest("code does not belong to userId")
    return code, uid if uid is not None else account.user_id_of(code)


@dataclass(frozen=True)
class CallRequest:
    account: AccountConfig
    extension: str
    user_id: int | None
    phone: str
    company_number: str | None
    # What the manager's phone shows: the CRM's name for the customer, made safe (callerid).
    customer_name: str | None = None


def parse_call_request(account: AccountConfig, params: Mapping[str, str]) -> CallRequest:
    extension, user_id = manager_extension(account, params.get("code"), params.get("userId"))
    phone = phone_param(account, params, "phone")
    if phone is None:
        raise BadRequest("phone is required")
    company = account.default_external_phone
    asked = phone_param(account, params, "externalPhone")
    if asked:
        match = account.site_of(asked)
        if match is not None:
            company = match[1]
        else:
            logger.info("account %s: externalPhone asked by the CRM is not configured; using %s", account.name,
                        company or "the dialplan's caller ID")
    return CallRequest(account, extension, user_id, phone, company)


def phone_param(account: AccountConfig, params: Mapping[str, str], name: str) -> str | None:
    """The parameter's number in canonical form ("+7 (912) 123-45-67", "8 912 123 45 67" and
    "79121234567" are all "79121234567" for a RU account); None when not given."""
    value = params.get(name)
    if not value:
        return None
    number = parse_phone(value, account.country) if len(value) <= MAX_PARAM else None
    if number is None or not PHONE.fullmatch(number):
        raise BadRequest("%s is not a phone number (digits, spaces, brackets and dashes, with the country code "
                         "or the national prefix)" % name)
    return number


def originate_command(call: CallRequest, call_uuid: str) -> str:
    """`originate` for the manager's phone first, then the customer (pure)."""
    account = call.account
    manager_leg = {
        "origination_uuid": call_uuid,
        # The manager's phone shows whom it is going to call: the name when the CRM knows one.
        "origination_caller_id_number": call.phone,
        "origination_caller_id_name": callerid.quoted(call.customer_name) if call.customer_name else call.phone,
        "originate_timeout": str(account.answer_timeout),
        "ignore_early_media": "true",
        "hangup_after_bridge": "true",
        # Markers the call tracker reads: an outgoing call of this manager to this customer.
        "crm_direction": "out",
        "crm_phone": call.phone,
    }
    if call.user_id is not None:
        manager_leg["crm_user_id"] = str(call.user_id)
    if call.company_number:
        manager_leg["crm_external_phone"] = call.company_number
        # Legs created from the manager's leg (the customer's) present the company number.
        manager_leg["effective_caller_id_number"] = call.company_number
        manager_leg["effective_caller_id_name"] = call.company_number
    first = "{%s}user/%s@%s" % (",".join("%s=%s" % kv for kv in manager_leg.items()), call.extension, account.domain)
    if account.outbound_route:
        customer_leg = account.outbound_route.replace("{number}", call.phone)
        cid = call.company_number
        prefix = "{origination_caller_id_number=%s,origination_caller_id_name=%s}" % (cid, cid) if cid else ""
        return "originate %s &bridge(%s%s)" % (first, prefix, customer_leg)
    # No route configured: the customer is dialled through the account's own dialplan, exactly as
    # if the manager had dialled the number from the phone.
    return "originate %s %s XML %s" % (first, call.phone, account.context)


class ClickToCall:
    def __init__(self, accounts: Mapping[str, AccountConfig], commands: FreeswitchCommands,
                 new_uuid: Callable[[], str] = lambda: str(uuid.uuid4()), *,
                 crm_clients: Mapping[str, CrmClient] | None = None,
                 lookup_timeout: float = CUSTOMER_LOOKUP_TIMEOUT):
        self.accounts = accounts
        self.commands = commands
        self.new_uuid = new_uuid
        self.crm_clients = crm_clients or {}
        self.lookup_timeout = lookup_timeout

    def make_call(self, params: Mapping[str, str]) -> str:
        """Start the call; returns its UUID once FreeSWITCH has accepted it (not answered)."""
        account = account_for_client_id(self.accounts, params.get("clientId"))
        call = parse_call_request(account, params)
        try:
            if not self.commands.is_registered(call.extension, account.domain, timeout=1.0):
                raise NotRegistered("extension %s is not registered" % call.extension)
            call = replace(call, customer_name=self.customer_name(call))
            call_uuid = self.new_uuid()
            self.commands.bgapi(originate_command(call, call_uuid), job_uuid=self.new_uuid(), timeout=2.0)
        except EslCommandError as exc:
            logger.warning("account %s: FreeSWITCH refused click-to-call for extension %s: %s", account.name,
                           call.extension, exc)
            raise PbxRefused("FreeSWITCH refused the call") from None
        except EslError as exc:
            logger.warning("account %s: click-to-call for extension %s: FreeSWITCH unavailable: %s", account.name,
                           call.extension, exc)
            raise PbxUnavailable("FreeSWITCH unavailable") from None
        logger.info("call %s account %s: click-to-call from extension %s to ...%s started (%s)", call_uuid,
                    account.name, call.extension, call.phone[-4:],
                    "the phone shows the customer's name" if call.customer_name else "the phone shows the number")
        return call_uuid

    def customer_name(self, call: CallRequest) -> str | None:
        """The customer's name as the CRM knows it, made safe; None when the CRM does not know the
        number, has no name for it, or does not answer within lookup_timeout."""
        account = call.account
        client = self.crm_clients.get(account.name)
        if client is None:
            return None
        try:
            # The name is nice to have: never wait for the CRM's rate budget for it.
            found = client.manager_lookup(call.phone, timeout=self.lookup_timeout, wait_for_budget=False)
        except CrmError as exc:
            logger.warning("account %s: click-to-call for extension %s: no customer name from the CRM (%s); "
                           "the phone shows the number", account.name, call.extension, exc)
            return None
        return callerid.customer_name(found.customer)

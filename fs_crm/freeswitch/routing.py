"""Routing of incoming calls: who should answer this customer? (the outbound-socket app's logic)

FreeSWITCH hands each incoming call to `OutboundServer` (fs_crm.freeswitch.outbound), which runs
`CallRouter.handle`. The caller hears ringback at once; meanwhile retailCRM is asked for the
customer's responsible manager, which it names only when that manager is free in the CRM. The
manager is rung when their extension is in the account's map, fs-crm has not been told they are
away, and a phone is registered; otherwise, and whenever the CRM is slow or failing, the call goes
to the account's fallback destination. The CRM sits in the ringing path, so the lookup has a hard
deadline (`[routing] manager_timeout`) and every failure means "fallback", never a stuck call.

With the account's `ignore_status` the CRM is asked for the manager whatever his CRM status, and he
is rung when his phone is free: registered, and on no call (the service's call tracker knows every
leg in progress). When the CRM knows the customer, the manager's phone shows the customer's name
(fs_crm.freeswitch.callerid).

Nothing the caller controls reaches a FreeSWITCH application argument: the extension comes from the
account's map, domain, context and fallback are whitelisted when the config loads, and the
caller's number (checked against a strict pattern, then written in the account's canonical form, so
`89121234567` is asked about as `79121234567`) is only used as an HTTP query parameter. The CRM's
name for the customer goes into the bridge only as fs_crm.freeswitch.callerid made it safe.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable, Mapping

import gevent

from fs_crm import vocab
from fs_crm.config import AccountConfig, RoutingConfig
from fs_crm.crm.client import CrmClient, CrmError
from fs_crm.freeswitch import callerid
from fs_crm.freeswitch.commands import FreeswitchCommands
from fs_crm.freeswitch.eslparse import Event
from fs_crm.freeswitch.eslsession import EslError
from fs_crm.freeswitch.outbound import OutboundSession, SessionCommandError
from fs_crm.phones import digits_of
from fs_crm.web.statuses import UserStatuses

logger = logging.getLogger(__name__)

# What a caller id must look like before it is sent to the CRM (freeswitch-esl.md section 4.4).
PHONE = re.compile(r"\+?[0-9]{3,20}")
# The `sofia_contact` check goes on the fast command lane (never behind a listing); a slow answer
# means "unknown".
REGISTRATION_TIMEOUT = 0.5
# After the hangup FreeSWITCH keeps the socket this long for the last events, then closes it.
LINGER_SECONDS = 5
# The CRM client gets this much more than the routing deadline (see _decide).
CLIENT_DEADLINE_SLACK = 0.1
# Decision times kept for the bench and health reports (a ring buffer, not an ever-growing list).
DECISION_HISTORY = 10_000
# Exported to the manager's leg, so the call tracker and the CDR show that fs-crm routed it.
ROUTED_TO_VARIABLE = "crm_routed_to"
# ESL names only routing reads (candidates for fs_crm.vocab).
CHANNEL_EXECUTE_COMPLETE = "CHANNEL_EXECUTE_COMPLETE"
H_SOCKET_MODE = "Socket-Mode"            # connect reply: "async" or "static"
H_APPLICATION = "Application"
V_SIP_TO_USER = "variable_sip_to_user"
V_ORIGINATE_DISPOSITION = "variable_originate_disposition"
# Caller-ID name of the leg a bridge creates: what mod_sofia writes as the display name of the
# INVITE's From header to the manager's phone.
V_ORIGINATION_CALLER_ID_NAME = "origination_caller_id_name"
DESTINATION_HEADERS = (vocab.H_DESTINATION, V_SIP_TO_USER)

MANAGER = "manager"      # ring the responsible manager, then the fallback if they do not answer
FALLBACK = "fallback"    # the account's fallback destination (or the dialplan without one)
DIALPLAN = "dialplan"    # fs-crm steps aside: the call continues after the `socket` action
HUNG_UP = "hung_up"      # the caller left before anything was decided


@dataclass(frozen=True)
class Decision:
    action: str
    reason: str
    extension: str | None = None
    # The customer's name as the CRM knows it, already made safe (callerid.safe_name).
    customer_name: str | None = None


class CallRouter:
    def __init__(self, accounts: tuple[AccountConfig, ...], crm_clients: Mapping[str, CrmClient],
                 statuses: UserStatuses, commands: FreeswitchCommands, routing: RoutingConfig,
                 clock: Callable[[], float] = time.monotonic,
                 on_call: Callable[[str, str], bool | None] | None = None):
        self.accounts = tuple(accounts)
        self.crm_clients = crm_clients
        self.statuses = statuses
        self.commands = commands
        # on_call(extension, domain): whether a phone of that extension is on a call right now
        # (None: cannot tell). Only `ignore_status` accounts ask.
        self.on_call = on_call
        self.routing = routing
        self.clock = clock
        # Seconds from the connect reply to the last application of the decision being queued.
        self.decision_times: deque[float] = deque(maxlen=DECISION_HISTORY)
        self.decisions: Counter[str] = Counter()   # by action (manager, fallback, dialplan, hung_up)
        self.reasons: Counter[str] = Counter()     # why it was not the manager

    # --- the session ------------------------------------------------------------------------
    def handle(self, session: OutboundSession) -> None:
        """Route one call. Raises the session's errors (OutboundError); the server logs them and
        hands the call to the dialplan."""
        # The caller's wait starts now, not after our own round trips: the CRM gets what is left.
        started = self.clock()
        channel = session.connect()
        call = session.label
        # Ringback before anything slow: the caller must not hear silence while the CRM thinks.
        # (Event-locked like every application here; ring_ready completes at once anyway.)
        session.execute("ring_ready")
        self._optional(session, "myevents", session.myevents)
        self._optional(session, "linger", lambda: session.linger(LINGER_SECONDS))

        account = self.account_of(channel)
        phone = channel.get(vocab.H_CALLER_NUMBER, "")
        if channel.get(H_SOCKET_MODE) != "async":
            # Without async a bridge would run inside the socket thread and block every reply.
            logger.error("call %s: the dialplan's socket application must say `async` (Socket-Mode: %s); "
                         "the call continues in the dialplan", call, _printable(channel.get(H_SOCKET_MODE)))
            decision = Decision(DIALPLAN, "socket application not async")
        elif account is None:
            logger.warning("call %s: no account has the dialled number %s; the call continues in the dialplan",
                           call, _printable(self._dialled(channel)))
            decision = Decision(DIALPLAN, "dialled number of no account")
        else:
            decision = self._decide(account, phone, call, started + self.routing.manager_timeout)

        if session.hung_up.is_set():
            self.decisions[HUNG_UP] += 1
            logger.info("call %s account %s caller %s: hung up while being routed (%s)", call,
                        account.name if account else "-", _masked(phone), decision.reason)
            return
        action = self._apply(session, account, decision)
        elapsed = self.clock() - started
        self.decision_times.append(elapsed)
        self.decisions[decision.action] += 1
        if decision.action != MANAGER:
            self.reasons[decision.reason] += 1
        logger.info("call %s account %s caller %s: %s in %.0f ms", call, account.name if account else "-",
                    _masked(phone), action, elapsed * 1000)
        if decision.action == MANAGER and account is not None and account.fallback is None:
            self._dialplan_after_failed_bridge(session, decision.extension or "")

    def account_of(self, channel: Mapping[str, str]) -> AccountConfig | None:
        """The account whose company number was dialled; the only account when there is one."""
        for header in DESTINATION_HEADERS:
            number = channel.get(header)
            if number:
                for account in self.accounts:
                    if account.site_of(number):
                        return account
        return self.accounts[0] if len(self.accounts) == 1 else None

    # --- deciding -----------------------------------------------------------------------------
    def _decide(self, account: AccountConfig, phone: str, call: str, deadline_at: float) -> Decision:
        if not PHONE.fullmatch(phone):
            # Anonymous, a SIP URI, or an injection attempt: nothing to ask the CRM about.
            return Decision(FALLBACK, "caller id is not a phone number")
        # The CRM knows the customer by one spelling: "89121234567" is asked about as "79121234567".
        asked = account.canonical_phone(phone)
        client = self.crm_clients.get(account.name)
        if client is None:
            logger.error("call %s account %s: no CRM client for the account", call, account.name)
            return Decision(FALLBACK, "no CRM client")
        limit = max(0.0, deadline_at - self.clock())
        # This deadline is the one that counts; the client's own (a little longer, so it never wins
        # the race) is only its backstop.
        deadline = gevent.Timeout(limit)
        deadline.start()
        try:
            found = client.manager_lookup(asked, timeout=limit + CLIENT_DEADLINE_SLACK,
                                          ignore_status=account.ignore_status)
        except gevent.Timeout as exc:
            if exc is not deadline:
                raise
            logger.warning("call %s account %s: the CRM named no manager within %.2f s; routing to the fallback",
                           call, account.name, self.routing.manager_timeout)
            return Decision(FALLBACK, "CRM too slow")
        except CrmError as exc:
            logger.warning("call %s account %s: responsible manager lookup failed (%s); routing to the fallback",
                           call, account.name, exc)
            return Decision(FALLBACK, "CRM failed")
        finally:
            deadline.close()
        manager = found.manager
        if manager is None:
            return Decision(FALLBACK, "no responsible manager" if account.ignore_status
                            else "no free responsible manager")
        extension = _extension_of(account, manager.get("code"))
        if extension is None:
            logger.warning("call %s account %s: the CRM's manager (user %s) has extension %s, which is not in "
                           "the account's extension map", call, account.name, _printable(manager.get("id")),
                           _printable(manager.get("code")))
            return Decision(FALLBACK, "manager's extension not configured")
        if not account.ignore_status and self.statuses.is_away(account.name, extension):
            return Decision(FALLBACK, "manager away (%s)" % self.statuses.status_of(account.name, extension))
        if not self._registered(account, extension, call):
            return Decision(FALLBACK, "manager's phone not registered")
        if account.ignore_status and self._on_call(account, extension, call):
            return Decision(FALLBACK, "manager's phone on a call")
        name = callerid.customer_name(found.customer)
        if found.customer is not None and name is None:
            logger.info("call %s account %s: the CRM's name for the customer has nothing a phone can show; "
                        "it shows the number", call, account.name)
        return Decision(MANAGER, "responsible manager", extension, name)

    def _on_call(self, account: AccountConfig, extension: str, call: str) -> bool:
        busy = self.on_call(extension, account.domain) if self.on_call is not None else None
        if busy is None:
            # As with registration: unknown is not "busy". A phone that is busy says so (486) and
            # the fallback takes the call.
            logger.warning("call %s account %s: cannot tell whether extension %s is on a call; ringing it anyway",
                           call, account.name, extension)
            return False
        return busy

    def _registered(self, account: AccountConfig, extension: str, call: str) -> bool:
        # The command connection has its own timeout; the outer one also bounds a reconnect.
        guard = gevent.Timeout(REGISTRATION_TIMEOUT + 0.1)
        guard.start()
        try:
            return self.commands.is_registered(extension, account.domain, timeout=REGISTRATION_TIMEOUT)
        except (EslError, gevent.Timeout) as exc:
            if isinstance(exc, gevent.Timeout) and exc is not guard:
                raise
            # Unknown is not "unregistered": ring the manager; if no phone answers, the bridge
            # fails at once (USER_NOT_REGISTERED) and the fallback takes the call.
            logger.warning("call %s account %s: cannot tell whether extension %s is registered (%s); "
                           "ringing it anyway", call, account.name, extension, exc or "no answer")
            return True
        finally:
            guard.close()

    # --- acting -------------------------------------------------------------------------------
    def _apply(self, session: OutboundSession, account: AccountConfig | None, decision: Decision) -> str:
        """Queue the decision on the call; a description for the log line."""
        if account is None or decision.action == DIALPLAN:
            session.release(resume=True, reason="continues in the dialplan")
            return "dialplan (%s)" % decision.reason
        if decision.action == MANAGER:
            extension = decision.extension
            if extension is None or not account.has_extension(extension):
                raise ValueError("manager decision without a configured extension")
            # Every application goes with `event-lock: true` (OutboundSession.execute), so each
            # starts only once the previous one has completed. The bridge is the one that needs
            # it: without the lock FreeSWITCH runs the queued transfer while the manager's phone
            # rings and the phone gets CANCEL ~20 ms after its INVITE. With it the manager rings
            # for the whole call_timeout. set/export/ring_ready complete at once and could do
            # without; locking them too keeps "in order, each after the last" true for the whole
            # queue, whatever is added to it later, and costs nothing.
            # hangup_after_bridge ends the call when the manager's talk is over, so the queued
            # transfer only runs when the bridge failed; continue_on_fail keeps a failed bridge
            # (busy, no answer, rejected, not registered) from hanging up on the caller.
            session.execute("set", "hangup_after_bridge=true")
            session.execute("set", "continue_on_fail=true")
            session.execute("export", "%s=%s" % (ROUTED_TO_VARIABLE, extension))
            session.execute("bridge", _bridge_arg(account, extension, decision.customer_name))
            if account.fallback:
                session.execute("transfer", _transfer_arg(account))
                session.decided = True
                return "ring manager %s, then %s" % (extension, account.fallback)
            session.decided = True
            return "ring manager %s, then the dialplan" % extension
        if account.fallback:
            session.execute("transfer", _transfer_arg(account))
            session.decided = True
            return "fallback %s (%s)" % (account.fallback, decision.reason)
        session.release(resume=True, reason="continues in the dialplan")
        return "dialplan, no fallback configured (%s)" % decision.reason

    def _dialplan_after_failed_bridge(self, session: OutboundSession, extension: str) -> None:
        """Without a fallback the dialplan after `socket` is the fallback: once the bridge ends with
        the caller still there, say `resume` and let go of the call."""
        event = session.wait_for_event(_bridge_finished)
        if event is None or session.hung_up.is_set() or _call_over(event):
            return
        logger.info("call %s: manager %s did not take the call (%s); it continues in the dialplan", session.label,
                    extension, _printable(event.get(V_ORIGINATE_DISPOSITION) or "bridge failed"))
        session.decided = False
        session.release(resume=True, reason="bridge failed, continues in the dialplan")

    def _optional(self, session: OutboundSession, what: str, command: Callable[[], object]) -> None:
        try:
            command()
        except SessionCommandError as exc:
            logger.warning("call %s: %s refused (%s); routing goes on without it", session.label, what, exc)

    @staticmethod
    def _dialled(channel: Mapping[str, str]) -> str:
        return next((channel[h] for h in DESTINATION_HEADERS if channel.get(h)), "")


def _bridge_arg(account: AccountConfig, extension: str, customer_name: str | None) -> str:
    """The manager's phone, showing the customer's name when the CRM gave one. A variable of the
    bridged leg only: the fallback's phones and the caller's own leg are left as they were."""
    target = "user/%s@%s" % (extension, account.domain)
    if not customer_name:
        return target
    return "{%s=%s}%s" % (V_ORIGINATION_CALLER_ID_NAME, callerid.quoted(customer_name), target)


def _transfer_arg(account: AccountConfig) -> str:
    # Both parts were checked against [A-Za-z0-9_.-] when the config was loaded.
    return "%s XML %s" % (account.fallback, account.context)


def _extension_of(account: AccountConfig, code: object) -> str | None:
    """The account's own spelling of the manager's extension (never the CRM's text as such)."""
    if isinstance(code, bool) or not isinstance(code, (str, int)):
        return None
    wanted = str(code).strip()
    return next((ext for _, ext in account.extensions if ext == wanted), None)


def _bridge_finished(event: Event) -> bool:
    return event.name == CHANNEL_EXECUTE_COMPLETE and event.get(H_APPLICATION) == "bridge"


def _call_over(event: Event) -> bool:
    return (event.get(V_ORIGINATE_DISPOSITION) == "SUCCESS"
            or event.get(vocab.H_ANSWER_STATE) == "hangup")


def _masked(phone: str) -> str:
    """Phone numbers are personal data: logs keep the last four digits only."""
    digits = digits_of(phone)
    if not PHONE.fullmatch(phone):
        return "(not a number)"
    return "*" * max(len(digits) - 4, 0) + digits[-4:]


def _printable(value: object) -> str:
    text = str(value)
    return repr(text[:40]) if not re.fullmatch(r"[0-9A-Za-z+_.@-]{0,40}", text) else text or "''"


__all__ = ["CallRouter", "Decision", "MANAGER", "FALLBACK", "DIALPLAN", "HUNG_UP", "LINGER_SECONDS"]

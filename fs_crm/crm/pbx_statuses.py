"""Statuses set on the PBX, to the CRM user (`POST /api/v5/users/{id}/status`): optional, per account.

fs-crm hears them on its event socket, from two sources:
- the CUSTOM event `fs_crm::status` that conf/freeswitch/dnd.xml's feature codes fire with the
  dialplan's `event` application (CRM-Extension, CRM-Domain, CRM-Status headers);
- mod_callcenter's `callcenter::info` with CC-Action agent-status-change, for accounts whose
  status_push is "callcenter" (the agent name is read back through `callcenter_agent`).

No echo loops: UserStatuses decides what is news (fs_crm.web.statuses.from_pbx): a mod_callcenter
status that is the echo of a push fs-crm made from a CRM status, or a status equal to the one
already known (what the CRM said last: the CRM calling back changeUserStatusUrl after our POST),
is not sent. The event handler only parses and enqueues; one greenlet records (disk) and one
sends to the CRM, latest status per user, a few attempts on CrmUnavailable, refusals logged.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from typing import Callable, Mapping

import gevent
import gevent.event
import gevent.queue

from fs_crm import vocab
from fs_crm.config import AccountConfig, DeliveryConfig
from fs_crm.crm.client import CrmClient, CrmRejected, CrmUnavailable
from fs_crm.freeswitch.eslparse import Event
from fs_crm.web.statuses import STATUSES, UserStatuses, status_of_agent

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
QUEUE_SIZE = 1000


@dataclass(frozen=True)
class PbxStatus:
    """A status set on the PBX for one of an account's extensions."""

    account: str
    extension: str
    # The CRM status the dialplan named (fs_crm::status), or None for a mod_callcenter one.
    status: str | None = None
    # The mod_callcenter agent status (callcenter::info), or None.
    agent_status: str | None = None


def custom_events(accounts: tuple[AccountConfig, ...]) -> tuple[str, ...]:
    """The CUSTOM subclasses the accounts' options need on the event socket (none by default)."""
    wanted = [a for a in accounts if a.status_from_pbx]
    events: list[str] = []
    if wanted:
        events.append(vocab.FS_CRM_STATUS)
    if any(a.status_push == "callcenter" for a in wanted):
        events.append(vocab.CALLCENTER_INFO)
    return tuple(events)


def _agent_pattern(account: AccountConfig) -> re.Pattern[str]:
    parts = re.split(r"(\{extension\}|\{domain\})", account.callcenter_agent)
    pattern = "".join("(?P<extension>[^@]+?)" if p == "{extension}" else re.escape(account.domain)
                      if p == "{domain}" else re.escape(p) for p in parts)
    return re.compile(pattern, re.IGNORECASE)


class StatusEvents:
    """Pure: which PBX status an event reports, for the accounts that take statuses from the PBX."""

    def __init__(self, accounts: tuple[AccountConfig, ...]):
        self.accounts = tuple(a for a in accounts if a.status_from_pbx)
        self._single = len(accounts) == 1
        self._agents = [(a, _agent_pattern(a)) for a in self.accounts if a.status_push == "callcenter"]

    def report(self, event: Event) -> PbxStatus | None:
        if event.name == vocab.FS_CRM_STATUS:
            return self._feature_code(event)
        if event.name == vocab.CALLCENTER_INFO and event.get(vocab.H_CC_ACTION) == vocab.CC_AGENT_STATUS_CHANGE:
            return self._agent(event)
        return None

    def _feature_code(self, event: Event) -> PbxStatus | None:
        # The dialplan names the extension (${user_name}: the phone that authenticated); the
        # channel's own variables are the fallback.
        extension = event.get(vocab.H_CRM_EXTENSION) or event.get(vocab.V_USER_NAME) or ""
        domain = (event.get(vocab.H_CRM_DOMAIN) or event.get(vocab.V_DOMAIN_NAME) or "").lower()
        status = (event.get(vocab.H_CRM_STATUS) or "").strip().lower()
        if status not in STATUSES:
            logger.warning("fs_crm::status event with status %r ignored (expected one of %s)", status[:20],
                           ", ".join(STATUSES))
            return None
        account = next((a for a in self.accounts if a.domain.lower() == domain), None)
        if account is None and self._single and self.accounts:
            account = self.accounts[0]
        if account is None or not account.has_extension(extension):
            logger.warning("fs_crm::status %s for extension %r@%s ignored: no account with status_from_pbx has it",
                           status, extension[:32], domain[:64])
            return None
        return PbxStatus(account.name, extension, status=status)

    def _agent(self, event: Event) -> PbxStatus | None:
        agent = event.get(vocab.H_CC_AGENT) or ""
        agent_status = event.get(vocab.H_CC_AGENT_STATUS) or ""
        for account, pattern in self._agents:
            match = pattern.fullmatch(agent)
            if match and account.has_extension(match.group("extension")):
                return PbxStatus(account.name, match.group("extension"), agent_status=agent_status)
        logger.debug("agent-status-change of agent %r: not an extension of an account that takes statuses "
                     "from mod_callcenter", agent[:64])
        return None


class PbxStatusReporter:
    def __init__(self, accounts: Mapping[str, AccountConfig], statuses: UserStatuses,
                 clients: Mapping[str, CrmClient], delivery: DeliveryConfig,
                 rng: Callable[[], float] = random.random):
        self.accounts = accounts
        self.events = StatusEvents(tuple(accounts.values()))
        self.subclasses = frozenset(custom_events(tuple(accounts.values())))
        self.statuses = statuses
        self.clients = clients
        self.delivery = delivery
        self._rng = rng
        self._queue: gevent.queue.Queue = gevent.queue.Queue(QUEUE_SIZE)
        # (account, extension) -> the latest status the CRM has not confirmed yet.
        self._unsent: dict[tuple[str, str], str] = {}
        self._wake = gevent.event.Event()
        self._stopping = gevent.event.Event()
        self.sent = 0

    @property
    def enabled(self) -> bool:
        return bool(self.subclasses)

    def handle(self, event: Event) -> None:
        """In the ESL reader: parse and enqueue, never wait."""
        report = self.events.report(event)
        if report is None:
            return
        try:
            self._queue.put_nowait(report)
        except gevent.queue.Full:
            logger.warning("account %s: status set on the PBX for extension %s dropped: %d waiting already",
                           report.account, report.extension, QUEUE_SIZE)

    def run_intake(self) -> None:
        """Record each report (disk, routing) and keep the news for the sender."""
        while not self._stopping.is_set():
            try:
                report = self._queue.get(timeout=0.5)
            except gevent.queue.Empty:
                continue
            self._take(report)

    def _take(self, report: PbxStatus) -> None:
        account = self.accounts[report.account]
        key = (report.account, report.extension)
        status = report.status
        if report.agent_status is not None:
            status = status_of_agent(report.agent_status, self.statuses.status_of(*key))
            if status is None:
                logger.debug("account %s: agent status %r of extension %s has no CRM status", report.account,
                             report.agent_status, report.extension)
                return
        user_id = account.user_id_of(report.extension)
        if not self.statuses.from_pbx(report.account, report.extension, user_id, status,
                                      agent_status=report.agent_status):
            return
        if user_id is None:
            return
        self._unsent[key] = status
        self._wake.set()

    def run_sender(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(timeout=0.5)
            self._wake.clear()
            while self._unsent and not self._stopping.is_set():
                self._send(next(iter(self._unsent)))

    def _send(self, key: tuple[str, str]) -> None:
        account_name, extension = key
        account = self.accounts[account_name]
        user_id = account.user_id_of(extension)
        delay = self.delivery.retry_min_delay
        if user_id is None:  # the extension map changed: nobody to tell
            self._unsent.pop(key, None)
            return
        for attempt in range(1, MAX_ATTEMPTS + 1):
            status = self._unsent.get(key)
            if status is None:
                return
            try:
                self.clients[account_name].set_user_status(user_id, status)
            except CrmRejected as exc:
                logger.warning("account %s: the CRM refused status %s for user %s (extension %s): %s", account_name,
                               status, user_id, extension, exc)
                self._done(key, status)
                return
            except CrmUnavailable as exc:
                if attempt == MAX_ATTEMPTS:
                    logger.warning("account %s: status %s of user %s (extension %s) given up: the CRM was "
                                   "unavailable %d times (%s)", account_name, status, user_id, extension,
                                   MAX_ATTEMPTS, exc)
                    self._done(key, status)
                    return
                logger.info("account %s: status %s of user %s waits for the CRM (%s)", account_name, status,
                            user_id, exc)
                if self._stopping.wait(timeout=delay * (0.5 + self._rng())):
                    return
                delay = min(delay * 2, self.delivery.retry_max_delay)
                continue
            self.sent += 1
            logger.info("account %s: user %s (extension %s) is %s in the CRM now", account_name, user_id,
                        extension, status)
            self._done(key, status)
            return

    def _done(self, key: tuple[str, str], status: str) -> None:
        # A newer status that came in meanwhile stays for the next round.
        if self._unsent.get(key) == status:
            del self._unsent[key]

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._unsent:
            logger.warning("stopping with %d PBX status change(s) not sent to the CRM", len(self._unsent))

"""CRM user statuses (free / busy / dinner / break): remembered per account and extension, and
pushed to FreeSWITCH where the account asks for it (mod_callcenter, or a hash/db flag)."""

from __future__ import annotations

import logging
import time
from typing import Callable, Mapping

import gevent
import gevent.lock

from fs_crm.config import AccountConfig
from fs_crm.freeswitch.commands import FreeswitchCommands
from fs_crm.freeswitch.eslsession import EslError
from fs_crm.greenlets import spawn
from fs_crm.store.outbox import Outbox, OutboxError

logger = logging.getLogger(__name__)

STATUSES = ("free", "busy", "dinner", "break")
FREE = "free"
# mod_callcenter has no reasons for a break: every status but free is "On Break".
CALLCENTER_STATUS = {"free": "Available", "busy": "On Break", "dinner": "On Break", "break": "On Break"}
FLAG_REALM = "fs_crm_status"
# mod_callcenter fires agent-status-change for every status set, ours included: a push's echo comes
# back on the event socket and is not a change made on the PBX. Echoes not seen within this long
# (a push FreeSWITCH never ran) are forgotten.
ECHO_SECONDS = 30.0


def status_of_agent(agent_status: str, current: str | None) -> str | None:
    """The CRM status a mod_callcenter agent status stands for; None for those it has none for
    (Logged Out). "On Break" is any status but free: it keeps the reason already known."""
    if agent_status in ("Available", "Available (On Demand)"):
        return FREE
    if agent_status == "On Break":
        return current if current is not None and current != FREE else "break"
    return None


def push_command(account: AccountConfig, extension: str, status: str) -> str | None:
    """The FreeSWITCH api command that mirrors a status, or None when the account pushes nothing.
    Every part is whitelisted: extension by the account's map, status by STATUSES, the rest by config."""
    if status not in STATUSES or not account.has_extension(extension):
        raise ValueError("status %r for extension %r" % (status, extension))
    if account.status_push == "callcenter":
        agent = account.callcenter_agent.replace("{extension}", extension).replace("{domain}", account.domain)
        return "callcenter_config agent set status %s '%s'" % (agent, CALLCENTER_STATUS[status])
    if account.status_push in ("hash", "db"):
        # The dialplan reads it with ${hash(select/fs_crm_status/<ext>@<domain>)} (or db).
        return "%s insert/%s/%s@%s/%s" % (account.status_push, FLAG_REALM, extension, account.domain, status)
    return None


class UserStatuses:
    """The statuses, and what FreeSWITCH has been told of them.

    Pushes for one extension never overtake each other: each holds that extension's lock from
    reading the status to FreeSWITCH's answer, and sends the status current at that moment, never
    the one it was started for. So a change that arrives while `push_all` runs is not overwritten
    by the older value push_all would otherwise have sent after it.
    """

    def __init__(self, outbox: Outbox, accounts: Mapping[str, AccountConfig], commands: FreeswitchCommands,
                 clock: Callable[[], float] = time.monotonic):
        self.outbox = outbox
        self.accounts = accounts
        self.commands = commands
        self._clock = clock
        # (account, extension) -> [(agent status, expires at)]: echoes of our mod_callcenter pushes.
        self._echoes: dict[tuple[str, str], list[tuple[str, float]]] = {}
        self._statuses = outbox.user_statuses()
        self._locks: dict[tuple[str, str], gevent.lock.Semaphore] = {}
        # FreeSWITCH forgets hash/db flags and agent statuses when it restarts, so what it has been
        # told only holds within one connection "round" (push_all starts a new one).
        self._round = 0
        self._pushed: dict[tuple[str, str], tuple[int, str]] = {}  # (round, status) FreeSWITCH confirmed

    def status_of(self, account: str, extension: str) -> str | None:
        return self._statuses.get((account, extension))

    def is_away(self, account: str, extension: str) -> bool:
        """A manager the CRM marked busy, at dinner or on a break gets no routed calls."""
        status = self.status_of(account, extension)
        return status is not None and status != FREE

    def record(self, account: str, extension: str, user_id: int | None, status: str) -> None:
        """Remember it (on disk, and for routing at once); the push to FreeSWITCH goes on in the
        background, so the CRM's request never waits on the PBX."""
        try:
            self.outbox.set_user_status(account, extension, user_id, status)
        except OutboxError as exc:
            # Routing and FreeSWITCH still get it; only a restart before the disk is back forgets it.
            logger.warning("account %s: status of extension %s not saved (%s); it holds until fs-crm restarts",
                           account, extension, exc)
        self._statuses[(account, extension)] = status
        logger.info("account %s: extension %s (user %s) is now %s", account, extension, user_id, status)
        spawn("status-push-%s" % extension, self._push, account, extension, True)

    def from_pbx(self, account: str, extension: str, user_id: int | None, status: str, *,
                 agent_status: str | None = None) -> bool:
        """A status set on the PBX: by the dialplan's feature code, or (`agent_status`) the
        mod_callcenter agent status it was read from. True when it is news the CRM must hear: not
        the echo of a push of ours, not the status already known (what the CRM told us last, or
        the PBX). Remembered like the CRM's; a mod_callcenter status is not pushed back to it."""
        key = (account, extension)
        if agent_status is not None and self._is_echo(key, agent_status):
            logger.debug("account %s: extension %s agent status %r is the echo of our push", account, extension,
                         agent_status)
            return False
        if self._statuses.get(key) == status:
            return False
        try:
            self.outbox.set_user_status(account, extension, user_id, status)
        except OutboxError as exc:
            logger.warning("account %s: status of extension %s not saved (%s); it holds until fs-crm restarts",
                           account, extension, exc)
        self._statuses[key] = status
        logger.info("account %s: extension %s (user %s) set %s on the PBX", account, extension, user_id, status)
        if agent_status is None:
            spawn("status-push-%s" % extension, self._push, account, extension, True)
        else:
            self._pushed[key] = (self._round, status)  # mod_callcenter has it: it told us
        return True

    def _expect_echo(self, key: tuple[str, str], agent_status: str) -> None:
        now = self._clock()
        pending = [e for e in self._echoes.get(key, ()) if e[1] > now]
        pending.append((agent_status, now + ECHO_SECONDS))
        self._echoes[key] = pending

    def _is_echo(self, key: tuple[str, str], agent_status: str) -> bool:
        now = self._clock()
        pending = [e for e in self._echoes.pop(key, ()) if e[1] > now]
        match = next((i for i, (value, _) in enumerate(pending) if value == agent_status), None)
        if match is not None:
            del pending[match]
        if pending:
            self._echoes[key] = pending
        return match is not None

    def _push(self, account: str, extension: str, always: bool = False) -> bool:
        """Send the extension's current status; without `always`, only if FreeSWITCH has not
        confirmed it since the last push_all."""
        key = (account, extension)
        with self._locks.setdefault(key, gevent.lock.Semaphore()):
            status = self._statuses.get(key)
            round_ = self._round
            if status is None or (not always and self._pushed.get(key) == (round_, status)):
                return True
            command = push_command(self.accounts[account], extension, status)
            if command is None:
                return True
            if self.accounts[account].status_push == "callcenter":
                self._expect_echo(key, CALLCENTER_STATUS[status])
            try:
                self.commands.api(command, timeout=2.0)
            except EslError as exc:
                logger.warning("account %s: status of extension %s not pushed to FreeSWITCH yet (%s); it will be "
                               "when the connection to FreeSWITCH is back", account, extension, exc)
                return False
            self._pushed[key] = (round_, status)
            return True

    def push_all(self) -> None:
        """After FreeSWITCH (re)connected: it may have restarted and forgotten every flag or agent
        status, so each extension's latest status is sent again."""
        self._round += 1
        self._push_each()

    def push_unsent(self) -> None:
        """After the command connection was made again: what FreeSWITCH has not confirmed since the
        last push_all (a push that failed, a change meanwhile); the rest it already has."""
        self._push_each()

    def _push_each(self) -> None:
        for account, extension in list(self._statuses):
            if account in self.accounts and self.accounts[account].has_extension(extension):
                self._push(account, extension)

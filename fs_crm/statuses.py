"""CRM user statuses (free / busy / dinner / break): remembered per account and extension, and
pushed to FreeSWITCH where the account asks for it (mod_callcenter, or a hash/db flag)."""

from __future__ import annotations

import logging
from typing import Mapping

import gevent
import gevent.lock

from fs_crm.commands import FreeswitchCommands
from fs_crm.config import AccountConfig
from fs_crm.eslsession import EslError
from fs_crm.greenlets import spawn
from fs_crm.outbox import Outbox, OutboxError

logger = logging.getLogger(__name__)

STATUSES = ("free", "busy", "dinner", "break")
FREE = "free"
# mod_callcenter has no reasons for a break: every status but free is "On Break".
CALLCENTER_STATUS = {"free": "Available", "busy": "On Break", "dinner": "On Break", "break": "On Break"}
FLAG_REALM = "fs_crm_status"


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

    def __init__(self, outbox: Outbox, accounts: Mapping[str, AccountConfig], commands: FreeswitchCommands):
        self.outbox = outbox
        self.accounts = accounts
        self.commands = commands
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

"""CRM user statuses (free / busy / dinner / break): remembered per account and extension, and
pushed to FreeSWITCH where the account asks for it (mod_callcenter, or a hash/db flag)."""

from __future__ import annotations

import logging
from typing import Mapping

import gevent

from fs_crm.commands import FreeswitchCommands
from fs_crm.config import AccountConfig
from fs_crm.esl import EslError
from fs_crm.outbox import Outbox

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
    def __init__(self, outbox: Outbox, accounts: Mapping[str, AccountConfig], commands: FreeswitchCommands):
        self.outbox = outbox
        self.accounts = accounts
        self.commands = commands
        self._statuses = outbox.user_statuses()

    def status_of(self, account: str, extension: str) -> str | None:
        return self._statuses.get((account, extension))

    def is_away(self, account: str, extension: str) -> bool:
        """A manager the CRM marked busy, at dinner or on a break gets no routed calls."""
        status = self.status_of(account, extension)
        return status is not None and status != FREE

    def record(self, account: str, extension: str, user_id: int | None, status: str) -> None:
        """Remember it (on disk, and for routing at once); the push to FreeSWITCH goes on in the
        background, so the CRM's request never waits on the PBX."""
        self.outbox.set_user_status(account, extension, user_id, status)
        self._statuses[(account, extension)] = status
        logger.info("account %s: extension %s (user %s) is now %s", account, extension, user_id, status)
        gevent.spawn(self._push, account, extension, status)

    def _push(self, account: str, extension: str, status: str) -> bool:
        command = push_command(self.accounts[account], extension, status)
        if command is None:
            return True
        try:
            self.commands.api(command, timeout=2.0)
        except EslError as exc:
            logger.warning("account %s: status of extension %s not pushed to FreeSWITCH yet (%s); it will be "
                           "when the command connection is back", account, extension, exc)
            return False
        return True

    def push_all(self) -> None:
        """After (re)connecting: FreeSWITCH may have restarted and forgotten hash flags or agents."""
        for (account, extension), status in list(self._statuses.items()):
            if account in self.accounts and self.accounts[account].has_extension(extension):
                self._push(account, extension, status)

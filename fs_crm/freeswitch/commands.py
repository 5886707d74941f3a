"""Commands to FreeSWITCH on connections of their own, in two lanes.

The event listener's connection must never wait on a command (FreeSWITCH runs `api` inline and
holds that connection's events meanwhile), so click-to-call, registration checks, status pushes
and the periodic channel sweep use connections of their own. FreeSWITCH answers one connection's
commands one after another, so a `show channels` listing thousands of calls would hold up the
registration check an incoming call is waiting for: listings go to the `bulk` lane, everything
else (one quick lookup or change each) to the `fast` lane. Each lane is one connection, made on
first use and made again after any failure.
"""

from __future__ import annotations

import logging
import re
from typing import Callable

import gevent
import gevent.lock

from fs_crm.config import FreeswitchConfig
from fs_crm.freeswitch.eslsession import EslCommandError, EslError, EslUnavailable
from fs_crm.freeswitch.listener import EslConnection
from fs_crm.greenlets import spawn

logger = logging.getLogger(__name__)

NOT_REGISTERED = "error/user_not_registered"
FAST = "fast"
BULK = "bulk"
# Commands whose answer grows with the switch's load (`show channels`, `show calls`, ...).
BULK_PREFIXES = ("show ",)
# Everything sent from here is built by fs-crm from whitelisted parts; this is the last line of
# defence should a caller ever pass something else (no blank lines, no control characters). Letters
# beyond ASCII are whitelisted parts too: a customer's name on the manager's phone ("Иван Петров").
_COMMAND = re.compile(r"[^\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def lane_of(command: str) -> str:
    return BULK if command.lower().startswith(BULK_PREFIXES) else FAST


class _Lane:
    def __init__(self, name: str):
        self.name = name
        self.conn: EslConnection | None = None
        self.lock = gevent.lock.Semaphore()  # one connect at a time
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        return self.conn is not None and self.conn.connected


class FreeswitchCommands:
    def __init__(self, config: FreeswitchConfig, on_connected: Callable[[], None] | None = None, *,
                 spawn: Callable[[Callable[[], None]], object] = lambda work: spawn("esl-commands-connected", work)):
        self.config = config
        # Run (through `spawn`, never in the caller's command) each time the fast lane's connection
        # is made: the commands that change FreeSWITCH's state (status pushes) travel on it.
        self.on_connected = on_connected
        self.spawn = spawn
        self._lanes = {FAST: _Lane(FAST), BULK: _Lane(BULK)}

    @property
    def connected(self) -> bool:
        return any(lane.connected for lane in self._lanes.values())

    @property
    def last_error(self) -> str | None:
        """The last connection problem of either lane (for /healthz); a refused command is not one."""
        return self._lanes[FAST].last_error or self._lanes[BULK].last_error

    def _connection(self, lane: _Lane) -> EslConnection:
        with lane.lock:
            if lane.connected:
                return lane.conn
            conn = EslConnection(self.config, on_event=lambda event: None)
            conn.connect()  # raises EslUnavailable / EslAuthError; closes itself when it fails
            lane.conn = conn
        logger.info("command connection (%s lane) to FreeSWITCH %s:%s ready", lane.name, self.config.host,
                    self.config.port)
        if lane.name == FAST and self.on_connected is not None:
            self.spawn(self.on_connected)
        return conn

    def api(self, command: str, timeout: float | None = None) -> str:
        """Output of `api <command>`; EslCommandError on -ERR, EslUnavailable/EslTimeout otherwise."""
        _check(command)
        return self._tracked(self._lanes[lane_of(command)], lambda conn: conn.api(command, timeout))

    def bgapi(self, command: str, job_uuid: str, timeout: float | None = None) -> str:
        """Queue `command` as a background job with our own Job-UUID; returns FreeSWITCH's
        Reply-Text once accepted (the job's result comes later as BACKGROUND_JOB)."""
        if not re.fullmatch(r"[0-9a-f-]{36}", job_uuid):
            raise ValueError("Job-UUID must be a UUID")
        _check(command)
        return self._tracked(self._lanes[FAST],
                             lambda conn: conn.command("bgapi %s\nJob-UUID: %s" % (command, job_uuid), timeout))

    def _tracked(self, lane: _Lane, run: Callable[[EslConnection], str]) -> str:
        try:
            result = run(self._connection(lane))
        except EslCommandError:
            raise
        except EslError as exc:
            lane.last_error = str(exc)
            raise
        lane.last_error = None
        return result

    def is_registered(self, extension: str, domain: str, timeout: float | None = None) -> bool:
        """Whether any phone is registered for extension@domain (`sofia_contact`)."""
        contact = self.api("sofia_contact */%s@%s" % (extension, domain), timeout).strip()
        return bool(contact) and NOT_REGISTERED not in contact

    def close(self) -> None:
        for lane in self._lanes.values():
            with lane.lock:
                conn, lane.conn = lane.conn, None
            if conn is not None:
                conn.stop()


def _check(command: str) -> None:
    if not _COMMAND.fullmatch(command):
        raise ValueError("refusing a FreeSWITCH command with control characters")


__all__ = ["FreeswitchCommands", "EslUnavailable", "NOT_REGISTERED", "FAST", "BULK", "lane_of"]

"""Commands to FreeSWITCH on a connection of their own.

The event listener's connection must never wait on a command (FreeSWITCH runs `api` inline and
holds that connection's events meanwhile), so click-to-call, registration checks and status pushes
use this second connection. It connects on first use, and is made again after any failure.
"""

from __future__ import annotations

import logging
import re
from typing import Callable

import gevent
import gevent.lock

from fs_crm.config import FreeswitchConfig
from fs_crm.esl import EslCommandError, EslConnection, EslError, EslUnavailable

logger = logging.getLogger(__name__)

NOT_REGISTERED = "error/user_not_registered"
# Everything sent from here is built by fs-crm from whitelisted parts; this is the last line of
# defence should a caller ever pass something else (no blank lines, no control characters).
_COMMAND = re.compile(r"[\x20-\x7e]+")


class FreeswitchCommands:
    def __init__(self, config: FreeswitchConfig, on_connected: Callable[[], None] | None = None, *,
                 spawn: Callable[[Callable[[], None]], object] = gevent.spawn):
        self.config = config
        # Run (through `spawn`, never in the caller's command) each time this connection is made.
        self.on_connected = on_connected
        self.spawn = spawn
        self._conn: EslConnection | None = None
        self._lock = gevent.lock.Semaphore()
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.connected

    def _connection(self) -> EslConnection:
        with self._lock:
            if self._conn is None or not self._conn.connected:
                conn = EslConnection(self.config, on_event=lambda event: None)
                conn.connect()  # raises EslUnavailable / EslAuthError
                self._conn = conn
                logger.info("command connection to FreeSWITCH %s:%s ready", self.config.host, self.config.port)
                fresh = True
            else:
                fresh = False
            conn = self._conn
        if fresh and self.on_connected is not None:
            self.spawn(self.on_connected)
        return conn

    def _checked(self, command: str) -> str:
        if not _COMMAND.fullmatch(command):
            raise ValueError("refusing a FreeSWITCH command with control characters")
        return command

    def api(self, command: str, timeout: float | None = None) -> str:
        """Output of `api <command>`; EslCommandError on -ERR, EslUnavailable/EslTimeout otherwise."""
        return self._tracked(lambda: self._connection().api(self._checked(command), timeout))

    def bgapi(self, command: str, job_uuid: str, timeout: float | None = None) -> str:
        """Queue `command` as a background job with our own Job-UUID; returns FreeSWITCH's
        Reply-Text once accepted (the job's result comes later as BACKGROUND_JOB)."""
        if not re.fullmatch(r"[0-9a-f-]{36}", job_uuid):
            raise ValueError("Job-UUID must be a UUID")
        return self._tracked(lambda: self._connection().command(
            "bgapi %s\nJob-UUID: %s" % (self._checked(command), job_uuid), timeout))

    def _tracked(self, run: Callable[[], str]) -> str:
        """Remember the last connection problem for /healthz (a refused command is not one)."""
        try:
            result = run()
        except EslCommandError:
            raise
        except EslError as exc:
            self.last_error = str(exc)
            raise
        self.last_error = None
        return result

    def is_registered(self, extension: str, domain: str, timeout: float | None = None) -> bool:
        """Whether any phone is registered for extension@domain (`sofia_contact`)."""
        contact = self.api("sofia_contact */%s@%s" % (extension, domain), timeout).strip()
        return bool(contact) and NOT_REGISTERED not in contact

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.stop()


__all__ = ["FreeswitchCommands", "EslUnavailable", "NOT_REGISTERED"]

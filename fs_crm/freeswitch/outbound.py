"""FreeSWITCH outbound Event Socket: the dialplan's `socket` application connects to us, one TCP
connection per call (freeswitch-esl.md sections 1.5 and 1.6).

The session is pre-authenticated: FreeSWITCH sends nothing and waits for `connect`, whose reply is
a command/reply carrying the channel's CHANNEL_DATA headers, URL-encoded and without a
Content-Length. After that the connection speaks ordinary ESL: `myevents`, `linger`, and `sendmsg`
with `call-command: execute`, which in async mode queues the application and answers +OK at once.
Queued is not "in order, each after the last": FreeSWITCH runs the next queued message as soon
as the running application looks at its queue (a bridge does, while the phone rings), so a
`transfer` queued behind a `bridge` runs inside it and cancels the call to the phone. Only
`event-lock: true` on the running application makes the queue wait until it completes
(switch_core_session_dequeue_private_event refuses while CF_EVENT_LOCK is set); `execute`
sends it on every application.

The connection is the session core (fs_crm.freeswitch.eslsession) in the outbound role, as on the inbound
side: every command has a deadline, sends are serialised, a caller that gives up leaves its late
reply to be dropped, and a closed socket or FreeSWITCH's disconnect notice fails every waiting
command at once with `SessionGone`.

Two FreeSWITCH behaviours shape `OutboundServer` (mod_event_socket.c, socket_function and
listener_run):
- In async mode the channel spins until the app sends `connect`; an app that accepts and then
  hangs up without it leaves the caller in silence until they give up. So every accepted
  connection is answered with `connect`, even when over capacity, and is then either handed to the
  handler or released to the dialplan at once.
- When the app closes first, FreeSWITCH clears the channel's "controlled" flag and the parked call
  runs whatever was queued; `resume` beforehand makes the call continue in the dialplan after the
  `socket` action. Closing before FreeSWITCH has parked the call races with the park unless
  `resume` was sent, so a session that has queued a decision is held until FreeSWITCH closes it
  (the call hung up and the linger time passed); one that has not is released with `resume`.
"""

from __future__ import annotations

import logging
import re
import socket
from typing import Callable
from urllib.parse import unquote

import gevent
import gevent.event
import gevent.pool
import gevent.server

from fs_crm import vocab
from fs_crm.config import RoutingConfig
from fs_crm.freeswitch.eslparse import Event, EventParseError, Frame, parse_event_plain
from fs_crm.freeswitch.eslsession import EslCommandError, EslError, EslSession, EslTimeout, EslUnavailable
from fs_crm.polling import wait_for

logger = logging.getLogger(__name__)

# A routed call holds its session until FreeSWITCH closes it; with linger that is a few seconds
# after the hangup. This bounds the calls being routed or in progress at once, not the rate.
DEFAULT_MAX_SESSIONS = 1000
DEFAULT_COMMAND_TIMEOUT = 5.0
# Releasing a session (resume, then close) must not hang a shutdown on a silent FreeSWITCH.
RELEASE_TIMEOUT = 1.0
# The events after which the channel is gone (with linger, FreeSWITCH keeps the socket a while).
HANGUP_EVENTS = frozenset({vocab.CHANNEL_HANGUP, vocab.CHANNEL_HANGUP_COMPLETE, vocab.CHANNEL_DESTROY})

# ESL names only the outbound side reads (candidates for fs_crm.vocab).
H_REPLY_TEXT = "Reply-Text"
H_CONTENT_DISPOSITION = "Content-Disposition"  # disconnect notice: "linger" or "disconnect"
H_CHANNEL_UNIQUE_ID = "Channel-Unique-ID"

_APP_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_SAFE_ID = re.compile(r"[0-9A-Za-z-]{1,64}")


class OutboundError(EslError):
    """Base of the outbound socket's domain errors."""


class SessionGone(OutboundError, EslUnavailable):
    """FreeSWITCH ended the session (the caller hung up, FreeSWITCH closed, the socket broke)."""


class SessionTimeout(OutboundError, EslTimeout):
    """A command got no reply in time; the session stays up and the late reply is dropped."""


class SessionCommandError(OutboundError, EslCommandError):
    """FreeSWITCH answered a command with -ERR."""


class OutboundSession(EslSession):
    """One call handed to us by `socket host:port async full`."""

    Unavailable = SessionGone
    TimedOut = SessionTimeout
    Refused = SessionCommandError

    def __init__(self, sock: socket.socket, address: tuple | str = "", *,
                 command_timeout: float = DEFAULT_COMMAND_TIMEOUT):
        super().__init__(sock, command_timeout=command_timeout)
        self.address = address
        # Filled by connect(): the CHANNEL_DATA headers, each value URL-decoded on its own.
        self.channel: dict[str, str] = {}
        self.uuid: str | None = None
        self.connected = False
        self._connect_sent = False
        # Set by the app once FreeSWITCH has been told what to do with the call (queued apps):
        # closing the session then leaves the call to those apps rather than to the dialplan.
        self.decided = False
        self.hung_up = gevent.event.Event()   # the channel is down (event or disconnect notice)
        self.events_received = 0
        self._waiters: list[tuple[Callable[[Event], bool], gevent.event.AsyncResult]] = []

    @property
    def label(self) -> str:
        """The call UUID for log lines (or where the connection came from, before `connect`)."""
        if self.uuid:
            return self.uuid if _SAFE_ID.fullmatch(self.uuid) else "(unreadable uuid)"
        return "(not connected yet, from %s)" % (self.address,)

    @property
    def log_name(self) -> str:
        return "call %s" % self.label

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self, name: str = "outbound-reader") -> None:
        """Start the reader greenlet; commands can be sent from then on."""
        super().start(name)

    def release(self, resume: bool, reason: str = "released by fs-crm") -> None:
        """End our part: with `resume` the call continues in the dialplan after the `socket` action.

        A session that never got `connect` gets it first: FreeSWITCH keeps an async session's
        channel waiting for it (and the caller in silence) otherwise.
        """
        if self.answering:
            try:
                if not self._connect_sent:
                    self.connect(timeout=RELEASE_TIMEOUT)
                if resume and not self.hung_up.is_set():
                    self.command("resume", timeout=RELEASE_TIMEOUT)
            except OutboundError as exc:
                logger.debug("call %s: could not release cleanly: %s", self.label, exc)
        self.close(reason)

    def wait_closed(self, timeout: float | None = None) -> bool:
        return self.closed.wait(timeout)

    # --- commands -----------------------------------------------------------------------------
    def connect(self, timeout: float | None = None) -> dict[str, str]:
        """Send `connect`; returns the channel data (header name -> decoded value)."""
        self._connect_sent = True
        frame = self.send("connect", timeout)
        # Values are URL-encoded like an event's (the reply *is* a serialized CHANNEL_DATA event);
        # decode each on its own, never the block (an encoded newline must stay inside its value).
        self.channel = {name: unquote(value, errors="replace") for name, value in frame.headers.items()}
        self.uuid = self.channel.get(vocab.H_UNIQUE_ID) or self.channel.get(H_CHANNEL_UNIQUE_ID)
        self.connected = True
        if not self.channel.get(H_REPLY_TEXT, "").startswith("+OK"):
            raise SessionCommandError("connect: %r" % self.channel.get(H_REPLY_TEXT, "no Reply-Text")[:80])
        return self.channel

    def execute(self, app: str, arg: str = "", timeout: float | None = None, *, event_lock: bool = True) -> str:
        """Queue a dialplan application on the call (acknowledged at once in async mode).

        With `event_lock` (the default) the message carries `event-lock: true`: nothing queued
        after this application runs before it has completed. Without it FreeSWITCH may run the
        next queued application while this one is still going, inside it: a fallback `transfer`
        behind a `bridge` then cancels the bridge about 20 ms after the phone's INVITE. Only an
        application meant to cut the running one short should go without it.
        """
        if not _APP_NAME.fullmatch(app):
            raise ValueError("refusing application name %r" % app)
        if "\n" in arg or "\r" in arg:
            # A newline would end the header early and let the rest be read as more headers.
            raise ValueError("refusing an application argument with a line break")
        lines = ["sendmsg", "call-command: execute", "execute-app-name: %s" % app]
        if arg:
            lines.append("execute-app-arg: %s" % arg)
        if event_lock:
            # Header names as switch_ivr_parse_event() looks them up; it reads the value with switch_true().
            lines.append("event-lock: true")
        return self.command("\n".join(lines), timeout)

    def myevents(self, timeout: float | None = None) -> str:
        return self.command("myevents plain", timeout)

    def linger(self, seconds: int, timeout: float | None = None) -> str:
        """Keep the socket open `seconds` after the hangup (without a number: until we close)."""
        return self.command("linger %d" % int(seconds), timeout)

    def resume(self, timeout: float | None = None) -> str:
        return self.command("resume", timeout)

    # --- events -------------------------------------------------------------------------------
    def wait_for_event(self, predicate: Callable[[Event], bool], timeout: float | None = None) -> Event | None:
        """The next event of this call that `predicate` accepts; None on timeout or when closed."""
        if self.closed.is_set():
            return None
        waiter = gevent.event.AsyncResult()
        entry = (predicate, waiter)
        self._waiters.append(entry)
        try:
            return waiter.get(timeout=timeout)
        except gevent.Timeout:
            return None
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    # --- the core's hooks ---------------------------------------------------------------------
    def _on_close(self) -> None:
        waiters, self._waiters = self._waiters, []
        for _, waiter in waiters:
            waiter.set(None)

    def _on_frame(self, frame: Frame) -> None:
        content_type = frame.content_type
        if content_type == vocab.EVENT_PLAIN:
            try:
                event = parse_event_plain(frame.body)
            except EventParseError as exc:
                logger.warning("call %s: skipping a malformed event: %s", self.label, exc)
                return
            self._on_event(event)
        elif content_type == vocab.DISCONNECT_NOTICE:
            self.hung_up.set()
            disposition = frame.headers.get(H_CONTENT_DISPOSITION, "")
            if disposition == "linger":
                # The channel hung up; FreeSWITCH keeps the socket for the remaining events and
                # still answers commands until the linger time is over.
                logger.debug("call %s: channel hung up, FreeSWITCH lingers %s s", self.label,
                             frame.headers.get("Linger-Time", "?"))
            else:
                # The goodbye: FreeSWITCH closes right after it and answers nothing more.
                self.refuse_commands("FreeSWITCH said goodbye")
                logger.debug("call %s: FreeSWITCH ended the session", self.label)
        elif content_type != vocab.LOG_DATA:
            logger.warning("call %s: ignoring an ESL frame of unknown type %r", self.label, content_type)

    def _on_event(self, event: Event) -> None:
        self.events_received += 1
        if event.name in HANGUP_EVENTS:
            self.hung_up.set()
        for entry in list(self._waiters):
            predicate, waiter = entry
            try:
                wanted = predicate(event)
            except Exception:
                logger.exception("call %s: event predicate failed on %s", self.label, event.name)
                wanted = False
            if wanted:
                self._waiters.remove(entry)
                waiter.set(event)


class OutboundServer:
    """Accepts FreeSWITCH's `socket` connections and runs `handler(session)` for each.

    The handler connects the session and decides; when it returns, a session whose decision is
    queued (`session.decided`) is held until FreeSWITCH closes it, any other is released to the
    dialplan with `resume`. Over `max_sessions`, new calls are released to the dialplan at once.
    """

    def __init__(self, config: RoutingConfig, handler: Callable[[OutboundSession], None], *,
                 max_sessions: int = DEFAULT_MAX_SESSIONS, command_timeout: float = DEFAULT_COMMAND_TIMEOUT):
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.config = config
        self.handler = handler
        self.max_sessions = max_sessions
        self.command_timeout = command_timeout
        self.sessions: set[OutboundSession] = set()
        self.sessions_total = 0
        self.sessions_shed = 0
        self.handler_errors = 0
        # Unbounded on purpose: a call over the cap must still get `connect` (see the module doc);
        # gevent's bounded pool would stop accepting and leave FreeSWITCH waiting instead.
        self._pool = gevent.pool.Pool()
        self._server: gevent.server.StreamServer | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("start() the server first")
        return self._server.server_port

    @property
    def active_sessions(self) -> int:
        return len(self.sessions)

    def start(self) -> None:
        self._server = gevent.server.StreamServer((self.config.listen_host, self.config.listen_port),
                                                  self._handle, spawn=self._pool)
        self._server.start()
        logger.info("routing: listening for FreeSWITCH's socket application on %s:%s",
                    self.config.listen_host, self.port)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let decisions in progress finish (up to `timeout`), then end every session:
        undecided ones continue in the dialplan, decided ones keep running their queued apps."""
        if self._server is None:
            return
        self._server.close()
        if not wait_for(self._all_decided, timeout):
            undecided = sum(1 for s in self.sessions if not (s.decided or s.closed.is_set()))
            logger.warning("routing: %d call(s) still being decided after %.1fs; handing them to the dialplan",
                           undecided, timeout)
        sessions = list(self.sessions)
        for session in sessions:
            session.release(resume=not session.decided, reason="fs-crm stopping")
        self._pool.join(timeout=2.0)
        self._pool.kill(block=True, timeout=1.0)
        self._server = None
        logger.info("routing: stopped (%d session(s) ended)", len(sessions))

    def _handle(self, sock: socket.socket, address: tuple) -> None:
        session = OutboundSession(sock, address, command_timeout=self.command_timeout)
        self.sessions.add(session)
        self.sessions_total += 1
        try:
            session.start()
            if len(self.sessions) > self.max_sessions:
                self.sessions_shed += 1
                session.release(resume=True, reason="over capacity")
                logger.warning("call %s: %d calls already in routing (max_sessions); sent to the dialplan "
                               "without asking the CRM", session.label, self.max_sessions)
                return
            self._run_handler(session)
            if session.decided:
                # FreeSWITCH closes after the hangup (plus the linger time).
                session.wait_closed()
            else:
                session.release(resume=True, reason="no decision")
        except Exception:
            logger.exception("call %s: outbound session failed", session.label)
            session.release(resume=not session.decided, reason="fs-crm error")
        finally:
            self.sessions.discard(session)
            session.close("session over")

    def _all_decided(self) -> bool:
        return all(s.decided or s.closed.is_set() for s in self.sessions)

    def _run_handler(self, session: OutboundSession) -> None:
        try:
            self.handler(session)
        except SessionGone as exc:
            logger.info("call %s: the session ended before a decision: %s", session.label, exc)
        except OutboundError as exc:
            self.handler_errors += 1
            logger.warning("call %s: outbound session failed (%s); the call continues in the dialplan",
                           session.label, exc)
        except Exception:
            self.handler_errors += 1
            logger.exception("call %s: routing handler failed; the call continues in the dialplan", session.label)


__all__ = ["OutboundServer", "OutboundSession", "OutboundError", "SessionGone", "SessionTimeout",
           "SessionCommandError"]

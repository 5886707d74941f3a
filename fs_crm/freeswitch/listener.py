"""FreeSWITCH inbound Event Socket: the event listener's connection and its supervisor.

`EslConnection` is the session core (fs_crm.freeswitch.eslsession) in the inbound role: it dials
FreeSWITCH, waits for the auth/request greeting (or the ACL's rude rejection), authenticates, and
hands every event to `on_event` in the reader greenlet, in wire order. The handler must be pure and
quick (track, then enqueue); anything slow belongs to the senders. The command client
(fs_crm.freeswitch.commands) uses the same class with no event handler.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from typing import Callable

import gevent
import gevent.event

from fs_crm import vocab
from fs_crm.config import FreeswitchConfig
from fs_crm.freeswitch.eslparse import Event, EventParseError, Frame, parse_event
from fs_crm.freeswitch.eslsession import EslAuthError, EslError, EslSession, EslUnavailable
from fs_crm.outages import Outage

logger = logging.getLogger(__name__)


class EslConnection(EslSession):
    def __init__(self, config: FreeswitchConfig, on_event: Callable[[Event], None],
                 on_read_done: Callable[[], None] | None = None):
        super().__init__(command_timeout=config.command_timeout)
        self.config = config
        self._on_event = on_event
        # Called after the events of one socket read were handled, so the handler can batch its
        # disk writes (one commit per read rather than per call).
        self._on_read_done = on_read_done
        self._greeted = gevent.event.Event()  # auth/request, rude rejection, or the socket closed
        self._rejected = False
        self.events_received = 0

    @property
    def log_name(self) -> str:
        return "FreeSWITCH %s:%s" % (self.config.host, self.config.port)

    @property
    def connected(self) -> bool:
        return self.answering

    # --- lifecycle ------------------------------------------------------------------------
    def connect(self) -> None:
        """Dial, wait for the greeting, authenticate. On any failure, and when interrupted (the
        caller's gevent.Timeout, a kill), the socket is closed and the reader ends: a new
        EslConnection is needed for the next attempt."""
        address = "%s:%s" % (self.config.host, self.config.port)
        timeout = self.config.connect_timeout
        try:
            sock = socket.create_connection((self.config.host, self.config.port), timeout=timeout)
        except OSError as exc:
            self.close("cannot connect")
            raise EslUnavailable("cannot connect to FreeSWITCH at %s: %s" % (address, exc)) from None
        except BaseException:
            self.close("connect interrupted")  # create_connection closed its socket already
            raise
        self.sock = sock
        try:
            sock.settimeout(None)
            self.start("esl-reader")
            if not self._greeted.wait(timeout=timeout) or self.closed.is_set():
                self.close("no auth/request greeting")
                raise EslUnavailable("FreeSWITCH at %s sent no auth/request within %ss" % (address, timeout))
            if self._rejected:
                self.close("rude rejection")
                raise EslAuthError("FreeSWITCH at %s rejected this host (event_socket ACL)" % address)
            reply = self.send("auth %s" % self.config.password)
            if reply.headers.get("Reply-Text", "").strip() != "+OK accepted":
                self.close("authentication failed")
                raise EslAuthError("FreeSWITCH at %s refused the event socket password" % address)
        except BaseException:
            self.close("connect did not finish")
            raise

    def stop(self) -> None:
        """Say goodbye politely if we can, then close."""
        if self.connected:
            try:
                self.send("exit", timeout=1.0)
            except EslError:
                pass
        self.close("stopped")

    # --- the core's hooks -------------------------------------------------------------------
    def _on_frame(self, frame: Frame) -> None:
        content_type = frame.content_type
        if content_type in (vocab.EVENT_PLAIN, vocab.EVENT_JSON):
            try:
                event = parse_event(frame)
            except EventParseError as exc:
                logger.warning("skipping a malformed ESL event: %s", exc)
                return
            self.events_received += 1
            try:
                self._on_event(event)
            except Exception:
                # One event we cannot handle must not stop the rest; the traceback says which.
                logger.exception("event handler failed on %s %s", event.name, event.get(vocab.H_UNIQUE_ID))
        elif content_type == vocab.AUTH_REQUEST:
            self._greeted.set()
        elif content_type == vocab.RUDE_REJECTION:
            self._rejected = True
            self._greeted.set()
        elif content_type == vocab.DISCONNECT_NOTICE:
            logger.info("FreeSWITCH sent a disconnect notice: %s", frame.body.decode("utf-8", "replace").strip())
        elif content_type != vocab.LOG_DATA:
            logger.warning("ignoring an ESL frame of unknown type %r", content_type)

    def _after_read(self) -> None:
        if self._on_read_done is not None:
            self._on_read_done()

    def _on_close(self) -> None:
        self._greeted.set()


class EslListener:
    """One supervisor loop owns the event connection: connect, authenticate, subscribe, let the
    reader run, and on any failure back off (capped, with jitter) and start again."""

    # A connection that lived this long was healthy: the next failure starts from the short delay.
    HEALTHY_AFTER = 10.0

    def __init__(self, config: FreeswitchConfig, on_event: Callable[[Event], None],
                 on_connected: Callable[[EslConnection], None], *, rng: Callable[[], float] = random.random,
                 on_read_done: Callable[[], None] | None = None, clock: Callable[[], float] = time.time,
                 custom_events: tuple[str, ...] = vocab.SUBSCRIBED_CUSTOM):
        self.config = config
        # CUSTOM subclasses subscribed besides the channel events (optional features).
        self.custom_events = custom_events
        self.on_event = on_event
        self.on_read_done = on_read_done
        self.on_connected = on_connected
        self.rng = rng
        self.connection: EslConnection | None = None
        self.connects = 0  # successful connections
        self.attempts = 0  # connection attempts, successful or not
        self.last_error: str | None = None
        self.clock = clock
        # When the last connection broke (clock time): calls it carried were alive until then.
        self.lost_at: float | None = None
        self._stopping = gevent.event.Event()
        self._outage = Outage(logger, "FreeSWITCH at %s:%s" % (config.host, config.port),
                              "no call events meanwhile; reconnecting with backoff")

    @property
    def connected(self) -> bool:
        return self.connection is not None and self.connection.connected

    def run(self) -> None:
        delay = self.config.reconnect_min_delay
        address = "%s:%s" % (self.config.host, self.config.port)
        while not self._stopping.is_set():
            conn = EslConnection(self.config, self.on_event, self.on_read_done)
            started = time.monotonic()
            self.attempts += 1
            try:
                conn.connect()
                conn.command(vocab.subscribe_command(self.custom_events))
                self.connection = conn
                self.connects += 1
                self._outage.recovered()
                logger.info("connected to FreeSWITCH at %s (connection %d)", address, self.connects)
                self.on_connected(conn)
                self.last_error = None
                conn.closed.wait()
                self.lost_at = self.clock()
                self.last_error = conn.close_reason
                if not self._stopping.is_set():
                    self._outage.failed("lost: %s" % conn.close_reason)
            except EslAuthError as exc:
                self.last_error = str(exc)
                logger.error("%s; retrying", exc)
            except EslError as exc:
                self.last_error = str(exc)
                self._outage.failed(str(exc))
            finally:
                self.connection = None
                conn.close("supervisor restarting the connection")
            if self._stopping.is_set():
                break
            if time.monotonic() - started > self.HEALTHY_AFTER:
                delay = self.config.reconnect_min_delay
            wait = delay * (0.5 + self.rng())
            logger.debug("reconnecting to FreeSWITCH in %.1fs", wait)
            if self._stopping.wait(timeout=wait):
                break
            delay = min(delay * 2, self.config.reconnect_max_delay)

    def stop(self) -> None:
        self._stopping.set()
        conn = self.connection
        if conn is not None:
            conn.stop()

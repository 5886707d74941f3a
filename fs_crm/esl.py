"""FreeSWITCH inbound Event Socket: the only importer of greenswitch.

greenswitch's InboundESL gives the shape (an auth handshake, a reply FIFO, a reader greenlet), but
its stock reader has traps we cannot live with in a daemon (see freeswitch-esl.md section 7.2):
it spins forever when the socket closes mid-body, URL-decodes a whole event before splitting it,
never releases pending `send()` calls on EOF, waits for replies without a timeout, and writes with
`send` instead of `sendall` without a lock. `EslConnection` keeps the class and replaces those
parts: frames come from our own incremental parser (fs_crm.eslparse), every command has a
deadline, sends are serialised, and a closed socket fails every waiter at once.

Events are handed to `on_event` in the reader greenlet, in wire order. The handler must be pure
and quick (track, then enqueue); anything slow belongs to the senders.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from typing import Callable

import gevent
import gevent.event
import gevent.lock
from greenswitch.esl import InboundESL

from fs_crm import vocab
from fs_crm.config import FreeswitchConfig
from fs_crm.eslparse import Event, EventParseError, Frame, FrameError, FrameReader, parse_event

logger = logging.getLogger(__name__)

RECV_BYTES = 256 * 1024


class EslError(Exception):
    """Base of the ESL adapter's domain errors."""


class EslUnavailable(EslError):
    """FreeSWITCH cannot be reached, or the connection broke."""


class EslAuthError(EslError):
    """FreeSWITCH refused us (wrong password, ACL rude-rejection)."""


class EslTimeout(EslError):
    """A command got no reply in time; the connection is dropped because later replies would mismatch."""


class EslCommandError(EslError):
    """FreeSWITCH answered a command with -ERR."""


class EslConnection(InboundESL):
    def __init__(self, config: FreeswitchConfig, on_event: Callable[[Event], None],
                 on_read_done: Callable[[], None] | None = None):
        super().__init__(config.host, config.port, config.password, timeout=config.connect_timeout)
        self.config = config
        self._on_event = on_event
        # Called after the events of one socket read were handled, so the handler can batch its
        # disk writes (one commit per read rather than per call).
        self._on_read_done = on_read_done
        self._reader = FrameReader()
        self._send_lock = gevent.lock.Semaphore()
        self._rejected = False
        self.closed = gevent.event.Event()
        self.close_reason = ""
        self.events_received = 0

    # --- lifecycle ------------------------------------------------------------------------
    def connect(self) -> None:
        address = "%s:%s" % (self.host, self.port)
        try:
            self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise EslUnavailable("cannot connect to FreeSWITCH at %s: %s" % (address, exc)) from None
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.connected = True
        self._receive_events_greenlet = gevent.spawn(self.receive_events)
        if not self._auth_request_event.wait(timeout=self.timeout) or not self.connected:
            self.close("no auth/request greeting")
            raise EslUnavailable("FreeSWITCH at %s sent no auth/request within %ss" % (address, self.timeout))
        if self._rejected:
            self.close("rude rejection")
            raise EslAuthError("FreeSWITCH at %s rejected this host (event_socket ACL)" % address)
        reply = self.send("auth %s" % self.password)
        if reply.headers.get("Reply-Text", "").strip() != "+OK accepted":
            self.close("authentication failed")
            raise EslAuthError("FreeSWITCH at %s refused the event socket password" % address)

    def close(self, reason: str = "closed by us") -> None:
        if self.closed.is_set():
            return
        self.connected = False
        self.close_reason = reason
        sock = getattr(self, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        waiting, self._commands_sent = self._commands_sent, []
        for pending in waiting:
            pending.set_exception(EslUnavailable("connection closed (%s)" % reason))
        self._auth_request_event.set()
        self.closed.set()

    def stop(self) -> None:
        """Say goodbye politely if we can, then close."""
        if self.connected:
            try:
                self.send("exit", timeout=1.0)
            except EslError:
                pass
        self.close("stopped")

    # --- reading ----------------------------------------------------------------------------
    def receive_events(self) -> None:
        reason = "FreeSWITCH closed the connection"
        try:
            while True:
                data = self.sock.recv(RECV_BYTES)
                if not data:
                    if self._reader.buffered:
                        reason = "FreeSWITCH closed the connection mid-frame (%d bytes unparsed)" % self._reader.buffered
                    break
                for frame in self._reader.feed(data):
                    self._dispatch(frame)
                if self._on_read_done is not None:
                    self._on_read_done()
        except FrameError as exc:
            reason = "unreadable ESL stream: %s" % exc
            logger.error("dropping the ESL connection: %s", reason)
        except OSError as exc:
            reason = "socket error: %s" % exc
        finally:
            self.close(reason)

    def _dispatch(self, frame: Frame) -> None:
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
        elif content_type in (vocab.COMMAND_REPLY, vocab.API_RESPONSE):
            if self._commands_sent:
                self._commands_sent.pop(0).set(frame)
            else:
                logger.warning("ESL reply with no command waiting for it: %r", frame)
        elif content_type == vocab.AUTH_REQUEST:
            self._auth_request_event.set()
        elif content_type == vocab.RUDE_REJECTION:
            self._rejected = True
            self._auth_request_event.set()
        elif content_type == vocab.DISCONNECT_NOTICE:
            logger.info("FreeSWITCH sent a disconnect notice: %s", frame.body.decode("utf-8", "replace").strip())
        elif content_type != vocab.LOG_DATA:
            logger.warning("ignoring an ESL frame of unknown type %r", content_type)

    # --- commands -------------------------------------------------------------------------
    def send(self, data: str, timeout: float | None = None) -> Frame:
        """Send one command (first line plus optional header lines) and wait for its reply."""
        if "\n\n" in data or "\r" in data or not data.strip():
            # A blank line would end the command early and let the rest run as a second command.
            raise ValueError("refusing to send a malformed ESL command")
        timeout = self.config.command_timeout if timeout is None else timeout
        pending = gevent.event.AsyncResult()
        with self._send_lock:
            if not self.connected:
                raise EslUnavailable("not connected to FreeSWITCH")
            self._commands_sent.append(pending)
            try:
                self.sock.sendall((data + "\n\n").encode("utf-8"))
            except OSError as exc:
                self.close("write failed: %s" % exc)
                raise EslUnavailable("write to FreeSWITCH failed: %s" % exc) from None
        try:
            return pending.get(timeout=timeout)
        except gevent.Timeout:
            command = data.split(" ", 1)[0]
            self.close("no reply to %r within %ss" % (command, timeout))
            raise EslTimeout("FreeSWITCH did not answer %r within %ss" % (command, timeout)) from None

    def command(self, data: str, timeout: float | None = None) -> str:
        reply = self.send(data, timeout).headers.get("Reply-Text", "")
        if reply.startswith("-ERR"):
            raise EslCommandError("%s: %s" % (data.split(" ", 1)[0], reply))
        return reply

    def api(self, command: str, timeout: float | None = None) -> str:
        frame = self.send("api %s" % command, timeout)
        body = frame.body.decode("utf-8", "replace")
        if body.startswith("-ERR") or body.startswith("-USAGE"):
            raise EslCommandError("api %s: %s" % (command.split(" ", 1)[0], body.strip()))
        return body


class EslListener:
    """One supervisor loop owns the event connection: connect, authenticate, subscribe, let the
    reader run, and on any failure back off (capped, with jitter) and start again."""

    # A connection that lived this long was healthy: the next failure starts from the short delay.
    HEALTHY_AFTER = 10.0

    def __init__(self, config: FreeswitchConfig, on_event: Callable[[Event], None],
                 on_connected: Callable[[EslConnection], None], *, rng: Callable[[], float] = random.random,
                 on_read_done: Callable[[], None] | None = None, clock: Callable[[], float] = time.time):
        self.config = config
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
                conn.command(vocab.subscribe_command())
                self.connection = conn
                self.connects += 1
                logger.info("connected to FreeSWITCH at %s (connection %d)", address, self.connects)
                self.on_connected(conn)
                self.last_error = None
                conn.closed.wait()
                self.lost_at = self.clock()
                self.last_error = conn.close_reason
                if not self._stopping.is_set():
                    logger.warning("lost FreeSWITCH at %s: %s", address, conn.close_reason)
            except EslAuthError as exc:
                self.last_error = str(exc)
                logger.error("%s; retrying", exc)
            except EslError as exc:
                self.last_error = str(exc)
                logger.warning("FreeSWITCH at %s: %s", address, exc)
            finally:
                self.connection = None
                conn.close("supervisor restarting the connection")
            if time.monotonic() - started > self.HEALTHY_AFTER:
                delay = self.config.reconnect_min_delay
            wait = delay * (0.5 + self.rng())
            logger.info("reconnecting to FreeSWITCH in %.1fs", wait)
            if self._stopping.wait(timeout=wait):
                break
            delay = min(delay * 2, self.config.reconnect_max_delay)

    def stop(self) -> None:
        self._stopping.set()
        conn = self.connection
        if conn is not None:
            conn.stop()

"""The one ESL session core: a TCP connection to FreeSWITCH that sends commands and reads frames.

Every role uses it: the inbound event listener and the command client (fs_crm.freeswitch.listener,
fs_crm.freeswitch.commands) and the outbound sessions FreeSWITCH opens for the `socket` application
(fs_crm.freeswitch.outbound). The core owns the socket, the incremental FrameReader (fs_crm.freeswitch.eslparse), one
reader greenlet (started through fs_crm.greenlets.spawn, so a crash is logged and closes the session),
a send lock, the FIFO of commands waiting for their replies, per-command deadlines, and `close()`,
which fails every waiter at once with the role's "unavailable" error. The roles add what differs:
the inbound handshake and event dispatch, the outbound `connect` and disconnect notices.

Replies are matched to commands in FIFO order: FreeSWITCH reads one command at a time and answers
each before reading the next (mes.c listener_run, parse_command). So a caller whose deadline passes
does not make the connection useless: its command is marked abandoned and stays in the FIFO, and
its late reply is consumed and dropped when it comes, so every later caller still gets its own
reply. Only when FreeSWITCH answers nothing at all for `dead_after` seconds (at least the waiting
command's own deadline) is the connection taken for dead and closed.

greenswitch (freeswitch-esl.md section 7) is not used here. Its InboundESL gave the earlier version
of fs_crm.freeswitch.listener its shape, but every part that does work is broken for a daemon: its reader spins on
a socket closed mid-body and URL-decodes an event before splitting it (7.2 #1, #4), `send()` has
no deadline, no lock and no `sendall` (7.2 #7), pending commands are never released on EOF (#6),
and `connect()` waits for the greeting without a timeout. What was left of it was its attribute
list, so the subclass is gone; greenswitch is kept only as bench/ingest.py's stock baseline.
"""

from __future__ import annotations

import collections
import logging
import socket
import time

import gevent
import gevent.event
import gevent.lock

from fs_crm import vocab
from fs_crm.freeswitch.eslparse import Frame, FrameError, FrameReader
from fs_crm.greenlets import spawn

logger = logging.getLogger(__name__)

RECV_BYTES = 256 * 1024
YIELD_SECONDS = 1e-6
# FreeSWITCH answers in order, so a connection that has answered nothing for this long while a
# command waits (or for the command's own deadline, if longer) will not answer the ones behind it.
DEAD_AFTER_FLOOR = 15.0
REPLY_TYPES = frozenset({vocab.COMMAND_REPLY, vocab.API_RESPONSE})


class EslError(Exception):
    """Base of the ESL adapter's domain errors."""


class EslUnavailable(EslError):
    """FreeSWITCH cannot be reached, or the connection broke."""


class EslAuthError(EslError):
    """FreeSWITCH refused us (wrong password, ACL rude-rejection)."""


class EslTimeout(EslError):
    """A command got no reply in time. The connection stays up; the late reply is dropped."""


class EslCommandError(EslError):
    """FreeSWITCH answered a command with -ERR."""


def tune_socket(sock: socket.socket) -> None:
    # Commands are small and each waits for its reply: Nagle plus delayed ACKs would add ~40 ms each.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # A connection may sit idle for a whole call; keepalive finds a FreeSWITCH that vanished.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def command_name(text: str) -> str:
    """The command word of a command (first word of its first line), for messages and logs."""
    return text.split("\n", 1)[0].split(" ", 1)[0]


class _Pending:
    """One command sent and not answered yet."""

    __slots__ = ("command", "timeout", "sent_at", "abandoned", "result")

    def __init__(self, command: str, timeout: float):
        self.command = command
        self.timeout = timeout
        self.sent_at = 0.0
        self.abandoned = False  # its caller gave up: the reply is dropped when it comes
        self.result: gevent.event.AsyncResult = gevent.event.AsyncResult()


class EslSession:
    """The session core. Roles subclass it and override the hooks `_on_frame` (every frame that is
    not a reply), `_after_read` (after the frames of one socket read) and `_on_close`; they set
    `Unavailable`, `TimedOut` and `Refused` to their own subclasses of the errors above."""

    Unavailable: type[EslError] = EslUnavailable
    TimedOut: type[EslError] = EslTimeout
    Refused: type[EslError] = EslCommandError

    def __init__(self, sock: socket.socket | None = None, *, command_timeout: float,
                 dead_after: float | None = None):
        self.sock = sock
        self.command_timeout = command_timeout
        self.dead_after = max(command_timeout, DEAD_AFTER_FLOOR) if dead_after is None else dead_after
        self.closed = gevent.event.Event()
        self.close_reason = ""
        self.late_replies = 0  # replies that came after their caller had given up
        self._frames = FrameReader()
        self._send_lock = gevent.lock.Semaphore()
        self._pending: collections.deque[_Pending] = collections.deque()
        self._last_reply_at = 0.0
        self._refusing: str | None = None  # why FreeSWITCH will answer no further command
        self._reader: gevent.Greenlet | None = None
        self._watchdog: gevent.Greenlet | None = None

    @property
    def log_name(self) -> str:
        return "ESL session"

    @property
    def answering(self) -> bool:
        """Commands can be sent and may be answered."""
        return self._reader is not None and self._refusing is None and not self.closed.is_set()

    @property
    def reader(self) -> gevent.Greenlet | None:
        return self._reader

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self, name: str = "esl-reader") -> None:
        """Start the reader on `self.sock`; commands can be sent from then on."""
        if self._reader is not None:
            return
        if self.sock is None or self.closed.is_set():
            raise self.Unavailable("%s: no socket to read (%s)" % (self.log_name, self.close_reason or "not connected"))
        tune_socket(self.sock)
        self._reader = spawn(name, self._read_loop, on_crash=self._crashed)

    def close(self, reason: str = "closed by fs-crm") -> None:
        if self.closed.is_set():
            return
        self.closed.set()  # first, so nothing below runs twice and no new command goes out
        self.close_reason = reason
        self._fail_pending(self.Unavailable("connection closed (%s)" % reason))
        self._on_close()
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            # A reader blocked in recv() gets an error from gevent now and ends.
            self.sock.close()

    def refuse_commands(self, reason: str) -> None:
        """FreeSWITCH said goodbye: nothing waiting or sent from now on will be answered."""
        self._refusing = reason
        self._fail_pending(self.Unavailable("FreeSWITCH ended the session (%s)" % reason))

    # --- commands -----------------------------------------------------------------------------
    def send(self, data: str, timeout: float | None = None) -> Frame:
        """Send one command (first line plus optional header lines) and wait for its reply frame."""
        if "\n\n" in data or "\r" in data or not data.strip():
            # A blank line would end the command early and let the rest run as a second command.
            raise ValueError("refusing to send a malformed ESL command")
        pending = _Pending(command_name(data), self.command_timeout if timeout is None else timeout)
        with self._send_lock:
            if not self.answering:
                raise self.Unavailable("not connected to FreeSWITCH (%s)"
                                       % (self._refusing or self.close_reason or "not connected yet"))
            pending.sent_at = time.monotonic()
            self._pending.append(pending)
            try:
                self.sock.sendall((data + "\n\n").encode("utf-8"))
            except OSError as exc:
                self.close("write failed: %s" % exc)
                raise self.Unavailable("write to FreeSWITCH failed: %s" % exc) from None
            except BaseException:
                # Interrupted mid-write: the next command would be glued to half of this one.
                self.close("write of %r interrupted" % pending.command)
                raise
        try:
            pending.result.wait(pending.timeout)
        except BaseException:
            # The caller's own deadline or a kill: nobody waits for this reply any more.
            self._abandon(pending)
            raise
        if not pending.result.ready():
            self._abandon(pending)
            raise self.TimedOut("FreeSWITCH did not answer %r within %ss" % (pending.command, pending.timeout))
        return pending.result.get()

    def command(self, text: str, timeout: float | None = None) -> str:
        """Reply-Text of a command; `Refused` when it starts with -ERR."""
        reply = self.send(text, timeout).headers.get("Reply-Text", "")
        if reply.startswith("-ERR"):
            raise self.Refused("%s: %s" % (command_name(text), reply))
        return reply

    def api(self, command: str, timeout: float | None = None) -> str:
        """Output of `api <command>`; `Refused` on -ERR / -USAGE."""
        body = self.send("api %s" % command, timeout).body.decode("utf-8", "replace")
        if body.startswith("-ERR") or body.startswith("-USAGE"):
            raise self.Refused("api %s: %s" % (command.split(" ", 1)[0], body.strip()))
        return body

    def _abandon(self, pending: _Pending) -> None:
        if pending.result.ready():
            return
        pending.abandoned = True
        if not self.closed.is_set() and (self._watchdog is None or self._watchdog.dead):
            self._watchdog = spawn("esl-reply-watchdog", self._watch_replies, on_crash=self._crashed)

    def _watch_replies(self) -> None:
        """While an abandoned command is outstanding, close the connection once FreeSWITCH has
        answered nothing for `dead_after` (FreeSWITCH starts on a command when it has answered the
        one before, so the oldest waits from its sending or from the last reply, whichever is later)."""
        while not self.closed.is_set() and any(p.abandoned for p in self._pending):
            oldest = self._pending[0]
            limit = max(self.dead_after, oldest.timeout)
            left = max(oldest.sent_at, self._last_reply_at) + limit - time.monotonic()
            if left <= 0:
                logger.warning("%s: no reply to %r for %.1fs; closing the connection", self.log_name,
                               oldest.command, limit)
                self.close("no reply to %r for %.1fs" % (oldest.command, limit))
                return
            self.closed.wait(left)

    def _fail_pending(self, error: EslError) -> None:
        waiting, self._pending = self._pending, collections.deque()
        for pending in waiting:
            if not pending.abandoned:
                pending.result.set_exception(error)

    # --- reading ------------------------------------------------------------------------------
    def _read_loop(self) -> None:
        reason = "FreeSWITCH closed the connection"
        try:
            while not self.closed.is_set():
                data = self.sock.recv(RECV_BYTES)
                if not data:
                    if self._frames.buffered:
                        reason = "FreeSWITCH closed the connection mid-frame (%d bytes unparsed)" % self._frames.buffered
                    break
                for frame in self._frames.feed(data):
                    if frame.content_type in REPLY_TYPES:
                        self._take_reply(frame)
                    else:
                        self._on_frame(frame)
                self._after_read()
                # A socket that always has more bytes never makes recv() wait, so the reader would
                # never give the hub a turn: cards, /healthz and the saver would starve under a flood.
                # Not sleep(0): gevent runs up to 50 queued callbacks before it polls timers and
                # sockets, so that gave the reader ~50 reads in a row (100 ms stalls in bench/stall.py);
                # a timer makes each read one pass of the loop.
                gevent.sleep(YIELD_SECONDS)
        except FrameError as exc:
            reason = "unreadable ESL stream: %s" % exc
            logger.error("%s: dropping the connection: %s", self.log_name, reason)
        except OSError as exc:
            reason = "socket error: %s" % exc
        finally:
            self.close(reason)

    def _take_reply(self, frame: Frame) -> None:
        self._last_reply_at = time.monotonic()
        if not self._pending:
            logger.warning("%s: ESL reply with no command waiting for it: %r", self.log_name, frame)
            return
        pending = self._pending.popleft()
        if pending.abandoned:
            self.late_replies += 1
            logger.info("%s: late reply to %r dropped (its caller gave up after %ss)", self.log_name,
                        pending.command, pending.timeout)
        else:
            pending.result.set(frame)

    def _crashed(self, greenlet: gevent.Greenlet) -> None:
        # fs_crm.greenlets logged the traceback; the session cannot go on without its reader.
        self.close("%s crashed" % greenlet.name)

    # --- hooks for the roles ------------------------------------------------------------------
    def _on_frame(self, frame: Frame) -> None:
        """Every frame that is not a command reply (events, notices, greetings)."""

    def _after_read(self) -> None:
        """After the frames of one socket read were handled."""

    def _on_close(self) -> None:
        """After the waiters were failed, before the socket closes."""

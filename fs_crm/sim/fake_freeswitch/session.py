"""One ESL socket of the fake FreeSWITCH, as mes.c's listener_t sees it: the per-socket event queue
and its writer, the send lock, reading commands, closing with or without a notice, and which events
a subscription wants. Inbound clients and outbound calls are both one of these."""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

import gevent
import gevent.event
import gevent.lock
import gevent.queue

from fs_crm.freeswitch.eslparse import parse_content_length
from fs_crm.sim.fake_freeswitch.commands import _Commands
from fs_crm.sim.fake_freeswitch.protocol import ALL, CUSTOM, GOODBYE
from fs_crm.sim.fake_freeswitch.wire import EVENT_XML, PlainEvent, _Command, _command_reply, frame_event
from fs_crm.vocab import DISCONNECT_NOTICE, EVENT_JSON, H_UNIQUE_ID

if TYPE_CHECKING:
    from fs_crm.sim.fake_freeswitch.switch import FakeFreeswitch

logger = logging.getLogger(__name__)

# read_packet() stops collecting a command's header block at 10 MiB.
MAX_COMMAND_BYTES = 10485760

_STOP = object()
# read_packet(): CRs are ignored, so a command ends at LF, any CRs, LF.
_END_OF_COMMAND = re.compile(rb"\n\r*\n")


class _Listener(_Commands):
    """State and behaviour shared by both sides: command parsing, subscription, queued event delivery.

    The commands themselves are the _Commands mixin (commands.py). Events go through a per-socket
    queue drained by a writer greenlet, like the listener's event queue in FreeSWITCH. A command
    holds the send lock from the moment it is read until its reply is written, so (as in mes.c,
    where events are flushed only between commands) no event is written while a command runs; that
    includes `reply_delay` and an `api` handler that blocks.
    """

    def __init__(self, fake: FakeFreeswitch, sock: socket.socket, number: int, session_uuid: str | None):
        self.fake = fake
        self.number = number
        self.session_uuid = session_uuid
        self.authed = False
        self.format = "plain"
        self.events_enabled = False       # LFLAG_EVENTS
        self.event_types: set[str] = set()  # listener->event_list
        self.custom_subclasses: set[str] = set()  # listener->event_hash
        self.myevents = False             # LFLAG_MYEVENTS
        self.myevents_uuid: str | None = session_uuid
        self.filters: list[tuple[str, str]] = []
        self.logging = False
        self.lingering = False
        self.linger_time = -1
        self._sock = sock
        self._buffer = bytearray()
        self._send_lock = gevent.lock.RLock()
        self._outbox: gevent.queue.Queue = gevent.queue.Queue()
        self._closed = gevent.event.Event()
        self._closing = False
        fake._greenlets.spawn(self._write_loop)

    # -- lifecycle --

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def is_open(self) -> bool:
        return not self._closed.is_set() and not self._closing

    def wait_closed(self, timeout: float = 10.0) -> bool:
        return self._closed.wait(timeout)

    def _disconnect_notice(self, message: bytes) -> bytes:
        # send_disconnect(): a session (outbound) listener also names its channel.
        if self.session_uuid:
            return b"Content-Type: %s\nControlled-Session-UUID: %s\nContent-Disposition: disconnect\n" \
                   b"Content-Length: %d\n\n%s" % (DISCONNECT_NOTICE.encode(), self.session_uuid.encode(),
                                                  len(message), message)
        return b"Content-Type: %s\nContent-Length: %d\n\n%s" % (DISCONNECT_NOTICE.encode(), len(message), message)

    def _close(self, message: bytes | None, lock_timeout: float | None = None) -> None:
        """End the listener like listener_run()'s exit: pending events are dropped, the notice is sent."""
        if self._closed.is_set():
            return
        if not self._send_lock.acquire(timeout=lock_timeout):
            self._abort()
            return
        try:
            if not self._closed.is_set():
                if message is not None:
                    try:
                        self._sock.sendall(self._disconnect_notice(message))
                    except OSError:
                        pass
                self._abort()
        finally:
            self._send_lock.release()

    def _abort(self) -> None:
        """Close the socket at once, without a notice (a crash, or a socket that cannot be written)."""
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._outbox.put(_STOP)

    # -- writing --

    def enqueue(self, data: bytes, chunk_size: int | None = None,
                then: Callable[[], None] | None = None) -> None:
        """Queue bytes behind the events already queued; `then` runs after they are written."""
        if not self._closed.is_set():
            self._outbox.put((data, chunk_size, then))

    def _write_loop(self) -> None:
        while True:
            item = self._outbox.get()
            if item is _STOP:
                return
            data, chunk_size, then = item
            with self._send_lock:
                if self._closed.is_set():
                    continue
                try:
                    self._sendall(data, chunk_size)
                    if then is not None:
                        then()
                except OSError as exc:
                    logger.debug("fake FreeSWITCH: client %s write failed: %s", self.number, exc)
                    self._abort()
                except Exception:
                    logger.exception("fake FreeSWITCH: writer of client %s failed", self.number)
                    self._abort()

    def _sendall(self, data: bytes, chunk_size: int | None = None) -> None:
        if not chunk_size:
            if data:
                self._sock.sendall(data)
            return
        for start in range(0, len(data), chunk_size):
            self._sock.sendall(data[start:start + chunk_size])
            # Wait until the loop has nothing else to do, so an in-process reader gets this piece on its
            # own and frames really arrive split across reads.
            gevent.idle()

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            self._sendall(data)

    # -- events --

    def wants(self, event: PlainEvent) -> bool:
        """mes.c event_handler(): event list, CUSTOM subclasses, filters, then the myevents UUID check."""
        if not self.is_open or not self.authed or not self.events_enabled:
            return False
        name = event.name
        if ALL in self.event_types:
            send = True
        elif name in self.event_types:
            send = name != CUSTOM or not event.subclass or event.subclass in self.custom_subclasses
        else:
            send = False
        if send and self.filters:
            send = self._passes_filters(event)
        if send and self.myevents:
            unique_id = event.get(H_UNIQUE_ID)
            if unique_id is None or (self.myevents_uuid and unique_id != self.myevents_uuid):
                send = False
        return send

    def _passes_filters(self, event: PlainEvent) -> bool:
        # Once a filter exists, an event passes only when a positive filter matches and no negative one
        # ('-' prefix) does; a value starting with '/' is a regex, other values compare case-insensitively.
        send = False
        for header, value in self.filters:
            actual = event.get(header)
            if actual is None:
                continue
            positive = True
            compare = value
            while compare and compare[0] in "+- ":
                if compare[0] != " ":
                    positive = compare[0] == "+"
                compare = compare[1:]
            if send and positive:
                continue
            matched = _regex_match(actual, compare) if value.startswith("/") else actual.lower() == compare.lower()
            if matched:
                if not positive:
                    return False
                send = True
        return send

    def render(self, event: PlainEvent) -> bytes:
        if self.format == "json":
            return frame_event(event.to_json(), EVENT_JSON)
        if self.format == "xml":
            return frame_event(event.to_xml(), EVENT_XML)
        return frame_event(event.plain)  # the recorded bytes, untouched

    def deliver(self, event: PlainEvent, chunk_size: int | None = None) -> bool:
        if not self.wants(event):
            return False
        self.enqueue(self.render(event), chunk_size)
        return True

    # -- reading commands --

    def _recv(self) -> bytes:
        try:
            return self._sock.recv(65536)
        except OSError:
            return b""

    def _read_command(self) -> _Command | None:
        """mes.c read_packet(): leading CR/LF skipped, headers up to a blank line, then an optional body."""
        buffer = self._buffer
        while True:
            while buffer[:1] in (b"\r", b"\n"):
                del buffer[:1]
            match = _END_OF_COMMAND.search(buffer)
            if match:
                block = bytes(buffer[:match.start()])
                del buffer[:match.end()]
                break
            if len(buffer) >= MAX_COMMAND_BYTES:
                block = bytes(buffer)
                buffer.clear()
                break
            chunk = self._recv()
            if not chunk:
                return None
            buffer += chunk
        lines = block.decode("utf-8", "replace").split("\n")
        headers = []
        for line in lines[1:]:
            name, colon, value = line.rstrip("\r").partition(":")
            if colon and name:
                headers.append((name, value.lstrip(" ")))
        command = _Command(lines[0].split("\r")[0], headers)
        length_text = command.header("content-length")
        # mes.c takes atoi() of the value, so FreeSWITCH would read ' 12' and '+12' as 12 and '١٢'
        # as 0 (leaving the body to be read as the next command). The fake is stricter on purpose:
        # it applies fs-crm's own rule (FrameError, which ends the listener) so a client that
        # sends such a value fails loudly in tests instead of being read differently by each side.
        length = 0 if length_text is None else parse_content_length(length_text.strip())
        if length > 0:
            while len(buffer) < length:
                chunk = self._recv()
                if not chunk:
                    return None
                buffer += chunk
            command.body = bytes(buffer[:length])
            del buffer[:length]
        return command

    def _execute(self, command: _Command, send_reply: bool = True) -> bool:
        """Run one command and write its reply; False when FreeSWITCH would now end the listener."""
        with self._send_lock:
            if self.fake.reply_delay:
                gevent.sleep(self.fake.reply_delay)
            reply, running = self._parse_command(command)
            if reply is not None and send_reply:
                self._sendall(_command_reply(reply or "-ERR command not found"))
            if not running:
                self._close(GOODBYE)
        return running

    def _command_loop(self) -> None:
        while not self._closed.is_set():
            command = self._read_command()
            if command is None:
                return
            self._record(command)
            if self.fake.mute_replies:
                continue  # recorded, never answered: lets a client's command timeout be tested
            if not self._execute(command):
                return

    def _record(self, command: _Command) -> None:
        raise NotImplementedError


def _regex_match(value: str, expression: str) -> bool:
    # switch_regex_perform() with "/pattern/flags": i = caseless, s = dotall; no closing slash = no match.
    pattern, slash, options = expression[1:].rpartition("/")
    if not slash:
        return False
    flags = (re.IGNORECASE if "i" in options else 0) | (re.DOTALL if "s" in options else 0)
    try:
        return re.search(pattern, value, flags) is not None
    except re.error:
        return False

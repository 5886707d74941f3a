"""A fake FreeSWITCH speaking the real Event Socket (ESL) wire protocol over TCP, for tests and the demo.

It owns the FreeSWITCH side of the ESL boundary: an inbound listener like mod_event_socket's
port 8021 (auth, api/bgapi, event subscriptions and filters, disconnect notices) and, on request,
outbound-socket sessions like the dialplan `socket` application. Protocol facts come from
FreeSWITCH's mod_event_socket.c ("mes.c", see docs/freeswitch-esl.md section 1) and from the real
streams in captures/pbx/; every place where the fake simplifies says so in a comment.

Events are replayed from captures: `load_capture()` gives the plain-serialized bodies exactly as
FreeSWITCH 1.11 sent them, `renumber_call()` turns one recorded call into many distinct ones, and
`FakeFreeswitch.play()` delivers them to every client whose subscription wants them.
"""

from __future__ import annotations

import email.utils
import itertools
import json
import logging
import re
import socket
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gevent
import gevent.event
import gevent.lock
import gevent.pool
import gevent.queue
import gevent.server
import gevent.socket

from fs_crm.freeswitch.eslparse import FrameError, parse_content_length
from fs_crm.sim import wait_for
from fs_crm.vocab import (
    API_RESPONSE,
    AUTH_REQUEST,
    BACKGROUND_JOB,
    CHANNEL_CREATE,
    CHANNEL_DESTROY,
    COMMAND_REPLY,
    DISCONNECT_NOTICE,
    EVENT_JSON,
    EVENT_PLAIN,
    H_EVENT_NAME,
    H_EVENT_SUBCLASS,
    H_EVENT_TIMESTAMP,
    H_JOB_UUID,
    H_UNIQUE_ID,
    RUDE_REJECTION,
)

logger = logging.getLogger(__name__)

__all__ = [
    "FakeFreeswitch",
    "OutboundCall",
    "PlainEvent",
    "SessionApp",
    "capture_path",
    "frame_event",
    "load_capture",
    "load_connect_reply",
    "renumber_call",
    "serialize_event",
    "url_decode",
    "url_encode",
]

CAPTURES_DIR = Path(__file__).resolve().parent / "captures"

# send_disconnect() messages (mes.c): the normal goodbye, and kill_all_listeners() at shutdown.
GOODBYE = b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
SHUTDOWN_MESSAGE = b"The system is being shut down.\n"
# listener_run() answers a client refused by apply-inbound-acl with this exact frame, then says goodbye.
RUDE_MESSAGE = b"Access Denied, go away.\n"
# An outbound session waits this long for the app's first command (read_packet(listener, &ievent, 25)).
FIRST_COMMAND_TIMEOUT = 25.0
# read_packet() stops collecting a command's header block at 10 MiB.
MAX_COMMAND_BYTES = 10485760

# Applications that keep the channel until something ends them: the test (OutboundCall.finish_app),
# a hangup, or a sendmsg sent without event-lock. Every other application completes as it starts.
LONG_APPS = frozenset({"bridge", "playback", "endless_playback", "sleep", "park", "echo", "conference", "fifo",
                       "callcenter", "voicemail", "read", "play_and_get_digits", "record", "gentones", "ivr"})
# How an application on an outbound session ended (SessionApp.ended).
APP_DONE = "done"
APP_INTERRUPTED = "interrupted"
APP_HANGUP = "hangup"

EVENT_XML = "text/event-xml"  # FreeSWITCH sends it; fs-crm never subscribes to it, so vocab.py has no name for it
_CONTENT_TYPE_BY_FORMAT = {"plain": EVENT_PLAIN, "json": EVENT_JSON, "xml": EVENT_XML}

# EVENT_NAMES from switch_event.c / libs/esl: `event` and `nixevent` silently skip any other word.
EVENT_NAMES = frozenset("""
    CUSTOM CLONE CHANNEL_CREATE CHANNEL_DESTROY CHANNEL_STATE CHANNEL_CALLSTATE CHANNEL_ANSWER
    CHANNEL_HANGUP CHANNEL_HANGUP_COMPLETE CHANNEL_EXECUTE CHANNEL_EXECUTE_COMPLETE CHANNEL_HOLD
    CHANNEL_UNHOLD CHANNEL_BRIDGE CHANNEL_UNBRIDGE CHANNEL_PROGRESS CHANNEL_PROGRESS_MEDIA
    CHANNEL_OUTGOING CHANNEL_PARK CHANNEL_UNPARK CHANNEL_APPLICATION CHANNEL_ORIGINATE CHANNEL_UUID
    API LOG INBOUND_CHAN OUTBOUND_CHAN STARTUP SHUTDOWN PUBLISH UNPUBLISH TALK NOTALK SESSION_CRASH
    MODULE_LOAD MODULE_UNLOAD DTMF MESSAGE PRESENCE_IN NOTIFY_IN PRESENCE_OUT PRESENCE_PROBE
    MESSAGE_WAITING MESSAGE_QUERY ROSTER CODEC BACKGROUND_JOB DETECTED_SPEECH DETECTED_TONE
    PRIVATE_COMMAND HEARTBEAT TRAP ADD_SCHEDULE DEL_SCHEDULE EXE_SCHEDULE RE_SCHEDULE RELOADXML NOTIFY
    PHONE_FEATURE PHONE_FEATURE_SUBSCRIBE SEND_MESSAGE RECV_MESSAGE REQUEST_PARAMS CHANNEL_DATA GENERAL
    COMMAND SESSION_HEARTBEAT CLIENT_DISCONNECTED SERVER_DISCONNECTED SEND_INFO RECV_INFO
    RECV_RTCP_MESSAGE SEND_RTCP_MESSAGE CALL_SECURE NAT RECORD_START RECORD_STOP PLAYBACK_START
    PLAYBACK_STOP CALL_UPDATE FAILURE SOCKET_DATA MEDIA_BUG_START MEDIA_BUG_STOP CONFERENCE_DATA_QUERY
    CONFERENCE_DATA CALL_SETUP_REQ CALL_SETUP_RESULT CALL_DETAIL DEVICE_STATE TEXT SHUTDOWN_REQUESTED ALL
""".split())
ALL = "ALL"
CUSTOM = "CUSTOM"

# What `myevents` turns on (mes.c parse_command): the session's own channel events only.
MYEVENTS = frozenset("""
    CHANNEL_ANSWER CHANNEL_APPLICATION CHANNEL_BRIDGE CHANNEL_CREATE CHANNEL_DATA CHANNEL_DESTROY
    CHANNEL_EXECUTE CHANNEL_EXECUTE_COMPLETE CHANNEL_HANGUP CHANNEL_HANGUP_COMPLETE CHANNEL_ORIGINATE
    CHANNEL_UUID CHANNEL_OUTGOING CHANNEL_PARK CHANNEL_PROGRESS CHANNEL_PROGRESS_MEDIA CHANNEL_STATE
    CHANNEL_UNBRIDGE CHANNEL_UNPARK DETECTED_SPEECH DTMF NOTALK TALK
""".split())

# switch_log_str2level(), for the `log` command.
_LOG_LEVELS = {"console": 0, "alert": 1, "crit": 2, "err": 3, "error": 3, "warning": 4, "notice": 5,
               "info": 6, "debug": 7}

# Columns of `show channels` (the `channels` table of switch_core_sqldb.c, in select * order).
CHANNEL_COLUMNS = (
    "uuid", "direction", "created", "created_epoch", "name", "state", "cid_name", "cid_num", "ip_addr",
    "dest", "application", "application_data", "dialplan", "context", "read_codec", "read_rate",
    "read_bit_rate", "write_codec", "write_rate", "write_bit_rate", "secure", "hostname", "presence_id",
    "presence_data", "accountcode", "callstate", "callee_name", "callee_num", "callee_direction",
    "call_uuid", "sent_callee_name", "sent_callee_num", "initial_cid_name", "initial_cid_num",
    "initial_ip_addr", "initial_dest", "initial_dialplan", "initial_context",
)
# Where the fake takes each column from. FreeSWITCH's SQL layer updates the row from specific events
# (CHANNEL_STATE, CALLSTATE, CODEC, EXECUTE, CALL_UPDATE...); the fake simply refreshes every column
# whose header is present in any event of that channel, which gives the same picture for our captures.
_COLUMN_SOURCES = {
    "name": "Channel-Name", "state": "Channel-State", "cid_name": "Caller-Caller-ID-Name",
    "cid_num": "Caller-Caller-ID-Number", "ip_addr": "Caller-Network-Addr",
    "dest": "Caller-Destination-Number", "application": "variable_current_application",
    "application_data": "variable_current_application_data", "dialplan": "Caller-Dialplan",
    "context": "Caller-Context", "read_codec": "Channel-Read-Codec-Name",
    "read_rate": "Channel-Read-Codec-Rate", "read_bit_rate": "Channel-Read-Codec-Bit-Rate",
    "write_codec": "Channel-Write-Codec-Name", "write_rate": "Channel-Write-Codec-Rate",
    "write_bit_rate": "Channel-Write-Codec-Bit-Rate", "hostname": "FreeSWITCH-Hostname",
    "presence_id": "variable_presence_id", "presence_data": "variable_presence_data",
    "accountcode": "variable_accountcode", "callstate": "Channel-Call-State",
    "callee_name": "Caller-Callee-ID-Name", "callee_num": "Caller-Callee-ID-Number",
    "call_uuid": "Channel-Call-UUID", "sent_callee_name": "variable_last_sent_callee_id_name",
    "sent_callee_num": "variable_last_sent_callee_id_number",
}
_INITIAL_COLUMNS = ("cid_name", "cid_num", "ip_addr", "dest", "dialplan", "context")


# --- Serialization -------------------------------------------------------------------------------

# switch_url_encode_opt(): bytes below 0x20 or above 0x7E (so every UTF-8 byte) and this set become %XX.
_URL_UNSAFE = frozenset(b"\r\n #%&+:;<=>?@[\\]^`{|}\"")
_HEX = frozenset(b"0123456789abcdefABCDEF")


def url_encode(value: str) -> str:
    """Encode a header value as FreeSWITCH's plain serializer does; an existing %XX passes through as is."""
    raw = value.encode("utf-8")
    out = []
    i = 0
    while i < len(raw):
        byte = raw[i]
        if byte == 0x25 and i + 2 < len(raw) and raw[i + 1] in _HEX and raw[i + 2] in _HEX:
            out.append("%")  # not double-encoded: FreeSWITCH copies an existing escape unchanged
        elif byte < 0x20 or byte > 0x7E or byte in _URL_UNSAFE:
            out.append("%%%02X" % byte)
        else:
            out.append(chr(byte))
        i += 1
    return "".join(out)


def url_decode(value: str) -> str:
    # switch_url_decode(): only %XX, never '+' (so not unquote_plus); applied per value, never per block.
    return urllib.parse.unquote(value, errors="replace")


def frame_event(body: bytes, content_type: str = EVENT_PLAIN) -> bytes:
    """Outer framing of an event, byte for byte as mes.c read_packet() writes it."""
    return b"Content-Length: %d\nContent-Type: %s\n\n" % (len(body), content_type.encode()) + body


def _command_reply(reply: str) -> bytes:
    """listener_run(): a reply starting with '~' is raw headers; anything else becomes Reply-Text."""
    if reply.startswith("~"):
        return ("Content-Type: %s\n%s" % (COMMAND_REPLY, reply[1:])).encode()
    return ("Content-Type: %s\nReply-Text: %s\n\n" % (COMMAND_REPLY, reply)).encode()


@dataclass(frozen=True)
class PlainEvent:
    """The fake's reading of one plain-serialized event: the exact bytes, plus decoded headers and body.

    Only what the fake needs to route and convert events; fs-crm's own parser lives in its ESL adapter.
    """

    plain: bytes
    headers: tuple[tuple[str, str], ...]
    body: bytes | None

    @classmethod
    def parse(cls, plain: bytes) -> PlainEvent:
        head, separator, rest = plain.partition(b"\n\n")
        headers = []
        for line in head.split(b"\n"):
            name, colon, value = line.decode("utf-8", "replace").partition(": ")
            if colon:
                headers.append((name, url_decode(value)))
        body = None
        # The serializer appends a body as an inner "Content-Length: N" + blank line + N bytes.
        if separator and headers and headers[-1][0].lower() == "content-length":
            try:
                length = parse_content_length(headers[-1][1])
            except FrameError:
                length = None  # not a body marker after all: the header stays an ordinary header
            if length is not None:
                headers.pop()
                body = rest[:length]
        return cls(plain, tuple(headers), body)

    def get(self, name: str) -> str | None:
        # switch_event_get_header() is case-insensitive and returns the first match.
        lowered = name.lower()
        for header, value in self.headers:
            if header.lower() == lowered:
                return value
        return None

    @property
    def name(self) -> str:
        return (self.get(H_EVENT_NAME) or "").upper()

    @property
    def subclass(self) -> str | None:
        return self.get(H_EVENT_SUBCLASS)

    def to_json(self) -> bytes:
        """switch_event_serialize_json(): compact, decoded values, repeated headers stay repeated keys."""
        def dump(value: object) -> str:
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

        members = []
        for name, value in self.headers:
            # An array header is serialized in plain form as ARRAY::a|:b and in JSON as a list.
            decoded: object = value[7:].split("|:") if value.startswith("ARRAY::") else value
            members.append("%s:%s" % (dump(name), dump(decoded)))
        if self.body is not None:
            members.append('"Content-Length":%s' % dump(str(len(self.body))))
            members.append('"_body":%s' % dump(self.body.decode("utf-8", "replace")))
        return ("{%s}" % ",".join(members)).encode("utf-8")

    def to_xml(self) -> bytes:
        # Approximation of switch_event_xmlize() (not checked against a capture; fs-crm never uses xml).
        def escape(text: str) -> str:
            return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

        lines = ["<event>", "  <headers>"]
        lines += ["    <%s>%s</%s>" % (name, url_encode(value), name) for name, value in self.headers]
        lines.append("  </headers>")
        if self.body:
            lines.append("  <Content-Length>%d</Content-Length>" % len(self.body))
            lines.append("  <body>%s</body>" % escape(self.body.decode("utf-8", "replace")))
        lines.append("</event>")
        return ("\n".join(lines) + "\n").encode("utf-8")


def serialize_event(headers: Iterable[tuple[str, str]], body: str | bytes | None = None) -> bytes:
    """switch_event_serialize(encode=TRUE): `Name: urlencoded\\n` lines, then the body or one blank line."""
    text = "".join("%s: %s\n" % (name, url_encode(value)) for name, value in headers)
    data = body.encode("utf-8") if isinstance(body, str) else body
    if data:
        return text.encode("utf-8") + b"Content-Length: %d\n\n" % len(data) + data
    return text.encode("utf-8") + b"\n"


# --- Captures ------------------------------------------------------------------------------------

def _iter_frames(data: bytes) -> Iterator[tuple[list[tuple[str, str]], bytes]]:
    """Split a raw ESL stream into (headers, body) frames; the body is Content-Length bytes, if any."""
    pos = 0
    while pos < len(data):
        end = data.find(b"\n\n", pos)
        if end < 0:
            return
        headers = []
        for line in data[pos:end].decode("utf-8", "replace").split("\n"):
            name, colon, value = line.partition(": ")
            if colon:
                headers.append((name, value))
        pos = end + 2
        length_text = next((v for n, v in headers if n.lower() == "content-length"), None)
        length = 0 if length_text is None else parse_content_length(length_text)
        yield headers, data[pos:pos + length]
        pos += length


def capture_path(name: str) -> Path:
    """captures/pbx/<name>.esl.txt (or the exact file when name already ends in .txt)."""
    return CAPTURES_DIR / "pbx" / (name if name.endswith(".txt") else name + ".esl.txt")


def load_capture(path: str | Path) -> list[bytes]:
    """Event bodies (the N bytes of every text/event-plain frame) of a recorded stream, in file order."""
    frames = _iter_frames(Path(path).read_bytes())
    return [body for headers, body in frames if dict(headers).get("Content-Type") == EVENT_PLAIN]


def with_recording_mark(body: bytes) -> bytes:
    """A RECORD_STOP as fs-crm's recording snippet makes it: its channel's crm_recording_path names
    the file. The captures in captures/pbx/ were recorded with a dialplan of its own, before the
    snippet existed; fs-crm ignores recordings without the mark (voicemail, other applications)."""
    if b"Event-Name: RECORD_STOP\n" not in body or b"\nvariable_crm_recording_path: " in body:
        return body
    start = body.find(b"\nRecord-File-Path: ")
    if start < 0:
        return body
    end = body.index(b"\n", start + 1)
    value = body[start + len(b"\nRecord-File-Path: "):end]
    return body[:end] + b"\nvariable_crm_recording_path: " + value + body[end:]


def load_connect_reply(path: str | Path) -> bytes:
    """The CHANNEL_DATA header lines of a recorded outbound-socket `connect` reply (its first frame).

    The four headers FreeSWITCH appends (Content-Type, Reply-Text, Socket-Mode, Control) are left off;
    `outbound_connect()` adds them again from its own mode flags.
    """
    data = Path(path).read_bytes()
    block = data[:data.index(b"\n\n") + 1]
    return _strip_reply_tail(block)


def _strip_reply_tail(block: bytes) -> bytes:
    marker = ("Content-Type: %s\n" % COMMAND_REPLY).encode()
    if block.startswith(marker):
        return b""
    index = block.find(b"\n" + marker)
    return block[:index + 1] if index >= 0 else block


# A UUID as FreeSWITCH prints it (36 characters).
_UUID_RE = re.compile(rb"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# Timestamps in microseconds since the epoch: Event-Date-Timestamp, the *-Time and *-Last-Hold profile
# headers (Caller-, Other-Leg-, Channel-) and the *_uepoch variables; *_epoch variables are in seconds.
_MICROSECOND_HEADER = re.compile(
    r"^(?:variable_)?Event-Date-Timestamp$|-Time$|-Last-Hold$|^variable_\w+_uepoch$|^variable_sip_invite_stamp$")
_SECOND_HEADER = re.compile(r"^variable_\w+_epoch$")
_RENUMBER_NAMESPACE = uuid.UUID("6f1c2a52-0d1e-4c4b-9a7e-2b5c1f0e6d3a")


def renumber_call(bodies: list[bytes], *, seed: int | str, time_shift_us: int = 0) -> list[bytes]:
    """A copy of one call's events as a new, distinct call.

    Every UUID is replaced consistently by a deterministic one derived from `seed` (same length, so
    inner Content-Length values stay right), except Core-UUID, which names the switch, not the call.
    Non-zero microsecond timestamps move by `time_shift_us`, *_epoch seconds by the same amount.
    Everything else, the human-readable Event-Date-Local/-GMT and *_stamp strings included, is kept
    byte for byte.
    """
    core_uuids = {PlainEvent.parse(body).get("Core-UUID") for body in bodies} - {None}
    keep = {core.lower().encode() for core in core_uuids if core}
    mapping: dict[bytes, bytes] = {}

    def replace(match: re.Match[bytes]) -> bytes:
        old = match.group(0)
        key = old.lower()
        if key in keep:
            return old
        if key not in mapping:
            mapping[key] = str(uuid.uuid5(_RENUMBER_NAMESPACE, "%s/%s" % (seed, key.decode()))).encode()
        new = mapping[key]
        return new.upper() if old.isupper() else new

    renumbered = []
    for body in bodies:
        head, separator, rest = body.partition(b"\n\n")
        lines = [_shift_time(_UUID_RE.sub(replace, line), time_shift_us) for line in head.split(b"\n")]
        renumbered.append(b"\n".join(lines) + separator + _UUID_RE.sub(replace, rest))
    return renumbered


def _shift_time(line: bytes, shift_us: int) -> bytes:
    name, colon, value = line.partition(b": ")
    if not shift_us or not colon or not value.isdigit() or int(value) == 0:
        return line  # 0 means "never happened" (e.g. Caller-Channel-Answered-Time of a missed call)
    text = name.decode("utf-8", "replace")
    if _MICROSECOND_HEADER.search(text):
        return name + b": " + str(int(value) + shift_us).encode()
    if _SECOND_HEADER.search(text):
        return name + b": " + str((int(value) * 1_000_000 + shift_us) // 1_000_000).encode()
    return line


# --- One ESL socket, as mes.c's listener_t sees it -----------------------------------------------

@dataclass
class _Command:
    """A client command: first line, extra `Name: value` header lines, optional Content-Length body."""

    line: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for n, v in self.headers if n.lower() == lowered), None)


_STOP = object()
# read_packet(): CRs are ignored, so a command ends at LF, any CRs, LF.
_END_OF_COMMAND = re.compile(rb"\n\r*\n")


class _Listener:
    """State and behaviour shared by both sides: command parsing, subscription, queued event delivery.

    Events go through a per-socket queue drained by a writer greenlet, like the listener's event
    queue in FreeSWITCH. A command holds the send lock from the moment it is read until its reply is
    written, so (as in mes.c, where events are flushed only between commands) no event is written
    while a command runs; that includes `reply_delay` and an `api` handler that blocks.
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

    # -- mes.c parse_command(), in its order; (reply, keep running); reply None = nothing to send,
    # -- "" = the default "-ERR command not found".

    def _parse_command(self, command: _Command) -> tuple[str | None, bool]:
        line = command.line
        lower = line.lower()
        if lower.startswith("exit") or lower.startswith("..."):
            return "+OK bye", False
        if not self.authed:
            return self._unauthenticated(line, lower)
        if lower.startswith("filter "):
            return self._filter(line[7:]), True
        if self.session_uuid and lower.startswith("resume"):
            return "+OK", True
        if self.session_uuid or lower.startswith("myevents "):
            if self.session_uuid and lower.startswith("connect"):
                self._connect()
                return None, True
            if self.session_uuid and lower.startswith("getvar"):
                return self._getvar(line), True
            if lower.startswith("myevents"):
                return self._myevents(line), True
        if lower.startswith("divert_events"):
            return self._divert_events(line[13:]), True
        if lower.startswith("sendmsg"):
            return self._sendmsg(command, line[7:]), True
        if not self._full_control():
            return "", True  # an outbound socket without `full` may only use the session commands above
        if lower.startswith("sendevent"):
            return self._sendevent(command, line[9:]), True
        if lower.startswith("api "):
            self._send(self.fake.api_response(line[4:]))  # api_exec() answers inline, no command/reply
            return None, True
        if lower.startswith("bgapi "):
            return self._bgapi(command, line[6:]), True
        if lower.startswith("log"):
            return self._log(line[3:]), True
        if lower.startswith("linger"):
            return self._linger(line), True
        if lower.startswith("nolinger"):
            if not self.session_uuid:
                return "-ERR not controlling a session", True
            self.lingering = False
            return "+OK will not linger", True
        if lower.startswith("nolog"):
            if not self.logging:
                return "-ERR not loging", True  # sic
            self.logging = False
            return "+OK no longer logging", True
        if lower.startswith("event"):
            return self._event(line), True
        if lower.startswith("nixevent"):
            return self._nixevent(line), True
        if lower.startswith("noevents"):
            return self._noevents(), True
        return "", True

    def _full_control(self) -> bool:
        return True

    def _unauthenticated(self, line: str, lower: str) -> tuple[str, bool]:
        # Before auth only auth/userauth/exit do anything; other commands get the default
        # "-ERR command not found" and the connection stays open. A wrong password ends it.
        if lower.startswith("auth "):
            if line[5:] == self.fake.password:
                self.authed = True
                return "+OK accepted", True
            return "-ERR invalid", False
        if lower.startswith("userauth "):
            user, _, password = line[9:].rpartition(":")
            if "@" in user and password == self.fake.password:
                self.authed = True
                return "~Reply-Text: +OK accepted\nAllowed-Events: all\nAllowed-API: all\nAllowed-LOG: true\n\n", True
            return "-ERR invalid", False
        return "", True

    def _filter(self, text: str) -> str:
        name, _, value = text.lstrip(" ").partition(" ")
        if name.lower() == "delete" and value:
            name, _, value = value.partition(" ")
            if name.lower() == "all":
                self.filters.clear()
            else:
                self.filters = [(h, v) for h, v in self.filters
                                if not (h.lower() == name.lower() and (not value or v == value))]
            return "+OK filter deleted. [%s][%s]" % (name, value)
        if value:
            if name.lower() == "add":
                name, _, value = value.partition(" ")
            self.filters.append((name, value))
            return "+OK filter added. [%s]=[%s]" % (name, value)
        return "-ERR invalid syntax"

    def _connect(self) -> None:
        raise NotImplementedError

    def _getvar(self, line: str) -> str:
        return ""

    def _myevents(self, line: str) -> str:
        if self.myevents:
            return "-ERR aready enabled."  # sic, as FreeSWITCH spells it
        if not self.session_uuid:
            # Inbound `myevents <uuid> [format]` binds this connection to one live channel.
            target, _, fmt = line[9:].strip().partition(" ")
            if target in self.fake.channels:
                self.myevents_uuid = target
            elif fmt:
                return "-ERR invalid uuid"
        self.event_types |= MYEVENTS
        self.myevents = True
        self.events_enabled = True
        if "xml" in line or "XML" in line:
            self.format = "xml"
        if "json" in line or "JSON" in line:
            self.format = "json"
        return "+OK Events Enabled"

    def _divert_events(self, rest: str) -> str:
        if not self.session_uuid:
            return "-ERR not controlling a session."
        value = rest.strip()
        if not value:
            return "-ERR missing value."
        return "+OK events diverted" if value.lower() == "on" else "+OK events not diverted"

    def _sendmsg(self, command: _Command, rest: str) -> str:
        target = rest.strip() or command.header("session-id")
        if target and target == self.session_uuid:
            target = None
        if not target and self.session_uuid:
            self._on_message(command)
            return "+OK"
        if target and target in self.fake.channels:
            return "+OK"
        return "-ERR invalid session id [%s]" % (target or "")

    def _on_message(self, command: _Command) -> None:
        pass

    def _sendevent(self, command: _Command, rest: str) -> str:
        # Simplified: the event carries the switch's own headers, the command's headers and an
        # Event-UUID; an unknown name stays a CLONE event, as FreeSWITCH leaves it.
        event_uuid = str(uuid.uuid4())
        name = rest.strip().upper()
        name = name if name in EVENT_NAMES and name != ALL else "CLONE"
        headers = [(h, v) for h, v in command.headers if h.lower() != "content-length"]
        subclass = command.header(H_EVENT_SUBCLASS) if name == CUSTOM else None
        headers = [(h, v) for h, v in headers if not (subclass and h.lower() == H_EVENT_SUBCLASS.lower())]
        headers.append(("Event-UUID", event_uuid))
        body = self.fake.make_event(name, headers, command.body or None, subclass=subclass,
                                    calling=("mod_event_socket.c", "parse_command", 0))
        self.fake.broadcast(body)
        return "+OK %s" % event_uuid

    def _bgapi(self, command: _Command, text: str) -> str:
        job_uuid = command.header(H_JOB_UUID) or str(uuid.uuid4())
        self.fake._start_job(job_uuid, text)
        return "~Reply-Text: +OK Job-UUID: %s\nJob-UUID: %s\n\n" % (job_uuid, job_uuid)

    def _log(self, rest: str) -> str:
        level_text = rest[1:] if rest else ""
        level = 7
        if level_text:
            level = int(level_text) if level_text.isdigit() else _LOG_LEVELS.get(level_text.lower(), -1)
            if not 0 <= level <= 7:
                return "-ERR invalid log level"
        self.logging = True  # the fake has no log lines to send
        return "+OK log level %s [%d]" % (level_text, level)

    def _linger(self, line: str) -> str:
        if not self.session_uuid:
            return "-ERR not controlling a session"
        self.lingering = True
        seconds = line[7:].strip() if line[6:7] == " " else ""
        if seconds:
            self.linger_time = int(seconds) if seconds.lstrip("-").isdigit() else 0
            return "+OK will linger %d seconds" % self.linger_time
        self.linger_time = -1
        return "+OK will linger"

    def _event(self, line: str) -> str:
        words = line.split(" ")[1:]
        key_count = 0
        custom = False
        for index, word in enumerate(words):
            if index == 0 and word.lower() in ("plain", "json", "xml"):
                self.format = word.lower()
                continue
            if custom:
                self.custom_subclasses.add(word)  # everything after CUSTOM is a subclass name
                continue
            name = _event_type(word)
            if name is None:
                continue
            key_count += 1
            if name == ALL:
                self.event_types |= EVENT_NAMES
            self.event_types.add(name)
            custom = name == CUSTOM
        if not key_count:
            return "-ERR no keywords supplied"
        self.events_enabled = True
        return "+OK event listener enabled %s" % self.format

    def _nixevent(self, line: str) -> str:
        key_count = 0
        custom = False
        for word in line.split(" ")[1:]:
            if custom:
                self.custom_subclasses.discard(word)
                continue
            name = _event_type(word)
            if name is None:
                continue
            key_count += 1
            if name == CUSTOM:
                custom = True
            elif name == ALL:
                self.event_types.clear()
            else:
                if ALL in self.event_types:
                    self.event_types = set(EVENT_NAMES) - {ALL}
                self.event_types.discard(name)
        if not key_count:
            return "-ERR no keywords supplied"
        self.events_enabled = True
        return "+OK events nixed"

    def _noevents(self) -> str:
        # Simplified: FreeSWITCH also discards events already queued for this client; the fake
        # still writes those.
        if not self.events_enabled:
            return "-ERR not listening for events"
        self.events_enabled = False
        self.event_types.clear()
        self.custom_subclasses.clear()
        return "+OK no longer listening for events"


def _event_type(word: str) -> str | None:
    """switch_name_event(): case-insensitive, and a SWITCH_EVENT_ prefix is accepted."""
    name = word.upper()
    if name in EVENT_NAMES:
        return name
    if len(name) > 13 and name[13:] in EVENT_NAMES:
        return name[13:]
    return None


def _switch_true(value: str | None) -> bool:
    """switch_true(): yes/on/true/t/enabled/active/allow, or a non-zero number."""
    if not value:
        return False
    text = value.strip().lower()
    if text in ("yes", "on", "true", "t", "enabled", "active", "allow"):
        return True
    return text.lstrip("-").isdigit() and int(text) != 0


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


class _InboundConnection(_Listener):
    """A client that connected to the fake's port, like a client of mod_event_socket on 8021."""

    def __init__(self, fake: FakeFreeswitch, sock: socket.socket, number: int):
        super().__init__(fake, sock, number, session_uuid=None)

    def serve(self) -> None:
        try:
            if self.fake.rude_reject:
                # apply-inbound-acl refused the address: no auth/request, the rejection, then goodbye.
                self._send(b"Content-Type: %s\nContent-Length: %d\n\n%s"
                           % (RUDE_REJECTION.encode(), len(RUDE_MESSAGE), RUDE_MESSAGE))
                return
            self._send(("Content-Type: %s\n\n" % AUTH_REQUEST).encode())
            self._command_loop()
        except FrameError as exc:
            logger.warning("fake FreeSWITCH: client %s sent an unframeable command, closing: %s", self.number, exc)
        except OSError as exc:
            logger.debug("fake FreeSWITCH: client %s socket error: %s", self.number, exc)
        except Exception:
            logger.exception("fake FreeSWITCH: client %s handler failed", self.number)
        finally:
            self._close(GOODBYE, lock_timeout=5.0)  # listener_run() always says goodbye on the way out

    def _record(self, command: _Command) -> None:
        logger.debug("fake FreeSWITCH: client %s sent %r", self.number, command.line)
        self.fake.commands.append((self.number, command.line))

    def _connect(self) -> None:  # pragma: no cover - `connect` is only reachable with a session
        raise AssertionError("connect without a session")


@dataclass
class SessionApp:
    """One application an app queued on its call with `sendmsg` / `call-command: execute`."""

    name: str
    arg: str
    event_lock: bool
    uuid: str
    ended: str = ""    # "" while queued or running; then APP_DONE, APP_INTERRUPTED or APP_HANGUP


class OutboundCall(_Listener):
    """One call handed to an app by the dialplan `socket` application (FreeSWITCH connects out).

    The session is pre-authenticated: no auth/request; FreeSWITCH waits up to 25 s for the app's
    first command and never sends the reply to it, except that `connect` writes its CHANNEL_DATA.

    Applications run as FreeSWITCH runs them in async mode (switch_ivr_parse_event and
    switch_core_session_dequeue_private_event): each sendmsg execute is queued to the channel and
    acknowledged at once. An application starts when nothing runs; while one runs, the next queued
    message waits only if the running one was sent with `event-lock: true`; otherwise it runs at
    once and a long application (LONG_APPS: a bridge ringing a phone) is cut short, as the real
    bridge is when a queued transfer runs inside it (the phone gets CANCEL). A long application
    runs until the test ends it with `finish_app()`. CHANNEL_EXECUTE and CHANNEL_EXECUTE_COMPLETE
    go to the app when it subscribed (myevents). `set` and `export` change the channel variables
    (`getvar`, events); after a bridge, `hangup_after_bridge` and `continue_on_fail` decide whether
    the call goes on to the next application or hangs up.

    Simplified: FreeSWITCH runs an unlocked message *inside* the running application, and only
    applications that change the channel (transfer, hangup...) end a bridge; the fake ends the
    running long application first, whatever comes next, and reports the bridge as
    ORIGINATOR_CANCEL. A call that hangs up emits no events of its own (`hangup(events)` sends
    what the test gives). Static (not async) sessions run applications the same way, where
    FreeSWITCH would answer sendmsg only after the application.
    """

    def __init__(self, fake: FakeFreeswitch, sock: socket.socket, number: int, channel_data: bytes,
                 async_mode: bool = True, full: bool = True):
        block = _strip_reply_tail(channel_data.partition(b"\n\n")[0].rstrip(b"\n") + b"\n")
        channel = PlainEvent.parse(block + b"\n")
        session_uuid = channel.get(H_UNIQUE_ID) or channel.get("Channel-Unique-ID") or str(uuid.uuid4())
        super().__init__(fake, sock, number, session_uuid=session_uuid)
        self.authed = True
        self.uuid = session_uuid
        self.channel_data = block
        self.channel_name = channel.get("Channel-Name") or ""
        self.variables = {name[9:]: value for name, value in channel.headers if name.startswith("variable_")}
        self.async_mode = async_mode
        self.full = full
        self.connected = False
        self.commands: list[str] = []
        self.executed: list[tuple[str, str]] = []        # (app, arg) of every `sendmsg` execute, as received
        self.messages: list[list[tuple[str, str]]] = []  # headers of every sendmsg to this session
        self.queued: list[SessionApp] = []       # received, waiting for the running one to complete
        self.running: SessionApp | None = None   # the long application in progress (a bridge ringing)
        self.finished: list[SessionApp] = []     # applications that ran, in the order they ended
        self.channel_down = False                # the call hung up: nothing queued runs any more
        self.answer_state = channel.get("Answer-State") or "early"
        # The channel's headers for the events the fake makes (CHANNEL_DATA's, without the standard
        # headers make_event() adds and without the variables, which are taken as they are now).
        self._channel_headers = [(name, value) for name, value in channel.headers
                                 if not name.startswith(("Event-", "FreeSWITCH-", "variable_"))
                                 and name not in ("Core-UUID", "Answer-State")]
        if channel.get(H_UNIQUE_ID) is None:
            self._channel_headers.append((H_UNIQUE_ID, session_uuid))

    def serve(self) -> None:
        try:
            self._sock.settimeout(FIRST_COMMAND_TIMEOUT)
            first = self._read_command()
            self._sock.settimeout(None)
            if first is None:
                logger.warning("fake FreeSWITCH: outbound call %s got no first command", self.uuid)
                return
            self._record(first)
            if self.fake.mute_replies:
                self._command_loop()
            elif self._execute(first, send_reply=False):
                self._command_loop()
        except FrameError as exc:
            logger.warning("fake FreeSWITCH: outbound call %s got an unframeable command, closing: %s", self.uuid, exc)
        except OSError as exc:
            logger.debug("fake FreeSWITCH: outbound call %s socket error: %s", self.uuid, exc)
        except Exception:
            logger.exception("fake FreeSWITCH: outbound call %s handler failed", self.uuid)
        finally:
            self._close(GOODBYE, lock_timeout=5.0)

    def _record(self, command: _Command) -> None:
        logger.debug("fake FreeSWITCH: outbound call %s got %r", self.uuid, command.line)
        self.commands.append(command.line)

    def _full_control(self) -> bool:
        return self.full

    def _connect(self) -> None:
        # The serialized CHANNEL_DATA event with four headers appended at the end, a blank line and
        # no Content-Length (mes.c parse_command `connect`; capture in_socket_route.outbound_socket).
        self.connected = True
        tail = "Content-Type: %s\nReply-Text: %s\nSocket-Mode: %s\nControl: %s\n\n" % (
            COMMAND_REPLY, url_encode("+OK\n"), "async" if self.async_mode else "static",
            "full" if self.full else "single-channel")
        self._sendall(self.channel_data + tail.encode())

    def _getvar(self, line: str) -> str:
        # The value itself is the Reply-Text; an unset variable gives an empty reply, which
        # FreeSWITCH then turns into "-ERR command not found".
        name = line.partition(" ")[2].strip()
        return self.variables.get(name, "")

    def _on_message(self, command: _Command) -> None:
        self.messages.append(list(command.headers))
        if (command.header("call-command") or "").lower() == "execute":
            argument = command.header("execute-app-arg")
            if argument is None:
                argument = command.body.decode("utf-8", "replace")  # long args come as a text/plain body
            name = command.header("execute-app-name") or ""
            self.executed.append((name, argument))
            if not self.channel_down:
                self.queued.append(SessionApp(name, argument, _switch_true(command.header("event-lock")),
                                              command.header("event-uuid") or str(uuid.uuid4())))
                self._run_apps()

    # -- applications --

    def _run_apps(self) -> None:
        """Start queued applications while the channel lets the queue be read."""
        while self.queued and not self.channel_down:
            if self.running is not None:
                if self.running.event_lock:
                    return  # CF_EVENT_LOCK: the queue waits for the running application
                interrupted = self.running
                # As when a transfer runs inside the bridge: the caller's leg leaves, the phone gets CANCEL.
                variables = {"originate_disposition": "ORIGINATOR_CANCEL"} if interrupted.name == "bridge" else {}
                self._end_app(interrupted, APP_INTERRUPTED, variables)
            self._start_app(self.queued.pop(0))

    def _start_app(self, app: SessionApp) -> None:
        self.send_event(self._app_event("CHANNEL_EXECUTE", app))
        if app.name in ("set", "export"):
            name, _, value = app.arg.partition("=")
            if name and value:
                self.variables[name] = value
            elif name:
                self.variables.pop(name, None)
        if app.name in LONG_APPS:
            self.running = app
        else:
            self._end_app(app, APP_DONE)

    def _end_app(self, app: SessionApp, ended: str, variables: dict[str, str] | None = None) -> None:
        self.variables.update(variables or {})
        app.ended = ended
        if self.running is app:
            self.running = None
        self.finished.append(app)
        self.send_event(self._app_event("CHANNEL_EXECUTE_COMPLETE", app, response="_none_"))

    def _app_event(self, name: str, app: SessionApp, response: str | None = None) -> bytes:
        headers = [*self._channel_headers, ("Answer-State", self.answer_state)]
        headers += [("variable_" + key, value) for key, value in self.variables.items()]
        headers += [("Application", app.name), ("Application-Data", app.arg)]
        if response is not None:
            headers.append(("Application-Response", response))
        headers.append(("Application-UUID", app.uuid))
        return self.fake.make_event(name, headers, calling=(
            "switch_core_session.c", "switch_core_session_exec", 2972 if response is not None else 2949))

    # -- what the test drives --

    def finish_app(self, **variables: str) -> SessionApp:
        """The running long application completes (a bridge: give `originate_disposition`, SUCCESS
        when the phone answered and the talk is over, else the cause such as NO_ANSWER or
        USER_BUSY). The queue then goes on, unless the call hangs up after the bridge."""
        app = self.running
        if app is None:
            raise AssertionError("no application is running on call %s" % self.uuid)
        answered = app.name == "bridge" and variables.get("originate_disposition") == "SUCCESS"
        if answered:
            self.answer_state = "answered"
        if app.name == "bridge" and (
                self._hangs_up_after_bridge() if answered else not self._continues_on_fail(variables)):
            self.answer_state = "hangup"
            self._end_app(app, APP_DONE, variables)
            self._channel_gone()
        else:
            self._end_app(app, APP_DONE, variables)
            self._run_apps()
        return app

    def _hangs_up_after_bridge(self) -> bool:
        return _switch_true(self.variables.get("hangup_after_bridge"))

    def _continues_on_fail(self, variables: dict[str, str]) -> bool:
        # continue_on_fail is true/false or a list of the causes to continue on (mod_dptools bridge).
        value = self.variables.get("continue_on_fail") or ""
        cause = variables.get("originate_disposition") or ""
        return _switch_true(value) or (bool(cause) and cause in value.split(","))

    def _channel_gone(self) -> None:
        self.channel_down = True
        if self.running is not None:
            self.running.ended = APP_HANGUP
            self.finished.append(self.running)
            self.running = None
        self.queued.clear()

    def send_event(self, body: bytes) -> bool:
        """Deliver one plain event body to the app if its subscription (myevents/event) wants it."""
        return self.deliver(PlainEvent.parse(body))

    def hangup(self, events: Iterable[bytes] = (), close: bool = True) -> None:
        """The channel went down.

        Without `linger` FreeSWITCH closes at once (goodbye notice with Controlled-Session-UUID). With
        `linger` it first sends the linger notice and keeps delivering the remaining `events`
        (HANGUP_COMPLETE, DESTROY...); the fake then ends the linger right after them (when `close`)
        instead of waiting out the linger timer. The running application ends and nothing queued runs.
        """
        self.answer_state = "hangup"
        self._channel_gone()
        if self.lingering:
            notice = ("Content-Type: %s\nControlled-Session-UUID: %s\nContent-Disposition: linger\n"
                      "Channel-Name: %s\nLinger-Time: %d\nContent-Length: 0\n\n"
                      % (DISCONNECT_NOTICE, self.uuid, self.channel_name, self.linger_time))
            self.enqueue(notice.encode())
            for body in events:
                self.send_event(body)
            if not close:
                return  # still lingering: send_event() more, then disconnect() or close()
        self.disconnect()

    def disconnect(self) -> None:
        """End the session politely after the queued events: goodbye notice, then close."""
        self._closing = True
        self.enqueue(b"", then=lambda: self._close(GOODBYE))

    def close(self) -> None:
        """Drop the session socket abruptly (FreeSWITCH crashed or the network broke)."""
        self._abort()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        return self.fake.wait_for(predicate, timeout)


# --- The switch ----------------------------------------------------------------------------------

class FakeFreeswitch:
    """An in-process FreeSWITCH for tests and the demo: an ESL server on 127.0.0.1, port chosen by the OS.

    Attributes the caller may change at any time: `api_handlers` (command prefix -> callable(args) ->
    output), `bgapi_handler` (callable(full command text) -> output, instead of the api table for
    bgapi jobs; it runs in its own greenlet, so it may block), `reply_delay` (seconds before any
    command is answered) and `mute_replies` (commands are recorded but never answered).

    Simplifications: events are only those the caller plays or the fake makes (BACKGROUND_JOB,
    sendevent); there is no log stream; `show channels` rows are built from the played events.
    """

    def __init__(self, password: str = "ClueCon", rude_reject: bool = False, port: int = 0):
        self.password = password
        self.rude_reject = rude_reject
        self.host = "127.0.0.1"
        self.port = port  # 0: the OS chooses; a stopped fake's port: the same switch started again
        self.reply_delay = 0.0
        self.mute_replies = False
        self.bgapi_handler: Callable[[str], str] | None = None
        self.commands: list[tuple[int, str]] = []
        self.connections_total = 0
        self.outbound_calls: list[OutboundCall] = []
        # The identity of the switch the pbx/ captures were recorded on, so made events match them.
        self.core_uuid = "b5bfe65e-b09e-4b70-a49e-aeeef00d90fc"
        self.hostname = "vm"
        self.ipv4 = "192.0.2.2"
        self.ipv6 = "fd00::2"
        self.channels: dict[str, dict[str, str]] = {}   # live channels by UUID, from played events
        self.api_handlers: dict[str, Callable[[str], str]] = {
            "status": self._api_status,
            "version": lambda _args: "FreeSWITCH Version 1.11.3-dev (fake_freeswitch)\n",
            "hostname": lambda _args: self.hostname,
            "show channels as json": self._api_show_channels_json,
            "show channels": self._api_show_channels,
        }
        self._connections: list[_InboundConnection] = []
        self._greenlets = gevent.pool.Group()
        self._server: gevent.server.StreamServer | None = None
        self._sequence = itertools.count(1)
        self._sessions_total = 0
        self._started_at = time.time()

    # -- lifecycle --

    def start(self) -> FakeFreeswitch:
        self._server = gevent.server.StreamServer((self.host, self.port), self._handle)
        self._server.start()
        self.port = self._server.server_port
        self._started_at = time.time()
        logger.info("fake FreeSWITCH listening on %s:%s", self.host, self.port)
        return self

    def stop(self) -> None:
        """Like unloading mod_event_socket: every listener gets "The system is being shut down."."""
        if self._server is not None:
            self._server.stop_accepting()
        for listener in [*self._connections, *self.outbound_calls]:
            listener._close(SHUTDOWN_MESSAGE, lock_timeout=0.5)
        if self._server is not None:
            self._server.stop(timeout=1)
            self._server = None
        self._greenlets.kill(block=True, timeout=2)
        logger.info("fake FreeSWITCH stopped")

    def __enter__(self) -> FakeFreeswitch:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _handle(self, sock: socket.socket, address: tuple) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connections_total += 1
        connection = _InboundConnection(self, sock, self.connections_total)
        self._connections = [c for c in self._connections if not c.closed] + [connection]
        logger.debug("fake FreeSWITCH: client %s connected from %s", connection.number, address)
        connection.serve()

    # -- what tests look at --

    def connected_clients(self) -> int:
        return sum(1 for c in self._connections if c.is_open)

    def authenticated_clients(self) -> int:
        return sum(1 for c in self._connections if c.is_open and c.authed)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        return wait_for(predicate, timeout)

    def wait_subscribed(self, timeout: float = 10.0) -> bool:
        """Until at least one client has authenticated and subscribed to some events."""
        return self.wait_for(lambda: any(c.is_open and c.authed and c.events_enabled and c.event_types
                                         for c in self._connections), timeout)

    # -- what tests drive --

    def play(self, bodies: Iterable[bytes], chunk_size: int | None = None, delay: float = 0.0) -> None:
        """Fire recorded events: each goes to every listener whose subscription wants it.

        Delivery is queued per client, as in FreeSWITCH, so this returns before clients have read
        anything; `delay` seconds pass between events. CHANNEL_CREATE/DESTROY maintain `channels`.
        """
        for index, body in enumerate(bodies):
            if delay and index:
                gevent.sleep(delay)
            event = PlainEvent.parse(body)
            self._track_channel(event)
            self._broadcast(event, chunk_size)

    def broadcast(self, body: bytes) -> None:
        """Fire one event to subscribed listeners without touching the channel list."""
        self._broadcast(PlainEvent.parse(body))

    def send_raw(self, data: bytes) -> None:
        """Raw bytes to every authenticated client, in order with the events already queued."""
        for connection in self._open_connections():
            if connection.authed:
                connection.enqueue(data)

    def drop_clients(self, mid_frame: bytes | None = None) -> None:
        """Close every client socket abruptly, no notice, after the events already queued.

        With `mid_frame` (a framed event, or an event body, which is framed first) the first half of
        that frame is written just before, as when FreeSWITCH dies in the middle of a write.
        """
        partial = b""
        if mid_frame:
            frame = mid_frame if mid_frame.startswith(b"Content-") else frame_event(mid_frame)
            partial = frame[:len(frame) // 2]
        connections = self._open_connections()
        for connection in connections:
            connection._closing = True
            connection.enqueue(partial, then=connection._abort)
        if not self.wait_for(lambda: all(c.closed for c in connections), timeout=5.0):
            for connection in connections:
                connection._abort()

    def disconnect_clients(self) -> None:
        """Politely: the goodbye disconnect-notice, then close, after the events already queued."""
        connections = self._open_connections()
        for connection in connections:
            connection._closing = True
            connection.enqueue(b"", then=lambda c=connection: c._close(GOODBYE))
        if not self.wait_for(lambda: all(c.closed for c in connections), timeout=5.0):
            for connection in connections:
                connection._abort()

    def make_event(self, name: str, headers: Iterable[tuple[str, str]] = (), body: str | bytes | None = None,
                   *, subclass: str | None = None,
                   calling: tuple[str, str, int] = ("fake_freeswitch.py", "make_event", 0)) -> bytes:
        """A plain-serialized event with this switch's standard headers first, as switch_event_fire adds them."""
        now = time.time()
        standard = [(H_EVENT_SUBCLASS, subclass)] if subclass else []
        standard += [
            (H_EVENT_NAME, name), ("Core-UUID", self.core_uuid), ("FreeSWITCH-Hostname", self.hostname),
            ("FreeSWITCH-Switchname", self.hostname), ("FreeSWITCH-IPv4", self.ipv4),
            ("FreeSWITCH-IPv6", self.ipv6),
            ("Event-Date-Local", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))),
            ("Event-Date-GMT", email.utils.formatdate(now, usegmt=True)),
            (H_EVENT_TIMESTAMP, str(int(now * 1_000_000))),
            ("Event-Calling-File", calling[0]), ("Event-Calling-Function", calling[1]),
            ("Event-Calling-Line-Number", str(calling[2])), ("Event-Sequence", str(next(self._sequence))),
        ]
        return serialize_event([*standard, *headers], body)

    def outbound_connect(self, host: str, port: int, connect_reply_body: bytes, *,
                         async_mode: bool = True, full: bool = True) -> OutboundCall:
        """Hand a call to an app like `<action application="socket" data="host:port async full"/>`.

        `connect_reply_body` is the channel's CHANNEL_DATA header lines (see load_connect_reply());
        a block that already ends in the command/reply headers is accepted too.
        """
        sock = gevent.socket.create_connection((host, port), timeout=5)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sessions_total += 1
        call = OutboundCall(self, sock, self._sessions_total, connect_reply_body, async_mode, full)
        self.outbound_calls.append(call)
        self._greenlets.spawn(call.serve)
        logger.debug("fake FreeSWITCH: outbound call %s connected to %s:%s", call.uuid, host, port)
        return call

    # -- events, api, jobs --

    def _open_connections(self) -> list[_InboundConnection]:
        return [c for c in self._connections if c.is_open]

    def _broadcast(self, event: PlainEvent, chunk_size: int | None = None) -> None:
        for listener in [*self._connections, *self.outbound_calls]:
            listener.deliver(event, chunk_size)

    def _track_channel(self, event: PlainEvent) -> None:
        unique_id = event.get(H_UNIQUE_ID)
        if not unique_id:
            return
        if event.name == CHANNEL_DESTROY:
            self.channels.pop(unique_id, None)
        elif event.name == CHANNEL_CREATE:
            self.channels[unique_id] = _channel_row(event)
        elif unique_id in self.channels:
            _update_row(self.channels[unique_id], event)

    def api_response(self, text: str) -> bytes:
        """mes.c api_exec(): api/response with the output; empty output becomes "-ERR no reply"."""
        output = self.run_api(text).encode("utf-8") or b"-ERR no reply\n"
        return b"Content-Type: %s\nContent-Length: %d\n\n" % (API_RESPONSE.encode(), len(output)) + output

    def run_api(self, text: str) -> str:
        """Run `<command> <args>` through `api_handlers` (longest matching prefix, case-insensitive)."""
        lowered = text.lower()
        matches = [key for key in self.api_handlers
                   if lowered == key.lower() or lowered.startswith(key.lower() + " ")]
        if not matches:
            return "-ERR %s Command not found!\n" % text.partition(" ")[0]
        key = max(matches, key=len)
        try:
            return self.api_handlers[key](text[len(key):].strip())
        except Exception as exc:
            logger.exception("fake FreeSWITCH: api handler for %r failed", key)
            return "-ERR %s\n" % exc

    def _start_job(self, job_uuid: str, text: str) -> None:
        self._greenlets.spawn(self._run_job, job_uuid, text)

    def _run_job(self, job_uuid: str, text: str) -> None:
        """api_exec() in a thread of its own; its output becomes the BACKGROUND_JOB event body."""
        if self.bgapi_handler is not None:
            try:
                output = self.bgapi_handler(text)
            except Exception as exc:
                logger.exception("fake FreeSWITCH: bgapi handler failed for %r", text)
                output = "-ERR %s\n" % exc
        else:
            output = self.run_api(text)
        command, _, argument = text.partition(" ")
        headers = [(H_JOB_UUID, job_uuid), ("Job-Command", command)]
        if argument:
            headers.append(("Job-Command-Arg", argument))
        body = self.make_event(BACKGROUND_JOB, headers, output or None,
                               calling=("mod_event_socket.c", "api_exec", 1580))
        self._broadcast(PlainEvent.parse(body))

    def _api_status(self, _args: str) -> str:
        up = int(time.time() - self._started_at)
        live = len(self.channels)
        return ("UP 0 years, %d days, %d hours, %d minutes, %d seconds, 0 milliseconds, 0 microseconds\n"
                "FreeSWITCH (Version 1.11.3-dev fake_freeswitch) is ready\n"
                "%d session(s) since startup\n"
                "%d session(s) - peak %d, last 5min %d \n"
                "0 session(s) per Sec out of max 30, peak 0, last 5min 0 \n"
                "1000 session(s) max\n"
                "min idle cpu 0.00/100.00\n"
                "Current Stack Size/Max 240K/8192K\n"
                % (up // 86400, up // 3600 % 24, up // 60 % 60, up % 60, live, live, live, live))

    def _rows(self) -> list[dict[str, str]]:
        return sorted(self.channels.values(), key=lambda row: int(row["created_epoch"] or 0))

    def _api_show_channels_json(self, _args: str) -> str:
        # mod_commands show_function: cJSON_PrintUnformatted of {"row_count": N, "rows": [...]}, every
        # value a string; with no rows it prints this literal text instead (space and newline included).
        rows = self._rows()
        if not rows:
            return '{"row_count": 0}\n'
        return json.dumps({"row_count": len(rows), "rows": rows}, ensure_ascii=False, separators=(",", ":"))

    def _api_show_channels(self, _args: str) -> str:
        # The default "delim" format: a title line, comma-separated rows, then "N total.".
        rows = self._rows()
        lines = [",".join(CHANNEL_COLUMNS)] + [",".join(row[c] for c in CHANNEL_COLUMNS) for row in rows]
        return "\n".join(lines) + "\n\n%d total.\n" % len(rows)


def _channel_row(event: PlainEvent) -> dict[str, str]:
    row = dict.fromkeys(CHANNEL_COLUMNS, "")
    timestamp = event.get(H_EVENT_TIMESTAMP) or "0"
    row.update(uuid=event.get(H_UNIQUE_ID) or "", direction=event.get("Call-Direction") or "",
               created=event.get("Event-Date-Local") or "",
               created_epoch=str(int(timestamp) // 1_000_000) if timestamp.isdigit() else "")
    _update_row(row, event)
    for column in _INITIAL_COLUMNS:
        row["initial_" + column] = row[column]
    return row


def _update_row(row: dict[str, str], event: PlainEvent) -> None:
    for column, header in _COLUMN_SOURCES.items():
        value = event.get(header)
        if value is not None:
            row[column] = value

"""Captured ESL streams for the fake FreeSWITCH to replay: reading the recorded files in captures/,
marking recordings as fs-crm's snippet does, and renumbering one recorded call into many distinct ones."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

from fs_crm.freeswitch.eslparse import parse_content_length
from fs_crm.sim.fake_freeswitch.wire import PlainEvent
from fs_crm.vocab import COMMAND_REPLY, EVENT_PLAIN

# fs_crm/sim/captures: this package sits next to it.
CAPTURES_DIR = Path(__file__).resolve().parent.parent / "captures"


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

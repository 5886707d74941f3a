"""ESL wire parsing (pure): bytes from the socket in, frames and events out. No I/O, no clock.

Why not greenswitch's parser: it URL-decodes a whole event before splitting lines (an encoded
newline in a caller name then forges headers), glues an event's body onto its inner
Content-Length header, and reads each line through a file object, which is slow. Here a frame is
split first, each value is decoded on its own and only when somebody reads it, duplicate headers
are kept, and the inner body is separated.

Plain events are indexed by the C extension fs_crm.freeswitch._eslindex when it was built (see setup.py):
parsing ~200 lines into Python strings was most of the cost of ingestion, and the tracker reads a
dozen of them. parse_event_plain_python does exactly the same in pure Python; tests hold the two
to the same results on every captured event and on random damage to them.
"""

from __future__ import annotations

import json
from typing import Iterator
from urllib.parse import unquote

from fs_crm import vocab

try:
    from fs_crm.freeswitch import _eslindex
except ImportError:  # installed where it could not be compiled: the pure-Python parser does the same
    _eslindex = None

# A frame header block longer than this is not FreeSWITCH talking: resynchronising is impossible,
# so the caller drops the connection instead of buffering forever.
MAX_HEADER_BYTES = 64 * 1024
# FreeSWITCH events with full channel variables are ~8 KB; XML CDR bodies can reach a few hundred KB.
MAX_BODY_BYTES = 16 * 1024 * 1024
_MAX_LENGTH_DIGITS = len(str(MAX_BODY_BYTES))


class FrameError(Exception):
    """The byte stream cannot be framed any more (bad Content-Length, runaway header block)."""


class EventParseError(Exception):
    """One event body is unusable; the stream itself is still in sync."""


def parse_content_length(text: str, limit: int = MAX_BODY_BYTES) -> int:
    """A Content-Length value: 1 to 8 ASCII digits [0-9], at most `limit`; FrameError otherwise.

    str.isdigit() alone is not enough: it accepts '²', which int() then refuses (a traceback), and
    Arabic-Indic '١٢', which int() reads as 12 (the stream is cut at the wrong place). The digit
    count is checked before int() so a huge value costs nothing. The fake FreeSWITCH uses this same
    rule for what clients send it, so the two sides of the tests cannot disagree on framing.
    """
    if not (text.isascii() and text.isdigit() and len(text) <= _MAX_LENGTH_DIGITS):
        raise FrameError("bad Content-Length %r: not 1 to %d ASCII digits" % (text[:40], _MAX_LENGTH_DIGITS))
    length = int(text)
    if length > limit:
        raise FrameError("bad Content-Length %r: over the %d byte limit" % (text, limit))
    return length


class Frame:
    """One outer ESL message: framing headers (never URL-encoded) and the raw body bytes."""

    __slots__ = ("headers", "body")

    def __init__(self, headers: dict[str, str], body: bytes):
        self.headers = headers
        self.body = body

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    def __repr__(self) -> str:
        return "Frame(%r, %d body bytes)" % (self.headers, len(self.body))


class FrameReader:
    """Incremental framer: feed it whatever recv() returned, get back complete frames."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pending_headers: dict[str, str] | None = None
        self._pending_length = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        buf = self._buf
        pos = 0
        while True:
            if self._pending_headers is None:
                end = buf.find(b"\n\n", pos)
                if end < 0:
                    if len(buf) - pos > MAX_HEADER_BYTES:
                        raise FrameError("no end of frame headers after %d bytes" % (len(buf) - pos))
                    break
                if end == pos:  # stray blank line between frames: FreeSWITCH never sends one, skip it
                    pos += 1
                    continue
                headers = _parse_outer_headers(bytes(buf[pos:end]))
                pos = end + 2
                length_text = headers.get("Content-Length")
                if length_text is None:
                    frames.append(Frame(headers, b""))
                    continue
                try:
                    length = parse_content_length(length_text)
                except FrameError as exc:
                    # Not the whole header dict: it holds the bad value, which may be 64 KB long.
                    raise FrameError("%s (frame of Content-Type %r)" % (exc, headers.get("Content-Type", "")[:80])) from None
                self._pending_headers, self._pending_length = headers, length
            if len(buf) - pos < self._pending_length:
                break
            body = bytes(buf[pos:pos + self._pending_length])
            pos += self._pending_length
            frames.append(Frame(self._pending_headers, body))
            self._pending_headers = None
        if pos:
            del buf[:pos]
        return frames


def _parse_outer_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.decode("utf-8", "replace").split("\n"):
        name, sep, value = line.partition(":")
        if not sep:
            raise FrameError("frame header line without a colon: %r" % line[:200])
        headers.setdefault(name.strip(), value.strip())
    return headers


class Event:
    """A FreeSWITCH event: `get`, `[]`, `in`, `get_all`, `names` and `body` come from the two
    implementations below (the C index for plain events, or dicts); what is built on them is here."""

    __slots__ = ()

    @property
    def name(self) -> str:
        """Event-Name, or the subclass for CUSTOM events (what a subscription names)."""
        name = self.get(vocab.H_EVENT_NAME) or ""
        if name == "CUSTOM":
            return self.get(vocab.H_EVENT_SUBCLASS) or name
        return name

    def int(self, name: str, default: int = 0) -> int:
        value = self.get(name)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            return default

    def __repr__(self) -> str:
        return "Event(%s %s)" % (self.name, self.get(vocab.H_UNIQUE_ID) or "")


class DictEvent(Event):
    """An event held in dicts: JSON events, and plain events where the C index is not built.
    Plain values are URL-decoded one at a time, on first access."""

    __slots__ = ("_raw", "_decoded", "_multi", "_body")

    def __init__(self, raw: dict[str, str], multi: dict[str, list[str]] | None = None,
                 body: str | None = None, decoded: bool = False):
        self._raw = raw
        self._decoded: dict[str, str] = raw if decoded else {}
        self._multi = multi
        self._body = body

    @property
    def body(self) -> str | None:
        """The inner body (BACKGROUND_JOB output, an attached CDR), if the event has one."""
        return self._body

    def get(self, name: str, default: str | None = None) -> str | None:
        try:
            return self._decoded[name]
        except KeyError:
            pass
        raw = self._raw.get(name)
        if raw is None:
            return default
        value = unquote(raw) if "%" in raw else raw
        self._decoded[name] = value
        return value

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def get_all(self, name: str) -> list[str]:
        """Every value of a header that may repeat (Hangup-Cause does in some FreeSWITCH versions)."""
        if self._multi and name in self._multi:
            values = self._multi[name]
            return list(values) if self._decoded is self._raw else [unquote(v) for v in values]
        value = self.get(name)
        return [] if value is None else [value]

    def names(self) -> list[str]:
        return list(self._raw)


if _eslindex is not None:
    class IndexedEvent(_eslindex.Headers, Event):
        """A plain event over the C index of its lines (see _eslindex.c): a value becomes a string
        only when read, so the dozen headers the tracker reads are all that is ever built."""

        __slots__ = ()

        @property
        def body(self) -> str | None:
            return _indexed_body(self)


def _indexed_body(event) -> str | None:
    data, tail = event.data, event.tail
    if tail < 0 or tail >= len(data):
        return None
    length = event.get("Content-Length")
    if length is None:
        return None
    size = _inner_length(length, event.get(vocab.H_EVENT_NAME))
    return data[tail:tail + size].decode("utf-8", "replace")


def parse_event_plain_indexed(data: bytes) -> Event:
    """The body of a `text/event-plain` frame (`Name: url-encoded-value` lines, optional inner
    body), indexed in C."""
    if not data.isascii():
        # Bytes that are not UTF-8 become U+FFFD before indexing, as when the whole event is
        # decoded first: a name read back from names() then finds its value again.
        data = data.decode("utf-8", "replace").encode("utf-8")
    event = IndexedEvent(data)
    if vocab.H_EVENT_NAME not in event:
        raise EventParseError("event without Event-Name (first line %r)"
                              % data[:120].decode("utf-8", "replace").split("\n")[0])
    if event.tail >= 0:
        _indexed_body(event)  # a bad inner Content-Length fails here, as in the pure-Python parser
    return event


def parse_event_plain_python(data: bytes) -> Event:
    """What parse_event_plain_indexed does, in pure Python, for installs without the C index:
    header lines up to the first empty line, each split at its first ": " ("Name:" alone is an
    empty value, other lines are ignored), repeated names keeping every value; the inner body
    after the empty line when there is an inner Content-Length."""
    text = data.decode("utf-8", "replace")
    head, _, tail = text.partition("\n\n") if not text.startswith("\n") else ("", "", text[1:])
    raw: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for line in head.split("\n"):
        name, sep, value = line.partition(": ")
        if not sep:
            if not line.endswith(":"):
                continue
            name, value = line[:-1], ""
        if name in raw:
            multi.setdefault(name, [raw[name]]).append(value)
        else:
            raw[name] = value
    if vocab.H_EVENT_NAME not in raw:
        raise EventParseError("event without Event-Name (first line %r)" % text[:120].split("\n")[0])
    body = _inner_body(tail, raw.get("Content-Length"), raw.get(vocab.H_EVENT_NAME)) if tail else None
    return DictEvent(raw, multi or None, body)


parse_event_plain = parse_event_plain_python if _eslindex is None else parse_event_plain_indexed


def _inner_body(tail: str, length: str | None, event_name: str | None) -> str | None:
    if length is None:
        return None
    size = _inner_length(length, event_name)
    if tail.isascii():
        return tail[:size]
    # Content-Length counts bytes; non-ASCII text has to be cut as bytes.
    return tail.encode("utf-8")[:size].decode("utf-8", "replace")


def _inner_length(length: str, event_name: str | None) -> int:
    # The outer frame was read whole, so the stream is still in sync: only this event is lost.
    try:
        return parse_content_length(length)
    except FrameError as exc:
        raise EventParseError("event %s has a bad inner Content-Length: %s" % (event_name, exc)) from None


def parse_event_json(data: bytes) -> Event:
    """The body of a `text/event-json` frame; values are already decoded, repeats are arrays."""
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise EventParseError("event JSON does not parse: %s" % exc) from None
    if not isinstance(obj, dict) or vocab.H_EVENT_NAME not in obj:
        raise EventParseError("event JSON without Event-Name")
    body = obj.pop("_body", None)
    flat: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for key, value in obj.items():
        if isinstance(value, list):
            values = [str(v) for v in value]
            flat[key] = values[0] if values else ""
            multi[key] = values
        else:
            flat[key] = str(value)
    return DictEvent(flat, multi or None, body if isinstance(body, str) else None, decoded=True)


def parse_event(frame: Frame) -> Event:
    if frame.content_type == vocab.EVENT_JSON:
        return parse_event_json(frame.body)
    return parse_event_plain(frame.body)


def iter_frames(data: bytes) -> Iterator[Frame]:
    """Every complete frame of a recorded stream (tests, tools)."""
    yield from FrameReader().feed(data)

"""ESL wire parsing (pure): bytes from the socket in, frames and events out. No I/O, no clock.

Why not greenswitch's parser: it URL-decodes a whole event before splitting lines (an encoded
newline in a caller name then forges headers), glues an event's body onto its inner
Content-Length header, and reads each line through a file object, which is slow. Here a frame is
split first, each value is decoded on its own and only when somebody reads it, duplicate headers
are kept, and the inner body is separated.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Iterator
from urllib.parse import unquote

from fs_crm import vocab

# A frame header block longer than this is not FreeSWITCH talking: resynchronising is impossible,
# so the caller drops the connection instead of buffering forever.
MAX_HEADER_BYTES = 64 * 1024
# FreeSWITCH events with full channel variables are ~8 KB; XML CDR bodies can reach a few hundred KB.
MAX_BODY_BYTES = 16 * 1024 * 1024


class FrameError(Exception):
    """The byte stream cannot be framed any more (bad Content-Length, runaway header block)."""


class EventParseError(Exception):
    """One event body is unusable; the stream itself is still in sync."""


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
                if not length_text.isdigit() or int(length_text) > MAX_BODY_BYTES:
                    raise FrameError("bad Content-Length %r in frame %r" % (length_text, headers))
                self._pending_headers, self._pending_length = headers, int(length_text)
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
    """A FreeSWITCH event. Values are URL-decoded lazily, one value at a time, on first access.

    Channel variables are most of an event's ~200 lines and the tracker needs them on few events,
    so the lines from the first `variable_` on are split only when a header not found before them
    is asked for.
    """

    __slots__ = ("_raw", "_rest", "_decoded", "_multi", "_body")

    def __init__(self, raw: dict[str, str], multi: dict[str, list[str]] | None = None,
                 body: str | None = None, decoded: bool = False, rest: str | None = None):
        self._raw = raw
        self._rest = rest  # the channel variables and anything after them, not split yet
        self._decoded: dict[str, str] = raw if decoded else {}
        self._multi = multi
        self._body = body

    @property
    def body(self) -> str | None:
        """The inner body (BACKGROUND_JOB output, an attached CDR), if the event has one."""
        if self._rest is not None:
            self._parse_rest()
        return self._body

    def _parse_rest(self) -> None:
        rest, self._rest = self._rest, None
        head, tail = _split_head(rest)
        more, multi = _parse_block(head)
        for name in more.keys() & self._raw.keys():  # repeated across the two parts: the first wins
            self._multi = self._multi or {}
            self._multi.setdefault(name, [self._raw[name]]).extend((multi or {}).get(name, [more[name]]))
            del more[name]
        self._raw.update(more)
        for name, values in (multi or {}).items():
            if self._multi is None or name not in self._multi:
                self._multi = self._multi or {}
                self._multi[name] = values
        if tail:
            self._body = _inner_body(tail, self._raw.get("Content-Length"), self._raw.get(vocab.H_EVENT_NAME))

    def get(self, name: str, default: str | None = None) -> str | None:
        try:
            return self._decoded[name]
        except KeyError:
            pass
        raw = self._raw.get(name)
        if raw is None:
            if self._rest is None:
                return default
            self._parse_rest()
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
        if self._rest is not None:
            self._parse_rest()
        if self._multi and name in self._multi:
            values = self._multi[name]
            return list(values) if self._decoded is self._raw else [unquote(v) for v in values]
        value = self.get(name)
        return [] if value is None else [value]

    def names(self) -> list[str]:
        if self._rest is not None:
            self._parse_rest()
        return list(self._raw)

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


def parse_event_plain(data: bytes) -> Event:
    """The body of a `text/event-plain` frame: `Name: url-encoded-value` lines, optional inner body."""
    text = data.decode("utf-8", "replace")
    cut = text.find("\nvariable_")
    # An inner Content-Length before the first variable means a body starts there, and the body
    # (an api command's output, say) may hold "variable_" lines itself: then parse it all at once.
    if cut >= 0 and text.find("\nContent-Length: ", 0, cut) < 0:
        raw, multi = _parse_block(text[:cut])
        event = Event(raw, multi, rest=text[cut + 1:])
    else:
        head, tail = _split_head(text)
        raw, multi = _parse_block(head)
        event = Event(raw, multi)
        if tail:
            event._body = _inner_body(tail, raw.get("Content-Length"), raw.get(vocab.H_EVENT_NAME))
    if vocab.H_EVENT_NAME not in raw:
        raise EventParseError("event without Event-Name (first line %r)" % text[:120].split("\n")[0])
    return event


def _split_head(text: str) -> tuple[str, str]:
    """Header lines, and whatever follows the blank line that ends them."""
    if text.endswith("\n\n") and "\nContent-Length: " not in text:
        return text[:-2], ""  # the common case, without searching for a blank line
    split = text.find("\n\n")
    if split < 0:
        return text.rstrip("\n"), ""
    return text[:split], text[split + 2:]


def _inner_body(tail: str, length: str | None, event_name: str | None) -> str | None:
    if length is None:
        return None
    if not length.isdigit():
        raise EventParseError("event %s has a bad inner Content-Length %r" % (event_name, length))
    size = int(length)
    if tail.isascii():
        return tail[:size]
    # Content-Length counts bytes; non-ASCII text has to be cut as bytes.
    return tail.encode("utf-8")[:size].decode("utf-8", "replace")


def _parse_block(text: str) -> tuple[dict[str, str], dict[str, list[str]] | None]:
    if not text:
        return {}, None
    # Fast path, all in C: ": " only ever separates a name from its value, because FreeSWITCH
    # URL-encodes ':' and ' ' inside values; so joining the lines with ": " and splitting once
    # gives name, value, name, value... A line without ": " or a repeated header breaks the
    # count and takes the careful path.
    lines = text.count("\n") + 1
    parts = text.replace("\n", ": ").split(": ")
    if len(parts) == 2 * lines:
        names, values = parts[0::2], parts[1::2]
        raw = dict(zip(names, values, strict=True))
        if len(raw) == lines:
            return raw, None
        # Repeated headers (Hangup-Cause on every CHANNEL_HANGUP_COMPLETE): built backwards the
        # first value wins, and only the repeated names are collected.
        repeated = {name for name, count in Counter(names).items() if count > 1}
        multi: dict[str, list[str]] = {}
        for name, value in zip(names, values, strict=True):
            if name in repeated:
                multi.setdefault(name, []).append(value)
        return dict(zip(reversed(names), reversed(values), strict=True)), multi
    return _parse_lines_slowly(text.split("\n"))


def _parse_lines_slowly(lines: list[str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    raw: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for line in lines:
        name, sep, value = line.partition(": ")
        if not sep:
            # "Name:" with an empty value is legal; anything else is noise we keep out of the headers.
            if line.endswith(":"):
                name, value = line[:-1], ""
            else:
                continue
        if name in raw:
            multi.setdefault(name, [raw[name]]).append(value)
        else:
            raw[name] = value
    return raw, multi


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
    return Event(flat, multi or None, body if isinstance(body, str) else None, decoded=True)


def parse_event(frame: Frame) -> Event:
    if frame.content_type == vocab.EVENT_JSON:
        return parse_event_json(frame.body)
    return parse_event_plain(frame.body)


def iter_frames(data: bytes) -> Iterator[Frame]:
    """Every complete frame of a recorded stream (tests, tools)."""
    yield from FrameReader().feed(data)

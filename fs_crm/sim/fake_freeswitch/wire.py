"""The ESL wire format of the fake FreeSWITCH: events serialized as switch_event_serialize() writes
them (URL-encoded plain, JSON, XML), their outer framing, command replies, and a client command as
read_packet() reads it."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

from fs_crm.freeswitch.eslparse import FrameError, parse_content_length
from fs_crm.vocab import COMMAND_REPLY, EVENT_PLAIN, H_EVENT_NAME, H_EVENT_SUBCLASS

EVENT_XML = "text/event-xml"  # FreeSWITCH sends it; fs-crm never subscribes to it, so vocab.py has no name for it

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


@dataclass
class _Command:
    """A client command: first line, extra `Name: value` header lines, optional Content-Length body."""

    line: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for n, v in self.headers if n.lower() == lowered), None)

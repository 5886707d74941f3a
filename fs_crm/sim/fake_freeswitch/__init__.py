"""A fake FreeSWITCH speaking the real Event Socket (ESL) wire protocol over TCP, for tests and the demo.

It owns the FreeSWITCH side of the ESL boundary: an inbound listener like mod_event_socket's
port 8021 (auth, api/bgapi, event subscriptions and filters, disconnect notices) and, on request,
outbound-socket sessions like the dialplan `socket` application. Protocol facts come from
FreeSWITCH's mod_event_socket.c ("mes.c", see docs/freeswitch-esl.md section 1) and from the real
streams in captures/pbx/; every place where the fake simplifies says so in a comment.

Events are replayed from captures: `load_capture()` gives the plain-serialized bodies exactly as
FreeSWITCH 1.11 sent them, `renumber_call()` turns one recorded call into many distinct ones, and
`FakeFreeswitch.play()` delivers them to every client whose subscription wants them.

By job: `wire` (event serialization and framing), `replay` (captured streams, renumbered calls),
`protocol` (mod_event_socket's fixed words), `session` (one ESL socket: queue, send lock, reading
commands, subscription matching) with `commands` (mes.c parse_command), its two roles `inbound`
(clients of port 8021) and `outbound` (the `socket` application's calls and their applications),
`channels` (the `show channels` table) and `switch` (FakeFreeswitch itself).
"""

from fs_crm.sim.fake_freeswitch.outbound import OutboundCall, SessionApp
from fs_crm.sim.fake_freeswitch.replay import (
    capture_path,
    load_capture,
    load_connect_reply,
    renumber_call,
    with_recording_mark,
)
from fs_crm.sim.fake_freeswitch.switch import FakeFreeswitch
from fs_crm.sim.fake_freeswitch.wire import PlainEvent, frame_event, serialize_event, url_decode, url_encode

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
    "with_recording_mark",
]

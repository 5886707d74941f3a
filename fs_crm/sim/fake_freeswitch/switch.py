"""The fake FreeSWITCH itself: its ESL port, its inbound clients and outbound calls, replaying events
to the subscriptions that want them, the events it makes, and its api/bgapi commands."""

from __future__ import annotations

import email.utils
import itertools
import json
import logging
import socket
import time
from collections.abc import Callable, Iterable

import gevent
import gevent.pool
import gevent.server
import gevent.socket

from fs_crm.sim import wait_for
from fs_crm.sim.fake_freeswitch.channels import CHANNEL_COLUMNS, _channel_row, _update_row
from fs_crm.sim.fake_freeswitch.inbound import _InboundConnection
from fs_crm.sim.fake_freeswitch.outbound import OutboundCall
from fs_crm.sim.fake_freeswitch.protocol import GOODBYE, SHUTDOWN_MESSAGE
from fs_crm.sim.fake_freeswitch.wire import PlainEvent, frame_event, serialize_event
from fs_crm.vocab import (
    API_RESPONSE,
    BACKGROUND_JOB,
    CHANNEL_CREATE,
    CHANNEL_DESTROY,
    H_EVENT_NAME,
    H_EVENT_SUBCLASS,
    H_EVENT_TIMESTAMP,
    H_JOB_UUID,
    H_UNIQUE_ID,
)

logger = logging.getLogger(__name__)


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

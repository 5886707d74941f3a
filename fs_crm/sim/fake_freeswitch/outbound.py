"""The outbound role of the fake FreeSWITCH: one call the dialplan `socket` application hands to an app,
and the applications the app runs on it with sendmsg (queued, event-locked, long ones ended by the test)."""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fs_crm.freeswitch.eslparse import FrameError
from fs_crm.sim.fake_freeswitch.protocol import GOODBYE
from fs_crm.sim.fake_freeswitch.replay import _strip_reply_tail
from fs_crm.sim.fake_freeswitch.session import _Listener
from fs_crm.sim.fake_freeswitch.wire import PlainEvent, url_encode
from fs_crm.vocab import COMMAND_REPLY, DISCONNECT_NOTICE, H_UNIQUE_ID

if TYPE_CHECKING:
    from fs_crm.sim.fake_freeswitch.switch import FakeFreeswitch
    from fs_crm.sim.fake_freeswitch.wire import _Command

logger = logging.getLogger(__name__)

# An outbound session waits this long for the app's first command (read_packet(listener, &ievent, 25)).
FIRST_COMMAND_TIMEOUT = 25.0

# Applications that keep the channel until something ends them: the test (OutboundCall.finish_app),
# a hangup, or a sendmsg sent without event-lock. Every other application completes as it starts.
LONG_APPS = frozenset({"bridge", "playback", "endless_playback", "sleep", "park", "echo", "conference", "fifo",
                       "callcenter", "voicemail", "read", "play_and_get_digits", "record", "gentones", "ivr"})
# How an application on an outbound session ended (SessionApp.ended).
APP_DONE = "done"
APP_INTERRUPTED = "interrupted"
APP_HANGUP = "hangup"


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


def _switch_true(value: str | None) -> bool:
    """switch_true(): yes/on/true/t/enabled/active/allow, or a non-zero number."""
    if not value:
        return False
    text = value.strip().lower()
    if text in ("yes", "on", "true", "t", "enabled", "active", "allow"):
        return True
    return text.lstrip("-").isdigit() and int(text) != 0

"""The commands a client of the fake FreeSWITCH may send, as mes.c parse_command() runs them: auth,
api/bgapi, event/nixevent/noevents, filter, myevents, sendmsg, sendevent, log, linger and the rest."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from fs_crm.sim.fake_freeswitch.protocol import ALL, CUSTOM, EVENT_NAMES, MYEVENTS
from fs_crm.vocab import H_EVENT_SUBCLASS, H_JOB_UUID

if TYPE_CHECKING:
    from fs_crm.sim.fake_freeswitch.wire import _Command

# switch_log_str2level(), for the `log` command.
_LOG_LEVELS = {"console": 0, "alert": 1, "crit": 2, "err": 3, "error": 3, "warning": 4, "notice": 5,
               "info": 6, "debug": 7}


class _Commands:
    """mes.c parse_command(), mixed into _Listener (session.py), whose state these commands read and set.

    `_parse_command` tries them in mes.c's order and returns (reply, keep running): reply None =
    nothing to send, "" = the default "-ERR command not found". The hooks `_connect`, `_getvar`,
    `_on_message` and `_full_control` are what an outbound session (outbound.py) does differently.
    """

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

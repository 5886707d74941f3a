"""`fs-crm demo`: the real service against a simulated FreeSWITCH and retailCRM, on embedded defaults.

The simulated FreeSWITCH speaks the real ESL wire protocol and replays calls recorded on a real
FreeSWITCH 1.11 (fs_crm/sim/captures/pbx), renumbered and moved to the present so each is a fresh
call, and recorded as conf/freeswitch/recording.xml records them: only once somebody answered. The
simulated retailCRM checks requests as the real one does. At the end it prints what the CRM
received, one line per call saying why it looks as it does, and an excerpt of fs-crm's own log.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import gevent.select
import requests

from fs_crm import vocab
from fs_crm.calls.history_mapping import local_time
from fs_crm.config import AccountConfig, parse_config
from fs_crm.logformat import formatter
from fs_crm.service import Service
from fs_crm.sim import free_port
from fs_crm.sim.calls import captured, first_leg, fresh_call, header, with_recording
from fs_crm.sim.config import sim_config
from fs_crm.sim.fake_crm import FakeCrm
from fs_crm.sim.fake_freeswitch import FakeFreeswitch

logger = logging.getLogger(__name__)

DEMO_KEY = "demo-api-key"
DEMO_CLIENT_ID = "demo-client-id"
LINGER = 45  # seconds the recording URL stays playable when run from a terminal
# (capture, what a person sees) in the order they are played.
DEMO_CALLS = (
    ("in_answered_ringgroup", "customer calls shop1; ring group 100+200; 200 answers"),
    ("in_missed", "customer calls shop1; nobody answers; the customer gives up"),
    ("out_answered", "manager 100 calls the customer; answered"),
    ("out_busy", "manager 100 calls the customer; busy"),
    ("in_busy", "customer calls shop2; extension 300 is busy"),
    ("internal", "100 calls 200 (internal: not a CRM call)"),
)
# What happened on the PBX that makes each call look as it does in the CRM. The rest of its line
# (cards, history, recording) is read from what the simulated CRM received, never assumed.
WHY = {
    "in_answered_ringgroup": "answered by 200 while 100 rang too",
    "in_missed": "missed: 100 and 200 rang, the customer gave up before anybody answered",
    "out_answered": "outgoing, answered: 100 dialled the customer, who picked up",
    "out_busy": "outgoing, busy: the carrier said the customer's line was busy (486)",
    "in_busy": "busy: shop2's number rings 300, whose phone refused the call (486), so it never rang",
    "internal": "internal: 100 called 200, no customer on the line, so not a CRM call",
}
# The daemon's loggers; the simulators log under fs_crm.sim and are not the daemon.
DAEMON_LOGGERS = ("fs_crm", "recordings")
LOG_EXCERPT_LINES = 16


def demo_config(fs: FakeFreeswitch, crm: FakeCrm, state_dir: Path, http_port: int):
    table = sim_config(fs.host, fs.port, crm.url, state_dir, api_key=DEMO_KEY, account="demo-shop",
                       client_id=DEMO_CLIENT_ID, http_port=http_port, retry_min_delay=0.2, retry_max_delay=2.0,
                       storage={"backend": "local", "directory": str(state_dir / "recordings")})
    return parse_config("<demo defaults>", table, env={})


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    line = "  ".join("%-*s" % (w, h) for w, h in zip(widths, headers, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join("%-*s" % (w, c) for w, c in zip(widths, row, strict=True)) for row in rows]
    return "\n".join("  " + r.rstrip() for r in out)


def _received(service: Service) -> int:
    conn = service.listener.connection
    return conn.events_received if conn is not None else 0


class _LogLines(logging.Handler):
    """The daemon's log records of the demo, formatted as `fs-crm run` writes them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(formatter("text"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(("fs_crm.sim", __name__)):
            self.lines.append(self.format(record))


@contextlib.contextmanager
def _daemon_log() -> Iterator[_LogLines]:
    """Keep the daemon's INFO lines while stderr still shows only the level the user asked for."""
    kept = _LogLines()
    root = logging.getLogger()
    asked = root.getEffectiveLevel()

    def as_asked(record: logging.LogRecord) -> bool:
        return record.levelno >= asked

    loggers = [logging.getLogger(name) for name in DAEMON_LOGGERS]
    levels = [each.level for each in loggers]
    for handler in root.handlers:
        handler.addFilter(as_asked)
    for each in loggers:
        each.setLevel(min(asked, logging.INFO))
        each.addHandler(kept)
    try:
        yield kept
    finally:
        for each, level in zip(loggers, levels, strict=True):
            each.removeHandler(kept)
            each.setLevel(level)
        for handler in root.handlers:
            handler.removeFilter(as_asked)


def run_demo(timeout: float = 45.0) -> int:
    port = free_port()
    crm = FakeCrm(api_keys={DEMO_KEY: "demo-shop"}, known_codes={"100", "200", "300"},
                  known_sites={"shop1", "shop2"}).start()
    fs = FakeFreeswitch().start()
    with tempfile.TemporaryDirectory(prefix="fs-crm-demo-") as state, _daemon_log() as log:
        config = demo_config(fs, crm, Path(state), port)
        account = config.accounts[0]
        service = Service(config)
        service.start()
        try:
            print("fs-crm demo: simulated FreeSWITCH on %s:%d, simulated retailCRM on %s" % (fs.host, fs.port, crm.url))
            if not fs.wait_subscribed(timeout=10):
                print("FAILED: fs-crm did not connect to the simulated FreeSWITCH")
                return 1
            first_line = len(log.lines)
            number_of, ok = _play_calls(fs, crm, service, account, Path(state), timeout)
            _print_what_the_crm_got(crm, number_of, account)
            playback = _play_recording(crm, number_of)
            _print_log_excerpt(log.lines[first_line:])
            code = _verdict(crm, ok, timeout)
            if code == 0 and playback and sys.stdin.isatty():
                print("\nThe recording URL above plays while the demo runs (open it in a browser, or:\n"
                      "  curl -o call.wav '%s')\nPress Enter to finish (or wait %d s)." % (playback, LINGER))
                _wait_for_enter(LINGER)
            return code
        finally:
            service.stop()
            fs.stop()
            crm.stop()


def _play_calls(fs: FakeFreeswitch, crm: FakeCrm, service: Service, account: AccountConfig, state: Path,
                timeout: float) -> tuple[dict[str, int], bool]:
    """Play DEMO_CALLS one at a time, so the tables read as a story: every event in, the call
    finished, its history delivered and its cards sent. Returns {externalId: call number}, all done."""
    # One call a minute over the last few minutes, so the times read as a story; fs-crm still gets
    # every event now, and cards go out as fast as live (their age counts from when fs-crm read them).
    # FreeSWITCH records external calls as recording.xml says: only once somebody answered.
    first_minute = (int(time.time()) // 60 - len(DEMO_CALLS) - 1) * 60
    calls = []
    for number, (scenario, _) in enumerate(DEMO_CALLS, start=1):
        call = fresh_call(scenario, "demo-%d" % number, starts_at=_minute(first_minute + 60 * (number - 1), scenario))
        calls.append(with_recording(call, state / "freeswitch-recordings", answer_required=True))
    number_of = {first_leg(call): number for number, call in enumerate(calls, start=1)}
    print("\nThe calls, captured on a real FreeSWITCH and played now through fs-crm one at a time\n"
          "(started: in the account's time zone; id: how fs-crm's log names the call):")
    print(_table([[str(number), "%s %s" % (local_time(int(header(call[0], vocab.H_CREATED_TIME)), account),
                                           account.timezone), first_leg(call)[:8], story]
                  for number, (call, (_, story)) in enumerate(zip(calls, DEMO_CALLS, strict=True), start=1)],
                 ["call", "started", "id", "what happens"]))
    ok = True
    deadline = time.monotonic() + timeout
    played = 0
    for call in calls:
        fs.play(call)
        played += sum(1 for body in call if header(body, vocab.H_EVENT_NAME) in vocab.SUBSCRIBED_EVENTS)
        finished = crm.wait_for(lambda played=played: _received(service) >= played and service.tracker.active_calls() == 0
                                and service.outbox.stats().pending == 0 and service.outbox.stats().held == 0
                                and not service.cards.pool.greenlets,
                                timeout=max(0.1, deadline - time.monotonic()))
        ok = ok and finished
    return number_of, ok


def _minute(epoch: int, scenario: str) -> float:
    """The `starts_at` for fresh_call() that makes the capture's first channel be created in the
    second `epoch`. fresh_call() moves the first event by whole seconds, and that event comes a few
    milliseconds after the channel's creation, so aiming the event at `epoch` could land the call
    in the second before; half a second of margin absorbs float rounding."""
    first = captured(scenario)[0]
    created_us = int(header(first, vocab.H_CREATED_TIME))
    ahead_us = int(header(first, vocab.H_EVENT_TIMESTAMP)) - created_us
    return epoch + (ahead_us + created_us % 1_000_000 + 500_000) / 1e6


def _print_what_the_crm_got(crm: FakeCrm, number_of: dict[str, int], account: AccountConfig) -> None:
    label = lambda payload, key: str(number_of.get(payload.get(key), "?"))  # noqa: E731
    print("\nCall cards the CRM received (POST /api/v5/telephony/call/event):")
    print(_table([[label(e, "callExternalId"), e["type"], e["phone"], ",".join(e.get("codes", [])) or "-",
                   e.get("hangupStatus", "-"), e.get("externalPhone", "-"), e.get("site", "-")] for e in crm.events],
                 ["call", "type", "customer", "extensions", "hangupStatus", "company number", "store"]))
    print("\nCall history the CRM received (POST /api/v5/telephony/calls/upload; `date` is the account's local time):")
    print(_table([[label(c, "externalId"), "%s %s" % (c["date"], account.timezone), c["type"], c["phone"],
                   c.get("code", "-"), str(c.get("userId", "-")), c["result"], "%ss" % c["duration"],
                   "%ss" % c["durationWaiting"], c.get("externalPhone", "-"), c.get("site", "-"),
                   "yes" if c.get("recordUrl") else "-"] for c in crm.calls],
                 ["call", "date", "type", "customer", "ext", "user", "result", "talk", "waited", "company number",
                  "store", "recording"]))
    print("\nWhy each call looks as it does in the CRM:")
    for number, (scenario, _) in enumerate(DEMO_CALLS, start=1):
        cards = [e for e in crm.events if number_of.get(e.get("callExternalId")) == number]
        record = next((c for c in crm.calls if number_of.get(c.get("externalId")) == number), None)
        print("  call %d  %s: %s; %s" % (number, WHY[scenario], _cards_said(cards), _history_said(record)))


def _quoted(value: str) -> str:
    return "'%s'" % value if " " in value else value


def _cards_said(cards: list[dict]) -> str:
    """The call's cards in words: whose cards opened, and how each closed."""
    if not cards:
        return "no card"
    ending: dict[str, str] = {}
    for event in cards:
        for code in event.get("codes", []):
            if event["type"] == "hangup":
                ending[code] = "closed as %s" % _quoted(event.get("hangupStatus", "?"))
            else:
                ending.setdefault(code, "left open")
    groups: dict[str, list[str]] = {}
    for code, end in ending.items():
        groups.setdefault(end, []).append(code)
    if len(groups) == 1:
        (end, codes), = groups.items()
        if len(codes) == 1:
            return "%s's card %s" % (codes[0], end)
        return "cards for %s and %s opened and %s" % (", ".join(codes[:-1]), codes[-1], end)
    (code, end), *others = ending.items()
    # "100's card closed as cancel, 200's as answered"
    return ", ".join(["%s's card %s" % (code, end)] + ["%s's %s" % (other, end.replace("closed as ", "as "))
                                                        for other, end in others])


def _history_said(record: dict | None) -> str:
    """The call's history record in words: result, extension, durations, recording."""
    if record is None:
        return "no history"
    said = [_quoted(record["result"])]
    if record.get("code"):
        said.append(record["code"])
    if record["duration"]:
        said.append("talk %s s" % record["duration"])
    if record["durationWaiting"]:
        said.append("waited %s s" % record["durationWaiting"])
    said.append("recording" if record.get("recordUrl") else "no recording")
    return "history: " + ", ".join(said)


def _play_recording(crm: FakeCrm, number_of: dict[str, int]) -> str | None:
    """Fetch a recordUrl the way the CRM's player does (GET with the module's clientId)."""
    recorded = [c for c in crm.calls if c.get("recordUrl")]
    if not recorded:
        print("\nno call carried a recordUrl")
        return None
    url = "%s?clientId=%s" % (recorded[0]["recordUrl"], DEMO_CLIENT_ID)
    answer = requests.get(url, timeout=5)
    print("\nRecording of call %s, as the CRM's player fetches it:\n  GET %s\n  -> HTTP %d, %s, %d bytes" % (
        number_of.get(recorded[0]["externalId"], "?"), url, answer.status_code, answer.headers.get("Content-Type"), len(answer.content)))
    return url if answer.status_code == 200 else None


def _print_log_excerpt(lines: list[str]) -> None:
    print("\nfs-crm's own log, from the first call to the recording fetch (INFO; stamps in this host's time zone, %s;\n"
          "`fs-crm --log-level INFO demo` writes all of it to stderr):" % time.strftime("%Z"))
    for line in lines[:LOG_EXCERPT_LINES]:
        print("  " + line)
    if len(lines) > LOG_EXCERPT_LINES:
        print("  ... %d more lines" % (len(lines) - LOG_EXCERPT_LINES))


def _verdict(crm: FakeCrm, ok: bool, timeout: float) -> int:
    expected = sum(1 for scenario, _ in DEMO_CALLS if scenario != "internal")
    if not ok or len(crm.calls) != expected:
        print("\nFAILED: the CRM received %d of %d calls within %ss" % (len(crm.calls), expected, timeout))
        return 1
    # recording.xml records only once somebody answered: a recording on any other call would mislead.
    wrong = [c["externalId"] for c in crm.calls if bool(c.get("recordUrl")) != (c["result"] == vocab.RESULT_ANSWERED)]
    if wrong:
        print("\nFAILED: recordings on calls nobody answered, or missing on answered ones: %s" % ", ".join(wrong))
        return 1
    print("\nOK: %d calls in the CRM history and %d call cards; call 6 was internal and stayed out of the CRM."
          % (len(crm.calls), len(crm.events)))
    return 0


def _wait_for_enter(timeout: float) -> None:
    ready = gevent.select.select([sys.stdin], [], [], timeout)[0]
    if ready:
        sys.stdin.readline()

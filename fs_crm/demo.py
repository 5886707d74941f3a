"""`fs-crm demo`: the real service against a simulated FreeSWITCH and retailCRM, on embedded defaults.

The simulated FreeSWITCH speaks the real ESL wire protocol and replays calls recorded on a real
FreeSWITCH 1.11 (fs_crm/sim/captures/pbx), renumbered and moved to the present so each is a fresh
call; the simulated retailCRM checks requests as the real one does. At the end it prints what the
CRM received.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

import gevent.select
import requests

from fs_crm import vocab
from fs_crm.config import parse_config
from fs_crm.service import Service
from fs_crm.sim import free_port
from fs_crm.sim.calls import first_leg, fresh_call, header, with_recording
from fs_crm.sim.config import sim_config
from fs_crm.sim.fake_crm import FakeCrm
from fs_crm.sim.fake_freeswitch import FakeFreeswitch

logger = logging.getLogger(__name__)

DEMO_KEY = "demo-api-key"
DEMO_CLIENT_ID = "demo-client-id"
# (capture, what a person sees) in the order they are played.
LINGER = 45  # seconds the recording URL stays playable when run from a terminal
DEMO_CALLS = (
    ("in_answered_ringgroup", "customer calls shop1; ring group 100+200; 200 answers"),
    ("in_missed", "customer calls shop1; nobody answers; the customer gives up"),
    ("out_answered", "manager 100 calls the customer; answered"),
    ("out_busy", "manager 100 calls the customer; busy"),
    ("in_busy", "customer calls shop2; extension 300 is busy"),
    ("internal", "100 calls 200 (internal: not a CRM call)"),
)


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
    return "\n".join("  " + r for r in out)


def _received(service: Service) -> int:
    conn = service.listener.connection
    return conn.events_received if conn is not None else 0


def run_demo(timeout: float = 45.0) -> int:
    port = free_port()
    crm = FakeCrm(api_keys={DEMO_KEY: "demo-shop"}, known_codes={"100", "200", "300"},
                  known_sites={"shop1", "shop2"}).start()
    fs = FakeFreeswitch().start()
    number_of: dict[str, int] = {}
    ok = True
    with tempfile.TemporaryDirectory(prefix="fs-crm-demo-") as state:
        service = Service(demo_config(fs, crm, Path(state), port))
        service.start()
        try:
            print("fs-crm demo: simulated FreeSWITCH on %s:%d, simulated retailCRM on %s\n" % (fs.host, fs.port, crm.url))
            if not fs.wait_subscribed(timeout=10):
                print("FAILED: fs-crm did not connect to the simulated FreeSWITCH")
                return 1
            deadline = time.monotonic() + timeout
            played = 0
            for number, (scenario, story) in enumerate(DEMO_CALLS, start=1):
                call = fresh_call(scenario, "demo-%d" % number)
                # FreeSWITCH "records" external calls: a real recording is where RECORD_STOP says.
                call = with_recording(call, Path(state) / "freeswitch-recordings")
                number_of[first_leg(call)] = number
                print("  call %d: %s" % (number, story))
                fs.play(call)
                played += sum(1 for body in call if header(body, "Event-Name") in vocab.SUBSCRIBED_EVENTS)
                # One call at a time, so the tables below read as a story: every event in, the call
                # finished, its history delivered and its cards sent.
                finished = crm.wait_for(lambda played=played: _received(service) >= played and service.tracker.active_calls() == 0
                                        and service.outbox.stats().pending == 0 and service.outbox.stats().held == 0
                                        and not service.cards.pool.greenlets,
                                        timeout=max(0.1, deadline - time.monotonic()))
                ok = ok and finished
            playback = _play_recording(crm, number_of)
            if playback and sys.stdin.isatty():
                print("\nThe recording URL above plays while the demo runs (open it in a browser, or:\n"
                      "  curl -o call.wav '%s')\nPress Enter to finish (or wait %d s)." % (playback, LINGER))
                _wait_for_enter(LINGER)
        finally:
            service.stop()
            fs.stop()
            crm.stop()

    expected = sum(1 for scenario, _ in DEMO_CALLS if scenario != "internal")
    label = lambda payload, key: str(number_of.get(payload.get(key), "?"))  # noqa: E731
    print("\nCall cards the CRM received (POST /api/v5/telephony/call/event):")
    print(_table([[label(e, "callExternalId"), e["type"], e["phone"], ",".join(e.get("codes", [])),
                   e.get("hangupStatus", ""), e.get("externalPhone", ""), e.get("site", "")] for e in crm.events],
                 ["call", "type", "customer", "extensions", "hangupStatus", "company number", "store"]))
    print("\nCall history the CRM received (POST /api/v5/telephony/calls/upload):")
    print(_table([[label(c, "externalId"), c["date"], c["type"], c["phone"], c.get("code", "-"),
                   str(c.get("userId", "-")), c["result"], "%ss" % c["duration"], "%ss" % c["durationWaiting"],
                   c.get("externalPhone", ""), c.get("site", ""), "yes" if c.get("recordUrl") else "-"]
                  for c in crm.calls],
                 ["call", "date", "type", "customer", "ext", "user", "result", "talk", "waited", "company number",
                  "store", "recording"]))
    if not ok or len(crm.calls) != expected:
        print("\nFAILED: the CRM received %d of %d calls within %ss" % (len(crm.calls), expected, timeout))
        return 1
    print("\nOK: %d calls in the CRM history and %d call cards; call 6 was internal and stayed out of the CRM."
          % (len(crm.calls), len(crm.events)))
    return 0


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


def _wait_for_enter(timeout: float) -> None:
    ready = gevent.select.select([sys.stdin], [], [], timeout)[0]
    if ready:
        sys.stdin.readline()

"""`fs-crm demo`: the real service against a simulated FreeSWITCH and retailCRM, on embedded defaults.

The simulated FreeSWITCH speaks the real ESL wire protocol and replays calls recorded on a real
FreeSWITCH 1.11 (fs_crm/sim/captures/pbx), renumbered and moved to the present so each is a fresh
call; the simulated retailCRM checks requests as the real one does. At the end it prints what the
CRM received.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from fs_crm import vocab
from fs_crm.config import parse_config
from fs_crm.service import Service
from fs_crm.sim.fake_crm import FakeCrm
from fs_crm.sim.fake_freeswitch import FakeFreeswitch, capture_path, load_capture, renumber_call

logger = logging.getLogger(__name__)

DEMO_KEY = "demo-api-key"
# (capture, what a person sees) in the order they are played.
DEMO_CALLS = (
    ("in_answered_ringgroup", "customer calls shop1; ring group 100+200; 200 answers"),
    ("in_missed", "customer calls shop1; nobody answers; the customer gives up"),
    ("out_answered", "manager 100 calls the customer; answered"),
    ("out_busy", "manager 100 calls the customer; busy"),
    ("in_busy", "customer calls shop2; extension 300 is busy"),
    ("internal", "100 calls 200 (internal: not a CRM call)"),
)


def demo_config(fs: FakeFreeswitch, crm: FakeCrm, state_dir: Path):
    return parse_config("<demo defaults>", {
        "freeswitch": {"host": fs.host, "port": fs.port, "password": "ClueCon",
                       "reconnect_min_delay": 0.1, "reconnect_max_delay": 1.0},
        "http": {"listen": "127.0.0.1:0", "public_url": "http://127.0.0.1:8090"},
        "state": {"dir": str(state_dir)},
        "delivery": {"retry_min_delay": 0.2, "retry_max_delay": 2.0},
        "accounts": [{
            "name": "demo-shop", "crm_url": crm.url, "api_key": DEMO_KEY, "client_id": "demo-client-id",
            "domain": "pbx.test", "timezone": "Europe/Moscow",
            "extensions": {"1": "100", "2": "200", "3": "300"},
            "external_phones": {"shop1": "+74999999999", "shop2": "+74998888888"},
        }],
    }, env={})


def _fresh(scenario: str, seed: int) -> list[bytes]:
    bodies = load_capture(capture_path(scenario))
    first = next(int(line.split(b": ", 1)[1]) for line in bodies[0].split(b"\n")
                 if line.startswith(b"Event-Date-Timestamp: "))
    shift_us = (int(time.time() * 1e6) - first) // 1_000_000 * 1_000_000  # whole seconds: *_epoch vars stay true
    return renumber_call(bodies, seed="demo-%d" % seed, time_shift_us=shift_us)


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    line = "  ".join("%-*s" % (w, h) for w, h in zip(widths, headers, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join("%-*s" % (w, c) for w, c in zip(widths, row, strict=True)) for row in rows]
    return "\n".join("  " + r for r in out)


def _first_leg(bodies: list[bytes]) -> str:
    return next(line.split(b": ", 1)[1].decode() for line in bodies[0].split(b"\n")
                if line.startswith(b"Unique-ID: "))


def _event_name(body: bytes) -> str:
    start = body.find(b"Event-Name: ") + len(b"Event-Name: ")
    return body[start:body.find(b"\n", start)].decode()


def _received(service: Service) -> int:
    conn = service.listener.connection
    return conn.events_received if conn is not None else 0


def run_demo(timeout: float = 45.0) -> int:
    crm = FakeCrm(api_keys={DEMO_KEY: "demo-shop"}, known_codes={"100", "200", "300"},
                  known_sites={"shop1", "shop2"}).start()
    fs = FakeFreeswitch().start()
    number_of: dict[str, int] = {}
    ok = True
    with tempfile.TemporaryDirectory(prefix="fs-crm-demo-") as state:
        service = Service(demo_config(fs, crm, Path(state)))
        service.start()
        try:
            print("fs-crm demo: simulated FreeSWITCH on %s:%d, simulated retailCRM on %s\n" % (fs.host, fs.port, crm.url))
            if not fs.wait_subscribed(timeout=10):
                print("FAILED: fs-crm did not connect to the simulated FreeSWITCH")
                return 1
            deadline = time.monotonic() + timeout
            played = 0
            for number, (scenario, story) in enumerate(DEMO_CALLS, start=1):
                call = _fresh(scenario, number)
                number_of[_first_leg(call)] = number
                print("  call %d: %s" % (number, story))
                fs.play(call)
                played += sum(1 for body in call if _event_name(body) in vocab.SUBSCRIBED_EVENTS)
                # One call at a time, so the tables below read as a story: every event in, the call
                # finished, its history delivered and its cards sent.
                finished = crm.wait_for(lambda played=played: _received(service) >= played and service.tracker.active_calls() == 0
                                        and service.outbox.stats().pending == 0 and not service.cards.pool.greenlets,
                                        timeout=max(0.1, deadline - time.monotonic()))
                ok = ok and finished
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
                   c.get("externalPhone", ""), c.get("site", "")] for c in crm.calls],
                 ["call", "date", "type", "customer", "ext", "user", "result", "talk", "waited", "company number",
                  "store"]))
    if not ok or len(crm.calls) != expected:
        print("\nFAILED: the CRM received %d of %d calls within %ss" % (len(crm.calls), expected, timeout))
        return 1
    print("\nOK: %d calls in the CRM history and %d call cards; call 6 was internal and stayed out of the CRM."
          % (len(crm.calls), len(crm.events)))
    return 0

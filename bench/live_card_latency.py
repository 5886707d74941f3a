"""Call-card latency on a real FreeSWITCH: a phone's first ringing event -> the CRM gets the `in` card.

What is measured, per incoming call on the ring group 74999999999 (phones 100 and 200 ring, 200
answers after RING_MS, the customer talks TALK_MS and hangs up):
  (a) fs-crm: from the Event-Date-Timestamp (FreeSWITCH's wall clock, microseconds since the epoch)
      of the ringing event that triggered the `in` card (the first CHANNEL_PROGRESS, _MEDIA or
      ANSWER of a phone's leg, as card_policy picks it) to the moment the fake retailCRM received
      that card (FakeCrm's received_at, time.monotonic(), turned into wall-clock time with an
      offset taken at start);
  (b) FreeSWITCH alone: from the same event's Event-Date-Timestamp to the time.time() at which a
      bare EslClient, subscribed to the same events as fs-crm, had read that frame.
(b) is the floor under (a): what any ESL client waits for FreeSWITCH to write the event. It is
not small: Event-Date-Timestamp comes from FreeSWITCH's cached clock, which its timer thread
advances once a tick (20 ms unless switch.conf sets `1ms-timer`), so the stamp is 0-20 ms old when
the event is made; and an idle ESL connection's thread looks at its event queue only every 20 ms
(switch_poll(..., 20000) in mod_event_socket), another 0-20 ms.

How: a LivePbx (tests/live/pbx.py) in a temp dir, the SIPp phones registered, and in this process
an fs-crm Service with a FakeCrm wired as tests/live/conftest.py's `live` fixture does, plus the
bare client read in a greenlet. Calls are placed one after the other (a SIPp phone answers one call
per process); the first is a warm-up and is not counted: the first channel events after
FreeSWITCH starts can reach an ESL client about half a second late.

Both ends share this process's hub (Service, FakeCrm, the bare reader), and the clocks are the same
machine's, so the figures hold loopback, the HTTP round trip and scheduling here. Figures only.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import unquote  # noqa: E402

import gevent  # noqa: E402
from common import banner, figure, percentile, result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LIVE = REPO / "tests" / "live"
sys.path[:0] = [str(LIVE), str(REPO / "tests")]

from pbx import INSTALL_HINT, EslClient, LivePbx, installed  # noqa: E402

from fs_crm import vocab  # noqa: E402
from fs_crm.calls.card_policy import RINGING_EVENTS  # noqa: E402
from fs_crm.polling import wait_for  # noqa: E402

COMPANY_NUMBER = "74999999999"
CUSTOMER = "79121234567"
RING_MS = 300  # phone 200 rings this long before it answers
TALK_MS = 300  # then the customer talks this long and hangs up
EVENT_PATH = "/api/v5/telephony/call/event"


def load_live_conftest():
    """tests/live/conftest.py under a name of its own (tests/ has a conftest.py too): its
    live_config() and EXTENSIONS wire fs-crm to the live switch exactly as the live tests do."""
    spec = importlib.util.spec_from_file_location("live_conftest", LIVE / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def wall_offset() -> float:
    """time.time() - time.monotonic(), from the tightest of a few paired readings."""
    best = None
    for _ in range(20):
        before = time.monotonic()
        wall = time.time()
        after = time.monotonic()
        if best is None or after - before < best[0]:
            best = (after - before, wall - (before + after) / 2)
    assert best is not None
    return best[1]


def parse_plain(body: bytes) -> dict[str, str]:
    """Headers of a text/event-plain body (values are URL-encoded); the first of a repeated name."""
    headers: dict[str, str] = {}
    for line in body.decode(errors="replace").splitlines():
        if ": " in line:
            name, value = line.split(": ", 1)
            headers.setdefault(name, unquote(value))
    return headers


class BareReader:
    """A bare EslClient subscribed to fs-crm's events; notes every phone-leg ringing event with the
    wall-clock time its frame had been read."""

    def __init__(self, pbx: LivePbx):
        self.client = EslClient("127.0.0.1", pbx.ports.esl)
        self.client.send(vocab.subscribe_command())
        self.ringing: list[tuple[float, dict[str, str]]] = []  # (read at, event headers)
        self.frames = 0
        self._greenlet = gevent.spawn(self._read)

    def _read(self) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            self.client.sock.settimeout(None)
            while True:
                headers, body = self.client._frame()
                read_at = time.time()
                self.client.raw.clear()  # the client keeps every byte for captures; not needed here
                self.frames += 1
                if headers.get("Content-Type") != vocab.EVENT_PLAIN:
                    continue
                event = parse_plain(body)
                # A phone's leg as fs-crm classifies it: outbound, with its own dialed_user.
                if (event.get("Event-Name") in RINGING_EVENTS and event.get(vocab.V_DIALED_USER)
                        and event.get("Call-Direction") == "outbound"):
                    self.ringing.append((read_at, event))

    def stop(self) -> None:
        self._greenlet.kill()
        self.client.close()


def in_cards(crm) -> list[tuple[float, str, tuple[str, ...]]]:
    """(received_at, callExternalId, codes) of every `in` card the fake CRM got, in order."""
    out = []
    for request in list(crm.requests):
        if request.path == EVENT_PATH:
            event = json.loads(request.form.get("event") or "{}")
            if event.get("type") == vocab.EVENT_IN:
                out.append((request.received_at, event.get("callExternalId"), tuple(event.get("codes", ()))))
    return out


def belongs_to(event: dict[str, str], call_id: str) -> bool:
    return call_id in (event.get(vocab.V_ORIGINATING_LEG), event.get(vocab.H_OTHER_LEG_UUID),
                       event.get(vocab.H_CALL_UUID))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30, help="calls measured, after one warm-up call (default 30)")
    args = parser.parse_args(argv)
    if not installed():
        result("live_card_latency skipped: needs FreeSWITCH 1.11 and SIPp (%s)" % INSTALL_HINT)
        return 0

    from sipp import Sipp

    from fs_crm.service import Service
    from fs_crm.sim.fake_crm import FakeCrm

    live = load_live_conftest()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    banner("bench/live_card_latency.py: call-card latency on a real FreeSWITCH (fs-crm in process)",
           "a phone leg's ringing event (its Event-Date-Timestamp) -> `in` card at the fake CRM, and -> a bare "
           "ESL client")
    figure("calls", "%d measured + 1 warm-up (not counted), one at a time, ring group %s"
           % (args.calls, COMPANY_NUMBER))
    figure("each call", "phones 100 + 200 ring, 200 answers after %d ms, customer talks %d ms" % (RING_MS, TALK_MS))

    work = Path(tempfile.mkdtemp(prefix="fs-crm-bench-live-"))
    offset = wall_offset()
    pbx = LivePbx(work / "pbx")
    started = time.monotonic()
    pbx.start()
    phones = Sipp(pbx, work / "sipp")
    crm = service = bare = None
    fs_crm_ms: list[float] = []
    bare_ms: list[float] = []
    problems: list[str] = []
    split: list[str] = []
    clean = False
    try:
        phones.register_all()
        if not wait_for(lambda: pbx.api("show registrations").count("pbx.test") >= len(phones.phone_ports),
                        timeout=10):
            raise SystemExit("the SIPp phones did not register: %s" % pbx.api("show registrations"))
        crm = FakeCrm(api_keys={live.API_KEY: "shop"}, known_codes=set(live.EXTENSIONS.values()),
                      known_sites={"shop1", "shop2"}).start()
        service = Service(live.live_config(pbx, crm, work / "state"))
        bare = BareReader(pbx)
        service.start()
        if not wait_for(lambda: service.listener.connected, timeout=10):
            raise SystemExit("fs-crm did not connect to FreeSWITCH")
        figure("FreeSWITCH up, phones registered, fs-crm connected after", "%.1f s" % (time.monotonic() - started))

        for number in range(args.calls + 1):
            seen_cards, seen_ringing = len(in_cards(crm)), len(bare.ringing)
            parties = [phones.phone("100", "ring"), phones.phone("200", "answer", ring_ms=RING_MS)]
            gevent.sleep(0.1)  # the phones' SIPp processes bind their ports before the INVITEs come
            parties.append(phones.customer_calls(COMPANY_NUMBER, CUSTOMER, talk_ms=TALK_MS))
            for party in reversed(parties):
                party.wait(30)
            if not crm.wait_for(lambda seen=seen_cards: len(in_cards(crm)) > seen, timeout=5):
                problems.append("call %d: no `in` card" % number)
                continue
            if not (wait_for(lambda: not pbx.channels(), timeout=10, interval=0.05)
                    and wait_for(lambda: service.tracker.active_calls() == 0, timeout=10)):
                problems.append("call %d: still up after its parties ended" % number)
            cards = in_cards(crm)[seen_cards:]
            received_at, call_id, codes = cards[0]
            if len(cards) != 1 or sorted(codes) != ["100", "200"]:
                # Not a timing matter, but worth seeing: the README promises one card per ring group.
                split.append("call %d: `in` cards %s" % (number, " + ".join(",".join(c[2]) for c in cards)))
            # The trigger: the first phone-leg ringing event of this call, in stream order (fs-crm
            # reads the same stream in the same order).
            ringing = [r for r in bare.ringing[seen_ringing:] if belongs_to(r[1], call_id)]
            if not ringing:
                problems.append("call %d: the bare client saw no ringing phone leg of %s" % (number, call_id))
                continue
            read_at, event = ringing[0]
            created = int(event[vocab.H_EVENT_TIMESTAMP]) / 1e6
            card_ms = (received_at + offset - created) * 1000
            read_ms = (read_at - created) * 1000
            if number == 0:
                figure("warm-up call (not counted): card / bare client", "%.1f / %.1f ms (%s of %s)"
                       % (card_ms, read_ms, event.get("Event-Name"), event.get(vocab.V_DIALED_USER)))
                continue
            fs_crm_ms.append(card_ms)
            bare_ms.append(read_ms)
        clean = not problems and len(fs_crm_ms) == args.calls
    finally:
        if bare is not None:
            bare.stop()
        phones.stop_all()
        if service is not None:
            service.stop()
        if crm is not None:
            crm.stop()
        pbx.stop()

    print()
    figure("calls measured", "%d of %d" % (len(fs_crm_ms), args.calls))
    for problem in problems[:10]:
        print("    problem: %s" % problem)
    figure("calls whose ring group came as several `in` cards", "%d of %d, warm-up included (measured from the first)"
           % (len(split), args.calls + 1))
    for line in split[:5]:
        print("    %s" % line)
    for label, values in (("(a) fs-crm: ringing event -> `in` card at the CRM", fs_crm_ms),
                          ("(b) FreeSWITCH: ringing event -> bare ESL client read", bare_ms)):
        if values:
            figure(label, "p50 %.1f / p99 %.1f / max %.1f ms"
                   % (percentile(values, 50), percentile(values, 99), max(values)))
    if fs_crm_ms:
        fs_crm_share = [a - b for a, b in zip(fs_crm_ms, bare_ms, strict=True)]
        # Not exactly fs-crm's share: FreeSWITCH serves each ESL connection from its own thread,
        # which looks at its event queue only every 20 ms when idle, so (b) is a sample of the
        # same kind of wait fs-crm had, not the same wait (a single call's difference can be < 0).
        figure("(a) - (b) per call, roughly fs-crm's own share", "p50 %.1f / p99 %.1f / max %.1f ms"
               % (percentile(fs_crm_share, 50), percentile(fs_crm_share, 99), max(fs_crm_share)))
    figure("whole run", "%.0f s" % (time.monotonic() - started))
    if clean:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print("  FreeSWITCH and SIPp logs kept in %s" % work)
    if fs_crm_ms:
        result("live_card_latency: fs-crm card p50 %.1f / p99 %.1f / max %.1f ms, bare ESL client p50 %.1f / "
               "p99 %.1f / max %.1f ms, over %d calls (1 warm-up call not counted); %d ring groups as several `in` cards"
               % (percentile(fs_crm_ms, 50), percentile(fs_crm_ms, 99), max(fs_crm_ms),
                  percentile(bare_ms, 50), percentile(bare_ms, 99), max(bare_ms), len(fs_crm_ms), len(split)))
    else:
        result("live_card_latency FAILED: no card measured")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())

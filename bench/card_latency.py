"""Call-card latency end to end: FreeSWITCH writes a phone's first ringing event -> the CRM gets the card.

What is measured: for each new incoming call, the time from the moment the fake FreeSWITCH handed the
bytes of the call's first extension-leg CHANNEL_PROGRESS frame to the kernel (sendall returned) to
the moment the fake retailCRM started handling the `in` card whose callExternalId is that call's
first leg UUID (FakeCrm's Received.received_at). Both clocks are time.monotonic() of this process.

How: the real service runs as a subprocess (`python -m fs_crm run -c <toml>`, API key from
FS_CRM_ACCOUNT_SHOP_API_KEY, log level INFO as shipped) against a FakeFreeswitch and a FakeCrm on
loopback in this process. First HOLD_CALLS renumbered in_answered_ringgroup calls are played up to
and including their CHANNEL_BRIDGE and never hung up (calls in progress). A history load then runs:
LOAD_CALLS_PER_SECOND other recorded calls (missed, busy, outgoing) are played whole, so uploads keep
happening. Then for WINDOW_SECONDS, NEW_CALLS_PER_SECOND new ring-group calls start: each plays its
events up to the first phone's CHANNEL_PROGRESS at once, then the rest of the call (answer, talk,
hangup) CALL_EVENT_GAP seconds apart, so it also ends and is uploaded. Calls are renumbered before the
window, with timestamps at their planned start (so no card is stale), keeping this process idle.

The figure is an upper bound of fs-crm's own share: it also holds loopback TCP both ways, the
HTTP round trip through requests, and the fake CRM's and fake FreeSWITCH's scheduling in this process.
At the end the service gets SIGTERM and must exit cleanly.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
from common import (  # noqa: E402
    ACCOUNT,
    API_KEY,
    banner,
    config_toml,
    figure,
    log_problems,
    own_cpu_seconds,
    percentile,
    result,
    service_cpu_seconds,
    shut_down,
)

from fs_crm.config import api_key_env_name  # noqa: E402
from fs_crm.sim.calls import captured, first_leg, fresh_call, header  # noqa: E402
from fs_crm.sim.fake_crm import FakeCrm  # noqa: E402
from fs_crm.sim.fake_freeswitch import FakeFreeswitch, frame_event  # noqa: E402

HOLD_CALLS = 100
NEW_CALLS_PER_SECOND = 5
WINDOW_SECONDS = 40
LOAD_CALLS_PER_SECOND = 2
LOAD_SCENARIOS = ("in_missed", "out_answered", "in_busy", "out_busy")
CALL_EVENT_GAP = 0.15  # seconds between a new call's events after its first ringing phone
LOAD_EVENT_GAP = 0.05
WARMUP_SECONDS = 2.0  # history load before the window starts
GOAL_P99_MS = 50.0
EVENT_PATH = "/api/v5/telephony/call/event"
UPLOAD_PATH = "/api/v5/telephony/calls/upload"
SCENARIO = "in_answered_ringgroup"


class _TimedSocket:
    """A client socket of the fake FreeSWITCH that reports each sendall() once it returned."""

    def __init__(self, sock, on_sent):
        self._sock = sock
        self._on_sent = on_sent

    def sendall(self, data, *args) -> None:
        self._sock.sendall(data, *args)
        self._on_sent(data)

    def __getattr__(self, name):
        return getattr(self._sock, name)


class TimedFreeswitch(FakeFreeswitch):
    """FakeFreeswitch noting when chosen frames were written: `watch[frame] = call id` -> `written_at`."""

    def __init__(self) -> None:
        super().__init__()
        self.watch: dict[bytes, str] = {}
        self.written_at: dict[str, float] = {}

    def _handle(self, sock, address) -> None:
        super()._handle(_TimedSocket(sock, self._sent), address)

    def _sent(self, data) -> None:
        at = time.monotonic()
        if self.watch:
            call = self.watch.pop(data, None)
            if call is not None:
                self.written_at[call] = at


def ringing_index(bodies) -> int:
    """Index of the first CHANNEL_PROGRESS of a phone's leg (outbound leg with dialed_user)."""
    for i, body in enumerate(bodies):
        if (header(body, "Event-Name") == "CHANNEL_PROGRESS" and header(body, "variable_dialed_user", None)
                and header(body, "Call-Direction", None) == "outbound"):
            return i
    raise SystemExit("%s has no extension-leg CHANNEL_PROGRESS" % SCENARIO)


def bridge_index(bodies) -> int:
    return next(i for i, body in enumerate(bodies) if header(body, "Event-Name") == "CHANNEL_BRIDGE")


def in_cards(crm: FakeCrm) -> dict[str, float]:
    """callExternalId -> when the first `in` card for it reached the fake CRM."""
    first: dict[str, float] = {}
    for request in list(crm.requests):
        if request.path != EVENT_PATH or request.status != 200:
            continue
        event = json.loads(request.form.get("event") or "{}")
        if event.get("type") == "in":
            key = event.get("callExternalId")
            first[key] = min(first.get(key, request.received_at), request.received_at)
    return first




def main() -> int:
    banner("bench/card_latency.py: call-card latency end to end (real service as a subprocess)",
           "first phone's CHANNEL_PROGRESS written by FreeSWITCH -> `in` card received by the CRM")
    template = captured(SCENARIO)
    ringing, bridge = ringing_index(template), bridge_index(template)
    new_calls = NEW_CALLS_PER_SECOND * WINDOW_SECONDS
    figure("calls in progress (held after CHANNEL_BRIDGE)", str(HOLD_CALLS))
    figure("new calls measured", "%d (%d/s for %d s), %d events each, card on event %d"
           % (new_calls, NEW_CALLS_PER_SECOND, WINDOW_SECONDS, len(template), ringing + 1))
    figure("history load", "%d finished calls/s of %s" % (LOAD_CALLS_PER_SECOND, ", ".join(LOAD_SCENARIOS)))

    work = Path(tempfile.mkdtemp(prefix="fs-crm-bench-latency-"))
    crm = FakeCrm(api_keys={API_KEY: ACCOUNT}, known_codes={"100", "200", "300"},
                  known_sites={"shop1", "shop2"}).start()
    fs = TimedFreeswitch().start()
    log_path = work / "service.log"
    config_path = work / "fs-crm.toml"
    config_path.write_text(config_toml(fs.host, fs.port, crm.url, work / "state"))
    env = dict(os.environ, **{api_key_env_name(ACCOUNT): API_KEY})
    log = open(log_path, "ab")
    service = subprocess.Popen([sys.executable, "-m", "fs_crm", "run", "-c", str(config_path)],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    exit_code: int | None = None
    try:
        started = time.monotonic()
        if not (fs.wait_subscribed(timeout=30) and fs.wait_for(
                lambda: any(cmd == "api show channels as json" for _, cmd in fs.commands), timeout=10)):
            raise SystemExit("the service did not connect to the fake FreeSWITCH; log: %s" % log_path)
        figure("service connected and reconciled after", "%.2f s" % (time.monotonic() - started))

        # Calls in progress.
        held = [fresh_call(SCENARIO, "hold-%d" % i, time.time()) for i in range(HOLD_CALLS)]
        held_ids = {first_leg(b) for b in held}
        for bodies in held:
            fs.watch[frame_event(bodies[ringing])] = first_leg(bodies)
        for bodies in held:
            fs.play(bodies[:bridge + 1])
        if not crm.wait_for(lambda: held_ids <= set(in_cards(crm)), timeout=30):
            raise SystemExit("the held calls' cards did not all arrive; log: %s" % log_path)
        cards = in_cards(crm)
        burst = [(cards[cid] - fs.written_at[cid]) * 1000 for cid in held_ids if cid in fs.written_at]
        first_write, last_card = min(fs.written_at.values()), max(cards[cid] for cid in held_ids)
        sent = [r for r in list(crm.requests) if r.path == EVENT_PATH and first_write <= r.received_at <= last_card]
        figure("setup burst: %d calls ringing at once, `in` card p50 / p99 / max" % HOLD_CALLS,
               "%.0f / %.0f / %.0f ms (informational)" % (percentile(burst, 50), percentile(burst, 99), max(burst)))
        figure("  card requests until the last `in` card arrived", "%d (%d `in`) in %.2f s"
               % (len(sent), sum(json.loads(r.form.get("event") or "{}").get("type") == "in" for r in sent), last_card - first_write))
        gevent.sleep(2.0)  # let their hangup cards (the losing phone) drain through the rate limiter too

        # Everything played from now on is renumbered up front, stamped at its planned start.
        start_wall = time.time() + 3.0
        loads = [fresh_call(LOAD_SCENARIOS[i % len(LOAD_SCENARIOS)], "load-%d" % i,
                            start_wall - WARMUP_SECONDS + i / LOAD_CALLS_PER_SECOND)
                 for i in range(int((WARMUP_SECONDS + WINDOW_SECONDS + 5) * LOAD_CALLS_PER_SECOND))]
        calls = [fresh_call(SCENARIO, "new-%d" % i, start_wall + i / NEW_CALLS_PER_SECOND) for i in range(new_calls)]
        ids = [first_leg(bodies) for bodies in calls]
        for bodies, cid in zip(calls, ids, strict=True):
            fs.watch[frame_event(bodies[ringing])] = cid
        gevent.sleep(max(0.0, start_wall - WARMUP_SECONDS - time.time()))

        stop_load = gevent.event.Event()

        def history_load() -> None:
            begin = time.monotonic()
            for i, bodies in enumerate(loads):
                if stop_load.wait(max(0.0, begin + i / LOAD_CALLS_PER_SECOND - time.monotonic())):
                    return
                gevent.spawn(fs.play, bodies, delay=LOAD_EVENT_GAP)

        def play_new(bodies) -> None:
            fs.play(bodies[:ringing + 1])
            gevent.sleep(CALL_EVENT_GAP)
            fs.play(bodies[ringing + 1:], delay=CALL_EVENT_GAP)

        loader = gevent.spawn(history_load)
        gevent.sleep(WARMUP_SECONDS)
        window_start = time.monotonic()
        cpu_service, cpu_own = service_cpu_seconds(service.pid), own_cpu_seconds()
        players = []
        for i, bodies in enumerate(calls):
            gevent.sleep(max(0.0, window_start + i / NEW_CALLS_PER_SECOND - time.monotonic()))
            players.append(gevent.spawn(play_new, bodies))
        gevent.sleep(max(0.0, window_start + WINDOW_SECONDS - time.monotonic()))
        window_end = time.monotonic()
        cpu_service = service_cpu_seconds(service.pid) - cpu_service
        cpu_own = own_cpu_seconds() - cpu_own
        stop_load.set()
        gevent.joinall(players + [loader], timeout=10)
        crm.wait_for(lambda: set(ids) <= set(in_cards(crm)), timeout=5)

        # Figures.
        cards = in_cards(crm)
        latencies = [(cards[cid] - fs.written_at[cid]) * 1000 for cid in ids if cid in cards and cid in fs.written_at]
        missing = [cid for cid in ids if cid not in cards]
        unwritten = [cid for cid in ids if cid not in fs.written_at]
        in_window = [r for r in list(crm.requests) if window_start <= r.received_at <= window_end]
        uploads = [r for r in in_window if r.path == UPLOAD_PATH]
        uploaded_calls = sum(len(json.loads(r.form.get("calls") or "[]")) for r in uploads if r.status == 200)
        card_requests = [r for r in in_window if r.path == EVENT_PATH]
        refused = [r for r in crm.requests if r.status is not None and r.status >= 400]

        print()
        figure("window", "%.1f s, %d new calls started" % (window_end - window_start, len(players)))
        figure("cards measured", "%d of %d (%d never arrived, %d frames never written)"
               % (len(latencies), len(ids), len(missing), len(unwritten)))
        if latencies:
            figure("latency p50", "%.1f ms" % percentile(latencies, 50))
            figure("latency p90", "%.1f ms" % percentile(latencies, 90))
            figure("latency p99", "%.1f ms" % percentile(latencies, 99), "< %.0f ms on 2 cores" % GOAL_P99_MS)
            figure("latency max", "%.1f ms" % max(latencies))
            figure("latency mean", "%.1f ms" % (sum(latencies) / len(latencies)))
        figure("history uploads during the window", "%d (%d calls)" % (len(uploads), uploaded_calls))
        figure("call/event requests during the window", "%d (%.1f/s)"
               % (len(card_requests), len(card_requests) / (window_end - window_start)))
        figure("CRM answers >= 400 over the whole run", str(len(refused)))
        figure("service CPU during the window", "%.0f%% of one core" % (100 * cpu_service / (window_end - window_start)))
        figure("bench process CPU (fakes) during the window", "%.0f%% of one core"
               % (100 * cpu_own / (window_end - window_start)))
    finally:
        exit_code, stopped_in = shut_down(service, log, fs, crm)

    problems = log_problems(log_path)
    figure("service exit after SIGTERM", "code %s in %.2f s" % (exit_code, stopped_in), "0, clean")
    figure("service log WARNING/ERROR lines", str(len(problems)))
    kinds: dict[str, int] = {}
    for line in problems:
        # Without the time stamp and call ids, so repeats of one message count together.
        kind = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<uuid>", line.split(" ", 2)[-1])[:160]
        kinds[kind] = kinds.get(kind, 0) + 1
    for kind, count in sorted(kinds.items(), key=lambda item: -item[1])[:5]:
        print("    %5d x %s" % (count, kind))
    clean = exit_code == 0 and not missing and bool(latencies)
    if clean:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print("  service log kept in %s" % log_path)
    if latencies:
        result("card_latency: p50 %.1f ms, p90 %.1f ms, p99 %.1f ms (goal < %.0f ms), max %.1f ms over %d cards; "
               "%d history uploads in the window; service exit %s"
               % (percentile(latencies, 50), percentile(latencies, 90), percentile(latencies, 99), GOAL_P99_MS,
                  max(latencies), len(latencies), len(uploads), exit_code))
    else:
        result("card_latency FAILED: no card measured")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())

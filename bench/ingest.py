"""ESL ingestion throughput: stock greenswitch InboundESL vs fs-crm's EslConnection + Service.on_event.

What is measured: events per second from the first byte of the event stream written by the server to
the last event handled by the client, over one real loopback TCP socket, in one process.

The stream: every call scenario recorded on the real PBX (fs_crm/sim/captures/pbx, CHANNEL_* events
only) renumbered with renumber_call() into CALLS distinct calls, CONCURRENT calls at a time
interleaved event by event (each call's events stay in order), framed as FreeSWITCH frames
`text/event-plain`. The same bytes go to both clients.

The server ("blaster") does the minimum of mod_event_socket: auth/request, `auth` -> +OK accepted,
`event ...` -> +OK event listener enabled plain and then the whole stream with sendall() in
CHUNK-byte pieces, `api show channels as json` -> an empty channel list, `exit` -> +OK bye.

Clients:
 (a) stock greenswitch 0.0.19 InboundESL, one no-op handler on '*' counting events (greenswitch
     parses in its reader greenlet and runs handlers from its own queue greenlet);
 (b) fs-crm: EslConnection(config.freeswitch, on_event, on_read_done) with Service(config)'s handlers
     (tracker, then history into a real SQLite outbox in a temp dir, WAL + synchronous=FULL). The card
     sender is not started: `service.cards.submit` is replaced by list.append, i.e. the card path
     ends at its enqueue. service.start() is never called, so nothing talks to a network.
Both count events in a one-line wrapper around the handler. Each client runs RUNS times,
alternately. Then, on the first PROFILE_EVENTS events only, the stages of fs-crm's handler are
timed directly (parse, tracker, outbox) and one more fs-crm run under cProfile shows where time goes.
"""

from gevent import monkey

monkey.patch_all()

import cProfile  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import pstats  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.server  # noqa: E402
from common import (  # noqa: E402
    PASSWORD,
    SCENARIOS,
    answer_esl_commands,
    banner,
    config_table,
    figure,
    result,
)
from greenswitch.esl import InboundESL  # noqa: E402

from fs_crm import vocab  # noqa: E402
from fs_crm.calls import CallTracker  # noqa: E402
from fs_crm.config import parse_config  # noqa: E402
from fs_crm.crm.payloads import CallRecord  # noqa: E402
from fs_crm.freeswitch.eslparse import parse_event_plain  # noqa: E402
from fs_crm.freeswitch.eslsession import RECV_BYTES  # noqa: E402
from fs_crm.freeswitch.listener import EslConnection  # noqa: E402
from fs_crm.service import Service  # noqa: E402
from fs_crm.sim.calls import captured, header  # noqa: E402
from fs_crm.sim.fake_freeswitch import frame_event, renumber_call  # noqa: E402
from fs_crm.store.outbox import NewCall, Outbox  # noqa: E402

CALLS = 3600  # x ~14 CHANNEL_* events per call: ~50,000 events
CONCURRENT = 50  # calls in progress at once in the stream
CHUNK = 1 << 20  # bytes per sendall()
RUNS = 3
PROFILE_EVENTS = 10_000  # the stage breakdown and the profiled run use this prefix of the stream
RUN_TIMEOUT = 120.0  # a client that has not handled every event by then is reported as failed
GOAL_RATIO = 5.0


# --- the stream -------------------------------------------------------------------------------

def build_stream() -> tuple[list[bytes], bytes, int]:
    """(event bodies in wire order, the framed stream, calls that should reach the outbox)."""
    templates = {s: [b for b in captured(s) if header(b, "Event-Name").startswith("CHANNEL_")] for s in SCENARIOS}
    calls = []
    expected_records = 0
    for i in range(CALLS):
        scenario = SCENARIOS[i % len(SCENARIOS)]
        # No time shift: the tracker takes time from the events, and cards never leave the process.
        calls.append(renumber_call(templates[scenario], seed="ingest-%d" % i))
        expected_records += scenario != "internal"  # extension-to-extension calls are not CRM calls
    bodies = []
    for start in range(0, CALLS, CONCURRENT):
        group = calls[start:start + CONCURRENT]
        for k in range(max(len(c) for c in group)):
            bodies.extend(c[k] for c in group if k < len(c))
    return bodies, b"".join(frame_event(b) for b in bodies), expected_records


def stage_costs(bodies: list[bytes]) -> dict[str, float]:
    """Microseconds per event of each stage of fs-crm's handler, run directly (no socket, no profiler).
    Finished calls are committed once per RECV_BYTES of events, as if every socket read were followed
    by an idle reader (the service's saver groups more under a flood: fs_crm.store.saver)."""
    state_dir = Path(tempfile.mkdtemp(prefix="fs-crm-bench-stages-"))
    config = parse_config("<bench>", config_table("127.0.0.1", 1, "http://127.0.0.1:9", state_dir), env={})
    parse = track = store = 0.0
    records = commits = 0
    clock = time.perf_counter
    try:
        tracker = CallTracker(config.accounts)
        with Outbox(state_dir / "outbox.sqlite3") as outbox:
            finished: list[NewCall] = []
            read_bytes = 0
            for body in bodies:  # one event at a time, as the reader does: nothing is kept alive
                started = clock()
                event = parse_event_plain(body)
                parsed = clock()
                effects = tracker.handle(event)
                tracked = clock()
                finished.extend(NewCall(e.account, e.external_id, e.to_api()) for e in effects
                                if isinstance(e, CallRecord))
                read_bytes += len(body)
                if read_bytes >= RECV_BYTES and finished:
                    outbox.add_calls(finished)
                    records, commits, finished, read_bytes = records + len(finished), commits + 1, [], 0
                stored = clock()
                parse += parsed - started
                track += tracked - parsed
                store += stored - tracked
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    n = len(bodies)
    return {"parse": parse / n * 1e6, "tracker": track / n * 1e6, "outbox": store / n * 1e6,
            "per_commit": store / max(1, commits) * 1e6, "records": records, "commits": commits}


# --- the server -------------------------------------------------------------------------------

class Blaster:
    """Answers the handshake, then writes the whole stream as fast as the socket takes it."""

    def __init__(self, stream: bytes):
        self.stream = stream
        self.first_byte_at = 0.0
        self.server = gevent.server.StreamServer(("127.0.0.1", 0), self._handle)

    def start(self) -> "Blaster":
        self.server.start()
        return self

    @property
    def port(self) -> int:
        return self.server.server_port

    def stop(self) -> None:
        self.server.stop(timeout=1)

    def _handle(self, sock: socket.socket, _address: tuple) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        answer_esl_commands(sock.recv, sock.sendall, lambda: self._blast(sock))

    def _blast(self, sock: socket.socket) -> None:
        view = memoryview(self.stream)
        self.first_byte_at = time.perf_counter()
        for start in range(0, len(view), CHUNK):
            sock.sendall(view[start:start + CHUNK])


# --- the clients ------------------------------------------------------------------------------

class Counter:
    """Counts handled events; notes the time of the last one."""

    def __init__(self, expected: int):
        self.expected = expected
        self.count = 0
        self.done_at = 0.0
        self.done = gevent.event.Event()

    def tick(self) -> None:
        self.count += 1
        if self.count == self.expected:
            self.done_at = time.perf_counter()
            self.done.set()


def run_stock(blaster: Blaster, events: int) -> dict:
    counter = Counter(events)

    def handler(_event) -> None:
        counter.tick()

    esl = InboundESL("127.0.0.1", blaster.port, PASSWORD)
    esl.register_handle("*", handler)
    esl.connect()
    esl.send("event plain ALL")
    finished = counter.done.wait(RUN_TIMEOUT)
    with gevent.Timeout(5, False):
        esl.stop()  # its queue greenlet polls once a second: up to 1 s here
    return {"ok": finished, "handled": counter.count, "seconds": counter.done_at - blaster.first_byte_at}


def run_fscrm(blaster: Blaster, events: int, profiler: cProfile.Profile | None = None) -> dict:
    state_dir = Path(tempfile.mkdtemp(prefix="fs-crm-bench-ingest-"))
    config = parse_config("<bench>", config_table("127.0.0.1", blaster.port, "http://127.0.0.1:9", state_dir),
                          env={})
    service = Service(config)
    cards: list = []
    service.cards.submit = cards.append  # the card path ends at its enqueue: no sender, no network
    counter = Counter(events)
    handle = service.on_event

    def on_event(event) -> None:
        handle(event)
        counter.tick()

    # As in the service: the saver commits what finished whenever the reader yields.
    saver = gevent.spawn(service.saver.run)
    conn = EslConnection(config.freeswitch, on_event, service.saver.save_soon)
    if profiler is not None:
        profiler.enable()
    try:
        conn.connect()
        conn.command(vocab.subscribe_command())
        finished = counter.done.wait(RUN_TIMEOUT)
    finally:
        if profiler is not None:
            profiler.disable()
    conn.stop()
    service.saver.stop()
    saver.join()
    service.saver.save_all()
    stats = service.outbox.stats()
    service.outbox.close()
    for client in service.clients.values():
        client.close()
    shutil.rmtree(state_dir, ignore_errors=True)
    return {"ok": finished, "handled": counter.count, "seconds": counter.done_at - blaster.first_byte_at,
            "records": stats.pending, "cards": len(cards), "tracked": service.tracker.active_calls()}


def main() -> int:
    banner("bench/ingest.py: ESL ingestion throughput",
           "events/s from the first byte sent to the last event handled, one loopback TCP socket, one process")
    built = time.perf_counter()
    bodies, stream, expected_records = build_stream()
    events = len(bodies)
    mean_size = sum(map(len, bodies)) / events
    prefix = bodies[:PROFILE_EVENTS]
    del bodies
    figure("stream", "%d calls (%d in progress at once), %d CHANNEL_* events, %.1f MB"
           % (CALLS, CONCURRENT, events, len(stream) / 1e6))
    figure("mean event size (body)", "%.0f bytes" % mean_size)
    figure("stream built in", "%.1f s (renumber_call, not measured)" % (time.perf_counter() - built))
    sys.stdout.flush()

    blaster = Blaster(stream).start()
    stock, ours = [], []
    try:
        for run in range(RUNS):
            for name, runner, out in (("stock greenswitch", run_stock, stock), ("fs-crm", run_fscrm, ours)):
                gc.collect()
                outcome = runner(blaster, events)
                out.append(outcome)
                rate = outcome["handled"] / outcome["seconds"] if outcome["ok"] else 0.0
                extra = ""
                if "records" in outcome:
                    extra = ", %d calls in the outbox, %d cards enqueued" % (outcome["records"], outcome["cards"])
                print("  run %d %-18s %s %8.0f events/s (%.2f s)%s" % (
                    run + 1, name, "ok    " if outcome["ok"] else "FAILED", rate, outcome["seconds"], extra))
                sys.stdout.flush()
    finally:
        blaster.stop()

    gc.collect()
    costs = stage_costs(prefix)
    gc.collect()
    small = Blaster(b"".join(frame_event(b) for b in prefix)).start()
    try:
        profiler = cProfile.Profile()
        profiled = run_fscrm(small, len(prefix), profiler)
    finally:
        small.stop()

    failed = [o for o in stock + ours if not o["ok"]]
    if failed:
        result("ingest FAILED: %d run(s) did not handle every event within %.0f s" % (len(failed), RUN_TIMEOUT))
        return 1
    stock_rates = [events / o["seconds"] for o in stock]
    our_rates = [events / o["seconds"] for o in ours]
    print()
    figure("stock greenswitch InboundESL, best / median", "%.0f / %.0f events/s"
           % (max(stock_rates), statistics.median(stock_rates)))
    figure("fs-crm EslConnection + Service.on_event, best / median", "%.0f / %.0f events/s"
           % (max(our_rates), statistics.median(our_rates)))
    figure("fs-crm per event (median run)", "%.1f us" % (1e6 / statistics.median(our_rates)))
    ratio_best = max(our_rates) / max(stock_rates)
    ratio_median = statistics.median(our_rates) / statistics.median(stock_rates)
    figure("ratio fs-crm / stock, best / median", "%.1fx / %.1fx" % (ratio_best, ratio_median),
           ">= %.0fx" % GOAL_RATIO)
    figure("calls recorded in the outbox (each run)", "%s (expected %d: all but internal calls)"
           % (sorted({o["records"] for o in ours}), expected_records))
    figure("cards enqueued (each run)", str(sorted({o["cards"] for o in ours})))
    figure("calls still tracked at the end (each run)", str(sorted({o["tracked"] for o in ours})))
    print("\nfs-crm handler stages run directly on the first %d events (no socket, no profiler):" % len(prefix))
    figure("parse_event_plain", "%.1f us/event" % costs["parse"])
    figure("CallTracker.handle", "%.1f us/event" % costs["tracker"])
    figure("Outbox.add_calls (synchronous=FULL), a commit per %d KiB read" % (RECV_BYTES // 1024),
           "%.1f us/event (%.0f us per commit, %d commits, %d calls)"
           % (costs["outbox"], costs["per_commit"], costs["commits"], costs["records"]))
    figure("socket, framing, dispatch, fewer commits (end-to-end minus the above)", "%.1f us/event"
           % (1e6 / statistics.median(our_rates) - costs["parse"] - costs["tracker"] - costs["outbox"]))
    figure("stock greenswitch, all of it (median run)", "%.1f us/event" % (1e6 / statistics.median(stock_rates)))
    figure("fs-crm budget per event for the %.0fx goal" % GOAL_RATIO, "%.1f us/event, all stages together"
           % (1e6 / statistics.median(stock_rates) / GOAL_RATIO))

    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(10)
    print("\ncProfile of one fs-crm run over the first %d events (%.0f events/s with the profiler on), "
          "top 10 by tottime:" % (len(prefix), len(prefix) / profiled["seconds"]))
    lines = out.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    print("\n".join(line for line in lines[start:] if line.strip()))
    print()
    result("ingest: fs-crm %.0f events/s best (median %.0f), stock greenswitch %.0f best (median %.0f): "
           "%.1fx best, %.1fx median (goal >= %.0fx); %s calls recorded, %s cards enqueued"
           % (max(our_rates), statistics.median(our_rates), max(stock_rates), statistics.median(stock_rates),
              ratio_best, ratio_median, GOAL_RATIO, ours[0]["records"], ours[0]["cards"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

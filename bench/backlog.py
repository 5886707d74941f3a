"""Backlog drain: 10,000 finished calls queued while the CRM was down, then the CRM comes back.

What is measured: how the real HistorySender (real CrmClient, RateLimiter at the configured 40
requests/s telephony budget, real SQLite outbox with WAL + synchronous=FULL) empties a backlog into a
FakeCrm that enforces retailCRM's rate limit (503 beyond 40 telephony requests in any 1 s):
uploads made (at most 50 calls each, so the goal is <= 200), 503s received (our limiter should
avoid them all), wall time to drain, uploads/s and calls/s achieved, CPU time, and memory: the
process peak RSS (ru_maxrss) before and after, and the tracemalloc peak during the drain
(tracemalloc slows Python down, but the drain is bound by the rate limiter, not the CPU). The fake
CRM runs in this process and keeps every request it got, so the memory figures include it.

The payloads are realistic: CallTracker is run over every recorded call scenario, and its
CallRecords are copied with distinct externalIds and dates, 10,000 in all, queued with Outbox.add()
exactly as Service does. Correctness check (printed, and the exit status is 1 if it fails): every
one of the 10,000 reached the fake CRM exactly once and the outbox is empty.
"""

from gevent import monkey

monkey.patch_all()

import dataclasses  # noqa: E402
import datetime as dt  # noqa: E402
import gc  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
from common import (  # noqa: E402
    ACCOUNT,
    API_KEY,
    SCENARIOS,
    banner,
    config_table,
    distinct_id,
    figure,
    result,
)

from fs_crm import vocab  # noqa: E402
from fs_crm.calls import CallTracker  # noqa: E402
from fs_crm.config import parse_config  # noqa: E402
from fs_crm.crm.client import UPLOAD_PATH, CrmClient, RateLimiter  # noqa: E402
from fs_crm.crm.history import HistorySender  # noqa: E402
from fs_crm.crm.payloads import CallRecord  # noqa: E402
from fs_crm.freeswitch.eslparse import parse_event_plain  # noqa: E402
from fs_crm.sim.calls import captured  # noqa: E402
from fs_crm.sim.fake_crm import FakeCrm  # noqa: E402
from fs_crm.store.outbox import Outbox  # noqa: E402

BACKLOG = 10_000
DRAIN_TIMEOUT = 120.0
GOAL_UPLOADS = -(-BACKLOG // vocab.MAX_CALLS_PER_UPLOAD)  # 200


def template_records(config) -> list[CallRecord]:
    """One CallRecord per recorded scenario that is a CRM call, as the tracker makes them."""
    records = []
    for scenario in SCENARIOS:
        tracker = CallTracker(config.accounts)
        for body in captured(scenario):
            records.extend(e for e in tracker.handle(parse_event_plain(body)) if isinstance(e, CallRecord))
    return records


def backlog_records(templates: list[CallRecord]) -> list[CallRecord]:
    """BACKLOG distinct calls, one every 6 s of a working day or so, cycling through the templates."""
    start = dt.datetime(2026, 11, 26, 9, 0, 0)
    return [dataclasses.replace(templates[i % len(templates)], external_id=distinct_id("backlog-%d" % i),
                                date=(start + dt.timedelta(seconds=6 * i)).strftime("%Y-%m-%d %H:%M:%S"))
            for i in range(BACKLOG)]


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mib() -> float:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20
    except (OSError, IndexError, ValueError):
        return float("nan")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    banner("bench/backlog.py: draining %d queued calls into a rate-limited CRM" % BACKLOG,
           "real HistorySender + CrmClient + RateLimiter + SQLite outbox -> FakeCrm(enforce_rate_limit=True)")
    work = Path(tempfile.mkdtemp(prefix="fs-crm-bench-backlog-"))
    crm = FakeCrm(api_keys={API_KEY: ACCOUNT}, known_codes={"100", "200", "300"},
                  known_sites={"shop1", "shop2"}, enforce_rate_limit=True).start()
    outbox = None
    try:
        config = parse_config("<bench>", config_table("127.0.0.1", 1, crm.url, work), env={})
        delivery = config.delivery
        records = backlog_records(template_records(config))
        expected = {r.external_id for r in records}

        outbox = Outbox(work / "outbox.sqlite3")
        filled = time.perf_counter()
        for record in records:
            outbox.add(record.account, record.external_id, record.to_api())
        filled = time.perf_counter() - filled
        figure("backlog", "%d calls, %d pending in the outbox" % (len(records), outbox.stats().pending))
        figure("filled with Outbox.add (one fsynced commit each)", "%.1f s, %.0f adds/s" % (filled, BACKLOG / filled))
        figure("CRM budget (configured / enforced by the fake)", "%.0f / 40 telephony requests/s"
               % delivery.telephony_rps)

        limiter = RateLimiter(delivery.telephony_rps, delivery.general_rps)
        client = CrmClient(config.account(ACCOUNT), delivery, limiter)
        sender = HistorySender(outbox, {ACCOUNT: client}, delivery)

        gc.collect()
        rss_before, peak_before = current_rss_mib(), max_rss_mib()
        tracemalloc.start()
        cpu = cpu_seconds()
        started = time.monotonic()
        runner = gevent.spawn(sender.run)
        deadline = started + DRAIN_TIMEOUT
        while time.monotonic() < deadline and runner:
            if len(crm.calls) >= BACKLOG and outbox.stats().pending == 0:
                break
            gevent.sleep(0.02)
        drained = time.monotonic() - started
        cpu = cpu_seconds() - cpu
        traced_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        rss_after, peak_after = current_rss_mib(), max_rss_mib()
        sender.stop()
        runner.join(timeout=5)
        client.close()
        stats = outbox.stats()
    finally:
        if outbox is not None:
            outbox.close()
        crm.stop()
        shutil.rmtree(work, ignore_errors=True)

    requests = [r for r in crm.requests if r.path == UPLOAD_PATH]
    rejected_503 = sum(1 for r in requests if r.status == 503)
    other_failures = sum(1 for r in requests if r.status != 200 and r.status != 503)
    uploaded = Counter(call["externalId"] for batch in crm.uploads for call in batch)
    active = (requests[-1].received_at - requests[0].received_at) if len(requests) > 1 else 0.0

    print()
    figure("uploads made (all calls/upload requests)", str(len(requests)), "<= %d" % GOAL_UPLOADS)
    figure("503 answers received", str(rejected_503), "0")
    figure("other failed uploads", str(other_failures))
    figure("wall time to drain", "%.2f s (first to last upload: %.2f s)" % (drained, active))
    figure("uploads/s achieved", "%.1f (%.0f calls/s)" % (len(requests) / drained, len(uploaded) / drained))
    figure("CPU used during the drain", "%.2f s (%.0f%% of one core)" % (cpu, 100 * cpu / drained))
    figure("peak RSS (ru_maxrss) before / after the drain", "%.1f / %.1f MiB" % (peak_before, peak_after))
    figure("current RSS before / after the drain", "%.1f / %.1f MiB" % (rss_before, rss_after))
    figure("tracemalloc peak during the drain", "%.1f MiB" % (traced_peak / 2**20))

    missing = expected - set(uploaded)
    unexpected = set(uploaded) - expected
    twice = [key for key, count in uploaded.items() if count > 1]
    ok = not missing and not unexpected and not twice and len(crm.calls) == BACKLOG and stats.pending == 0 \
        and stats.failed == 0
    figure("correctness: every call reached the CRM exactly once", "OK" if ok else "FAILED")
    if not ok:
        figure("  missing / unexpected / sent twice", "%d / %d / %d" % (len(missing), len(unexpected), len(twice)))
        figure("  CRM calls, outbox pending, set aside", "%d, %d, %d" % (len(crm.calls), stats.pending, stats.failed))
    result("backlog: %d calls drained in %.1f s with %d uploads (goal <= %d), %d x 503, %.1f uploads/s, "
           "tracemalloc peak %.1f MiB, max RSS %.0f MiB; exactly once: %s"
           % (BACKLOG, drained, len(requests), GOAL_UPLOADS, rejected_503, len(requests) / drained,
              traced_peak / 2**20, peak_after, "OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

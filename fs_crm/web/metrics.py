"""`GET /metrics` in Prometheus' text format (prometheus_client).

Read at scrape time from the counters the parts already keep (pull, not push): the ESL reader and
the card path do no metric work of their own. Only CRM latency is observed as it happens, into a
histogram. Each Service has its own registry, so tests can run several in one process.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import bottle
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from fs_crm.service import Service

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Seconds: a card is late past 1 s; an upload of 50 calls may take several.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0)
_ID_IN_PATH = re.compile(r"/\d+(?=/|$)")


def route_label(path: str) -> str:
    """An API path with its ids replaced, so users/17/status and users/18/status are one series."""
    return _ID_IN_PATH.sub("/{id}", path)


class ServiceMetrics:
    def __init__(self, service: Service):
        self._service = service
        self.registry = CollectorRegistry(auto_describe=False)
        self.crm_latency = Histogram("fs_crm_crm_request_seconds", "retailCRM API request time, by outcome",
                                     ("account", "route", "outcome"), buckets=LATENCY_BUCKETS,
                                     registry=self.registry)
        self.registry.register(_Collector(service))

    def crm_observer(self, account: str):
        def observe(path: str, outcome: str, seconds: float) -> None:
            self.crm_latency.labels(account, route_label(path), outcome).observe(seconds)

        return observe

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def make_app(self) -> bottle.Bottle:
        app = bottle.Bottle()

        @app.get("/metrics")
        def metrics():
            bottle.response.content_type = CONTENT_TYPE
            bottle.response.set_header("Cache-Control", "no-store")
            return self.render()

        return app


class _Collector:
    def __init__(self, service: Service):
        self._service = service

    def collect(self):
        svc = self._service
        yield _gauge("fs_crm_esl_connected", "1 while the event socket to FreeSWITCH is up",
                     [((), 1.0 if svc.listener.connected else 0.0)])
        yield _counter("fs_crm_esl_events", "FreeSWITCH events received", [((), svc.events_in)])
        yield _gauge("fs_crm_calls_in_progress", "Calls tracked, not finished yet",
                     [((), svc.tracker.active_calls())])
        yield _counter("fs_crm_cards", "Call cards by outcome (sent, dropped as stale, refused by the CRM)",
                       [(key, n) for key, n in sorted(svc.cards.outcomes.items())], ("account", "type", "outcome"))
        yield _counter("fs_crm_history_calls", "Calls of history by what an upload did with them",
                       [(key, n) for key, n in sorted(svc.history.calls.items())], ("account", "outcome"))
        yield _counter("fs_crm_history_uploads", "calls/upload requests by outcome",
                       [(key, n) for key, n in sorted(svc.history.uploads.items())], ("account", "outcome"))
        yield from self._outbox(svc)
        saver = svc.saver
        yield _gauge("fs_crm_state_disk_failing", "1 while the state disk refuses writes",
                     [((), 0.0 if saver.failing_since is None else 1.0)])
        yield _gauge("fs_crm_state_unsaved_finished_calls", "Finished calls waiting in memory for the state disk",
                     [((), saver.unsaved)])
        if svc.recordings is not None:
            yield _counter("fs_crm_recordings_stored", "Recordings stored", [((), svc.recordings.stored)])
        router = svc.router
        yield _counter("fs_crm_routing_decisions", "Incoming calls routed, by decision",
                       [((decision,), n) for decision, n in sorted(router.decisions.items())], ("decision",))
        yield _counter("fs_crm_routing_fallbacks", "Calls not sent to the responsible manager, by reason",
                       [((reason,), n) for reason, n in sorted(router.reasons.items())], ("reason",))

    def _outbox(self, svc: Service):
        stats = svc.outbox_stats.stats
        if stats is None:
            return  # never read: the state disk gauge says why
        accounts = sorted(set(svc.clients) | set(stats.pending_by_account) | set(stats.failed_by_account))
        now = time.time()
        yield _gauge("fs_crm_outbox_pending_calls", "Finished calls waiting to be uploaded",
                     [((a,), stats.pending_by_account.get(a, 0)) for a in accounts], ("account",))
        yield _gauge("fs_crm_outbox_held_calls", "Finished calls waiting for their recording to be stored",
                     [((a,), stats.held_by_account.get(a, 0)) for a in accounts], ("account",))
        yield _gauge("fs_crm_outbox_set_aside_calls", "Calls the CRM refused, kept until retried",
                     [((a,), stats.failed_by_account.get(a, 0)) for a in accounts], ("account",))
        yield _gauge("fs_crm_outbox_oldest_pending_age_seconds", "How long the oldest pending call has waited",
                     [((a,), max(0.0, now - stats.oldest_pending_by_account[a])) if a in stats.oldest_pending_by_account
                      else ((a,), 0.0) for a in accounts], ("account",))
        yield _gauge("fs_crm_recordings_pending", "Recording files not yet confirmed by the store",
                     [((), stats.recordings)])


def _gauge(name: str, doc: str, samples, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in samples:
        family.add_metric(list(values), value)
    return family


def _counter(name: str, doc: str, samples, labels: tuple[str, ...] = ()) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for values, value in samples:
        family.add_metric(list(values), value)
    return family

"""The one place that builds every collaborator and runs the daemon (`fs-crm run`)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from typing import Callable

import gevent
import gevent.event

from fs_crm import __version__
from fs_crm.calls import CallTracker, parse_live_channels
from fs_crm.config import Config
from fs_crm.crm.cards import CardSender
from fs_crm.crm.client import CrmClient, RateLimiter
from fs_crm.crm.history import HistorySender
from fs_crm.crm.missed_tasks import MissedCallTasker
from fs_crm.crm.payloads import CallEvent, CallRecord
from fs_crm.crm.pbx_statuses import PbxStatusReporter, custom_events
from fs_crm.filemodes import private_dir
from fs_crm.freeswitch.cdr_intake import CdrIntake
from fs_crm.freeswitch.commands import FreeswitchCommands
from fs_crm.freeswitch.eslparse import Event
from fs_crm.freeswitch.eslsession import EslError
from fs_crm.freeswitch.listener import EslConnection, EslListener
from fs_crm.freeswitch.outbound import OutboundServer
from fs_crm.freeswitch.routing import CallRouter
from fs_crm.greenlets import spawn
from fs_crm.preflight import listen_problem
from fs_crm.store.history_queue import new_call, recording_links
from fs_crm.store.offhub import OffHubOutbox, StatsCache
from fs_crm.store.outbox import NewCall, Outbox, OutboxError
from fs_crm.store.saver import StateSaver
from fs_crm.web.callbacks import make_app as make_callbacks_app
from fs_crm.web.clicktocall import ClickToCall
from fs_crm.web.metrics import ServiceMetrics
from fs_crm.web.server import HttpServer, build_app
from fs_crm.web.statuses import UserStatuses
from recordings.base import RecordingStore
from recordings.local import LocalStore
from recordings.playback import make_app as make_playback_app
from recordings.uploads import RecordingUploader

logger = logging.getLogger(__name__)

# Legs that vanished while we were disconnected may still have their last events in flight when
# the reconcile answer arrives; they get this long before being reported with what we know.
ORPHAN_GRACE_SECONDS = 3.0
HOUSEKEEPING_INTERVAL = 1.0
SWEEP_INTERVAL = 600.0
# /healthz turns unhealthy when the outbox's counts could not be read for this long.
STATS_STALE_AFTER = 10.0
SILENT_CALL_SECONDS = 3600.0


class StartupError(Exception):
    """The service cannot start (a port in use, ...); the message says what to fix."""


class Service:
    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time):
        self.config = config
        self.clock = clock
        private_dir(config.state.dir)
        self.outbox = OffHubOutbox(Outbox(config.state.dir / "outbox.sqlite3"))
        self.outbox_stats = StatsCache(self.outbox, on_foreign_commit=lambda: self._on_queued())
        self.metrics = ServiceMetrics(self)
        self.events_in = 0
        self.last_event_at: float | None = None
        # Accounts that share an API key share its rate budget.
        limiters: dict[str, RateLimiter] = {}
        self.clients: dict[str, CrmClient] = {}
        for account in config.accounts:
            limiter = limiters.setdefault(account.api_key, RateLimiter(config.delivery.telephony_rps,
                                                                       config.delivery.general_rps))
            self.clients[account.name] = CrmClient(account, config.delivery, limiter,
                                                   observe=self.metrics.crm_observer(account.name))
        self.cards = CardSender(self.clients, config.delivery)
        self.history = HistorySender(self.outbox, self.clients, config.delivery)
        self.tracker = CallTracker(config.accounts)
        saved = self.outbox.calls_in_progress()
        if saved:
            count = self.tracker.restore({"version": CallTracker.SNAPSHOT_VERSION, "calls": saved})
            logger.info("resumed %d call(s) that were in progress when fs-crm last stopped", count)
        self.saver = StateSaver(self.outbox, self.tracker, self._new_call, self._on_queued, clock=clock)
        self.listener = EslListener(config.freeswitch, self.on_event, self.on_connected,
                                    on_read_done=self.saver.save_soon, clock=clock,
                                    custom_events=custom_events(config.accounts))
        accounts = {a.name: a for a in config.accounts}
        # Commands (click-to-call, registration checks, status pushes) never share the event connection,
        # and the silent-call sweep's `show channels` goes on a lane of its own (fs_crm.freeswitch.commands).
        self.commands = FreeswitchCommands(config.freeswitch,
                                           spawn=lambda work: self._spawn("status-push-unsent", work))
        self.statuses = UserStatuses(self.outbox, accounts, self.commands)
        # A FreeSWITCH restart is seen by the event listener, whose reconnect pushes every status
        # (on_connected). A new command connection alone only sends what FreeSWITCH has not
        # confirmed yet (a push that failed while it was down), so the two never push twice.
        self.commands.on_connected = self.statuses.push_unsent
        self.click_to_call = ClickToCall(accounts, self.commands, crm_clients=self.clients)
        self.router = CallRouter(config.accounts, self.clients, self.statuses, self.commands, config.routing,
                                 on_call=self._extension_on_call)
        self.routing = OutboundServer(config.routing, self.router.handle) if config.routing.enabled else None
        # Optional per-account features, off by default: statuses set on the PBX go to the CRM,
        # missed incoming calls become CRM tasks.
        self.pbx_statuses = PbxStatusReporter(accounts, self.statuses, self.clients, config.delivery)
        self.missed_tasks = MissedCallTasker(accounts, self.clients, config.delivery, marks=self.outbox)
        self.store: RecordingStore | None = None
        self.recordings: RecordingUploader | None = None
        parts = [make_callbacks_app(self.click_to_call, self.statuses, accounts), self.metrics.make_app()]
        self.cdrs: CdrIntake | None = None
        if config.cdr.enabled:
            self.cdrs = CdrIntake(config.cdr, self.outbox, self.tracker, config.accounts, self._new_call,
                                  self._on_queued)
            self.cdrs.load()
            parts.append(self.cdrs.make_app())
        if config.storage.backend:
            self.store = build_store(config)
            links = recording_links(config)  # the same URLs `fs-crm backfill` makes
            self.recordings = RecordingUploader(self.outbox, self.store, links, config.storage,
                                                config.delivery, on_released=self.history.wake, clock=clock)
            parts.append(make_playback_app(self.store, links.codec, {a.name: a.client_id for a in config.accounts}))
        self.http = HttpServer(config.http, build_app(self.health, *parts))
        self.started = gevent.event.Event()
        self._stop = gevent.event.Event()
        self._stopped = False
        self._failure: BaseException | None = None
        self._greenlets: list[gevent.Greenlet] = []

    def _extension_on_call(self, extension: str, domain: str) -> bool | None:
        """For the router: the tracker knows every leg of every call in progress, as long as the
        event socket is up (None: cannot tell)."""
        if not self.listener.connected:
            return None
        return self.tracker.extension_on_call(extension, domain)

    # --- the ESL side: runs in the reader greenlet, so it only tracks and enqueues ----------------
    def on_event(self, event: Event) -> None:
        self.events_in += 1
        self.last_event_at = self.clock()
        if event.name in self.pbx_statuses.subclasses:
            self.pbx_statuses.handle(event)
            return
        self._apply(self.tracker.handle(event))

    def _apply(self, effects: list[CallEvent | CallRecord]) -> None:
        for effect in effects:
            if isinstance(effect, CallEvent):
                self.cards.submit(effect)
            else:
                self.saver.add_finished(effect)
        # After the history: nothing a task does can keep a call from it.
        for effect in effects:
            if isinstance(effect, CallRecord):
                self.missed_tasks.submit(effect)

    def _new_call(self, record: CallRecord) -> NewCall:
        return new_call(record, self.recordings.links if self.recordings else None,
                        self.clock() + self.config.storage.max_wait)

    def _on_queued(self) -> None:
        self.history.wake()
        if self.recordings is not None:
            self.recordings.wake()

    def on_connected(self, conn: EslConnection) -> None:
        """After every (re)connect: push the users' statuses again, and learn which calls are still
        alive so none is lost or doubled."""
        # FreeSWITCH may have restarted and forgotten its hash/db flags and agent statuses. The push
        # goes over the command connection in its own greenlet: the listener never waits on it.
        self._spawn("status-push", self.statuses.push_all)
        live = self._live_channels(conn.api)
        if live is not None:
            lost_at = self.listener.lost_at
            self.tracker.reconcile(live, int(self.clock() * 1_000_000),
                                   alive_until_us=int(lost_at * 1_000_000) if lost_at else 0)
            logger.info("reconciled with FreeSWITCH: %d live channels, %d calls tracked", len(live),
                        self.tracker.active_calls())

    @staticmethod
    def _live_channels(api: Callable[[str], str]) -> list | None:
        try:
            text = api("show channels as json")
        except EslError as exc:
            logger.warning("could not list live channels: %s", exc)
            return None
        # Megabytes with many calls in progress: parsed in a thread, so the hub keeps serving.
        data = gevent.get_hub().threadpool.apply(_json_or_none, (text,)) if text.strip() else {}
        if data is None:
            logger.warning("`show channels as json` did not answer JSON; skipping reconciliation")
            return None
        rows = data.get("rows") if isinstance(data, dict) else None
        return parse_live_channels(rows if isinstance(rows, list) else [])

    def _sweep_silent_calls(self) -> None:
        """While connected, a call whose last events were lost (FreeSWITCH drops events for slow
        listeners) would stay tracked for ever: calls silent for long and gone from FreeSWITCH end."""
        live = self._live_channels(self.commands.api)
        if live is not None:
            self.tracker.reconcile(live, int(self.clock() * 1_000_000), idle_us=int(SILENT_CALL_SECONDS * 1_000_000))

    def _housekeeping(self) -> None:
        last_sweep = self.clock()
        while not self._stop.wait(timeout=HOUSEKEEPING_INTERVAL):
            if self.clock() - last_sweep > SWEEP_INTERVAL and self.tracker.active_calls():
                last_sweep = self.clock()
                self._spawn("silent-call-sweep", self._sweep_silent_calls)
            now_us = int(self.clock() * 1_000_000)
            self._apply(self.tracker.expire_orphans(now_us, int(ORPHAN_GRACE_SECONDS * 1_000_000)))
            self._apply(self.tracker.shed_excess(self.config.state.max_calls_in_progress, now_us))
            try:
                self._give_up_waiting_for_recordings()
            except OutboxError as exc:
                logger.debug("cannot look at calls waiting for recordings now: %s", exc)  # the saver reports the disk

    def _give_up_waiting_for_recordings(self) -> None:
        for item in self.outbox.expired_holds():
            if self.outbox.release(item.account, item.external_id):
                logger.warning("call %s account %s: recording not stored within %.0fs (storage: %s); the call "
                               "goes to the CRM now, its recordUrl plays once the recording is stored",
                               item.external_id, item.account, self.config.storage.max_wait,
                               self.recordings.last_error if self.recordings else "not configured")
                self.history.wake()

    # --- lifecycle --------------------------------------------------------------------------
    def _spawn(self, name: str, func: Callable[[], None]) -> None:
        greenlet = spawn(name, func, on_crash=self._crashed)
        # Short-lived ones (status pushes after each reconnect) come and go: keep only the living.
        self._greenlets = [g for g in self._greenlets if not g.dead]
        self._greenlets.append(greenlet)

    def _crashed(self, greenlet: gevent.Greenlet) -> None:
        # A dead worker must take the process down loudly rather than leave a zombie daemon.
        logger.critical("%s crashed (traceback above): shutting down", greenlet.name)
        self._failure = greenlet.exception
        self._stop.set()

    def start(self) -> None:
        self.outbox_stats.refresh()
        stats = self.outbox.stats()
        logger.info("fs-crm starting: %d account(s), outbox %d pending, %d set aside", len(self.config.accounts),
                    stats.pending, stats.failed)
        self._listen("[http] listen", self.http.start)
        if self.routing is not None:
            self._listen("[routing] listen", self.routing.start)
        self._spawn("esl-listener", self.listener.run)
        self._spawn("history-sender", self.history.run)
        self._spawn("housekeeping", self._housekeeping)
        self._spawn("state-saver", self.saver.run)
        self._spawn("outbox-stats", self.outbox_stats.run)
        if self.recordings is not None:
            self._spawn("recording-uploader", self.recordings.run)
        if self.cdrs is not None:
            self._spawn("cdr-intake", self.cdrs.run)
        if self.pbx_statuses.enabled:
            self._spawn("pbx-status-intake", self.pbx_statuses.run_intake)
            self._spawn("pbx-status-sender", self.pbx_statuses.run_sender)
        if self.missed_tasks.enabled:
            self._spawn("missed-call-tasks", self.missed_tasks.run)
        self.started.set()

    def _listen(self, key: str, start: Callable[[], None]) -> None:
        try:
            start()
        except OSError as exc:
            where = self.config.http if key.startswith("[http]") else self.config.routing
            raise StartupError("%s: %s %s:%d: cannot listen: %s" % (self.config.path, key, where.listen_host,
                                                                    where.listen_port, listen_problem(exc))) from None

    def request_stop(self) -> None:
        self._stop.set()

    def wait(self) -> None:
        self._stop.wait()

    def stop(self) -> None:
        """Drain and exit: stop listening, let cards and the upload in flight finish, keep the rest on disk.
        Once: a second call does nothing."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        self.listener.stop()
        if self.routing is not None:
            self.routing.stop(timeout=5.0)
        self.http.stop()
        self.cards.stop()
        if self.recordings is not None:
            self.recordings.stop()
        self.history.stop()
        self.pbx_statuses.stop()
        self.missed_tasks.stop()
        self.commands.close()
        self.saver.stop()
        self.outbox_stats.stop()
        if self.cdrs is not None:
            self.cdrs.stop()
        for greenlet in self._greenlets:
            greenlet.join(timeout=5.0)
        gevent.killall([g for g in self._greenlets if not g.dead], timeout=2.0)
        if not self.saver.save_all():
            logger.error("fs-crm stopping with the state disk failing: %d finished call(s) could not be saved; "
                         "uploading them straight to the CRM", self.saver.unsaved)
            self.saver.rescue(lambda account, payloads: self.clients[account].upload_calls(payloads))
        try:
            stats = self.outbox.stats()
        finally:
            self.outbox.close()
        for client in self.clients.values():
            client.close()
        logger.info("fs-crm stopped: %d call(s) still queued for the CRM, %d set aside, %d in progress kept",
                    stats.pending, stats.failed, self.tracker.active_calls())

    def health(self) -> tuple[bool, dict]:
        """(healthy, details) for /healthz: unhealthy while FreeSWITCH's event socket is down, the
        state disk fails, or an account's history has waited longer than [health] max_pending_age."""
        now = self.clock()
        reasons = []
        if not self.listener.connected:
            reasons.append("FreeSWITCH event socket down: %s" % (self.listener.last_error or "not connected yet"))
        if self.saver.failing_since is not None:
            reasons.append("state disk failing since %s: %s" % (_iso(self.saver.failing_since), self.saver.last_error))
        # Counts read by the stats greenlet: a locked database must not make /healthz wait.
        stats, age = self.outbox_stats.stats, self.outbox_stats.age()
        if age is None or age > STATS_STALE_AFTER:
            reasons.append("outbox not readable for %s: %s" % ("ever" if age is None else "%.0f s" % age,
                                                               self.outbox_stats.error or "the state store is busy"))
        accounts = {}
        for name in self.clients:
            oldest = stats.oldest_pending_by_account.get(name) if stats else None
            waited = max(0.0, now - oldest) if oldest is not None else 0.0
            if waited > self.config.health.max_pending_age:
                reasons.append("account %s: history has waited %.0f s for the CRM (max_pending_age %.0f): %s"
                               % (name, waited, self.config.health.max_pending_age,
                                  self.history.last_error.get(name) or "not sent yet"))
            accounts[name] = {
                "pending": stats.pending_by_account.get(name, 0) if stats else None,
                "held": stats.held_by_account.get(name, 0) if stats else None,
                "set_aside": stats.failed_by_account.get(name, 0) if stats else None,
                "oldest_pending_age": round(waited, 1),
                "last_upload_ok_at": _iso(self.history.last_success.get(name)),
                "last_card_ok_at": _iso(self.cards.last_success.get(name)),
                "last_history_error": self.history.last_error.report(name),
                "last_card_error": self.cards.last_error.report(name),
            }
        details = {
            "healthy": not reasons,
            "reasons": reasons,
            "version": __version__,
            "esl_connected": self.listener.connected,
            "esl_last_error": self.listener.last_error,
            "last_event_at": _iso(self.last_event_at),
            "command_connection_last_error": self.commands.last_error,
            "calls_in_progress": self.tracker.active_calls(),
            "outbox": None if stats is None else {
                "pending": stats.pending, "failed": stats.failed, "held": stats.held, "recordings": stats.recordings,
                "oldest_pending_at": _iso(stats.oldest_pending_at)},
            "accounts": accounts,
            "storage": None if self.recordings is None else {"last_error": self.recordings.last_error},
            "state": self.saver.health(),
        }
        return not reasons, details

    @property
    def failure(self) -> BaseException | None:
        return self._failure

    def run_forever(self) -> int:
        self.start()
        self.wait()
        self.stop()
        return 1 if self._failure is not None else 0


def build_store(config: Config) -> RecordingStore:
    storage = config.storage
    if storage.backend == "s3":
        from recordings.s3 import S3Store  # boto3 loads only when S3 is configured

        return S3Store(storage.bucket, region=storage.region, endpoint_url=storage.endpoint_url,
                       prefix=storage.prefix)
    return LocalStore(storage.directory)


def _iso(epoch: float | None) -> str | None:
    """A time for /healthz: ISO 8601 in UTC, with its zone."""
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, tz=dt.timezone.utc).isoformat(timespec="seconds")


def _json_or_none(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None

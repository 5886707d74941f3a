"""Call history delivery: drains the durable outbox into retailCRM's calls/upload.

One greenlet per account, so a slow or dead CRM (or a long backlog) of one account never delays
another's history; within an account uploads are strictly FIFO, at most 50 calls each.
Outcomes of an upload:
- accepted (duplicates included: the CRM already had them): the calls leave the outbox;
- `CrmUnavailable`: the rest of the batch is deferred with capped exponential backoff and jitter,
  and the account's pass ends, so nothing newer overtakes it;
- `CrmRejected` about the calls: the batch is split in halves until the refused call is alone,
  then that call is set aside with the CRM's message and the others go through;
- `CrmRejected` about the account (bad key, no rights, no such account, telephony off, 404/405,
  an HTML page, a 2xx whose `success` is not true): nothing is set aside, since every call would
  be; the batch waits the long backoff instead;
- accepted but counted short (processed + duplicates < batch): the uncounted calls are sent once
  more at once (those the CRM did store come back as duplicates); what is still missing is set aside.
The outbox itself failing (a full state disk) pauses the account's loop with backoff; nothing exits.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import gevent
from gevent.event import Event
from gevent.pool import Group

from fs_crm import vocab
from fs_crm.calls.history_mapping import rendered
from fs_crm.config import DeliveryConfig
from fs_crm.crm.answers import CrmRejected, CrmUnavailable
from fs_crm.crm.upload_outcome import is_account_problem, reason_of, tally
from fs_crm.greenlets import spawn
from fs_crm.lasterrors import LastErrors
from fs_crm.outages import Outage, capped
from fs_crm.store.outbox import Outbox, OutboxError, OutboxItem

if TYPE_CHECKING:
    from fs_crm.crm.client import CrmClient

logger = logging.getLogger(__name__)

# Delivered externalIds are remembered this long, so a call reported again later is not re-sent.
DELIVERED_RETENTION = 7 * 24 * 3600.0
PRUNE_INTERVAL = 3600.0
# An idle account loop looks at the outbox at least this often, whatever it was told.
IDLE_RECHECK = 60.0
# Back-off while the outbox itself fails (a full or read-only state disk).
STORE_RETRY_MIN = 1.0
STORE_RETRY_MAX = 5.0
# While a backlog drains, one progress line this often (seconds).
BACKLOG_PROGRESS_EVERY = 10.0
# Delays are drawn from [d * (1 - JITTER), d], so accounts that failed together retry apart.
JITTER = 0.5

# After an answer that accounts for fewer calls than were sent (processedCallsCount plus
# duplicateCalls), the unconfirmed calls are sent again this many times before being set aside.
SHORT_COUNT_RESENDS = 1


def _ids(items: Sequence[OutboxItem]) -> str:
    return capped(item.external_id for item in items)


class HistorySender:
    def __init__(self, outbox: Outbox, clients: dict[str, CrmClient], delivery: DeliveryConfig,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = gevent.sleep,
                 *, rand: Callable[[], float] = random.random, retention: float = DELIVERED_RETENTION):
        self._outbox = outbox
        self._clients = dict(clients)
        self._delivery = delivery
        self._clock = clock
        # Only used to yield between batches: SQLite and JSON work never give the hub a turn.
        self._sleep = sleep
        self._rand = rand
        self._retention = retention
        self._wakeups = {account: Event() for account in self._clients}
        self._stop_event = Event()
        self._stopping = False
        self._group: Group | None = None
        self._crashed: BaseException | None = None
        # Per account: consecutive unavailable answers (the backoff exponent), and whether the
        # current streak of account refusals was already logged at ERROR.
        self._failures: dict[str, int] = {}
        # The CRM's last complaint per account, until an upload succeeds again (for /healthz).
        self.last_error = LastErrors()
        # (account, "delivered" | "deferred" | "set_aside") -> calls, and uploads per (account,
        # "accepted" | "unavailable" | "refused"), for /metrics; the last accepted upload's time per
        # account (epoch seconds), for /healthz.
        self.calls: Counter[tuple[str, str]] = Counter()
        self.uploads: Counter[tuple[str, str]] = Counter()
        self.last_success: dict[str, float] = {}
        self._refused: set[str] = set()
        self._outages = {account: Outage(logger, "%s: CRM" % account, "history waits in the outbox and is retried")
                         for account in self._clients}
        # Per account while a backlog drains: (started, calls uploaded, last progress line), monotonic.
        self._backlog: dict[str, list[float]] = {}

    # --- lifecycle -------------------------------------------------------------------------------

    def wake(self, account: str | None = None) -> None:
        """Something was added: look at the outbox now instead of at the next planned time."""
        for name, event in self._wakeups.items():
            if account is None or name == account:
                event.set()

    def run(self) -> None:
        """Deliver until `stop()`; re-raises what crashed an account loop."""
        if self._stopping:
            return
        try:
            stranded = set(self._outbox.stats().pending_by_account) - set(self._clients)
        except OutboxError as exc:
            logger.warning("cannot look for calls of accounts no longer configured: %s", exc)
            stranded = set()
        for account in sorted(stranded):
            logger.warning("%s: calls for this account stay in the outbox: it is not configured", account)
        self._group = Group()
        for account in self._clients:
            self._spawn(self._account_loop, account)
        self._spawn(self._housekeeping)
        logger.info("history sender started for %s", ", ".join(self._clients) or "no accounts")
        self._group.join()
        if self._crashed is not None:
            raise self._crashed

    def stop(self, drain_timeout: float = 5.0) -> None:
        """Let the upload in flight finish (up to `drain_timeout`), then return; unsent calls stay."""
        self._stopping = True
        self._stop_event.set()
        self.wake()
        group = self._group
        if group is not None:
            group.join(timeout=drain_timeout)
            if len(group):
                logger.warning("history upload still in flight after %.1f s; abandoning it, its calls "
                               "stay in the outbox and are sent again next time", drain_timeout)
                group.kill(block=True, timeout=1.0)
        try:
            stats = self._outbox.stats()
        except OutboxError as exc:
            logger.warning("history sender stopped; cannot count what the outbox kept: %s", exc)
            return
        logger.info("history sender stopped; %d calls pending and %d set aside kept in %s",
                    stats.pending, stats.failed, self._outbox.path)

    def _spawn(self, func: Callable[..., None], *args: str) -> None:
        assert self._group is not None
        spawn("history-%s" % (args[0] if args else func.__name__.strip("_")), func, *args, on_crash=self._on_crash,
              pool=self._group)

    def _on_crash(self, greenlet: gevent.Greenlet) -> None:
        logger.error("history sender stopping: %s crashed", greenlet.name)
        if self._crashed is None:
            self._crashed = greenlet.exception
        self._stopping = True
        self._stop_event.set()
        self.wake()

    def _account_loop(self, account: str) -> None:
        wakeup = self._wakeups[account]
        store_failures = 0
        while not self._stopping:
            # Cleared before looking, so a wake() during the pass triggers another one.
            wakeup.clear()
            try:
                self.drain_once(account)
                wait = self._idle_time(account)
                store_failures = 0
            except OutboxError as exc:
                # The state disk is failing (the service's saver reports it): what was sent but not
                # marked delivered goes again later, and the CRM answers it as a duplicate.
                store_failures += 1
                wait = min(STORE_RETRY_MAX, STORE_RETRY_MIN * 2 ** min(store_failures - 1, 16))
                log = logger.warning if store_failures == 1 else logger.debug
                log("%s: history delivery pauses %.1f s, the outbox cannot be used: %s", account, wait, exc)
            if self._stopping:
                break
            wakeup.wait(wait)

    def _idle_time(self, account: str) -> float:
        next_at = self._outbox.next_due_at(account)
        if next_at is None:
            return IDLE_RECHECK
        return min(max(next_at - self._clock(), 0.0), IDLE_RECHECK)

    def _housekeeping(self) -> None:
        while not self._stopping:
            try:
                pruned = self._outbox.prune_delivered(self._clock() - self._retention)
            except OutboxError as exc:
                logger.warning("could not forget old delivered call ids, trying again in an hour: %s", exc)
                pruned = 0
            if pruned:
                logger.debug("forgot %d delivered call ids older than %.0f days", pruned,
                             self._retention / 86400)
            self._stop_event.wait(PRUNE_INTERVAL)

    # --- one pass --------------------------------------------------------------------------------

    def drain_once(self, account: str) -> int:
        """Send what is due for one account, batch after batch; returns how many calls were accepted."""
        client = self._clients.get(account)
        if client is None:
            logger.warning("%s: no CRM client for this account; its calls stay in the outbox", account)
            return 0
        accepted = 0
        while not self._stopping:
            batch = self._outbox.due(account, vocab.MAX_CALLS_PER_UPLOAD)
            if not batch:
                self._backlog_drained(account)
                break
            if len(batch) == vocab.MAX_CALLS_PER_UPLOAD and account not in self._backlog:
                now = time.monotonic()
                self._backlog[account] = [now, 0, now]
                logger.info("%s: a backlog of history is draining (%d+ calls due)", account, len(batch))
            sent, go_on = self._send(account, client, batch)
            accepted += sent
            self._backlog_progress(account, sent)
            if not go_on:
                break
            self._sleep(0)
        return accepted

    def _backlog_progress(self, account: str, sent: int) -> None:
        backlog = self._backlog.get(account)
        if backlog is None:
            return
        backlog[1] += sent
        now = time.monotonic()
        if now - backlog[2] >= BACKLOG_PROGRESS_EVERY:
            backlog[2] = now
            logger.info("%s: backlog draining: %d calls uploaded in %.0f s", account, backlog[1], now - backlog[0])

    def _backlog_drained(self, account: str) -> None:
        backlog = self._backlog.pop(account, None)
        if backlog is not None:
            logger.info("%s: backlog drained: %d calls uploaded in %.0f s, nothing is waiting", account, backlog[1],
                        time.monotonic() - backlog[0])

    def _send(self, account: str, client: CrmClient, batch: list[OutboxItem]) -> tuple[int, bool]:
        """Upload one batch, splitting it around refused calls; (accepted, may the pass go on)."""
        # Parts still to upload, in FIFO order: (items, kind, resends). Kind `first` marks the first
        # half of a split; `bad` a second half whose first half went through, so it holds the refused
        # call: split it without spending an upload on the whole of it. `resends` counts how often
        # these calls went again because an answer did not account for them.
        first, bad, plain = "first", "bad", ""
        parts: list[tuple[list[OutboxItem], str, int]] = [(batch, plain, 0)]
        accepted = 0

        def halves(items: list[OutboxItem], resends: int) -> list[tuple[list[OutboxItem], str, int]]:
            return [(half, first if is_first else plain, resends) for half, is_first in self._halves(items)]

        def rest(items: list[OutboxItem]) -> list[OutboxItem]:
            return items + [item for part in parts for item in part[0]]

        while parts:
            if self._stopping:
                return accepted, False  # what is left stays pending and due
            items, kind, resends = parts.pop(0)
            if kind == bad and len(items) > 1:
                parts[0:0] = halves(items, resends)
                continue
            try:
                result = client.upload_calls([self._payload(item, client) for item in items])
            except CrmUnavailable as exc:
                self.uploads[account, "unavailable"] += 1
                self.last_error[account] = reason_of(exc)
                self._defer_unavailable(account, rest(items), exc)
                return accepted, False
            except CrmRejected as exc:
                self.uploads[account, "refused"] += 1
                self.last_error[account] = reason_of(exc)
                if is_account_problem(exc):
                    self._defer_refused(account, rest(items), exc)
                    return accepted, False
                if len(items) == 1:
                    self._set_aside(account, items[0], exc)
                else:
                    logger.info("%s: CRM refused a batch of %d calls (%s); splitting it to find the "
                                "refused call(s)", account, len(items), reason_of(exc))
                    parts[0:0] = halves(items, resends)
                continue
            if kind == first and parts and parts[0][1] == plain:
                parts[0] = (parts[0][0], bad, parts[0][2])

            # Does the answer account for every call? Those it does not are sent again, then set aside.
            counts = tally(items, result)
            if counts.strays:
                logger.warning("%s: the CRM reports duplicates that were not in this upload: %s",
                               account, ", ".join(counts.strays))
            if not counts.counted:
                logger.warning("%s: the CRM accepted %d calls without saying how many it processed: %s",
                               account, len(items), _ids(items))
            elif counts.shortfall:
                logger.warning("%s: %s: %s", account, counts.shortfall, _ids(items))
            delivered, unconfirmed, shortfall = counts.delivered, counts.unconfirmed, counts.shortfall
            self.uploads[account, "accepted"] += 1
            self.last_success[account] = self._clock()
            if delivered:
                self._outbox.mark_delivered(item.id for item in delivered)
                accepted += len(delivered)
                self.calls[account, "delivered"] += len(delivered)
            self._failures.pop(account, None)
            self.last_error.pop(account, None)
            self._refused.discard(account)
            self._outages[account].recovered()
            # While a backlog drains, its progress lines say it; one line per upload would flood.
            log = logger.debug if account in self._backlog else logger.info
            if counts.duplicates:
                log("%s: uploaded %d calls (%s); the CRM already had %s", account, len(delivered),
                    _ids(delivered), capped(sorted(counts.duplicates)))
            elif delivered:
                log("%s: uploaded %d calls (%s)", account, len(delivered), _ids(delivered))
            if not unconfirmed:
                continue
            # Shown on /healthz until an upload is fully accounted for again.
            self.last_error[account] = shortfall
            if resends < SHORT_COUNT_RESENDS:
                logger.warning("%s: sending %d unconfirmed calls again: %s", account, len(unconfirmed),
                               _ids(unconfirmed))
                parts.insert(0, (unconfirmed, plain, resends + 1))
                continue
            for item in unconfirmed:
                self._outbox.set_aside(item.id, shortfall + ", even when sent again")
            self.calls[account, "set_aside"] += len(unconfirmed)
            logger.error("%s: %s, even when sent again; set aside %d calls: check them in the CRM, then "
                         "retry them with `fs-crm outbox --retry ID` (already stored ones come back as duplicates): %s",
                         account, shortfall, len(unconfirmed), _ids(unconfirmed))
        return accepted, True

    @staticmethod
    def _payload(item: OutboxItem, client: CrmClient) -> dict:
        """Rendered now, from the config in force: a call refused for a config mistake goes out
        right once the mistake is fixed (fs-crm outbox --retry)."""
        return rendered(item.payload, item.facts, client.account) if item.facts else item.payload

    @staticmethod
    def _halves(items: list[OutboxItem]) -> list[tuple[list[OutboxItem], bool]]:
        middle = len(items) // 2
        return [(items[:middle], True), (items[middle:], False)]

    # --- failures --------------------------------------------------------------------------------

    def _jittered(self, delay: float) -> float:
        return delay * (1.0 - JITTER * self._rand())

    def backoff(self, account: str) -> float:
        """The next retry delay for an account the CRM did not answer: doubles up to the cap."""
        failures = self._failures.get(account, 0) + 1
        self._failures[account] = failures
        low, high = self._delivery.retry_min_delay, self._delivery.retry_max_delay
        return self._jittered(min(high, low * 2.0 ** min(failures - 1, 62)))

    def _defer_unavailable(self, account: str, items: list[OutboxItem], exc: CrmUnavailable) -> None:
        delay = self.backoff(account)
        reason = reason_of(exc)
        self._outbox.defer((item.id for item in items), delay, reason)
        self.calls[account, "deferred"] += len(items)
        self._outages[account].failed(reason, lambda: "%d+ calls wait, next try in %.0f s" % (len(items), delay))
        logger.debug("%s: %d calls wait %.1f s: %s", account, len(items), delay, _ids(items))

    def _defer_refused(self, account: str, items: list[OutboxItem], exc: CrmRejected) -> None:
        delay = self._jittered(self._delivery.retry_max_delay)
        reason = reason_of(exc)
        self._outbox.defer((item.id for item in items), delay, reason)
        self.calls[account, "deferred"] += len(items)
        if account in self._refused:
            logger.debug("%s: CRM still refuses the account (%s); %d calls wait %.1f s: %s", account,
                         reason, len(items), delay, _ids(items))
            return
        self._refused.add(account)
        logger.error("%s: CRM refuses the account (%s): check the API key, its rights and crm_url; "
                     "history is kept and retried every %.0f s or so: %s", account, reason,
                     self._delivery.retry_max_delay, _ids(items))

    def _set_aside(self, account: str, item: OutboxItem, exc: CrmRejected) -> None:
        reason = reason_of(exc)
        self._outbox.set_aside(item.id, reason)
        self.calls[account, "set_aside"] += 1
        logger.error("%s: CRM refused call %s (%s); set aside: fix the cause (often the config: codes, stores), "
                     "then `fs-crm outbox --retry %s`", account, item.external_id, reason, item.external_id)

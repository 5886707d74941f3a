"""Call history delivery: drains the durable outbox into retailCRM's calls/upload.

One greenlet per account, so a slow or dead CRM (or a long backlog) of one account never delays
another's history; within an account uploads are strictly FIFO, at most 50 calls each.
Outcomes of an upload:
- accepted (duplicates included: the CRM already had them): the calls leave the outbox;
- `CrmUnavailable`: the rest of the batch is deferred with capped exponential backoff and jitter,
  and the account's pass ends, so nothing newer overtakes it;
- `CrmRejected` about the calls: the batch is split in halves until the refused call is alone,
  then that call is set aside with the CRM's message and the others go through;
- `CrmRejected` about the account (bad key, no rights, no such account, telephony off): nothing
  is set aside, since every call would be; the batch waits the long backoff instead.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import gevent
from gevent.event import Event
from gevent.pool import Group

from fs_crm import vocab
from fs_crm.config import DeliveryConfig
from fs_crm.crm import CrmError, CrmRejected, CrmUnavailable
from fs_crm.outbox import Outbox, OutboxError, OutboxItem

if TYPE_CHECKING:
    from fs_crm.crm import CrmClient

logger = logging.getLogger(__name__)

# Delivered externalIds are remembered this long, so a call reported again later is not re-sent.
DELIVERED_RETENTION = 7 * 24 * 3600.0
PRUNE_INTERVAL = 3600.0
# An idle account loop looks at the outbox at least this often, whatever it was told.
IDLE_RECHECK = 60.0
# Delays are drawn from [d * (1 - JITTER), d], so accounts that failed together retry apart.
JITTER = 0.5

# errorMsg fragments (lowercase) meaning the account, not the calls, is wrong; retailCRM's own
# strings ("Wrong \"apiKey\" value.", "Access denied.", "Account does not exist.", "Telephony not
# enabled or not supports calls upload") and what fs_crm.crm says for an HTML answer.
_ACCOUNT_PROBLEMS = ("apikey", "access denied", "account does not exist", "telephony not enabled",
                     "not supports calls upload")


def is_account_problem(exc: CrmRejected) -> bool:
    """True when the refusal is about the key or account, so setting calls aside would be wrong."""
    status = exc.status or 0
    if status in (401, 403) or 300 <= status < 400:
        return True
    text = (exc.error_msg or "").lower()
    return any(marker in text for marker in _ACCOUNT_PROBLEMS)


def _reason(exc: CrmError) -> str:
    """The CRM's own words, for last_error and logs (the account is on the item already)."""
    text = exc.error_msg or type(exc).__name__
    if exc.status is not None:
        text = "HTTP %s: %s" % (exc.status, text)
    if exc.errors:
        text += " " + json.dumps(exc.errors, ensure_ascii=False)
    return text


def _ids(items: Sequence[OutboxItem]) -> str:
    return ", ".join(item.external_id for item in items)


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
        self.last_error: dict[str, str] = {}
        self._refused: set[str] = set()

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
        stranded = set(self._outbox.stats().pending_by_account) - set(self._clients)
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
        greenlet = self._group.spawn(func, *args)
        greenlet.link_exception(self._on_crash)

    def _on_crash(self, greenlet: gevent.Greenlet) -> None:
        logger.error("history sender crashed; stopping it", exc_info=greenlet.exc_info)
        if self._crashed is None:
            self._crashed = greenlet.exception
        self._stopping = True
        self._stop_event.set()
        self.wake()

    def _account_loop(self, account: str) -> None:
        wakeup = self._wakeups[account]
        while not self._stopping:
            # Cleared before looking, so a wake() during the pass triggers another one.
            wakeup.clear()
            self.drain_once(account)
            if self._stopping:
                break
            wakeup.wait(self._idle_time(account))

    def _idle_time(self, account: str) -> float:
        next_at = self._outbox.next_due_at(account)
        if next_at is None:
            return IDLE_RECHECK
        return min(max(next_at - self._clock(), 0.0), IDLE_RECHECK)

    def _housekeeping(self) -> None:
        while not self._stopping:
            pruned = self._outbox.prune_delivered(self._clock() - self._retention)
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
                break
            sent, go_on = self._send(account, client, batch)
            accepted += sent
            if not go_on:
                break
            self._sleep(0)
        return accepted

    def _send(self, account: str, client: CrmClient, batch: list[OutboxItem]) -> tuple[int, bool]:
        """Upload one batch, splitting it around refused calls; (accepted, may the pass go on)."""
        # Parts still to upload, in FIFO order; True marks the first half of a split.
        parts: list[tuple[list[OutboxItem], bool]] = [(batch, False)]
        accepted = 0
        # The previous part was the first half of a refused group and went through, so this one
        # holds the refused call: split it without spending an upload on the whole of it.
        known_bad = False
        while parts:
            if self._stopping:
                return accepted, False  # what is left stays pending and due
            items, is_first = parts.pop(0)
            if known_bad and len(items) > 1:
                known_bad = False
                parts[0:0] = self._halves(items)
                continue
            known_bad = False
            try:
                result = client.upload_calls([item.payload for item in items])
            except CrmUnavailable as exc:
                self.last_error[account] = _reason(exc)
                self._defer_unavailable(account, items + [i for part, _ in parts for i in part], exc)
                return accepted, False
            except CrmRejected as exc:
                self.last_error[account] = _reason(exc)
                if is_account_problem(exc):
                    self._defer_refused(account, items + [i for part, _ in parts for i in part], exc)
                    return accepted, False
                if len(items) == 1:
                    self._set_aside(account, items[0], exc)
                else:
                    logger.info("%s: CRM refused a batch of %d calls (%s); splitting it to find the "
                                "refused call(s)", account, len(items), _reason(exc))
                    parts[0:0] = self._halves(items)
                continue
            self._outbox.mark_delivered(item.id for item in items)
            accepted += len(items)
            known_bad = is_first
            self._failures.pop(account, None)
            self.last_error.pop(account, None)
            self._refused.discard(account)
            if result.duplicates:
                logger.info("%s: uploaded %d calls (%s); the CRM already had %s", account, len(items),
                            _ids(items), ", ".join(result.duplicates))
            else:
                logger.info("%s: uploaded %d calls (%s)", account, len(items), _ids(items))
        return accepted, True

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
        reason = _reason(exc)
        self._outbox.defer((item.id for item in items), delay, reason)
        logger.warning("%s: CRM unavailable (%s); %d calls wait %.1f s: %s", account, reason, len(items),
                       delay, _ids(items))

    def _defer_refused(self, account: str, items: list[OutboxItem], exc: CrmRejected) -> None:
        delay = self._jittered(self._delivery.retry_max_delay)
        reason = _reason(exc)
        self._outbox.defer((item.id for item in items), delay, reason)
        if account in self._refused:
            logger.debug("%s: CRM still refuses the account (%s); %d calls wait %.1f s: %s", account,
                         reason, len(items), delay, _ids(items))
            return
        self._refused.add(account)
        logger.error("%s: CRM refuses the account (%s): check the API key, its rights and crm_url; "
                     "history is kept and retried every %.0f s or so: %s", account, reason,
                     self._delivery.retry_max_delay, _ids(items))

    def _set_aside(self, account: str, item: OutboxItem, exc: CrmRejected) -> None:
        reason = _reason(exc)
        self._outbox.set_aside(item.id, reason)
        logger.error("%s: CRM refused call %s (%s); set aside, retry it with retry_failed once fixed",
                     account, item.external_id, reason)

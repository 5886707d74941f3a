"""Call cards (`telephony/call/event`): sent at once, concurrently, and dropped when stale.

A card is only useful while the phone rings, so it is never written to disk: it is sent right away
on its own greenlet (urgent in the rate limiter, ahead of history uploads), retried briefly while
the CRM is unavailable, and dropped with a log line once older than `card_max_age`. Cards of one
call keep their order (an `in` is never overtaken by its `hangup`); different calls go in parallel.
A `hangup` card closes the card on a manager's screen, so when that phone's ringing card never reached
the CRM (dropped as stale or refused) its hangup is dropped too: the outcome does not depend on whether
the CRM came back a moment before or after the hangup card aged out.
Cards age on our own monotonic clock from the moment their event was received: FreeSWITCH's clock
(the event's timestamp) may be minutes off ours, and a skew beyond card_max_age would drop every card.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Callable, Mapping

import gevent
import gevent.pool

from fs_crm import vocab
from fs_crm.config import DeliveryConfig
from fs_crm.crm.client import CrmClient, CrmRejected, CrmUnavailable
from fs_crm.crm.payloads import CallEvent
from fs_crm.greenlets import spawn
from fs_crm.lasterrors import LastErrors
from fs_crm.outages import Outage

logger = logging.getLogger(__name__)

MAX_IN_FLIGHT = 200
# Phones (call, code) whose ringing card never reached the CRM, remembered for their hangup card; the
# oldest go first, long after their calls ended, so a hangup that never comes cannot leak memory.
MAX_UNSHOWN = 10_000
FULL_POOL_LOG_EVERY = 60.0


class CardSender:
    def __init__(self, clients: Mapping[str, CrmClient], delivery: DeliveryConfig,
                 clock: Callable[[], float] = time.monotonic):
        self.clients = clients
        self.max_age = delivery.card_max_age
        self.clock = clock
        self.pool = gevent.pool.Pool(MAX_IN_FLIGHT)
        self._last_of_call: dict[str, gevent.Greenlet] = {}
        self._unshown: dict[tuple[str, str], None] = {}
        self.sent = 0
        self.dropped = 0
        # (account, card type, "sent" | "dropped" | "refused") -> cards, for /metrics.
        self.outcomes: collections.Counter[tuple[str, str, str]] = collections.Counter()
        # When a card last reached the CRM, per account (epoch seconds), for /healthz.
        self.last_success: dict[str, float] = {}
        self._outages = {account: Outage(logger, "%s: CRM" % account, "call cards are retried until they are "
                                         "%.0f s old, then dropped" % self.max_age) for account in clients}
        self._full_pool_logged_at = 0.0
        self.last_error = LastErrors()

    def submit(self, card: CallEvent, received_at: float | None = None) -> None:
        """Never blocks the caller (the ESL reader): sending happens on a pooled greenlet.
        `received_at` (this sender's clock): when the card's event arrived; default now."""
        received_at = self.clock() if received_at is None else received_at
        if self._too_old(card, received_at):
            self._settle(card, delivered=False)
            return
        previous = self._last_of_call.get(card.call_id)
        greenlet = spawn("card-%s" % card.call_id, self._send, card, received_at, previous, start=False)
        self._last_of_call[card.call_id] = greenlet
        greenlet.link(lambda g, call_id=card.call_id: self._forget(call_id, g))
        if self.pool.full():
            now = time.monotonic()
            if now - self._full_pool_logged_at >= FULL_POOL_LOG_EVERY:
                self._full_pool_logged_at = now
                logger.warning("call %s: %d cards already in flight (the CRM is slow or down); new cards wait for a "
                               "free slot (said at most once a minute)", card.call_id, MAX_IN_FLIGHT)
            spawn("card-wait-%s" % card.call_id, self.pool.start, greenlet)
        else:
            self.pool.start(greenlet)

    def _forget(self, call_id: str, greenlet: gevent.Greenlet) -> None:
        if self._last_of_call.get(call_id) is greenlet:
            del self._last_of_call[call_id]

    def _too_old(self, card: CallEvent, received_at: float) -> bool:
        age = self.clock() - received_at
        if age > self.max_age:
            self.dropped += 1
            self.outcomes[card.account, card.type, "dropped"] += 1
            logger.warning("call %s account %s: dropping stale %s card for %s (%.1fs old)", card.call_id,
                           card.account, card.type, ",".join(card.codes), age)
            return True
        return False

    def _send(self, card: CallEvent, received_at: float, previous: gevent.Greenlet | None) -> None:
        if previous is not None:
            previous.join()
        if card.type == vocab.EVENT_HANGUP and card.codes and all(
                (card.call_id, code) in self._unshown for code in card.codes):
            self.dropped += 1
            self.outcomes[card.account, card.type, "dropped"] += 1
            logger.warning("call %s account %s: dropping hangup card for %s: its ringing card never reached the CRM",
                           card.call_id, card.account, ",".join(card.codes))
            return
        self._settle(card, delivered=self._deliver(card, received_at))

    def _settle(self, card: CallEvent, delivered: bool) -> None:
        """Remember which phones' ringing cards the CRM never got, so their hangups are not sent."""
        if card.type == vocab.EVENT_HANGUP:
            return
        for code in card.codes:
            if delivered:
                self._unshown.pop((card.call_id, code), None)
            else:
                self._unshown[card.call_id, code] = None
        while len(self._unshown) > MAX_UNSHOWN:
            del self._unshown[next(iter(self._unshown))]

    def _deliver(self, card: CallEvent, received_at: float) -> bool:
        client = self.clients[card.account]
        delay = 0.25
        while not self._too_old(card, received_at):
            try:
                # A ringing card must not wait behind the hangup cards of phones that stopped ringing.
                client.send_event(card.to_api(), urgent=card.type != vocab.EVENT_HANGUP)
            except CrmUnavailable as exc:
                self.last_error[card.account] = str(exc)
                self._outages[card.account].failed(str(exc), lambda: "%d cards in flight" % len(self.pool))
                logger.debug("call %s account %s: %s card not delivered yet: %s", card.call_id, card.account,
                             card.type, exc)
                gevent.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            except CrmRejected as exc:
                self.last_error[card.account] = str(exc)
                logger.error("call %s account %s: CRM refused the %s card: %s", card.call_id, card.account,
                             card.type, exc)
                self.outcomes[card.account, card.type, "refused"] += 1
                return False
            self.sent += 1
            self.outcomes[card.account, card.type, "sent"] += 1
            self.last_success[card.account] = time.time()
            self.last_error.pop(card.account, None)
            self._outages[card.account].recovered()
            logger.debug("call %s account %s: %s card delivered to %s", card.call_id, card.account, card.type,
                         ",".join(card.codes))
            return True
        return False

    def stop(self, timeout: float = 2.0) -> None:
        """Cards still in flight get a moment to finish; after that they are stale anyway."""
        self.pool.join(timeout=timeout)
        self.pool.kill(block=False)

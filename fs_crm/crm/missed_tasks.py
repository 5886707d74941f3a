"""Missed incoming calls become retailCRM tasks (`POST /api/v5/tasks/create`), best effort.

Fed with every finished CallRecord (the service's `_apply`, in whatever greenlet made it): `submit`
only decides and enqueues, so it never waits on the CRM and history goes on exactly as without it.
One worker greenlet asks the CRM who the customer's responsible manager is (whatever his status)
and creates the task for him; without one, for the manager the call rang (the account's extension
map), else for the account's `performer`, else nobody. CrmUnavailable is retried a few times, a
refusal is logged; either way the call's history is not touched.

At most one task per customer (phone) per hour, by the calls' own start times. The worker decides
it, in the order the calls ended; each task made is also marked in the outbox file
(`missed_task_marks`), which the worker reads before its first call, so a restart does not make a
second task within the hour. A task created just before a crash, whose mark was not written yet,
can still be made twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Mapping

import gevent
import gevent.event
import gevent.queue

from fs_crm import vocab
from fs_crm.config import AccountConfig, DeliveryConfig, MissedCallTasks
from fs_crm.crm.client import CrmClient, CrmRejected, CrmUnavailable
from fs_crm.crm.payloads import CallRecord, CrmTask
from fs_crm.store.outbox import OutboxError

logger = logging.getLogger(__name__)

ONE_TASK_PER_SECONDS = 3600
MAX_ATTEMPTS = 5
QUEUE_SIZE = 1000
# Customers remembered at most (the oldest are forgotten first); an hour of calls on a big PBX.
REMEMBERED = 50_000
# Marks older than this before the newest go: calls replayed late (CDRs) may be hours old.
MARKS_KEPT_FOR = 24 * 3600
TASK_DATETIME = "%Y-%m-%d %H:%M"  # the PHP client's DateTime<'Y-m-d H:i'> for Task.datetime


def is_missed(record: CallRecord) -> bool:
    """An incoming call nobody answered, from a customer whose number we can call back."""
    return (record.type == vocab.EVENT_IN and record.result != vocab.RESULT_ANSWERED
            and any(ch.isdigit() for ch in record.phone))


def call_time(record: CallRecord, account: AccountConfig) -> float:
    """The call's start (seconds since the epoch) from its history date, in the account's zone."""
    local = dt.datetime.strptime(record.date, "%Y-%m-%d %H:%M:%S").replace(tzinfo=account.zone)
    return local.timestamp()


def task_for(record: CallRecord, account: AccountConfig, settings: MissedCallTasks, performer_id: int,
             customer_id: int | None) -> CrmTask:
    """The task (pure): the operator's text, the call's facts in the commentary, due if configured."""
    fields = {"phone": record.phone, "date": record.date, "external_phone": record.external_phone or "",
              "site": record.site or ""}
    due = None
    if settings.due_in_minutes:
        start = dt.datetime.strptime(record.date, "%Y-%m-%d %H:%M:%S")
        due = (start + dt.timedelta(minutes=settings.due_in_minutes)).strftime(TASK_DATETIME)
    on = " on %s" % record.external_phone if record.external_phone else ""
    store = " (%s)" % record.site if record.site else ""
    commentary = "Missed incoming call from %s%s%s at %s (%s)." % (record.phone, on, store, record.date,
                                                                   record.result)
    return CrmTask(account=account.name, text=settings.text.format(**fields), performer_id=performer_id,
                   call_id=record.external_id, phone=record.phone, commentary=commentary,
                   customer_id=customer_id, datetime=due)


def _positive_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


@dataclass
class _Job:
    record: CallRecord
    account: AccountConfig
    settings: MissedCallTasks
    key: tuple[str, str]
    at: float


class MissedCallTasker:
    """marks: the outbox (through OffHubOutbox: the worker is a greenlet), or None to remember in
    memory only."""

    def __init__(self, accounts: Mapping[str, AccountConfig], clients: Mapping[str, CrmClient],
                 delivery: DeliveryConfig, *, marks=None, lookup_timeout: float = 5.0,
                 rng: Callable[[], float] = random.random):
        self.accounts = {name: a for name, a in accounts.items() if a.missed_call_tasks is not None}
        self.clients = clients
        self.marks = marks
        self.delivery = delivery
        self.lookup_timeout = lookup_timeout
        self._rng = rng
        self._queue: gevent.queue.Queue = gevent.queue.Queue(QUEUE_SIZE)
        # (account, phone) -> start time of the call that made (or is making) its task.
        self._last: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._stopping = gevent.event.Event()
        self.created = 0
        self.skipped = 0  # within the hour of the customer's last task
        self.failed = 0
        self.without_performer = 0

    @property
    def enabled(self) -> bool:
        return bool(self.accounts)

    def submit(self, record: CallRecord) -> None:
        """Called with every finished call; never blocks, never raises for a call it cannot use."""
        account = self.accounts.get(record.account)
        if account is None or not is_missed(record):
            return
        try:
            at = call_time(record, account)
        except ValueError:
            logger.warning("call %s account %s: unreadable date %r; no task", record.external_id, record.account,
                           record.date)
            return
        try:
            self._queue.put_nowait(_Job(record, account, account.missed_call_tasks, (record.account, record.phone),
                                        at))
        except gevent.queue.Full:
            logger.warning("call %s account %s: %d missed-call tasks waiting for the CRM already; no task for "
                           "this one", record.external_id, record.account, QUEUE_SIZE)

    def run(self) -> None:
        self._load_marks()
        while not self._stopping.is_set():
            try:
                job = self._queue.get(timeout=0.5)
            except gevent.queue.Empty:
                continue
            if job is None:
                break
            if self._first_within_the_hour(job):
                self._deliver(job)

    def stop(self) -> None:
        self._stopping.set()
        left = self._queue.qsize()
        if left:
            logger.warning("stopping with %d missed-call task(s) not created", left)
        try:
            self._queue.put_nowait(None)
        except gevent.queue.Full:
            pass

    # --- the worker ---------------------------------------------------------------------------
    def _deliver(self, job: _Job) -> None:
        record, client = job.record, self.clients[job.record.account]
        lookup_done, performer, customer_id = False, None, None
        delay = self.delivery.retry_min_delay
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                if not lookup_done:
                    performer, customer_id = self._performer(client, job)
                    lookup_done = True
                if performer is None:
                    self.without_performer += 1
                    self._forget(job.key, job.at)
                    logger.warning("call %s account %s: missed call from %s has no responsible manager, rang no "
                                   "single manager, and missed_call_tasks.performer is not set; no task",
                                   record.external_id, record.account, record.phone)
                    return
                task = task_for(record, job.account, job.settings, performer, customer_id)
                task_id = client.create_task(task.to_api())
                self.created += 1
                self._save_mark(job)
                logger.info("call %s account %s: missed call from %s: task %s created for user %d",
                            record.external_id, record.account, record.phone, task_id or "(no id)", performer)
                return
            except CrmRejected as exc:
                if not lookup_done:
                    # The lookup refused (no such method for this key, say): the fallbacks still apply.
                    logger.warning("call %s account %s: manager lookup refused (%s); using the manager the call "
                                   "rang", record.external_id, record.account, exc)
                    performer, customer_id, lookup_done = self._fallback(job), None, True
                    continue
                self.failed += 1
                self._forget(job.key, job.at)
                logger.warning("call %s account %s: the CRM refused the missed-call task: %s", record.external_id,
                               record.account, exc)
                return
            except CrmUnavailable as exc:
                if attempt == MAX_ATTEMPTS:
                    break
                logger.info("call %s account %s: missed-call task waits for the CRM (%s); attempt %d of %d",
                            record.external_id, record.account, exc, attempt + 1, MAX_ATTEMPTS)
                if self._stopping.wait(timeout=delay * (0.5 + self._rng())):
                    break
                delay = min(delay * 2, self.delivery.retry_max_delay)
        self.failed += 1
        self._forget(job.key, job.at)
        logger.warning("call %s account %s: missed-call task given up: the CRM was unavailable %d times",
                       record.external_id, record.account, MAX_ATTEMPTS)

    def _performer(self, client: CrmClient, job: _Job) -> tuple[int | None, int | None]:
        """(performer, customer id): the responsible manager whatever his status, else the fallbacks."""
        found = client.manager_lookup(job.record.phone, self.lookup_timeout, ignore_status=True)
        customer_id = _positive_int((found.customer or {}).get("id"))
        manager_id = _positive_int((found.manager or {}).get("id"))
        return (manager_id or self._fallback(job)), customer_id

    @staticmethod
    def _fallback(job: _Job) -> int | None:
        # The manager the call was meant for: the one extension it rang (history's code/userId).
        return job.record.user_id or job.settings.performer

    # --- one task per customer per hour ---------------------------------------------------------
    def _first_within_the_hour(self, job: _Job) -> bool:
        last = self._last.get(job.key)
        if last is not None and abs(job.at - last) < ONE_TASK_PER_SECONDS:
            self.skipped += 1
            logger.info("call %s account %s: missed call from %s, who got a task for a call %.0f min apart; "
                        "no second task within the hour", job.record.external_id, job.record.account,
                        job.record.phone, abs(job.at - last) / 60)
            return False
        self._remember(job.key, job.at)
        return True

    def _load_marks(self) -> None:
        if self.marks is None:
            return
        try:
            marks = self.marks.missed_task_marks(REMEMBERED)
        except OutboxError as exc:
            logger.warning("missed-call tasks made before the restart cannot be read (%s): a customer who got "
                           "one within the hour may get a second", exc)
            return
        for account, phone, at in marks:
            self._remember((account, phone), at)

    def _save_mark(self, job: _Job) -> None:
        if self.marks is None:
            return
        try:
            self.marks.mark_missed_task(job.record.account, job.record.phone, job.at, MARKS_KEPT_FOR)
        except OutboxError as exc:
            logger.warning("call %s account %s: the task is made, but not marked in the outbox (%s): after a "
                           "restart within the hour this customer may get a second one", job.record.external_id,
                           job.record.account, exc)

    def _remember(self, key: tuple[str, str], at: float) -> None:
        self._last[key] = at
        self._last.move_to_end(key)
        while len(self._last) > REMEMBERED:
            self._last.popitem(last=False)

    def _forget(self, key: tuple[str, str], at: float) -> None:
        """No task came of the call at `at`: the customer's next missed call may try again."""
        if self._last.get(key) == at:
            del self._last[key]

"""HistorySender against an in-process CRM double: batching, outages, refusals, backoff, shutdown."""

import logging
import math

import gevent
import pytest
from gevent.event import Event

from fs_crm import vocab
from fs_crm.config import DeliveryConfig
from fs_crm.crm.client import CrmRejected, CrmUnavailable, UploadResult
from fs_crm.crm.history import HistorySender
from fs_crm.store.outbox import FILE_NAME, Outbox

ACME = "acme"


class FakeCrm:
    """Records every upload; stores accepted calls once, like retailCRM deduplicating by externalId."""

    def __init__(self, account=ACME):
        self.account = account
        self.uploads: list[list[str]] = []
        self.stored: list[str] = []
        self.poisoned: set[str] = set()
        # Exceptions to raise for the next uploads, one each; None means answer normally.
        self.failures: list[Exception | None] = []
        # Store the batch, then fail anyway: the answer got lost on the way back.
        self.lose_answers = 0
        # Answer processedCallsCount one too low for the next uploads (all calls stored).
        self.undercount = 0
        # Answer processedCallsCount this much too high for the next uploads.
        self.overcount = 0
        # Calls answered as accepted but neither stored nor counted.
        self.dropped: set[str] = set()
        self.stall: Event | None = None
        self.entered = Event()

    def upload_calls(self, calls):
        assert 1 <= len(calls) <= vocab.MAX_CALLS_PER_UPLOAD
        ids = [c["externalId"] for c in calls]
        self.uploads.append(ids)
        self.entered.set()
        if self.stall is not None:
            self.stall.wait()
        if self.failures:
            failure = self.failures.pop(0)
            if failure is not None:
                raise failure
        bad = [n for n, i in enumerate(ids) if i in self.poisoned]
        if bad:
            raise CrmRejected(self.account, "Errors in the entity format", 400,
                              {"calls[%d][phone]" % n: "Phone is not valid" for n in bad}, "/upload")
        kept = [i for i in ids if i not in self.dropped]
        duplicates = tuple(i for i in kept if i in self.stored)
        self.stored.extend(i for i in kept if i not in self.stored)
        if self.lose_answers:
            self.lose_answers -= 1
            raise CrmUnavailable(self.account, "ReadTimeout after 20.0 s", None, None, "/upload")
        processed = len(kept) - len(duplicates)
        if self.undercount and processed:
            self.undercount -= 1
            processed -= 1
        if self.overcount:
            processed, self.overcount = processed + self.overcount, 0
        return UploadResult(processed=processed, duplicates=duplicates)


def unavailable():
    return CrmUnavailable(ACME, "rate limited", 503, None, "/upload")


def call(external_id):
    return {"date": "2024-05-01 10:00:00", "type": "in", "phone": "79001234567", "result": "answered",
            "duration": 12, "durationWaiting": 3, "externalId": external_id}


def ids(count, prefix="call"):
    return ["%s-%03d" % (prefix, i) for i in range(count)]


def fill(outbox, count, account=ACME, prefix="call"):
    for external_id in ids(count, prefix):
        assert outbox.add(account, external_id, call(external_id))


def wait_until(condition, timeout=3.0):
    deadline = gevent.get_hub().loop.now() + timeout
    while not condition():
        assert gevent.get_hub().loop.now() < deadline, "condition not met within %.1f s" % timeout
        gevent.sleep(0.005)


@pytest.fixture
def crm():
    return FakeCrm()


DELIVERY = DeliveryConfig(retry_min_delay=1.0, retry_max_delay=60.0)


def make_sender(outbox, clients, clock, delivery=DELIVERY, rand=lambda: 0.0):
    return HistorySender(outbox, clients, delivery, clock=clock, sleep=lambda _s: None, rand=rand)


def advance_to_next_due(outbox, clock, account=ACME):
    next_at = outbox.next_due_at(account)
    assert next_at is not None and next_at > clock.now
    delay = next_at - clock.now
    clock.now = next_at
    return delay


# --- batching ----------------------------------------------------------------------------------

def test_given_120_calls_when_drained_then_three_uploads_of_50_50_20_in_order(outbox, crm, clock):
    fill(outbox, 120)
    sender = make_sender(outbox, {ACME: crm}, clock)

    assert sender.drain_once(ACME) == 120

    assert [len(u) for u in crm.uploads] == [50, 50, 20]
    assert [i for u in crm.uploads for i in u] == ids(120)
    assert outbox.stats().pending == 0
    assert outbox.stats().delivered_recently == 120


def test_given_nothing_due_when_drained_then_no_upload(outbox, crm, clock):
    assert make_sender(outbox, {ACME: crm}, clock).drain_once(ACME) == 0
    assert crm.uploads == []


def test_given_crm_already_has_some_calls_when_drained_then_duplicates_count_as_delivered(outbox, crm, clock):
    fill(outbox, 10)
    crm.stored.extend(ids(10)[:4])

    assert make_sender(outbox, {ACME: crm}, clock).drain_once(ACME) == 10

    assert outbox.stats().pending == 0
    assert crm.stored == ids(10)
    assert outbox.add(ACME, "call-000", call("call-000")) is False  # remembered as delivered


def test_given_unknown_account_when_drained_then_calls_stay(outbox, crm, clock):
    fill(outbox, 2, account="globex")

    assert make_sender(outbox, {ACME: crm}, clock).drain_once("globex") == 0
    assert outbox.stats().pending == 2


# --- CRM down ----------------------------------------------------------------------------------

def test_given_crm_down_for_three_passes_when_back_then_each_call_delivered_once_in_order(outbox, crm, clock):
    fill(outbox, 120)
    crm.failures = [unavailable()] * 3
    sender = make_sender(outbox, {ACME: crm}, clock)

    for _ in range(3):
        assert sender.drain_once(ACME) == 0
        assert sender.drain_once(ACME) == 0  # deferred: nothing is due before the backoff ends
        advance_to_next_due(outbox, clock)
    assert sender.drain_once(ACME) == 120

    assert len(crm.uploads) == 3 + 3
    assert crm.stored == ids(120)
    assert outbox.stats().pending == 0
    assert outbox.failed() == []


def test_given_answer_lost_after_crm_stored_batch_when_retried_then_stored_once(outbox, crm, clock):
    fill(outbox, 30)
    crm.lose_answers = 1
    sender = make_sender(outbox, {ACME: crm}, clock)

    assert sender.drain_once(ACME) == 0
    advance_to_next_due(outbox, clock)
    assert sender.drain_once(ACME) == 30

    assert crm.stored == ids(30)
    assert outbox.stats().pending == 0


def test_given_crm_down_when_new_calls_arrive_then_they_wait_behind_the_old_ones(outbox, crm, clock):
    fill(outbox, 60, prefix="old")
    crm.failures = [None, unavailable()]  # first batch of 50 goes, the next 10 meet the outage
    sender = make_sender(outbox, {ACME: crm}, clock)
    assert sender.drain_once(ACME) == 50

    fill(outbox, 5, prefix="new")
    assert sender.drain_once(ACME) == 0
    advance_to_next_due(outbox, clock)
    assert sender.drain_once(ACME) == 15

    assert crm.stored == ids(60, "old") + ids(5, "new")
    [deferred_batch] = [u for u in crm.uploads if len(u) == 10]
    assert deferred_batch == ids(60, "old")[50:]


def test_given_repeated_outages_then_backoff_doubles_caps_and_resets_on_success(outbox, crm, clock):
    fill(outbox, 3)
    sender = make_sender(outbox, {ACME: crm}, clock)
    crm.failures = [unavailable()] * 9

    delays = []
    for _ in range(9):
        sender.drain_once(ACME)
        delays.append(advance_to_next_due(outbox, clock))

    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert sender.drain_once(ACME) == 3
    fill(outbox, 1, prefix="later")
    crm.failures = [unavailable()]
    sender.drain_once(ACME)
    assert advance_to_next_due(outbox, clock) == 1  # reset by the success
    [item] = outbox.due(ACME)
    assert item.attempts == 1
    assert item.last_error == "HTTP 503: rate limited"


def test_backoff_jitter_stays_between_half_and_full_delay(outbox, crm, clock):
    fill(outbox, 1)
    rolls = iter([0.0, 0.999, 0.5, 0.25, 0.999, 0.0, 0.7, 0.999])
    sender = make_sender(outbox, {ACME: crm}, clock, rand=lambda: next(rolls))
    crm.failures = [unavailable()] * 8

    delays = []
    for _ in range(8):
        sender.drain_once(ACME)
        delays.append(advance_to_next_due(outbox, clock))

    nominal = [1, 2, 4, 8, 16, 32, 60, 60]
    for delay, full in zip(delays, nominal, strict=True):
        assert full / 2 <= delay <= full
    assert delays[0] == 1 and delays[5] == 32
    assert delays[1] == pytest.approx(2 * (1 - 0.5 * 0.999))


def test_one_account_backoff_does_not_touch_another(outbox, clock):
    down, up = FakeCrm(ACME), FakeCrm("globex")
    fill(outbox, 3, ACME)
    fill(outbox, 3, "globex")
    down.failures = [unavailable()] * 5
    sender = make_sender(outbox, {ACME: down, "globex": up}, clock)

    sender.drain_once(ACME)
    assert sender.drain_once("globex") == 3
    assert outbox.accounts_with_due() == []
    assert outbox.stats().pending_by_account == {ACME: 3}


# --- CRM refuses calls ---------------------------------------------------------------------------

@pytest.mark.parametrize("poisoned_at", [0, 17, 49])
def test_given_one_bad_call_in_50_when_drained_then_49_delivered_and_it_set_aside(outbox, crm, clock, poisoned_at):
    fill(outbox, 50)
    bad = ids(50)[poisoned_at]
    crm.poisoned = {bad}
    sender = make_sender(outbox, {ACME: crm}, clock)

    assert sender.drain_once(ACME) == 49

    assert crm.stored == [i for i in ids(50) if i != bad]
    [failed] = outbox.failed()
    assert failed.external_id == bad
    assert "calls[0][phone]" in failed.last_error and "Phone is not valid" in failed.last_error
    assert "HTTP 400" in failed.last_error
    assert outbox.stats().pending == 0
    assert len(crm.uploads) <= 2 * math.ceil(math.log2(50))


def test_given_two_bad_calls_when_drained_then_both_set_aside_and_rest_delivered(outbox, crm, clock):
    fill(outbox, 50)
    crm.poisoned = {"call-003", "call-041"}

    assert make_sender(outbox, {ACME: crm}, clock).drain_once(ACME) == 48

    assert [i.external_id for i in outbox.failed()] == ["call-003", "call-041"]
    assert crm.stored == [i for i in ids(50) if i not in crm.poisoned]


def test_given_crm_goes_down_while_isolating_bad_call_then_rest_deferred_not_set_aside(outbox, crm, clock):
    fill(outbox, 50)
    crm.poisoned = {"call-040"}
    # 50 refused (the bad call), first 25 accepted, then the CRM goes away.
    crm.failures = [None, None, unavailable()]
    sender = make_sender(outbox, {ACME: crm}, clock)

    assert sender.drain_once(ACME) == 25
    assert outbox.failed() == []
    assert outbox.stats().pending == 25

    advance_to_next_due(outbox, clock)
    assert sender.drain_once(ACME) == 24
    assert [i.external_id for i in outbox.failed()] == ["call-040"]
    assert crm.stored == [i for i in ids(50) if i != "call-040"]


def test_given_bad_call_when_set_aside_then_error_logged_with_account_and_external_id(outbox, crm, clock, caplog):
    fill(outbox, 1)
    crm.poisoned = {"call-000"}

    with caplog.at_level(logging.ERROR, logger="fs_crm.crm.history"):
        make_sender(outbox, {ACME: crm}, clock).drain_once(ACME)

    [record] = caplog.records
    assert "acme" in record.getMessage() and "call-000" in record.getMessage()


def test_given_set_aside_call_when_retried_after_fix_then_delivered(outbox, crm, clock):
    fill(outbox, 3)
    crm.poisoned = {"call-001"}
    sender = make_sender(outbox, {ACME: crm}, clock)
    sender.drain_once(ACME)

    crm.poisoned = set()
    assert outbox.retry_failed(ACME) == 1
    assert sender.drain_once(ACME) == 1
    assert sorted(crm.stored) == ids(3)


@pytest.mark.parametrize("status, message", [
    (403, 'Wrong "apiKey" value.'),
    (401, "Unauthorized"),
    (403, "Access denied."),
    (400, "Account does not exist."),
    (400, "Telephony not enabled or not supports calls upload"),
    (404, "HTML page instead of JSON (Not Found): the account does not exist or crm_url is not a retailCRM address"),
    (404, "API method not found"),
    (404, "Not found"),
    (405, "Method Not Allowed"),
    (200, "Telephony not enabled or not supports calls upload"),
])
def test_given_account_refused_when_drained_then_nothing_set_aside(outbox, crm, clock, status, message):
    fill(outbox, 60)
    crm.failures = [CrmRejected(ACME, message, status, None, "/upload")] * 2
    sender = make_sender(outbox, {ACME: crm}, clock)

    assert sender.drain_once(ACME) == 0

    assert outbox.failed() == []
    assert outbox.stats().pending == 60
    assert len(crm.uploads) == 1  # no splitting: the calls are not the problem
    assert advance_to_next_due(outbox, clock) == DELIVERY.retry_max_delay
    assert sender.drain_once(ACME) == 0
    advance_to_next_due(outbox, clock)
    assert sender.drain_once(ACME) == 60  # key fixed: everything goes, in order
    assert crm.stored == ids(60)


def test_given_account_refused_repeatedly_then_error_logged_once_per_streak(outbox, crm, clock, caplog):
    fill(outbox, 5)
    refused = CrmRejected(ACME, 'Wrong "apiKey" value.', 403, None, "/upload")
    crm.failures = [refused, refused, refused, None, refused]
    sender = make_sender(outbox, {ACME: crm}, clock)

    with caplog.at_level(logging.ERROR, logger="fs_crm.crm.history"):
        for _ in range(3):
            sender.drain_once(ACME)
            advance_to_next_due(outbox, clock)
        assert len(caplog.records) == 1
        assert sender.drain_once(ACME) == 5
        fill(outbox, 1, prefix="later")
        sender.drain_once(ACME)

    assert len(caplog.records) == 2
    assert all("acme" in r.getMessage() for r in caplog.records)


def test_given_account_refused_when_drained_then_last_error_names_it_until_delivered(outbox, crm, clock):
    fill(outbox, 2)
    crm.failures = [CrmRejected(ACME, "API method not found", 404, None, "/upload")]
    sender = make_sender(outbox, {ACME: crm}, clock)

    sender.drain_once(ACME)
    assert sender.last_error == {ACME: "HTTP 404: API method not found"}  # what /healthz shows

    advance_to_next_due(outbox, clock)
    assert sender.drain_once(ACME) == 2
    assert sender.last_error == {}


# --- processedCallsCount ------------------------------------------------------------------------

def test_given_count_one_short_when_drained_then_unconfirmed_calls_resent_once_and_delivered(outbox, crm, clock,
                                                                                             caplog):
    fill(outbox, 5)
    crm.stored.append("call-001")
    crm.undercount = 1

    with caplog.at_level(logging.WARNING, logger="fs_crm.crm.history"):
        assert make_sender(outbox, {ACME: crm}, clock).drain_once(ACME) == 5

    # The duplicate is sure; the four others go again and come back as duplicates.
    assert crm.uploads == [ids(5), ["call-000", "call-002", "call-003", "call-004"]]
    assert crm.stored == ["call-001", "call-000", "call-002", "call-003", "call-004"]
    assert outbox.stats().pending == 0 and outbox.failed() == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("accounted for 4 of 5" in w and ", ".join(ids(5)) in w for w in warnings)


def test_given_call_never_counted_when_drained_then_set_aside_after_one_resend(outbox, crm, clock, caplog):
    fill(outbox, 4)
    crm.dropped = {"call-002"}
    sender = make_sender(outbox, {ACME: crm}, clock)

    with caplog.at_level(logging.ERROR, logger="fs_crm.crm.history"):
        assert sender.drain_once(ACME) == 3

    assert crm.uploads == [ids(4), ids(4)]
    assert [i.external_id for i in outbox.failed()] == ["call-002"]
    assert outbox.stats().pending == 0
    [error] = caplog.records
    assert "acme" in error.getMessage() and "call-002" in error.getMessage()
    assert "accounted for 3 of 4" in sender.last_error[ACME]


def test_given_count_higher_than_batch_when_drained_then_delivered_and_logged(outbox, crm, clock, caplog):
    fill(outbox, 3)
    crm.overcount = 2

    with caplog.at_level(logging.WARNING, logger="fs_crm.crm.history"):
        assert make_sender(outbox, {ACME: crm}, clock).drain_once(ACME) == 3

    assert len(crm.uploads) == 1
    assert any("accounted for 5 of 3" in r.getMessage() and "call-000" in r.getMessage() for r in caplog.records)


def test_given_no_count_when_drained_then_delivered(outbox, clock):
    class Countless(FakeCrm):
        def upload_calls(self, calls):
            super().upload_calls(calls)
            return UploadResult(processed=None, duplicates=())

    crm = Countless()
    fill(outbox, 2)

    assert make_sender(outbox, {ACME: crm}, clock).drain_once(ACME) == 2
    assert crm.uploads == [ids(2)]


def test_given_short_count_while_isolating_bad_call_then_each_good_call_stored_once(outbox, crm, clock):
    fill(outbox, 8)
    crm.poisoned = {"call-006"}  # the whole batch is refused, then its first half is counted one short
    crm.undercount = 1
    sender = make_sender(outbox, {ACME: crm}, clock)

    assert sender.drain_once(ACME) == 7

    assert [i.external_id for i in outbox.failed()] == ["call-006"]
    assert sorted(crm.stored) == [i for i in ids(8) if i != "call-006"]
    assert crm.uploads[:3] == [ids(8), ids(8)[:4], ids(8)[:4]]  # refused, short, resent
    assert ids(8)[4:] not in crm.uploads  # the second half holds the bad call: split without sending it whole


# --- running and stopping -----------------------------------------------------------------------

FAST = DeliveryConfig(retry_min_delay=0.01, retry_max_delay=0.05)


@pytest.fixture
def real_outbox(state_dir):
    box = Outbox(state_dir / FILE_NAME)
    yield box
    box.close()


def test_given_running_sender_when_call_added_and_woken_then_uploaded(real_outbox, crm):
    sender = HistorySender(real_outbox, {ACME: crm}, FAST)
    runner = gevent.spawn(sender.run)
    try:
        real_outbox.add(ACME, "call-1", call("call-1"))
        sender.wake()
        wait_until(lambda: crm.stored == ["call-1"])
        wait_until(lambda: real_outbox.stats().pending == 0)
    finally:
        sender.stop()
    runner.join(timeout=2)
    assert runner.dead and runner.successful()


def test_given_crm_down_then_back_when_running_then_everything_arrives(real_outbox, crm):
    fill(real_outbox, 70)
    crm.failures = [unavailable()] * 3
    sender = HistorySender(real_outbox, {ACME: crm}, FAST)
    runner = gevent.spawn(sender.run)
    try:
        wait_until(lambda: real_outbox.stats().pending == 0)
    finally:
        sender.stop()
    runner.join(timeout=2)
    assert crm.stored == ids(70)


def test_given_one_account_stalled_when_running_then_other_account_still_delivered(real_outbox):
    stalled, healthy = FakeCrm(ACME), FakeCrm("globex")
    stalled.stall = Event()
    fill(real_outbox, 3, ACME)
    fill(real_outbox, 3, "globex")
    sender = HistorySender(real_outbox, {ACME: stalled, "globex": healthy}, FAST)
    runner = gevent.spawn(sender.run)
    try:
        wait_until(lambda: healthy.stored == ids(3))
        assert stalled.entered.is_set() and stalled.stored == []
    finally:
        stalled.stall.set()
        sender.stop()
    runner.join(timeout=2)


def test_given_crm_stalls_when_stopped_then_returns_within_drain_timeout_and_calls_stay(real_outbox, crm):
    fill(real_outbox, 5)
    crm.stall = Event()  # never set: the upload hangs
    sender = HistorySender(real_outbox, {ACME: crm}, FAST)
    runner = gevent.spawn(sender.run)
    wait_until(crm.entered.is_set)

    started = gevent.get_hub().loop.now()
    stopper = gevent.spawn(sender.stop, drain_timeout=0.2)
    stopper.join(timeout=2)

    assert stopper.dead and stopper.successful()
    assert gevent.get_hub().loop.now() - started < 1.5
    runner.join(timeout=2)
    assert runner.dead
    assert real_outbox.stats().pending == 5
    assert [i.external_id for i in real_outbox.due(ACME)] == ids(5)


def test_given_upload_in_flight_when_stopped_then_it_finishes_and_is_recorded(real_outbox, crm):
    fill(real_outbox, 60)
    crm.stall = Event()
    sender = HistorySender(real_outbox, {ACME: crm}, FAST)
    runner = gevent.spawn(sender.run)
    wait_until(crm.entered.is_set)

    stopper = gevent.spawn(sender.stop, drain_timeout=3.0)
    gevent.sleep(0.01)
    crm.stall.set()
    stopper.join(timeout=4)
    runner.join(timeout=2)

    assert stopper.successful() and runner.dead
    assert len(crm.uploads) == 1  # the in-flight batch finished; the next one was not started
    assert real_outbox.stats().pending == 10
    assert crm.stored == ids(60)[:50]


def test_given_client_bug_when_running_then_run_raises(real_outbox):
    class Broken:
        def upload_calls(self, calls):
            raise RuntimeError("bug")

    fill(real_outbox, 1)
    sender = HistorySender(real_outbox, {ACME: Broken()}, FAST)
    runner = gevent.spawn(sender.run)
    runner.join(timeout=2)

    assert runner.dead
    assert isinstance(runner.exception, RuntimeError)
    assert real_outbox.stats().pending == 1

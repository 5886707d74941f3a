"""CrmClient against the fake retailCRM over real sockets, and the RateLimiter in virtual time."""

from __future__ import annotations

import heapq
import itertools
import json
import logging

import gevent
import gevent.event
import pytest

from fs_crm import vocab
from fs_crm.config import AccountConfig, DeliveryConfig
from fs_crm.crm.client import (
    Credentials,
    CrmClient,
    CrmError,
    CrmRejected,
    CrmUnavailable,
    EventResult,
    RateLimiter,
    UploadResult,
)
from fs_crm.crm.payloads import CallEvent, CallRecord
from fs_crm.sim.fake_crm import FakeCrm, customer

SECRET = "sekret-5f3a9c1e-key"
# Fast failure, and a limiter that never makes these tests wait.
DELIVERY = DeliveryConfig(connect_timeout=1.0, event_read_timeout=1.0, upload_read_timeout=1.0,
                          telephony_rps=10_000, general_rps=10_000)


def account_for(url: str, api_key: str = SECRET) -> AccountConfig:
    return AccountConfig(name="shop", crm_url=url, api_key=api_key, client_id="client-1", code="fs-crm",
                         domain="pbx.example.com", timezone="Europe/Moscow")


def card(**overrides) -> dict:
    event = CallEvent(account="shop", type="in", phone="+79991234567", codes=("100",), call_id="uuid-1",
                      created_at=0.0, external_phone="+74950000000").to_api()
    event.update(overrides)
    return event


def record(external_id: str, **overrides) -> dict:
    call = CallRecord(account="shop", external_id=external_id, date="2024-05-01 12:30:00", type="in",
                      phone="+79991234567", result=vocab.RESULT_ANSWERED, duration=42, duration_waiting=7,
                      code="100").to_api()
    call.update(overrides)
    return call


@pytest.fixture
def fake():
    crm = FakeCrm(api_keys={SECRET: "shop"}, known_codes={"100", "101"}, known_sites={"main"}).start()
    yield crm
    crm.stop()


@pytest.fixture
def client(fake):
    crm = CrmClient(account_for(fake.url), DELIVERY)
    yield crm
    crm.close()


# --- call/event ---------------------------------------------------------------------------------

def test_given_card_when_send_event_then_form_field_holds_compact_json_and_key_travels_in_header(fake, client):
    event = card(phone="+7 999 Жук")

    assert client.send_event(event) == EventResult((), ())

    [received] = fake.requests
    assert (received.method, received.path, received.status) == ("POST", "/api/v5/telephony/call/event", 200)
    assert received.headers["X-API-KEY"] == SECRET
    assert received.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert list(received.form) == ["event"]
    assert received.form["event"] == json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    assert "apiKey" not in received.query and "apiKey" not in received.form
    assert fake.events == [dict(event, account="shop")]


def test_given_hangup_built_from_payload_when_send_event_then_crm_accepts_no_answered_status(fake, client):
    hangup = CallEvent(account="shop", type="hangup", phone="+79991234567", codes=("100",), call_id="uuid-1",
                       created_at=0.0, hangup_status=vocab.HANGUP_NO_ANSWER).to_api()

    client.send_event(hangup)

    assert fake.events[0]["hangupStatus"] == "no answered"


def test_given_unknown_extension_when_send_event_then_not_exist_codes_returned_and_logged(client, caplog):
    caplog.set_level(logging.WARNING, logger="fs_crm.crm.client")

    result = client.send_event(card(codes=["100", "999"], callExternalId="uuid-77"))

    assert result.not_exist_codes == ("999",)
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "shop" in line and "uuid-77" in line and "999" in line


def test_given_not_exist_users_as_numbers_when_send_event_then_returned_as_strings(fake, client):
    fake.fail_next(1, 200, body='{"success":true,"notExistUsers":[12,13]}')

    assert client.send_event(card()).not_exist_users == ("12", "13")


def test_given_info_as_empty_list_when_send_event_then_tolerated(fake, client):
    fake.fail_next(1, 200, body='{"success":true,"info":[]}')

    assert client.send_event(card()) == EventResult((), ())


@pytest.mark.parametrize("overrides, field", [
    ({"type": "ringing"}, "type"),
    ({"phone": ""}, "phone"),
    ({"codes": [""]}, "codes"),
    ({"userIds": ["27"]}, "userIds"),
    ({"type": "hangup", "hangupStatus": "no answer"}, "hangupStatus"),  # the upload spelling
    ({"site": "elsewhere"}, "site"),
])
def test_given_invalid_event_when_send_event_then_crm_rejected_naming_the_field(client, overrides, field):
    with pytest.raises(CrmRejected) as caught:
        client.send_event(card(**overrides))

    assert caught.value.status == 400
    assert field in caught.value.errors
    assert not caught.value.account_problem  # about what was sent


@pytest.mark.parametrize("overrides", [
    pytest.param({"codes": []}, id="no-codes-no-userIds"),  # the Python client's tests send phone and type only
    pytest.param({"codes": [], "userIds": [27]}, id="userIds-only"),  # the PHP client's example
    pytest.param({"hangupStatus": "answered"}, id="hangupStatus-on-in"),  # v3 PY and .NET clients always send it
])
def test_given_event_the_official_clients_send_when_send_event_then_accepted(fake, client, overrides):
    assert client.send_event(card(**overrides)) == EventResult((), ())

    assert fake.events[-1]["type"] == "in"


def test_given_unknown_field_when_send_event_then_accepted_and_recorded_by_the_fake(fake, client):
    client.send_event(card(callExternalID="typo"))

    assert fake.extra_fields == ["event.callExternalID"]


def test_given_codes_and_user_ids_when_send_event_then_both_sent_and_unknown_users_reported(caplog):
    crm = FakeCrm(api_keys={SECRET: "shop"}, known_codes={"100"}, known_user_ids={1}).start()
    client = CrmClient(account_for(crm.url), DELIVERY)
    event = CallEvent(account="shop", type="in", phone="79991234567", codes=("100", "200"), call_id="uuid-5",
                      created_at=0.0, user_ids=(1, 2)).to_api()
    try:
        with caplog.at_level(logging.WARNING, logger="fs_crm.crm.client"):
            result = client.send_event(event)
    finally:
        client.close()
        crm.stop()

    assert (crm.events[0]["codes"], crm.events[0]["userIds"]) == (["100", "200"], [1, 2])
    assert result == EventResult(("200",), ("2",))
    assert any("uuid-5" in r.getMessage() and "user id(s) 2" in r.getMessage() for r in caplog.records)


# --- calls/upload ---------------------------------------------------------------------------------

def test_given_already_uploaded_call_when_upload_again_then_reported_as_duplicate_not_processed(fake, client):
    assert client.upload_calls([record("a"), record("b")]) == UploadResult(2, ())

    assert client.upload_calls([record("b"), record("c")]) == UploadResult(1, ("b",))

    assert [c["externalId"] for c in fake.calls] == ["a", "b", "c"]
    assert len(fake.uploads) == 2
    assert json.loads(fake.requests[-1].form["calls"]) == [record("b"), record("c")]


@pytest.mark.parametrize("count", [0, vocab.MAX_CALLS_PER_UPLOAD + 1])
def test_given_batch_outside_1_to_50_when_upload_then_value_error_before_any_request(fake, client, count):
    with pytest.raises(ValueError):
        client.upload_calls([record("id-%d" % i) for i in range(count)])

    assert fake.requests == []


def test_given_50_calls_when_upload_then_all_processed(client):
    calls = [record("id-%d" % i) for i in range(vocab.MAX_CALLS_PER_UPLOAD)]

    assert client.upload_calls(calls).processed == vocab.MAX_CALLS_PER_UPLOAD


def test_given_batch_with_one_bad_call_when_upload_then_whole_batch_rejected_with_errors_object(fake, client):
    fake.reject_external_ids = {"bad"}

    with pytest.raises(CrmRejected) as caught:
        client.upload_calls([record("good"), record("bad")])

    assert caught.value.error_msg == "Errors in the entity format"
    assert list(caught.value.errors) == ["calls[1][phone]"]
    assert fake.calls == []


@pytest.mark.parametrize("overrides, field", [
    ({"date": "2024-05-01T12:30:00"}, "date"),
    ({"type": "hangup"}, "type"),
    ({"result": "no answered"}, "result"),  # the call/event spelling
    ({"duration": -1}, "duration"),
    ({"durationWaiting": True}, "durationWaiting"),
    ({"externalId": ""}, "externalId"),
    ({"userId": "5"}, "userId"),
    ({"site": "elsewhere"}, "site"),
])
def test_given_invalid_call_when_upload_then_crm_rejected_naming_call_and_field(client, overrides, field):
    with pytest.raises(CrmRejected) as caught:
        client.upload_calls([record("ok"), record("x", **overrides)])

    assert "calls[1][%s]" % field in caught.value.errors


def test_given_errors_as_list_when_upload_then_crm_rejected_carrying_the_list(fake, client):
    fake.fail_next(1, 400, body='{"success":false,"errorMsg":"Validation error","errors":["phone is blank"]}')

    with pytest.raises(CrmRejected) as caught:
        client.upload_calls([record("a")])

    assert (caught.value.status, caught.value.error_msg) == (400, "Validation error")
    assert caught.value.errors == ["phone is blank"]


@pytest.mark.parametrize("duplicates, expected", [
    ('["a"]', ("a",)),
    ('[{"externalId":"a"},{"externalId":"b"}]', ("a", "b")),
    ("null", ()),
])
def test_given_duplicate_calls_shape_when_upload_then_external_ids_read(fake, client, duplicates, expected):
    fake.fail_next(1, 200, body='{"success":true,"processedCallsCount":0,"duplicateCalls":%s}' % duplicates)

    assert client.upload_calls([record("a"), record("b")]).duplicates == expected


def test_given_unreadable_duplicate_calls_when_upload_then_none_and_warning(fake, client, caplog):
    fake.fail_next(1, 200, body='{"success":true,"processedCallsCount":1,"duplicateCalls":{"a":1}}')

    assert client.upload_calls([record("a")]) == UploadResult(1, ())
    assert any(r.levelno == logging.WARNING and "duplicateCalls" in r.getMessage() for r in caplog.records)


# --- failures -------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_given_server_error_or_rate_limit_when_upload_then_crm_unavailable(fake, client, status):
    fake.fail_next(1, status)

    with pytest.raises(CrmUnavailable) as caught:
        client.upload_calls([record("a")])

    assert caught.value.status == status and caught.value.account == "shop"


@pytest.mark.parametrize("mode", ["down", "unavailable", "rate_limited", "html"])
def test_given_crm_down_then_back_when_send_event_then_unavailable_then_accepted(fake, client, mode):
    fake.set_mode(mode)
    with pytest.raises(CrmUnavailable):
        client.send_event(card())

    fake.set_mode("ok")

    assert client.send_event(card()) == EventResult((), ())


def test_given_html_answer_with_502_when_upload_then_crm_unavailable_naming_the_page(fake, client):
    fake.set_mode("html")

    with pytest.raises(CrmUnavailable) as caught:
        client.upload_calls([record("a")])

    assert "HTML" in str(caught.value) and "502 Bad Gateway" in str(caught.value)


@pytest.mark.parametrize("status", [200, 404, 405])
def test_given_html_answer_without_server_error_when_upload_then_rejected_as_missing_account(fake, client, status):
    fake.fail_next(1, status, content_type="text/html")

    with pytest.raises(CrmRejected) as caught:
        client.upload_calls([record("a")])

    assert "account does not exist" in str(caught.value)


@pytest.mark.parametrize("status, body, error", [
    (200, "", CrmUnavailable),  # a 2xx we cannot read may not have been applied: resend
    (200, "OK", CrmUnavailable),
    (200, '{"success":false,"errorMsg":"Telephony not enabled"}', CrmRejected),
    (400, "", CrmRejected),
    (404, '{"success":false,"errorMsg":"Not found"}', CrmRejected),  # no errors key at all
    (302, "", CrmRejected),  # redirects are never followed
])
def test_given_odd_answer_when_send_event_then_domain_error_without_crash(fake, client, status, body, error):
    fake.fail_next(1, status, body=body)

    with pytest.raises(error) as caught:
        client.send_event(card())

    assert type(caught.value) is error and caught.value.errors is None


def test_given_wrong_api_key_when_send_event_then_crm_rejected(fake):
    client = CrmClient(account_for(fake.url, api_key="not-the-key"), DELIVERY)

    with pytest.raises(CrmRejected) as caught:
        client.send_event(card())

    assert (caught.value.status, caught.value.error_msg) == (403, 'Wrong "apiKey" value.')
    assert fake.events == []


def test_given_empty_api_key_header_when_send_event_then_rejected_as_missing(fake):
    client = CrmClient(account_for(fake.url, api_key=""), DELIVERY)

    with pytest.raises(CrmRejected) as caught:
        client.send_event(card())

    assert caught.value.error_msg == '"apiKey" is missing.'


def test_given_crm_stalls_longer_than_read_timeout_when_upload_then_crm_unavailable(fake):
    fake.stall_seconds = 5.0
    fake.set_mode("stall")
    client = CrmClient(account_for(fake.url), DeliveryConfig(connect_timeout=0.5, upload_read_timeout=0.2))

    with pytest.raises(CrmUnavailable) as caught:
        client.upload_calls([record("a")])

    assert "Timeout" in str(caught.value)


def test_given_stopped_server_when_send_event_then_crm_unavailable():
    stopped = FakeCrm().start()
    url = stopped.url
    stopped.stop()
    client = CrmClient(account_for(url), DELIVERY)

    with pytest.raises(CrmUnavailable) as caught:
        client.send_event(card())

    assert caught.value.status is None
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no requests object inside


def test_given_fake_enforcing_rate_limit_when_41_events_in_a_second_then_last_one_unavailable():
    strict = FakeCrm(api_keys={SECRET: "shop"}, enforce_rate_limit=True).start()
    try:
        fast = CrmClient(account_for(strict.url), DELIVERY)
        for _ in range(40):
            fast.send_event(card())
        with pytest.raises(CrmUnavailable):
            fast.send_event(card())
    finally:
        strict.stop()


def test_given_failures_of_every_kind_then_api_key_never_in_exceptions_or_logs(fake, caplog):
    caplog.set_level(logging.DEBUG)
    client = CrmClient(account_for(fake.url), DeliveryConfig(connect_timeout=0.5, event_read_timeout=0.2))
    fake.stall_seconds = 5.0
    failures: list[CrmError] = []

    def attempt(setup) -> None:
        setup()
        with pytest.raises(CrmError) as caught:
            client.send_event(card())
        failures.append(caught.value)
        fake.set_mode("ok")

    attempt(lambda: fake.fail_next(1, 403, body='{"success":false,"errorMsg":"Wrong key %s"}' % SECRET))
    attempt(lambda: fake.fail_next(1, 500, body="<html><title>oops %s</title></html>" % SECRET))
    attempt(lambda: fake.fail_next(1, 400, body='{"success":false,"errors":{"k":"x"}}'))
    attempt(lambda: fake.set_mode("stall"))
    fake.stop()
    attempt(lambda: None)

    assert len(failures) == 5
    for exc in failures:
        assert SECRET not in str(exc) and SECRET not in repr(exc) and SECRET not in exc.error_msg
    assert SECRET not in caplog.text


# --- credentials and responsible manager ---------------------------------------------------------

def test_given_key_when_credentials_then_unversioned_path_and_fields_parsed(fake, client):
    creds = client.credentials()

    assert fake.requests[0].method == "GET" and fake.requests[0].path == "/api/credentials"
    assert isinstance(creds, Credentials)
    assert "telephony_write" in creds.scopes and "integration_write" in creds.scopes
    assert (creds.site_access, creds.sites_available) == ("access_full", ("main",))


def test_given_known_customer_when_responsible_manager_then_manager_object(fake, client):
    fake.managers["79991234567"] = {"id": 7, "firstName": "Ann", "code": "101"}

    assert client.responsible_manager("79991234567", timeout=1.0) == {"id": 7, "firstName": "Ann", "code": "101"}
    assert fake.requests[0].query == {"phone": "79991234567", "details": "1"}


def test_given_unknown_customer_when_responsible_manager_then_none(client):
    assert client.responsible_manager("70000000000", timeout=1.0) is None


def test_given_known_customer_when_manager_lookup_then_manager_and_customer(fake, client):
    fake.managers["79991234567"] = {"id": 7, "firstName": "Ann", "code": "101"}
    fake.customers["79991234567"] = customer(42, "Иван", "Петров", phones=["+7 999 123-45-67"])

    found = client.manager_lookup("79991234567", timeout=1.0)

    assert found.manager == {"id": 7, "firstName": "Ann", "code": "101"}
    assert found.customer == {"id": 42, "firstName": "Иван", "lastName": "Петров",
                              "phones": [{"number": "+7 999 123-45-67"}]}


@pytest.mark.parametrize("ignore_status,named", [(False, False), (True, True)])
def test_given_manager_not_free_when_manager_lookup_then_named_only_when_status_ignored(fake, client, ignore_status,
                                                                                       named):
    fake.managers["79991234567"] = {"id": 7, "firstName": "Ann", "code": "101"}
    fake.user_statuses[7] = "dinner"
    fake.customers["79991234567"] = customer(42, "Иван")

    found = client.manager_lookup("79991234567", timeout=1.0, ignore_status=ignore_status)

    assert (found.manager is not None) == named
    assert found.customer["firstName"] == "Иван"  # the customer comes whatever the manager's status
    expected = {"phone": "79991234567", "details": "1", **({"ignoreStatus": "1"} if ignore_status else {})}
    assert fake.requests[0].query == expected


def test_given_slow_crm_when_responsible_manager_then_unavailable_within_timeout(fake, client):
    fake.manager_delay = 5.0
    fake.managers["1"] = {"id": 1}

    with pytest.raises(CrmUnavailable) as caught:
        client.responsible_manager("1", timeout=0.1)

    assert "0.1 s" in str(caught.value)


# --- rate limiter (virtual time: nothing here waits on the wall clock) ----------------------------

class VirtualTime:
    """A clock and a sleep for greenlets; `run` jumps time to the next sleeper once all are blocked."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, gevent.event.Event]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        wake = gevent.event.Event()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), wake))
        wake.wait()

    def run(self, greenlets: list[gevent.Greenlet]) -> None:
        while True:
            gevent.idle()
            gevent.idle()
            if all(g.dead for g in greenlets):
                gevent.joinall(greenlets, raise_error=True)
                return
            assert self._sleepers, "greenlets blocked without sleeping"
            wake_at, _, wake = heapq.heappop(self._sleepers)
            self.now = max(self.now, wake_at)
            wake.set()


def caller(vt: VirtualTime, limiter: RateLimiter, route: str, urgent: bool, arrive_at: float,
           log: list[tuple[float, float, bool]]) -> gevent.Greenlet:
    def run() -> None:
        if arrive_at:
            vt.sleep(arrive_at)
        arrived = vt.now
        limiter.acquire(route, urgent)
        log.append((arrived, vt.now, urgent))
    return gevent.spawn(run)


def test_given_flood_of_uploads_when_cards_arrive_then_cards_never_queue_behind_uploads():
    vt = VirtualTime()
    limiter = RateLimiter(telephony_rps=10, general_rps=10, clock=vt.clock, sleep=vt.sleep)
    log: list[tuple[float, float, bool]] = []
    flood = [caller(vt, limiter, "telephony", False, 0.0, log) for _ in range(60)]
    cards = [caller(vt, limiter, "telephony", True, 2.5, log) for _ in range(5)]

    vt.run(flood + cards)

    urgent = [(arrived, granted) for arrived, granted, is_urgent in log if is_urgent]
    assert len(urgent) == 5
    first_arrival, last_grant = min(a for a, _ in urgent), max(g for _, g in urgent)
    # Two reserved tokens at once, the rest as soon as tokens come back: within one window.
    assert last_grant - first_arrival <= 1.1
    overtaking = [g for _, g, is_urgent in log if not is_urgent and first_arrival <= g < last_grant]
    assert overtaking == []


def test_given_only_background_callers_then_they_leave_the_reserve_untouched():
    vt = VirtualTime()
    limiter = RateLimiter(telephony_rps=10, general_rps=10, clock=vt.clock, sleep=vt.sleep)
    log: list[tuple[float, float, bool]] = []

    vt.run([caller(vt, limiter, "/api/v5/telephony/calls/upload", False, 0.0, log) for _ in range(30)])

    assert sum(1 for _, granted, _ in log if granted == 0.0) == 8  # 10 tokens minus a reserve of 2
    assert len(log) == 30


@pytest.mark.parametrize("rps", [10, 40])
def test_given_mixed_flood_then_no_one_second_window_sees_more_than_the_budget(rps):
    vt = VirtualTime()
    limiter = RateLimiter(telephony_rps=rps, general_rps=5, clock=vt.clock, sleep=vt.sleep)
    log: list[tuple[float, float, bool]] = []
    callers = [caller(vt, limiter, "telephony", i % 3 == 0, (i % 7) * 0.3, log) for i in range(5 * rps)]

    vt.run(callers)

    grants = sorted(granted for _, granted, _ in log)
    assert len(grants) == 5 * rps
    assert all(later - earlier >= 1.0 for earlier, later in zip(grants, grants[rps:], strict=False))


def test_given_telephony_flood_then_general_bucket_unaffected():
    vt = VirtualTime()
    limiter = RateLimiter(telephony_rps=10, general_rps=10, clock=vt.clock, sleep=vt.sleep)
    log: list[tuple[float, float, bool]] = []
    flood = [caller(vt, limiter, "telephony", True, 0.0, log) for _ in range(30)]
    general: list[tuple[float, float, bool]] = []

    vt.run(flood + [caller(vt, limiter, "/api/credentials", False, 0.0, general)])

    assert general == [(0.0, 0.0, False)]


def test_given_budget_spent_when_try_acquire_then_no_token_and_no_wait_until_one_comes_back():
    vt = VirtualTime()
    limiter = RateLimiter(telephony_rps=10, general_rps=10, clock=vt.clock, sleep=vt.sleep)
    assert [limiter.try_acquire("telephony", urgent=True) for _ in range(11)] == [True] * 10 + [False]
    assert limiter.try_acquire("/api/credentials", urgent=False)  # the other budget is untouched
    vt.now += 1.1
    assert limiter.try_acquire("telephony", urgent=True)


def test_given_budget_spent_when_lookup_must_not_wait_then_unavailable_at_once_and_nothing_sent(fake):
    limiter = RateLimiter(telephony_rps=1, general_rps=1)
    client = CrmClient(account_for(fake.url), DELIVERY, limiter)
    limiter.acquire("telephony", urgent=True)  # the only token of this window
    before = len(fake.requests)
    with pytest.raises(CrmUnavailable, match="rate budget spent"):
        client.manager_lookup("79121234567", timeout=5.0, wait_for_budget=False)
    assert len(fake.requests) == before
    client.close()

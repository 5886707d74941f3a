"""Every answer shape retailCRM's official clients document, through fs-crm's real interfaces.

The real CrmClient talks HTTP to the fake retailCRM answering exactly that shape; the real
HistorySender drains a real Outbox (in a tmp dir, on a hand-moved clock) into the fake. Shapes:
404 "API method not found", 405 and HTML pages (account or endpoint problems on any route), a 2xx
whose `success` is not JSON true, errors as a list or a map, `info: []`, uploads whose
processedCallsCount does not add up, the manager lookup with a customer, and call cards carrying
both `codes` and `userIds`.
"""

from __future__ import annotations

import logging

import pytest
import requests

from fs_crm import vocab
from fs_crm.calls import CallTracker
from fs_crm.config import DeliveryConfig, parse_config
from fs_crm.crm.cards import CardSender
from fs_crm.crm.client import MANAGER_PATH, UPLOAD_PATH, CrmClient, CrmRejected, CrmUnavailable, EventResult
from fs_crm.crm.history import HistorySender
from fs_crm.crm.payloads import CallEvent, CallRecord
from fs_crm.freeswitch.eslparse import parse_event_plain
from fs_crm.sim.calls import captured
from fs_crm.sim.fake_crm import FakeCrm, customer

KEY = "answers-key-1f0e"
SHOP = "shop"
EVENT_PATH = "/api/v5/telephony/call/event"
MODULE_PATH = "/api/v5/integration-modules/fs-crm"
# Fast failure, a limiter that never waits, and the long "account problem" backoff at 60 s.
DELIVERY = DeliveryConfig(connect_timeout=1.0, event_read_timeout=1.0, upload_read_timeout=1.0,
                          telephony_rps=10_000, general_rps=10_000, retry_min_delay=1.0, retry_max_delay=60.0,
                          card_max_age=1e12)
ACCOUNT_TABLE = {
    "name": SHOP, "api_key": KEY, "client_id": "client-1", "code": "fs-crm", "domain": "pbx.test",
    "timezone": "Europe/Moscow", "extensions": {"1": "100", "2": "200", "3": "300"},
    "external_phones": {"shop1": "74999999999", "shop2": "+7 (499) 888-88-88"},
}


def account(url: str):
    [acc] = parse_config("test.toml", {"accounts": [dict(ACCOUNT_TABLE, crm_url=url)]}, env={}).accounts
    return acc


@pytest.fixture
def fake():
    crm = FakeCrm(api_keys={KEY: SHOP}, known_codes={"100", "200", "300"}, known_user_ids={1, 2, 3}).start()
    yield crm
    crm.stop()


@pytest.fixture
def client(fake):
    crm = CrmClient(account(fake.url), DELIVERY)
    yield crm
    crm.close()


@pytest.fixture
def sender(outbox, client, clock):
    return HistorySender(outbox, {SHOP: client}, DELIVERY, clock=clock, sleep=lambda _s: None, rand=lambda: 0.0)


def record(external_id: str) -> dict:
    return CallRecord(account=SHOP, external_id=external_id, date="2024-05-01 12:30:00", type="in",
                      phone="79991234567", result=vocab.RESULT_ANSWERED, duration=42, duration_waiting=7,
                      code="100", user_id=1).to_api()


def fill(outbox, *external_ids: str) -> None:
    for external_id in external_ids:
        assert outbox.add(SHOP, external_id, record(external_id))


def advance_to_next_due(outbox, clock) -> float:
    next_at = outbox.next_due_at(SHOP)
    assert next_at is not None and next_at > clock.now
    delay, clock.now = next_at - clock.now, next_at
    return delay


def uploads(fake) -> list[list[str]]:
    return [[c["externalId"] for c in batch] for batch in fake.uploads]


# Every route fs-crm calls, as the client method a caller uses.
ROUTES = {
    "calls/upload": (UPLOAD_PATH, lambda c: c.upload_calls([record("a")])),
    "call/event": (EVENT_PATH, lambda c: c.send_event(
        CallEvent(account=SHOP, type="in", phone="79991234567", codes=("100",), call_id="u1", created_at=0.0,
                  user_ids=(1,)).to_api())),
    "manager": (MANAGER_PATH, lambda c: c.responsible_manager("79991234567", timeout=1.0)),
    "module edit": (MODULE_PATH + "/edit", lambda c: c.edit_integration_module({"code": "fs-crm"})),
    "module get": (MODULE_PATH, lambda c: c.get_integration_module("fs-crm")),
}


# --- account or endpoint problems, on any route ---------------------------------------------------

@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("shape, status, words", [
    ("method_not_found", 404, "API method not found"),
    ("method_not_allowed", 405, "HTML page"),
    ("html", 404, "HTML page"),
    ("html", 200, "HTML page"),
])
def test_given_missing_method_or_html_when_any_route_called_then_rejected_as_account_problem(
        fake, client, route, shape, status, words):
    path, call = ROUTES[route]
    fake.answer_next(shape, path=path, status=status)

    with pytest.raises(CrmRejected) as caught:
        call(client)  # the module read too: "API method not found" is not "no such module"

    assert caught.value.status == status and words in caught.value.error_msg
    assert caught.value.account_problem
    assert caught.value.path == path


@pytest.mark.parametrize("shape, status, words", [
    ("method_not_found", 404, "HTTP 404: API method not found"),
    ("method_not_allowed", 405, "HTTP 405: HTML page"),
    ("html", 200, "HTTP 200: HTML page"),
    ("html", 404, "HTTP 404: HTML page"),
    ("success_string_false", 200, "HTTP 200: Telephony not enabled or not supports calls upload"),
])
def test_given_account_problem_answer_when_history_drained_then_nothing_set_aside_and_long_backoff(
        fake, sender, outbox, clock, shape, status, words):
    fill(outbox, "a", "b", "c")
    fake.answer_next(shape, path=UPLOAD_PATH, status=status)

    assert sender.drain_once(SHOP) == 0

    assert outbox.failed() == []
    assert outbox.stats().pending == 3
    assert len([r for r in fake.requests if r.path == UPLOAD_PATH]) == 1  # not split call by call
    assert fake.calls == []
    assert sender.last_error[SHOP].startswith(words)  # what /healthz shows for the account
    assert advance_to_next_due(outbox, clock) == DELIVERY.retry_max_delay

    assert sender.drain_once(SHOP) == 3  # the account is fixed: everything goes, in order
    assert [c["externalId"] for c in fake.calls] == ["a", "b", "c"]
    assert SHOP not in sender.last_error


@pytest.mark.parametrize("status, body", [
    (405, '{"success":false,"errorMsg":"Method Not Allowed"}'),
    (405, ""),
    (404, '{"success":false,"errorMsg":"Not found"}'),
])
def test_given_404_or_405_in_any_body_when_drained_then_account_problem_not_a_refused_call(
        fake, sender, outbox, status, body):
    fill(outbox, "a", "b")
    fake.fail_next(1, status, body=body)

    assert sender.drain_once(SHOP) == 0

    assert outbox.failed() == [] and outbox.stats().pending == 2
    assert sender.last_error[SHOP].startswith("HTTP %d" % status)


# --- a 2xx that is not a success ------------------------------------------------------------------

@pytest.mark.parametrize("route, message", [
    ("calls/upload", "Telephony not enabled or not supports calls upload"),
    ("call/event", "Telephony not enabled"),
])
def test_given_2xx_with_success_string_false_when_called_then_the_crm_error_it_describes(
        fake, client, route, message):
    path, call = ROUTES[route]
    fake.answer_next("success_string_false", path=path)

    with pytest.raises(CrmRejected) as caught:
        call(client)

    assert (caught.value.status, caught.value.error_msg) == (200, message)
    assert caught.value.account_problem


@pytest.mark.parametrize("body", [
    '{"success":"true","processedCallsCount":1,"duplicateCalls":[]}',
    '{"processedCallsCount":1,"duplicateCalls":[]}',
    '{"success":null}',
])
def test_given_2xx_without_json_true_when_uploaded_then_unavailable_and_calls_stay_pending(
        fake, sender, outbox, clock, body):
    fill(outbox, "a")
    fake.fail_next(1, 200, body=body)

    assert sender.drain_once(SHOP) == 0

    assert outbox.stats().pending == 1 and outbox.failed() == []
    assert "success" in sender.last_error[SHOP]
    assert advance_to_next_due(outbox, clock) == DELIVERY.retry_min_delay  # retryable, short backoff
    assert sender.drain_once(SHOP) == 1


@pytest.mark.parametrize("route", ["calls/upload", "call/event", "manager"])
def test_given_2xx_with_success_string_true_when_called_then_unavailable_not_a_success(fake, client, route):
    path, call = ROUTES[route]
    fake.fail_next(1, 200, body='{"success":"true"}')

    with pytest.raises(CrmUnavailable) as caught:
        call(client)

    assert caught.value.status == 200 and '"success": true' in caught.value.error_msg


def test_given_2xx_success_false_with_per_call_errors_when_uploaded_then_a_refusal_of_calls(fake, client):
    fake.fail_next(1, 200, body='{"success":false,"errorMsg":"Errors in the entity format",'
                                '"errors":{"calls[0][phone]":"Bad phone"}}')

    with pytest.raises(CrmRejected) as caught:
        client.upload_calls([record("a")])

    assert caught.value.errors == {"calls[0][phone]": "Bad phone"}
    assert not caught.value.account_problem


# --- errors as a list or a map, info as [] --------------------------------------------------------

@pytest.mark.parametrize("shape, errors", [
    ("errors_list", ["The phone of the first call is not valid."]),
    ("errors_map", {"calls[0].code": "This value is not valid."}),
])
def test_given_errors_list_or_map_when_uploaded_then_rejected_carrying_them(fake, client, shape, errors):
    fake.answer_next(shape, path=UPLOAD_PATH)

    with pytest.raises(CrmRejected) as caught:
        client.upload_calls([record("a")])

    assert (caught.value.status, caught.value.error_msg, caught.value.errors) == (
        400, "Errors in the entity format", errors)
    assert not caught.value.account_problem


@pytest.mark.parametrize("shape, words", [
    ("errors_list", '["The phone of the first call is not valid."]'),
    ("errors_map", '{"calls[0].code": "This value is not valid."}'),
])
def test_given_errors_list_or_map_for_one_call_when_drained_then_it_is_set_aside_with_them(
        fake, sender, outbox, shape, words):
    fill(outbox, "a")
    fake.answer_next(shape, path=UPLOAD_PATH)

    assert sender.drain_once(SHOP) == 0

    [failed] = outbox.failed()
    assert failed.external_id == "a"
    assert failed.last_error == "HTTP 400: Errors in the entity format " + words


@pytest.mark.parametrize("route, expected", [("call/event", EventResult((), ())), ("module edit", {})])
def test_given_info_as_empty_list_when_called_then_read_as_nothing_to_report(fake, client, route, expected):
    path, call = ROUTES[route]
    fake.answer_next("info_list", path=path)

    assert call(client) == expected


def test_given_errors_empty_or_odd_when_refused_then_no_crash(fake, client):
    fake.fail_next(1, 400, body='{"success":false,"errorMsg":"Validation error","errors":[]}')
    with pytest.raises(CrmRejected) as caught:
        client.upload_calls([record("a")])
    assert caught.value.errors is None

    fake.fail_next(1, 400, body='{"success":false,"errorMsg":"Validation error","errors":"calls: bad"}')
    with pytest.raises(CrmRejected) as caught:
        client.upload_calls([record("a")])
    assert caught.value.errors is None and caught.value.error_msg == "Validation error"


# --- processedCallsCount --------------------------------------------------------------------------

def test_given_answer_shaped_like_the_php_fixture_when_drained_then_delivered(fake, sender, outbox):
    fill(outbox, "a")
    fake.fail_next(1, 200, body='{"success":true,"processedCallsCount":1}')  # no duplicateCalls key

    assert sender.drain_once(SHOP) == 1
    assert outbox.stats().pending == 0


def test_given_crm_counts_one_call_too_few_when_drained_then_batch_sent_again_and_each_stored_once(
        fake, sender, outbox, caplog):
    fill(outbox, "a", "b", "c")
    fake.undercount_uploads = 1  # stores all three, says it processed two

    with caplog.at_level(logging.WARNING, logger="fs_crm.crm.history"):
        assert sender.drain_once(SHOP) == 3

    assert uploads(fake) == [["a", "b", "c"], ["a", "b", "c"]]  # the resend comes back as duplicates
    assert [c["externalId"] for c in fake.calls] == ["a", "b", "c"]
    assert outbox.stats().pending == 0 and outbox.failed() == []
    [short] = [r.getMessage() for r in caplog.records if "accounted for" in r.getMessage()]
    assert "2 of 3" in short and "a, b, c" in short
    assert SHOP not in sender.last_error


def test_given_crm_drops_a_call_silently_when_drained_then_it_is_set_aside_not_lost(
        fake, sender, outbox, caplog):
    fill(outbox, "a", "b", "c")
    fake.silently_drop = {"b"}

    with caplog.at_level(logging.ERROR, logger="fs_crm.crm.history"):
        assert sender.drain_once(SHOP) == 2

    assert uploads(fake) == [["a", "b", "c"], ["a", "b", "c"]]
    assert [c["externalId"] for c in fake.calls] == ["a", "c"]
    [failed] = outbox.failed()
    assert failed.external_id == "b" and "accounted for 2 of 3" in failed.last_error
    assert outbox.stats().pending == 0
    [error] = caplog.records
    assert "shop" in error.getMessage() and "set aside 1 calls" in error.getMessage()
    assert "accounted for" in sender.last_error[SHOP]

    fake.silently_drop = set()
    assert outbox.retry_failed(SHOP) == 1
    assert sender.drain_once(SHOP) == 1
    assert [c["externalId"] for c in fake.calls] == ["a", "c", "b"]


def test_given_answer_without_count_when_drained_then_delivered_with_a_warning(fake, sender, outbox, caplog):
    fill(outbox, "a", "b")
    fake.fail_next(1, 200, body='{"success":true,"duplicateCalls":[]}')

    with caplog.at_level(logging.WARNING, logger="fs_crm.crm.history"):
        assert sender.drain_once(SHOP) == 2

    assert any("without saying how many" in r.getMessage() and "a, b" in r.getMessage() for r in caplog.records)


# --- the manager lookup with a customer -----------------------------------------------------------

def test_given_registered_customer_when_manager_looked_up_with_details_then_official_shape(fake, client):
    fake.managers["79991234567"] = {"id": 1, "firstName": "Ivan", "lastName": "Petrov", "code": "100"}
    fake.customers["79991234567"] = customer(888, "Anna", "Sidorova", phones=["79991234567"], externalId="5406",
                                             email="anna@example.com")

    assert client.responsible_manager("79991234567", timeout=1.0)["code"] == "100"

    answer = requests.get(fake.url + MANAGER_PATH, params={"phone": "79991234567", "details": "1"},
                          headers={"X-API-KEY": KEY}, timeout=5).json()
    assert answer["customer"] == {"id": 888, "firstName": "Anna", "lastName": "Sidorova", "externalId": "5406",
                                  "email": "anna@example.com", "phones": [{"number": "79991234567"}]}
    assert set(answer["links"]) == {"newOrderLink", "newCustomerLink", "customerLink"}
    bare = requests.get(fake.url + MANAGER_PATH, params={"phone": "79991234567"}, headers={"X-API-KEY": KEY},
                        timeout=5).json()
    assert "customer" not in bare and bare["manager"]["id"] == 1


# --- call cards carry codes and userIds -----------------------------------------------------------

def test_given_ring_group_call_when_cards_sent_then_each_carries_codes_and_user_ids(fake):
    acc = account(fake.url)
    tracker = CallTracker((acc,))
    client = CrmClient(acc, DELIVERY)
    cards = CardSender({SHOP: client}, DELIVERY)
    try:
        for body in captured("in_answered_ringgroup"):
            for effect in tracker.handle(parse_event_plain(body)):
                if isinstance(effect, CallEvent):
                    cards.submit(effect)
        assert fake.wait_for(lambda: len(fake.events) == 3)
    finally:
        cards.stop()
        client.close()

    assert [(e["type"], e["codes"], e["userIds"]) for e in fake.events] == [
        ("in", ["100", "200"], [1, 2]), ("hangup", ["100"], [1]), ("hangup", ["200"], [2])]
    assert fake.extra_fields == []
    assert cards.last_error == {}

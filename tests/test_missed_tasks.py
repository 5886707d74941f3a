"""Missed incoming calls become CRM tasks (POST /api/v5/tasks/create): which calls, for whom, at most
one per customer an hour, best effort beside the history. Table tests on the pure parts, then the
service between the fake FreeSWITCH and the fake CRM."""

import contextlib
import time

import pytest
from e2e import config_table

from fs_crm.config import ConfigError, MissedCallTasks, parse_config
from fs_crm.crm.missed_tasks import is_missed, task_for
from fs_crm.crm.payloads import CallRecord
from fs_crm.polling import wait_for
from fs_crm.service import Service
from fs_crm.sim.calls import first_leg, fresh_call

CUSTOMER = "79121234567"
ACCOUNT = {"name": "shop", "crm_url": "https://shop.retailcrm.ru", "api_key": "k", "client_id": "c",
           "domain": "pbx.test", "timezone": "Europe/Moscow", "extensions": {"1": "100", "2": "200"},
           "external_phones": {"shop1": "+74999999999"}}


def record(type_="in", result="no answer", phone=CUSTOMER, **more):
    fields = dict(account="shop", external_id="call-1", date="2024-05-01 12:30:00", type=type_, phone=phone,
                  result=result, duration=0, duration_waiting=6, external_phone="+74999999999", site="shop1")
    fields.update(more)
    return CallRecord(**fields)


def account_with(tasks):
    return parse_config("c.toml", {"accounts": [dict(ACCOUNT, missed_call_tasks=tasks)]}, env={}).accounts[0]


# --- which calls, what task -------------------------------------------------------------------------
@pytest.mark.parametrize("call,missed", [
    (record(result="no answer"), True),
    (record(result="busy"), True),  # every manager's phone was busy: nobody talked to the customer
    (record(result="failed"), True),
    (record(result="answered", duration=12), False),
    (record(type_="out", result="no answer"), False),  # a manager's own unanswered call is no missed call
    (record(phone="anonymous"), False),  # nobody to call back
])
def test_given_finished_call_when_judged_then_only_unanswered_incoming_from_a_number_is_missed(call, missed):
    assert is_missed(call) is missed


def test_given_missed_call_when_task_made_then_exact_wire_form():
    settings = MissedCallTasks(text="Call back {phone} ({site}, {external_phone}, {date})", due_in_minutes=30)
    task = task_for(record(), account_with({"enabled": True}), settings, performer_id=2, customer_id=55)
    assert task.to_api() == {
        "text": "Call back 79121234567 (shop1, +74999999999, 2024-05-01 12:30:00)",
        "performerId": 2,
        "commentary": "Missed incoming call from 79121234567 on +74999999999 (shop1) at 2024-05-01 12:30:00 "
                      "(no answer).",
        "datetime": "2024-05-01 13:00",  # 'Y-m-d H:i' in the account's time zone, like the history's date
        "phone": CUSTOMER,
        "customer": {"id": 55},
    }


def test_given_no_customer_and_no_due_time_when_task_made_then_those_fields_left_out():
    task = task_for(record(external_phone=None, site=None), account_with({"enabled": True}),
                    MissedCallTasks(), performer_id=1, customer_id=None)
    assert task.to_api() == {"text": "Missed call from 79121234567: call back", "performerId": 1,
                             "commentary": "Missed incoming call from 79121234567 at 2024-05-01 12:30:00 "
                                           "(no answer).", "phone": CUSTOMER}


# --- config -----------------------------------------------------------------------------------------
def test_given_no_table_or_not_enabled_when_loaded_then_off():
    assert parse_config("c.toml", {"accounts": [ACCOUNT]}, env={}).accounts[0].missed_call_tasks is None
    assert account_with({"text": "x", "performer": 1}).missed_call_tasks is None
    assert account_with({"enabled": True}).missed_call_tasks == MissedCallTasks()


@pytest.mark.parametrize("tasks,message", [
    ({"enabled": True, "text": "Call {customer}"}, "key 'text': unknown placeholder {customer} (known: {phone}, "
                                                   "{date}, {external_phone}, {site})"),
    ({"enabled": True, "text": "Call {phone"}, "key 'text': is not a valid template"),
    ({"enabled": True, "text": ""}, "key 'text': must not be empty"),
    ({"enabled": True, "performer": 0}, "key 'performer': must be at least 1"),
    ({"enabled": True, "performer": "2"}, "key 'performer': must be an integer"),
    ({"enabled": True, "due_in_minutes": -5}, "key 'due_in_minutes': must be at least 0"),
    ({"enabled": "yes"}, "key 'enabled': must be true or false"),
    ({"enabled": True, "deadline": 5}, "key 'deadline': unknown key"),
])
def test_given_bad_task_settings_when_loaded_then_error_names_file_section_and_key(tasks, message):
    with pytest.raises(ConfigError) as error:
        account_with(tasks)
    assert str(error.value).startswith("c.toml: [accounts 'shop'.missed_call_tasks] ")
    assert message in str(error.value)


# --- through the service ----------------------------------------------------------------------------
@contextlib.contextmanager
def running(fs, crm, state_dir, delivery=None, **tasks):
    table = config_table(fs, crm, state_dir, **(delivery or {}))
    table["accounts"][0]["missed_call_tasks"] = dict({"enabled": True}, **tasks)
    svc = Service(parse_config("<e2e>", table, env={}))
    svc.start()
    try:
        assert fs.wait_subscribed(timeout=10)
        yield svc
    finally:
        svc.stop()


def task_requests(crm):
    return [r for r in crm.requests if r.path == "/api/v5/tasks/create"]


def from_customer(call, number):
    return [body.replace(CUSTOMER.encode(), number.encode()) for body in call]


def test_given_responsible_manager_when_call_missed_then_one_task_for_him_about_that_customer(fakes, state_dir):
    fs, crm = fakes
    crm.managers[CUSTOMER] = {"id": 2, "firstName": "Anna", "code": "200"}
    crm.customers[CUSTOMER] = {"id": 501, "firstName": "Ivan", "phones": [{"number": CUSTOMER}]}
    crm.user_statuses[2] = "break"  # away in the CRM: still the one responsible for calling back
    with running(fs, crm, state_dir, text="Call back {phone}"):
        call = fresh_call("in_missed", "mt-1")  # ring group 100 + 200, nobody answered
        fs.play(call)
        assert crm.wait_for(lambda: len(crm.tasks) == 1, timeout=10)
        assert crm.wait_for(lambda: len(crm.calls) == 1, timeout=10)
    [task] = crm.tasks
    assert (task["performerId"], task["customer"], task["phone"], task["text"]) == (2, {"id": 501}, CUSTOMER,
                                                                                     "Call back " + CUSTOMER)
    assert task["account"] == "shop" and crm.extra_fields == []
    lookup = next(r for r in crm.requests if r.path == "/api/v5/telephony/manager")
    assert lookup.query == {"phone": CUSTOMER, "details": "1", "ignoreStatus": "1"}
    assert task_requests(crm)[0].headers["X-API-KEY"] == "e2e-key"
    assert crm.calls[0]["externalId"] == first_leg(call) and crm.calls[0]["result"] == "no answer"


def test_given_no_responsible_manager_when_call_missed_then_task_for_the_manager_it_rang(fakes, state_dir):
    fs, crm = fakes
    with running(fs, crm, state_dir):
        fs.play(fresh_call("in_busy", "mt-2"))  # shop2's line: extension 300 (user 3) was busy
        assert crm.wait_for(lambda: len(crm.tasks) == 1, timeout=10)
    assert crm.tasks[0]["performerId"] == 3
    assert "customer" not in crm.tasks[0]  # the CRM does not know the number


def test_given_ring_group_missed_without_manager_when_performer_set_then_task_for_him_else_none(fakes, state_dir):
    fs, crm = fakes
    with running(fs, crm, state_dir, performer=1) as svc:
        fs.play(fresh_call("in_missed", "mt-3"))
        assert crm.wait_for(lambda: len(crm.tasks) == 1, timeout=10)
        assert crm.tasks[0]["performerId"] == 1
    crm.tasks.clear()
    with running(fs, crm, state_dir) as svc:
        # Another customer: the first one got his task within the hour, which a restart remembers.
        fs.play(from_customer(fresh_call("in_missed", "mt-4"), "79125550004"))
        assert crm.wait_for(lambda: len(crm.calls) == 2, timeout=10)
        assert wait_for(lambda: svc.missed_tasks.without_performer == 1, timeout=10)
    assert crm.tasks == []


def test_given_two_missed_calls_from_one_customer_within_the_hour_then_one_task_and_after_it_another(
        fakes, state_dir):
    fs, crm = fakes
    with running(fs, crm, state_dir, performer=1) as svc:
        first, again = fresh_call("in_missed", "mt-5"), fresh_call("in_busy", "mt-6")
        other = from_customer(fresh_call("in_missed", "mt-7"), "79125550000")
        later = fresh_call("in_missed", "mt-8", starts_at=time.time() + 3700)
        for call in (first, again, other):
            fs.play(call)
        assert crm.wait_for(lambda: len(crm.calls) == 3, timeout=10)
        assert wait_for(lambda: svc.missed_tasks.skipped == 1, timeout=10)
        fs.play(later)
        assert crm.wait_for(lambda: len(crm.tasks) == 3, timeout=10)
        # The task and the history of the last call come from two senders: wait for both.
        assert crm.wait_for(lambda: len(crm.calls) == 4, timeout=10)  # every call's history, whatever the tasks
    assert [(t["phone"], t["performerId"]) for t in crm.tasks] == [(CUSTOMER, 1), ("79125550000", 1), (CUSTOMER, 1)]


def test_given_a_task_made_when_fs_crm_restarts_then_the_customers_next_missed_call_within_the_hour_makes_none(
        fakes, state_dir):
    fs, crm = fakes
    with running(fs, crm, state_dir, performer=1):
        fs.play(fresh_call("in_missed", "mt-20"))
        assert crm.wait_for(lambda: len(crm.tasks) == 1, timeout=10)
    with running(fs, crm, state_dir, performer=1) as svc:
        fs.play(fresh_call("in_busy", "mt-21", starts_at=time.time() + 600))  # ten minutes later
        marker = from_customer(fresh_call("in_missed", "mt-22"), "79125550002")
        fs.play(marker)
        # One worker judges the calls in the order they ended: once the marker's task exists, the
        # customer's second call has been judged.
        assert crm.wait_for(lambda: len(crm.tasks) == 2, timeout=10)
        assert svc.missed_tasks.skipped == 1
        assert crm.wait_for(lambda: len(crm.calls) == 3, timeout=10)
    assert [t["phone"] for t in crm.tasks] == [CUSTOMER, "79125550002"]


def test_given_answered_call_when_it_ends_then_no_task(fakes, state_dir):
    fs, crm = fakes
    with running(fs, crm, state_dir, performer=1):
        fs.play(fresh_call("in_answered_ringgroup", "mt-9"))
        fs.play(fresh_call("out_busy", "mt-10"))  # the manager's own call nobody answered
        marker = from_customer(fresh_call("in_missed", "mt-11"), "79125550001")
        fs.play(marker)
        # Calls are judged in the order they end: once the marker's task exists, the two before it
        # have been judged.
        assert crm.wait_for(lambda: len(crm.tasks) == 1, timeout=10)
        assert crm.wait_for(lambda: len(crm.calls) == 3, timeout=10)
    assert crm.tasks[0]["phone"] == "79125550001"


def test_given_crm_unavailable_when_call_missed_then_task_retried_until_back_and_history_unaffected(
        fakes, state_dir):
    fs, crm = fakes
    crm.managers[CUSTOMER] = {"id": 2}
    crm.set_mode("unavailable")
    # Retries at least 1.2 s apart in all: time enough for the test to bring the CRM back.
    with running(fs, crm, state_dir, delivery={"retry_min_delay": 0.2, "retry_max_delay": 1.0}):
        call = fresh_call("in_missed", "mt-12")
        fs.play(call)
        assert crm.wait_for(lambda: any(r.path == "/api/v5/telephony/manager" and r.status == 503
                                        for r in crm.requests), timeout=10)
        crm.set_mode("ok")
        assert crm.wait_for(lambda: len(crm.tasks) == 1, timeout=10)
        assert crm.wait_for(lambda: [c["externalId"] for c in crm.calls] == [first_leg(call)], timeout=10)
    assert crm.tasks[0]["performerId"] == 2


def test_given_crm_refuses_task_when_call_missed_then_refusal_logged_history_sent_and_next_call_tries_again(
        fakes, state_dir, caplog):
    fs, crm = fakes
    crm.known_user_ids = {1, 2, 3}
    crm.managers[CUSTOMER] = {"id": 99}  # a user the CRM says does not exist
    with running(fs, crm, state_dir) as svc:
        fs.play(fresh_call("in_missed", "mt-13"))
        assert crm.wait_for(lambda: [r.status for r in task_requests(crm)] == [400], timeout=10)
        assert wait_for(lambda: svc.missed_tasks.failed == 1, timeout=10)
        crm.managers[CUSTOMER] = {"id": 2}
        fs.play(fresh_call("in_missed", "mt-14"))
        assert crm.wait_for(lambda: len(crm.tasks) == 1, timeout=10)
        assert crm.wait_for(lambda: len(crm.calls) == 2, timeout=10)
    assert "the CRM refused the missed-call task" in caplog.text and "performerId" in caplog.text

"""Calls as a real PBX makes them: fs-crm against a real FreeSWITCH 1.11, SIPp as phones and carrier.

Each test plays one situation of tests/live/scenarios.py and checks what the fake CRM received.
"""

from __future__ import annotations

from scenarios import CUSTOMER, SCENARIOS, card_outcome, check_history


def finish(live, *parties, timeout: float = 60.0) -> None:
    for party in parties:
        party.wait(timeout)
    live.wait_idle()


def assert_scenario(live, name: str) -> dict:
    expected = SCENARIOS[name]
    if expected.history is None:
        live.wait_idle()
        assert live.crm.calls == []
        record = None
    else:
        [record] = live.wait_history(1)
        assert check_history(record, expected) == [], record
    wanted = card_outcome(expected.cards)
    live.crm.wait_for(lambda: card_outcome(live.cards()) == wanted, timeout=10)
    assert card_outcome(live.cards()) == wanted, live.cards()
    return record


def test_given_ring_group_when_one_manager_answers_then_cards_for_both_and_history_for_him(live):
    live.capture_as("ringgroup_answered")
    ivan = live.phones.phone("100", "ring")
    anna = live.phones.phone("200", "answer", ring_ms=2000)
    customer = live.phones.customer_calls("74999999999", CUSTOMER, talk_ms=3000)
    finish(live, customer, ivan, anna)
    record = assert_scenario(live, "ringgroup_answered")
    assert record["recordUrl"].startswith(live.service.config.http.public_url)


def test_given_ring_group_when_customer_gives_up_then_missed_call(live):
    live.capture_as("ringgroup_missed")
    ivan, anna = live.phones.phone("100", "ring"), live.phones.phone("200", "ring")
    customer = live.phones.customer_calls("74999999999", CUSTOMER, then="give_up", wait_ms=4000)
    finish(live, customer, ivan, anna)
    assert_scenario(live, "ringgroup_missed")


def test_given_busy_phone_when_customer_calls_then_busy_call(live):
    live.capture_as("single_busy")
    oleg = live.phones.phone("300", "busy")
    customer = live.phones.customer_calls("74998888888", CUSTOMER, then="refused", status=486)
    finish(live, customer, oleg)
    assert_scenario(live, "single_busy")


def test_given_manager_dials_customer_when_answered_then_outgoing_call(live):
    live.capture_as("outgoing_answered")
    far_end = live.phones.carrier("answer", ring_ms=2000)
    ivan = live.phones.phone_calls("100", CUSTOMER, talk_ms=3000)
    finish(live, ivan, far_end)
    assert_scenario(live, "outgoing_answered")


def test_given_colleagues_call_each_other_then_nothing_reaches_the_crm(live):
    live.capture_as("internal")
    anna = live.phones.phone("200", "answer", ring_ms=500)
    ivan = live.phones.phone_calls("100", "200", talk_ms=1000)
    finish(live, ivan, anna)
    assert_scenario(live, "internal")


def test_given_customer_number_with_trunk_prefix_then_crm_gets_the_canonical_number(live):
    live.capture_as("trunk_prefix_caller")
    oleg = live.phones.phone("300", "answer", ring_ms=1000)
    customer = live.phones.customer_calls("74998888888", "89121234567", talk_ms=2000)
    finish(live, customer, oleg)
    assert_scenario(live, "trunk_prefix_caller")


def test_given_announcement_first_then_talk_counts_from_the_manager(live):
    live.capture_as("announcement_first")
    ivan = live.phones.phone("100", "answer", ring_ms=1000)
    customer = live.phones.customer_calls("74995555555", CUSTOMER, talk_ms=4000)
    finish(live, customer, ivan)
    assert_scenario(live, "announcement_first")


def test_given_ring_all_queue_when_an_agent_answers_then_answered_by_that_agent(live):
    live.capture_as("queue_ringall_answered")
    ivan = live.phones.phone("100", "ring")
    anna = live.phones.phone("200", "answer", ring_ms=1500)
    customer = live.phones.customer_calls("74996666666", CUSTOMER, talk_ms=4500)
    finish(live, customer, ivan, anna)
    assert_scenario(live, "queue_ringall_answered")


def test_given_voicemail_after_no_answer_then_missed_for_that_manager_and_message_kept(live):
    live.capture_as("voicemail_after_no_answer")
    oleg = live.phones.phone("300", "ring")
    customer = live.phones.customer_calls("74994444444", CUSTOMER, talk_ms=6000)
    finish(live, customer, oleg)
    assert_scenario(live, "voicemail_after_no_answer")
    messages = list((live.pbx.dirs["storage"] / "voicemail").rglob("*.wav"))
    assert messages, "the voicemail message must stay in the manager's box"


def test_given_call_forwarded_to_managers_mobile_then_that_manager_answered(live):
    live.capture_as("forward_to_mobile")
    mobile = live.phones.carrier("answer", ring_ms=1500)
    customer = live.phones.customer_calls("74993333333", CUSTOMER, talk_ms=3000)
    finish(live, customer, mobile)
    assert_scenario(live, "forward_to_mobile")

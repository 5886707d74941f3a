"""Calls as a real PBX makes them: fs-crm against a real FreeSWITCH 1.11, SIPp as phones and carrier.

Each test plays one situation of tests/live/scenarios.py and checks what the fake CRM received.
"""

from __future__ import annotations

from checks import assert_scenario, channel, finish, ringing, talk_for
from scenarios import CUSTOMER, card_outcome

from fs_crm.polling import wait_for


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
    record = assert_scenario(live, "voicemail_after_no_answer")
    messages = list((live.pbx.dirs["storage"] / "voicemail").rglob("*.wav"))
    assert messages, "the voicemail message must stay in the manager's box"
    # The CRM plays the message anyway: fs-crm's own recording of the customer's leg runs from the
    # moment voicemail answers, so it holds the greeting and the message (a copy, never the file).
    assert record.get("recordUrl"), record


def test_given_call_forwarded_to_managers_mobile_then_that_manager_answered(live):
    live.capture_as("forward_to_mobile")
    mobile = live.phones.carrier("answer", ring_ms=1500)
    customer = live.phones.customer_calls("74993333333", CUSTOMER, talk_ms=3000)
    finish(live, customer, mobile)
    assert_scenario(live, "forward_to_mobile")


def test_given_follow_me_when_desk_phone_rings_out_and_mobile_answers_then_that_manager_answered(live):
    live.capture_as("follow_me_to_mobile")
    desk = live.phones.phone("100", "ring")
    mobile = live.phones.carrier("answer", ring_ms=1000)
    customer = live.phones.customer_calls("74992222222", CUSTOMER, talk_ms=3000)
    finish(live, customer, desk, mobile)
    assert_scenario(live, "follow_me_to_mobile")






def test_given_blind_transfer_when_customer_talks_to_two_managers_then_talk_counts_both(live):
    live.capture_as("blind_transfer")
    oleg = live.phones.phone("300", "answer", ring_ms=1000)
    anna = live.phones.phone("200", "answer", ring_ms=1000)
    customer = live.phones.customer_calls("74998888888", CUSTOMER, talk_ms=6000)
    caller = channel(live, "sofia/external/")
    talk_for(2)
    assert "+OK" in live.pbx.api("uuid_transfer %s 200 XML default" % caller["uuid"])
    finish(live, customer, oleg, anna)
    assert_scenario(live, "blind_transfer")


def test_given_freeswitch_killed_mid_call_when_it_restarts_then_call_reported_once_with_talk_and_cards_closed(live):
    live.capture_as("freeswitch_killed_mid_call")
    ivan = live.phones.phone("100", "ring")
    anna = live.phones.phone("200", "answer", ring_ms=1000)
    customer = live.phones.customer_calls("74999999999", CUSTOMER, talk_ms=60000)
    channel(live, "sofia/external/")
    talk_for(3)
    live.pbx.kill()
    for party in (customer, ivan, anna):
        party.stop()
    live.pbx.start()
    try:
        record = assert_scenario(live, "freeswitch_killed_mid_call")
        assert record.get("recordUrl"), "the recording FreeSWITCH left on disk is uploaded"
        assert live.service.listener.connects >= 2
    finally:
        live.phones.register_all()




def test_given_colleague_picks_up_a_ringing_call_then_history_names_him(live):
    live.capture_as("pickup")
    oleg = live.phones.phone("300", "ring")
    customer = live.phones.customer_calls("74998888888", CUSTOMER)  # talks until the manager hangs up
    ringing(live, "sofia/local/300")
    talk_for(1)
    reception = live.phones.phone_calls("400", "*8", talk_ms=3000)
    finish(live, reception, customer, oleg)
    assert_scenario(live, "pickup")


def test_given_call_parked_and_retrieved_by_colleague_then_both_conversations_count(live):
    live.capture_as("park_and_retrieve")
    oleg = live.phones.phone("300", "answer", ring_ms=1000)
    customer = live.phones.customer_calls("74998888888", CUSTOMER)
    caller = channel(live, "sofia/external/")
    talk_for(2)
    assert "+OK" in live.pbx.api("uuid_transfer %s 7000 XML default" % caller["uuid"])
    assert wait_for(lambda: "7001" in live.pbx.api("valet_info lot1"), timeout=5), live.pbx.api("valet_info lot1")
    talk_for(2)
    reception = live.phones.phone_calls("400", "7001", talk_ms=3000)
    finish(live, reception, customer, oleg)
    assert_scenario(live, "park_and_retrieve")


def test_given_two_customers_ring_the_same_group_then_two_calls_each_with_its_cards(live):
    live.capture_as("ringgroup_two_customers")
    ivan = live.phones.phone("100", "ring", calls=2)
    anna = live.phones.phone("200", "ring", calls=2)
    first = live.phones.customer_calls("74999999999", CUSTOMER, then="give_up", wait_ms=4000)
    ringing(live, "sofia/local/100")
    second = live.phones.customer_calls("74999999999", "79127654321", then="give_up", wait_ms=3000)
    finish(live, first, second, ivan, anna)
    records = live.wait_history(2)
    assert sorted(r["phone"] for r in records) == [CUSTOMER, "79127654321"]
    assert {r["result"] for r in records} == {"no answer"}
    by_call: dict[str, list] = {}
    for event in live.crm.events:
        by_call.setdefault(event["callExternalId"], []).append((event["type"], tuple(event["codes"]),
                                                                 event.get("hangupStatus")))
    assert sorted(by_call) == sorted(r["externalId"] for r in records)
    for cards in by_call.values():
        assert card_outcome(cards) == {"100": ["in", "hangup:no answered"], "200": ["in", "hangup:no answered"]}


def test_given_queue_when_customer_gives_up_waiting_then_missed(live):
    live.capture_as("queue_abandoned")
    ivan, anna = live.phones.phone("100", "ring"), live.phones.phone("200", "ring")
    customer = live.phones.customer_calls("74996666666", CUSTOMER, talk_ms=3000)  # the queue answers
    finish(live, customer, ivan, anna)
    assert_scenario(live, "queue_abandoned")


def test_given_one_at_a_time_queue_when_second_agent_answers_then_his_call(live):
    live.capture_as("queue_topdown_second_agent")
    ivan = live.phones.phone("100", "ring")
    oleg = live.phones.phone("300", "answer", ring_ms=1000)
    customer = live.phones.customer_calls("74996666660", CUSTOMER, talk_ms=9000)
    finish(live, customer, ivan, oleg)
    assert_scenario(live, "queue_topdown_second_agent")


def test_given_attended_transfer_when_manager_hands_customer_over_then_one_record_for_the_second(live):
    """300 consults 200 on a call of his own (here placed by the PBX for him), then puts the customer
    through: what att_xfer and a phone's REFER/Replaces end with, a uuid_bridge of the customer and
    the consulted leg. The consultation starts as an internal call and joins the customer's."""
    live.capture_as("attended_transfer")
    oleg = live.phones.phone("300", "answer", ring_ms=1000)
    anna = live.phones.phone("200", "answer", ring_ms=1000)
    customer = live.phones.customer_calls("74998888888", CUSTOMER, talk_ms=8000)
    caller = channel(live, "sofia/external/")
    talk_for(2)
    consult = "00000000-0000-4000-8000-%012d" % (abs(hash(caller["uuid"])) % 10**12)
    live.pbx.api("originate {origination_uuid=%s,origination_caller_id_number=300}user/200@pbx.test &park()"
                 % consult)
    channel(live, consult)
    talk_for(2)
    assert "+OK" in live.pbx.api("uuid_bridge %s %s" % (caller["uuid"], consult))
    finish(live, customer, oleg, anna)
    assert_scenario(live, "attended_transfer")


def test_given_click_to_call_when_manager_and_customer_answer_then_outgoing_call_of_that_manager(live):
    """The CRM's makeCallUrl through fs-crm's HTTP to a real originate: 100's phone rings first,
    then the customer is dialled through the dialplan and the carrier. The CRM's number comes in its
    own spelling and reaches FreeSWITCH in the canonical one."""
    import requests

    live.capture_as("click_to_call")
    ivan = live.phones.phone("100", "answer", ring_ms=1000)
    far_end = live.phones.carrier("answer", ring_ms=1000, talk_ms=3000)
    account = live.service.config.accounts[0]
    answer = requests.get("http://127.0.0.1:%d/make-call" % live.service.http.port, timeout=10, params={
        "clientId": account.client_id, "code": "100", "userId": "1", "phone": "8 (912) 123-45-67"})
    assert answer.status_code == 200, answer.text
    finish(live, far_end, ivan)
    assert_scenario(live, "click_to_call")


def test_given_crm_knows_the_customer_when_click_to_call_then_the_managers_phone_shows_his_name(live):
    """The make-call request names no customer: fs-crm asks the CRM, and 100's phone rings showing
    the name (made safe for FreeSWITCH) with the customer's number."""
    import re

    import requests

    from fs_crm.sim.fake_crm import customer

    live.crm.customers["79121234567"] = customer(7, "Ольга", "О'Нил-Кузнецова", phones=["79121234567"])
    ivan = live.phones.phone("100", "answer", ring_ms=500)
    far_end = live.phones.carrier("answer", ring_ms=500, talk_ms=1000)
    account = live.service.config.accounts[0]
    answer = requests.get("http://127.0.0.1:%d/make-call" % live.service.http.port, timeout=10, params={
        "clientId": account.client_id, "code": "100", "userId": "1", "phone": "+7 (912) 123-45-67"})
    assert answer.status_code == 200, answer.text
    finish(live, far_end, ivan)

    [invite] = ivan.received_requests("INVITE")
    shown_from = re.search(r"(?m)^From: *(.*?)\r?$", invite).group(1)
    print("INVITE to 100: From: %s" % shown_from)
    assert re.fullmatch(r'"Ольга О\u2019Нил-Кузнецова" <sip:79121234567@[^>]+>;tag=\S+', shown_from), shown_from
    [record] = live.wait_history(1)
    assert (record["type"], record["code"], record["phone"]) == ("out", "100", "79121234567")

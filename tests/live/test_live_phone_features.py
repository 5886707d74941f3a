"""What the managers' phones do by themselves during a call, on a real FreeSWITCH: a blind transfer by
the phone's own SIP REFER, hold and resume by re-INVITE, and FreeSWITCH's att_xfer reached with a
feature code the phone dials (SIP INFO DTMF). Expectations are tests/live/scenarios.py's."""

from __future__ import annotations

from checks import assert_scenario, channel, finish
from scenarios import CUSTOMER
from sipp import dtmf

HOLD_MUSIC = "tone_stream://%(1000,4000,440)"








def test_given_phone_transfers_by_refer_when_colleague_answers_then_talk_counts_both_and_call_is_his(live):
    """300's phone sends REFER (Refer-To: 200) in its dialog: FreeSWITCH answers 202, NOTIFYs
    `SIP/2.0 200 OK`, hangs 300 up and sends the customer's leg to 200 (dialplan
    `phone_blind_transfer`)."""
    live.capture_as("refer_blind_transfer")
    oleg = live.phones.phone("300", "answer", ring_ms=1000,
                             after_answer=("refer.part", {"talk_ms": 2000, "refer_to": "200"}))
    anna = live.phones.phone("200", "answer", ring_ms=1000)
    customer = live.phones.customer_calls("74998888888", CUSTOMER, talk_ms=6000)
    finish(live, customer, oleg, anna)
    assert_scenario(live, "refer_blind_transfer")


def test_given_manager_holds_and_resumes_then_hold_is_part_of_his_conversation(live):
    """300's phone re-INVITEs a=sendonly, FreeSWITCH plays hold music to the customer inside the
    bridge (no UNBRIDGE), then a=sendrecv. The customer never left his manager."""
    live.capture_as("hold_and_resume")
    oleg = live.phones.phone("300", "answer", ring_ms=1000,
                             after_answer=("hold.part", {"talk_ms": 2000, "hold_ms": 2000}))
    customer = live.phones.customer_calls("74998888888", CUSTOMER, talk_ms=7000)
    # A PBX's hold music (vanilla sets it globally); this build has no mod_local_stream for the default.
    phone = channel(live, "sofia/local/300")
    assert "+OK" in live.pbx.api("uuid_setvar %s hold_music %s" % (phone["uuid"], HOLD_MUSIC))
    finish(live, customer, oleg)
    assert_scenario(live, "hold_and_resume")


def test_given_manager_dials_att_xfer_feature_code_then_consulted_colleague_gets_the_call(live):
    """On 74998888881 the customer's leg binds *4 (bind_meta_app, vanilla's features): 300 presses
    *4 and 200, att_xfer rings 200 from 300's leg, they talk, 300 hangs up and FreeSWITCH bridges
    the customer to 200."""
    live.capture_as("att_xfer_feature_code")
    oleg = live.phones.phone("300", "answer", ring_ms=1000, after_answer=(
        "keys_then_hang_up.part", {"talk_ms": 1500, "keys": dtmf("*4200", "300"), "then_ms": 2000}))
    anna = live.phones.phone("200", "answer", ring_ms=1000)
    customer = live.phones.customer_calls("74998888881", CUSTOMER, talk_ms=8000)
    finish(live, customer, oleg, anna)
    assert_scenario(live, "att_xfer_feature_code")

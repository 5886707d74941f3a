"""mod_fifo's queue as a real PBX runs it: fs-crm against a real FreeSWITCH 1.11, SIPp as phones and carrier.

The customer calls 74996666661 and waits in FIFO sales@pbx.test with hold music; mod_fifo rings the
queue's outbound members (tests/live/pbx/freeswitch.xml, fifo.conf), the phones 200 and 300, with
originates of its own, and bridges the customer to the one who answers. Each test plays one
situation of tests/live/scenarios.py and checks what the fake CRM received.
"""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

from checks import assert_scenario, finish
from scenarios import CUSTOMER

from fs_crm.polling import wait_for

QUEUE = "sales@pbx.test"
MEMBERS = ("user/200@pbx.test", "user/300@pbx.test")


def members_free(live) -> bool:
    """Whether mod_fifo would ring every member of the queue now: none ringing or on a call, each
    past its next-available time. A member whose fifo call just ended is kept aside for `lag` + 1
    whole seconds, and mod_fifo rings only the members free when the caller comes in: a test
    starting right after another one would have the customer rung to one phone only."""
    report = ET.fromstring(live.pbx.api("fifo list_verbose %s" % QUEUE))
    now = dt.datetime.now().replace(microsecond=0)  # FreeSWITCH's local time, in its whole seconds

    def free(member) -> bool:
        after = member.get("next-available")
        return (member.get("use_count") == "0" and member.get("ring-count") == "0"
                and (after == "now" or dt.datetime.strptime(after, "%Y-%m-%d %H:%M:%S") <= now))

    return sorted(m.text for m in report.iter("member") if free(m)) == sorted(MEMBERS)


def wait_members_free(live) -> None:
    assert wait_for(lambda: members_free(live), timeout=10, interval=0.1), (
        live.pbx.api("fifo list_verbose %s" % QUEUE))


def test_given_fifo_queue_when_a_member_answers_then_answered_by_that_member(live):
    live.capture_as("queue_fifo_answered")
    wait_members_free(live)
    anna = live.phones.phone("200", "ring")
    oleg = live.phones.phone("300", "answer", ring_ms=1500)
    customer = live.phones.customer_calls("74996666661", CUSTOMER, talk_ms=5000)  # fifo answers at once
    finish(live, customer, anna, oleg)
    record = assert_scenario(live, "queue_fifo_answered")
    # mod_fifo pauses the caller's recording while he waits and resumes it at the bridge: the
    # file holds the conversation.
    assert record["recordUrl"].startswith(live.service.config.http.public_url)


def test_given_fifo_queue_when_customer_gives_up_waiting_then_missed(live):
    live.capture_as("queue_fifo_abandoned")
    wait_members_free(live)
    anna, oleg = live.phones.phone("200", "ring"), live.phones.phone("300", "ring")
    customer = live.phones.customer_calls("74996666661", CUSTOMER, talk_ms=4000)  # fifo answers at once
    finish(live, customer, anna, oleg)
    record = assert_scenario(live, "queue_fifo_abandoned")
    # Nobody talked to him, so the recording (paused while he waited) was empty and discarded.
    assert "recordUrl" not in record

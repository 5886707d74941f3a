"""fs-crm's outbound-socket router on a real FreeSWITCH: company number 74997777777 goes to the router
(tests/live/pbx/dialplan.xml, `call_timeout` = the PBX's router_call_timeout), the router asks the fake
CRM for the customer's responsible manager and rings him, and `reception` (400) takes what he does not.
"""

from __future__ import annotations

import re
import time
from datetime import datetime

import pytest
import requests
from checks import assert_scenario, finish
from scenarios import CUSTOMER, SCENARIO_CALL_TIMEOUT

from fs_crm.crm.client import MANAGER_PATH
from fs_crm.polling import wait_for
from fs_crm.sim.fake_crm import customer

ROUTED = "74997777777"
IVAN = {"id": 1, "firstName": "Ivan", "lastName": "Petrov", "code": "100"}
# SIPp's -trace_msg log: a dashed line with the time, a line saying in which direction, a blank
# line, then the SIP message, whose first line is the request or status line.
MESSAGE = re.compile(r"^-{20,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\n(?:UDP|TCP) message (received|sent)"
                     r"[^\n]*\n\n([^\n]*)", re.M)




def sip_log(party) -> list[tuple[datetime, str, str]]:
    """(time, received|sent, first line) of each SIP message a SIPp party saw."""
    path = party.workdir / ("%s-messages.log" % party.name)
    text = path.read_text(errors="replace") if path.exists() else ""
    return [(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f"), way, line.strip())
            for stamp, way, line in MESSAGE.findall(text)]


def received(party, method: str) -> list[datetime]:
    return [at for at, way, line in sip_log(party) if way == "received" and line.startswith(method + " ")]


def invite_from(party) -> str:
    """The From header of the one INVITE a phone got: `"display name" <sip:user@host>;tag=...`."""
    [invite] = party.received_requests("INVITE")
    return re.search(r"(?m)^From: *(.*?)\r?$", invite).group(1)




def test_given_responsible_manager_does_not_answer_when_customer_calls_then_he_rings_his_full_timeout_and_reception_answers(live):  # noqa: E501
    live.capture_as("routed_manager_no_answer")
    live.crm.managers[CUSTOMER] = IVAN
    ivan = live.phones.phone("100", "ring")
    reception = live.phones.phone("400", "answer", ring_ms=1000)
    customer = live.phones.customer_calls(ROUTED, CUSTOMER, talk_ms=2000)
    finish(live, customer, ivan, reception)

    [invited], [cancelled] = received(ivan, "INVITE"), received(ivan, "CANCEL")
    rang = (cancelled - invited).total_seconds()
    timeout = live.pbx.router_call_timeout
    print("100 rang %.2f s (INVITE to CANCEL), call_timeout %s s" % (rang, timeout))
    # FreeSWITCH's originate counts whole epoch seconds, so a leg rings between call_timeout - 1
    # and call_timeout seconds (5.4 s seen here for 6).
    assert timeout - 1 <= rang <= timeout + 0.5, rang
    assert len(received(reception, "INVITE")) == 1 and len(received(reception, "ACK")) == 1, sip_log(reception)
    # 400 is rung only once 100 stopped ringing (the CANCEL and the new INVITE leave FreeSWITCH in the
    # same millisecond; two processes log them): the fallback never cut the manager short.
    assert (received(reception, "INVITE")[0] - cancelled).total_seconds() > -0.1

    assert timeout == SCENARIO_CALL_TIMEOUT
    assert_scenario(live, "routed_manager_no_answer")
    assert live.service.router.decisions["manager"] == 1, live.service.router.decisions


def test_given_responsible_manager_answers_when_he_hangs_up_then_call_is_his_and_fallback_never_runs(live):
    live.capture_as("routed_manager_answers")
    live.crm.managers[CUSTOMER] = IVAN
    ivan = live.phones.phone("100", "answer", ring_ms=1000, talk_ms=2000)  # the manager ends the call
    reception = live.phones.phone("400", "ring")
    customer = live.phones.customer_calls(ROUTED, CUSTOMER)  # waits for the BYE
    finish(live, customer, ivan)
    record = assert_scenario(live, "routed_manager_answers")
    # Had the queued `transfer reception` run after the bridge, 400 would have rung by now (the
    # customer hung up only once the call was over, which wait_idle saw).
    assert not reception.done and received(reception, "INVITE") == [], sip_log(reception)
    assert record["code"] == "100"


# The CRM's names as they are, and as fs_crm.freeswitch.callerid lets them through to FreeSWITCH.
@pytest.mark.parametrize("first,last,shown", [
    ("Иван", "Петров", "Иван Петров"),
    ('Ольга "Оля"', "О'Нил, ${system(id)} {x}^^:", "Ольга Оля О’Нил systemid x"),
], ids=["cyrillic", "hostile"])
def test_given_crm_knows_the_customer_when_routed_then_the_managers_phone_shows_his_name(live, first, last, shown):
    live.crm.managers[CUSTOMER] = IVAN
    live.crm.customers[CUSTOMER] = customer(7, first, last, phones=[CUSTOMER])
    ivan = live.phones.phone("100", "answer", ring_ms=500, talk_ms=1000)
    caller = live.phones.customer_calls(ROUTED, CUSTOMER)  # the carrier's From display name is the number
    finish(live, caller, ivan)

    shown_from = invite_from(ivan)
    print("INVITE to 100: From: %s" % shown_from)
    # mod_sofia writes the leg's caller-ID name as the quoted display name; the number stays the customer's.
    assert re.fullmatch(r'"%s" <sip:%s@[^>]+>;tag=\S+' % (re.escape(shown), CUSTOMER), shown_from), shown_from
    [record] = live.wait_history(1)
    assert (record["code"], record["result"], record["phone"]) == ("100", "answered", CUSTOMER)


@pytest.mark.parametrize("live", [{"ignore_status": True}], indirect=True)
def test_given_ignore_status_when_the_manager_is_on_the_phone_then_reception_and_once_free_he_rings(live):
    """ignore_status: the CRM names 100 whatever his CRM status; what the switch's own events say
    about his phone decides. While he talks to a colleague the customer goes to reception; after his
    call the next customer's call rings him."""
    live.crm.managers[CUSTOMER] = IVAN
    live.crm.user_statuses[1] = "busy"  # the CRM would not name him without ignoreStatus=1
    anna = live.phones.phone("200", "answer", ring_ms=200)
    ivan_calls = live.phones.phone_calls("100", "200", talk_ms=5000)
    assert wait_for(lambda: live.service.tracker.extension_on_call("100", "pbx.test"), timeout=10)
    reception = live.phones.phone("400", "answer", ring_ms=200)
    first = live.phones.customer_calls(ROUTED, CUSTOMER, talk_ms=1000)
    first.wait(30)
    reception.wait(30)
    assert live.service.router.reasons["manager's phone on a call"] == 1, live.service.router.reasons
    finish(live, ivan_calls, anna)

    ivan = live.phones.phone("100", "answer", ring_ms=200)
    second = live.phones.customer_calls(ROUTED, CUSTOMER, talk_ms=1000)
    finish(live, second, ivan)
    assert live.service.router.decisions["manager"] == 1, live.service.router.decisions
    lookups = [r for r in live.crm.requests if r.path == MANAGER_PATH]
    assert [r.query.get("ignoreStatus") for r in lookups] == ["1", "1"]


@pytest.mark.parametrize("failure", ["crm_error_500", "crm_slower_than_manager_timeout"])
def test_given_crm_cannot_name_the_manager_when_customer_calls_then_reception_answers(live, failure):
    live.capture_as("routed_crm_failed" if failure == "crm_error_500" else "routed_crm_slow")
    live.crm.managers[CUSTOMER] = IVAN  # what a working CRM would say: ring 100
    manager_timeout = live.service.config.routing.manager_timeout
    if failure == "crm_error_500":
        live.crm.fail_next(1, status=500)  # the first telephony request is the router's lookup
    else:
        live.crm.manager_delay = manager_timeout + 2.0
    ivan = live.phones.phone("100", "ring")
    reception = live.phones.phone("400", "answer", ring_ms=1000)
    customer = live.phones.customer_calls(ROUTED, CUSTOMER, talk_ms=2000)
    finish(live, customer, reception)

    [lookup] = [r for r in live.crm.requests if r.path == MANAGER_PATH]
    if failure == "crm_error_500":
        assert lookup.status == 500
    assert len(received(reception, "ACK")) == 1, sip_log(reception)
    assert not ivan.done and received(ivan, "INVITE") == [], sip_log(ivan)
    assert live.service.router.decisions["fallback"] == 1, live.service.router.decisions
    assert manager_timeout == 1.5  # the default, which routed_crm_slow's waiting time assumes
    assert_scenario(live, "routed_crm_failed" if failure == "crm_error_500" else "routed_crm_slow")


def status_flag(live, extension: str) -> str:
    try:
        return live.pbx.api("hash select/fs_crm_status/%s@pbx.test" % extension, timeout=1.0).strip()
    except OSError:
        return ""


@pytest.mark.parametrize("live", [{"status_push": "hash"}], indirect=True)
def test_given_manager_on_break_when_freeswitch_restarts_then_his_status_flag_is_back_within_seconds(live):
    answer = requests.post("http://127.0.0.1:%d/change-status" % live.service.http.port, timeout=5, data={
        "clientId": live.service.config.accounts[0].client_id, "userId": "2", "code": "200", "status": "break"})
    assert answer.status_code == 200, answer.text
    assert wait_for(lambda: status_flag(live, "200") == "break", timeout=5), status_flag(live, "200")

    try:
        stopping = time.monotonic()
        live.pbx.stop()
        down = time.monotonic()
        live.pbx.start()
        up = time.monotonic()
        # The restarted FreeSWITCH has no flags of its own; only fs-crm's re-push brings it back.
        assert wait_for(lambda: status_flag(live, "200") == "break", timeout=5, interval=0.05), (
            "flag after restart: %r" % status_flag(live, "200"))
        back = time.monotonic()
        print("restart: stop %.2f s, start %.2f s, flag back %.2f s after start returned"
              % (down - stopping, up - down, back - up))
        assert live.service.listener.connects >= 2
    finally:
        if live.pbx.process is None or live.pbx.process.poll() is not None:
            live.pbx.start()
        live.phones.register_all()
        assert wait_for(lambda: live.pbx.api("show registrations").count("pbx.test") >= len(live.phones.phone_ports),
                        timeout=10), live.pbx.api("show registrations")

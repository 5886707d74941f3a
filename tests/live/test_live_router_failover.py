"""Several fs-crm hosts behind one FreeSWITCH (docs/freeswitch.md, "The router behind several fs-crm
hosts"): the socket application's host list `127.0.0.1:<dead>|127.0.0.1:<router>` on company number
74997777770 (tests/live/pbx/dialplan.xml). Nothing ever listens on the first port, so FreeSWITCH's
connect is refused and it tries the next host, fs-crm's router, which routes the call as usual; with
the router down as well, the dialplan's fallback after `socket` (reception, 400) takes the call.
"""

from __future__ import annotations

import re
from datetime import datetime

from checks import assert_scenario, finish
from scenarios import CUSTOMER

from fs_crm.crm.client import MANAGER_PATH
from fs_crm.polling import wait_for

FAILOVER = "74997777770"
IVAN = {"id": 1, "firstName": "Ivan", "lastName": "Petrov", "code": "100"}
# A channel's lines in freeswitch.log: "<uuid> <date> <time> <idle cpu>% [LEVEL] file.c:line message".
SOCKET_LINE = re.compile(r"^(?P<uuid>[0-9a-f-]{36}) (?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) [\d.]+% "
                         r"\[(?P<level>\w+)\] mod_event_socket\.c:\d+ (?P<text>.*)$", re.M)


def socket_lines(live, since: int) -> list[tuple[datetime, str, str, str]]:
    """(time, call uuid, level, message) of mod_event_socket's lines about calls logged after `since`,
    but for DEBUG (the router's linger, "Socket Linger 5" and "linger timeout, closing socket")."""
    log = live.pbx.dirs["log"] / "freeswitch.log"
    text = log.read_bytes()[since:].decode(errors="replace")
    return [(datetime.strptime(m["at"], "%Y-%m-%d %H:%M:%S.%f"), m["uuid"], m["level"], m["text"].strip())
            for m in SOCKET_LINE.finditer(text) if m["level"] != "DEBUG"]


def log_size(live) -> int:
    log = live.pbx.dirs["log"] / "freeswitch.log"
    return log.stat().st_size if log.exists() else 0


def test_given_first_socket_host_is_dead_when_customer_calls_then_the_second_fs_crm_routes_him_to_his_manager(live):
    dead, router = live.pbx.ports.dead_router, live.pbx.ports.router
    live.crm.managers[CUSTOMER] = IVAN
    ivan = live.phones.phone("100", "answer", ring_ms=1000, talk_ms=2000)  # the manager ends the call
    reception = live.phones.phone("400", "ring")
    since = log_size(live)
    customer = live.phones.customer_calls(FAILOVER, CUSTOMER)  # waits for the BYE
    finish(live, customer, ivan)

    # The call is fs-crm's, exactly as on the single-host number (test_live_routing.py).
    record = assert_scenario(live, "routed_manager_answers")
    assert record["code"] == "100"
    assert live.service.router.decisions["manager"] == 1, live.service.router.decisions
    assert live.service.routing.sessions_total == 1
    assert reception.received_requests("INVITE") == [], reception.logs()  # the fallback never ran

    # What FreeSWITCH did: refused on the first host, connected to the second, no error after it.
    wanted = "Trying host: 127.0.0.1:%d" % router
    assert wait_for(lambda: any(text == wanted for _, _, _, text in socket_lines(live, since)), timeout=5)
    lines = socket_lines(live, since)
    print("\n".join("%s %s [%s] %s" % (at.time(), uuid[:8], level, text) for at, uuid, level, text in lines))
    assert [(level, text) for _, _, level, text in lines] == [
        ("NOTICE", "Trying host: 127.0.0.1:%d" % dead),
        ("ERR", "Socket Error: Connection refused"),
        ("NOTICE", "Trying host: 127.0.0.1:%d" % router),
    ], lines
    assert len({uuid for _, uuid, _, _ in lines}) == 1, lines  # all about the customer's leg
    failed_attempt = (lines[2][0] - lines[0][0]).total_seconds()
    print("the refused first host cost %.3f s (FreeSWITCH's log clock)" % failed_attempt)
    assert failed_attempt < 0.5, failed_attempt


def test_given_every_socket_host_is_down_when_customer_calls_then_the_dialplan_fallback_answers(live):
    dead, router = live.pbx.ports.dead_router, live.pbx.ports.router
    live.crm.managers[CUSTOMER] = IVAN
    live.service.routing.stop()  # fs-crm's router down too: nothing listens on either port
    ivan = live.phones.phone("100", "ring")
    reception = live.phones.phone("400", "answer", ring_ms=1000)
    since = log_size(live)
    customer = live.phones.customer_calls(FAILOVER, CUSTOMER, talk_ms=2000)
    finish(live, customer, reception)

    # routing.xml's safety net: `transfer reception XML default` after the socket action. The CRM
    # sees what it sees when the router could not ask it (reception rings 1 s and talks 2 s).
    assert_scenario(live, "routed_crm_failed")
    assert [r for r in live.crm.requests if r.path == MANAGER_PATH] == []  # nobody asked the CRM
    assert ivan.received_requests("INVITE") == [], ivan.logs()
    assert wait_for(lambda: any(text == "Socket Error!" for _, _, _, text in socket_lines(live, since)), timeout=5)
    lines = socket_lines(live, since)
    print("\n".join("%s %s [%s] %s" % (at.time(), uuid[:8], level, text) for at, uuid, level, text in lines))
    assert [(level, text) for _, _, level, text in lines] == [
        ("NOTICE", "Trying host: 127.0.0.1:%d" % dead),
        ("ERR", "Socket Error: Connection refused"),
        ("NOTICE", "Trying host: 127.0.0.1:%d" % router),
        ("ERR", "Socket Error: Connection refused"),
        ("ERR", "Socket Error!"),
    ], lines

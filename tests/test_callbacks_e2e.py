"""The CRM's callbacks through real HTTP: click-to-call and user status, against the fake FreeSWITCH."""

import os
import re
import socket
import subprocess
import sys

import pytest
import requests
from e2e import config_table

from fs_crm.config import parse_config
from fs_crm.crm.client import MANAGER_PATH
from fs_crm.polling import wait_for
from fs_crm.service import Service
from fs_crm.sim import free_port
from fs_crm.sim.calls import first_leg, fresh_call
from fs_crm.sim.config import to_toml
from fs_crm.sim.fake_crm import customer
from fs_crm.sim.fake_freeswitch import capture_path, load_connect_reply, renumber_call
from fs_crm.store.outbox import Outbox
from fs_crm.web.statuses import UserStatuses

REGISTERED = {"100", "200"}


@pytest.fixture
def running(fakes, tmp_path):
    """The service with its HTTP server, and a FreeSWITCH where 100 and 200 are registered."""
    fs, crm = fakes

    def sofia_contact(args: str) -> str:
        user = args.split("/", 1)[-1].split("@", 1)[0]
        return "sofia/local/sip:%s@127.0.0.1:5071" % user if user in REGISTERED else "error/user_not_registered"

    fs.api_handlers["sofia_contact"] = sofia_contact
    fs.api_handlers["hash"] = lambda args: "+OK"
    port = free_port()
    yield fs, crm, port, tmp_path
    for svc in started:
        svc.stop()
    started.clear()


started: list[Service] = []


def start(fs, crm, tmp_path, port, **account):
    table = config_table(fs, crm, tmp_path / "state")
    table["http"] = {"listen": "127.0.0.1:%d" % port, "public_url": "http://127.0.0.1:%d" % port}
    table["accounts"][0].update(account)
    svc = Service(parse_config("<e2e>", table, env={}))
    svc.start()
    started.append(svc)
    assert fs.wait_subscribed(timeout=10)
    return svc


def originates(fs):
    return [cmd for _, cmd in fs.commands if cmd.startswith("bgapi originate")]


def call(port, **params):
    return requests.get("http://127.0.0.1:%d/make-call" % port, params=params, timeout=5)


GOOD = {"clientId": "client-1", "code": "100", "phone": "79121234567", "userId": "1"}


def test_given_crm_click_when_make_call_then_manager_rung_first_through_dialplan(running):
    fs, crm, port, tmp_path = running
    start(fs, crm, tmp_path, port)
    answer = call(port, **GOOD)
    assert answer.status_code == 200, answer.text
    assert wait_for(lambda: originates(fs), timeout=5)
    command = originates(fs)[0]
    call_uuid = answer.text.split()[1]
    assert command == (
        "bgapi originate {origination_uuid=%s,origination_caller_id_number=79121234567,"
        "origination_caller_id_name=79121234567,originate_timeout=30,ignore_early_media=true,"
        "hangup_after_bridge=true,crm_direction=out,crm_phone=79121234567,crm_user_id=1,"
        "crm_external_phone=+74999999999,effective_caller_id_number=+74999999999,"
        "effective_caller_id_name=+74999999999}user/100@pbx.test 79121234567 XML default" % call_uuid)


def test_given_outbound_route_and_store_number_when_make_call_then_customer_via_route_with_that_number(running):
    fs, crm, port, tmp_path = running
    start(fs, crm, tmp_path, port, outbound_route="sofia/gateway/carrier/{number}")
    # retailCRM writes the + unencoded: it is a plus, not a space.
    url = "http://127.0.0.1:%d/make-call?clientId=client-1&code=200&phone=+79121234567&externalPhone=74998888888" % port
    assert requests.get(url, timeout=5).status_code == 200
    assert wait_for(lambda: originates(fs), timeout=5)
    assert originates(fs)[0].endswith(
        "}user/200@pbx.test &bridge({origination_caller_id_number=+74998888888,"
        "origination_caller_id_name=+74998888888}sofia/gateway/carrier/79121234567)")


# requests sends a space as "+", a raw URL as %20; retailCRM leaves a leading + unencoded.
@pytest.mark.parametrize("phone", ["+7 (912) 123-45-67", "8 912 123 45 67", "8 (912) 123-45-67", "89121234567",
                                   "9121234567", "+79121234567", "7-912-123-45-67"])
def test_given_phone_in_any_spelling_when_make_call_then_only_canonical_digits_reach_originate(running, phone):
    fs, crm, port, tmp_path = running
    start(fs, crm, tmp_path, port)
    answer = call(port, **dict(GOOD, phone=phone))
    assert answer.status_code == 200, answer.text
    assert wait_for(lambda: originates(fs), timeout=5)
    command = originates(fs)[0]
    assert "origination_caller_id_number=79121234567,origination_caller_id_name=79121234567," in command
    assert ",crm_phone=79121234567," in command
    assert command.endswith("}user/100@pbx.test 79121234567 XML default")
    # The company number is the configured one; the customer's is nowhere in another spelling.
    # (UUIDs are left out first: their hex groups can hold ten digits in a row.)
    without_uuids = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "", command)
    assert set(re.findall(r"\+?[0-9]{10,}", without_uuids)) == {"79121234567", "+74999999999"}


@pytest.mark.parametrize("query", ["phone=+7%20(912)%20123-45-67", "phone=8%20912%20123%2045%2067",
                                   "phone=+7+912+123+45+67", "phone=8+(912)+123-45-67"])
def test_given_raw_crm_query_when_make_call_then_plus_and_spaces_understood(running, query):
    fs, crm, port, tmp_path = running
    start(fs, crm, tmp_path, port, outbound_route="sofia/gateway/carrier/+{number}")
    url = "http://127.0.0.1:%d/make-call?clientId=client-1&code=100&%s" % (port, query)
    answer = requests.get(url, timeout=5)
    assert answer.status_code == 200, answer.text
    assert wait_for(lambda: originates(fs), timeout=5)
    assert originates(fs)[0].endswith("sofia/gateway/carrier/+79121234567)")


@pytest.mark.parametrize("external,used", [("8 (499) 888-88-88", "+74998888888"), ("+7 499 888 88 88", "+74998888888"),
                                           ("4998888888", "+74998888888"), ("74997777777", "+74999999999")])
def test_given_external_phone_in_any_spelling_when_make_call_then_that_stores_number(running, external, used):
    fs, crm, port, tmp_path = running
    start(fs, crm, tmp_path, port)
    answer = call(port, **dict(GOOD, externalPhone=external))
    assert answer.status_code == 200, answer.text
    assert wait_for(lambda: originates(fs), timeout=5)
    assert "crm_external_phone=%s,effective_caller_id_number=%s," % (used, used) in originates(fs)[0]


@pytest.mark.parametrize("name,value", [("phone", "100"), ("phone", "12345"), ("phone", "anonymous"),
                                        ("phone", "sip:79121234567@x"), ("phone", "1234567"),
                                        ("phone", "70000000000"), ("externalPhone", "shop1"),
                                        ("externalPhone", "+7 499"), ("externalPhone", "7499${x}")])
def test_given_parameter_that_is_no_phone_number_when_make_call_then_400_naming_it(running, name, value):
    fs, crm, port, tmp_path = running
    start(fs, crm, tmp_path, port)
    answer = call(port, **dict(GOOD, **{name: value}))
    assert answer.status_code == 400
    assert answer.text.startswith("%s is not a phone number" % name), answer.text
    assert originates(fs) == []


@pytest.mark.parametrize("query,message", [
    ("clientId=client-1&code=100&userId=1", "phone is required"),
    ("clientId=client-1&code=100&userId=1&phone=", "phone is required"),
    ("clientId=client-1&code=100&phone=79121234567&phone=79121234568", "phone given twice"),
    ("clientId=client-1&code=100&phone=79121234567&externalPhone=1&externalPhone=2", "externalPhone given twice"),
])
def test_given_phone_missing_or_twice_when_make_call_then_400_naming_it(running, query, message):
    fs, crm, port, tmp_path = running
    start(fs, crm, tmp_path, port)
    answer = requests.get("http://127.0.0.1:%d/make-call?%s" % (port, query), timeout=5)
    assert (answer.status_code, answer.text) == (400, message + "\n")
    assert originates(fs) == []


# --- the customer's name on the manager's phone ----------------------------------------------------

def manager_leg_name(command: str) -> str:
    return re.search(r"[{,]origination_caller_id_name=('[^']*'|[^,}]*)[,}]", command).group(1)


def test_given_crm_knows_the_customer_when_make_call_then_managers_phone_shows_his_name(running):
    fs, crm, port, tmp_path = running
    crm.customers["79121234567"] = customer(7, "Иван", "Петров", phones=["+7 912 123-45-67"])
    start(fs, crm, tmp_path, port)
    answer = call(port, **dict(GOOD, phone="8 (912) 123-45-67"))
    assert answer.status_code == 200, answer.text
    assert wait_for(lambda: originates(fs), timeout=5)
    command = originates(fs)[0]
    call_uuid = answer.text.split()[1]
    # Only the name changed: the number shown, the markers and the customer's leg are as before.
    assert command == (
        "bgapi originate {origination_uuid=%s,origination_caller_id_number=79121234567,"
        "origination_caller_id_name='Иван Петров',originate_timeout=30,ignore_early_media=true,"
        "hangup_after_bridge=true,crm_direction=out,crm_phone=79121234567,crm_user_id=1,"
        "crm_external_phone=+74999999999,effective_caller_id_number=+74999999999,"
        "effective_caller_id_name=+74999999999}user/100@pbx.test 79121234567 XML default" % call_uuid)
    [lookup] = [r for r in crm.requests if r.path == MANAGER_PATH]
    assert (lookup.query["phone"], lookup.query["details"]) == ("79121234567", "1")


@pytest.mark.parametrize("first,last,shown", [
    ("Ann", "O'Brien", "'Ann O\u2019Brien'"),
    ("Ivan }user/200@pbx.test", "x", "'Ivan user200pbx.test x'"),
    ("${system(id)}", "'Petrov' 8 912", "'systemid \u2019Petrov\u2019 8 912'"),
    ("Ivan,originate_timeout=1", "^^:a=b", "'Ivanoriginatetimeout1 ab'"),
    ("{}", "$", "79121234567"),  # nothing left to show: the number
])
def test_given_hostile_customer_name_when_make_call_then_only_its_safe_part_in_the_originate(running, first, last,
                                                                                              shown):
    fs, crm, port, tmp_path = running
    crm.customers["79121234567"] = customer(7, first, last)
    start(fs, crm, tmp_path, port, outbound_route="sofia/gateway/carrier/{number}")
    assert call(port, **GOOD).status_code == 200
    assert wait_for(lambda: originates(fs), timeout=5)
    command = originates(fs)[0]
    assert manager_leg_name(command) == shown
    assert command.count("{") == 2 and command.count("}") == 2 and command.count("(") == 1
    assert command.endswith("}user/100@pbx.test &bridge({origination_caller_id_number=+74999999999,"
                            "origination_caller_id_name=+74999999999}sofia/gateway/carrier/79121234567)")


@pytest.mark.parametrize("crm_trouble", ["slow", "error", "unknown number"])
def test_given_crm_cannot_name_the_customer_when_make_call_then_the_call_starts_showing_the_number(running,
                                                                                                   crm_trouble):
    fs, crm, port, tmp_path = running
    crm.customers["79121234567"] = customer(7, "Иван", "Петров")
    if crm_trouble == "slow":
        crm.manager_delay = 5.0  # far beyond the lookup's bound: the answer must not wait for it
    elif crm_trouble == "error":
        crm.fail_next(1, status=500)
    else:
        crm.customers.clear()
    start(fs, crm, tmp_path, port)
    answer = call(port, **GOOD)
    assert answer.status_code == 200, answer.text
    assert wait_for(lambda: originates(fs), timeout=5)
    assert manager_leg_name(originates(fs)[0]) == "79121234567"


def test_given_post_form_when_make_call_then_accepted(running):
    fs, crm, port, tmp_path = running
    start(fs, crm, tmp_path, port)
    answer = requests.post("http://127.0.0.1:%d/make-call" % port, data=GOOD, timeout=5)
    assert answer.status_code == 200


@pytest.mark.parametrize("phone", ["123)", "1${system(id)}", "1 2", "1|2", "1,2", "{1}", "1\u0661\u0662\u0663",
                                   "7912" * 2500, "", "+", "12", "79121234567&bridge(x)", "1%0A2", "1\n2",
                                   "1'2", "1;2", "sofia/gateway/x/1"])
def test_given_injection_attempt_in_phone_when_make_call_then_400_and_nothing_reaches_freeswitch(running, phone):
    fs, crm, port, tmp_path = running
    start(fs, crm, tmp_path, port)
    before = list(fs.commands)
    answer = call(port, **dict(GOOD, phone=phone))
    # A 10 kB query is refused by the HTTP server itself (414) before the app sees it.
    assert answer.status_code in (400, 414)
    assert "Traceback" not in answer.text
    assert [c for c in fs.commands if c not in before and not c[1].startswith(("auth", "event", "api show"))] == []


@pytest.mark.parametrize("params,status", [
    (dict(GOOD, clientId="client-2"), 403),
    ({k: v for k, v in GOOD.items() if k != "clientId"}, 403),
    (dict(GOOD, code="999"), 400),
    (dict(GOOD, code="100;hangup"), 400),
    (dict(GOOD, userId="2"), 400),
    (dict(GOOD, userId="x1"), 400),
    (dict(GOOD, code="300", userId="3"), 409),
])
def test_given_bad_caller_or_manager_when_make_call_then_refused_without_originate(running, params, status):
    fs, crm, port, tmp_path = running
    start(fs, crm, tmp_path, port)
    answer = call(port, **params)
    assert answer.status_code == status, answer.text
    assert originates(fs) == []


def test_given_freeswitch_down_when_make_call_then_503_fast(running):
    fs, crm, port, tmp_path = running
    start(fs, crm, tmp_path, port)
    fs.stop()
    answer = call(port, **GOOD)
    assert answer.status_code == 503 and "FreeSWITCH unavailable" in answer.text


def test_given_status_change_when_received_then_remembered_across_restart_and_pushed(running):
    fs, crm, port, tmp_path = running
    svc = start(fs, crm, tmp_path, port, status_push="hash")
    url = "http://127.0.0.1:%d/change-status" % port
    answer = requests.get(url, params={"clientId": "client-1", "userId": "2", "code": "200", "status": "break"},
                          timeout=5)
    assert answer.status_code == 200
    assert wait_for(lambda: any(cmd == "api hash insert/fs_crm_status/200@pbx.test/break" for _, cmd in fs.commands))
    assert svc.statuses.is_away("shop", "200")

    svc.stop()
    started.remove(svc)
    outbox = Outbox(tmp_path / "state" / "outbox.sqlite3")
    try:
        assert UserStatuses(outbox, {}, None).status_of("shop", "200") == "break"
    finally:
        outbox.close()


@pytest.mark.parametrize("params", [
    {"clientId": "client-1", "userId": "2", "code": "200", "status": "vacation"},
    {"clientId": "client-1", "userId": "9", "code": "900", "status": "free"},
    {"clientId": "client-1", "userId": "1", "code": "200", "status": "free"},
])
def test_given_unknown_status_or_user_when_change_status_then_400(running, params):
    fs, crm, port, tmp_path = running
    start(fs, crm, tmp_path, port)
    answer = requests.get("http://127.0.0.1:%d/change-status" % port, params=params, timeout=5)
    assert answer.status_code == 400


def test_given_callcenter_push_when_status_changes_then_agent_status_set(running):
    fs, crm, port, tmp_path = running
    fs.api_handlers["callcenter_config"] = lambda args: "+OK"
    start(fs, crm, tmp_path, port, status_push="callcenter")
    for status, expected in (("dinner", "'On Break'"), ("free", "'Available'")):
        requests.get("http://127.0.0.1:%d/change-status" % port,
                     params={"clientId": "client-1", "userId": "1", "status": status}, timeout=5)
        assert wait_for(lambda e=expected: any(cmd == "api callcenter_config agent set status 100@pbx.test %s" % e
                                                 for _, cmd in fs.commands))


def test_given_registered_module_when_crm_fetches_logo_and_account_page_then_served(running):
    fs, crm, port, tmp_path = running
    start(fs, crm, tmp_path, port)
    logo = requests.get("http://127.0.0.1:%d/logo.svg" % port, timeout=5)
    assert logo.status_code == 200 and logo.headers["Content-Type"] == "image/svg+xml"
    assert logo.text.startswith("<svg")
    page = requests.get("http://127.0.0.1:%d/" % port, timeout=5)
    assert page.status_code == 200 and "fs-crm" in page.text


def test_given_incoming_call_when_freeswitch_hands_it_to_the_service_router_then_responsible_manager_rings(running):
    fs, crm, port, tmp_path = running
    svc = start(fs, crm, tmp_path, port, fallback="sales")
    crm.managers["79121234567"] = {"id": 1, "firstName": "Ivan", "code": "100"}
    reply = load_connect_reply(capture_path("in_socket_route.outbound_socket.txt"))
    call = fs.outbound_connect("127.0.0.1", svc.routing.port, reply)
    # The fallback is queued right after the bridge (event-lock keeps it for when the manager does not
    # answer), so wait for both rather than read the list between the two sendmsg frames.
    assert wait_for(lambda: ("transfer", "sales XML default") in call.executed, timeout=5), call.executed
    assert call.executed[0] == ("ring_ready", "")
    assert call.executed.index(("bridge", "user/100@pbx.test")) < call.executed.index(("transfer", "sales XML default"))
    call.hangup()


def test_given_ignore_status_when_managers_phone_is_on_a_call_then_fallback_and_once_it_ends_he_rings(running):
    """The service's own view of the calls in progress (the event socket) says whether the manager's
    phone is free; the CRM names him whatever his CRM status."""
    fs, crm, port, tmp_path = running
    svc = start(fs, crm, tmp_path, port, fallback="sales", ignore_status=True)
    crm.managers["79121234567"] = {"id": 1, "firstName": "Ivan", "code": "100"}
    crm.user_statuses[1] = "busy"  # on the phone, as the CRM sees it
    reply = load_connect_reply(capture_path("in_socket_route.outbound_socket.txt"))
    talking = fresh_call("out_answered", "ignore-status-busy")  # 100 dials a customer and talks
    hangup_at = next(i for i, body in enumerate(talking) if body.startswith(b"Event-Name: CHANNEL_HANGUP\n"))
    fs.play(talking[:hangup_at])
    assert wait_for(lambda: svc.tracker.extension_on_call("100", "pbx.test"), timeout=5)

    busy = fs.outbound_connect("127.0.0.1", svc.routing.port, reply)
    assert wait_for(lambda: ("transfer", "sales XML default") in busy.executed, timeout=5), busy.executed
    assert not any(app == "bridge" for app, _ in busy.executed)
    # Counted once the apps are sent, so it may lag the transfer by a moment.
    assert wait_for(lambda: svc.router.reasons["manager's phone on a call"] == 1, timeout=5), svc.router.reasons
    busy.hangup()

    fs.play(talking[hangup_at:])
    assert wait_for(lambda: not svc.tracker.extension_on_call("100", "pbx.test"), timeout=5)
    free = fs.outbound_connect("127.0.0.1", svc.routing.port, renumber_call([reply], seed="second")[0])
    assert wait_for(lambda: ("transfer", "sales XML default") in free.executed, timeout=5), free.executed
    assert ("bridge", "user/100@pbx.test") in free.executed
    assert all(r.query.get("ignoreStatus") == "1" for r in crm.requests if r.path == MANAGER_PATH)
    free.hangup()


def test_given_routing_port_in_use_when_run_then_clear_error_and_exit_1(fakes, tmp_path):
    fs, crm = fakes
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        table = config_table(fs, crm, tmp_path / "state")
        table["routing"]["listen"] = "127.0.0.1:%d" % busy.getsockname()[1]
        path = tmp_path / "fs-crm.toml"
        path.write_text(to_toml(table))
        env = {**os.environ, "FS_CRM_ACCOUNT_SHOP_API_KEY": "e2e-key"}
        result = subprocess.run([sys.executable, "-m", "fs_crm", "run", "-c", str(path)], capture_output=True,
                                text=True, env=env, timeout=30)
    assert result.returncode == 1
    assert "[routing] listen" in result.stderr and "cannot listen" in result.stderr


def test_given_click_to_call_when_both_answer_then_crm_shows_one_outgoing_call_of_the_manager(running):
    fs, crm, port, tmp_path = running
    start(fs, crm, tmp_path, port)
    recorded = fresh_call("click_to_call", "c2c-e2e")
    recorded_first_leg = first_leg(recorded)

    def originate(command: str) -> str:
        # FreeSWITCH rings the manager, then the customer: play the recorded call, its first leg
        # being the one our originate named.
        ours = command.split("origination_uuid=", 1)[1][:36]
        fs.play([body.replace(recorded_first_leg.encode(), ours.encode()) for body in recorded])
        return "+OK %s\n" % ours

    fs.bgapi_handler = originate
    answer = call(port, **GOOD)
    assert answer.status_code == 200
    call_uuid = answer.text.split()[1]

    assert crm.wait_for(lambda: len(crm.calls) == 1, timeout=10)
    record = crm.calls[0]
    assert (record["externalId"], record["type"], record["code"], record["userId"], record["result"]) == (
        call_uuid, "out", "100", 1, "answered")
    assert crm.wait_for(lambda: len(crm.events) == 2, timeout=5)
    assert [(e["type"], e["codes"]) for e in crm.events] == [("out", ["100"]), ("hangup", ["100"])]

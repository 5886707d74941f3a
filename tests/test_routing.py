"""Routing of incoming calls through real sockets: the fake FreeSWITCH hands calls to the outbound-socket
server as the dialplan's `socket ... async full` would, the router asks the fake CRM over HTTP and checks
registration over the inbound ESL command connection."""

import logging
import re
from dataclasses import dataclass

import gevent
import gevent.event
import pytest
from e2e import config_table

from fs_crm.config import RoutingConfig, parse_config
from fs_crm.crm.client import MANAGER_PATH, CrmClient
from fs_crm.freeswitch.commands import FreeswitchCommands
from fs_crm.freeswitch.outbound import OutboundServer, SessionGone
from fs_crm.freeswitch.routing import DIALPLAN, FALLBACK, HUNG_UP, MANAGER, CallRouter
from fs_crm.sim import wait_for
from fs_crm.sim.fake_crm import customer
from fs_crm.sim.fake_freeswitch import capture_path, load_connect_reply, renumber_call, url_encode
from fs_crm.store.outbox import Outbox
from fs_crm.web.statuses import UserStatuses

CAPTURE = capture_path("in_socket_route.outbound_socket.txt")
CHANNEL = load_connect_reply(CAPTURE)
CUSTOMER = "79121234567"          # the caller in the capture
DIALLED = "74997777777"           # the company number the capture's call was made to
DEADLINE = 0.3                    # [routing] manager_timeout in these tests
LOOPBACK = RoutingConfig(listen_host="127.0.0.1", listen_port=0)
IVAN = {"id": 1, "firstName": "Ivan", "lastName": "Petrov", "code": "100"}

RING = ("ring_ready", "")
TO_FALLBACK = ("transfer", "sales XML default")
TO_IVAN = [("set", "hangup_after_bridge=true"), ("set", "continue_on_fail=true"),
           ("export", "crm_routed_to=100"), ("bridge", "user/100@pbx.test")]


def channel_data(caller: str | None = None, seed: int | None = None) -> bytes:
    """The recorded connect reply, with another caller id and/or another set of UUIDs."""
    data = CHANNEL if seed is None else renumber_call([CHANNEL], seed=seed)[0]
    if caller is not None:
        data = re.sub(rb"(?m)^Caller-Caller-ID-Number: .*$", b"Caller-Caller-ID-Number: " + url_encode(caller).encode(),
                      data)
    return data


@dataclass
class Routing:
    fs: object
    crm: object
    router: CallRouter
    server: OutboundServer
    statuses: UserStatuses
    registered: set

    def call(self, data: bytes = CHANNEL):
        return self.fs.outbound_connect("127.0.0.1", self.server.port, data)

    def decided(self, count: int = 1) -> bool:
        return wait_for(lambda: sum(self.router.decisions.values()) >= count, timeout=5)

    def manager_requests(self) -> list:
        return [r for r in self.crm.requests if r.path == MANAGER_PATH]


@pytest.fixture
def make_routing(fakes, tmp_path):
    """Build the router and its server; keyword args change the first account, `accounts` adds more."""
    fs, crm = fakes
    built = []

    def make(accounts=(), max_sessions=1000, manager_timeout=DEADLINE, on_call=None, **account) -> Routing:
        registered = {"100", "200"}

        def sofia_contact(args: str) -> str:
            user = args.split("/", 1)[-1].split("@", 1)[0]
            return "sofia/internal/sip:%s@1.2.3.4" % user if user in registered else "error/user_not_registered"

        fs.api_handlers["sofia_contact"] = sofia_contact
        table = config_table(fs, crm, tmp_path / "state")
        table["accounts"][0].update({"fallback": "sales", **account})
        if table["accounts"][0]["fallback"] is None:
            del table["accounts"][0]["fallback"]
        table["accounts"].extend(accounts)
        table["routing"] = {"listen": "127.0.0.1:0", "manager_timeout": manager_timeout}
        config = parse_config("<test>", table, env={})
        clients = {a.name: CrmClient(a, config.delivery) for a in config.accounts}
        commands = FreeswitchCommands(config.freeswitch)
        outbox = Outbox(tmp_path / "outbox.sqlite3")
        statuses = UserStatuses(outbox, {a.name: a for a in config.accounts}, commands)
        router = CallRouter(config.accounts, clients, statuses, commands, config.routing, on_call=on_call)
        server = OutboundServer(config.routing, router.handle, max_sessions=max_sessions, command_timeout=2.0)
        server.start()
        built.append((server, commands, outbox, clients))
        return Routing(fs, crm, router, server, statuses, registered)

    yield make
    for server, commands, outbox, clients in built:
        server.stop(timeout=1.0)
        commands.close()
        outbox.close()
        for client in clients.values():
            client.close()


@pytest.fixture
def routing(make_routing):
    return make_routing()


# --- decisions -----------------------------------------------------------------------------------

def test_given_free_registered_manager_when_call_then_ringback_first_then_bridge_then_fallback_queued(routing):
    routing.crm.managers[CUSTOMER] = IVAN

    call = routing.call()

    assert routing.decided()
    assert call.executed == [RING, *TO_IVAN, TO_FALLBACK]
    assert call.commands[:4] == ["connect", "sendmsg", "myevents plain", "linger 5"]
    assert [r.query["phone"] for r in routing.manager_requests()] == [CUSTOMER]
    assert any(cmd == "api sofia_contact */100@pbx.test" for _, cmd in routing.fs.commands)
    assert routing.router.decisions == {MANAGER: 1}
    assert routing.router.decision_times[-1] < DEADLINE


def test_given_manager_rung_when_fallback_queued_then_bridge_not_cut_short_and_fallback_runs_after_no_answer(routing):
    routing.crm.managers[CUSTOMER] = IVAN
    call = routing.call()
    assert routing.decided()
    assert call.executed == [RING, *TO_IVAN, TO_FALLBACK]

    # FreeSWITCH runs a queued application at once unless the running one is event-locked: the
    # manager's phone must keep ringing, with the transfer waiting behind the bridge.
    assert call.running is not None and (call.running.name, call.running.arg) == TO_IVAN[-1]
    assert [(a.name, a.arg) for a in call.queued] == [TO_FALLBACK]
    assert [a.ended for a in call.finished] == ["done"] * 4  # ring_ready, set, set, export
    assert call.messages[-2] == [("call-command", "execute"), ("execute-app-name", "bridge"),
                                 ("execute-app-arg", "user/100@pbx.test"), ("event-lock", "true")]
    assert call.messages[0] == [("call-command", "execute"), ("execute-app-name", "ring_ready"),
                                ("event-lock", "true")]
    assert all(("event-lock", "true") in headers for headers in call.messages)

    call.finish_app(originate_disposition="NO_ANSWER")  # call_timeout passed

    assert [(a.name, a.arg, a.ended) for a in call.finished] == [(*app, "done") for app in [RING, *TO_IVAN, TO_FALLBACK]]
    assert not call.channel_down


def test_given_manager_answers_when_talk_is_over_then_fallback_never_runs(routing):
    routing.crm.managers[CUSTOMER] = IVAN
    call = routing.call()
    assert routing.decided()

    call.finish_app(originate_disposition="SUCCESS")

    assert call.channel_down  # hangup_after_bridge
    assert [(a.name, a.arg) for a in call.finished] == [RING, *TO_IVAN]
    call.hangup()
    assert wait_for(lambda: routing.server.active_sessions == 0, timeout=5)


def test_given_routed_call_when_caller_hangs_up_then_session_held_until_freeswitch_closes(routing):
    routing.crm.managers[CUSTOMER] = IVAN
    call = routing.call()
    assert routing.decided()

    # The session stays open while the queued bridge runs: FreeSWITCH closes it after the hangup.
    assert routing.server.active_sessions == 1 and not call.closed
    call.hangup()

    assert wait_for(lambda: routing.server.active_sessions == 0, timeout=5)


def test_given_no_responsible_manager_when_call_then_fallback(routing):
    call = routing.call()

    assert routing.decided()
    assert call.executed == [RING, TO_FALLBACK]
    assert routing.router.reasons == {"no free responsible manager": 1}


def test_given_slow_crm_when_call_then_fallback_at_the_deadline(routing):
    routing.crm.managers[CUSTOMER] = IVAN
    routing.crm.manager_delay = 0.8

    call = routing.call()

    assert routing.decided()
    assert call.executed == [RING, TO_FALLBACK]
    assert routing.router.reasons == {"CRM too slow": 1}
    assert DEADLINE - 0.02 <= routing.router.decision_times[-1] <= DEADLINE + 0.3


def test_given_crm_error_when_call_then_fallback(routing, caplog):
    routing.crm.managers[CUSTOMER] = IVAN
    routing.crm.fail_next(1, status=500)

    call = routing.call()

    assert routing.decided()
    assert call.executed == [RING, TO_FALLBACK]
    assert routing.router.reasons == {"CRM failed": 1}
    assert any(r.levelno == logging.WARNING and call.uuid in r.getMessage() for r in caplog.records)


def test_given_manager_on_break_when_call_then_fallback_without_ringing_them(routing):
    routing.crm.managers[CUSTOMER] = IVAN
    routing.statuses.record("shop", "100", 1, "break")

    call = routing.call()

    assert routing.decided()
    assert call.executed == [RING, TO_FALLBACK]
    assert routing.router.reasons == {"manager away (break)": 1}


def test_given_manager_not_registered_when_call_then_fallback(routing):
    routing.crm.managers[CUSTOMER] = IVAN
    routing.registered.discard("100")

    call = routing.call()

    assert routing.decided()
    assert call.executed == [RING, TO_FALLBACK]
    assert routing.router.reasons == {"manager's phone not registered": 1}


def test_given_registration_unknown_when_call_then_manager_rung_anyway(routing):
    routing.crm.managers[CUSTOMER] = IVAN
    routing.fs.api_handlers["sofia_contact"] = lambda args: "-ERR no reply\n"

    call = routing.call()

    assert routing.decided()
    assert call.executed == [RING, *TO_IVAN, TO_FALLBACK]


def test_given_manager_extension_not_in_account_map_when_call_then_fallback(routing):
    routing.crm.managers[CUSTOMER] = {**IVAN, "code": "100${system(id)}"}

    call = routing.call()

    assert routing.decided()
    assert call.executed == [RING, TO_FALLBACK]


@pytest.mark.parametrize("caller", ["89121234567", "+79121234567", "9121234567", "79121234567"])
def test_given_caller_id_in_national_spelling_when_call_then_crm_asked_in_canonical_form(routing, caller):
    routing.crm.managers[CUSTOMER] = IVAN  # the fake CRM knows the customer only as 79121234567

    call = routing.call(channel_data(caller=caller))

    assert routing.decided()
    assert [r.query["phone"] for r in routing.manager_requests()] == [CUSTOMER]
    assert call.executed == [RING, *TO_IVAN, TO_FALLBACK]


@pytest.mark.parametrize("country,caller,asked", [("DE", "015112345678", "4915112345678"),
                                                  ("DE", "79121234567", "79121234567"),
                                                  ("RU", "100", "100"), ("RU", "1234567", "1234567")])
def test_given_account_country_when_call_then_crm_asked_for_that_countrys_reading(make_routing, country, caller,
                                                                                   asked):
    routing = make_routing(country=country)

    routing.call(channel_data(caller=caller))

    assert routing.decided()
    assert [r.query["phone"] for r in routing.manager_requests()] == [asked]


@pytest.mark.parametrize("caller", ["anonymous", "${system(touch /tmp/x)}", "+7 912 123", "12", ""])
def test_given_caller_id_not_a_number_when_call_then_fallback_without_asking_crm(routing, caller):
    routing.crm.managers[caller] = IVAN

    call = routing.call(channel_data(caller=caller))

    assert routing.decided()
    assert call.executed == [RING, TO_FALLBACK]
    assert routing.manager_requests() == []


def test_given_caller_hangs_up_during_lookup_when_crm_answers_then_nothing_queued_and_session_gone(routing, caplog):
    routing.crm.managers[CUSTOMER] = IVAN
    routing.crm.manager_delay = 0.2
    call = routing.call()
    assert wait_for(lambda: routing.manager_requests(), timeout=5)

    call.hangup()

    assert wait_for(lambda: routing.router.decisions[HUNG_UP] == 1, timeout=5)
    assert wait_for(lambda: routing.server.active_sessions == 0, timeout=5)
    assert call.executed == [RING]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_given_twenty_concurrent_calls_when_routed_then_each_bridged_to_the_manager(make_routing):
    # Concurrency is what is tested here, not the deadline: 20 lookups at once on a busy 2-core
    # machine (the whole suite) took longer than the 0.3 s of the other tests.
    routing = make_routing(manager_timeout=2.0)
    routing.crm.managers[CUSTOMER] = IVAN
    routing.crm.manager_delay = 0.05  # overlap the lookups

    calls = [routing.call(channel_data(seed=n)) for n in range(20)]

    assert routing.decided(20)
    assert len({c.uuid for c in calls}) == 20
    for call in calls:
        assert call.executed == [RING, *TO_IVAN, TO_FALLBACK]
    assert routing.router.decisions == {MANAGER: 20}
    assert routing.server.active_sessions == 20
    for call in calls:
        call.hangup()
    assert wait_for(lambda: routing.server.active_sessions == 0, timeout=5)


# --- the customer's name on the manager's phone -----------------------------------------------------

def bridge_showing(name: str) -> tuple[str, str]:
    return ("bridge", "{origination_caller_id_name='%s'}user/100@pbx.test" % name)


def test_given_crm_knows_the_customer_when_routed_then_the_bridge_shows_his_name_on_the_managers_phone(routing):
    routing.crm.managers[CUSTOMER] = IVAN
    routing.crm.customers[CUSTOMER] = customer(7, "Иван", "Петров", phones=[CUSTOMER], patronymic="Сергеевич")

    call = routing.call()

    assert routing.decided()
    assert call.executed == [RING, *TO_IVAN[:-1], bridge_showing("Иван Петров"), TO_FALLBACK]
    # Only the bridged leg gets the name: nothing is set on the caller's leg, whose variables the
    # fallback's phones would inherit.
    assert not any(app == "set" and "caller_id" in arg for app, arg in call.executed)
    # The sendmsg header as FreeSWITCH reads it: raw UTF-8 after "execute-app-arg: ".
    assert ("execute-app-arg", "{origination_caller_id_name='Иван Петров'}user/100@pbx.test") in call.messages[-2]
    assert [r.query.get("details") for r in routing.manager_requests()] == ["1"]


# The CRM's first and last names as a hostile or careless CRM user may have typed them, and what
# the manager's phone is allowed to get (fs_crm.freeswitch.callerid's rule).
HOSTILE_NAMES = [
    (("Ann", "O'Brien"), "Ann O\u2019Brien"),
    (("Ivan, 100", "}user/200@pbx.test,{x=y"), "Ivan 100 user200pbx.testxy"),
    (("^^:origination_uuid=x", "Lee"), "originationuuidx Lee"),
    (("Ivan\ncall-command: hangup", "Petrov"), "Ivan call-command hangup Petrov"),
    (("${system(touch /tmp/pwned)}", "Petrov"), "systemtouch tmppwned Petrov"),
    (("Zoe", "\"Boss\" 'x' %0D%0AVia: evil"), "Zoe Boss \u2019x\u2019 0D0AVia evil"),
    (("Иван", "Петров)&bridge(sofia/gateway/carrier/88005553535)"), "Иван Петровbridgesofiagatewaycarrier8800"),
    (("مريم", "\u202eevil\u200b"), "مريم evil"),
    (("  Jean-Luc ", "\tPicard  "), "Jean-Luc Picard"),
]


@pytest.mark.parametrize("names,shown", HOSTILE_NAMES)
def test_given_hostile_customer_name_when_routed_then_only_its_safe_part_reaches_freeswitch(routing, names, shown):
    routing.crm.managers[CUSTOMER] = IVAN
    routing.crm.customers[CUSTOMER] = customer(7, *names, phones=[CUSTOMER])

    call = routing.call()

    assert routing.decided()
    assert call.executed == [RING, *TO_IVAN[:-1], bridge_showing(shown), TO_FALLBACK]


@pytest.mark.parametrize("names", [("", ""), ("{}", "$$"), ("\n", "\t")])
def test_given_customer_name_with_nothing_to_show_when_routed_then_the_phone_shows_the_callers_number(routing,
                                                                                                     names):
    routing.crm.managers[CUSTOMER] = IVAN
    routing.crm.customers[CUSTOMER] = customer(7, *names, phones=[CUSTOMER])

    call = routing.call()

    assert routing.decided()
    assert call.executed == [RING, *TO_IVAN, TO_FALLBACK]


# --- ignore_status: the manager's phone, not his CRM status ----------------------------------------

@pytest.mark.parametrize("crm_status", ["busy", "dinner", "break", "offline"])
def test_given_ignore_status_when_manager_not_free_in_crm_but_phone_free_then_he_rings(make_routing, crm_status):
    routing = make_routing(ignore_status=True, on_call=lambda extension, domain: False)
    routing.crm.managers[CUSTOMER] = IVAN
    routing.crm.user_statuses[1] = crm_status  # the CRM names him only when asked to ignore it
    routing.statuses.record("shop", "100", 1, crm_status if crm_status != "offline" else "break")

    call = routing.call()

    assert routing.decided()
    assert call.executed == [RING, *TO_IVAN, TO_FALLBACK]
    assert [(r.query["phone"], r.query.get("ignoreStatus")) for r in routing.manager_requests()] == [(CUSTOMER, "1")]


def test_given_no_ignore_status_when_manager_not_free_in_crm_then_fallback_and_crm_asked_plainly(routing):
    routing.crm.managers[CUSTOMER] = IVAN
    routing.crm.user_statuses[1] = "dinner"

    call = routing.call()

    assert routing.decided()
    assert call.executed == [RING, TO_FALLBACK]
    assert routing.router.reasons == {"no free responsible manager": 1}
    assert "ignoreStatus" not in routing.manager_requests()[0].query


def test_given_ignore_status_when_managers_phone_on_a_call_then_fallback(make_routing):
    asked = []
    routing = make_routing(ignore_status=True, on_call=lambda extension, domain: asked.append((extension, domain))
                           or True)
    routing.crm.managers[CUSTOMER] = IVAN

    call = routing.call()

    assert routing.decided()
    assert call.executed == [RING, TO_FALLBACK]
    assert routing.router.reasons == {"manager's phone on a call": 1}
    assert asked == [("100", "pbx.test")]


def test_given_ignore_status_when_managers_phone_not_registered_then_fallback(make_routing):
    routing = make_routing(ignore_status=True, on_call=lambda extension, domain: False)
    routing.crm.managers[CUSTOMER] = IVAN
    routing.crm.user_statuses[1] = "break"
    routing.registered.discard("100")

    call = routing.call()

    assert routing.decided()
    assert call.executed == [RING, TO_FALLBACK]
    assert routing.router.reasons == {"manager's phone not registered": 1}


def test_given_ignore_status_when_cannot_tell_whether_phone_on_a_call_then_he_rings(make_routing, caplog):
    routing = make_routing(ignore_status=True, on_call=lambda extension, domain: None)
    routing.crm.managers[CUSTOMER] = IVAN

    call = routing.call()

    assert routing.decided()
    assert call.executed == [RING, *TO_IVAN, TO_FALLBACK]
    assert any("cannot tell whether extension 100 is on a call" in r.getMessage() for r in caplog.records)


def test_given_ignore_status_when_crm_names_nobody_then_fallback(make_routing):
    routing = make_routing(ignore_status=True, on_call=lambda extension, domain: False)

    call = routing.call()

    assert routing.decided()
    assert call.executed == [RING, TO_FALLBACK]
    assert routing.router.reasons == {"no responsible manager": 1}


# --- without a fallback: the dialplan after `socket` is the fallback ------------------------------

def test_given_no_fallback_and_no_manager_when_call_then_resume_into_the_dialplan(make_routing):
    routing = make_routing(fallback=None)

    call = routing.call()

    assert routing.decided()
    assert call.executed == [RING]
    assert call.wait_for(lambda: call.closed, timeout=5)
    assert call.commands[-1] == "resume"
    assert routing.router.decisions == {FALLBACK: 1}


def test_given_no_fallback_when_bridge_fails_then_resume_into_the_dialplan(make_routing):
    routing = make_routing(fallback=None)
    routing.crm.managers[CUSTOMER] = IVAN
    call = routing.call()
    assert routing.decided()
    assert call.executed == [RING, *TO_IVAN]

    call.send_event(routing.fs.make_event("CHANNEL_EXECUTE_COMPLETE", [
        ("Unique-ID", call.uuid), ("Answer-State", "early"), ("Application", "bridge"),
        ("Application-Data", "user/100@pbx.test"), ("variable_originate_disposition", "USER_BUSY")]))

    assert call.wait_for(lambda: call.closed, timeout=5)
    assert call.commands[-1] == "resume"


def test_given_no_fallback_when_manager_answers_then_session_left_to_freeswitch(make_routing):
    routing = make_routing(fallback=None)
    routing.crm.managers[CUSTOMER] = IVAN
    call = routing.call()
    assert routing.decided()

    call.send_event(routing.fs.make_event("CHANNEL_EXECUTE_COMPLETE", [
        ("Unique-ID", call.uuid), ("Answer-State", "hangup"), ("Application", "bridge"),
        ("variable_originate_disposition", "SUCCESS")]))
    call.hangup()

    assert wait_for(lambda: routing.server.active_sessions == 0, timeout=5)
    assert "resume" not in call.commands


def test_given_socket_without_async_when_call_then_dialplan_without_crm(routing):
    call = routing.fs.outbound_connect("127.0.0.1", routing.server.port, CHANNEL, async_mode=False)

    assert routing.decided()
    assert call.wait_for(lambda: call.closed, timeout=5)
    assert call.executed == [RING]
    assert call.commands[-1] == "resume"
    assert routing.manager_requests() == []


# --- accounts ------------------------------------------------------------------------------------

SECOND = {"name": "outlet", "crm_url": None, "api_key": "e2e-key", "client_id": "client-2", "domain": "outlet.test",
          "timezone": "UTC", "extensions": {"7": "700"}, "external_phones": {"outlet1": "+" + DIALLED},
          "fallback": "outlet_queue", "context": "outlet"}


def test_given_two_accounts_when_call_to_second_ones_number_then_its_fallback(make_routing, fakes):
    routing = make_routing(accounts=[{**SECOND, "crm_url": fakes[1].url}])

    call = routing.call()

    assert routing.decided()
    assert call.executed == [RING, ("transfer", "outlet_queue XML outlet")]


def test_given_two_accounts_when_dialled_number_of_neither_then_dialplan_without_crm(make_routing, fakes):
    second = {**SECOND, "crm_url": fakes[1].url, "external_phones": {"outlet1": "+74995555555"}}
    routing = make_routing(accounts=[second])

    call = routing.call()

    assert routing.decided()
    assert call.executed == [RING]
    assert call.wait_for(lambda: call.closed, timeout=5)
    assert call.commands[-1] == "resume"
    assert routing.router.decisions == {DIALPLAN: 1}
    assert routing.manager_requests() == []


# --- the server ----------------------------------------------------------------------------------

def test_given_too_many_sessions_when_call_arrives_then_connected_and_resumed_at_once(make_routing):
    routing = make_routing(max_sessions=1)
    routing.crm.managers[CUSTOMER] = IVAN
    first = routing.call()
    assert routing.decided()

    second = routing.call(channel_data(seed=2))

    assert second.wait_for(lambda: second.closed, timeout=5)
    assert second.commands == ["connect", "resume"]
    assert routing.server.sessions_shed == 1
    assert not first.closed


def test_given_stop_when_sessions_open_then_all_released(routing):
    routing.crm.managers[CUSTOMER] = IVAN
    call = routing.call()
    assert routing.decided()

    routing.server.stop(timeout=1.0)

    assert call.wait_for(lambda: call.closed, timeout=5)
    assert "resume" not in call.commands  # decided: the queued bridge keeps the call


def test_given_stop_during_lookup_when_decision_late_then_call_resumed_into_the_dialplan(routing):
    routing.crm.managers[CUSTOMER] = IVAN
    routing.crm.manager_delay = 0.8
    call = routing.call()
    assert wait_for(lambda: routing.manager_requests(), timeout=5)

    routing.server.stop(timeout=0.05)

    assert call.wait_for(lambda: call.closed, timeout=5)
    assert call.commands[-1] == "resume"
    assert call.executed == [RING]


@pytest.mark.parametrize("how", ["close", "disconnect"])
def test_given_freeswitch_goes_away_when_command_pending_then_session_gone(fakes, how):
    fs, _ = fakes
    connected = gevent.event.Event()
    outcome = gevent.event.AsyncResult()

    def handler(session):
        channel = session.connect()
        outcome_channel.update(channel)
        connected.set()
        try:
            session.myevents(timeout=5)
        except SessionGone as exc:
            outcome.set(exc)

    outcome_channel: dict = {}
    server = OutboundServer(LOOPBACK, handler)
    server.start()
    try:
        call = fs.outbound_connect("127.0.0.1", server.port, CHANNEL)
        assert connected.wait(5)
        fs.mute_replies = True
        assert call.wait_for(lambda: "myevents plain" in call.commands, timeout=5)
        getattr(call, how)()

        assert isinstance(outcome.get(timeout=2), SessionGone)
        assert wait_for(lambda: server.active_sessions == 0, timeout=5)
    finally:
        fs.mute_replies = False
        server.stop(timeout=1.0)
    # The connect reply's values are decoded one by one.
    assert outcome_channel["Caller-Caller-ID-Name"] == "Customer 79121234567"
    assert outcome_channel["Reply-Text"] == "+OK\n"
    assert outcome_channel["Unique-ID"] == "fcb02919-a34c-4ee3-a4af-eaea63065aec"
    assert outcome_channel["Socket-Mode"] == "async"


def test_given_line_break_in_app_arg_when_execute_then_refused_before_sending(fakes):
    fs, _ = fakes
    errors = gevent.event.AsyncResult()

    def handler(session):
        session.connect()
        try:
            session.execute("playback", "x\ncall-command: hangup")
        except ValueError as exc:
            errors.set(exc)

    server = OutboundServer(LOOPBACK, handler)
    server.start()
    try:
        call = fs.outbound_connect("127.0.0.1", server.port, CHANNEL)
        assert isinstance(errors.get(timeout=5), ValueError)
        assert call.wait_for(lambda: call.closed, timeout=5)
        assert call.executed == []
        assert call.commands == ["connect", "resume"]  # no decision: back to the dialplan
    finally:
        server.stop(timeout=1.0)

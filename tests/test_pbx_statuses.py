"""Statuses set on the PBX go to the CRM user (POST /api/v5/users/{id}/status), without echo loops:
which events say what (tables of events as FreeSWITCH serializes them), then the service between
the fake FreeSWITCH (a dialplan's fs_crm::status event; mod_callcenter's agent-status-change, fired
for every `callcenter_config agent set status` as the real module does) and the fake CRM (which can
call changeUserStatusUrl back after a change, as it does for changes made in its UI)."""

import contextlib
from pathlib import Path

import pytest
import requests
from e2e import config_table

from fs_crm import vocab
from fs_crm.config import ConfigError, parse_config
from fs_crm.crm.pbx_statuses import PbxStatus, StatusEvents, custom_events
from fs_crm.freeswitch.eslparse import parse_event_plain
from fs_crm.polling import wait_for
from fs_crm.service import Service
from fs_crm.sim import free_port
from fs_crm.sim.fake_freeswitch import FakeFreeswitch, load_capture
from fs_crm.web.statuses import status_of_agent

ACCOUNT = {"name": "shop", "crm_url": "https://shop.retailcrm.ru", "api_key": "k", "client_id": "c",
           "domain": "pbx.test", "extensions": {"1": "100", "2": "200"}, "status_from_pbx": True}
OTHER = {"name": "other", "crm_url": "https://other.retailcrm.ru", "api_key": "k2", "client_id": "c2",
         "domain": "other.test", "extensions": {"7": "100"}, "status_from_pbx": True,
         "status_push": "callcenter", "callcenter_agent": "agent-{extension}"}
MAKER = FakeFreeswitch()  # only for make_event: FreeSWITCH's standard headers, serialized as it does


def accounts(*tables):
    return parse_config("c.toml", {"accounts": list(tables)}, env={}).accounts


def feature_code(status="busy", extension="100", domain="pbx.test", **more):
    """What conf/freeswitch/dnd.xml's `event` application fires: its headers, then the channel's."""
    headers = [(vocab.H_CRM_EXTENSION, extension), (vocab.H_CRM_DOMAIN, domain), (vocab.H_CRM_STATUS, status),
               ("Unique-ID", "0d4c7c1e-7b38-4a55-9a0e-5a1c0c2e9f10"), ("variable_user_name", extension),
               ("variable_domain_name", domain)]
    headers += list(more.items())
    return MAKER.make_event("CUSTOM", headers, subclass=vocab.FS_CRM_STATUS)


def agent_change(agent="100@pbx.test", status="On Break", action=vocab.CC_AGENT_STATUS_CHANGE):
    return MAKER.make_event("CUSTOM", [(vocab.H_CC_AGENT, agent), (vocab.H_CC_ACTION, action),
                                       (vocab.H_CC_AGENT_STATUS, status)], subclass=vocab.CALLCENTER_INFO)


# --- what the events say ----------------------------------------------------------------------------
SHOP_CC = dict(ACCOUNT, status_push="callcenter")


@pytest.mark.parametrize("tables,body,expected", [
    ((ACCOUNT,), feature_code("busy"), PbxStatus("shop", "100", status="busy")),
    ((ACCOUNT,), feature_code("FREE", extension="200"), PbxStatus("shop", "200", status="free")),
    ((ACCOUNT, OTHER), feature_code("break", domain="other.test"), PbxStatus("other", "100", status="break")),
    ((ACCOUNT,), feature_code("away"), None),  # not a CRM status
    ((ACCOUNT,), feature_code("busy", extension="300"), None),  # not in the extension map
    ((ACCOUNT, OTHER), feature_code("busy", domain="third.test"), None),  # no account has the domain
    ((dict(ACCOUNT, status_from_pbx=False),), feature_code("busy"), None),  # the account did not ask for it
    ((SHOP_CC,), agent_change("100@pbx.test", "On Break"), PbxStatus("shop", "100", agent_status="On Break")),
    ((SHOP_CC,), agent_change("200@PBX.TEST", "Available"), PbxStatus("shop", "200", agent_status="Available")),
    ((ACCOUNT, OTHER), agent_change("agent-100", "Available"), PbxStatus("other", "100", agent_status="Available")),
    ((ACCOUNT,), agent_change("100@pbx.test"), None),  # status_push is not callcenter: not its agents
    ((SHOP_CC,), agent_change("300@pbx.test"), None),
    ((SHOP_CC,), agent_change("100@pbx.test", action="agent-state-change"), None),
    ((SHOP_CC,), MAKER.make_event("CUSTOM", [("CC-Action", "member-queue-start")], subclass="callcenter::info"),
     None),
])
def test_given_pbx_event_when_read_then_status_of_that_extension_or_nothing(tables, body, expected):
    assert StatusEvents(accounts(*tables)).report(parse_event_plain(body)) == expected


REAL = Path(__file__).parent.parent / "fs_crm" / "sim" / "captures" / "status" / "dnd_and_callcenter.esl.txt"


@pytest.mark.parametrize("tables,expected", [
    # *78, *79, then mod_callcenter 'On Break' and 'Available' for agent 100@pbx.test (its README).
    ((dict(ACCOUNT, status_push="callcenter"),),
     [PbxStatus("shop", "100", status="busy"), PbxStatus("shop", "100", status="free"),
      PbxStatus("shop", "100", agent_status="On Break"), PbxStatus("shop", "100", agent_status="Available")]),
    ((ACCOUNT,), [PbxStatus("shop", "100", status="busy"), PbxStatus("shop", "100", status="free"), None, None]),
])
def test_given_real_freeswitch_status_events_when_read_then_each_names_extension_and_status(tables, expected):
    events = StatusEvents(accounts(*tables))
    assert [events.report(parse_event_plain(body)) for body in load_capture(REAL)] == expected


@pytest.mark.parametrize("agent_status,current,expected", [
    ("Available", "break", "free"),
    ("Available (On Demand)", None, "free"),
    ("On Break", "dinner", "dinner"),  # mod_callcenter has no reasons: the CRM's is kept
    ("On Break", "free", "break"),
    ("On Break", None, "break"),
    ("Logged Out", "free", None),  # the CRM has no such status
])
def test_given_agent_status_when_mapped_then_crm_status(agent_status, current, expected):
    assert status_of_agent(agent_status, current) == expected


@pytest.mark.parametrize("tables,expected", [
    ((dict(ACCOUNT, status_from_pbx=False),), ()),  # off by default: the subscription is what it was
    ((ACCOUNT,), ("fs_crm::status",)),
    ((ACCOUNT, OTHER), ("fs_crm::status", "callcenter::info")),
])
def test_given_accounts_when_subscribing_then_custom_events_only_for_those_that_use_them(tables, expected):
    assert custom_events(accounts(*tables)) == expected
    command = vocab.subscribe_command(expected)
    assert command.endswith(" CUSTOM " + " ".join(expected)) if expected else "CUSTOM" not in command


# --- through the service ----------------------------------------------------------------------------
class Callcenter:
    """mod_callcenter's `callcenter_config agent set status <agent> '<status>'`: like the real module
    (cc_agent_update) it fires callcenter::info agent-status-change for every status set, ours too."""

    def __init__(self, fs):
        self.fs = fs
        self.statuses: dict[str, str] = {}
        # Events of our pushes held back (hold()): the event socket is another connection than the
        # command's, so an echo can arrive after fs-crm has moved on to a newer status.
        self.held: list[bytes] | None = None
        fs.api_handlers["callcenter_config"] = self.api

    def api(self, args):
        words = args.split(" ", 4)
        assert words[:3] == ["agent", "set", "status"], args
        agent, status = words[3], words[4].strip("'")
        self.statuses[agent] = status
        event = agent_change(agent, status)
        if self.held is not None:
            self.held.append(event)
        else:
            self.fs.broadcast(event)
        return "+OK\n"

    def hold(self):
        self.held = []

    def release(self):
        for event in self.held or ():
            self.fs.broadcast(event)
        self.held = None

    def set(self, agent, status):
        """An agent's status changed on the PBX itself (his console, a supervisor, the dialplan)."""
        self.statuses[agent] = status
        self.fs.broadcast(agent_change(agent, status))


@contextlib.contextmanager
def running(fs, crm, state_dir, echo=False, delivery=None, **account):
    port = free_port()
    table = config_table(fs, crm, state_dir, http_port=port, **(delivery or {}))
    table["accounts"][0].update(dict({"status_from_pbx": True}, **account))
    svc = Service(parse_config("<e2e>", table, env={}))
    if echo:
        crm.status_callbacks["shop"] = ("http://127.0.0.1:%d/change-status" % port, "client-1",
                                        {1: "100", 2: "200", 3: "300"})
    svc.start()
    try:
        assert fs.wait_subscribed(timeout=10)
        yield svc, port
    finally:
        svc.stop()


def crm_sets(port, user_id, extension, status):
    """The CRM's changeUserStatusUrl callback, as a manager changing his status in the CRM makes it."""
    answer = requests.get("http://127.0.0.1:%d/change-status" % port, timeout=5, params={
        "clientId": "client-1", "userId": str(user_id), "code": extension, "status": status})
    assert answer.status_code == 200, answer.text


def changes(crm):
    return [(c["userId"], c["status"]) for c in crm.status_changes]


def test_given_feature_code_event_when_heard_then_crm_user_gets_status_and_routing_and_flag_follow(
        fakes, state_dir):
    fs, crm = fakes
    inserts = []
    fs.api_handlers["hash"] = lambda args: inserts.append(args) or "+OK\n"
    with running(fs, crm, state_dir, status_push="db") as (svc, _):
        assert any(cmd.startswith("event plain") and cmd.endswith("CUSTOM fs_crm::status") for _, cmd in fs.commands)
        fs.api_handlers["db"] = lambda args: inserts.append(args) or "+OK\n"
        fs.broadcast(feature_code("busy", extension="100"))
        assert crm.wait_for(lambda: changes(crm) == [(1, "busy")], timeout=10)
        assert svc.statuses.status_of("shop", "100") == "busy"
        assert svc.statuses.is_away("shop", "100")  # the router takes him out at once
        # The dialplan set its own hash flag; the account's status_push (db here) gets it too.
        assert wait_for(lambda: "insert/fs_crm_status/100@pbx.test/busy" in inserts, timeout=5)
    request = next(r for r in crm.requests if r.path == "/api/v5/users/1/status")
    assert request.method == "POST" and request.form == {"status": "busy"}
    assert request.headers["X-API-KEY"] == "e2e-key"
    assert crm.user_statuses[1] == "busy"


def test_given_option_off_when_feature_code_event_fired_then_not_subscribed_and_crm_untouched(fakes, state_dir):
    fs, crm = fakes
    with running(fs, crm, state_dir, status_from_pbx=False) as (svc, port):
        assert not any("CUSTOM" in cmd for _, cmd in fs.commands)
        fs.broadcast(feature_code("busy"))
        crm_sets(port, 2, "200", "dinner")  # the CRM to PBX direction works as before
        assert wait_for(lambda: svc.statuses.status_of("shop", "200") == "dinner", timeout=5)
    assert crm.status_changes == [] and svc.statuses.status_of("shop", "100") is None


def test_given_crm_calls_back_after_our_change_when_it_does_then_nothing_bounces(fakes, state_dir):
    fs, crm = fakes
    with running(fs, crm, state_dir, echo=True, status_push="hash") as (svc, _):
        fs.api_handlers["hash"] = lambda args: "+OK\n"
        fs.broadcast(feature_code("busy", extension="100"))
        assert crm.wait_for(lambda: len(crm.status_callbacks_made) == 1, timeout=10)
        assert crm.status_callbacks_made[0]["outcome"] == 200  # fs-crm took the CRM's callback
        # A later change is the barrier: the PBX's reports are handled in order.
        fs.broadcast(feature_code("dinner", extension="200"))
        assert crm.wait_for(lambda: len(crm.status_callbacks_made) == 2, timeout=10)
        fs.broadcast(feature_code("free", extension="200"))
        assert crm.wait_for(lambda: len(crm.status_callbacks_made) == 3, timeout=10)
    assert changes(crm) == [(1, "busy"), (2, "dinner"), (2, "free")]


def test_given_callcenter_when_crm_status_pushed_then_its_echo_is_not_sent_back(fakes, state_dir):
    fs, crm = fakes
    callcenter = Callcenter(fs)
    with running(fs, crm, state_dir, status_push="callcenter") as (svc, port):
        assert any(cmd.endswith("CUSTOM fs_crm::status callcenter::info") for _, cmd in fs.commands)
        crm_sets(port, 1, "100", "break")
        assert wait_for(lambda: callcenter.statuses == {"100@pbx.test": "On Break"}, timeout=5)
        # Quick changes in the CRM: every push comes back as an event, here only after the next change
        # was made (busy's "On Break" arrives when fs-crm knows 200 is free again).
        callcenter.hold()
        crm_sets(port, 2, "200", "busy")
        assert wait_for(lambda: callcenter.statuses.get("200@pbx.test") == "On Break", timeout=5)
        crm_sets(port, 2, "200", "free")
        assert wait_for(lambda: callcenter.statuses.get("200@pbx.test") == "Available", timeout=5)
        callcenter.release()
        # A change made on the PBX itself (an agent's own console): that one goes to the CRM.
        callcenter.set("100@pbx.test", "Available")
        assert crm.wait_for(lambda: changes(crm) == [(1, "free")], timeout=10)
        assert svc.statuses.status_of("shop", "100") == "free"
        callcenter.set("200@pbx.test", "On Break")
        assert crm.wait_for(lambda: len(crm.status_changes) == 2, timeout=10)
    assert changes(crm) == [(1, "free"), (2, "break")]
    # Not pushed back: mod_callcenter had them already (no more sets than the three pushes and two changes).
    assert sum(1 for _, cmd in fs.commands if "callcenter_config" in cmd) == 3


def test_given_crm_calling_back_with_callcenter_when_pbx_changes_then_no_loop(fakes, state_dir):
    fs, crm = fakes
    callcenter = Callcenter(fs)
    with running(fs, crm, state_dir, echo=True, status_push="callcenter"):
        callcenter.set("100@pbx.test", "On Break")
        # fs-crm tells the CRM, the CRM calls back, fs-crm pushes it to mod_callcenter (the CRM's
        # word is the last), mod_callcenter fires the event again: that echo must end it.
        assert crm.wait_for(lambda: len(crm.status_callbacks_made) == 1, timeout=10)
        assert wait_for(lambda: sum(1 for _, cmd in fs.commands if "callcenter_config" in cmd) == 1, timeout=5)
        callcenter.set("200@pbx.test", "On Break")  # the barrier
        assert crm.wait_for(lambda: len(crm.status_callbacks_made) == 2, timeout=10)
    assert changes(crm) == [(1, "break"), (2, "break")]


def test_given_crm_unavailable_when_pbx_status_changes_then_latest_status_sent_once_it_is_back(fakes, state_dir):
    fs, crm = fakes
    crm.set_mode("unavailable")
    # Retries at least 1.2 s apart in all: time enough for the test to bring the CRM back.
    with running(fs, crm, state_dir, delivery={"retry_min_delay": 0.2, "retry_max_delay": 1.0}, status_push="none"):
        fs.broadcast(feature_code("busy", extension="100"))
        assert crm.wait_for(lambda: any(r.path == "/api/v5/users/1/status" for r in crm.requests), timeout=10)
        fs.broadcast(feature_code("dinner", extension="100"))
        crm.set_mode("ok")
        assert crm.wait_for(lambda: changes(crm)[-1:] == [(1, "dinner")], timeout=10)
    # busy may have gone through just before dinner came in; dinner is never followed by the older busy.
    assert changes(crm) in ([(1, "dinner")], [(1, "busy"), (1, "dinner")])


def test_given_crm_refuses_when_user_unknown_then_logged_and_later_changes_still_sent(fakes, state_dir, caplog):
    fs, crm = fakes
    crm.known_user_ids = {2}
    with running(fs, crm, state_dir, status_push="none"):
        fs.broadcast(feature_code("busy", extension="100"))
        assert crm.wait_for(lambda: any(r.path == "/api/v5/users/1/status" and r.status == 404
                                        for r in crm.requests), timeout=10)
        fs.broadcast(feature_code("break", extension="200"))
        assert crm.wait_for(lambda: changes(crm) == [(2, "break")], timeout=10)
    assert "the CRM refused status busy for user 1" in caplog.text
    assert sum(1 for r in crm.requests if r.path == "/api/v5/users/1/status") == 1  # a refusal is not retried


def test_given_status_from_pbx_not_a_boolean_when_loaded_then_error_names_file_section_and_key():
    with pytest.raises(ConfigError, match=r"^c\.toml: \[accounts 'shop'\] key 'status_from_pbx': must be true or false"):
        accounts(dict(ACCOUNT, status_from_pbx="yes"))
    without = {k: v for k, v in ACCOUNT.items() if k != "status_from_pbx"}
    assert accounts(without)[0].status_from_pbx is False  # off by default

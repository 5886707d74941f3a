"""Statuses set on a real FreeSWITCH reach the CRM user: a SIPp phone dials conf/freeswitch/dnd.xml's
feature codes (*78 busy, *79 free), and mod_callcenter's own agent status changes; fs-crm's pushes of
CRM statuses to mod_callcenter, which FreeSWITCH answers with the same event, do not come back."""

from __future__ import annotations

import pytest
import requests
from checks import finish

from fs_crm.polling import wait_for

USER_OF = {"100": 1, "200": 2, "300": 3, "400": 4}


def changes(live) -> list[tuple[int, str]]:
    return [(c["userId"], c["status"]) for c in live.crm.status_changes]


def status_flag(live, extension: str) -> str:
    return live.pbx.api("hash select/fs_crm_status/%s@pbx.test" % extension).strip()


def crm_sets(live, extension: str, status: str) -> None:
    """The CRM's changeUserStatusUrl callback, as a manager changing his status in the CRM makes it."""
    answer = requests.post("http://127.0.0.1:%d/change-status" % live.service.http.port, timeout=5, data={
        "clientId": live.service.config.accounts[0].client_id, "userId": str(USER_OF[extension]),
        "code": extension, "status": status})
    assert answer.status_code == 200, answer.text


def agent_status(live, extension: str) -> str:
    return live.pbx.api("callcenter_config agent get status %s@pbx.test" % extension).strip()


@pytest.mark.parametrize("live", [{"status_from_pbx": True, "status_push": "hash"}], indirect=True)
def test_given_manager_dials_dnd_feature_codes_then_crm_user_is_busy_then_free(live):
    dnd = live.phones.phone_calls("100", "*78")  # FreeSWITCH answers, beeps and hangs up
    finish(live, dnd)
    assert live.crm.wait_for(lambda: changes(live) == [(1, "busy")], timeout=10), live.crm.requests
    assert status_flag(live, "100") == "busy"  # the dialplan's own flag, for a dialplan to read
    assert live.service.statuses.is_away("shop", "100")  # fs-crm's router leaves him alone

    back = live.phones.phone_calls("100", "*79")
    finish(live, back)
    assert live.crm.wait_for(lambda: changes(live) == [(1, "busy"), (1, "free")], timeout=10)
    assert status_flag(live, "100") == "free"
    assert live.crm.calls == []  # a feature code is no CRM call
    request = next(r for r in live.crm.requests if r.path == "/api/v5/users/1/status")
    assert request.method == "POST" and request.form == {"status": "busy"}


@pytest.mark.parametrize("live", [{"status_from_pbx": True, "status_push": "callcenter"}], indirect=True)
def test_given_callcenter_agents_when_status_changes_on_either_side_then_only_pbx_changes_reach_the_crm(live):
    try:
        # The CRM puts 100 on a break: fs-crm pushes it, mod_callcenter fires agent-status-change for it.
        crm_sets(live, "100", "break")
        assert wait_for(lambda: agent_status(live, "100") == "On Break", timeout=5), agent_status(live, "100")
        # A change made on the PBX (a supervisor's console, another application): that one goes to the CRM.
        assert "+OK" in live.pbx.api("callcenter_config agent set status 200@pbx.test 'On Break'")
        assert live.crm.wait_for(lambda: changes(live) == [(2, "break")], timeout=10), changes(live)
        # Events are handled in order: once 200's comes back free, the echo of 100's push is long past.
        assert "+OK" in live.pbx.api("callcenter_config agent set status 200@pbx.test 'Available'")
        assert live.crm.wait_for(lambda: len(changes(live)) == 2, timeout=10)
        assert changes(live) == [(2, "break"), (2, "free")]
        assert live.service.statuses.status_of("shop", "100") == "break"
    finally:
        for extension in ("100", "200"):  # the queues of the other tests need their agents
            live.pbx.api("callcenter_config agent set status %s@pbx.test 'Available'" % extension)

"""Calls fs-crm never saw over ESL, on the real FreeSWITCH: mod_json_cdr's CDRs, posted to /cdr or
spooled while fs-crm was stopped, reach the CRM exactly once (tests/live/pbx/freeswitch.xml's
json_cdr.conf posts to 127.0.0.1:<ports.cdr>/cdr with cred freeswitch:live-cdr-secret)."""

from __future__ import annotations

import dataclasses

import pytest
from checks import finish
from conftest import live_config
from scenarios import CUSTOMER, SCENARIOS, check_history

from fs_crm.polling import wait_for
from fs_crm.service import Service

CDR_TABLE = {"user": "freeswitch", "password": "live-cdr-secret", "allow": ["127.0.0.1"]}


@pytest.fixture(autouse=True)
def quick_replay(monkeypatch):
    # Settle and check in fractions of a second instead of fs-crm's 15 s and 5 s.
    monkeypatch.setattr("fs_crm.freeswitch.cdr_intake.SETTLE", 1.0)
    monkeypatch.setattr("fs_crm.freeswitch.cdr_intake.CHECK_EVERY", 0.2)


def cdr_service(live, tmp_path, spool: bool) -> Service:
    """fs-crm with /cdr on the port FreeSWITCH posts CDRs to."""
    config = live_config(live.pbx, live.crm, tmp_path / "state-cdr")
    cdr = dataclasses.replace(config.cdr, password=CDR_TABLE["password"], allow=tuple(CDR_TABLE["allow"]),
                              spool_dir=live.pbx.cdr_spool if spool else None)
    http = dataclasses.replace(config.http, listen_port=live.pbx.ports.cdr,
                               public_url="http://127.0.0.1:%d" % live.pbx.ports.cdr)
    service = Service(dataclasses.replace(config, cdr=cdr, http=http))
    service.start()
    assert wait_for(lambda: service.listener.connected, timeout=10)
    return service


def ring_group_call(live):
    ivan = live.phones.phone("100", "ring")
    anna = live.phones.phone("200", "answer", ring_ms=2000)
    customer = live.phones.customer_calls("74999999999", CUSTOMER, talk_ms=3000)
    return customer, ivan, anna


def test_given_fs_crm_stopped_when_a_call_is_made_then_it_reaches_the_crm_once_after_start(live, tmp_path):
    live.service.stop()  # a deploy, a crash loop, a reboot
    for old in live.pbx.cdr_spool.glob("*.cdr.json"):
        old.unlink()  # other tests' legs: nobody listens on the CDR port during them
    parties = ring_group_call(live)
    for party in parties:
        party.wait(60)
    assert wait_for(lambda: not live.pbx.channels(), timeout=30, interval=0.1)
    assert wait_for(lambda: len(list(live.pbx.cdr_spool.glob("*.cdr.json"))) >= 3, timeout=15)
    assert live.crm.calls == [] and live.crm.events == []

    service = cdr_service(live, tmp_path, spool=True)
    try:
        [record] = live.wait_history(1, timeout=30)
        assert check_history(record, SCENARIOS["ringgroup_answered"]) == [], record
        assert wait_for(lambda: not list(live.pbx.cdr_spool.glob("*.cdr.json")), timeout=10)  # taken, removed
        assert not live.crm.wait_for(lambda: len(live.crm.calls) > 1, timeout=2.0)
        assert live.crm.events == []  # cards for a call long over would help nobody
    finally:
        service.stop()


def test_given_fs_crm_running_with_cdrs_posted_when_a_call_is_made_then_history_once(live, tmp_path):
    live.service.stop()
    service = cdr_service(live, tmp_path, spool=False)
    live.service = service  # wait_idle() looks at this one's tracker
    try:
        finish(live, *ring_group_call(live))
        [record] = live.wait_history(1)
        assert check_history(record, SCENARIOS["ringgroup_answered"]) == [], record
        # FreeSWITCH posted every leg's CDR here, and none was spooled.
        assert wait_for(lambda: service.cdrs.received >= 3, timeout=15), service.cdrs.received
        assert wait_for(lambda: not service.cdrs._legs, timeout=15)  # known over ESL: forgotten, not replayed
        assert service.cdrs.queued == 0
        assert not live.crm.wait_for(lambda: len(live.crm.calls) > 1, timeout=2.0)
    finally:
        service.stop()

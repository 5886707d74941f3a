"""What the live tests share: waiting for the parties and the switch, finding live channels, and
checking what the fake CRM got against an expectation of tests/live/scenarios.py."""

from __future__ import annotations

import gevent
from scenarios import SCENARIOS, Expected, card_outcome, check_history

from fs_crm.polling import wait_for


def finish(live, *parties, timeout: float = 60.0) -> None:
    """Every SIPp party ended its scenario without error, and the switch and fs-crm are idle."""
    for party in parties:
        party.wait(timeout)
    live.wait_idle()


def assert_expected(live, expected: Expected) -> dict | None:
    """The CRM got the expected history record (or none) and cards; returns the record."""
    if expected.history is None:
        live.wait_idle()
        assert live.crm.calls == []
        record = None
    else:
        [record] = live.wait_history(1)
        assert check_history(record, expected) == [], record
    wanted = card_outcome(expected.cards)
    live.crm.wait_for(lambda: card_outcome(live.cards()) == wanted, timeout=10)
    assert card_outcome(live.cards()) == wanted, live.cards()
    return record


def assert_scenario(live, name: str) -> dict | None:
    return assert_expected(live, SCENARIOS[name])


def channel(live, name_part: str, timeout: float = 10.0) -> dict:
    """The live channel with this uuid, or whose name contains `name_part` and that is talking."""
    found: list[dict] = []

    def active() -> bool:
        found[:] = [c for c in live.pbx.channels()
                    if name_part in (c["name"], c["uuid"]) or name_part in c["name"] and c["callstate"] == "ACTIVE"]
        return bool(found)

    assert wait_for(active, timeout=timeout, interval=0.05), live.pbx.channels()
    return found[0]


def ringing(live, name_part: str, timeout: float = 10.0) -> None:
    assert wait_for(lambda: any(name_part in c["name"] and c["callstate"] in ("RINGING", "EARLY")
                                for c in live.pbx.channels()), timeout=timeout, interval=0.05), live.pbx.channels()


def talk_for(seconds: float) -> None:
    """The conversation itself: the scenario's time passing, not a wait for a condition."""
    gevent.sleep(seconds)

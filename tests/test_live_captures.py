"""The pure tracker on the ESL streams the live tests saved from a real FreeSWITCH 1.11
(fs_crm/sim/captures/live/): the same expectations (tests/live/scenarios.py) as the live run, without
the switch. Refresh the streams with `FS_CRM_SAVE_CAPTURES=1 make test`."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "live"))

from scenarios import ACCOUNT, SCENARIOS, card_outcome, check_history  # noqa: E402

from fs_crm.calls import CallTracker  # noqa: E402
from fs_crm.config import parse_config  # noqa: E402
from fs_crm.crm.payloads import CallEvent, CallRecord  # noqa: E402
from fs_crm.freeswitch.eslparse import parse_event_plain  # noqa: E402
from fs_crm.sim.config import sim_config  # noqa: E402
from fs_crm.sim.fake_freeswitch import load_capture  # noqa: E402

CAPTURES = Path(__file__).parents[1] / "fs_crm" / "sim" / "captures" / "live"


def tracker_of_the_test_pbx() -> CallTracker:
    table = sim_config("127.0.0.1", 8021, "http://crm.test", Path("/nonexistent"), api_key="key")
    table["accounts"][0].update(ACCOUNT)
    return CallTracker(parse_config("<live>", table, env={}).accounts)


def test_every_scenario_has_its_capture():
    assert sorted(p.name.removesuffix(".esl.txt") for p in CAPTURES.glob("*.esl.txt")) == sorted(SCENARIOS)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_given_live_capture_when_replayed_then_tracker_shows_what_the_live_run_showed(name):
    tracker = tracker_of_the_test_pbx()
    expected = SCENARIOS[name]
    events = [parse_event_plain(body) for body in load_capture(CAPTURES / ("%s.esl.txt" % name))]
    effects = [e for event in events for e in tracker.handle(event)]
    if expected.connection_lost_after is not None:
        lost_us = int(events[-1]["Event-Date-Timestamp"]) + int(expected.connection_lost_after * 1_000_000)
        tracker.reconcile([], lost_us + 2_000_000, alive_until_us=lost_us)
        effects += tracker.expire_orphans(lost_us + 10_000_000, 3_000_000)
    records = [r.to_api() for r in effects if isinstance(r, CallRecord)]
    cards_by_call: dict[str, list] = {}
    for c in effects:
        if isinstance(c, CallEvent):
            cards_by_call.setdefault(c.call_id, []).append((c.type, c.codes, c.hangup_status))

    if expected.history is None:
        assert records == [] and cards_by_call == {}
    else:
        assert len(records) == expected.calls, records
        assert sorted(cards_by_call) == sorted(r["externalId"] for r in records) or not expected.cards
        for record in records:
            assert check_history(record, expected) == [], record
    for cards in cards_by_call.values():
        assert card_outcome(cards) == card_outcome(expected.cards), cards
    assert tracker.active_calls() == 0
    # Only files fs-crm's own snippet asked for are ever uploaded (and then deleted).
    paths = [r.recording_path for r in effects if isinstance(r, CallRecord) and r.recording_path]
    assert all("/fs-crm/" in path for path in paths), paths

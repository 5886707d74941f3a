"""Call tracking and mapping, driven by the real FreeSWITCH 1.11 streams in tests/fixtures/pbx."""

import json
from urllib.parse import quote

import pytest

from fs_crm.calls import CallTracker, LiveChannel
from fs_crm.config import parse_config
from fs_crm.crm.payloads import CallEvent, CallRecord
from fs_crm.freeswitch.eslparse import iter_frames, parse_event, parse_event_plain
from fs_crm.sim.calls import captured
from fs_crm.sim.fake_freeswitch import capture_path, load_capture, renumber_call

SHOP = {
    "name": "shop", "crm_url": "https://shop.retailcrm.ru", "api_key": "k1", "client_id": "c1",
    "domain": "pbx.test", "timezone": "Europe/Moscow",
    "extensions": {"1": "100", "2": "200", "3": "300"},
    "external_phones": {"shop1": "74999999999", "shop2": "+7 (499) 888-88-88"},
}
OTHER = {
    "name": "other", "crm_url": "https://other.retailcrm.ru", "api_key": "k2", "client_id": "c2",
    "domain": "other.test", "timezone": "UTC", "extensions": {"7": "100"}, "external_phones": {"main": "74951111111"},
}


def accounts(*tables):
    return parse_config("test.toml", {"accounts": list(tables)}, env={}).accounts


def events_of(scenario):
    return [parse_event_plain(body) for body in captured(scenario)]


def play(events, tracker=None):
    tracker = tracker or CallTracker(accounts(SHOP))
    effects = [effect for event in events for effect in tracker.handle(event)]
    cards = [e.to_api() for e in effects if isinstance(e, CallEvent)]
    records = [e.to_api() for e in effects if isinstance(e, CallRecord)]
    return tracker, cards, records


def card_summary(cards):
    return [(c["type"], c["codes"], c.get("hangupStatus")) for c in cards]


# What a person expects in the CRM for each real call (see tests/fixtures/pbx/README.md).
SCENARIOS = [
    pytest.param("in_answered_ringgroup",
                 [("in", ["100", "200"], None), ("hangup", ["100"], "cancel"), ("hangup", ["200"], "answered")],
                 {"type": "in", "result": "answered", "code": "200", "userId": 2, "duration": 3,
                  "durationWaiting": 2, "site": "shop1", "externalPhone": "74999999999"},
                 id="in_answered_ringgroup"),
    pytest.param("in_missed",
                 [("in", ["100", "200"], None), ("hangup", ["100", "200"], "no answered")],
                 {"type": "in", "result": "no answer", "duration": 0, "durationWaiting": 6, "site": "shop1",
                  "externalPhone": "74999999999"},
                 id="in_missed"),
    pytest.param("in_busy", [],
                 {"type": "in", "result": "busy", "duration": 0, "site": "shop2", "code": "300", "userId": 3,
                  "externalPhone": "+74998888888"},
                 id="in_busy"),
    pytest.param("out_answered", [("out", ["100"], None), ("hangup", ["100"], "answered")],
                 {"type": "out", "result": "answered", "code": "100", "userId": 1, "duration": 3,
                  "durationWaiting": 2, "site": "shop1", "externalPhone": "74999999999"},
                 id="out_answered"),
    pytest.param("out_busy", [("out", ["100"], None), ("hangup", ["100"], "busy")],
                 {"type": "out", "result": "busy", "code": "100", "userId": 1, "duration": 0, "site": "shop1"},
                 id="out_busy"),
    pytest.param("click_to_call", [("out", ["100"], None), ("hangup", ["100"], "answered")],
                 {"type": "out", "result": "answered", "code": "100", "userId": 1, "duration": 3, "site": "shop1"},
                 id="click_to_call"),
    pytest.param("in_socket_route", [("in", ["100"], None), ("hangup", ["100"], "answered")],
                 {"type": "in", "result": "answered", "code": "100", "userId": 1, "duration": 3,
                  "durationWaiting": 2, "externalPhone": "74997777777"},
                 id="in_socket_route"),
]


@pytest.mark.parametrize("scenario,expected_cards,expected_record", SCENARIOS)
def test_given_real_call_when_tracked_then_crm_sees_what_a_person_expects(scenario, expected_cards, expected_record):
    tracker, cards, records = play(events_of(scenario))

    assert card_summary(cards) == expected_cards
    assert len(records) == 1
    record = records[0]
    for key, value in expected_record.items():
        assert record[key] == value, key
    assert record["phone"] == "79121234567"
    assert tracker.active_calls() == 0
    for c in cards:
        assert c["phone"] == "79121234567" and c["callExternalId"] == record["externalId"]


def test_given_unconfigured_company_number_when_call_ends_then_no_store_even_if_dialplan_says_one():
    _, _, records = play(events_of("in_socket_route"))
    assert "site" not in records[0]  # the dialplan exported store=shop1, but 74997777777 is not configured


def test_given_internal_call_when_tracked_then_nothing_reaches_the_crm():
    tracker, cards, records = play(events_of("internal"))
    assert cards == [] and records == [] and tracker.active_calls() == 0


def test_given_registrations_when_tracked_then_ignored():
    tracker, cards, records = play(events_of("register_unregister"))
    assert cards == [] and records == [] and tracker.active_calls() == 0


def test_given_call_date_when_recorded_then_in_account_time_zone():
    _, _, records = play(events_of("in_answered_ringgroup"))
    # Caller-Channel-Created-Time 2026-11-26 18:42:59 UTC; the account is in Europe/Moscow (UTC+3).
    assert records[0]["date"] == "2026-11-26 21:42:59"


@pytest.mark.parametrize("scenario", ["in_answered_ringgroup", "out_answered", "click_to_call", "in_missed"])
def test_given_legs_end_in_any_order_when_tracked_then_external_id_is_the_first_legs(scenario):
    events = events_of(scenario)
    _, _, in_order = play(events)
    completes = [e for e in events if e.name in ("CHANNEL_HANGUP_COMPLETE", "CHANNEL_DESTROY")]
    others = [e for e in events if e not in completes]
    _, _, reversed_ends = play(others + completes[::-1])
    assert in_order[0]["externalId"] == reversed_ends[0]["externalId"] == events[0]["Unique-ID"]
    assert in_order == reversed_ends


def test_given_same_event_twice_when_tracked_then_one_card_and_one_record():
    events = events_of("in_answered_ringgroup")
    doubled = [e for event in events for e in (event, event)]
    _, cards, records = play(doubled)
    assert card_summary(cards) == SCENARIOS[0].values[1]
    assert len(records) == 1


def test_given_listener_joins_mid_call_when_call_ends_then_one_record_under_first_leg():
    events = events_of("in_answered_ringgroup")
    late = events[8:]  # after both phones were created and rang
    _, _, records = play(late)
    assert len(records) == 1
    assert records[0]["externalId"] == events[0]["Unique-ID"]
    assert records[0]["result"] == "answered" and records[0]["code"] == "200"


@pytest.mark.parametrize("scenario,account_name", [("in_answered_ringgroup", "shop"), ("out_busy", "shop")])
def test_given_two_accounts_on_one_freeswitch_when_call_ends_then_it_goes_to_its_domains_account(scenario, account_name):
    tracker = CallTracker(accounts(OTHER, SHOP))
    _, cards, records = play(events_of(scenario), tracker)
    effects_accounts = {r["externalId"] for r in records}
    assert len(effects_accounts) == 1
    # The account is not part of the wire payload; ask the tracker's typed output instead.
    tracker = CallTracker(accounts(OTHER, SHOP))
    typed = [e for ev in events_of(scenario) for e in tracker.handle(ev)]
    assert {e.account for e in typed} == {account_name}


def test_given_call_of_no_configured_domain_when_several_accounts_then_not_reported():
    other_b = dict(OTHER, name="b", domain="b.test", client_id="c3", external_phones={})
    tracker = CallTracker(accounts(OTHER, other_b))
    _, cards, records = play(events_of("out_answered"), tracker)
    assert cards == [] and records == []


def test_given_disconnect_when_legs_vanished_then_reconcile_reports_call_once_with_known_facts():
    events = events_of("in_answered_ringgroup")
    answered_at = next(i for i, e in enumerate(events) if e.name == "CHANNEL_BRIDGE")
    tracker, _, records = play(events[:answered_at + 1])
    assert records == [] and tracker.active_calls() == 1

    now_us = int(events[-1]["Event-Date-Timestamp"])
    tracker.reconcile([], now_us)
    assert tracker.expire_orphans(now_us + 1_000_000, 3_000_000) == []  # still inside the grace time
    expired = tracker.expire_orphans(now_us + 5_000_000, 3_000_000)

    # The manager's card still showing is closed, then the call goes to history.
    closing = [e.to_api() for e in expired if isinstance(e, CallEvent)]
    assert [(c["type"], c["codes"], c["hangupStatus"]) for c in closing] == [("hangup", ["200"], "answered")]
    records = [e for e in expired if isinstance(e, CallRecord)]
    assert len(records) == 1
    record = records[0].to_api()
    assert record["externalId"] == events[0]["Unique-ID"]
    assert record["result"] == "answered" and record["code"] == "200"
    assert tracker.active_calls() == 0
    # Events that straggle in afterwards do not produce a second record.
    _, _, again = play(events[answered_at + 1:], tracker)
    assert len(again) <= 1 and all(r["externalId"] == record["externalId"] for r in again)


def test_given_freeswitch_killed_mid_call_when_orphaned_then_talk_counts_until_the_connection_broke():
    events = events_of("in_answered_ringgroup")
    answered_at = next(i for i, e in enumerate(events) if e.name == "CHANNEL_BRIDGE")
    tracker, _, _ = play(events[:answered_at + 1])
    bridged_us = int(events[answered_at]["Event-Date-Timestamp"])

    # The last event was the bridge; the connection carrying the events broke 7 s later.
    tracker.reconcile([], bridged_us + 20_000_000, alive_until_us=bridged_us + 7_000_000)
    [record] = [e for e in tracker.expire_orphans(bridged_us + 30_000_000, 3_000_000) if isinstance(e, CallRecord)]
    assert (record.result, record.code, record.duration) == ("answered", "200", 7)


def test_given_live_call_unknown_after_restart_when_reconciled_then_its_end_gives_one_record():
    events = events_of("out_answered")
    root = events[0]
    live = [LiveChannel(uuid=root["Unique-ID"], call_uuid=root["Unique-ID"], direction="inbound",
                        name=root["Channel-Name"], cid_num="100", dest="79121234567",
                        created_epoch=int(root["Caller-Channel-Created-Time"]) // 1_000_000,
                        callstate="ACTIVE", presence_id="100@pbx.test")]
    tracker = CallTracker(accounts(SHOP))
    tracker.reconcile(live, int(root["Event-Date-Timestamp"]))
    bridged_at = next(i for i, e in enumerate(events) if e.name == "CHANNEL_BRIDGE")
    _, cards, records = play(events[bridged_at + 1:], tracker)
    assert cards == []  # no stale cards for calls picked up midway
    assert len(records) == 1
    assert records[0]["type"] == "out" and records[0]["result"] == "answered" and records[0]["code"] == "100"


def test_given_show_channels_lagging_when_reconciled_after_a_call_ended_then_its_legs_are_not_adopted():
    # FreeSWITCH's channel list still names legs whose CHANNEL_HANGUP_COMPLETE we already handled.
    events = events_of("out_answered")
    tracker, _, records = play(events)
    assert len(records) == 1 and tracker.active_calls() == 0
    root = events[0]
    lagging = [LiveChannel(uuid=root["Unique-ID"], call_uuid=root["Unique-ID"], direction="inbound",
                           name=root["Channel-Name"], cid_num="100", dest="79121234567",
                           created_epoch=int(root["Caller-Channel-Created-Time"]) // 1_000_000,
                           callstate="ACTIVE", presence_id="100@pbx.test")]
    tracker.reconcile(lagging, int(events[-1]["Event-Date-Timestamp"]) + 1_000_000)
    assert tracker.active_calls() == 0  # no phantom that would later be reported with hours of talk
    assert tracker.expire_orphans(int(events[-1]["Event-Date-Timestamp"]) + 3_600_000_000, 3_000_000) == []


def test_given_event_without_unique_id_when_tracked_then_ignored():
    event = parse_event(next(iter_frames(b"Content-Length: 28\nContent-Type: text/event-plain\n\n"
                                         b"Event-Name: CHANNEL_CREATE\n\n")))
    tracker = CallTracker(accounts(SHOP))
    assert tracker.handle(event) == []


@pytest.mark.parametrize("shift_us", [0, 123_456, 999_999, 3_600_000_000 + 500_000])
def test_given_call_at_any_sub_second_offset_when_recorded_then_same_durations(shift_us):
    bodies = renumber_call(load_capture(capture_path("in_answered_ringgroup")), seed="shift", time_shift_us=shift_us)
    events = [parse_event_plain(b) for b in bodies]
    _, _, records = play(events)
    assert (records[0]["duration"], records[0]["durationWaiting"]) == (3, 2)


def test_given_tracker_snapshot_when_restored_in_new_tracker_then_call_finishes_as_if_never_stopped():
    events = events_of("in_answered_ringgroup")
    split = next(i for i, e in enumerate(events) if e.name == "CHANNEL_BRIDGE") + 1
    first, cards_before, _ = play(events[:split])
    snapshot = first.snapshot()

    second = CallTracker(accounts(SHOP))
    assert second.restore(json.loads(json.dumps(snapshot))) == 1
    _, cards_after, records = play(events[split:], second)

    _, all_cards, expected = play(events)
    assert records == expected
    assert card_summary(cards_before + cards_after) == card_summary(all_cards)


def test_given_snapshot_of_other_version_when_restored_then_ignored():
    tracker = CallTracker(accounts(SHOP))
    assert tracker.restore({"version": 99, "calls": [{"id": "x"}]}) == 0
    assert tracker.active_calls() == 0


def typed_records(events, tracker=None):
    tracker = tracker or CallTracker(accounts(SHOP))
    return [e for event in events for e in tracker.handle(event) if isinstance(e, CallRecord)]


@pytest.mark.parametrize("scenario", ["in_answered_ringgroup", "out_answered", "in_missed", "in_busy"])
def test_given_recorded_call_when_finished_then_record_names_its_file(scenario):
    events = events_of(scenario)
    record = typed_records(events)[0]
    assert record.recording_path == "/srv/fsrec/%s.wav" % events[0]["Unique-ID"]
    assert "recordUrl" not in record.to_api() and "recording_path" not in str(record.to_api())


def test_given_unrecorded_call_when_finished_then_no_recording():
    assert typed_records(events_of("click_to_call"))[0].recording_path is None


def with_header(event, name, value):
    body = "".join("%s: %s\n" % (n, quote(event[n])) for n in event.names()) + "%s: %s\n\n" % (name, value)
    return parse_event_plain(body.encode())


def test_given_recording_discarded_when_finished_then_no_recording():
    events = [with_header(e, "variable_RECORD_DISCARDED", "true") if e.name == "RECORD_STOP" else e
              for e in events_of("in_missed")]
    assert typed_records(events)[0].recording_path is None


def test_given_record_stop_missed_when_dialplan_variable_names_file_then_it_is_used():
    events = [with_header(e, "variable_crm_recording_path", "/var/spool/fs/x.wav") if e.name == "CHANNEL_HANGUP_COMPLETE"
              else e for e in events_of("out_answered") if e.name != "RECORD_STOP"]
    assert typed_records(events)[0].recording_path == "/var/spool/fs/x.wav"


def test_given_periodic_sweep_when_call_silent_and_gone_then_finished_but_busy_calls_untouched():
    events = events_of("in_answered_ringgroup")
    bridged = next(i for i, e in enumerate(events) if e.name == "CHANNEL_BRIDGE") + 1
    tracker, _, _ = play(events[:bridged])
    last_us = int(events[bridged - 1]["Event-Date-Timestamp"])

    # A sweep soon after: the channel list may race the events, so a recent call is left alone.
    tracker.reconcile([], last_us + 60_000_000, idle_us=3_600_000_000)
    assert tracker.expire_orphans(last_us + 70_000_000, 3_000_000) == []
    # An hour of silence and FreeSWITCH no longer has it: it ended and its events were lost.
    tracker.reconcile([], last_us + 3_700_000_000, idle_us=3_600_000_000)
    records = [e for e in tracker.expire_orphans(last_us + 3_710_000_000, 3_000_000) if isinstance(e, CallRecord)]
    assert [r.to_api()["externalId"] for r in records] == [events[0]["Unique-ID"]]


def test_given_orphaned_call_when_expired_then_it_ends_at_the_last_event_seen_not_at_the_sweep():
    events = events_of("in_answered_ringgroup")
    bridged = next(i for i, e in enumerate(events) if e.name == "CHANNEL_BRIDGE") + 1
    tracker, _, _ = play(events[:bridged])
    last_us = int(events[bridged - 1]["Event-Date-Timestamp"])
    tracker.reconcile([], last_us + 3_700_000_000, idle_us=3_600_000_000)
    [record] = [e.to_api() for e in tracker.expire_orphans(last_us + 3_710_000_000, 3_000_000)
                if isinstance(e, CallRecord)]
    assert record["duration"] <= 5 and record["durationWaiting"] <= 5


def test_given_recording_not_named_by_the_snippet_when_finished_then_it_is_left_alone():
    # A voicemail message or another application's file: its RECORD_STOP path differs from the
    # channel's crm_recording_path, so fs-crm never uploads (and deletes) it.
    events = [with_header(e, "variable_crm_recording_path", "/var/spool/fs/other.wav") if e.name == "RECORD_STOP"
              else e for e in (parse_event_plain(b) for b in load_capture(capture_path("in_answered_ringgroup")))]
    assert typed_records(events)[0].recording_path is None


def test_given_outgoing_call_orphaned_when_its_phone_leg_named_the_file_then_recording_kept():
    events = events_of("out_answered")
    phone_leg = events[0]["Unique-ID"]
    bridged = next(i for i, e in enumerate(events) if e.name == "CHANNEL_BRIDGE") + 1
    marked = [with_header(e, "variable_crm_recording_path", "/rec/fs-crm/%s.wav" % phone_leg)
              if e["Unique-ID"] == phone_leg and e.name == "CHANNEL_BRIDGE" else e for e in events[:bridged]]
    tracker, _, _ = play(marked)
    last_us = int(events[bridged - 1]["Event-Date-Timestamp"])
    tracker.reconcile([], last_us + 1_000_000, alive_until_us=last_us + 4_000_000)
    [record] = [e for e in tracker.expire_orphans(last_us + 10_000_000, 3_000_000) if isinstance(e, CallRecord)]
    assert record.recording_path == "/rec/fs-crm/%s.wav" % phone_leg
    assert (record.type, record.result, record.code, record.duration) == ("out", "answered", "100", 4)


def test_given_ring_group_call_when_played_then_each_phone_on_a_call_until_its_own_leg_hangs_up():
    """What ignore_status routing asks: is a phone of this extension in a call right now?"""
    tracker = CallTracker(accounts(SHOP))
    seen = []
    for event in events_of("in_answered_ringgroup"):
        tracker.handle(event)
        state = (tracker.extension_on_call("100", "pbx.test"), tracker.extension_on_call("200", "PBX.test"))
        if not seen or seen[-1] != state:
            seen.append(state)
        assert not tracker.extension_on_call("300", "pbx.test")
        assert not tracker.extension_on_call("100", "other.test")
    # Both ring; 200 answers and 100's leg ends (LOSE_RACE); the call ends.
    assert seen == [(False, False), (True, False), (True, True), (False, True), (False, False)]


def test_given_manager_dials_out_when_played_then_his_phone_is_on_a_call():
    tracker = CallTracker(accounts(SHOP))
    events = events_of("out_answered")
    hangup = next(i for i, event in enumerate(events) if event.name == "CHANNEL_HANGUP")
    for event in events[:hangup]:
        tracker.handle(event)
    assert tracker.extension_on_call("100", "pbx.test")
    for event in events[hangup:]:
        tracker.handle(event)
    assert not tracker.extension_on_call("100", "pbx.test")

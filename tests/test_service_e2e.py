"""The whole service through real sockets: fake FreeSWITCH (ESL over TCP) and fake retailCRM (HTTP)."""

import contextlib
import signal
import time

import pytest
from e2e import make_config, spawn_service, write_toml

from fs_crm.freeswitch.eslparse import parse_event_plain
from fs_crm.polling import wait_for
from fs_crm.service import Service
from fs_crm.sim.calls import first_leg, fresh_call, header


@contextlib.contextmanager
def running_service(fs, crm, state_dir, **delivery):
    svc = Service(make_config(fs, crm, state_dir, **delivery))
    svc.start()
    try:
        assert fs.wait_subscribed(timeout=10)
        yield svc
    finally:
        svc.stop()


@pytest.fixture
def service(fakes, state_dir):
    with running_service(*fakes, state_dir) as svc:
        yield svc


def history_ids(crm):
    return [c["externalId"] for c in crm.calls]


def test_given_ring_group_call_when_played_then_crm_gets_cards_and_one_history_record(fakes, service):
    fs, crm = fakes
    call = fresh_call("in_answered_ringgroup", "rg")
    fs.play(call)

    assert crm.wait_for(lambda: len(crm.calls) == 1, timeout=10)
    record = crm.calls[0]
    assert record["externalId"] == first_leg(call)
    assert (record["type"], record["result"], record["code"], record["userId"]) == ("in", "answered", "200", 2)
    assert (record["duration"], record["durationWaiting"], record["site"]) == (3, 2, "shop1")
    assert crm.wait_for(lambda: len(crm.events) == 3, timeout=5)
    assert [(e["type"], e["codes"]) for e in crm.events] == [("in", ["100", "200"]), ("hangup", ["100"]),
                                                            ("hangup", ["200"])]
    request = next(r for r in crm.requests if r.path.endswith("/calls/upload"))
    assert request.headers["X-API-KEY"] == "e2e-key"
    assert request.headers["Content-Type"].startswith("application/x-www-form-urlencoded")


def test_given_crm_down_for_a_while_when_it_comes_back_then_every_call_delivered_once_in_order(fakes, service):
    fs, crm = fakes
    crm.set_mode("down")
    calls = [fresh_call(s, "down-%d" % i) for i, s in enumerate(["in_missed", "out_answered", "in_busy", "out_busy"])]
    for call in calls:
        fs.play(call)
    assert wait_for(lambda: sum(1 for r in crm.requests if r.path.endswith("/calls/upload")) >= 2)
    assert crm.calls == []

    assert wait_for(lambda: service.health()[1]["accounts"]["shop"]["last_history_error"], timeout=5)
    crm.set_mode("ok")
    assert crm.wait_for(lambda: len(crm.calls) == 4, timeout=10)
    assert history_ids(crm) == [first_leg(c) for c in calls]
    # The CRM has them; the service removes them from its queue once it has read the answer.
    assert wait_for(lambda: service.outbox.stats().pending == 0, timeout=5)
    assert service.health()[1]["accounts"]["shop"]["last_history_error"] is None


@pytest.mark.parametrize("mode", ["html", "rate_limited", "unavailable"])
def test_given_crm_answering_garbage_when_it_recovers_then_history_arrives(fakes, service, mode):
    fs, crm = fakes
    crm.set_mode(mode)
    call = fresh_call("out_answered", mode)
    fs.play(call)
    assert wait_for(lambda: any(r.path.endswith("/calls/upload") for r in crm.requests))
    crm.set_mode("ok")
    assert crm.wait_for(lambda: history_ids(crm) == [first_leg(call)], timeout=10)


def test_given_freeswitch_drops_socket_mid_frame_when_it_comes_back_then_call_completes_once(fakes, service):
    fs, crm = fakes
    call = fresh_call("in_answered_ringgroup", "drop")
    half = len(call) // 2
    fs.play(call[:half])
    assert crm.wait_for(lambda: len(crm.events) >= 1, timeout=5)  # the ring-group card went out
    fs.drop_clients(mid_frame=call[half])
    assert fs.wait_for(lambda: fs.connections_total >= 2 and fs.authenticated_clients() == 1, timeout=10)
    assert fs.wait_subscribed(timeout=10)
    assert wait_for(lambda: any("show channels as json" in cmd for _, cmd in fs.commands))

    fs.play(call[half:])
    assert crm.wait_for(lambda: len(crm.calls) == 1, timeout=10)
    assert crm.calls[0]["externalId"] == first_leg(call) and crm.calls[0]["result"] == "answered"
    assert not crm.wait_for(lambda: len(crm.calls) > 1, timeout=1.0)


def test_given_freeswitch_down_when_reconnecting_then_backoff_not_a_busy_loop(fakes, state_dir):
    fs, crm = fakes
    port = fs.port
    fs.stop()
    svc = Service(make_config(fs, crm, state_dir))
    svc.start()
    try:
        assert wait_for(lambda: svc.listener.last_error is not None, timeout=5)
        first = svc.listener.attempts
        wait_for(lambda: False, timeout=1.5)
        # Backoff 0.05 s doubling to 0.5 s (jitter 0.5-1.5x): a handful of tries in 1.5 s, not thousands.
        assert 1 <= svc.listener.attempts - first <= 15
        assert svc.listener.connected is False
        assert "refused" in svc.listener.last_error or str(port) in svc.listener.last_error
    finally:
        svc.stop()


def test_given_malformed_frames_when_received_then_service_survives_and_later_calls_arrive(fakes, service):
    fs, crm = fakes
    fs.send_raw(b"Content-Length: 22\nContent-Type: text/event-plain\n\nUnique-ID: no-name\n\n\n")
    fs.send_raw(b"Content-Length: 12\nContent-Type: text/unheard-of\n\n0123456789ab")
    call = fresh_call("out_busy", "after-garbage")
    fs.play(call)
    assert crm.wait_for(lambda: history_ids(crm) == [first_leg(call)], timeout=10)

    fs.send_raw(b"Content-Length: banana\nContent-Type: text/event-plain\n\n")  # cannot resync: reconnect
    assert fs.wait_for(lambda: fs.connections_total >= 2, timeout=10)
    assert fs.wait_subscribed(timeout=10)
    second = fresh_call("out_answered", "after-reconnect")
    fs.play(second)
    assert crm.wait_for(lambda: history_ids(crm) == [first_leg(call), first_leg(second)], timeout=10)


def test_given_internal_call_when_played_then_crm_gets_nothing(fakes, service):
    fs, crm = fakes
    fs.play(fresh_call("internal", "int"))
    marker = fresh_call("out_busy", "marker")
    fs.play(marker)
    assert crm.wait_for(lambda: len(crm.calls) == 1, timeout=10)
    assert history_ids(crm) == [first_leg(marker)]


def test_given_stale_card_when_crm_slow_then_card_dropped_but_history_kept(fakes, state_dir):
    fs, crm = fakes
    with running_service(fs, crm, state_dir, card_max_age=0.3, event_read_timeout=0.2) as svc:
        crm.set_mode("unavailable")
        call = fresh_call("in_missed", "stale")
        fs.play(call)
        assert wait_for(lambda: svc.cards.dropped >= 1, timeout=5)
        crm.set_mode("ok")
        assert crm.wait_for(lambda: history_ids(crm) == [first_leg(call)], timeout=10)
        assert crm.events == []


def test_given_ringing_card_dropped_when_crm_back_before_hangup_then_hangup_not_sent(fakes, state_dir):
    fs, crm = fakes
    with running_service(fs, crm, state_dir, card_max_age=1.0, event_read_timeout=0.2) as svc:
        crm.set_mode("unavailable")
        call = fresh_call("in_missed", "back-before-hangup")
        ended = next(i for i, body in enumerate(call) if header(body, "Event-Name").startswith("CHANNEL_HANGUP"))
        fs.play(call[:ended])
        assert wait_for(lambda: svc.cards.dropped >= 1, timeout=5)
        crm.set_mode("ok")
        fs.play(call[ended:])
        # The marker's cards are queued after the missed call's hangups, so once they have arrived
        # any hangup card of the missed call would have arrived too.
        marker = fresh_call("out_answered", "marker")
        fs.play(marker)
        assert crm.wait_for(lambda: history_ids(crm) == [first_leg(call), first_leg(marker)], timeout=10)
        assert crm.wait_for(lambda: [e["type"] for e in crm.events] == ["out", "hangup"], timeout=5)
        assert {e["callExternalId"] for e in crm.events} == {first_leg(marker)}


def test_given_fs_crm_run_when_sigterm_then_it_drains_and_exits_zero(fakes, tmp_path):
    fs, crm = fakes
    state = tmp_path / "state"
    config = write_toml(tmp_path / "fs-crm.toml", fs, crm, state)
    proc = spawn_service(config, tmp_path / "service.log")
    try:
        assert fs.wait_subscribed(timeout=20)
        call = fresh_call("out_answered", "cli")
        fs.play(call)
        assert crm.wait_for(lambda: history_ids(crm) == [first_leg(call)], timeout=15)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
    log = (tmp_path / "service.log").read_text()
    assert code == 0, log
    assert "fs-crm stopped" in log
    assert "e2e-key" not in log


def test_given_kill_9_mid_upload_when_restarted_then_nothing_lost_and_nothing_doubled(fakes, tmp_path):
    fs, crm = fakes
    state = tmp_path / "state"
    config = write_toml(tmp_path / "fs-crm.toml", fs, crm, state)
    crm.stall_seconds = 30
    crm.set_mode("stall")
    proc = spawn_service(config, tmp_path / "service.log")
    calls = [fresh_call("in_missed", "k9-%d" % i) for i in range(3)]
    try:
        assert fs.wait_subscribed(timeout=20)
        for call in calls:
            fs.play(call)
        assert wait_for(lambda: any(r.path.endswith("/calls/upload") for r in crm.requests), timeout=15)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    crm.set_mode("ok")

    restarted = spawn_service(config, tmp_path / "service.log")
    try:
        assert crm.wait_for(lambda: len(crm.calls) == 3, timeout=20), (tmp_path / "service.log").read_text()
        assert sorted(history_ids(crm)) == sorted(first_leg(c) for c in calls)
        assert not crm.wait_for(lambda: len(crm.calls) > 3, timeout=1.0)
    finally:
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(timeout=20) == 0


def test_given_kill_9_mid_call_when_call_ends_while_down_then_restart_reports_it(fakes, tmp_path):
    from fs_crm.store.outbox import Outbox

    fs, crm = fakes
    state = tmp_path / "state"
    config = write_toml(tmp_path / "fs-crm.toml", fs, crm, state)
    call = fresh_call("in_answered_ringgroup", "k9-mid-call")
    bridged = next(i for i, body in enumerate(call) if b"Event-Name: CHANNEL_BRIDGE\n" in body) + 1
    proc = spawn_service(config, tmp_path / "service.log")
    try:
        assert fs.wait_subscribed(timeout=20)
        fs.play(call[:bridged])
        assert crm.wait_for(lambda: len(crm.events) >= 1, timeout=10)

        def saved_in_progress():
            outbox = Outbox(state / "outbox.sqlite3")
            try:
                return bool(outbox.calls_in_progress())
            finally:
                outbox.close()

        assert wait_for(saved_in_progress, timeout=10)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    fs.play(call[bridged:])  # the call ends while fs-crm is dead: nobody hears these events
    assert fs.wait_for(lambda: not fs.channels, timeout=5)

    restarted = spawn_service(config, tmp_path / "service.log")
    try:
        assert crm.wait_for(lambda: len(crm.calls) == 1, timeout=20), (tmp_path / "service.log").read_text()
        record = crm.calls[0]
        assert record["externalId"] == first_leg(call)
        assert (record["type"], record["result"], record["code"]) == ("in", "answered", "200")
    finally:
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(timeout=20) == 0


def test_given_finished_call_not_yet_on_disk_when_service_stops_then_it_is_queued_after_restart(fakes, state_dir):
    fs, crm = fakes
    svc = Service(make_config(fs, crm, state_dir))
    for body in fresh_call("in_missed", "snapshot"):
        svc.on_event(parse_event_plain(body))
    svc.stop()
    restarted = Service(make_config(fs, crm, state_dir))
    try:
        assert restarted.outbox.stats().pending == 1
        assert restarted.tracker.active_calls() == 0
    finally:
        restarted.stop()


@pytest.mark.parametrize("skew_s", [-3600, 3600], ids=["freeswitch-clock-behind", "freeswitch-clock-ahead"])
def test_given_freeswitch_clock_skewed_beyond_card_max_age_when_call_rings_then_cards_still_shown(
        fakes, state_dir, skew_s):
    fs, crm = fakes
    with running_service(fs, crm, state_dir, card_max_age=5.0):
        call = fresh_call("in_answered_ringgroup", "skew%d" % skew_s, starts_at=time.time() + skew_s)
        fs.play(call)
        assert crm.wait_for(lambda: history_ids(crm) == [first_leg(call)], timeout=10)
        assert crm.wait_for(lambda: [e["type"] for e in crm.events].count("hangup") >= 1, timeout=5)
        assert "in" in [e["type"] for e in crm.events]

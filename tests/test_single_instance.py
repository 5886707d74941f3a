"""One active fs-crm per state dir: a second `fs-crm run` waits as a standby and takes over."""

import signal

from e2e import spawn_service, write_toml

from fs_crm.polling import wait_for
from fs_crm.sim.calls import first_leg, fresh_call


def _log_says(path, text):
    return lambda: path.exists() and text in path.read_text(errors="replace")


def test_given_two_instances_on_one_state_dir_when_active_dies_then_standby_takes_over_and_nothing_doubles(
        fakes, tmp_path):
    fs, crm = fakes
    config = write_toml(tmp_path / "fs-crm.toml", fs, crm, tmp_path / "state")
    active = spawn_service(config, tmp_path / "active.log")
    standby = None

    def cards(call):
        return sorted((e["type"], tuple(e.get("codes", ()))) for e in crm.events
                      if e["callExternalId"] == first_leg(call))

    try:
        assert fs.wait_subscribed(timeout=20)
        standby = spawn_service(config, tmp_path / "standby.log")
        assert wait_for(_log_says(tmp_path / "standby.log", "waits as a standby"), timeout=20)
        assert "pid %d" % active.pid in (tmp_path / "standby.log").read_text()
        assert fs.authenticated_clients() == 1  # the standby never talks to FreeSWITCH

        first = fresh_call("in_answered_ringgroup", "active")
        fs.play(first)
        assert crm.wait_for(lambda: len(crm.calls) == 1, timeout=20)
        # Its ringing card and both hangups (a card still in flight would die with kill -9).
        assert crm.wait_for(lambda: len(cards(first)) == 3, timeout=10), crm.events

        active.kill()  # kill -9: the kernel drops the lock with the process
        active.wait(timeout=10)
        assert wait_for(_log_says(tmp_path / "standby.log", "is the active instance now"), timeout=20)
        assert fs.wait_for(lambda: fs.authenticated_clients() == 1, timeout=20)
        assert fs.wait_subscribed(timeout=20)

        second = fresh_call("in_answered_ringgroup", "standby")
        fs.play(second)
        assert crm.wait_for(lambda: len(crm.calls) == 2, timeout=20), (tmp_path / "standby.log").read_text()
        assert [c["externalId"] for c in crm.calls] == [first_leg(first), first_leg(second)]

        # Each call's cards once, the same for both: there never was a second listener.
        assert crm.wait_for(lambda: cards(second) and cards(first) == cards(second), timeout=10), crm.events
        assert len(set(cards(first))) == len(cards(first))
    finally:
        for proc in (active, standby):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=20)


def test_given_standby_waiting_when_sigterm_then_it_exits_cleanly(fakes, tmp_path):
    fs, crm = fakes
    config = write_toml(tmp_path / "fs-crm.toml", fs, crm, tmp_path / "state")
    active = spawn_service(config, tmp_path / "active.log")
    try:
        assert fs.wait_subscribed(timeout=20)
        standby = spawn_service(config, tmp_path / "standby.log")
        assert wait_for(_log_says(tmp_path / "standby.log", "waits as a standby"), timeout=20)
        standby.send_signal(signal.SIGTERM)
        assert standby.wait(timeout=20) == 0
        assert active.poll() is None
    finally:
        active.send_signal(signal.SIGTERM)
        assert active.wait(timeout=20) == 0

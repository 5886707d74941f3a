"""Recordings end to end: FreeSWITCH's file -> storage -> recordUrl in the CRM history -> playback."""

import pytest
import requests
from e2e import make_config

from fs_crm.polling import wait_for
from fs_crm.service import Service
from fs_crm.sim import free_port
from fs_crm.sim.calls import RECORDING, first_leg, fresh_call, with_recording


@pytest.fixture
def recorded(fakes, tmp_path):
    """A running service with local recording storage, and a helper to play recorded calls."""
    fs, crm = fakes
    port = free_port()
    svc = Service(make_config(fs, crm, tmp_path / "state", http_port=port,
                              storage={"backend": "local", "directory": str(tmp_path / "store")}))
    svc.start()
    assert fs.wait_subscribed(timeout=10)
    yield svc, port, tmp_path / "fsrec"
    svc.stop()


def test_given_recorded_call_when_finished_then_history_has_playable_record_url(fakes, recorded):
    fs, crm = fakes
    svc, port, fsrec = recorded
    call = with_recording(fresh_call("in_answered_ringgroup", "rec-1"), fsrec)
    fs.play(call)

    assert crm.wait_for(lambda: len(crm.calls) == 1, timeout=10)
    record = crm.calls[0]
    url = record["recordUrl"]
    assert url.startswith("http://127.0.0.1:%d/records/" % port)
    assert "79121234567" not in url

    played = requests.get(url, params={"clientId": "client-1"}, timeout=5)
    assert played.status_code == 200
    assert played.headers["Content-Type"] == "audio/wav"
    assert played.content == RECORDING.read_bytes()
    assert requests.get(url, params={"clientId": "someone-else"}, timeout=5).status_code == 403
    assert requests.get(url, timeout=5).status_code == 403
    # FreeSWITCH's copy is gone once the store confirmed the object.
    assert not (fsrec / ("%s.wav" % first_leg(call))).exists()


def test_given_recording_file_vanished_when_call_ends_then_history_goes_at_once_without_url(fakes, recorded):
    fs, crm = fakes
    svc, _, fsrec = recorded
    call = with_recording(fresh_call("out_answered", "rec-gone"), fsrec)
    (fsrec / ("%s.wav" % first_leg(call))).unlink()
    fs.play(call)
    assert crm.wait_for(lambda: len(crm.calls) == 1, timeout=10)
    assert "recordUrl" not in crm.calls[0]
    assert svc.outbox.stats().recordings == 0


def test_given_storage_configured_when_call_has_no_recording_then_it_is_not_delayed(fakes, recorded):
    fs, crm = fakes
    fs.play(fresh_call("click_to_call", "no-rec"))
    assert crm.wait_for(lambda: len(crm.calls) == 1, timeout=5)
    assert "recordUrl" not in crm.calls[0]


def test_given_running_service_when_healthz_then_reports_esl_and_queues(fakes, recorded):
    svc, port, _ = recorded
    answer = requests.get("http://127.0.0.1:%d/healthz" % port, timeout=5)
    assert answer.status_code == 200
    body = answer.json()
    assert body["esl_connected"] is True and body["outbox"]["pending"] == 0
    assert "client-1" not in answer.text and "e2e-key" not in answer.text


def test_given_storage_down_past_max_wait_when_stored_later_then_the_url_sent_with_the_call_plays(fakes, tmp_path):
    fs, crm = fakes
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store directory should be")
    port = free_port()
    svc = Service(make_config(fs, crm, tmp_path / "state", http_port=port,
                              storage={"backend": "local", "directory": str(blocker / "store"), "max_wait": 1}))
    svc.start()
    try:
        assert fs.wait_subscribed(timeout=10)
        call = with_recording(fresh_call("in_answered_ringgroup", "rec-down"), tmp_path / "fsrec")
        fs.play(call)
        assert wait_for(lambda: svc.recordings.last_error is not None, timeout=10)
        assert crm.wait_for(lambda: len(crm.calls) == 1, timeout=10)
        # The wait is over but the URL was decided when the call was queued: it goes along.
        url = crm.calls[0]["recordUrl"]
        assert requests.get(url, params={"clientId": "client-1"}, timeout=5).status_code == 404
        # The file stays on FreeSWITCH's disk while the store is down: nothing is lost.
        assert (tmp_path / "fsrec" / ("%s.wav" % first_leg(call))).exists()

        blocker.unlink()  # the store comes back
        svc.recordings.wake()
        assert wait_for(lambda: requests.get(url, params={"clientId": "client-1"}, timeout=5).status_code == 200,
                        timeout=20)
        assert len(crm.calls) == 1
    finally:
        svc.stop()

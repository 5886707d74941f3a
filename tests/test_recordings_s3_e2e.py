"""Recordings through moto's real S3 server: playback from S3, and a storage outage then recovery."""

import pytest
import requests
from e2e import make_config
from moto_s3 import BUCKET, REGION, MotoProcess, admin_client, use_fake_aws_credentials

from fs_crm.polling import wait_for
from fs_crm.service import Service
from fs_crm.sim import free_port
from fs_crm.sim.calls import RECORDING, first_leg, fresh_call, with_recording


@pytest.fixture(autouse=True)
def aws_env(monkeypatch, tmp_path):
    use_fake_aws_credentials(monkeypatch, tmp_path)


def start_moto(tmp_path, port: int) -> MotoProcess:
    server = MotoProcess(tmp_path / ("moto-%d.log" % port), port=port)
    admin_client(server.endpoint).create_bucket(Bucket=BUCKET)  # moto keeps buckets in memory only
    return server


@pytest.fixture
def s3_service(fakes, tmp_path):
    fs, crm = fakes
    s3_port, http_port = free_port(), free_port()
    moto = start_moto(tmp_path, s3_port)
    # Exactly the keys an operator sets for S3: a bucket means S3.
    storage = {"bucket": BUCKET, "region": REGION, "endpoint_url": moto.endpoint}
    svc = Service(make_config(fs, crm, tmp_path / "state", storage=storage, http_port=http_port))
    svc.start()
    assert fs.wait_subscribed(timeout=10)
    state = {"moto": moto}
    yield svc, http_port, s3_port, state
    svc.stop()
    state["moto"].stop()


def test_given_s3_storage_when_recorded_call_ends_then_crm_url_plays_from_s3_with_ranges(fakes, s3_service, tmp_path):
    fs, crm = fakes
    svc, http_port, s3_port, state = s3_service
    call = with_recording(fresh_call("out_answered", "s3-play"), tmp_path / "fsrec")
    fs.play(call)
    assert crm.wait_for(lambda: len(crm.calls) == 1, timeout=15)
    url = crm.calls[0]["recordUrl"]

    whole = requests.get(url, params={"clientId": "client-1"}, timeout=5)
    assert whole.status_code == 200 and whole.headers["Content-Type"] == "audio/wav"
    assert whole.content == RECORDING.read_bytes()
    part = requests.get(url, params={"clientId": "client-1"}, headers={"Range": "bytes=100-199"}, timeout=5)
    assert part.status_code == 206 and part.content == RECORDING.read_bytes()[100:200]
    assert part.headers["Content-Range"] == "bytes 100-199/%d" % RECORDING.stat().st_size
    assert requests.get(url, params={"clientId": "wrong"}, timeout=5).status_code == 403

    objects = admin_client(state["moto"].endpoint).list_objects_v2(Bucket=BUCKET)["Contents"]
    assert [o["Key"] for o in objects] == ["shop/%s/%s.wav" % (crm.calls[0]["date"][:10].replace("-", "/"),
                                                               first_leg(call))]
    assert not (tmp_path / "fsrec" / ("%s.wav" % first_leg(call))).exists()


def test_given_s3_down_when_it_comes_back_then_history_delivered_once_with_record_url(fakes, s3_service, tmp_path):
    fs, crm = fakes
    svc, http_port, s3_port, state = s3_service
    state["moto"].stop()
    call = with_recording(fresh_call("in_answered_ringgroup", "s3-down"), tmp_path / "fsrec")
    plain = fresh_call("click_to_call", "s3-down-plain")  # no recording: must not wait
    fs.play(call)
    fs.play(plain)

    assert wait_for(lambda: svc.recordings.last_error is not None, timeout=10)
    assert crm.wait_for(lambda: [c["externalId"] for c in crm.calls] == [first_leg(plain)], timeout=10)
    assert svc.outbox.stats().held == 1
    assert (tmp_path / "fsrec" / ("%s.wav" % first_leg(call))).exists()

    state["moto"] = start_moto(tmp_path, s3_port)
    assert crm.wait_for(lambda: len(crm.calls) == 2, timeout=20)
    recorded = crm.calls[1]
    assert recorded["externalId"] == first_leg(call) and recorded["recordUrl"]
    played = requests.get(recorded["recordUrl"], params={"clientId": "client-1"}, timeout=5)
    assert played.status_code == 200 and played.content == RECORDING.read_bytes()
    assert not crm.wait_for(lambda: len(crm.calls) > 2, timeout=1.0)
    assert not (tmp_path / "fsrec" / ("%s.wav" % first_leg(call))).exists()


def test_given_s3_down_when_recording_requested_then_503(fakes, s3_service, tmp_path):
    fs, crm = fakes
    svc, http_port, s3_port, state = s3_service
    fs.play(with_recording(fresh_call("out_busy", "s3-503"), tmp_path / "fsrec"))
    assert crm.wait_for(lambda: len(crm.calls) == 1, timeout=15)
    state["moto"].stop()
    answer = requests.get(crm.calls[0]["recordUrl"], params={"clientId": "client-1"}, timeout=15)
    assert answer.status_code == 503
    assert "Traceback" not in answer.text
    state["moto"] = start_moto(tmp_path, s3_port)

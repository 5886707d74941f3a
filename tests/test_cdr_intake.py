"""POST /cdr over HTTP: mod_json_cdr's posts of real CDRs (captured on the live PBX) into history."""

import base64
import contextlib
import sys
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).parent / "live"))

from e2e import API_KEY  # noqa: E402
from scenarios import ACCOUNT, SCENARIOS, check_history  # noqa: E402

from fs_crm.config import parse_config  # noqa: E402
from fs_crm.service import Service  # noqa: E402
from fs_crm.sim import free_port  # noqa: E402
from fs_crm.sim.config import sim_config  # noqa: E402

CAPTURES = Path(__file__).parents[1] / "fs_crm" / "sim" / "captures" / "cdr"
CRED = ("freeswitch", "cdr-secret")


@pytest.fixture(autouse=True)
def quick_replay(monkeypatch):
    monkeypatch.setattr("fs_crm.freeswitch.cdr_intake.SETTLE", 0.5)
    monkeypatch.setattr("fs_crm.freeswitch.cdr_intake.CHECK_EVERY", 0.1)


@contextlib.contextmanager
def running(fakes, state_dir, **cdr):
    fs, crm = fakes
    crm.known_codes.update({"100", "200", "300", "400"})
    port = free_port()
    table = sim_config(fs.host, fs.port, crm.url, state_dir, api_key=API_KEY, http_port=port)
    table["accounts"][0].update(ACCOUNT)
    table["cdr"] = {"user": CRED[0], "password": CRED[1], **cdr}
    svc = Service(parse_config("<test>", table, env={}))
    svc.start()
    try:
        assert fs.wait_subscribed(timeout=10)
        yield svc, "http://127.0.0.1:%d/cdr" % port
    finally:
        svc.stop()


def post(url, path: Path, auth=CRED, **headers):
    return requests.post(url, params={"uuid": path.name.split(".")[0]}, data=path.read_bytes(), auth=auth,
                         headers={"Content-Type": "application/json", **headers}, timeout=5)


@pytest.mark.parametrize("name", ["ringgroup_answered", "outgoing_answered", "queue_ringall_answered",
                                  "blind_transfer"])
def test_given_cdrs_of_a_call_never_seen_over_esl_when_posted_then_its_history_once(fakes, state_dir, name):
    fs, crm = fakes
    with running(fakes, state_dir) as (svc, url):
        files = sorted((CAPTURES / name).glob("*.cdr.json"))
        for path in files:
            assert post(url, path).status_code == 200
        assert post(url, files[0]).status_code == 200  # mod_json_cdr retrying a post it thinks failed
        assert crm.wait_for(lambda: len(crm.calls) == 1, timeout=10)
        assert check_history(crm.calls[0], SCENARIOS[name]) == [], crm.calls[0]
        assert not crm.wait_for(lambda: len(crm.calls) > 1, timeout=1.0)
        assert crm.events == []


def test_given_cdrs_kept_when_fs_crm_restarts_before_the_call_is_complete_then_it_still_arrives(fakes, state_dir):
    fs, crm = fakes
    files = sorted((CAPTURES / "ringgroup_answered").glob("*.cdr.json"))
    with running(fakes, state_dir) as (svc, url):
        assert post(url, files[0]).status_code == 200
    with running(fakes, state_dir) as (svc, url):
        for path in files[1:]:
            assert post(url, path).status_code == 200
        assert crm.wait_for(lambda: len(crm.calls) == 1, timeout=10)


def test_given_wrong_or_missing_credentials_then_401_and_nothing_kept(fakes, state_dir):
    fs, crm = fakes
    path = sorted((CAPTURES / "ringgroup_answered").glob("*.cdr.json"))[0]
    with running(fakes, state_dir) as (svc, url):
        assert post(url, path, auth=("freeswitch", "guess")).status_code == 401
        assert post(url, path, auth=None).status_code == 401
        token = base64.b64encode(b"freeswitch:cdr-secret").decode()
        assert post(url, path, auth=None, Authorization="Bearer " + token).status_code == 401
        assert svc.cdrs.received == 0


def test_given_a_post_from_an_address_not_allowed_then_403(fakes, state_dir):
    path = sorted((CAPTURES / "ringgroup_answered").glob("*.cdr.json"))[0]
    with running(fakes, state_dir, allow=["192.0.2.10"]) as (svc, url):
        answer = post(url, path)
        assert answer.status_code == 403 and "address" in answer.text
        assert svc.cdrs.received == 0


@pytest.mark.parametrize("body", [b"", b"not json", b'{"variables": {}}', b"[1, 2]", b"\xff\xfe{"])
def test_given_an_unreadable_cdr_then_400_naming_the_problem(fakes, state_dir, body):
    with running(fakes, state_dir) as (svc, url):
        answer = requests.post(url, data=body, auth=CRED, timeout=5)
        assert answer.status_code == 400 and answer.text.startswith("unreadable CDR: ")
        assert svc.cdrs.received == 0
